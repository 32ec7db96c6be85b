// Fast LayerNorm (see layernorm.h): per row two SIMD reductions (mean, then
// variance around it) and one write pass; backward is two passes per row
// with parameter gradients gathered over fixed row parts.
// The kernels are in layernorm_isa.cpp, once per instruction set.
#include "kernels/layernorm.h"

#include <cmath>

#include "core/isa_dispatch.h"
#include "core/profile.h"
#include "kernels/rows.h"

MF_ISA_DECLARE(void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                                      const float* bias, std::int64_t rows, std::int64_t n, float eps))
MF_ISA_DECLARE(void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                                       const float* weight, const float* mean, const float* rstd, std::int64_t rows,
                                       std::int64_t n))

namespace mf {

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias,
                       std::int64_t rows, std::int64_t n, float eps) {
  MF_ISA_DISPATCH(layernorm_forward, out, mean, rstd, inp, weight, bias, rows, n, eps);
}
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, std::int64_t rows, std::int64_t n) {
  MF_ISA_DISPATCH(layernorm_backward, dinp, dweight, dbias, dout, inp, weight, mean, rstd, rows, n);
}

// ---- tensor front doors ----------------------------------------------------

namespace {
void check_eps(float eps, const char* op) {
  MF_CHECK(std::isfinite(eps) && eps >= 0.0f, "[", op, "] eps must be finite and >= 0 but is ", eps);
}
}  // namespace

LayerNormOutput layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  constexpr const char* op = "layernorm_forward";
  const kernels::RowsView v = kernels::as_rows(x, op, "x");
  MF_CHECK(v.n >= 1, "[", op, "] tensor 'x' must have a non-empty last dimension but has shape ",
           shape_str(x.shape()));
  if (weight.defined()) kernels::check_vector(weight, v.n, op, "weight");
  if (bias.defined()) kernels::check_vector(bias, v.n, op, "bias");
  check_eps(eps, op);
  LayerNormOutput o;
  o.out = Tensor::empty(x.shape());
  o.mean = Tensor::empty(kernels::leading_shape(x.shape()));
  o.rstd = Tensor::empty(kernels::leading_shape(x.shape()));
  layernorm_forward(o.out.data<float>(), o.mean.data<float>(), o.rstd.data<float>(), v.data(),
                    weight.defined() ? weight.data<float>() : nullptr, bias.defined() ? bias.data<float>() : nullptr,
                    v.rows, v.n, eps);
  return o;
}

Tensor layernorm_backward(const Tensor& dout, const Tensor& x, const Tensor& weight, const Tensor& mean,
                          const Tensor& rstd, const Tensor& dweight, const Tensor& dbias) {
  constexpr const char* op = "layernorm_backward";
  const kernels::RowsView v = kernels::as_rows(x, op, "x");
  MF_CHECK(v.n >= 1, "[", op, "] tensor 'x' must have a non-empty last dimension but has shape ",
           shape_str(x.shape()));
  kernels::check_same_shape(dout, x.shape(), op, "dout");
  const kernels::RowsView dy = kernels::as_rows(dout, op, "dout");
  const Shape lead = kernels::leading_shape(x.shape());
  kernels::check_same_shape(mean, lead, op, "mean");
  kernels::check_same_shape(rstd, lead, op, "rstd");
  const Tensor m = mean.contiguous(), s = rstd.contiguous();
  if (weight.defined()) kernels::check_vector(weight, v.n, op, "weight");
  if (dweight.defined()) kernels::check_vector(dweight, v.n, op, "dweight");
  if (dbias.defined()) kernels::check_vector(dbias, v.n, op, "dbias");
  Tensor dx = Tensor::empty(x.shape());
  layernorm_backward(dx.data<float>(), dweight.defined() ? dweight.data<float>() : nullptr,
                     dbias.defined() ? dbias.data<float>() : nullptr, dy.data(), v.data(),
                     weight.defined() ? weight.data<float>() : nullptr, m.data<float>(), s.data<float>(), v.rows,
                     v.n);
  return dx;
}

}  // namespace mf
