// Fast element-wise activations (see activations.h): each activation is a
// small struct with value() and value_grad() on SIMD vectors; one template
// per kernel shape (plain, gated; forward, backward) runs it over chunks.
// The kernels are in activations_isa.cpp, once per instruction set.
#include "kernels/activations.h"

#include "core/isa_dispatch.h"
#include "core/profile.h"
#include "kernels/rows.h"

MF_ISA_DECLARE(void gelu_forward(float* out, const float* inp, std::int64_t count, GeluApprox approx))
MF_ISA_DECLARE(void gelu_backward(float* dinp, const float* dout, const float* inp, std::int64_t count,
                                  GeluApprox approx))
MF_ISA_DECLARE(void silu_forward(float* out, const float* inp, std::int64_t count))
MF_ISA_DECLARE(void silu_backward(float* dinp, const float* dout, const float* inp, std::int64_t count))
MF_ISA_DECLARE(void swiglu_forward(float* out, const float* gate, const float* up, std::int64_t count))
MF_ISA_DECLARE(void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                                    std::int64_t count))
MF_ISA_DECLARE(void geglu_forward(float* out, const float* gate, const float* up, std::int64_t count,
                                  GeluApprox approx))
MF_ISA_DECLARE(void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                                   std::int64_t count, GeluApprox approx))

namespace mf {

void gelu_forward(float* out, const float* inp, std::int64_t count, GeluApprox approx) {
  MF_ISA_DISPATCH(gelu_forward, out, inp, count, approx);
}
void gelu_backward(float* dinp, const float* dout, const float* inp, std::int64_t count, GeluApprox approx) {
  MF_ISA_DISPATCH(gelu_backward, dinp, dout, inp, count, approx);
}
void silu_forward(float* out, const float* inp, std::int64_t count) { MF_ISA_DISPATCH(silu_forward, out, inp, count); }
void silu_backward(float* dinp, const float* dout, const float* inp, std::int64_t count) {
  MF_ISA_DISPATCH(silu_backward, dinp, dout, inp, count);
}
void swiglu_forward(float* out, const float* gate, const float* up, std::int64_t count) {
  MF_ISA_DISPATCH(swiglu_forward, out, gate, up, count);
}
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                     std::int64_t count) {
  MF_ISA_DISPATCH(swiglu_backward, dgate, dup, dout, gate, up, count);
}
void geglu_forward(float* out, const float* gate, const float* up, std::int64_t count, GeluApprox approx) {
  MF_ISA_DISPATCH(geglu_forward, out, gate, up, count, approx);
}
void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, std::int64_t count,
                    GeluApprox approx) {
  MF_ISA_DISPATCH(geglu_backward, dgate, dup, dout, gate, up, count, approx);
}

// ---- tensor front doors ----------------------------------------------------

namespace {
// `x` as a float32 contiguous tensor (copied if needed); errors name op/name.
Tensor checked(const Tensor& x, const char* op, const char* name) { return kernels::contiguous_f32(x, op, name); }
// `x` checked to have `shape`, then made contiguous.
Tensor checked_like(const Tensor& x, const Shape& shape, const char* op, const char* name) {
  kernels::check_same_shape(x, shape, op, name);
  return x.contiguous();
}
void check_approx(GeluApprox a, const char* op) {
  MF_CHECK(a == GeluApprox::Erf || a == GeluApprox::Tanh, "[", op, "] unknown GELU approximation ",
           static_cast<int>(a));
}
}  // namespace

Tensor gelu_forward(const Tensor& x, GeluApprox approx) {
  check_approx(approx, "gelu_forward");
  const Tensor xc = checked(x, "gelu_forward", "x");
  Tensor out = Tensor::empty(x.shape());
  gelu_forward(out.data<float>(), xc.data<float>(), x.numel(), approx);
  return out;
}

Tensor gelu_backward(const Tensor& dout, const Tensor& x, GeluApprox approx) {
  check_approx(approx, "gelu_backward");
  const Tensor xc = checked(x, "gelu_backward", "x");
  const Tensor dy = checked_like(dout, x.shape(), "gelu_backward", "dout");
  Tensor dx = Tensor::empty(x.shape());
  gelu_backward(dx.data<float>(), dy.data<float>(), xc.data<float>(), x.numel(), approx);
  return dx;
}

Tensor silu_forward(const Tensor& x) {
  const Tensor xc = checked(x, "silu_forward", "x");
  Tensor out = Tensor::empty(x.shape());
  silu_forward(out.data<float>(), xc.data<float>(), x.numel());
  return out;
}

Tensor silu_backward(const Tensor& dout, const Tensor& x) {
  const Tensor xc = checked(x, "silu_backward", "x");
  const Tensor dy = checked_like(dout, x.shape(), "silu_backward", "dout");
  Tensor dx = Tensor::empty(x.shape());
  silu_backward(dx.data<float>(), dy.data<float>(), xc.data<float>(), x.numel());
  return dx;
}

Tensor swiglu_forward(const Tensor& gate, const Tensor& up) {
  const Tensor g = checked(gate, "swiglu_forward", "gate");
  const Tensor u = checked_like(up, gate.shape(), "swiglu_forward", "up");
  Tensor out = Tensor::empty(gate.shape());
  swiglu_forward(out.data<float>(), g.data<float>(), u.data<float>(), gate.numel());
  return out;
}

GatedGrads swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up) {
  const Tensor g = checked(gate, "swiglu_backward", "gate");
  const Tensor u = checked_like(up, gate.shape(), "swiglu_backward", "up");
  const Tensor dy = checked_like(dout, gate.shape(), "swiglu_backward", "dout");
  GatedGrads r{Tensor::empty(gate.shape()), Tensor::empty(gate.shape())};
  swiglu_backward(r.dgate.data<float>(), r.dup.data<float>(), dy.data<float>(), g.data<float>(), u.data<float>(),
                  gate.numel());
  return r;
}

Tensor geglu_forward(const Tensor& gate, const Tensor& up, GeluApprox approx) {
  check_approx(approx, "geglu_forward");
  const Tensor g = checked(gate, "geglu_forward", "gate");
  const Tensor u = checked_like(up, gate.shape(), "geglu_forward", "up");
  Tensor out = Tensor::empty(gate.shape());
  geglu_forward(out.data<float>(), g.data<float>(), u.data<float>(), gate.numel(), approx);
  return out;
}

GatedGrads geglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, GeluApprox approx) {
  check_approx(approx, "geglu_backward");
  const Tensor g = checked(gate, "geglu_backward", "gate");
  const Tensor u = checked_like(up, gate.shape(), "geglu_backward", "up");
  const Tensor dy = checked_like(dout, gate.shape(), "geglu_backward", "dout");
  GatedGrads r{Tensor::empty(gate.shape()), Tensor::empty(gate.shape())};
  geglu_backward(r.dgate.data<float>(), r.dup.data<float>(), dy.data<float>(), g.data<float>(), u.data<float>(),
                 gate.numel(), approx);
  return r;
}

}  // namespace mf
