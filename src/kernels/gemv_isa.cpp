// GEMV for decoding (see gemv.h): register tiles of weight rows x inputs
// (below), one SIMD accumulator per (row, input), the k loop in
// blocks of simd::kWidth with a masked tail. A tile's weight rows are loaded
// once per k block and multiplied into every input of the tile, so with n
// inputs each weight row comes from memory once and from L1 ceil(n /
// kInputTile) times. Threads take contiguous ranges of row tiles over the
// concatenated rows of all targets (one parallel region per call; libgomp
// keeps its team between regions, so a call pays a wake-up, not a thread
// start). Calls too small to pay for a region, and calls made inside one,
// run on the calling thread. Compiled once per instruction set
// (core/isa_target.h); gemv.cpp checks the call and dispatches.
#include "kernels/gemv.h"

#include <omp.h>

#include <algorithm>
#include <atomic>

#include "core/error.h"
#include "core/threads.h"
#include "core/isa_target.h"
#include "kernels/simd.h"

namespace mf::MF_ISA_NS {

namespace {

// Register tiles: kRowTile = 8 rows against one input (8 independent FMA
// chains, enough to hide the FMA latency when the weights come from cache),
// or 4 rows x kInputTile inputs = 16 accumulators with 16-lane vectors (32
// registers), 4 x 2 with 8-lane vectors (16 registers). Every (row, input)
// accumulator sums the same k blocks in the same order whatever the tile, so
// the tile shape never changes a bit.
constexpr int kRowTile = 8;
constexpr int kInputTile = simd::kWidth == 16 ? 4 : 2;
// Multiply-adds below which one thread does the whole call (a region's
// wake-up costs about as much as 32k multiply-adds from cache).
constexpr std::int64_t kParallelMinWork = std::int64_t{1} << 15;

// out[r][j] = sum_k w[r * in + k] * x[j * ldx + k], in the order of gemv.h.
template <int R, int NX>
inline void dot_tile(const float* w, std::int64_t in, const float* x, std::int64_t ldx, float (&out)[R][NX]) {
  using simd::Vec;
  Vec acc[R][NX];
  for (auto& row : acc)
    for (auto& a : row) a = simd::zero();
  auto step = [&](std::int64_t k, std::int64_t count) {
    Vec xv[NX];
    for (int j = 0; j < NX; ++j) xv[j] = simd::load(x + j * ldx + k, count);
    for (int r = 0; r < R; ++r) {
      const Vec wv = simd::load(w + r * in + k, count);
      for (int j = 0; j < NX; ++j) acc[r][j] = simd::fmadd(wv, xv[j], acc[r][j]);
    }
  };
  std::int64_t k = 0;
  for (; k + simd::kWidth <= in; k += simd::kWidth) step(k, simd::kWidth);
  if (k < in) step(k, in - k);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NX; ++j) out[r][j] = simd::reduce_add(acc[r][j]);
}

// Rows [row, row + R) of t against every input (R = 8, 4 or 1): tiles of
// kInputTile inputs take the rows four at a time; single inputs take all R.
template <int R>
void row_block(const GemvTarget& t, std::int64_t row, const float* x, std::int64_t ldx, std::int64_t n,
               std::int64_t in) {
  const float* w = t.weight + row * in;
  auto put = [&](std::int64_t r0, std::int64_t j0, int nr, int nx, const float* tile, int tile_stride) {
    for (int r = 0; r < nr; ++r)
      for (int j = 0; j < nx; ++j) {
        const float v = tile[r * tile_stride + j];
        const std::int64_t rr = row + r0 + r;
        t.y[(j0 + j) * t.ldy + rr] = t.bias ? v + t.bias[rr] : v;
      }
  };
  constexpr int RQ = R < 4 ? R : 4;  // rows per input tile
  std::int64_t j = 0;
  if (n >= kInputTile) {
    for (; j + kInputTile <= n; j += kInputTile)
      for (int r0 = 0; r0 < R; r0 += RQ) {
        float out[RQ][kInputTile];
        dot_tile<RQ, kInputTile>(w + r0 * in, in, x + j * ldx, ldx, out);
        put(r0, j, RQ, kInputTile, &out[0][0], kInputTile);
      }
  }
  for (; j < n; ++j) {
    float out[R][1];
    dot_tile<R, 1>(w, in, x + j * ldx, ldx, out);
    put(0, j, R, 1, &out[0][0], 1);
  }
}

std::int64_t tiles_of(const GemvTarget& t) { return (t.rows + kRowTile - 1) / kRowTile; }

// Row tiles [tile_begin, tile_end) of the targets' concatenated tiles.
void run_tiles(std::span<const GemvTarget> targets, std::int64_t tile_begin, std::int64_t tile_end, const float* x,
               std::int64_t ldx, std::int64_t n, std::int64_t in) {
  std::int64_t offset = 0;
  for (const GemvTarget& t : targets) {
    const std::int64_t tiles = tiles_of(t);
    const std::int64_t first = std::max(tile_begin - offset, std::int64_t{0});
    const std::int64_t last = std::min(tile_end - offset, tiles);
    offset += tiles;
    if (first >= last) continue;
    const std::int64_t row_end = std::min(last * kRowTile, t.rows);
    std::int64_t row = first * kRowTile;
    for (; row + kRowTile <= row_end; row += kRowTile) row_block<kRowTile>(t, row, x, ldx, n, in);
    for (; row + 4 <= row_end; row += 4) row_block<4>(t, row, x, ldx, n, in);
    for (; row < row_end; ++row) row_block<1>(t, row, x, ldx, n, in);
  }
}

}  // namespace

// The checked call of gemv.h: tiles over the threads.
void gemv_tiles(std::span<const GemvTarget> targets, const float* x, std::int64_t ldx, std::int64_t n,
                std::int64_t in) {
  std::int64_t tiles = 0, rows = 0;
  for (const GemvTarget& t : targets) {
    tiles += tiles_of(t);
    rows += t.rows;
  }
  if (tiles == 0) return;
  const bool parallel = rows * in * n >= kParallelMinWork && !omp_in_parallel() && num_threads() > 1;
  if (!parallel) {
    run_tiles(targets, 0, tiles, x, ldx, n, in);
    return;
  }
  const int threads = static_cast<int>(std::min<std::int64_t>(num_threads(), tiles));
#pragma omp parallel num_threads(threads)
  {
    const std::int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    run_tiles(targets, tiles * t / nt, tiles * (t + 1) / nt, x, ldx, n, in);
  }
}

}  // namespace mf::MF_ISA_NS
