// Tensor-level matrix product on top of the GEMM interface: 2-D, or batched
// 3-D with one operand optionally 2-D (broadcast over the batch, e.g. a
// weight). Transposed views (stride 1 on the row axis) are used in place.
#pragma once
#include "core/tensor.h"
#include "kernels/gemm.h"

namespace mf {

// op(a): [m, k] or [B, m, k]   (a is [m, k] / [B, m, k] for N, [k, m] / [B, k, m] for T)
// op(b): [k, n] or [B, k, n]   (b is [k, n] / [B, k, n] for N, [n, k] / [B, n, k] for T)
// returns [m, n] when both are 2-D, else [B, m, n] (a new contiguous float32 tensor).
// Throws "[matmul] ..." naming both shapes when they do not fit.
Tensor matmul(const Tensor& a, const Tensor& b, Trans ta = Trans::N, Trans tb = Trans::N);

}  // namespace mf
