// GELU (or SiLU) MLP feed-forward: up projection, activation, down projection.
#include "nn/ffn/mlp_ffn.h"

#include "kernels/activations.h"
#include "nn/linear.h"

namespace mf {

namespace {

void activation_forward(const Tensor& h, const Tensor& a, Activation act) {
  if (act == Activation::SiLU)
    silu_forward(h.data<float>(), a.data<float>(), a.numel());
  else
    gelu_forward(h.data<float>(), a.data<float>(), a.numel(), act == Activation::GELU ? GeluApprox::Erf : GeluApprox::Tanh);
}

}  // namespace

void mlp_ffn_preactivations(FfnSaved& saved, const Tensor& in, const FfnParams& p) {
  saved.gate = Tensor();
  saved.up = linear_forward(in, p.up->value, bias_of(p.up_bias));  // [N, I]
}

void mlp_ffn_forward(const Tensor& out, FfnSaved& saved, const Tensor& in, const FfnParams& p) {
  mlp_ffn_preactivations(saved, in, p);
  Tensor h = Tensor::empty(saved.up.shape());
  activation_forward(h, saved.up, p.act);
  linear_forward(out, h, p.down->value, bias_of(p.down_bias));
}

void mlp_ffn_backward(const Tensor& din, const Tensor& dout, const Tensor& in, const FfnSaved& saved,
                      const FfnParams& p) {
  const Tensor& a = saved.up;
  Tensor h = Tensor::empty(a.shape());  // recomputed act(a)
  activation_forward(h, a, p.act);
  Tensor dh = Tensor::empty(a.shape());
  linear_backward(dh, p.down->grad, bias_grad_of(p.down_bias), dout, h, p.down->value);
  Tensor da = h;  // reuse h's storage: da = dh * act'(a)
  if (p.act == Activation::SiLU)
    silu_backward(da.data<float>(), dh.data<float>(), a.data<float>(), a.numel());
  else
    gelu_backward(da.data<float>(), dh.data<float>(), a.data<float>(), a.numel(),
                  p.act == Activation::GELU ? GeluApprox::Erf : GeluApprox::Tanh);
  linear_backward(din, p.up->grad, bias_grad_of(p.up_bias), da, in, p.up->value);
}

}  // namespace mf
