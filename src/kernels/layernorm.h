// LayerNorm over the last dimension (Ba, Kiros & Hinton 2016), forward and
// backward, llm.c style: forward saves mean and rstd = 1/sqrt(var + eps)
// (biased variance, as PyTorch), backward recomputes xhat from them.
// Gradient contract: dinp is overwritten, dweight and dbias accumulate (+=).
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace mf {

// ---- raw kernels over contiguous row-major data ---------------------------
// Fast versions: float accumulation in SIMD lanes (two-pass mean/variance,
// so no cancellation from E[x^2] - E[x]^2), rows in parallel; parameter
// gradients are summed over fixed row parts (see kernels/rows.h), so every
// result is independent of the thread count.
// weight/bias may be null (no affine: w = 1, b = 0); mean/rstd may be null
// (not saved); dweight/dbias may be null (not computed).

// out = (inp - mean) * rstd * weight + bias
void layernorm_forward(float* out,           // [rows, n]
                       float* mean,          // [rows] or null
                       float* rstd,          // [rows] or null
                       const float* inp,     // [rows, n]
                       const float* weight,  // [n] or null
                       const float* bias,    // [n] or null
                       std::int64_t rows, std::int64_t n, float eps);

// xhat = (inp - mean) * rstd, dnorm = dout * weight:
// dinp = rstd * (dnorm - mean(dnorm) - xhat * mean(dnorm * xhat));
// dweight += sum_rows dout * xhat; dbias += sum_rows dout.
void layernorm_backward(float* dinp,          // [rows, n] (overwritten)
                        float* dweight,       // [n] (+=) or null
                        float* dbias,         // [n] (+=) or null
                        const float* dout,    // [rows, n]
                        const float* inp,     // [rows, n]
                        const float* weight,  // [n] or null
                        const float* mean,    // [rows]
                        const float* rstd,    // [rows]
                        std::int64_t rows, std::int64_t n);

// ---- tensor front doors ----------------------------------------------------
struct LayerNormOutput {
  Tensor out;   // [..., n]
  Tensor mean;  // [...]
  Tensor rstd;  // [...]
};
// x: [..., n] float32 (copied if not contiguous); weight, bias: [n] or
// undefined (no affine); eps >= 0 and finite.
LayerNormOutput layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps);
// Returns dx [..., n]. dweight/dbias: [n] contiguous float32 tensors that are
// accumulated into (+=, written through the handle), or undefined to skip.
Tensor layernorm_backward(const Tensor& dout, const Tensor& x, const Tensor& weight, const Tensor& mean,
                          const Tensor& rstd, const Tensor& dweight, const Tensor& dbias);

// ---- plain reference twins (double accumulation) ----------------------------
namespace reference {
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, std::int64_t rows, std::int64_t n, float eps);
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, std::int64_t rows,
                        std::int64_t n);
}  // namespace reference

}  // namespace mf
