// Fast softmax / log-softmax (see softmax.h): three passes per row (max;
// exp and sum; scale), SIMD through kernels/simd.h, rows in parallel.
// Accumulation is float: sums of positive terms lose <= sum_depth(n) ulp.
// The kernels are in softmax_isa.cpp, once per instruction set.
#include "kernels/softmax.h"

#include <cmath>
#include <limits>

#include "core/isa_dispatch.h"
#include "kernels/rows.h"

MF_ISA_DECLARE(void softmax_forward(float* out, const float* inp, std::int64_t rows, std::int64_t n))
MF_ISA_DECLARE(void softmax_backward(float* dinp, const float* dout, const float* out, std::int64_t rows,
                                     std::int64_t n))
MF_ISA_DECLARE(void log_softmax_forward(float* out, const float* inp, std::int64_t rows, std::int64_t n))
MF_ISA_DECLARE(void log_softmax_backward(float* dinp, const float* dout, const float* out, std::int64_t rows,
                                         std::int64_t n))

namespace mf {

void softmax_forward(float* out, const float* inp, std::int64_t rows, std::int64_t n) {
  MF_ISA_DISPATCH(softmax_forward, out, inp, rows, n);
}
void softmax_backward(float* dinp, const float* dout, const float* out, std::int64_t rows, std::int64_t n) {
  MF_ISA_DISPATCH(softmax_backward, dinp, dout, out, rows, n);
}
void log_softmax_forward(float* out, const float* inp, std::int64_t rows, std::int64_t n) {
  MF_ISA_DISPATCH(log_softmax_forward, out, inp, rows, n);
}
void log_softmax_backward(float* dinp, const float* dout, const float* out, std::int64_t rows, std::int64_t n) {
  MF_ISA_DISPATCH(log_softmax_backward, dinp, dout, out, rows, n);
}

// ---- tensor front doors ----------------------------------------------------

namespace {
using RowKernel = void (*)(float*, const float*, std::int64_t, std::int64_t);
using RowBackwardKernel = void (*)(float*, const float*, const float*, std::int64_t, std::int64_t);

Tensor run_forward(const Tensor& x, const char* op, RowKernel kernel) {
  const kernels::RowsView v = kernels::as_rows(x, op, "x");
  Tensor out = Tensor::empty(x.shape());
  kernel(out.data<float>(), v.data(), v.rows, v.n);
  return out;
}

Tensor run_backward(const Tensor& dout, const Tensor& out, const char* op, RowBackwardKernel kernel) {
  const kernels::RowsView y = kernels::as_rows(out, op, "out");
  kernels::check_same_shape(dout, out.shape(), op, "dout");
  const kernels::RowsView dy = kernels::as_rows(dout, op, "dout");
  Tensor dx = Tensor::empty(out.shape());
  kernel(dx.data<float>(), dy.data(), y.data(), y.rows, y.n);
  return dx;
}
}  // namespace

Tensor softmax_forward(const Tensor& x) { return run_forward(x, "softmax_forward", softmax_forward); }
Tensor softmax_backward(const Tensor& dout, const Tensor& out) {
  return run_backward(dout, out, "softmax_backward", softmax_backward);
}
Tensor log_softmax_forward(const Tensor& x) { return run_forward(x, "log_softmax_forward", log_softmax_forward); }
Tensor log_softmax_backward(const Tensor& dout, const Tensor& out) {
  return run_backward(dout, out, "log_softmax_backward", log_softmax_backward);
}

}  // namespace mf
