// Flash attention, stage 1 of 3 (flash_forward.cpp, flash_backward.cpp):
// the tile geometry and visibility shared by the forward and the backward.
// FlashCall holds what one call's tile loops read (the problem, its tile
// sizes, shrunk for narrow windows, lookup tables for global tokens and key
// padding, and the lists of present tiles of a block-sparse layout) and
// classifies (row range, key range) tiles as skipped, full or edge;
// visible_pairs is the element rule on SIMD lanes.
#pragma once
#if !defined(MF_ISA_NS)
#error "nn/attention/flash_geometry.h belongs in an *_isa.cpp file, after core/isa_target.h"
#endif
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "core/alloc.h"
#include "nn/attention/attention_problem.h"
#include "nn/attention/flash_attention.h"
#include "nn/attention/flash_tiles.h"

namespace mf::MF_ISA_NS::flash {

using i64 = std::int64_t;

inline i64 round_up(i64 x, i64 m) { return (x + m - 1) / m * m; }
inline i64 ceil_div(i64 x, i64 m) { return (x + m - 1) / m; }

// Below this many multiply-adds (forward) a call runs on one thread: a
// parallel region costs a barrier, which on a loaded machine can wait a
// whole scheduler time slice; ~40 us of single-thread work.
inline constexpr i64 kParallelMinWork = i64{1} << 21;

inline i64 total_work(const AttentionProblem& p) {
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

// Key offsets within a tile, for a block of rows: keys [seen_begin, seen_end) are seen by some
// row and keys [all_begin, all_end) by every row (key padding aside); no row sees the others.
struct KeyRanges {
  i64 seen_begin, seen_end, all_begin, all_end;
};

enum class TileKind { Skip, Full, Edge };  // Full: every (row, key) visible; Edge: element masks needed

// The keys of one (batch, KV head): row j of K at k + j * k_row_stride, of V at v + j * v_row_stride.
struct KeyRows {
  const float* k = nullptr;
  const float* v = nullptr;
};

// What one call's tile loops read: the problem, tile sizes, and lookup
// tables for global tokens and key padding.
struct FlashCall {
  const AttentionProblem& p;
  FlashTiles tiles;
  i64 G, D, Dp;
  i64 Dv, Dvp;  // value / output head dim (p.dv), and rounded up to 16 like Dp
  std::vector<float> slopes;        // [hq] ALiBi slopes; empty without ALiBi
  std::vector<std::uint8_t> global_key;  // [max k_len] key position is a global token
  std::vector<i64> pad_prefix, pad_base;  // padded keys before j of entry b: pad_prefix[pad_base[b] + j]
  const float* k;
  const float* v;
  bool fwd_whole_reach = false;   // a forward key tile covers a row tile's whole window reach
  bool bwd_whole_reach = false;   // a backward row step covers a key tile's whole window reach
  static constexpr i64 kMaxReachKeys = 256;

  FlashCall(const AttentionProblem& prob, const float* kp, const float* vp)
      : p(prob), tiles(prob.tiles), G(prob.group()), D(prob.d), Dp(round_up(prob.d, 16)), Dv(prob.dv),
        Dvp(round_up(prob.dv, 16)), slopes(prob.alibi_slopes), k(kp), v(vp) {
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
    if (p.layout != nullptr) setup_layout();
    if (!p.global_tokens.empty()) {
      i64 max_k = 0;
      for (i64 b = 0; b < p.batch; ++b) max_k = std::max(max_k, p.k_len[b]);
      global_key.assign(static_cast<std::size_t>(max_k), 0);
      for (i64 g : p.global_tokens)
        if (g >= 0 && g < max_k) global_key[g] = 1;
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
  bool global_pos(i64 pos) const { return pos >= 0 && pos < static_cast<i64>(global_key.size()) && global_key[pos] != 0; }
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
  // KeyRanges of keys [j0, j0 + nc) against rows at positions [pos_lo, pos_hi] (no global
  // tokens), as offsets from j0: seen_begin <= all_begin <= all_end <= seen_end.
  KeyRanges lane_keys(i64 pos_lo, i64 pos_hi, i64 j0, i64 nc) const {
    const auto at = [&](i64 j) { return std::clamp<i64>(j - j0, 0, nc); };
    i64 vis_end = j0 + nc, all_end = j0 + nc, seen_begin = 0, all_begin = 0;
    if (p.causal) {
      vis_end = std::min(vis_end, pos_hi + 1);
      all_end = std::min(all_end, pos_lo + 1);
    }
    if (p.window_right >= 0) {
      vis_end = std::min(vis_end, pos_hi + p.window_right + 1);
      all_end = std::min(all_end, pos_lo + p.window_right + 1);
    }
    if (p.window_left >= 0) {
      seen_begin = at(pos_lo - p.window_left);
      all_begin = at(pos_hi - p.window_left);
    }
    const i64 seen_end = std::max(seen_begin, at(vis_end));
    const i64 all_end_offset = std::min(seen_end, std::max(all_begin, at(all_end)));
    return {seen_begin, seen_end, std::min(all_begin, all_end_offset), all_end_offset};
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

  // Block-sparse layout (p.layout, block_sparse.h). Tiles are cut to divide its block (so that
  // a tile lies in one layout tile; the front door keeps Lk - Lq a multiple of the block or
  // Lq = 1, so query tiles align too) and the loops visit only present tiles through lists
  // built once per call over the row blocks [row_lo, row_hi] that hold query rows and the
  // column blocks [0, col_end) that hold keys (a decode step lists one row):
  // fwd_cols, per (KV group u, row block), the column blocks present for some query head of
  // the group (u = 0 for a shared map); bwd_rows, per (layout head, column block), the row
  // blocks present for that head.
  const BlockLayout* layout = nullptr;
  bool layout_heads_differ = false;  // per-head maps with GQA groups: a forward tile may lack some heads
  i64 row_lo = 0, row_hi = -1, col_end = 0;
  std::vector<i64> fwd_cols_start, fwd_cols, bwd_rows_start, bwd_rows;

  void setup_layout() {
    layout = p.layout;
    const BlockLayout& l = *layout;
    const i64 blk = l.block;
    const auto divisor_at_most = [blk](i64 cap, i64 unit) {  // largest multiple of unit dividing blk, <= cap
      i64 best = unit;
      for (i64 t = unit; t <= std::min(cap, blk); t += unit)
        if (blk % t == 0) best = t;
      return best;
    };
    tiles.fwd_keys = divisor_at_most(tiles.fwd_keys, 16);
    tiles.bwd_keys = divisor_at_most(tiles.bwd_keys, 16);
    tiles.bwd_rows = divisor_at_most(tiles.bwd_rows, 16);
    tiles.fwd_rows = G * divisor_at_most(std::max<i64>(1, tiles.fwd_rows / G), 1);
    tiles.small_rows = std::min(tiles.small_rows, tiles.fwd_rows);
    tiles.split_chunk = std::max(blk, tiles.split_chunk / blk * blk);
    fwd_whole_reach = bwd_whole_reach = false;
    layout_heads_differ = l.heads > 1 && G > 1;
    row_lo = std::numeric_limits<i64>::max();
    for (i64 b = 0; b < p.batch; ++b) {
      col_end = std::max(col_end, ceil_div(p.k_len[b], blk));
      if (p.q_len[b] == 0) continue;
      row_lo = std::min(row_lo, p.shift(b) / blk);
      row_hi = std::max(row_hi, (p.shift(b) + p.q_len[b] - 1) / blk);
    }
    row_lo = std::min(row_lo, row_hi + 1);
    const i64 groups = l.heads == 1 ? 1 : p.hkv, heads_per_group = l.heads == 1 ? 1 : G;
    for (i64 u = 0; u < groups; ++u)
      for (i64 r = row_lo; r <= row_hi; ++r) {
        fwd_cols_start.push_back(static_cast<i64>(fwd_cols.size()));
        for (i64 c = 0; c < col_end; ++c) {
          bool any = false;
          for (i64 g = 0; g < heads_per_group && !any; ++g) any = l.at(u * heads_per_group + g, r, c);
          if (any) fwd_cols.push_back(c);
        }
      }
    fwd_cols_start.push_back(static_cast<i64>(fwd_cols.size()));
    for (i64 h = 0; h < l.heads; ++h)
      for (i64 c = 0; c < col_end; ++c) {
        bwd_rows_start.push_back(static_cast<i64>(bwd_rows.size()));
        for (i64 r = row_lo; r <= row_hi; ++r)
          if (l.at(h, r, c)) bwd_rows.push_back(r);
      }
    bwd_rows_start.push_back(static_cast<i64>(bwd_rows.size()));
  }
  // The first key >= j0 in a column block present (for some head of KV group kvh) at the row
  // block of position ip; INT64_MAX when there is none.
  i64 layout_next_key(i64 kvh, i64 ip, i64 j0) const {
    const BlockLayout& l = *layout;
    const i64 list = (l.heads == 1 ? 0 : kvh) * (row_hi - row_lo + 1) + ip / l.block - row_lo;
    const auto first = fwd_cols.begin() + fwd_cols_start[list], last = fwd_cols.begin() + fwd_cols_start[list + 1];
    const auto it = std::lower_bound(first, last, j0 / l.block);
    return it == last ? std::numeric_limits<i64>::max() : std::max(j0, *it * l.block);
  }
  // The first query row >= i0 of entry b whose row block is present for query head h at the
  // column block of key j; INT64_MAX when there is none.
  i64 layout_next_row(i64 b, i64 h, i64 j, i64 i0) const {
    const BlockLayout& l = *layout;
    const i64 shift = p.shift(b), list = (l.heads == 1 ? 0 : h) * col_end + j / l.block;
    const auto first = bwd_rows.begin() + bwd_rows_start[list], last = bwd_rows.begin() + bwd_rows_start[list + 1];
    const auto it = std::lower_bound(first, last, (i0 + shift) / l.block);
    return it == last ? std::numeric_limits<i64>::max() : std::max(i0, *it * l.block - shift);
  }
  bool layout_has(i64 h, i64 ip, i64 j) const {
    return layout->at(layout->heads == 1 ? 0 : h, ip / layout->block, j / layout->block);
  }
  // Whether every query head of KV group kvh has the tile of (ip, j).
  bool layout_group_has_all(i64 kvh, i64 ip, i64 j) const {
    for (i64 g = 0; g < G; ++g)
      if (!layout_has(kvh * G + g, ip, j)) return false;
    return true;
  }
  // Whether every pair of rows [ip_lo, ip_hi] x keys [j0, j1) passes the element rule.
  bool rule_covers(i64 ip_lo, i64 ip_hi, i64 j0, i64 j1) const {
    const SparseElementRule& r = layout->rule;
    switch (r.kind) {
      case SparseElementRule::Kind::None:
        return true;
      case SparseElementRule::Kind::Strided:
        return std::max(ip_hi - j0, j1 - 1 - ip_lo) < r.period;
      case SparseElementRule::Kind::Fixed: {
        const i64 group = floor_div(j0, r.period);
        const bool one_group = floor_div(j1 - 1, r.period) == group;
        return one_group && ((floor_div(ip_lo, r.period) == group && floor_div(ip_hi, r.period) == group) ||
                             floor_mod(j0, r.period) >= r.period - r.summary);
      }
    }
    return false;
  }
  // The kind of a tile that the layout loops visit: a Full tile becomes Edge where the element
  // rule cuts it or (forward, heads_differ) some of its stacked heads lack it.
  TileKind layout_kind(TileKind kind, i64 ip_lo, i64 ip_hi, i64 j0, i64 j1, bool heads_differ) const {
    if (kind == TileKind::Full && (heads_differ || !rule_covers(ip_lo, ip_hi, j0, j1))) return TileKind::Edge;
    return kind;
  }

  KeyRows kv(i64 b, i64 kvh) const {
    return {k + p.k_off[b] + kvh * p.k_head_stride, v + p.v_off[b] + kvh * p.v_head_stride};
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

// floor(x / l) and x - l floor(x / l) for integer-valued x (|x| <= 2^24): the
// quotient from x * (1/l) is off by at most one, and the remainder from one
// fused multiply-add is exact, which corrects it.
template <class I>
std::pair<typename I::V, typename I::V> div_mod(typename I::V x, float l) {
  typename I::V q = I::floor(I::mul(x, I::set1(1.0f / l)));
  typename I::V r = I::fmadd(q, I::set1(-l), x);
  const typename I::M over = I::ge(r, I::set1(l)), under = I::le(r, I::set1(-1.0f));
  q = I::select(over, I::add(q, I::set1(1.0f)), I::select(under, I::sub(q, I::set1(1.0f)), q));
  r = I::select(over, I::sub(r, I::set1(l)), I::select(under, I::add(r, I::set1(l)), r));
  return {q, r};
}

// The layout's element rule (block_sparse.h, sparse_rule_allows) on SIMD lanes.
template <class I>
typename I::M rule_pairs(const SparseElementRule& rule, typename I::V row_pos, typename I::V key_pos) {
  const float l = static_cast<float>(rule.period);
  if (rule.kind == SparseElementRule::Kind::Strided) {
    const typename I::V diff = I::sub(row_pos, key_pos);
    const typename I::M near = I::le(I::abs(diff), I::set1(l - 1.0f));
    return I::mor(near, I::eq(div_mod<I>(diff, l).second, I::zero()));
  }
  const auto [row_group, row_rem] = div_mod<I>(row_pos, l);
  const auto [key_group, key_rem] = div_mod<I>(key_pos, l);
  (void)row_rem;
  return I::mor(I::eq(row_group, key_group), I::ge(key_rem, I::set1(l - static_cast<float>(rule.summary))));
}

// The visibility rule of attention.h on a vector of (row, key) pairs, written
// once for every kernel and ISA (the scalar one included): positions as floats,
// exact because lengths are at most 2^24 and window bounds below the longest
// length (larger ones are dropped by the front door). row_global / key_global:
// the row's / key's position is a global token; key_usable: the key is in range
// and not padded.
template <class I>
typename I::M visible_pairs(const AttentionProblem& p, typename I::V row_pos, typename I::V key_pos,
                            typename I::M row_global, typename I::M key_global, typename I::M key_usable) {
  typename I::M in_window = I::mall(true);
  if (p.window_left >= 0)
    in_window = I::mand(in_window, I::ge(key_pos, I::sub(row_pos, I::set1(static_cast<float>(p.window_left)))));
  if (p.window_right >= 0)
    in_window = I::mand(in_window, I::le(key_pos, I::add(row_pos, I::set1(static_cast<float>(p.window_right)))));
  if (!p.global_tokens.empty()) in_window = I::mor(in_window, I::mor(row_global, key_global));
  typename I::M visible = I::mand(in_window, key_usable);
  if (p.causal) visible = I::mand(visible, I::le(key_pos, row_pos));
  if (p.layout != nullptr && p.layout->rule.kind != SparseElementRule::Kind::None)
    visible = I::mand(visible, rule_pairs<I>(p.layout->rule, row_pos, key_pos));
  return visible;
}

}  // namespace mf::MF_ISA_NS::flash
