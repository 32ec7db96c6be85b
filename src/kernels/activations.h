// Element-wise activations, forward and backward: GELU (Hendrycks & Gimpel
// 2016; exact x * Phi(x) via erf, or the tanh approximation of GPT-2/BERT),
// SiLU/Swish (Elfwing et al. 2017; Ramachandran et al. 2017), and the gated
// forms of Shazeer 2020: swiglu = silu(gate) * up, geglu = gelu(gate) * up
// (gate and up are two separate tensors of one shape, not one [.., 2n] tensor).
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace mf {

enum class GeluApprox : std::uint8_t {
  Erf,   // x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))   (torch approximate='none')
  Tanh,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (torch approximate='tanh')
};

// ---- raw kernels over `count` contiguous floats -----------------------------
// Fast versions: SIMD exp from kernels/vec_exp.h; sigmoid and tanh are built
// from exp(-|v|) so nothing overflows; the erf GELU uses a fitted erfc
// (tools/derive_kernel_polynomials.py; Phi(x) within 13 * 2^-24 relative, also
// in the far negative tail: the bound tests/unit/test_kernels_activations.cpp
// derives and checks). Every output lane depends only on its own inputs, so
// the results do not depend on threads or chunking. Gradients overwrite.

void gelu_forward(float* out, const float* inp, std::int64_t count, GeluApprox approx);
// dinp = dout * gelu'(inp)
void gelu_backward(float* dinp, const float* dout, const float* inp, std::int64_t count, GeluApprox approx);
// out = inp * sigmoid(inp)
void silu_forward(float* out, const float* inp, std::int64_t count);
// dinp = dout * s (1 + inp (1 - s)), s = sigmoid(inp)
void silu_backward(float* dinp, const float* dout, const float* inp, std::int64_t count);
// out = silu(gate) * up
void swiglu_forward(float* out, const float* gate, const float* up, std::int64_t count);
// dgate = dout * up * silu'(gate); dup = dout * silu(gate)
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                     std::int64_t count);
// out = gelu(gate) * up
void geglu_forward(float* out, const float* gate, const float* up, std::int64_t count, GeluApprox approx);
// dgate = dout * up * gelu'(gate); dup = dout * gelu(gate)
void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                    std::int64_t count, GeluApprox approx);

// ---- tensor front doors: float32 tensors of any shape (copied if not contiguous)
Tensor gelu_forward(const Tensor& x, GeluApprox approx);
Tensor gelu_backward(const Tensor& dout, const Tensor& x, GeluApprox approx);  // -> dx
Tensor silu_forward(const Tensor& x);
Tensor silu_backward(const Tensor& dout, const Tensor& x);  // -> dx

struct GatedGrads {
  Tensor dgate;  // same shape as gate
  Tensor dup;    // same shape as up
};
Tensor swiglu_forward(const Tensor& gate, const Tensor& up);  // gate, up: [..., n] -> [..., n]
GatedGrads swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up);
Tensor geglu_forward(const Tensor& gate, const Tensor& up, GeluApprox approx);
GatedGrads geglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, GeluApprox approx);

// ---- plain reference twins (double arithmetic, libm erf/erfc/tanh/exp) -----
namespace reference {
void gelu_forward(float* out, const float* inp, std::int64_t count, GeluApprox approx);
void gelu_backward(float* dinp, const float* dout, const float* inp, std::int64_t count, GeluApprox approx);
void silu_forward(float* out, const float* inp, std::int64_t count);
void silu_backward(float* dinp, const float* dout, const float* inp, std::int64_t count);
void swiglu_forward(float* out, const float* gate, const float* up, std::int64_t count);
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                     std::int64_t count);
void geglu_forward(float* out, const float* gate, const float* up, std::int64_t count, GeluApprox approx);
void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                    std::int64_t count, GeluApprox approx);
}  // namespace reference

}  // namespace mf
