// RMSNorm over the last dimension (Zhang & Sennrich 2019), forward and
// backward: out = x * rstd * weight with rstd = 1/sqrt(mean(x^2) + eps); no
// mean subtraction, no bias, plain weight (not Gemma's 1 + weight).
// Gradient contract: dinp is overwritten, dweight accumulates (+=).
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace mf {

// ---- raw kernels over contiguous row-major data ---------------------------
// Fast versions: float accumulation in SIMD lanes, rows in parallel, weight
// gradient summed over fixed row parts (see kernels/rows.h): results are
// independent of the thread count. weight may be null (w = 1), rstd may be
// null (not saved), dweight may be null (not computed).

// out = inp * rstd * weight
void rmsnorm_forward(float* out,           // [rows, n]
                     float* rstd,          // [rows] or null
                     const float* inp,     // [rows, n]
                     const float* weight,  // [n] or null
                     std::int64_t rows, std::int64_t n, float eps);

// xhat = inp * rstd, dnorm = dout * weight:
// dinp = rstd * (dnorm - xhat * mean(dnorm * xhat)); dweight += sum_rows dout * xhat.
void rmsnorm_backward(float* dinp,          // [rows, n] (overwritten)
                      float* dweight,       // [n] (+=) or null
                      const float* dout,    // [rows, n]
                      const float* inp,     // [rows, n]
                      const float* weight,  // [n] or null
                      const float* rstd,    // [rows]
                      std::int64_t rows, std::int64_t n);

// ---- tensor front doors ----------------------------------------------------
struct RmsNormOutput {
  Tensor out;   // [..., n]
  Tensor rstd;  // [...]
};
// x: [..., n] float32 (copied if not contiguous); weight: [n] or undefined;
// eps >= 0 and finite.
RmsNormOutput rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps);
// Returns dx [..., n]; dweight: [n] contiguous float32 accumulated into (+=,
// written through the handle), or undefined to skip.
Tensor rmsnorm_backward(const Tensor& dout, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                        const Tensor& dweight);

// ---- plain reference twins (double accumulation) ----------------------------
namespace reference {
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, std::int64_t rows,
                     std::int64_t n, float eps);
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, std::int64_t rows, std::int64_t n);
}  // namespace reference

}  // namespace mf
