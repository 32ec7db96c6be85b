// Reference activations: the formulas of activations.h in double with libm.
// Tails are computed without cancellation: Phi(x) via erfc, sigmoid per sign,
// and the tanh GELU as x sigmoid(2u) (equal to 0.5 x (1 + tanh u)).
#include <cmath>
#include <numbers>

#include "kernels/activations.h"

namespace mf::reference {

namespace {
constexpr double kSqrt2OverPi = 0.7978845608028654;  // sqrt(2 / pi)
constexpr double kGeluCubic = 0.044715;

// sigmoid(v) = 1 / (1 + exp(-v)), evaluated so that neither tail cancels;
// sigmoid'(v) = sigmoid(v) sigmoid(-v).
double sigmoid(double v) { return v >= 0 ? 1.0 / (1.0 + std::exp(-v)) : std::exp(v) / (1.0 + std::exp(v)); }

double silu(double x) { return x * sigmoid(x); }
double silu_grad(double x) { return sigmoid(x) + x * sigmoid(x) * sigmoid(-x); }

// The tanh GELU uses 0.5 (1 + tanh(u)) = sigmoid(2u): the same function,
// without the cancellation of 1 + tanh(u) for large negative u.
double gelu_tanh_u(double x) { return kSqrt2OverPi * (x + kGeluCubic * x * x * x); }

double gelu(double x, GeluApprox a) {
  if (a == GeluApprox::Tanh) return x * sigmoid(2.0 * gelu_tanh_u(x));
  return x * 0.5 * std::erfc(-x / std::numbers::sqrt2);  // x * Phi(x)
}
double gelu_grad(double x, GeluApprox a) {
  if (a == GeluApprox::Tanh) {
    const double v = 2.0 * gelu_tanh_u(x), dv = 2.0 * kSqrt2OverPi * (1.0 + 3.0 * kGeluCubic * x * x);
    return sigmoid(v) + x * sigmoid(v) * sigmoid(-v) * dv;
  }
  // Phi(x) + x * phi(x)
  return 0.5 * std::erfc(-x / std::numbers::sqrt2) + x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * std::numbers::pi);
}
}  // namespace

void gelu_forward(float* out, const float* inp, std::int64_t count, GeluApprox approx) {
  for (std::int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(gelu(inp[i], approx));
}
void gelu_backward(float* dinp, const float* dout, const float* inp, std::int64_t count, GeluApprox approx) {
  for (std::int64_t i = 0; i < count; ++i) dinp[i] = static_cast<float>(dout[i] * gelu_grad(inp[i], approx));
}
void silu_forward(float* out, const float* inp, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(silu(inp[i]));
}
void silu_backward(float* dinp, const float* dout, const float* inp, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) dinp[i] = static_cast<float>(dout[i] * silu_grad(inp[i]));
}
void swiglu_forward(float* out, const float* gate, const float* up, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(silu(gate[i]) * up[i]);
}
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                     std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) {
    const double g = dout[i];
    dgate[i] = static_cast<float>(g * up[i] * silu_grad(gate[i]));
    dup[i] = static_cast<float>(g * silu(gate[i]));
  }
}
void geglu_forward(float* out, const float* gate, const float* up, std::int64_t count, GeluApprox approx) {
  for (std::int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(gelu(gate[i], approx) * up[i]);
}
void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                    std::int64_t count, GeluApprox approx) {
  for (std::int64_t i = 0; i < count; ++i) {
    const double g = dout[i];
    dgate[i] = static_cast<float>(g * up[i] * gelu_grad(gate[i], approx));
    dup[i] = static_cast<float>(g * gelu(gate[i], approx));
  }
}

}  // namespace mf::reference
