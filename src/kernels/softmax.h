// Numerically stable softmax and log-softmax over the last dimension, forward
// and backward: y = exp(x - max) / sum exp(x - max) (Bridle 1990; max
// subtraction as in every framework). A row that is entirely -inf (a fully
// masked row) gives softmax 0 and log-softmax -inf, never NaN.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace mf {

// ---- raw kernels over contiguous row-major [rows, n] data ----------------
// Fast versions: SIMD exp (kernels/vec_exp.h, < 1 ulp) and float sums with
// 4 x kWidth partial accumulators (relative error <= simd::sum_depth(n) * 2^-24
// for the positive sum of exps); rows in parallel. `out` may equal `inp`,
// `dinp` may equal `dout`. Inputs are finite or -inf (+inf / NaN give NaN).

// out = softmax(inp)                                    // out, inp: [rows, n]
void softmax_forward(float* out, const float* inp, std::int64_t rows, std::int64_t n);
// dinp = out * (dout - sum_j dout_j out_j)              // dinp, dout, out: [rows, n]
void softmax_backward(float* dinp, const float* dout, const float* out, std::int64_t rows, std::int64_t n);
// out = inp - max - log(sum exp(inp - max))             // out, inp: [rows, n]
void log_softmax_forward(float* out, const float* inp, std::int64_t rows, std::int64_t n);
// dinp = dout - exp(out) * sum_j dout_j                 // dinp, dout, out: [rows, n]
void log_softmax_backward(float* dinp, const float* dout, const float* out, std::int64_t rows, std::int64_t n);

// ---- tensor front doors: x [..., n] float32 (copied if not contiguous) ----
// Activation gradients are returned as new tensors (the "overwrite" contract).
Tensor softmax_forward(const Tensor& x);                            // [..., n] -> [..., n]
Tensor softmax_backward(const Tensor& dout, const Tensor& out);     // out = softmax_forward(x)
Tensor log_softmax_forward(const Tensor& x);                        // [..., n] -> [..., n]
Tensor log_softmax_backward(const Tensor& dout, const Tensor& out);  // out = log_softmax_forward(x)

// ---- plain reference twins (double accumulation, std::exp in double) -------
namespace reference {
void softmax_forward(float* out, const float* inp, std::int64_t rows, std::int64_t n);
void softmax_backward(float* dinp, const float* dout, const float* out, std::int64_t rows, std::int64_t n);
void log_softmax_forward(float* out, const float* inp, std::int64_t rows, std::int64_t n);
void log_softmax_backward(float* dinp, const float* dout, const float* out, std::int64_t rows, std::int64_t n);
}  // namespace reference

}  // namespace mf
