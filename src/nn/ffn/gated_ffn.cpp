// SwiGLU / GeGLU feed-forward: three projections and the fused gated
// activation from src/kernels/activations.h (a decode step of at most
// kGemvMaxRows rows computes gate and up in one GEMV call).
#include "nn/ffn/gated_ffn.h"

#include "kernels/activations.h"
#include "kernels/gemv.h"
#include "nn/linear.h"

namespace mf {

void gated_activation_forward(const Tensor& h, const Tensor& gate, const Tensor& up, Activation act) {
  const std::int64_t n = gate.numel();
  if (act == Activation::SiLU)
    swiglu_forward(h.data<float>(), gate.data<float>(), up.data<float>(), n);
  else
    geglu_forward(h.data<float>(), gate.data<float>(), up.data<float>(), n,
                  act == Activation::GELU ? GeluApprox::Erf : GeluApprox::Tanh);
}

void gated_ffn_preactivations(FfnSaved& saved, const Tensor& in, const FfnParams& p) {
  const std::int64_t n = in.size(0);
  if (n > gemv_max_rows() || n == 0) {
    saved.gate = linear_forward(in, p.gate->value, bias_of(p.gate_bias));  // [N, I]
    saved.up = linear_forward(in, p.up->value, bias_of(p.up_bias));        // [N, I]
    return;
  }
  // A decode step: gate and up in one GEMV call (one pass over the input, one parallel region).
  const std::int64_t inter = p.intermediate(), c = p.hidden();
  MF_CHECK(in.dim() == 2 && in.size(1) == c && in.dtype() == DType::F32 && in.is_contiguous(), "[ffn] input must be a ",
           "contiguous float32 [N, ", c, "] tensor but has shape ", shape_str(in.shape()));
  saved.gate = Tensor::empty({n, inter});
  saved.up = Tensor::empty({n, inter});
  auto target = [&](const Parameter* w, const Parameter* b, const Tensor& y) {
    w->value.check_shape({inter, c}, "ffn", w->name.c_str());
    const Tensor bias = bias_of(b);
    return GemvTarget{w->value.data<float>(), bias.defined() ? bias.data<float>() : nullptr, y.data<float>(), inter,
                      inter};
  };
  const GemvTarget targets[] = {target(p.gate, p.gate_bias, saved.gate), target(p.up, p.up_bias, saved.up)};
  gemv(targets, in.data<float>(), c, n, c);
}

void gated_ffn_forward(const Tensor& out, FfnSaved& saved, const Tensor& in, const FfnParams& p) {
  gated_ffn_preactivations(saved, in, p);
  Tensor h = Tensor::empty(saved.gate.shape());  // act(gate) * up
  gated_activation_forward(h, saved.gate, saved.up, p.act);
  linear_forward(out, h, p.down->value, bias_of(p.down_bias));
}

void gated_ffn_backward(const Tensor& din, const Tensor& dout, const Tensor& in, const FfnSaved& saved,
                        const FfnParams& p) {
  const Tensor& g = saved.gate;
  const Tensor& u = saved.up;
  const std::int64_t count = g.numel();
  Tensor h = Tensor::empty(g.shape());  // recomputed act(g) * u
  gated_activation_forward(h, g, u, p.act);
  Tensor dh = Tensor::empty(g.shape());
  linear_backward(dh, p.down->grad, bias_grad_of(p.down_bias), dout, h, p.down->value);
  // dg = dh * u * act'(g); du = dh * act(g) (h's storage is reused for du)
  Tensor dg = Tensor::empty(g.shape());
  Tensor du = h;
  if (p.act == Activation::SiLU)
    swiglu_backward(dg.data<float>(), du.data<float>(), dh.data<float>(), g.data<float>(), u.data<float>(), count);
  else
    geglu_backward(dg.data<float>(), du.data<float>(), dh.data<float>(), g.data<float>(), u.data<float>(), count,
                   p.act == Activation::GELU ? GeluApprox::Erf : GeluApprox::Tanh);
  linear_backward(din, p.gate->grad, bias_grad_of(p.gate_bias), dg, in, p.gate->value);
  linear_backward(din, p.up->grad, bias_grad_of(p.up_bias), du, in, p.up->value, /*accumulate_din=*/true);
}

}  // namespace mf
