// Matrix-vector products for decoding (one token per step, or a small batch
// of rows, one per sequence): y_j = W x_j (+ b) for j < n, W [rows, in]
// row-major as nn.Linear stores it. Each weight row is read from memory once
// per call whatever n is (the n inputs share it), rows are split over the
// OpenMP threads in contiguous ranges, and several matrices that read the
// same input (q/k/v, gate/up) form one call over their concatenated rows, so
// one parallel region streams all of them.
//
// Bits: y_j[r] = reduce(sum over k blocks of kWidth lanes, in order, of
// W[r, k..] * x_j[k..]) (+ b[r]), one accumulator per (row, input); the order
// depends only on `in`, never on n, the row's neighbours or the thread count,
// so a row of a batch gets exactly the bits it gets alone (batched generation
// equals sequential generation bit for bit).
#pragma once
#include <cstdint>
#include <span>

namespace mf {

// Rows of x at or below gemv_max_rows() use gemv instead of GEMM in
// linear_forward and the fused q/k/v and gate/up projections (a decode step
// or a batch of decode steps). Default kGemvMaxRows (a batch of 16 shares
// every weight read; a prefill of hundreds of rows is compute-bound and a
// packed GEMM wins). set_gemv_max_rows(0) turns the path off (GEMM for every
// size): the baseline that `modformer bench generate` measures in the same run.
inline constexpr std::int64_t kGemvMaxRows = 16;
std::int64_t gemv_max_rows();
void set_gemv_max_rows(std::int64_t rows);  // 0 .. 1024

// One matrix of a fused call: y[j * ldy + r] = sum_k weight[r * in + k] * x[j * ldx + k] (+ bias[r]).
struct GemvTarget {
  const float* weight = nullptr;  // [rows, in] row-major
  const float* bias = nullptr;    // [rows] or null
  float* y = nullptr;             // [n, ldy] (the first `rows` columns written)
  std::int64_t rows = 0;
  std::int64_t ldy = 0;  // >= rows
};

// Every target against the same inputs x [n, ldx] (the first `in` columns).
// Checks (front door): n >= 1, in >= 1, ldx >= in, rows >= 0, ldy >= rows,
// pointers non-null; errors name the argument.
void gemv(std::span<const GemvTarget> targets, const float* x, std::int64_t ldx, std::int64_t n, std::int64_t in);

// One matrix.
void gemv(const float* weight, const float* bias, std::int64_t rows, std::int64_t in, const float* x,
          std::int64_t ldx, std::int64_t n, float* y, std::int64_t ldy);

namespace reference {
// Plain loops with double accumulation; the specification.
void gemv(std::span<const GemvTarget> targets, const float* x, std::int64_t ldx, std::int64_t n, std::int64_t in);
}  // namespace reference

}  // namespace mf
