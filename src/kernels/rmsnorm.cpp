// Fast RMSNorm (see rmsnorm.h): per row one SIMD reduction (sum of squares)
// and one write pass; backward is two passes per row with the weight
// gradient gathered over fixed row parts.
// The kernels are in rmsnorm_isa.cpp, once per instruction set.
#include "kernels/rmsnorm.h"

#include <cmath>

#include "core/isa_dispatch.h"
#include "core/profile.h"
#include "kernels/rows.h"

MF_ISA_DECLARE(void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, std::int64_t rows,
                                    std::int64_t n, float eps))
MF_ISA_DECLARE(void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                                     const float* weight, const float* rstd, std::int64_t rows, std::int64_t n))

namespace mf {

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, std::int64_t rows, std::int64_t n,
                     float eps) {
  MF_ISA_DISPATCH(rmsnorm_forward, out, rstd, inp, weight, rows, n, eps);
}
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, std::int64_t rows, std::int64_t n) {
  MF_ISA_DISPATCH(rmsnorm_backward, dinp, dweight, dout, inp, weight, rstd, rows, n);
}

// ---- tensor front doors ----------------------------------------------------

RmsNormOutput rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps) {
  constexpr const char* op = "rmsnorm_forward";
  const kernels::RowsView v = kernels::as_rows(x, op, "x");
  MF_CHECK(v.n >= 1, "[", op, "] tensor 'x' must have a non-empty last dimension but has shape ",
           shape_str(x.shape()));
  if (weight.defined()) kernels::check_vector(weight, v.n, op, "weight");
  MF_CHECK(std::isfinite(eps) && eps >= 0.0f, "[", op, "] eps must be finite and >= 0 but is ", eps);
  RmsNormOutput o;
  o.out = Tensor::empty(x.shape());
  o.rstd = Tensor::empty(kernels::leading_shape(x.shape()));
  rmsnorm_forward(o.out.data<float>(), o.rstd.data<float>(), v.data(),
                  weight.defined() ? weight.data<float>() : nullptr, v.rows, v.n, eps);
  return o;
}

Tensor rmsnorm_backward(const Tensor& dout, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                        const Tensor& dweight) {
  constexpr const char* op = "rmsnorm_backward";
  const kernels::RowsView v = kernels::as_rows(x, op, "x");
  MF_CHECK(v.n >= 1, "[", op, "] tensor 'x' must have a non-empty last dimension but has shape ",
           shape_str(x.shape()));
  kernels::check_same_shape(dout, x.shape(), op, "dout");
  const kernels::RowsView dy = kernels::as_rows(dout, op, "dout");
  kernels::check_same_shape(rstd, kernels::leading_shape(x.shape()), op, "rstd");
  const Tensor s = rstd.contiguous();
  if (weight.defined()) kernels::check_vector(weight, v.n, op, "weight");
  if (dweight.defined()) kernels::check_vector(dweight, v.n, op, "dweight");
  Tensor dx = Tensor::empty(x.shape());
  rmsnorm_backward(dx.data<float>(), dweight.defined() ? dweight.data<float>() : nullptr, dy.data(), v.data(),
                   weight.defined() ? weight.data<float>() : nullptr, s.data<float>(), v.rows, v.n);
  return dx;
}

}  // namespace mf
