// Shared plumbing of the row kernels (softmax, norms, activations): the
// OpenMP row loop with its size threshold, and the tensor front door that
// checks dtype/rank and views a tensor as a contiguous [rows, n] matrix over
// its last dimension (leading dimensions flattened).
#pragma once
#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace mf::kernels {

// Tuning table. kParallelMinWork: smaller calls run on one thread. 16K
// elements of softmax or SiLU take ~10 us on one core (`modformer --threads 1
// bench kernels --rows 16 --n 1024`), several times an OpenMP fork/join; not
// tuned further, because 2-thread timings on the shared 2-core build machine
// were dominated by preemption.
inline constexpr std::int64_t kParallelMinWork = 1 << 14;
// Element-wise kernels work on chunks of this many floats (a multiple of every
// SIMD width, so chunking never changes a result).
inline constexpr std::int64_t kElementwiseChunk = 1 << 13;
// Norm backward splits the rows into at most this many parts, each summing its
// parameter gradients into its own scratch row (fixed, so the sums do not
// depend on the thread count; scratch is kParamGradParts x n floats per gradient).
inline constexpr std::int64_t kParamGradParts = 32;

// body(r) for r in [0, rows), rows split statically over the threads when
// rows * n is large enough. Each row is computed by one thread with an order
// that depends only on n, so results do not depend on the thread count.
template <class F>
inline void parallel_rows(std::int64_t rows, std::int64_t n, F&& body) {
  const bool par = rows > 1 && rows * n >= kParallelMinWork;
#pragma omp parallel for schedule(static) if (par)
  for (std::int64_t r = 0; r < rows; ++r) body(r);
}

// body(begin, end) over chunks of [0, count) for element-wise kernels.
template <class F>
inline void parallel_chunks(std::int64_t count, F&& body) {
  const std::int64_t chunks = (count + kElementwiseChunk - 1) / kElementwiseChunk;
  const bool par = chunks > 1 && count >= kParallelMinWork;
#pragma omp parallel for schedule(static) if (par)
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t b = c * kElementwiseChunk;
    body(b, b + kElementwiseChunk < count ? b + kElementwiseChunk : count);
  }
}

// body(r, acc) for r in [0, rows), where acc[k] (null when grads[k] is null)
// is a zeroed [n] scratch row private to r's part: rows are split into
// min(rows, kParamGradParts) contiguous parts run in parallel. Afterwards
// grads[k] += sum over parts of acc[k], the parts added in order. So a
// parameter gradient is a float sum with at most ceil(rows / parts) + parts
// additions per element, the same for every thread count.
template <int K, class F>
inline void parallel_rows_accumulate(std::int64_t rows, std::int64_t n, std::array<float*, K> grads, F&& body) {
  if (rows <= 0 || n <= 0) return;
  const std::int64_t parts = rows < kParamGradParts ? rows : kParamGradParts;
  Tensor scratch = Tensor::zeros({parts, K, n});
  float* s = scratch.data<float>();
  const bool par = parts > 1 && rows * n >= kParallelMinWork;
#pragma omp parallel for schedule(static) if (par)
  for (std::int64_t p = 0; p < parts; ++p) {
    std::array<float*, K> acc;
    for (int k = 0; k < K; ++k) acc[k] = grads[k] ? s + (p * K + k) * n : nullptr;
    for (std::int64_t r = rows * p / parts; r < rows * (p + 1) / parts; ++r) body(r, acc);
  }
  for (int k = 0; k < K; ++k) {
    if (!grads[k]) continue;
    float* a0 = s + k * n;
    for (std::int64_t p = 1; p < parts; ++p) {
      const float* ap = s + (p * K + k) * n;
      for (std::int64_t j = 0; j < n; ++j) a0[j] += ap[j];
    }
    for (std::int64_t j = 0; j < n; ++j) grads[k][j] += a0[j];
  }
}

// A float32 tensor viewed as contiguous [rows, n] over its last dimension.
struct RowsView {
  Tensor t;  // contiguous (a copy when the input was not)
  std::int64_t rows = 0, n = 0;
  const float* data() const { return t.data<float>(); }
};

// Checks that `x` is defined, float32, with at least one dimension; copies
// it to contiguous memory if needed. Errors name `op` and `name`.
RowsView as_rows(const Tensor& x, const char* op, const char* name);

// Checks that `x` is defined and float32; returns it contiguous (copied if
// needed). Any rank, including 0 (element-wise kernels).
Tensor contiguous_f32(const Tensor& x, const char* op, const char* name);

// Checks that `x` (defined, float32) has exactly the shape `shape`.
void check_same_shape(const Tensor& x, const Shape& shape, const char* op, const char* name);

// Checks that `p` is a defined, contiguous, float32 tensor of shape [n]
// (a parameter or its gradient).
void check_vector(const Tensor& p, std::int64_t n, const char* op, const char* name);

// The leading shape of `s` (all but the last dimension).
Shape leading_shape(const Shape& s);

}  // namespace mf::kernels
