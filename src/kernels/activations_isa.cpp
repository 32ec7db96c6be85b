// Fast element-wise activations (see activations.h): each activation is a
// small struct with value() and value_grad() on SIMD vectors; one template
// per kernel shape (plain, gated; forward, backward) runs it over chunks.
// The kernels, compiled once per instruction set (core/isa_target.h);
// activations.cpp dispatches to the variant in use.
#include "kernels/activations.h"

#include "core/profile.h"
#include "kernels/rows.h"
#include "core/isa_target.h"
#include "kernels/simd.h"

namespace mf::MF_ISA_NS {

namespace {
using simd::Vec;

// sigmoid(v) and its slope s (1 - s), from e = exp(-|v|) in [0, 1]: with
// d = 1 / (1 + e), s = d for v >= 0 and e d for v < 0, s (1 - s) = e d^2.
// Nothing overflows and nothing cancels.
inline Vec sigmoid(Vec v, Vec* slope) {
  const Vec zero = simd::zero(), one = simd::set1(1.0f);
  const Vec e = simd::exp(zero - simd::abs(v));
  const Vec d = one / (one + e);
  const Vec ed = e * d;
  if (slope) *slope = ed * d;
  return simd::select_lt(v, zero, ed, d);
}

struct Silu {
  static Vec value(Vec x) { return x * sigmoid(x, nullptr); }
  // silu'(x) = s + x s (1 - s)
  static Vec value_grad(Vec x, Vec* grad) {
    Vec ds;
    const Vec s = sigmoid(x, &ds);
    *grad = simd::fmadd(x, ds, s);
    return x * s;
  }
};

// gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
struct GeluTanh {
  static constexpr float kC0 = 2.0f * 0.7978845608028654f;             // 2 sqrt(2/pi)
  static constexpr float kC1 = 2.0f * 0.7978845608028654f * 0.044715f;  // 2 sqrt(2/pi) 0.044715
  // |x| > 1e4 saturates the sigmoid exactly; clamping keeps x^3 finite.
  static Vec clamp(Vec x) { return simd::min(simd::set1(1e4f), simd::max(simd::set1(-1e4f), x)); }
  static Vec value(Vec x) {
    const Vec xc = clamp(x);
    const Vec v = xc * simd::fmadd(xc * xc, simd::set1(kC1), simd::set1(kC0));  // 2u
    return x * sigmoid(v, nullptr);
  }
  // d/dx = s + x s (1 - s) dv/dx, dv/dx = kC0 + 3 kC1 x^2
  static Vec value_grad(Vec x, Vec* grad) {
    const Vec xc = clamp(x), x2 = xc * xc;
    const Vec v = xc * simd::fmadd(x2, simd::set1(kC1), simd::set1(kC0));
    Vec ds;
    const Vec s = sigmoid(v, &ds);
    *grad = simd::fmadd(xc * ds, simd::fmadd(x2, simd::set1(3.0f * kC1), simd::set1(kC0)), s);
    return x * s;
  }
};

// gelu_erf(x) = x Phi(x). With a = |x|: Phi(-a) = erfc(a / sqrt 2) / 2 =
// exp(-a^2/2) t E(t) / 2, t = 1 / (1 + a / (2 sqrt 2)), E fitted by
// tools/derive_kernel_polynomials.py (relative error 2.7e-8); Phi(x) = Phi(-a)
// for x < 0, 1 - Phi(-a) otherwise. a^2 is split exactly (a*a + fma error)
// so that exp(-a^2/2) keeps its relative precision for large a.
struct GeluErf {
  static constexpr float kE[11] = {0x1.7384a6p-5f,  -0x1.f6f2aap-3f, 0x1.08a70ep-1f, -0x1.ee0ddep-2f,
                                   0x1.370f94p-3f,  -0x1.165b6ap-4f, 0x1.88821ap-4f, 0x1.664b74p-3f,
                                   0x1.f9add2p-3f,  0x1.20dcf4p-2f,  0x1.20dd76p-2f};  // E10 .. E0
  static constexpr float kHalfOverSqrt2 = 0.35355339059327373f;
  static constexpr float kInvSqrt2Pi = 0.3989422804014327f;
  // Phi(x) and exp(-x^2/2). |x| is clamped to 20 (Phi(-20) ~ 3e-89 is 0 in float).
  static Vec phi_and_gauss(Vec x, Vec* gauss) {
    const Vec one = simd::set1(1.0f), half = simd::set1(0.5f);
    const Vec a = simd::min(simd::set1(20.0f), simd::abs(x));
    const Vec t = one / simd::fmadd(a, simd::set1(kHalfOverSqrt2), one);
    Vec p = simd::set1(kE[0]);
    for (int k = 1; k < 11; ++k) p = simd::fmadd(p, t, simd::set1(kE[k]));
    const Vec aa = a * a, aa_err = simd::fmsub(a, a, aa);  // a^2 = aa + aa_err exactly
    Vec g = simd::exp(simd::zero() - half * aa);
    g = simd::fnmadd(g, half * aa_err, g);  // exp(-(aa + aa_err)/2) ~ g (1 - aa_err/2)
    *gauss = g;
    const Vec tail = half * (t * p) * g;  // Phi(-|x|)
    return simd::select_lt(x, simd::zero(), tail, one - tail);
  }
  static Vec value(Vec x) {
    Vec g;
    return x * phi_and_gauss(x, &g);
  }
  // d/dx = Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi)
  static Vec value_grad(Vec x, Vec* grad) {
    Vec g;
    const Vec phi = phi_and_gauss(x, &g);
    *grad = simd::fmadd(x, g * simd::set1(kInvSqrt2Pi), phi);
    return x * phi;
  }
};

template <class Act>
void act_forward(float* out, const float* inp, std::int64_t count) {
  const profile::Scope timer(profile::Category::Activation);
  kernels::parallel_chunks(count, [&](std::int64_t b, std::int64_t e) {
    simd::for_each_block(e - b, [&](std::int64_t i, std::int64_t c) {
      simd::store(out + b + i, Act::value(simd::load(inp + b + i, c)), c);
    });
  });
}

template <class Act>
void act_backward(float* dinp, const float* dout, const float* inp, std::int64_t count) {
  const profile::Scope timer(profile::Category::Activation);
  kernels::parallel_chunks(count, [&](std::int64_t b, std::int64_t e) {
    simd::for_each_block(e - b, [&](std::int64_t i, std::int64_t c) {
      Vec grad;
      Act::value_grad(simd::load(inp + b + i, c), &grad);
      simd::store(dinp + b + i, simd::load(dout + b + i, c) * grad, c);
    });
  });
}

template <class Act>
void gated_forward(float* out, const float* gate, const float* up, std::int64_t count) {
  const profile::Scope timer(profile::Category::Activation);
  kernels::parallel_chunks(count, [&](std::int64_t b, std::int64_t e) {
    simd::for_each_block(e - b, [&](std::int64_t i, std::int64_t c) {
      simd::store(out + b + i, Act::value(simd::load(gate + b + i, c)) * simd::load(up + b + i, c), c);
    });
  });
}

template <class Act>
void gated_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                    std::int64_t count) {
  const profile::Scope timer(profile::Category::Activation);
  kernels::parallel_chunks(count, [&](std::int64_t b, std::int64_t e) {
    simd::for_each_block(e - b, [&](std::int64_t i, std::int64_t c) {
      const std::int64_t k = b + i;
      Vec grad;
      const Vec y = Act::value_grad(simd::load(gate + k, c), &grad);
      const Vec g = simd::load(dout + k, c);
      simd::store(dgate + k, g * simd::load(up + k, c) * grad, c);  // dout * up * act'(gate)
      simd::store(dup + k, g * y, c);                               // dout * act(gate)
    });
  });
}

// Calls f(Act{}) for the GELU variant `a` (the one switch over variants).
template <class F>
void with_gelu(GeluApprox a, const char* op, F&& f) {
  switch (a) {
    case GeluApprox::Erf:
      return f(GeluErf{});
    case GeluApprox::Tanh:
      return f(GeluTanh{});
  }
  fail("[", op, "] unknown GELU approximation ", static_cast<int>(a));
}
}  // namespace

void gelu_forward(float* out, const float* inp, std::int64_t count, GeluApprox approx) {
  with_gelu(approx, "gelu_forward", [&](auto act) { act_forward<decltype(act)>(out, inp, count); });
}
void gelu_backward(float* dinp, const float* dout, const float* inp, std::int64_t count, GeluApprox approx) {
  with_gelu(approx, "gelu_backward", [&](auto act) { act_backward<decltype(act)>(dinp, dout, inp, count); });
}
void silu_forward(float* out, const float* inp, std::int64_t count) { act_forward<Silu>(out, inp, count); }
void silu_backward(float* dinp, const float* dout, const float* inp, std::int64_t count) {
  act_backward<Silu>(dinp, dout, inp, count);
}
void swiglu_forward(float* out, const float* gate, const float* up, std::int64_t count) {
  gated_forward<Silu>(out, gate, up, count);
}
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                     std::int64_t count) {
  gated_backward<Silu>(dgate, dup, dout, gate, up, count);
}
void geglu_forward(float* out, const float* gate, const float* up, std::int64_t count, GeluApprox approx) {
  with_gelu(approx, "geglu_forward", [&](auto act) { gated_forward<decltype(act)>(out, gate, up, count); });
}
void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                    std::int64_t count, GeluApprox approx) {
  with_gelu(approx, "geglu_backward",
            [&](auto act) { gated_backward<decltype(act)>(dgate, dup, dout, gate, up, count); });
}

}  // namespace mf::MF_ISA_NS
