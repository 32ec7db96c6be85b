// Register-blocked micro-kernel for the small products inside flash attention:
// C[M x N] (=, += or row-scaled +=) A[M x K] B[K x N], where A is read by
// scalar broadcast in either layout (so P^T, dS^T and K rows need no
// transposed copies) and B rows are vector loads; N may end in a partial
// vector (masked loads/stores), so head dims that are multiples of 8 work.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "nn/attention/flash_simd.h"

namespace mf::MF_ISA_NS::flash {

enum class TileMode { Store, Add, ScaleAdd };  // C = AB; C += AB; C = s[m] * C + AB

// Register blocking per ISA: NV vectors of C per row, MR rows, with
// MR * NV accumulators + NV B vectors inside the register file (32 zmm,
// 16 ymm). Chosen by `modformer bench attention` (kernel rows).
template <class Isa>
struct Blocking;
template <>
struct Blocking<IsaScalar> {
  static constexpr int kMaxNV = 4;
  static constexpr int mr(int) { return 4; }
};
#if MF_ISA_LEVEL >= 1
template <>
struct Blocking<IsaAvx2> {
  static constexpr int kMaxNV = 2;
  static constexpr int mr(int nv) { return nv == 1 ? 8 : 6; }
};
#endif
#if MF_ISA_LEVEL >= 2
template <>
struct Blocking<IsaAvx512> {
  static constexpr int kMaxNV = 4;
  // nv = 2 takes 8 rows (not 12): it divides the 16/32/64-key tiles of narrow windows.
  static constexpr int mr(int nv) { return nv == 1 ? 16 : nv == 2 ? 8 : nv == 3 ? 8 : 6; }
};
#endif

// One MR x (NV vectors) block of C over the full K. ACOL: A(m, k) = a[k * lda + m]
// (column layout), else a[m * lda + k]. TAIL: the last vector holds tail_n lanes.
// col_max (optional, full vectors only): col_max[n] = max(col_max[n], max_m C[m, n]).
template <class Isa, int MR, int NV, bool ACOL, bool TAIL>
inline void micro_tile(std::int64_t k_len, const float* a, std::int64_t lda, const float* b, std::int64_t ldb,
                       float* c, std::int64_t ldc, int tail_n, TileMode mode, const float* row_scale,
                       float* col_max) {
  using I = Isa;
  using V = typename I::V;
  V acc[MR][NV];
  if (mode == TileMode::Store) {
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < NV; ++v) acc[m][v] = I::zero();
  } else {
    for (int m = 0; m < MR; ++m) {
      const bool scaled = mode == TileMode::ScaleAdd && row_scale != nullptr;
      const V s = scaled ? I::set1(row_scale[m]) : I::set1(1.0f);
      for (int v = 0; v < NV; ++v) {
        const float* cp = c + m * ldc + v * I::W;
        V x = (TAIL && v == NV - 1) ? I::load_n(cp, tail_n) : I::load(cp);
        acc[m][v] = scaled ? I::mul(x, s) : x;
      }
    }
  }
  for (std::int64_t k = 0; k < k_len; ++k) {
    V bv[NV];
    const float* bp = b + k * ldb;
    for (int v = 0; v < NV; ++v) bv[v] = (TAIL && v == NV - 1) ? I::load_n(bp + v * I::W, tail_n) : I::load(bp + v * I::W);
    for (int m = 0; m < MR; ++m) {
      const V av = I::set1(ACOL ? a[k * lda + m] : a[m * lda + k]);
      for (int v = 0; v < NV; ++v) acc[m][v] = I::fmadd(av, bv[v], acc[m][v]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) {
      float* cp = c + m * ldc + v * I::W;
      if (TAIL && v == NV - 1)
        I::store_n(cp, acc[m][v], tail_n);
      else
        I::store(cp, acc[m][v]);
    }
  if (col_max != nullptr)
    for (int v = 0; v < NV; ++v) {
      V mx = I::load(col_max + v * I::W);
      for (int m = 0; m < MR; ++m) mx = I::max(mx, acc[m][v]);
      I::store(col_max + v * I::W, mx);
    }
}

using MicroFn = void (*)(std::int64_t, const float*, std::int64_t, const float*, std::int64_t, float*, std::int64_t,
                         int, TileMode, const float*, float*);

template <class Isa, int NV, bool ACOL, bool TAIL, std::size_t... MRs>
constexpr auto micro_table(std::index_sequence<MRs...>) {
  return std::array<MicroFn, sizeof...(MRs)>{&micro_tile<Isa, static_cast<int>(MRs) + 1, NV, ACOL, TAIL>...};
}

// Runs the whole M x N product in MR x NV blocks: N chunks outside (the B
// chunk stays in L1 across the row blocks), rows inside.
template <class Isa, int NV, bool ACOL, bool TAIL>
inline void tile_gemm_nv(std::int64_t m_len, std::int64_t k_len, const float* a, std::int64_t lda, const float* b,
                         std::int64_t ldb, float* c, std::int64_t ldc, int tail_n, TileMode mode,
                         const float* row_scale, float* col_max) {
  constexpr int kMR = Blocking<Isa>::mr(NV);
  static constexpr auto table = micro_table<Isa, NV, ACOL, TAIL>(std::make_index_sequence<kMR>{});
  std::int64_t m0 = 0;
  for (; m0 + kMR <= m_len; m0 += kMR)
    micro_tile<Isa, kMR, NV, ACOL, TAIL>(k_len, ACOL ? a + m0 : a + m0 * lda, lda, b, ldb, c + m0 * ldc, ldc, tail_n,
                                         mode, row_scale == nullptr ? nullptr : row_scale + m0, col_max);
  if (m0 < m_len)
    table[static_cast<std::size_t>(m_len - m0 - 1)](k_len, ACOL ? a + m0 : a + m0 * lda, lda, b, ldb, c + m0 * ldc,
                                                     ldc, tail_n, mode,
                                                     row_scale == nullptr ? nullptr : row_scale + m0, col_max);
}

template <class Isa, bool ACOL>
void tile_gemm(std::int64_t m_len, std::int64_t n_len, std::int64_t k_len, const float* a, std::int64_t lda,
               const float* b, std::int64_t ldb, float* c, std::int64_t ldc, TileMode mode,
               const float* row_scale = nullptr, float* col_max = nullptr) {
  constexpr int W = Isa::W;
  constexpr int kMaxNV = Blocking<Isa>::kMaxNV;
  if (m_len <= 0 || n_len <= 0) return;
  const std::int64_t nvec = (n_len + W - 1) / W;
  const int tail_n = static_cast<int>(n_len - (nvec - 1) * W);
  for (std::int64_t v0 = 0; v0 < nvec; v0 += kMaxNV) {
    const int nv = static_cast<int>(nvec - v0 < kMaxNV ? nvec - v0 : kMaxNV);
    const bool tail = v0 + nv == nvec && tail_n != W;
    // K is cut into blocks whose B chunk (kc rows x nv vectors) fits in half of L1 (16 KiB);
    // later blocks add into C.
    const std::int64_t kc = std::max<std::int64_t>(16, 16384 / (nv * W * 4));
    for (std::int64_t k0 = 0; k0 == 0 || k0 < k_len; k0 += kc) {  // k_len == 0: one empty block (C = 0)
      const std::int64_t kn = std::min(kc, k_len - k0);
      const float* bb = b + k0 * ldb + v0 * W;
      const float* aa = ACOL ? a + k0 * lda : a + k0;
      const TileMode md = k0 == 0 ? mode : TileMode::Add;
      float* cc = c + v0 * W;
      float* cm = (col_max == nullptr || k0 + kn < k_len) ? nullptr : col_max + v0 * W;
#define MF_FLASH_NV_CASE(NVC)                                                                                    \
  case NVC:                                                                                                      \
    if constexpr (NVC <= kMaxNV) {                                                                               \
      if (tail)                                                                                                  \
        tile_gemm_nv<Isa, NVC, ACOL, true>(m_len, kn, aa, lda, bb, ldb, cc, ldc, tail_n, md, row_scale, cm);           \
      else                                                                                                       \
        tile_gemm_nv<Isa, NVC, ACOL, false>(m_len, kn, aa, lda, bb, ldb, cc, ldc, tail_n, md, row_scale, cm);          \
    }                                                                                                            \
    break;
      switch (nv) {
        MF_FLASH_NV_CASE(1)
        MF_FLASH_NV_CASE(2)
        MF_FLASH_NV_CASE(3)
        MF_FLASH_NV_CASE(4)
        default:
          break;
      }
    }
#undef MF_FLASH_NV_CASE
  }
}

// Scores of a few rows against a key block, vectorized along d (the few-row
// decode case, where broadcasting K would use one lane in 16):
// s[r * lds + j] = sum_d q[r * ldq + d] k[j * ldk + d] for j < nk, r < rows;
// lanes j in [nk, round_up(nk, W)) are set to 0. q rows must be zero-padded
// to a multiple of W; k rows are read only up to d. Rows go in pairs that
// share each K load (GQA decode: the query heads of one KV head); every
// (row, key) sum is the same sequence of operations whatever the pairing, so
// one row alone (the backward) reproduces it bit for bit.
template <class Isa>
void row_dot_scores(std::int64_t rows, std::int64_t nk, std::int64_t d, const float* q, std::int64_t ldq,
                    const float* k, std::int64_t ldk, float* s, std::int64_t lds) {
  using I = Isa;
  using V = typename I::V;
  constexpr int W = I::W;
  const std::int64_t dfull = d / W * W;
  const int dtail = static_cast<int>(d - dfull);
  constexpr int G = W < 8 ? W : 8;  // keys per pass: G row pointers and 2 G accumulators live in registers
  for (std::int64_t j0 = 0; j0 < nk; j0 += W) {
    const int nb = static_cast<int>(nk - j0 < W ? nk - j0 : W);
    const float* kb = k + j0 * ldk;
    for (std::int64_t r = 0; r < rows; r += 2) {
      const bool pair = r + 1 < rows;
      V acc0[W], acc1[W];
      for (int t = 0; t < W; ++t) acc0[t] = acc1[t] = I::zero();
      const float* q0 = q + r * ldq;
      const float* q1 = pair ? q0 + ldq : q0;
      // One pass over d for keys [t0, t0 + ng): FULL (ng == G, a constant: unrolled) or the last, shorter
      // group; PAIR: rows r and r + 1 share each K load.
      const auto pass = [&]<bool PAIR, bool FULL>(const float* const* kp, int t0, int ng) {
        const int n = FULL ? G : ng;
        std::int64_t c = 0;
        for (; c < dfull; c += W) {
          const V qv0 = I::load(q0 + c), qv1 = I::load(q1 + c);
          for (int t = 0; t < n; ++t) {
            const V kv = I::load(kp[t] + c);
            acc0[t0 + t] = I::fmadd(kv, qv0, acc0[t0 + t]);
            if constexpr (PAIR) acc1[t0 + t] = I::fmadd(kv, qv1, acc1[t0 + t]);
          }
        }
        if (dtail > 0) {
          const V qv0 = I::load(q0 + c), qv1 = I::load(q1 + c);
          for (int t = 0; t < n; ++t) {
            const V kv = I::load_n(kp[t] + c, dtail);
            acc0[t0 + t] = I::fmadd(kv, qv0, acc0[t0 + t]);
            if constexpr (PAIR) acc1[t0 + t] = I::fmadd(kv, qv1, acc1[t0 + t]);
          }
        }
      };
      for (int t0 = 0; t0 < nb; t0 += G) {
        const float* kp[G];
        for (int t = 0; t < G; ++t) kp[t] = kb + (t0 + t < nb ? t0 + t : t0) * ldk;  // rows past nb: never summed
        const int ng = nb - t0 < G ? nb - t0 : G;
        if (pair)
          ng == G ? pass.template operator()<true, true>(kp, t0, ng) : pass.template operator()<true, false>(kp, t0, ng);
        else
          ng == G ? pass.template operator()<false, true>(kp, t0, ng)
                  : pass.template operator()<false, false>(kp, t0, ng);
      }
      I::store(s + r * lds + j0, I::sum_lanes_transposed(acc0));
      if (pair) I::store(s + (r + 1) * lds + j0, I::sum_lanes_transposed(acc1));
    }
  }
}

}  // namespace mf::MF_ISA_NS::flash
