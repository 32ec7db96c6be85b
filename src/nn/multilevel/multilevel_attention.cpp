// Multi-level attention core (multilevel_attention.h): the levels' rule and
// the fast kernel, forward and backward. Work is split over (sequence, KV
// head); within one, the query heads of the group and tiles of kTileRows
// query rows run in order, so every gradient is summed in a fixed order
// whatever the thread count. For a tile the union of its rows' ranges at each
// level is one contiguous run of keys (the ranges move monotonically with
// i), so the scores of a tile are a few GEMMs (tile x run) through the
// project's GEMM; the entries outside a row's own ranges are masked.
#include "nn/multilevel/multilevel_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "core/error.h"
#include "kernels/gemm.h"

namespace mf {

namespace {

constexpr const char* kOp = "[multilevel_attention]";
// Query rows per tile: large enough that the per-level GEMMs are not tiny,
// small enough that the union of the tile's windows stays close to one row's
// (the tile adds kTileRows / p_l keys at level l).
constexpr std::int64_t kTileRows = 32;

std::int64_t floor_to(std::int64_t x, std::int64_t m) { return x / m * m; }
std::int64_t ceil_to(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

}  // namespace

void multilevel_check_geometry(const MultilevelGeometry& g) {
  MF_CHECK(g.window >= 1, kOp, " option 'window' (w_0) must be >= 1 but is ", g.window);
  MF_CHECK(!g.pool_sizes.empty(), kOp, " option 'pool_sizes' must list at least one pooling factor (p_1, ...)");
  MF_CHECK(g.level_windows.size() == g.pool_sizes.size(), kOp, " option 'level_windows' has ",
           g.level_windows.size(), " entries but 'pool_sizes' has ", g.pool_sizes.size(),
           " (one window, in blocks, per pooled level)");
  MF_CHECK(g.pool_sizes[0] >= 2, kOp, " option 'pool_sizes': p_1 must be >= 2 but is ", g.pool_sizes[0]);
  for (std::size_t l = 1; l < g.pool_sizes.size(); ++l)
    MF_CHECK(g.pool_sizes[l] > g.pool_sizes[l - 1] && g.pool_sizes[l] % g.pool_sizes[l - 1] == 0, kOp,
             " option 'pool_sizes': each factor must be a larger multiple of the previous one (nested blocks), but ",
             g.pool_sizes[l], " follows ", g.pool_sizes[l - 1]);
  for (std::size_t l = 0; l < g.level_windows.size(); ++l) {
    const bool last = l + 1 == g.level_windows.size();
    MF_CHECK(g.level_windows[l] >= (last ? 0 : 1), kOp, " option 'level_windows': level ", l + 1, " has ",
             g.level_windows[l], " blocks; each level needs >= 1 (only the coarsest may be 0 = unbounded)");
  }
}

void multilevel_ranges(MultilevelRanges& r, const MultilevelGeometry& g, std::int64_t i, std::int64_t seq_len,
                       bool causal) {
  const std::int64_t n = g.levels();
  r.left.resize(n + 1);
  r.right.resize(n + 1);
  // Left: level 0 reaches back w_0 positions, then to the start of its p_1-block.
  std::int64_t lo = floor_to(std::max<std::int64_t>(0, i - g.window + 1), g.pool_sizes[0]);
  r.left[0] = {lo, i + 1};
  for (std::int64_t l = 1; l <= n; ++l) {
    const std::int64_t ratio = g.unit(l) / g.unit(l - 1);
    const std::int64_t hi = lo / ratio;  // lo is a multiple of ratio
    const std::int64_t w = g.level_windows[l - 1];
    lo = w == 0 ? 0 : std::max<std::int64_t>(0, hi - w);
    if (l < n) lo = floor_to(lo, g.unit(l + 1) / g.unit(l));
    r.left[l] = {lo, hi};
  }
  if (causal) {
    for (auto& x : r.right) x = {0, 0};
    return;
  }
  // Right, mirrored: level 0 the W - 1 positions after i, to the end of their
  // p_1-block; each coarser level from there; everything clipped to the sequence.
  std::int64_t end = ceil_to(i + g.window, g.pool_sizes[0]);
  r.right[0] = {i + 1, std::min(end, seq_len)};
  for (std::int64_t l = 1; l <= n; ++l) {
    const std::int64_t ratio = g.unit(l) / g.unit(l - 1);
    const std::int64_t start = end / ratio, blocks = multilevel_blocks(g, l, seq_len);
    const std::int64_t w = g.level_windows[l - 1];
    end = w == 0 ? std::max(start, blocks) : start + w;
    if (l < n) end = ceil_to(end, g.unit(l + 1) / g.unit(l));
    r.right[l] = {std::min(start, blocks), std::min(end, blocks)};
  }
}

void multilevel_core_check(const Tensor& q, const Tensor& k, const Tensor& v, const MultilevelGeometry& g,
                           const MultilevelProblem& pr) {
  multilevel_check_geometry(g);
  MF_CHECK(pr.batch >= 1 && pr.seq_len >= 1, kOp, " batch and seq_len must be >= 1 but are ", pr.batch, " and ",
           pr.seq_len);
  MF_CHECK(pr.num_heads >= 1 && pr.num_kv_heads >= 1 && pr.num_heads % pr.num_kv_heads == 0, kOp,
           " num_heads (", pr.num_heads, ") must be a positive multiple of num_kv_heads (", pr.num_kv_heads, ")");
  MF_CHECK(pr.head_dim >= 1, kOp, " head_dim must be >= 1 but is ", pr.head_dim);
  if (pr.key_padding_mask.defined()) {
    const Tensor& m = pr.key_padding_mask;
    MF_CHECK(m.dtype() == DType::I32, kOp, " key_padding_mask must be int32 (nonzero = token)");
    MF_CHECK(m.is_contiguous() && m.shape() == Shape({pr.batch, pr.seq_len}), kOp,
             " key_padding_mask must be a contiguous [B, L] = [", pr.batch, ", ", pr.seq_len,
             "] tensor but has shape ", shape_str(m.shape()));
  }
  const std::int64_t n = pr.batch * pr.seq_len;
  for (auto [t, name, heads] : {std::tuple{&q, "q", pr.num_heads}, std::tuple{&k, "k", pr.num_kv_heads},
                                std::tuple{&v, "v", pr.num_kv_heads}}) {
    MF_CHECK(t->defined() && t->dtype() == DType::F32 && t->is_contiguous(), kOp, " ", name,
             " must be a contiguous float32 tensor");
    t->check_shape({n, heads, pr.head_dim}, "multilevel_attention", name);
  }
}

namespace {

// One (sequence, KV head): its keys and values at every level. Level 0 rows
// are read in place (stride Hkv*D); pooled levels live in `pooled_*`.
struct LevelKeys {
  std::vector<const float*> k, v;    // level l: row 0
  std::vector<std::int64_t> ld;      // row stride
  std::vector<std::int64_t> offset;  // level l >= 1: first row in the pooled buffers
  std::vector<float> pooled_k, pooled_v;
  std::vector<float> bias;           // per pooled row: log(count) or 0; -inf for a block of padding only
  std::vector<float> inv_count;      // per pooled row: 1 / its real tokens (0 when none)
  std::vector<float> bias0;          // with a padding mask, per position: 0 for a token, -inf for padding
  const std::int32_t* mask = nullptr;  // this sequence's padding mask row, or null
};

// Means over each level's blocks: acc = sum over the block's (real) positions
// in order, then times 1/count (the order generation's running sums use).
void pool_levels(LevelKeys& lk, const MultilevelGeometry& g, const float* k0, const float* v0, std::int64_t ld0,
                 std::int64_t seq_len, std::int64_t d, const std::int32_t* mask) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  lk.mask = mask;
  if (mask) {
    lk.bias0.resize(static_cast<std::size_t>(seq_len));
    for (std::int64_t j = 0; j < seq_len; ++j) lk.bias0[j] = mask[j] ? 0.0f : neg_inf;
  }
  const std::int64_t n = g.levels();
  lk.k.assign(n + 1, nullptr);
  lk.v.assign(n + 1, nullptr);
  lk.ld.assign(n + 1, d);
  lk.offset.assign(n + 1, 0);
  lk.k[0] = k0, lk.v[0] = v0, lk.ld[0] = ld0;
  std::int64_t rows = 0;
  for (std::int64_t l = 1; l <= n; ++l) lk.offset[l] = rows, rows += multilevel_blocks(g, l, seq_len);
  lk.pooled_k.assign(static_cast<std::size_t>(rows * d), 0.0f);
  lk.pooled_v.assign(static_cast<std::size_t>(rows * d), 0.0f);
  lk.bias.assign(static_cast<std::size_t>(rows), 0.0f);
  lk.inv_count.assign(static_cast<std::size_t>(rows), 0.0f);
  for (std::int64_t l = 1; l <= n; ++l) {
    const std::int64_t unit = g.unit(l), blocks = multilevel_blocks(g, l, seq_len);
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t first = b * unit, last = std::min(seq_len, first + unit);
      float* pk = lk.pooled_k.data() + (lk.offset[l] + b) * d;
      float* pv = lk.pooled_v.data() + (lk.offset[l] + b) * d;
      std::int64_t count = 0;
      for (std::int64_t j = first; j < last; ++j) {
        if (mask && !mask[j]) continue;
        ++count;
        const float* kj = k0 + j * ld0;
        const float* vj = v0 + j * ld0;
#pragma omp simd
        for (std::int64_t c = 0; c < d; ++c) pk[c] += kj[c], pv[c] += vj[c];
      }
      const std::int64_t row = lk.offset[l] + b;
      if (count == 0) {  // padding only: never seen (its mean stays 0)
        lk.bias[row] = neg_inf;
        continue;
      }
      const float inv = 1.0f / static_cast<float>(count);
#pragma omp simd
      for (std::int64_t c = 0; c < d; ++c) pk[c] *= inv, pv[c] *= inv;
      lk.bias[row] = g.count_bias ? std::log(static_cast<float>(count)) : 0.0f;
      lk.inv_count[row] = inv;
    }
  }
  for (std::int64_t l = 1; l <= n; ++l) {
    lk.k[l] = lk.pooled_k.data() + lk.offset[l] * d;
    lk.v[l] = lk.pooled_v.data() + lk.offset[l] * d;
  }
}

bool in_range(const MultilevelRange& r, std::int64_t x) { return x >= r.lo && x < r.hi; }

// A tile's rows [i0, i0 + rows): each row's ranges and, per level, the union
// run [first, first + width) at column offset col[l] of the score rows.
struct Tile {
  std::vector<MultilevelRanges> row_ranges;
  std::vector<std::int64_t> first, end, width, col;
  std::int64_t cols = 0;

  void build(const MultilevelGeometry& g, std::int64_t i0, std::int64_t rows, std::int64_t seq_len, bool causal) {
    const std::int64_t levels = g.levels() + 1;
    row_ranges.resize(kTileRows);
    first.assign(levels, std::numeric_limits<std::int64_t>::max());
    end.assign(levels, std::numeric_limits<std::int64_t>::min());
    for (std::int64_t r = 0; r < rows; ++r) {
      multilevel_ranges(row_ranges[r], g, i0 + r, seq_len, causal);
      for (std::int64_t l = 0; l < levels; ++l)
        for (const MultilevelRange* x : {&row_ranges[r].left[l], &row_ranges[r].right[l]})
          if (!x->empty()) first[l] = std::min(first[l], x->lo), end[l] = std::max(end[l], x->hi);
    }
    width.assign(levels, 0);
    col.assign(levels, 0);
    cols = 0;
    for (std::int64_t l = 0; l < levels; ++l) {
      if (end[l] > first[l]) width[l] = end[l] - first[l];
      else first[l] = 0;
      col[l] = cols;
      cols += width[l];
    }
  }
  bool visible(std::int64_t r, std::int64_t level, std::int64_t key) const {
    return in_range(row_ranges[r].left[level], key) || in_range(row_ranges[r].right[level], key);
  }
};

// s[r, :] = scale * q_r . keys (one GEMM per level), then the row's own
// ranges: pooled keys get their bias, keys outside the row's ranges -inf.
void tile_scores(float* s, const Tile& t, const LevelKeys& lk, const float* q, std::int64_t ldq, std::int64_t rows,
                 std::int64_t d, float scale) {
  const std::int64_t levels = static_cast<std::int64_t>(t.width.size());
  for (std::int64_t l = 0; l < levels; ++l)
    if (t.width[l] > 0)
      gemm(Trans::N, Trans::T, rows, t.width[l], d, scale, q, ldq, lk.k[l] + t.first[l] * lk.ld[l], lk.ld[l], 0.0f,
           s + t.col[l], t.cols);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (std::int64_t r = 0; r < rows; ++r) {
    float* row = s + r * t.cols;
    for (std::int64_t l = 0; l < levels; ++l)
      for (std::int64_t c = 0; c < t.width[l]; ++c) {
        const std::int64_t key = t.first[l] + c;
        float& x = row[t.col[l] + c];
        if (!t.visible(r, l, key)) x = neg_inf;
        else if (l > 0) x += lk.bias[lk.offset[l] + key];
        else if (lk.mask) x += lk.bias0[key];
      }
  }
}

}  // namespace

void multilevel_core_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                             const MultilevelGeometry& g, const MultilevelProblem& pr) {
  multilevel_core_check(q, k, v, g, pr);
  const std::int64_t len = pr.seq_len, d = pr.head_dim, hq = pr.num_heads, hkv = pr.num_kv_heads;
  out.check_shape({pr.batch * len, hq, d}, "multilevel_attention", "out");
  lse.check_shape({pr.batch * len, hq}, "multilevel_attention", "lse");
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const float* qp = q.data<float>();
  const float* kp = k.data<float>();
  const float* vp = v.data<float>();
  float* op = out.data<float>();
  float* lp = lse.data<float>();
  const std::int32_t* mask = pr.key_padding_mask.defined() ? pr.key_padding_mask.data<std::int32_t>() : nullptr;
  const std::int64_t group = hq / hkv, tasks = pr.batch * hkv;
#pragma omp parallel
  {
    LevelKeys lk;
    Tile tile;
    std::vector<float> s;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t task = 0; task < tasks; ++task) {
      const std::int64_t b = task / hkv, kh = task % hkv;
      const std::int64_t row0 = b * len;
      pool_levels(lk, g, kp + (row0 * hkv + kh) * d, vp + (row0 * hkv + kh) * d, hkv * d, len, d,
                  mask ? mask + row0 : nullptr);
      for (std::int64_t h = kh * group; h < (kh + 1) * group; ++h)
        for (std::int64_t i0 = 0; i0 < len; i0 += kTileRows) {
          const std::int64_t rows = std::min(kTileRows, len - i0);
          tile.build(g, i0, rows, len, pr.causal);
          s.resize(static_cast<std::size_t>(rows * tile.cols));
          const float* qt = qp + ((row0 + i0) * hq + h) * d;
          tile_scores(s.data(), tile, lk, qt, hq * d, rows, d, scale);
          for (std::int64_t r = 0; r < rows; ++r) {  // softmax; a row that sees no key (padding) outputs 0
            float* row = s.data() + r * tile.cols;
            float row_max = -std::numeric_limits<float>::infinity();
            for (std::int64_t c = 0; c < tile.cols; ++c) row_max = std::max(row_max, row[c]);
            if (row_max == -std::numeric_limits<float>::infinity()) {
              std::fill_n(row, tile.cols, 0.0f);
              lp[(row0 + i0 + r) * hq + h] = row_max;
              continue;
            }
            float sum = 0.0f;
            for (std::int64_t c = 0; c < tile.cols; ++c) sum += row[c] = std::exp(row[c] - row_max);
            const float inv = 1.0f / sum;
            for (std::int64_t c = 0; c < tile.cols; ++c) row[c] *= inv;
            lp[(row0 + i0 + r) * hq + h] = row_max + std::log(sum);
          }
          float* ot = op + ((row0 + i0) * hq + h) * d;
          bool written = false;
          for (std::size_t l = 0; l < tile.width.size(); ++l) {  // out = sum over levels of P_l V_l
            if (tile.width[l] == 0) continue;
            gemm(Trans::N, Trans::N, rows, d, tile.width[l], 1.0f, s.data() + tile.col[l], tile.cols,
                 lk.v[l] + tile.first[l] * lk.ld[l], lk.ld[l], written ? 1.0f : 0.0f, ot, hq * d);
            written = true;
          }
        }
    }
  }
}

void multilevel_core_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                              const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                              const MultilevelGeometry& g, const MultilevelProblem& pr) {
  multilevel_core_check(q, k, v, g, pr);
  const std::int64_t len = pr.seq_len, d = pr.head_dim, hq = pr.num_heads, hkv = pr.num_kv_heads;
  MF_CHECK(out.defined() && lse.defined(), kOp, " backward called without the forward's saved activations");
  for (auto [t, name, heads] : {std::tuple{&dq, "dq", hq}, std::tuple{&dk, "dk", hkv}, std::tuple{&dv, "dv", hkv},
                                std::tuple{&dout, "dout", hq}, std::tuple{&out, "out", hq}}) {
    MF_CHECK(t->is_contiguous() && t->dtype() == DType::F32, kOp, " ", name, " must be a contiguous float32 tensor");
    t->check_shape({pr.batch * len, heads, d}, "multilevel_attention", name);
  }
  lse.check_shape({pr.batch * len, hq}, "multilevel_attention", "lse");
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const float* qp = q.data<float>();
  const float* kp = k.data<float>();
  const float* vp = v.data<float>();
  const float* op = out.data<float>();
  const float* dop = dout.data<float>();
  const float* lp = lse.data<float>();
  float* dqp = dq.data<float>();
  float* dkp = dk.data<float>();
  float* dvp = dv.data<float>();
  const std::int32_t* mask = pr.key_padding_mask.defined() ? pr.key_padding_mask.data<std::int32_t>() : nullptr;
  const std::int64_t group = hq / hkv, tasks = pr.batch * hkv, levels = g.levels() + 1;
#pragma omp parallel
  {
    LevelKeys lk;
    Tile tile;
    std::vector<float> p, ds, dpooled_k, dpooled_v;
    std::vector<float*> dkl(levels), dvl(levels);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t task = 0; task < tasks; ++task) {
      const std::int64_t b = task / hkv, kh = task % hkv;
      const std::int64_t row0 = b * len, kv_base = (row0 * hkv + kh) * d;
      pool_levels(lk, g, kp + kv_base, vp + kv_base, hkv * d, len, d, mask ? mask + row0 : nullptr);
      // Gradients of this (sequence, KV head): level 0 straight into dk/dv (its rows), pooled ones here.
      for (std::int64_t j = 0; j < len; ++j)
        std::fill_n(dkp + kv_base + j * hkv * d, d, 0.0f), std::fill_n(dvp + kv_base + j * hkv * d, d, 0.0f);
      dpooled_k.assign(lk.pooled_k.size(), 0.0f);
      dpooled_v.assign(lk.pooled_v.size(), 0.0f);
      dkl[0] = dkp + kv_base, dvl[0] = dvp + kv_base;
      for (std::int64_t l = 1; l < levels; ++l)
        dkl[l] = dpooled_k.data() + lk.offset[l] * d, dvl[l] = dpooled_v.data() + lk.offset[l] * d;
      for (std::int64_t h = kh * group; h < (kh + 1) * group; ++h)
        for (std::int64_t i0 = 0; i0 < len; i0 += kTileRows) {
          const std::int64_t rows = std::min(kTileRows, len - i0), ldq = hq * d;
          const std::int64_t qoff = ((row0 + i0) * hq + h) * d;
          tile.build(g, i0, rows, len, pr.causal);
          p.resize(static_cast<std::size_t>(rows * tile.cols));
          ds.resize(p.size());
          tile_scores(p.data(), tile, lk, qp + qoff, ldq, rows, d, scale);
          // P = exp(s - lse) (0 where masked); dP = dO V^T per level.
          for (std::int64_t r = 0; r < rows; ++r) {
            const float row_lse = lp[(row0 + i0 + r) * hq + h];
            float* row = p.data() + r * tile.cols;
            if (row_lse == -std::numeric_limits<float>::infinity()) {  // saw no key
              std::fill_n(row, tile.cols, 0.0f);
              continue;
            }
            for (std::int64_t c = 0; c < tile.cols; ++c) row[c] = std::exp(row[c] - row_lse);
          }
          for (std::int64_t l = 0; l < levels; ++l)
            if (tile.width[l] > 0)
              gemm(Trans::N, Trans::T, rows, tile.width[l], d, 1.0f, dop + qoff, ldq,
                   lk.v[l] + tile.first[l] * lk.ld[l], lk.ld[l], 0.0f, ds.data() + tile.col[l], tile.cols);
          // dS = P * (dP - D), D_r = dO_r . O_r
          for (std::int64_t r = 0; r < rows; ++r) {
            const float* o_r = op + qoff + r * ldq;
            const float* do_r = dop + qoff + r * ldq;
            float dsum = 0.0f;
            for (std::int64_t c = 0; c < d; ++c) dsum += o_r[c] * do_r[c];
            const float* prow = p.data() + r * tile.cols;
            float* drow = ds.data() + r * tile.cols;
            for (std::int64_t c = 0; c < tile.cols; ++c) drow[c] = prow[c] * (drow[c] - dsum);
          }
          // dQ = scale dS K; dK += scale dS^T Q; dV += P^T dO (per level's run).
          bool written = false;
          for (std::int64_t l = 0; l < levels; ++l) {
            const std::int64_t w = tile.width[l];
            if (w == 0) continue;
            const std::int64_t at = tile.first[l] * lk.ld[l];
            gemm(Trans::N, Trans::N, rows, d, w, scale, ds.data() + tile.col[l], tile.cols, lk.k[l] + at, lk.ld[l],
                 written ? 1.0f : 0.0f, dqp + qoff, ldq);
            written = true;
            gemm(Trans::T, Trans::N, w, d, rows, scale, ds.data() + tile.col[l], tile.cols, qp + qoff, ldq, 1.0f,
                 dkl[l] + at, lk.ld[l]);
            gemm(Trans::T, Trans::N, w, d, rows, 1.0f, p.data() + tile.col[l], tile.cols, dop + qoff, ldq, 1.0f,
                 dvl[l] + at, lk.ld[l]);
          }
        }
      // Unpool: a pooled key is the mean of its block's real tokens, so each gets 1/count of its gradient.
      for (std::int64_t l = 1; l < levels; ++l) {
        const std::int64_t unit = g.unit(l), blocks = multilevel_blocks(g, l, len);
        for (std::int64_t blk = 0; blk < blocks; ++blk) {
          const std::int64_t first = blk * unit, last = std::min(len, first + unit);
          const float inv = lk.inv_count[lk.offset[l] + blk];
          const float* gk = dkl[l] + blk * d;
          const float* gv = dvl[l] + blk * d;
          for (std::int64_t j = first; j < last; ++j) {
            if (mask && !mask[row0 + j]) continue;
            float* dkj = dkp + kv_base + j * hkv * d;
            float* dvj = dvp + kv_base + j * hkv * d;
#pragma omp simd
            for (std::int64_t c = 0; c < d; ++c) dkj[c] += gk[c] * inv, dvj[c] += gv[c] * inv;
          }
        }
      }
    }
  }
}

}  // namespace mf
