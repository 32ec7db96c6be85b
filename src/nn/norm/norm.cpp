// Norm module: checks shapes once, then calls the raw fused kernels.
#include "nn/norm/norm.h"

#include "kernels/layernorm.h"
#include "kernels/rmsnorm.h"

namespace mf {

namespace {

constexpr const char* kOp = "[norm]";

void check(const Tensor& t, std::int64_t n, std::int64_t c, const char* name) {
  MF_CHECK(t.defined() && t.dtype() == DType::F32 && t.is_contiguous(), kOp, " tensor '", name,
           "' must be a contiguous float32 tensor");
  t.check_shape({n, c}, "norm", name);
}

std::int64_t check_params(const NormParams& p, const Tensor& in) {
  MF_CHECK(p.weight != nullptr, kOp, " weight is missing");
  MF_CHECK(in.dim() == 2, kOp, " input must be [N, C] but has shape ", shape_str(in.shape()));
  const std::int64_t c = in.size(1);
  p.weight->value.check_shape({c}, "norm", p.weight->name.c_str());
  if (p.bias != nullptr) {
    MF_CHECK(p.kind == NormKind::LayerNorm, kOp, " RMSNorm has no bias but '", p.bias->name, "' was given");
    p.bias->value.check_shape({c}, "norm", p.bias->name.c_str());
  }
  return c;
}

}  // namespace

void norm_forward(const Tensor& out, NormSaved& saved, const Tensor& in, const NormParams& p) {
  const std::int64_t c = check_params(p, in), n = in.size(0);
  check(in, n, c, "in");
  check(out, n, c, "out");
  saved.rstd = Tensor::empty({n});
  if (p.kind == NormKind::LayerNorm) {
    saved.mean = Tensor::empty({n});
    layernorm_forward(out.data<float>(), saved.mean.data<float>(), saved.rstd.data<float>(), in.data<float>(),
                      p.weight->value.data<float>(), p.bias ? p.bias->value.data<float>() : nullptr, n, c, p.eps);
  } else {
    saved.mean = Tensor();
    rmsnorm_forward(out.data<float>(), saved.rstd.data<float>(), in.data<float>(), p.weight->value.data<float>(), n,
                    c, p.eps);
  }
}

void norm_backward(const Tensor& din, const Tensor& dout, const Tensor& in, const NormSaved& saved,
                   const NormParams& p) {
  const std::int64_t c = check_params(p, in), n = in.size(0);
  check(in, n, c, "in");
  check(din, n, c, "din");
  check(dout, n, c, "dout");
  saved.rstd.check_shape({n}, "norm", "rstd");
  if (p.kind == NormKind::LayerNorm) {
    saved.mean.check_shape({n}, "norm", "mean");
    layernorm_backward(din.data<float>(), p.weight->grad.data<float>(), p.bias ? p.bias->grad.data<float>() : nullptr,
                       dout.data<float>(), in.data<float>(), p.weight->value.data<float>(), saved.mean.data<float>(),
                       saved.rstd.data<float>(), n, c);
  } else {
    rmsnorm_backward(din.data<float>(), p.weight->grad.data<float>(), dout.data<float>(), in.data<float>(),
                     p.weight->value.data<float>(), saved.rstd.data<float>(), n, c);
  }
}

}  // namespace mf
