// Flash attention on the CPU (Dao et al. 2022 "FlashAttention", Dao 2023
// "FlashAttention-2", flash-decoding): tiled online softmax in O(L d) memory,
// backward recomputing P from the saved log-sum-exp, split-KV for few rows.
// The forward works on S^T (keys x stacked query rows), so the softmax
// statistics are SIMD lanes and nothing is transposed per tile; the backward
// works on S (rows x keys) with K^T and V^T packed once per key tile.
// Thread counts: each forward work item (a query tile, or one key chunk of the
// split path) runs on one thread and chunks merge in a fixed order, so out and
// lse are the same bits for any thread count; in the backward each key tile
// owns its dK, dV rows (the same bits too), while dQ adds the key tiles of a
// (batch, KV head) pair that is cut between threads through per-thread partial
// sums, whose rounding depends on the thread count (FlashAttention.ThreadCountIndependence).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "core/alloc.h"
#include "core/error.h"
#include "core/threads.h"
#include "nn/attention/attention.h"
#include "nn/attention/attention_problem.h"
#include "nn/attention/flash_attention.h"
#include "nn/attention/flash_tiles.h"

namespace mf {
namespace flash {
namespace {

using i64 = std::int64_t;

i64 round_up(i64 x, i64 m) { return (x + m - 1) / m * m; }
i64 ceil_div(i64 x, i64 m) { return (x + m - 1) / m; }

// Below this many multiply-adds (forward) a call runs on one thread: a
// parallel region costs a barrier, which on a loaded machine can wait a
// whole scheduler time slice; ~40 us of single-thread work.
constexpr i64 kParallelMinWork = i64{1} << 21;

i64 total_work(const AttentionProblem& p) {
  i64 w = 0;
  for (i64 b = 0; b < p.batch; ++b) w += p.q_len[b] * p.k_len[b];
  return w * p.hq * p.d;
}

// One scratch object per thread, made before the parallel region (so that
// an allocation failure throws here, not inside OpenMP).
template <class S>
std::vector<std::unique_ptr<S>> make_scratch(int n, const auto& cm) {
  std::vector<std::unique_ptr<S>> v;
  for (int t = 0; t < n; ++t) v.push_back(std::make_unique<S>(cm));
  return v;
}

// Aligned scratch, counted by the engine allocator so memory claims include it.
class Buf {
 public:
  Buf() = default;
  explicit Buf(i64 n) { reset(n); }
  ~Buf() { release(); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  Buf(Buf&& o) noexcept : p_(o.p_), n_(o.n_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  void reset(i64 n) {
    release();
    if (n > 0) {
      p_ = static_cast<float*>(aligned_alloc_counted(static_cast<std::size_t>(n) * sizeof(float)));
      n_ = n;
    }
  }
  void zero() {
    if (n_ > 0) std::memset(p_, 0, static_cast<std::size_t>(n_) * sizeof(float));
  }
  float* data() const { return p_; }

 private:
  void release() {
    if (p_ != nullptr) aligned_free_counted(p_, static_cast<std::size_t>(n_) * sizeof(float));
    p_ = nullptr;
    n_ = 0;
  }
  float* p_ = nullptr;
  i64 n_ = 0;
};

struct KeyRanges {  // key offsets within a tile: [ea, ee) seen by some rows, [ba, bb) by all
  i64 ea, ee, ba, bb;
};

enum class TileKind { Skip, Full, Edge };  // Full: every (row, key) visible; Edge: element masks needed

// The keys of one (batch, KV head): row j of K at k + j * k_row_stride (V likewise).
struct KeyRows {
  const float* k = nullptr;
  const float* v = nullptr;
};

// What one call's tile loops read: the problem, tile sizes, and lookup
// tables for global tokens and key padding.
struct Common {
  const AttentionProblem& p;
  FlashTiles tiles;
  i64 G, D, Dp;
  std::vector<float> slopes;        // [hq] ALiBi slopes; empty without ALiBi
  std::vector<std::uint8_t> gmap;   // [max k_len] key position is a global token
  std::vector<i64> pad_prefix, pad_base;  // padded keys before j of entry b: pad_prefix[pad_base[b] + j]
  const float* k;
  const float* v;
  bool fwd_whole_reach = false;   // a forward key tile covers a row tile's whole window reach
  bool bwd_whole_reach = false;   // a backward row step covers a key tile's whole window reach
  static constexpr i64 kMaxReachKeys = 256;

  Common(const AttentionProblem& prob, const float* kp, const float* vp)
      : p(prob), tiles(prob.tiles), G(prob.group()), D(prob.d), Dp(round_up(prob.d, 16)),
        slopes(prob.alibi_slopes), k(kp), v(vp) {
    // Narrow windows: a tile of R rows needs keys [first row - left, last row + right], so
    // the work per tile exceeds the visible pairs by about (R + tile keys) / span; tiles
    // shrink to ~span / 4 (at least 16) to keep windowed time proportional to density.
    // When a forward row tile's whole reach (its positions + span - 1 keys) fits in
    // kMaxReachKeys, it is one key tile starting at the window's left edge: one pass of the
    // online softmax and one long P V product per row tile instead of several short ones.
    const bool left_bounded = p.window_left >= 0, right_bounded = p.causal || p.window_right >= 0;
    if (left_bounded && right_bounded) {
      const i64 span = p.window_left + 1 + (p.causal ? 0 : p.window_right);
      i64 t = 16;
      while (t * 2 <= span / 4) t *= 2;
      tiles.fwd_rows = std::min(tiles.fwd_rows, t);
      tiles.fwd_keys = std::min(tiles.fwd_keys, t);
      tiles.bwd_rows = std::min(tiles.bwd_rows, t);
      tiles.bwd_keys = std::min(tiles.bwd_keys, t);
      tiles.small_rows = std::min(tiles.small_rows, tiles.fwd_rows);
      // The backward likewise: a key tile's query rows (tile keys + span - 1 positions) in one step.
      const auto whole_reach = [&](i64 tile, i64& other_side) {
        const i64 reach = round_up(tile + span - 1, 16);
        if (!p.global_tokens.empty() || reach > kMaxReachKeys) return false;
        other_side = reach;
        return true;
      };
      fwd_whole_reach = whole_reach(std::max<i64>(1, tiles.fwd_rows / G), tiles.fwd_keys);
      bwd_whole_reach = whole_reach(tiles.bwd_keys, tiles.bwd_rows);
    }
    if (!p.global_tokens.empty()) {
      i64 max_k = 0;
      for (i64 b = 0; b < p.batch; ++b) max_k = std::max(max_k, p.k_len[b]);
      gmap.assign(static_cast<std::size_t>(max_k), 0);
      for (i64 g : p.global_tokens)
        if (g >= 0 && g < max_k) gmap[g] = 1;
    }
    if (p.key_mask != nullptr) {
      pad_base.resize(p.batch);
      i64 total = 0;
      for (i64 b = 0; b < p.batch; ++b) {
        pad_base[b] = total;
        total += p.k_len[b] + 1;
      }
      pad_prefix.resize(total);
      for (i64 b = 0; b < p.batch; ++b) {
        i64 n = 0;
        for (i64 j = 0; j < p.k_len[b]; ++j) {
          pad_prefix[pad_base[b] + j] = n;
          n += p.key_mask[b * p.key_mask_stride + j] == 0;
        }
        pad_prefix[pad_base[b] + p.k_len[b]] = n;
      }
    }
  }

  bool has_global() const { return !p.global_tokens.empty(); }
  // Forward query tiles: positions per tile, and the first row of entry b from
  // which the forward took the few-row kernel (whose scores the backward must
  // reproduce): every row when a whole tile is few rows, else at most the last,
  // partial tile's.
  i64 fwd_tile_rows() const { return std::max<i64>(1, tiles.fwd_rows / G); }
  i64 fwd_few_rows_from(i64 b) const {
    const i64 bq = fwd_tile_rows(), lq = p.q_len[b];
    if (G * bq <= tiles.small_rows || lq == 0) return 0;
    const i64 last = (lq - 1) / bq * bq;
    return G * (lq - last) <= tiles.small_rows ? last : lq;
  }
  bool global_pos(i64 pos) const { return pos >= 0 && pos < static_cast<i64>(gmap.size()) && gmap[pos] != 0; }
  bool any_global_in(i64 lo, i64 hi) const {  // a global token in [lo, hi]
    auto it = std::lower_bound(p.global_tokens.begin(), p.global_tokens.end(), lo);
    return it != p.global_tokens.end() && *it <= hi;
  }
  bool key_padded(i64 b, i64 j) const { return p.key_mask != nullptr && p.key_mask[b * p.key_mask_stride + j] == 0; }
  i64 padded_in(i64 b, i64 j0, i64 j1) const {
    return p.key_mask == nullptr ? 0 : pad_prefix[pad_base[b] + j1] - pad_prefix[pad_base[b] + j0];
  }

  // Rows at absolute positions [ip_lo, ip_hi] against keys [j0, j1).
  TileKind classify(i64 b, i64 ip_lo, i64 ip_hi, i64 j0, i64 j1) const {
    if (j1 <= j0 || ip_hi < ip_lo) return TileKind::Skip;
    if (p.causal && j0 > ip_hi) return TileKind::Skip;
    const i64 npad = padded_in(b, j0, j1);
    if (npad == j1 - j0) return TileKind::Skip;
    const bool wl = p.window_left >= 0, wr = p.window_right >= 0;
    const bool outside = (wl && j1 - 1 < ip_lo - p.window_left) || (wr && j0 > ip_hi + p.window_right);
    if (outside && !(has_global() && (any_global_in(ip_lo, ip_hi) || any_global_in(j0, j1 - 1))))
      return TileKind::Skip;
    const bool full = (!p.causal || j1 - 1 <= ip_lo) && (!wl || j0 >= ip_hi - p.window_left) &&
                      (!wr || j1 - 1 <= ip_lo + p.window_right) && npad == 0;
    return full ? TileKind::Full : TileKind::Edge;
  }

  // First key tile start (on the grid ka + n * step) that rows [ip_lo, ip_hi] may see:
  // the window's left edge when there are no global tokens, else ka.
  i64 first_key(i64 ip_lo, i64 ka, i64 step) const {
    if (has_global() || p.window_left < 0) return ka;
    const i64 lo = ip_lo - p.window_left;
    if (fwd_whole_reach) return std::max(lo, ka);
    return lo <= ka ? ka : ka + (lo - ka) / step * step;
  }
  // Of keys [j0, j0 + nc) against rows at positions [plo, phi] (no global tokens): keys
  // [ea, ee) may be seen by some row and keys [ba, bb) by every row (key padding aside);
  // no row sees the others. Offsets from j0; ea <= ba <= bb <= ee.
  KeyRanges lane_keys(i64 plo, i64 phi, i64 j0, i64 nc) const {
    const auto at = [&](i64 j) { return std::clamp<i64>(j - j0, 0, nc); };
    i64 vis_end = j0 + nc, all_end = j0 + nc, ea = 0, ba = 0;
    if (p.causal) {
      vis_end = std::min(vis_end, phi + 1);
      all_end = std::min(all_end, plo + 1);
    }
    if (p.window_right >= 0) {
      vis_end = std::min(vis_end, phi + p.window_right + 1);
      all_end = std::min(all_end, plo + p.window_right + 1);
    }
    if (p.window_left >= 0) {
      ea = at(plo - p.window_left);
      ba = at(phi - p.window_left);
    }
    const i64 ee = std::max(ea, at(vis_end));
    const i64 bb = std::min(ee, std::max(ba, at(all_end)));
    return {ea, ee, std::min(ba, bb), bb};
  }
  // One past the last key rows [.., ip_hi] may see (causal / right window), at most kb.
  i64 end_key(i64 ip_hi, i64 kb) const {
    i64 e = kb;
    if (p.causal) e = std::min(e, ip_hi + 1);
    if (!has_global() && p.window_right >= 0) e = std::min(e, ip_hi + p.window_right + 1);
    return std::max<i64>(e, 0);
  }
  // Query rows [i_begin, i_end) of entry b (on the grid of `step`) that may see keys [j0, j1).
  std::pair<i64, i64> query_range(i64 b, i64 j0, i64 j1, i64 step) const {
    const i64 shift = p.shift(b), lq = p.q_len[b];
    i64 lo = 0, hi = lq;  // rows
    if (p.causal) lo = std::max(lo, j0 - shift);
    if (!has_global()) {
      if (p.window_right >= 0) lo = std::max(lo, j0 - p.window_right - shift);
      if (p.window_left >= 0) hi = std::min(hi, j1 - 1 + p.window_left - shift + 1);
    }
    lo = std::max<i64>(0, std::min(lo, lq));
    if (!bwd_whole_reach) lo = lo / step * step;
    return {lo, std::max(lo, std::min(hi, lq))};
  }

  KeyRows kv(i64 b, i64 kvh) const {
    const i64 off = p.k_off[b] + kvh * p.k_head_stride;
    return {k + off, v + off};
  }
};

// dst[d * ldd + r] = scale * row(r)[d] for r < n (a multiple of W; row(r) == nullptr: a
// zero row) and d < D, in W x W blocks transposed in registers.
template <class Isa, class RowFn>
void pack_transposed(RowFn row, i64 n, i64 D, float scale, float* dst, i64 ldd) {
  constexpr int W = Isa::W;
  static const float zeros[16] = {};
  for (i64 r0 = 0; r0 < n; r0 += W) {
    const float* rows[W];
    for (int t = 0; t < W; ++t) {
      const float* r = row(r0 + t);
      rows[t] = r != nullptr ? r : zeros;
    }
    for (i64 d0 = 0; d0 < D; d0 += W) {
      const float* shifted[W];
      for (int t = 0; t < W; ++t) shifted[t] = rows[t] == zeros ? zeros : rows[t] + d0;
      Isa::transpose_rows(shifted, static_cast<int>(std::min<i64>(W, D - d0)), scale, dst + d0 * ldd + r0, ldd);
    }
  }
}

// ---------------------------------------------------------------- forward

template <class Isa>
struct FwdScratch {
  i64 Rp = 0;
  Buf qt, st, o, stats;  // Qt [D x Rp], S^T [keys x Rp], O [Rp x Dp], 6 lane arrays [Rp]
  Buf colmax;            // [Rp] per-lane max of a tile's scores
  Buf qs, keys;          // few-row path: scaled Q rows [small_rows x Dp]; key lanes [3 x fwd_keys]
  std::vector<i64> lane_h, lane_i;
  std::vector<i64> blk_lo, blk_hi;  // per W-lane block: lowest and highest position of its rows
  std::vector<KeyRanges> rng;       // per W-lane block of a tile (Common::lane_keys)
  std::vector<const float*> qrows;
  float *m = nullptr, *l = nullptr, *alpha = nullptr, *ipos = nullptr, *grow = nullptr, *slope = nullptr;
  explicit FwdScratch(const Common& cm) {
    const i64 bq = std::max<i64>(1, cm.tiles.fwd_rows / cm.G);
    Rp = round_up(cm.G * bq, Isa::W);
    qt.reset(cm.D * Rp);
    st.reset(cm.tiles.fwd_keys * Rp);
    o.reset(Rp * cm.Dp);
    stats.reset(6 * Rp);
    colmax.reset(Rp);
    qs.reset(std::max<i64>(1, cm.tiles.small_rows) * cm.Dp);
    keys.reset(3 * cm.tiles.fwd_keys);
    m = stats.data();
    l = m + Rp;
    alpha = l + Rp;
    ipos = alpha + Rp;
    grow = ipos + Rp;
    slope = grow + Rp;
    lane_h.resize(Rp);
    lane_i.resize(Rp);
    blk_lo.resize(Rp / Isa::W);
    blk_hi.resize(Rp / Isa::W);
    rng.resize(Rp / Isa::W);
    qrows.resize(Rp);
  }
};

// Unnormalized attention of the stacked rows (the G query heads of KV head
// kvh x positions [i0, i0 + nq), row r = g * nq + ii) over keys [ka, kb):
// leaves o = sum_j e^(s_j - m) v_j, m = max_j s_j, l = sum_j e^(s_j - m) in
// the scratch. exp(s - m) is computed as 2^((s - m) log2 e): s - m is exact
// near the maximum, so large logits lose no more than the plain formula.
template <class Isa>
void fwd_rows(const Common& cm, const float* q, i64 b, i64 kvh, i64 i0, i64 nq, i64 ka, i64 kb,
              FwdScratch<Isa>& sc) {
  using I = Isa;
  using V = typename I::V;
  using M = typename I::M;
  constexpr int W = I::W;
  const AttentionProblem& p = cm.p;
  const i64 D = cm.D, Dp = cm.Dp, R = cm.G * nq, Rp = round_up(R, W), shift = p.shift(b);
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
      sc.grow[r] = has_global && cm.global_pos(i + shift) ? 1.0f : 0.0f;
      sc.slope[r] = alibi ? cm.slopes[h] : 0.0f;
      sc.lane_h[r] = h;
      sc.lane_i[r] = i;
    }
  pack_transposed<I>([&](i64 r) { return r < R ? qrows[r] : nullptr; }, Rp, D, p.scale, qt, Rp);
  for (i64 r = R; r < Rp; ++r) {
    sc.ipos[r] = -1e30f;
    sc.grow[r] = 0.0f;
    sc.slope[r] = 0.0f;
  }
  for (i64 r = 0; r < Rp; ++r) {
    sc.m[r] = kNegInf;
    sc.l[r] = 0.0f;
  }
  for (i64 v0 = 0; v0 < Rp; v0 += W) {  // lanes >= R are never visible: left out of the bounds
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
  const i64 krs = p.k_row_stride;
  const bool wl = p.window_left >= 0, wr = p.window_right >= 0;
  const i64 kend = cm.end_key(ip_hi, kb), kfirst = cm.first_key(ip_lo, ka, cm.tiles.fwd_keys);
  // A short key range (a narrow window) was mostly read by the neighbouring query tile and is
  // still cached; only long ranges are worth prefetching.
  const bool long_range = (kend - kfirst) * D >= (i64{1} << 16);
  for (i64 j0 = kfirst; j0 < kend;) {
    const i64 j1 = std::min(j0 + cm.tiles.fwd_keys, kend);
    const TileKind kind = cm.classify(b, ip_lo, ip_hi, j0, j1);
    if (kind == TileKind::Skip) {
      j0 = j1;
      continue;
    }
    const i64 nc = j1 - j0;
    const float* kr = keys.k + j0 * krs;
    const float* vr = keys.v + j0 * krs;
    if (long_range) {  // The next key tile's K and V rows into L2 while this one computes (a
                       // head's K and V outgrow L2 from a few thousand keys on).
      const i64 ja = j1, jb = std::min(ja + cm.tiles.fwd_keys, p.k_len[b]);
      for (i64 jj = ja; jj < jb; ++jj)
        for (i64 d = 0; d < D; d += 16) {
          _mm_prefetch(reinterpret_cast<const char*>(keys.k + jj * krs + d), _MM_HINT_T1);
          _mm_prefetch(reinterpret_cast<const char*>(keys.v + jj * krs + d), _MM_HINT_T1);
        }
    }
    const bool edge = kind == TileKind::Edge;
    const bool plain = !edge && !alibi;  // the row max comes out of the product's epilogue
    const bool pad_tile = edge && cm.padded_in(b, j0, j1) > 0;
    // Per lane block: keys [ea, ee) of the tile may be seen by some of its rows and keys
    // [ba, bb) by all of them (key padding aside); no row sees the others, so their scores
    // are neither computed nor read. Full tiles and global tokens: the whole tile.
    // [ca, cb): the keys every block needs.
    const i64 nblk = Rp / W;
    bool same = true;  // every block has the same [ea, ee)
    i64 ca = 0, cb = nc;
    for (i64 v = 0; v < nblk; ++v) {
      sc.rng[v] = edge && !has_global ? cm.lane_keys(sc.blk_lo[v], sc.blk_hi[v], j0, nc) : KeyRanges{0, nc, 0, nc};
      same = same && sc.rng[v].ea == sc.rng[0].ea && sc.rng[v].ee == sc.rng[0].ee;
      ca = std::max(ca, sc.rng[v].ea);
      cb = std::min(cb, sc.rng[v].ee);
    }
    cb = std::max(ca, cb);
    // S^T[nc x Rp] = K[j0:j1] Qt: keys every block needs at full width, the rest per block.
    float* colmax = sc.colmax.data();
    if (plain) std::fill(colmax, colmax + Rp, kNegInf);
    if (cb > ca)
      tile_gemm<I, false>(cb - ca, Rp, D, kr + ca * krs, krs, qt, Rp, st + ca * Rp, Rp, TileMode::Store, nullptr,
                          plain ? colmax : nullptr);
    for (i64 v = 0; v < nblk && !same; ++v) {
      const i64 ea = sc.rng[v].ea, ee = sc.rng[v].ee;
      for (auto [a, z] : {std::pair{ea, std::min(ee, ca)}, std::pair{std::max(ea, cb), ee}})
        if (z > a) tile_gemm<I, false>(z - a, W, D, kr + a * krs, krs, qt + v * W, Rp, st + a * Rp + v * W, Rp,
                                       TileMode::Store);
    }
    for (i64 v0 = 0; v0 < Rp; v0 += W) {
      const V ipv = I::load(sc.ipos + v0);
      const M growm = I::ge(I::load(sc.grow + v0), I::set1(0.5f));
      const V slv = I::load(sc.slope + v0);
      V mx = I::set1(kNegInf);
      if (plain) mx = I::load(colmax + v0);
      const auto [ea, ee, ba, bb] = sc.rng[v0 / W];
      for (i64 jj = ea; jj < ee && !plain; ++jj) {
        float* sp = st + jj * Rp + v0;
        V s = I::load(sp);
        const i64 j = j0 + jj;
        const float jf = static_cast<float>(j);
        if (alibi) s = I::sub(s, I::mul(slv, I::abs(I::sub(ipv, I::set1(jf)))));  // - m_h |i' - j|
        const bool padded = pad_tile && cm.key_padded(b, j);
        if (edge && (jj < ba || jj >= bb || padded || has_global)) {
          M vis = I::mall(!padded);
          if (wl) vis = I::mand(vis, I::le(ipv, I::set1(static_cast<float>(j + p.window_left))));
          if (wr) vis = I::mand(vis, I::ge(ipv, I::set1(static_cast<float>(j - p.window_right))));
          if (has_global && !padded) vis = I::mor(vis, cm.global_pos(j) ? I::mall(true) : growm);
          if (p.causal) vis = I::mand(vis, I::ge(ipv, I::set1(jf)));
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
      for (i64 jj = ea; jj < ee; ++jj) {
        float* sp = st + jj * Rp + v0;
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
        for (i64 jj = sc.rng[r / W].ea; jj < sc.rng[r / W].ee; ++jj) {
          float& x = st[jj * Rp + r];
          if (x != 0.0f) x = attention_dropout_keep(p, b, sc.lane_h[r], sc.lane_i[r], j0 + jj) ? x * inv_keep : 0.0f;
        }
    }
    // O = alpha O + P V   (P^T is S^T: A in column layout), over each block's keys [ea, ee)
    const TileMode mode = first ? TileMode::Store : TileMode::ScaleAdd;
    if (same) {
      const i64 ea = sc.rng[0].ea, ee = sc.rng[0].ee;
      tile_gemm<I, true>(R, D, ee - ea, st + ea * Rp, Rp, vr + ea * krs, krs, o, Dp, mode, sc.alpha);
    } else {
      for (i64 v0 = 0; v0 < R; v0 += W) {
        const i64 ea = sc.rng[v0 / W].ea, ee = sc.rng[v0 / W].ee;
        tile_gemm<I, true>(std::min<i64>(W, R - v0), D, ee - ea, st + ea * Rp + v0, Rp, vr + ea * krs, krs,
                           o + v0 * Dp, Dp, mode, sc.alpha + v0);
      }
    }
    first = false;
    j0 = j1;
  }
  if (first) std::memset(o, 0, static_cast<std::size_t>(R * Dp) * sizeof(float));
}

// The few-row case of fwd_rows (R = G nq <= tiles.small_rows, e.g. decode):
// S [R x keys] with keys as lanes, scores by row_dot_scores (K rows read
// sequentially, not broadcast), per-row online softmax; same results contract.
template <class Isa>
void fwd_rows_small(const Common& cm, const float* q, i64 b, i64 kvh, i64 i0, i64 nq, i64 ka, i64 kb,
                    FwdScratch<Isa>& sc) {
  using I = Isa;
  using V = typename I::V;
  using M = typename I::M;
  constexpr int W = I::W;
  const AttentionProblem& p = cm.p;
  const i64 D = cm.D, Dp = cm.Dp, R = cm.G * nq, shift = p.shift(b);
  float* qs = sc.qs.data();
  float* st = sc.st.data();
  float* o = sc.o.data();
  float* jpos = sc.keys.data();
  float* keyok = jpos + cm.tiles.fwd_keys;
  float* gcol = keyok + cm.tiles.fwd_keys;
  const bool alibi = !cm.slopes.empty(), has_global = cm.has_global();
  const bool wl = p.window_left >= 0, wr = p.window_right >= 0;
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
  const i64 krs = p.k_row_stride;
  const i64 kend = cm.end_key(ip_hi, kb);
  for (i64 j0 = cm.first_key(ip_lo, ka, cm.tiles.fwd_keys); j0 < kend;) {
    const i64 j1 = std::min(j0 + cm.tiles.fwd_keys, kend);
    const TileKind kind = cm.classify(b, ip_lo, ip_hi, j0, j1);
    if (kind == TileKind::Skip) {
      j0 = j1;
      continue;
    }
    const i64 nc = j1 - j0, ncp = round_up(nc, W);
    const float* kr = keys.k + j0 * krs;
    const float* vr = keys.v + j0 * krs;
    {  // Few rows do little work per byte: prefetch the next key tile's K and V rows
       // (decode with 32 query / 8 KV heads: 10 -> 15 GB/s measured, bench attention).
      const i64 ja = j1, jb = std::min(ja + cm.tiles.fwd_keys, p.k_len[b]);
      for (i64 jj = ja; jj < jb; ++jj)
        for (i64 d = 0; d < D; d += 16) {
          _mm_prefetch(reinterpret_cast<const char*>(keys.k + jj * krs + d), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(keys.v + jj * krs + d), _MM_HINT_T0);
        }
    }
    // S[R x ncp] = (scale Q) K^T   (lanes >= nc: 0, masked below)
    row_dot_scores<I>(R, nc, D, qs, Dp, kr, krs, st, ncp);
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
      const M growm = I::mall(has_global && cm.global_pos(ip));
      const V slv = I::set1(alibi ? cm.slopes[sc.lane_h[r]] : 0.0f);
      float* srow = st + r * ncp;
      V mxv = I::set1(kNegInf);
      for (i64 v0 = 0; v0 < ncp; v0 += W) {
        V x = I::load(srow + v0);
        if (alibi || masked) {
          const V jv = I::load(jpos + v0);
          if (alibi) x = I::sub(x, I::mul(slv, I::abs(I::sub(ipv, jv))));  // - m_h |i' - j|
          if (masked) {
            M win = I::mall(true);
            if (wl) win = I::mand(win, I::ge(jv, I::set1(static_cast<float>(ip - p.window_left))));
            if (wr) win = I::mand(win, I::le(jv, I::set1(static_cast<float>(ip + p.window_right))));
            if (has_global) win = I::mor(I::mor(win, growm), I::ge(I::load(gcol + v0), I::set1(0.5f)));
            M vis = I::mand(win, I::ge(I::load(keyok + v0), I::set1(0.5f)));
            if (p.causal) vis = I::mand(vis, I::le(jv, ipv));
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
    tile_gemm<I, false>(R, D, nc, st, ncp, vr, krs, o, Dp, first ? TileMode::Store : TileMode::ScaleAdd, sc.alpha);
    first = false;
    j0 = j1;
  }
  if (first) std::memset(o, 0, static_cast<std::size_t>(R * Dp) * sizeof(float));
}

// out = O / l, lse = m + ln l (NaN inputs give NaN l or O, which reach out and lse).
// l == 0: the row sees no key (out 0, lse -inf), or every score it sees is -inf
// (only from infinite inputs: out and lse NaN, as in the dense reference).
void write_rows(const Common& cm, i64 b, i64 kvh, i64 i0, i64 nq, const float* o, const float* m, const float* l,
                float* out, float* lse) {
  const AttentionProblem& p = cm.p;
  for (i64 r = 0, g = 0, ii = 0; r < cm.G * nq; ++r, ii = ii + 1 == nq ? 0 : ii + 1, g += ii == 0) {
    const i64 h = kvh * cm.G + g, i = i0 + ii;
    float* orow = out + p.q_off[b] + h * p.q_head_stride + i * p.q_row_stride;
    float& lr = lse[p.lse_off[b] + h * p.lse_head_stride + i];
    if (l[r] != 0.0f) {
      for (i64 d = 0; d < cm.D; ++d) orow[d] = o[r * cm.Dp + d] / l[r];
      lr = static_cast<float>(static_cast<double>(m[r]) + std::log(static_cast<double>(l[r])));  // one rounding
    } else if (attention_row_sees_a_key(p, b, i)) {
      for (i64 d = 0; d < cm.D; ++d) orow[d] = std::numeric_limits<float>::quiet_NaN();
      lr = std::numeric_limits<float>::quiet_NaN();
    } else {
      for (i64 d = 0; d < cm.D; ++d) orow[d] = 0.0f;
      lr = kNegInf;
    }
  }
}

struct FwdItem {
  i64 b, kvh, qt, split;  // split < 0: the whole key range
};

template <class Isa>
void forward_impl(const Common& cm, const float* q, float* out, float* lse) {
  const AttentionProblem& p = cm.p;
  const FlashTiles& t = cm.tiles;
  const i64 bq = cm.fwd_tile_rows();
  const i64 Rp = round_up(cm.G * bq, Isa::W);
  const i64 slot = Rp * cm.Dp + 2 * Rp;  // one split's partial: O [Rp x Dp], m, l

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
        std::memcpy(dst, sc.o.data(), static_cast<std::size_t>(cm.G * nq * cm.Dp) * sizeof(float));
        std::memcpy(dst + Rp * cm.Dp, sc.m, static_cast<std::size_t>(Rp) * sizeof(float));
        std::memcpy(dst + Rp * cm.Dp + Rp, sc.l, static_cast<std::size_t>(Rp) * sizeof(float));
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
        for (i64 s = 0; s < nsplit[w.b]; ++s) mmax = std::max(mmax, base[s * slot + Rp * cm.Dp + r]);
        float lsum = 0.0f;
        float* orow = o + r * cm.Dp;
        std::fill(orow, orow + cm.D, 0.0f);
        if (mmax != kNegInf) {
          for (i64 s = 0; s < nsplit[w.b]; ++s) {
            const float* ps = base + s * slot;
            const float wgt = std::exp(ps[Rp * cm.Dp + r] - mmax);
            lsum += wgt * ps[Rp * cm.Dp + Rp + r];
            for (i64 d = 0; d < cm.D; ++d) orow[d] += wgt * ps[r * cm.Dp + d];
          }
        }
        sc.m[r] = mmax;
        sc.l[r] = lsum;
      }
      write_rows(cm, w.b, w.kvh, i0, nq, o, sc.m, sc.l, out, lse);
    }
  }
}

// ---------------------------------------------------------------- backward

template <class Isa>
struct BwdScratch {
  i64 Bkp = 0, Bq = 0;
  Buf kt, vt, qs, dk, dv, s, pb, dp, pd, mf, lanes;
  float *jpos = nullptr, *keyok = nullptr, *gcol = nullptr;
  explicit BwdScratch(const Common& cm) {
    Bkp = round_up(cm.tiles.bwd_keys, 16);
    Bq = cm.tiles.bwd_rows;
    kt.reset(cm.D * Bkp);
    vt.reset(cm.D * Bkp);
    qs.reset(Bq * cm.Dp);
    dk.reset(Bkp * cm.Dp);
    dv.reset(Bkp * cm.Dp);
    s.reset(Bq * Bkp);
    pb.reset(Bq * Bkp);
    dp.reset(Bq * Bkp);
    if (cm.p.dropout_p > 0.0f) {
      pd.reset(Bq * Bkp);
      mf.reset(Bq * Bkp);
    }
    lanes.reset(3 * Bkp);
    jpos = lanes.data();
    keyok = jpos + Bkp;
    gcol = keyok + Bkp;
  }
};

struct BwdInputs {
  const float *q, *k, *v, *dout;
  const float* lse;   // [rows] lse, +inf for rows that see no key (so that P = 0)
  const float* di;    // [rows] rowsum(dO * O)
  std::vector<i64> row_base;  // entry b: row (h, i) at row_base[b] + h * q_len[b] + i
  float* dk;
  float* dv;
};

// One work item: keys [j0, j1) of (b, kvh) against every query row of the
// group's heads. Accumulates dK, dV for these keys (written at the end) and
// adds dS K into dq_base (rows of head g at dq_base + g * dq_hs + i * dq_rs).
template <class Isa>
void bwd_item(const Common& cm, const BwdInputs& in, i64 b, i64 kvh, i64 j0, i64 j1, float* dq_base, i64 dq_hs,
              i64 dq_rs, BwdScratch<Isa>& sc) {
  using I = Isa;
  using V = typename I::V;
  using M = typename I::M;
  constexpr int W = I::W;
  const AttentionProblem& p = cm.p;
  const i64 D = cm.D, Dp = cm.Dp, Bkp = sc.Bkp, nc = j1 - j0, shift = p.shift(b), lq = p.q_len[b];
  const i64 krs = p.k_row_stride, qrs = p.q_row_stride;
  const float* kr = in.k + p.k_off[b] + kvh * p.k_head_stride + j0 * krs;
  const float* vr = in.v + p.k_off[b] + kvh * p.k_head_stride + j0 * krs;
  float *kt = sc.kt.data(), *vt = sc.vt.data(), *dka = sc.dk.data(), *dva = sc.dv.data();
  float *s = sc.s.data(), *pb = sc.pb.data(), *dp = sc.dp.data(), *pd = sc.pd.data(), *mf = sc.mf.data();
  const bool alibi = !cm.slopes.empty(), has_global = cm.has_global(), dropout = p.dropout_p > 0.0f;
  const bool wl = p.window_left >= 0, wr = p.window_right >= 0;
  const i64 few_from = cm.fwd_few_rows_from(b);

  // K^T, V^T [D x Bkp] (zero beyond nc); key lanes: position, usable (in range, not padded), global.
  for (const auto& [src, dst] : {std::pair{kr, kt}, std::pair{vr, vt}})
    pack_transposed<I>([&, src = src](i64 j) { return j < nc ? src + j * krs : nullptr; }, Bkp, D, 1.0f, dst, Bkp);
  for (i64 jj = 0; jj < Bkp; ++jj) {
    const i64 j = j0 + jj;
    sc.jpos[jj] = static_cast<float>(j);
    sc.keyok[jj] = (jj < nc && !cm.key_padded(b, j)) ? 1.0f : 0.0f;
    sc.gcol[jj] = (jj < nc && cm.global_pos(j)) ? 1.0f : 0.0f;
  }
  std::memset(dka, 0, static_cast<std::size_t>(Bkp * Dp) * sizeof(float));
  std::memset(dva, 0, static_cast<std::size_t>(Bkp * Dp) * sizeof(float));
  const float inv_keep = dropout ? 1.0f / (1.0f - p.dropout_p) : 1.0f;

  for (i64 g = 0; g < cm.G; ++g) {
    const i64 h = kvh * cm.G + g;
    const float sl = alibi ? cm.slopes[h] : 0.0f;
    const auto [qa, qb] = cm.query_range(b, j0, j1, sc.Bq);
    for (i64 i0 = qa; i0 < qb; i0 += sc.Bq) {
      const i64 nq = std::min(sc.Bq, qb - i0);
      const TileKind kind = cm.classify(b, i0 + shift, i0 + nq - 1 + shift, j0, j1);
      if (kind == TileKind::Skip) continue;
      const bool masked = kind == TileKind::Edge || nc < Bkp;
      const i64 qoff = p.q_off[b] + h * p.q_head_stride + i0 * qrs;
      const float* qrow = in.q + qoff;
      const float* dorow = in.dout + qoff;
      const i64 rbase = in.row_base[b] + h * lq + i0;

      // S = (scale Q) K^T, rounded exactly as in the forward (same products, same order), so
      // P = exp(S + bias - lse) (visible keys only) matches the forward's normalization.
      float* qs = sc.qs.data();
      for (i64 ii = 0; ii < nq; ++ii)
        for (i64 d = 0; d < Dp; ++d) qs[ii * Dp + d] = d < D ? qrow[ii * qrs + d] * p.scale : 0.0f;
      tile_gemm<I, false>(nq, Bkp, D, qs, Dp, kt, Bkp, s, Bkp, TileMode::Store);
      // Rows whose forward used row_dot_scores: the same sums, bit for bit.
      for (i64 ii = std::max<i64>(0, few_from - i0); ii < nq; ++ii)
        row_dot_scores<I>(1, nc, D, qs + ii * Dp, Dp, kr, krs, s + ii * Bkp, Bkp);
      for (i64 ii = 0; ii < nq; ++ii) {
        const i64 ip = i0 + ii + shift;
        const V nlse = I::set1(-in.lse[rbase + ii]);
        const V ipv = I::set1(static_cast<float>(ip));
        const M growm = I::mall(has_global && cm.global_pos(ip));
        for (i64 v0 = 0; v0 < Bkp; v0 += W) {
          V x = I::load(s + ii * Bkp + v0);
          const V jv = I::load(sc.jpos + v0);
          if (alibi) x = I::sub(x, I::mul(I::set1(sl), I::abs(I::sub(ipv, jv))));
          x = I::add(x, nlse);
          if (masked) {
            M win = I::mall(true);
            if (wl) win = I::mand(win, I::ge(jv, I::set1(static_cast<float>(ip - p.window_left))));
            if (wr) win = I::mand(win, I::le(jv, I::set1(static_cast<float>(ip + p.window_right))));
            if (has_global) win = I::mor(I::mor(win, growm), I::ge(I::load(sc.gcol + v0), I::set1(0.5f)));
            M vis = I::mand(win, I::ge(I::load(sc.keyok + v0), I::set1(0.5f)));
            if (p.causal) vis = I::mand(vis, I::le(jv, ipv));
            x = I::select(vis, x, I::set1(kNegInf));
          }
          I::store(pb + ii * Bkp + v0, I::exp2(I::mul(x, I::set1(kLog2e))));
        }
      }
      const float* pv = pb;  // the P that multiplies V in the forward: dropout(P)
      if (dropout) {
        for (i64 ii = 0; ii < nq; ++ii)
          for (i64 jj = 0; jj < Bkp; ++jj) {
            const float x = pb[ii * Bkp + jj];
            const float f = (x != 0.0f && attention_dropout_keep(p, b, h, i0 + ii, j0 + jj)) ? inv_keep : 0.0f;
            mf[ii * Bkp + jj] = f;
            pd[ii * Bkp + jj] = x * f;
          }
        pv = pd;
      }
      // dV += dropout(P)^T dO
      tile_gemm<I, true>(nc, D, nq, pv, Bkp, dorow, qrs, dva, Dp, TileMode::Add);
      // dP = dO V^T
      tile_gemm<I, false>(nq, Bkp, D, dorow, qrs, vt, Bkp, dp, Bkp, TileMode::Store);
      // dS = scale * P * (dropout'(dP) - D_i)
      for (i64 ii = 0; ii < nq; ++ii) {
        const V di = I::set1(in.di[rbase + ii]);
        const V sc_v = I::set1(p.scale);
        for (i64 v0 = 0; v0 < Bkp; v0 += W) {
          V dpv = I::load(dp + ii * Bkp + v0);
          if (dropout) dpv = I::mul(dpv, I::load(mf + ii * Bkp + v0));
          I::store(dp + ii * Bkp + v0, I::mul(I::mul(I::load(pb + ii * Bkp + v0), I::sub(dpv, di)), sc_v));
        }
      }
      // dK += dS^T Q ; dQ += dS K
      tile_gemm<I, true>(nc, D, nq, dp, Bkp, qrow, qrs, dka, Dp, TileMode::Add);
      tile_gemm<I, false>(nq, D, nc, dp, Bkp, kr, krs, dq_base + g * dq_hs + i0 * dq_rs, dq_rs, TileMode::Add);
    }
  }
  for (i64 jj = 0; jj < nc; ++jj) {
    const i64 off = p.k_off[b] + kvh * p.k_head_stride + (j0 + jj) * krs;
    std::memcpy(in.dk + off, dka + jj * Dp, static_cast<std::size_t>(D) * sizeof(float));
    std::memcpy(in.dv + off, dva + jj * Dp, static_cast<std::size_t>(D) * sizeof(float));
  }
}

struct BwdItem {
  i64 b, kvh, t;
  double cost;
  int chunk;
};

template <class Isa>
void backward_impl(const Common& cm, const float* q, const float* k, const float* v, const float* out,
                   const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  using I = Isa;
  const AttentionProblem& p = cm.p;
  const i64 D = cm.D, G = cm.G;

  // D_i = rowsum(dO * O) and the row's lse (+inf when it sees no key), once per row.
  BwdInputs in{q, k, v, dout, nullptr, nullptr, std::vector<i64>(p.batch), dk, dv};
  i64 rows = 0;
  for (i64 b = 0; b < p.batch; ++b) {
    in.row_base[b] = rows;
    rows += p.hq * p.q_len[b];
  }
  Buf lse_rows(rows), di(rows);
  in.lse = lse_rows.data();
  in.di = di.data();
  std::vector<std::pair<i64, i64>> bh;  // (b, h) with rows
  for (i64 b = 0; b < p.batch; ++b)
    for (i64 h = 0; h < p.hq; ++h)
      if (p.q_len[b] > 0) bh.push_back({b, h});
  const i64 n_bh = static_cast<i64>(bh.size());
  const bool par = total_work(p) >= kParallelMinWork;
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (i64 x = 0; x < n_bh; ++x) {
    const auto [b, h] = bh[x];
    for (i64 i = 0; i < p.q_len[b]; ++i) {
      const i64 off = p.q_off[b] + h * p.q_head_stride + i * p.q_row_stride;
      double sum = 0;  // in double: D_i enters every dS of the row
      for (i64 d = 0; d < D; ++d) sum += static_cast<double>(dout[off + d]) * out[off + d];
      const i64 r = in.row_base[b] + h * p.q_len[b] + i;
      const float l = lse[p.lse_off[b] + h * p.lse_head_stride + i];
      di.data()[r] = static_cast<float>(sum);
      lse_rows.data()[r] = l == kNegInf ? std::numeric_limits<float>::infinity() : l;
      std::memset(dq + off, 0, static_cast<std::size_t>(D) * sizeof(float));  // dq is accumulated below
    }
  }

  // Work items (b, kvh, key tile) own their dK, dV rows. dQ: items are cut
  // into one contiguous chunk per thread by estimated cost; a (b, kvh) pair
  // inside one chunk adds into dq directly, a pair cut by chunk boundaries
  // adds into per-chunk buffers summed in chunk order afterwards. The sums'
  // order depends only on the problem and the thread count (determinism).
  const i64 bk = cm.tiles.bwd_keys, bq = cm.tiles.bwd_rows;
  std::vector<BwdItem> items;
  double total = 0;
  for (i64 b = 0; b < p.batch; ++b) {
    const i64 nt = ceil_div(p.k_len[b], bk);
    std::vector<double> tcost(nt, 0.0);
    for (i64 t = 0; t < nt; ++t) {
      const i64 j0 = t * bk, j1 = std::min(p.k_len[b], j0 + bk);
      double c = 0.1;  // packing
      const auto [qa, qb] = cm.query_range(b, j0, j1, bq);
      for (i64 i0 = qa; i0 < qb; i0 += bq) {
        const TileKind kind = cm.classify(b, i0 + p.shift(b), std::min(i0 + bq, qb) - 1 + p.shift(b), j0, j1);
        c += kind == TileKind::Skip ? 0.0 : kind == TileKind::Full ? 1.0 : 1.3;
      }
      tcost[t] = c * static_cast<double>(G);
    }
    for (i64 kvh = 0; kvh < p.hkv; ++kvh)
      for (i64 t = 0; t < nt; ++t) {
        items.push_back({b, kvh, t, tcost[t], 0});
        total += tcost[t];
      }
  }
  const i64 n_items = static_cast<i64>(items.size());
  const int n_chunks = static_cast<int>(std::max<i64>(1, std::min<i64>(par ? num_threads() : 1, n_items)));
  {
    double before = 0;
    for (auto& it : items) {
      const double mid = before + 0.5 * it.cost;
      it.chunk = std::min(n_chunks - 1, static_cast<int>(static_cast<double>(n_chunks) * mid / std::max(total, 1e-9)));
      before += it.cost;
    }
  }
  // Pairs cut by a chunk boundary: one zeroed [G, Lq, D] buffer per (pair, chunk).
  struct Shared {
    i64 b, kvh;
    int c0, c1;
    std::vector<Buf> bufs;
  };
  std::vector<Shared> shared;
  std::vector<i64> item_shared(n_items, -1);
  for (i64 x = 0; x < n_items;) {
    i64 y = x;
    while (y < n_items && items[y].b == items[x].b && items[y].kvh == items[x].kvh) ++y;
    if (items[x].chunk != items[y - 1].chunk) {
      Shared sh{items[x].b, items[x].kvh, items[x].chunk, items[y - 1].chunk, {}};
      for (int c = sh.c0; c <= sh.c1; ++c) {
        sh.bufs.emplace_back(G * p.q_len[sh.b] * D);
        sh.bufs.back().zero();
      }
      for (i64 z = x; z < y; ++z) item_shared[z] = static_cast<i64>(shared.size());
      shared.push_back(std::move(sh));
    }
    x = y;
  }
  std::vector<i64> chunk_start(n_chunks + 1, n_items);
  for (i64 x = n_items - 1; x >= 0; --x) chunk_start[items[x].chunk] = x;
  for (int c = n_chunks - 1; c >= 0; --c) chunk_start[c] = std::min(chunk_start[c], chunk_start[c + 1]);

  auto scratch = make_scratch<BwdScratch<I>>(n_chunks, cm);
#pragma omp parallel num_threads(n_chunks) if (n_chunks > 1)
  {
    BwdScratch<I>& sc = *scratch[omp_get_thread_num()];
#pragma omp for schedule(static, 1)
    for (int c = 0; c < n_chunks; ++c) {
      for (i64 x = chunk_start[c]; x < chunk_start[c + 1]; ++x) {
        const BwdItem& it = items[x];
        const i64 j0 = it.t * bk, j1 = std::min(p.k_len[it.b], j0 + bk);
        if (item_shared[x] < 0) {
          bwd_item<I>(cm, in, it.b, it.kvh, j0, j1, dq + p.q_off[it.b] + it.kvh * G * p.q_head_stride,
                      p.q_head_stride, p.q_row_stride, sc);
        } else {
          Shared& sh = shared[item_shared[x]];
          const i64 lq = p.q_len[it.b];
          bwd_item<I>(cm, in, it.b, it.kvh, j0, j1, sh.bufs[c - sh.c0].data(), lq * D, D, sc);
        }
      }
    }
  }
  // dq rows of cut pairs = sum of the chunks' buffers in chunk order.
  for (const Shared& sh : shared) {
    const i64 lq = p.q_len[sh.b], nrows = G * lq;
#pragma omp parallel for schedule(static) if (par)
    for (i64 r = 0; r < nrows; ++r) {
      const i64 g = r / lq, i = r % lq;
      float* dst = dq + p.q_off[sh.b] + (sh.kvh * G + g) * p.q_head_stride + i * p.q_row_stride;
      for (const Buf& bf : sh.bufs) {
        const float* src = bf.data() + r * D;
        for (i64 d = 0; d < D; ++d) dst[d] += src[d];
      }
    }
  }
}

// ---------------------------------------------------------------- dispatch

std::atomic<int> g_isa{static_cast<int>(FlashIsa::Auto)};

template <class F>
void with_isa(F&& f) {
  switch (flash_isa()) {
#ifdef MF_FLASH_HAVE_AVX512
    case FlashIsa::Avx512:
      f(IsaAvx512{});
      return;
#endif
#ifdef MF_FLASH_HAVE_AVX2
    case FlashIsa::Avx2:
      f(IsaAvx2{});
      return;
#endif
    default:
      f(IsaScalar{});
      return;
  }
}

}  // namespace
}  // namespace flash

bool flash_isa_available(FlashIsa isa) {
  switch (isa) {
    case FlashIsa::Auto:
    case FlashIsa::Scalar:
      return true;
    case FlashIsa::Avx2:
#ifdef MF_FLASH_HAVE_AVX2
      return true;
#else
      return false;
#endif
    case FlashIsa::Avx512:
#ifdef MF_FLASH_HAVE_AVX512
      return true;
#else
      return false;
#endif
  }
  return false;
}

std::string flash_isa_name(FlashIsa isa) {
  switch (isa) {
    case FlashIsa::Auto:
      return "auto";
    case FlashIsa::Avx512:
      return "avx512";
    case FlashIsa::Avx2:
      return "avx2";
    case FlashIsa::Scalar:
      return "scalar";
  }
  return "?";
}

void set_flash_isa(FlashIsa isa) {
  MF_CHECK(flash_isa_available(isa), "[flash_attention] SIMD path ", flash_isa_name(isa),
           " is not compiled into this build");
  flash::g_isa.store(static_cast<int>(isa));
}

FlashIsa flash_isa() {
  const auto isa = static_cast<FlashIsa>(flash::g_isa.load());
  if (isa != FlashIsa::Auto) return isa;
#if defined(MF_FLASH_HAVE_AVX512)
  return FlashIsa::Avx512;
#elif defined(MF_FLASH_HAVE_AVX2)
  return FlashIsa::Avx2;
#else
  return FlashIsa::Scalar;
#endif
}

void check_flash_tiles(const FlashTiles& t) {
  const std::pair<const char*, std::int64_t> sizes[] = {{"fwd_rows", t.fwd_rows},
                                                         {"fwd_keys", t.fwd_keys},
                                                         {"bwd_rows", t.bwd_rows},
                                                         {"bwd_keys", t.bwd_keys},
                                                         {"split_chunk", t.split_chunk}};
  for (const auto& [name, x] : sizes)
    MF_CHECK(x >= 16 && x % 16 == 0 && x <= 4096, "[flash_attention] tile size ", name,
             " must be a multiple of 16 in [16, 4096], got ", x);
  MF_CHECK(t.small_rows >= 0 && t.small_rows <= t.fwd_rows, "[flash_attention] small_rows must be in [0, fwd_rows], got ",
           t.small_rows);
  MF_CHECK(t.split_min_keys >= 1, "[flash_attention] split_min_keys must be >= 1, got ", t.split_min_keys);
}

std::int64_t flash_forward_key_splits(const FlashTiles& tiles, std::int64_t group, std::int64_t q_len,
                                      std::int64_t k_len) {
  const std::int64_t rows_per_tile = std::max<std::int64_t>(1, tiles.fwd_rows / group);
  const bool one_query_tile = flash::ceil_div(q_len, rows_per_tile) == 1;
  if (!one_query_tile || k_len < tiles.split_min_keys || k_len <= tiles.split_chunk) return 0;
  return flash::ceil_div(k_len, tiles.split_chunk);
}

void flash_attention_forward(const AttentionProblem& p, const float* q, const float* k, const float* v, float* out,
                             float* lse) {
  const flash::Common cm(p, k, v);
  flash::with_isa([&](auto isa) { flash::forward_impl<decltype(isa)>(cm, q, out, lse); });
}

void flash_attention_backward(const AttentionProblem& p, const float* q, const float* k, const float* v,
                              const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  const flash::Common cm(p, k, v);
  flash::with_isa(
      [&](auto isa) { flash::backward_impl<decltype(isa)>(cm, q, k, v, out, lse, dout, dq, dk, dv); });
}

}  // namespace mf
