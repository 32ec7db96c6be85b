// Flash attention, stage 2 of 3: the forward (Dao et al. 2022 "FlashAttention",
// Dao 2023 "FlashAttention-2") and its split-KV path for few query rows
// against many keys (flash-decoding, Dao, Haziza, Massa, Sizov 2023). Tiled
// online softmax in O(L d) memory; the tiled kernel works on S^T (keys x
// stacked query rows), so the softmax statistics are SIMD lanes and nothing is
// transposed per tile; tiles of few rows take a kernel with keys as lanes.
// Thread counts: each work item (a query tile, or one key chunk of the split
// path) runs on one thread and chunks merge in a fixed order, so out and lse
// are the same bits for any thread count (FlashAttention.ThreadCountIndependence).
// Compiled once per instruction set (core/isa_target.h); flash_attention.cpp
// dispatches.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/alloc.h"
#include "core/threads.h"
#include "nn/attention/attention_problem.h"
#include "nn/attention/flash_attention.h"
#include "core/isa_target.h"
#include "nn/attention/flash_geometry.h"

namespace mf::MF_ISA_NS {
namespace flash {
namespace {

template <class Isa>
struct FwdScratch {
  i64 max_lanes = 0;     // stacked rows of the largest tile, padded to a multiple of W
  Buf qt, st, o, stats;  // Qt [D x max_lanes], S^T [keys x max_lanes], O [max_lanes x Dvp], 6 lane arrays
  Buf colmax;            // [max_lanes] per-lane max of a tile's scores
  Buf qs, keys;          // few-row path: scaled Q rows [small_rows x Dp]; key lanes [3 x fwd_keys]
  std::vector<i64> lane_h, lane_i;
  std::vector<i64> blk_lo, blk_hi;  // per W-lane block: lowest and highest position of its rows
  std::vector<KeyRanges> rng;       // per W-lane block of a tile (FlashCall::lane_keys)
  std::vector<const float*> qrows;
  float *m = nullptr, *l = nullptr, *alpha = nullptr, *ipos = nullptr, *row_global = nullptr, *slope = nullptr;
  float* lane_ok = nullptr;  // block-sparse layouts with per-head maps: 1 where the lane's head has the tile
  explicit FwdScratch(const FlashCall& cm) {
    const i64 bq = std::max<i64>(1, cm.tiles.fwd_rows / cm.G);
    max_lanes = round_up(cm.G * bq, Isa::W);
    qt.reset(cm.D * max_lanes);
    st.reset(cm.tiles.fwd_keys * max_lanes);
    o.reset(max_lanes * cm.Dvp);
    stats.reset(7 * max_lanes);
    colmax.reset(max_lanes);
    qs.reset(std::max<i64>(1, cm.tiles.small_rows) * cm.Dp);
    keys.reset(3 * cm.tiles.fwd_keys);
    m = stats.data();
    l = m + max_lanes;
    alpha = l + max_lanes;
    ipos = alpha + max_lanes;
    row_global = ipos + max_lanes;
    slope = row_global + max_lanes;
    lane_ok = slope + max_lanes;
    lane_h.resize(max_lanes);
    lane_i.resize(max_lanes);
    blk_lo.resize(max_lanes / Isa::W);
    blk_hi.resize(max_lanes / Isa::W);
    rng.resize(max_lanes / Isa::W);
    qrows.resize(max_lanes);
  }
};

// Prefetches (with `hint`) the K and V rows of the key tile that follows the
// one ending at j1 for query rows starting at absolute position ip_lo: the
// next tile, or under a block layout the next present one.
template <int hint>
void prefetch_next_key_tile(const FlashCall& cm, const KeyRows& keys, i64 b, i64 kvh, i64 ip_lo, i64 j1) {
  const AttentionProblem& p = cm.p;
  const i64 ja = cm.layout != nullptr ? std::min(cm.layout_next_key(kvh, ip_lo, j1), p.k_len[b]) : j1;
  const i64 jb = std::min(ja + cm.tiles.fwd_keys, p.k_len[b]);
  for (i64 jj = ja; jj < jb; ++jj) {
    for (i64 d = 0; d < cm.D; d += 16)
      _mm_prefetch(reinterpret_cast<const char*>(keys.k + jj * p.k_row_stride + d), static_cast<_mm_hint>(hint));
    for (i64 d = 0; d < cm.Dv; d += 16)
      _mm_prefetch(reinterpret_cast<const char*>(keys.v + jj * p.v_row_stride + d), static_cast<_mm_hint>(hint));
  }
}

// Unnormalized attention of the stacked rows (the G query heads of KV head
// kvh x positions [i0, i0 + nq), row r = g * nq + ii) over keys [ka, kb):
// leaves o = sum_j e^(s_j - m) v_j, m = max_j s_j, l = sum_j e^(s_j - m) in
// the scratch. exp(s - m) is computed as 2^((s - m) log2 e): s - m is exact
// near the maximum, so large logits lose no more than the plain formula.
template <class Isa>
void fwd_rows(const FlashCall& cm, const float* q, i64 b, i64 kvh, i64 i0, i64 nq, i64 ka, i64 kb,
              FwdScratch<Isa>& sc) {
  using I = Isa;
  using V = typename I::V;
  using M = typename I::M;
  constexpr int W = I::W;
  const AttentionProblem& p = cm.p;
  const i64 D = cm.D, Dv = cm.Dv, Dvp = cm.Dvp, R = cm.G * nq, lanes = round_up(R, W), shift = p.shift(b);
  float* qt = sc.qt.data();
  float* st = sc.st.data();
  float* o = sc.o.data();
  const bool alibi = !cm.slopes.empty(), has_global = cm.has_global();

  // Qt[d][r] = scale * q(h_r, i_r, d), and the per-lane row facts. Lanes >= R: zero query, never visible.
  const float** qrows = sc.qrows.data();  // row r = g * nq + ii (no divisions per row)
  for (i64 g = 0, r = 0; g < cm.G; ++g)
    for (i64 ii = 0; ii < nq; ++ii, ++r) {
      const i64 h = kvh * cm.G + g, i = i0 + ii;
      qrows[r] = q + p.q_off[b] + h * p.q_head_stride + i * p.q_row_stride;
      sc.ipos[r] = static_cast<float>(i + shift);
      sc.row_global[r] = has_global && cm.global_pos(i + shift) ? 1.0f : 0.0f;
      sc.slope[r] = alibi ? cm.slopes[h] : 0.0f;
      sc.lane_h[r] = h;
      sc.lane_i[r] = i;
    }
  pack_transposed<I>([&](i64 r) { return r < R ? qrows[r] : nullptr; }, lanes, D, p.scale, qt, lanes);
  for (i64 r = R; r < lanes; ++r) {
    sc.ipos[r] = -1e30f;
    sc.row_global[r] = 0.0f;
    sc.slope[r] = 0.0f;
  }
  for (i64 r = 0; r < lanes; ++r) {
    sc.m[r] = kNegInf;
    sc.l[r] = 0.0f;
  }
  for (i64 v0 = 0; v0 < lanes; v0 += W) {  // lanes >= R are never visible: left out of the bounds
    i64 lo = std::numeric_limits<i64>::max(), hi = std::numeric_limits<i64>::min();
    for (i64 r = v0; r < std::min(v0 + W, R); ++r) {
      lo = std::min(lo, sc.lane_i[r] + shift);
      hi = std::max(hi, sc.lane_i[r] + shift);
    }
    sc.blk_lo[v0 / W] = lo;
    sc.blk_hi[v0 / W] = hi;
  }
  bool first = true;  // the first computed tile stores O (no zeroing pass); none computed: zeroed at the end

  const KeyRows keys = cm.kv(b, kvh);
  const i64 ip_lo = i0 + shift, ip_hi = i0 + nq - 1 + shift;
  const i64 k_row_stride = p.k_row_stride, v_row_stride = p.v_row_stride;
  const i64 kend = cm.end_key(ip_hi, kb), kfirst = cm.first_key(ip_lo, ka, cm.tiles.fwd_keys);
  // A short key range (a narrow window) was mostly read by the neighbouring query tile and is
  // still cached; only long ranges are worth prefetching.
  const bool long_range = (kend - kfirst) * D >= (i64{1} << 16);
  for (i64 j0 = kfirst; j0 < kend;) {
    if (cm.layout != nullptr) {  // block-sparse: on to the next present tile
      j0 = cm.layout_next_key(kvh, ip_lo, j0);
      if (j0 >= kend) break;
    }
    const i64 j1 = std::min(j0 + cm.tiles.fwd_keys, kend);
    TileKind kind = cm.classify(b, ip_lo, ip_hi, j0, j1);
    if (kind == TileKind::Skip) {
      j0 = j1;
      continue;
    }
    // Block-sparse: lanes of heads whose map lacks this tile are masked (lane_ok), and the
    // layout's element rule applies to edge tiles.
    const bool lane_mask = cm.layout_heads_differ && !cm.layout_group_has_all(kvh, ip_lo, j0);
    if (lane_mask)
      for (i64 r = 0; r < lanes; ++r)
        sc.lane_ok[r] = r < R && cm.layout_has(sc.lane_h[r], ip_lo, j0) ? 1.0f : 0.0f;
    if (cm.layout != nullptr) kind = cm.layout_kind(kind, ip_lo, ip_hi, j0, j1, lane_mask);
    const bool layout_mask = lane_mask || (cm.layout != nullptr && cm.layout->rule.kind != SparseElementRule::Kind::None);
    const i64 nc = j1 - j0;
    const float* k_tile = keys.k + j0 * k_row_stride;
    const float* v_tile = keys.v + j0 * v_row_stride;
    // The next key tile's K and V rows into L2 while this one computes (a head's K and V
    // outgrow L2 from a few thousand keys on).
    if (long_range) prefetch_next_key_tile<_MM_HINT_T1>(cm, keys, b, kvh, ip_lo, j1);
    const bool edge = kind == TileKind::Edge;
    const bool plain = !edge && !alibi;  // the row max comes out of the product's epilogue
    const bool pad_tile = edge && cm.padded_in(b, j0, j1) > 0;
    // Per lane block: keys [seen_begin, seen_end) of the tile may be seen by some of its rows and keys
    // [all_begin, all_end) by all of them (key padding aside); no row sees the others, so their scores
    // are neither computed nor read. Full tiles and global tokens: the whole tile.
    // [common_begin, common_end): the keys every block needs.
    const i64 nblk = lanes / W;
    bool same = true;  // every block has the same [seen_begin, seen_end)
    i64 common_begin = 0, common_end = nc;
    for (i64 v = 0; v < nblk; ++v) {
      sc.rng[v] = edge && !has_global ? cm.lane_keys(sc.blk_lo[v], sc.blk_hi[v], j0, nc) : KeyRanges{0, nc, 0, nc};
      same = same && sc.rng[v].seen_begin == sc.rng[0].seen_begin && sc.rng[v].seen_end == sc.rng[0].seen_end;
      common_begin = std::max(common_begin, sc.rng[v].seen_begin);
      common_end = std::min(common_end, sc.rng[v].seen_end);
    }
    common_end = std::max(common_begin, common_end);
    // S^T[nc x lanes] = K[j0:j1] Qt: keys every block needs at full width, the rest per block.
    float* colmax = sc.colmax.data();
    if (plain) std::fill(colmax, colmax + lanes, kNegInf);
    if (common_end > common_begin)
      tile_gemm<I, false>(common_end - common_begin, lanes, D, k_tile + common_begin * k_row_stride, k_row_stride, qt, lanes, st + common_begin * lanes, lanes, TileMode::Store, nullptr,
                          plain ? colmax : nullptr);
    for (i64 v = 0; v < nblk && !same; ++v) {
      const i64 seen_begin = sc.rng[v].seen_begin, seen_end = sc.rng[v].seen_end;
      for (auto [a, z] : {std::pair{seen_begin, std::min(seen_end, common_begin)}, std::pair{std::max(seen_begin, common_end), seen_end}})
        if (z > a) tile_gemm<I, false>(z - a, W, D, k_tile + a * k_row_stride, k_row_stride, qt + v * W, lanes, st + a * lanes + v * W, lanes,
                                       TileMode::Store);
    }
    for (i64 v0 = 0; v0 < lanes; v0 += W) {
      const V ipv = I::load(sc.ipos + v0);
      const M row_global_mask = I::ge(I::load(sc.row_global + v0), I::set1(0.5f));
      const V slv = I::load(sc.slope + v0);
      V mx = I::set1(kNegInf);
      if (plain) mx = I::load(colmax + v0);
      const auto [seen_begin, seen_end, all_begin, all_end] = sc.rng[v0 / W];
      for (i64 jj = seen_begin; jj < seen_end && !plain; ++jj) {
        float* sp = st + jj * lanes + v0;
        V s = I::load(sp);
        const i64 j = j0 + jj;
        const float jf = static_cast<float>(j);
        if (alibi) s = I::sub(s, I::mul(slv, I::abs(I::sub(ipv, I::set1(jf)))));  // - m_h |i' - j|
        const bool padded = pad_tile && cm.key_padded(b, j);
        if (edge && (jj < all_begin || jj >= all_end || padded || has_global || layout_mask)) {
          M vis = visible_pairs<I>(p, ipv, I::set1(jf), row_global_mask, I::mall(has_global && cm.global_pos(j)),
                                   I::mall(!padded));
          if (lane_mask) vis = I::mand(vis, I::ge(I::load(sc.lane_ok + v0), I::set1(0.5f)));
          s = I::select(vis, s, I::set1(kNegInf));
        }
        if (alibi || edge) I::store(sp, s);
        mx = I::max(mx, s);
      }
      // Online softmax: m' = max(m, rowmax); alpha = e^(m - m'); P = e^(s - m'); l = alpha l + sum P.
      const V mold = I::load(sc.m + v0);
      const V mnew = I::max(mold, mx);
      const V msafe = I::select(I::eq(mnew, I::set1(kNegInf)), I::zero(), mnew);  // no (-inf) - (-inf)
      const V log2e = I::set1(kLog2e);
      const V alpha = I::exp2(I::mul(I::sub(mold, msafe), log2e));
      V sum = I::zero();
      for (i64 jj = seen_begin; jj < seen_end; ++jj) {
        float* sp = st + jj * lanes + v0;
        const V pv = I::exp2(I::mul(I::sub(I::load(sp), msafe), log2e));
        I::store(sp, pv);
        sum = I::add(sum, pv);
      }
      I::store(sc.l + v0, I::fmadd(I::load(sc.l + v0), alpha, sum));
      I::store(sc.m + v0, mnew);
      I::store(sc.alpha + v0, alpha);
    }
    if (p.dropout_p > 0.0f) {  // O uses dropout(P); l (hence LSE) does not
      const float inv_keep = 1.0f / (1.0f - p.dropout_p);
      for (i64 r = 0; r < R; ++r)
        for (i64 jj = sc.rng[r / W].seen_begin; jj < sc.rng[r / W].seen_end; ++jj) {
          float& x = st[jj * lanes + r];
          if (x != 0.0f) x = attention_dropout_keep(p, b, sc.lane_h[r], sc.lane_i[r], j0 + jj) ? x * inv_keep : 0.0f;
        }
    }
    // O = alpha O + P V   (P^T is S^T: A in column layout), over each block's keys [seen_begin, seen_end)
    const TileMode mode = first ? TileMode::Store : TileMode::ScaleAdd;
    if (same) {
      const i64 seen_begin = sc.rng[0].seen_begin, seen_end = sc.rng[0].seen_end;
      tile_gemm<I, true>(R, Dv, seen_end - seen_begin, st + seen_begin * lanes, lanes, v_tile + seen_begin * v_row_stride, v_row_stride, o, Dvp, mode, sc.alpha);
    } else {
      for (i64 v0 = 0; v0 < R; v0 += W) {
        const i64 seen_begin = sc.rng[v0 / W].seen_begin, seen_end = sc.rng[v0 / W].seen_end;
        tile_gemm<I, true>(std::min<i64>(W, R - v0), Dv, seen_end - seen_begin, st + seen_begin * lanes + v0, lanes, v_tile + seen_begin * v_row_stride, v_row_stride,
                           o + v0 * Dvp, Dvp, mode, sc.alpha + v0);
      }
    }
    first = false;
    j0 = j1;
  }
  if (first) std::memset(o, 0, static_cast<std::size_t>(R * Dvp) * sizeof(float));
}

// The few-row case of fwd_rows (R = G nq <= tiles.small_rows, e.g. decode):
// S [R x keys] with keys as lanes, scores by row_dot_scores (K rows read
// sequentially, not broadcast), per-row online softmax; same results contract.
template <class Isa>
void fwd_rows_small(const FlashCall& cm, const float* q, i64 b, i64 kvh, i64 i0, i64 nq, i64 ka, i64 kb,
                    FwdScratch<Isa>& sc) {
  using I = Isa;
  using V = typename I::V;
  using M = typename I::M;
  constexpr int W = I::W;
  const AttentionProblem& p = cm.p;
  const i64 D = cm.D, Dp = cm.Dp, Dv = cm.Dv, Dvp = cm.Dvp, R = cm.G * nq, shift = p.shift(b);
  float* qs = sc.qs.data();
  float* st = sc.st.data();
  float* o = sc.o.data();
  float* jpos = sc.keys.data();
  float* keyok = jpos + cm.tiles.fwd_keys;
  float* gcol = keyok + cm.tiles.fwd_keys;
  const bool alibi = !cm.slopes.empty(), has_global = cm.has_global();
  for (i64 r = 0, g = 0, ii = 0; r < R; ++r, ii = ii + 1 == nq ? 0 : ii + 1, g += ii == 0) {
    const i64 i = i0 + ii, h = kvh * cm.G + g;
    const float* qr = q + p.q_off[b] + h * p.q_head_stride + i * p.q_row_stride;
    for (i64 d = 0; d < Dp; ++d) qs[r * Dp + d] = d < D ? qr[d] * p.scale : 0.0f;
    sc.lane_h[r] = h;
    sc.lane_i[r] = i;
    sc.m[r] = kNegInf;
    sc.l[r] = 0.0f;
  }
  bool first = true;  // as in fwd_rows

  const KeyRows keys = cm.kv(b, kvh);
  const i64 ip_lo = i0 + shift, ip_hi = i0 + nq - 1 + shift;
  const i64 k_row_stride = p.k_row_stride, v_row_stride = p.v_row_stride;
  const i64 kend = cm.end_key(ip_hi, kb);
  for (i64 j0 = cm.first_key(ip_lo, ka, cm.tiles.fwd_keys); j0 < kend;) {
    if (cm.layout != nullptr) {  // block-sparse: on to the next present tile
      j0 = cm.layout_next_key(kvh, ip_lo, j0);
      if (j0 >= kend) break;
    }
    const i64 j1 = std::min(j0 + cm.tiles.fwd_keys, kend);
    TileKind kind = cm.classify(b, ip_lo, ip_hi, j0, j1);
    if (kind == TileKind::Skip) {
      j0 = j1;
      continue;
    }
    const bool lane_mask = cm.layout_heads_differ && !cm.layout_group_has_all(kvh, ip_lo, j0);
    if (cm.layout != nullptr) kind = cm.layout_kind(kind, ip_lo, ip_hi, j0, j1, lane_mask);
    const i64 nc = j1 - j0, ncp = round_up(nc, W);
    const float* k_tile = keys.k + j0 * k_row_stride;
    const float* v_tile = keys.v + j0 * v_row_stride;
    // Few rows do little work per byte: prefetch the next key tile's K and V rows (decode
    // with 32 query / 8 KV heads: 10 -> 15 GB/s measured, bench attention).
    prefetch_next_key_tile<_MM_HINT_T0>(cm, keys, b, kvh, ip_lo, j1);
    // S[R x ncp] = (scale Q) K^T   (lanes >= nc: 0, masked below)
    row_dot_scores<I>(R, nc, D, qs, Dp, k_tile, k_row_stride, st, ncp);
    const bool masked = kind == TileKind::Edge || nc < ncp;
    if (masked || alibi)
      for (i64 jj = 0; jj < ncp; ++jj) {
        const i64 j = j0 + jj;
        jpos[jj] = static_cast<float>(j);
        keyok[jj] = jj < nc && !cm.key_padded(b, j) ? 1.0f : 0.0f;
        gcol[jj] = jj < nc && cm.global_pos(j) ? 1.0f : 0.0f;
      }
    for (i64 r = 0; r < R; ++r) {
      const i64 ip = sc.lane_i[r] + shift;
      const V ipv = I::set1(static_cast<float>(ip));
      const M row_global_mask = I::mall(has_global && cm.global_pos(ip));
      const V slv = I::set1(alibi ? cm.slopes[sc.lane_h[r]] : 0.0f);
      float* srow = st + r * ncp;
      V mxv = I::set1(kNegInf);
      for (i64 v0 = 0; v0 < ncp; v0 += W) {
        V x = I::load(srow + v0);
        if (alibi || masked) {
          const V jv = I::load(jpos + v0);
          if (alibi) x = I::sub(x, I::mul(slv, I::abs(I::sub(ipv, jv))));  // - m_h |i' - j|
          if (masked) {
            M vis = visible_pairs<I>(p, ipv, jv, row_global_mask, I::ge(I::load(gcol + v0), I::set1(0.5f)),
                                     I::ge(I::load(keyok + v0), I::set1(0.5f)));
            if (lane_mask && !cm.layout_has(sc.lane_h[r], ip, j0)) vis = I::mall(false);
            x = I::select(vis, x, I::set1(kNegInf));
          }
        }
        I::store(srow + v0, x);
        mxv = I::max(mxv, x);
      }
      // Online softmax for row r (as in fwd_rows, horizontally).
      const float mold = sc.m[r];
      const float mnew = std::max(mold, I::reduce_max(mxv));
      const float msafe = mnew == kNegInf ? 0.0f : mnew;
      const V mv = I::set1(msafe), log2e = I::set1(kLog2e);
      V sum = I::zero();
      for (i64 v0 = 0; v0 < ncp; v0 += W) {
        const V pv = I::exp2(I::mul(I::sub(I::load(srow + v0), mv), log2e));
        I::store(srow + v0, pv);
        sum = I::add(sum, pv);
      }
      const float alpha = mold == kNegInf ? 0.0f : std::exp2((mold - msafe) * kLog2e);
      sc.l[r] = sc.l[r] * alpha + I::reduce_add(sum);
      sc.m[r] = mnew;
      sc.alpha[r] = alpha;
    }
    if (p.dropout_p > 0.0f) {
      const float inv_keep = 1.0f / (1.0f - p.dropout_p);
      for (i64 r = 0; r < R; ++r)
        for (i64 jj = 0; jj < nc; ++jj) {
          float& x = st[r * ncp + jj];
          if (x != 0.0f) x = attention_dropout_keep(p, b, sc.lane_h[r], sc.lane_i[r], j0 + jj) ? x * inv_keep : 0.0f;
        }
    }
    // O = alpha O + P V
    tile_gemm<I, false>(R, Dv, nc, st, ncp, v_tile, v_row_stride, o, Dvp, first ? TileMode::Store : TileMode::ScaleAdd, sc.alpha);
    first = false;
    j0 = j1;
  }
  if (first) std::memset(o, 0, static_cast<std::size_t>(R * Dvp) * sizeof(float));
}

// out = O / l, lse = m + ln l (NaN inputs give NaN l or O, which reach out and lse).
// l == 0: the row sees no key (out 0, lse -inf), or every score it sees is -inf
// (only from infinite inputs: out and lse NaN, as in the dense reference).
void write_rows(const FlashCall& cm, i64 b, i64 kvh, i64 i0, i64 nq, const float* o, const float* m, const float* l,
                float* out, float* lse) {
  const AttentionProblem& p = cm.p;
  for (i64 r = 0, g = 0, ii = 0; r < cm.G * nq; ++r, ii = ii + 1 == nq ? 0 : ii + 1, g += ii == 0) {
    const i64 h = kvh * cm.G + g, i = i0 + ii;
    float* orow = out + p.o_off[b] + h * p.o_head_stride + i * p.o_row_stride;
    float& lr = lse[p.lse_off[b] + h * p.lse_head_stride + i];
    if (l[r] != 0.0f) {
      for (i64 d = 0; d < cm.Dv; ++d) orow[d] = o[r * cm.Dvp + d] / l[r];
      lr = static_cast<float>(static_cast<double>(m[r]) + std::log(static_cast<double>(l[r])));  // one rounding
    } else if (attention_row_sees_a_key(p, b, h, i)) {
      for (i64 d = 0; d < cm.Dv; ++d) orow[d] = std::numeric_limits<float>::quiet_NaN();
      lr = std::numeric_limits<float>::quiet_NaN();
    } else {
      for (i64 d = 0; d < cm.Dv; ++d) orow[d] = 0.0f;
      lr = kNegInf;
    }
  }
}

struct FwdItem {
  i64 b, kvh, qt, split;  // split < 0: the whole key range
};

template <class Isa>
void forward_impl(const FlashCall& cm, const float* q, float* out, float* lse) {
  const AttentionProblem& p = cm.p;
  const FlashTiles& t = cm.tiles;
  const i64 bq = cm.fwd_tile_rows();
  const i64 slot_rows = round_up(cm.G * bq, Isa::W);
  const i64 slot = slot_rows * cm.Dvp + 2 * slot_rows;  // one split's partial: O [slot_rows x Dvp], m, l

  // Flash-decoding for entries with one query tile and many keys: split the
  // keys into fixed chunks (results do not depend on the thread count).
  std::vector<i64> nsplit(p.batch, 0), part_base(p.batch, 0);
  i64 part_total = 0;
  for (i64 b = 0; b < p.batch; ++b) {
    nsplit[b] = flash_forward_key_splits(t, cm.G, p.q_len[b], p.k_len[b]);
    if (nsplit[b] > 0) {
      part_base[b] = part_total;
      part_total += p.hkv * nsplit[b] * slot;
    }
  }
  constexpr i64 kMaxPartialFloats = i64{64} << 20;  // 256 MiB of partials at most, else no split
  if (part_total > kMaxPartialFloats) {
    std::fill(nsplit.begin(), nsplit.end(), 0);
    part_total = 0;
  }
  Buf partials(part_total);

  std::vector<FwdItem> items, merges;
  i64 max_qt = 0;
  for (i64 b = 0; b < p.batch; ++b) max_qt = std::max(max_qt, ceil_div(p.q_len[b], bq));
  for (i64 qt = max_qt - 1; qt >= 0; --qt)  // later (costlier under causal) query tiles first
    for (i64 b = 0; b < p.batch; ++b) {
      if (qt >= ceil_div(p.q_len[b], bq)) continue;
      for (i64 kvh = 0; kvh < p.hkv; ++kvh) {
        if (nsplit[b] == 0) {
          items.push_back({b, kvh, qt, -1});
        } else {
          for (i64 s = 0; s < nsplit[b]; ++s) items.push_back({b, kvh, qt, s});
          merges.push_back({b, kvh, qt, -1});
        }
      }
    }

  const i64 n_items = static_cast<i64>(items.size()), n_merges = static_cast<i64>(merges.size());
  const bool par = total_work(p) >= kParallelMinWork && n_items > 1;
  auto scratch = make_scratch<FwdScratch<Isa>>(par ? num_threads() : 1, cm);
#pragma omp parallel if (par)
  {
    FwdScratch<Isa>& sc = *scratch[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
    for (i64 it = 0; it < n_items; ++it) {
      const FwdItem& w = items[it];
      const i64 i0 = w.qt * bq, nq = std::min(bq, p.q_len[w.b] - i0);
      const auto rows = cm.G * nq <= t.small_rows ? &fwd_rows_small<Isa> : &fwd_rows<Isa>;
      if (w.split < 0) {
        rows(cm, q, w.b, w.kvh, i0, nq, 0, p.k_len[w.b], sc);
        write_rows(cm, w.b, w.kvh, i0, nq, sc.o.data(), sc.m, sc.l, out, lse);
      } else {
        const i64 ka = w.split * t.split_chunk, kb = std::min(p.k_len[w.b], ka + t.split_chunk);
        rows(cm, q, w.b, w.kvh, i0, nq, ka, kb, sc);
        float* dst = partials.data() + part_base[w.b] + (w.kvh * nsplit[w.b] + w.split) * slot;
        std::memcpy(dst, sc.o.data(), static_cast<std::size_t>(cm.G * nq * cm.Dvp) * sizeof(float));
        std::memcpy(dst + slot_rows * cm.Dvp, sc.m, static_cast<std::size_t>(slot_rows) * sizeof(float));
        std::memcpy(dst + slot_rows * cm.Dvp + slot_rows, sc.l, static_cast<std::size_t>(slot_rows) * sizeof(float));
      }
    }
    // Merge the splits in order: m = max m_s, l = sum e^(m_s - m) l_s, o = sum e^(m_s - m) o_s.
#pragma omp for schedule(dynamic, 1)
    for (i64 it = 0; it < n_merges; ++it) {
      const FwdItem& w = merges[it];
      const i64 i0 = w.qt * bq, nq = std::min(bq, p.q_len[w.b] - i0), R = cm.G * nq;
      const float* base = partials.data() + part_base[w.b] + w.kvh * nsplit[w.b] * slot;
      float* o = sc.o.data();
      for (i64 r = 0; r < R; ++r) {
        float mmax = kNegInf;
        for (i64 s = 0; s < nsplit[w.b]; ++s) mmax = std::max(mmax, base[s * slot + slot_rows * cm.Dvp + r]);
        float lsum = 0.0f;
        float* orow = o + r * cm.Dvp;
        std::fill(orow, orow + cm.Dv, 0.0f);
        if (mmax != kNegInf) {
          for (i64 s = 0; s < nsplit[w.b]; ++s) {
            const float* ps = base + s * slot;
            const float wgt = std::exp(ps[slot_rows * cm.Dvp + r] - mmax);
            lsum += wgt * ps[slot_rows * cm.Dvp + slot_rows + r];
            for (i64 d = 0; d < cm.Dv; ++d) orow[d] += wgt * ps[r * cm.Dvp + d];
          }
        }
        sc.m[r] = mmax;
        sc.l[r] = lsum;
      }
      write_rows(cm, w.b, w.kvh, i0, nq, o, sc.m, sc.l, out, lse);
    }
  }
}

}  // namespace
}  // namespace flash

void flash_attention_forward(const AttentionProblem& p, const float* q, const float* k, const float* v, float* out,
                             float* lse) {
  const flash::FlashCall cm(p, k, v);
  flash::forward_impl<flash::ThisIsa>(cm, q, out, lse);
}

}  // namespace mf::MF_ISA_NS
