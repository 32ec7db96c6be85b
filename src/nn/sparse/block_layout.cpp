// Block layouts: Sparse Transformer strided and fixed, BigBird, Longformer,
// and user maps from .npy (rules in block_layout.h).
#include "nn/sparse/block_layout.h"

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "core/npy.h"
#include "core/rng.h"
#include "nn/attention/attention.h"

namespace mf {

namespace {

using i64 = std::int64_t;

BlockLayout empty_layout(const char* op, i64 length, i64 block, i64 heads) {
  MF_CHECK(length >= 0 && length <= kMaxAttentionLength, op, " length must be in [0, 2^24], got ", length);
  BlockLayout l;
  l.block = block;
  l.heads = heads;
  MF_CHECK(block >= 16 && block <= 4096 && block % 16 == 0, op, " option 'block' must be a multiple of 16 in [16, 4096], got ",
           block);
  MF_CHECK(heads >= 1 && heads <= 4096, op, " heads must be in [1, 4096], got ", heads);
  l.row_blocks = l.col_blocks = layout_blocks(length, block);
  l.present.assign(static_cast<std::size_t>(heads * l.row_blocks * l.col_blocks), 0);
  return l;
}

std::uint8_t& cell(BlockLayout& l, i64 h, i64 r, i64 c) {
  return l.present[static_cast<std::size_t>((h * l.row_blocks + r) * l.col_blocks + c)];
}

// Differences i' - j over the pairs of tile (r, c) (every value in between occurs),
// clipped to j <= i' when causal; lo > hi: no pair.
std::pair<i64, i64> tile_differences(i64 block, i64 r, i64 c, bool causal) {
  i64 lo = r * block - (c * block + block - 1), hi = r * block + block - 1 - c * block;
  if (causal) lo = std::max<i64>(lo, 0);
  return {lo, hi};
}

}  // namespace

i64 layout_blocks(i64 length, i64 block) { return (length + block - 1) / block; }

BlockLayout strided_layout(i64 length, i64 block, i64 stride, bool causal) {
  constexpr const char* kOp = "[strided_layout]";
  MF_CHECK(stride >= 1 && stride <= kMaxAttentionLength, kOp, " option 'stride' must be in [1, 2^24], got ", stride);
  BlockLayout l = empty_layout(kOp, length, block, 1);
  l.rule = {SparseElementRule::Kind::Strided, stride, 0};
  for (i64 r = 0; r < l.row_blocks; ++r)
    for (i64 c = 0; c < l.col_blocks; ++c) {
      const auto [lo, hi] = tile_differences(block, r, c, causal);
      if (lo > hi) continue;
      const bool near = lo <= stride - 1 && hi >= -(stride - 1);
      const bool multiple = floor_div(hi, stride) * stride >= lo;
      cell(l, 0, r, c) = near || multiple;
    }
  return l;
}

BlockLayout fixed_layout(i64 length, i64 block, i64 period, i64 summary, bool causal) {
  constexpr const char* kOp = "[fixed_layout]";
  MF_CHECK(period >= 1 && period <= kMaxAttentionLength, kOp, " option 'stride' (l) must be in [1, 2^24], got ", period);
  MF_CHECK(summary >= 0 && summary <= period, kOp, " option 'c' must be in [0, l = ", period, "], got ", summary);
  BlockLayout l = empty_layout(kOp, length, block, 1);
  l.rule = {SparseElementRule::Kind::Fixed, period, summary};
  for (i64 r = 0; r < l.row_blocks; ++r) {
    const i64 r0 = r * block, r1 = r0 + block - 1;
    for (i64 c = 0; c < l.col_blocks; ++c) {
      const i64 c0 = c * block, c1 = c0 + block - 1;
      bool any = false;
      // Summary keys: j mod l >= l - c, seen by some row (causal: j <= r1).
      for (i64 j = c0; j <= (causal ? std::min(c1, r1) : c1) && !any; ++j)
        any = floor_mod(j, period) >= period - summary;
      // Own l-block: a group meeting both ranges (causal: with a key at or before a row).
      for (i64 g = floor_div(r0, period); g <= floor_div(r1, period) && !any; ++g) {
        const i64 rows_hi = std::min(r1, g * period + period - 1);
        const i64 keys_lo = std::max(c0, g * period), keys_hi = std::min(c1, g * period + period - 1);
        any = keys_lo <= keys_hi && (!causal || keys_lo <= rows_hi);
      }
      cell(l, 0, r, c) = any;
    }
  }
  return l;
}

BlockLayout bigbird_layout(i64 length, i64 block, i64 window_blocks, i64 global_blocks, i64 random_blocks,
                           i64 heads, std::uint64_t seed, bool causal) {
  constexpr const char* kOp = "[bigbird_layout]";
  MF_CHECK(window_blocks >= 0, kOp, " option 'window' (blocks each side) must be >= 0, got ", window_blocks);
  MF_CHECK(global_blocks >= 0, kOp, " option 'num_global' (blocks) must be >= 0, got ", global_blocks);
  MF_CHECK(random_blocks >= 0 && random_blocks < (i64{1} << 20), kOp,
           " option 'random_blocks' must be in [0, 2^20), got ", random_blocks);
  BlockLayout l = empty_layout(kOp, length, block, heads);
  const i64 nb = l.row_blocks;
  std::vector<i64> eligible;
  for (i64 h = 0; h < heads; ++h)
    for (i64 r = 0; r < nb; ++r) {
      const i64 last = causal ? r : nb - 1;  // the last column block row r may see
      for (i64 c = 0; c <= last; ++c) {
        const bool window = c >= r - window_blocks && c <= r + window_blocks;
        const bool global = c < global_blocks || r < global_blocks;
        cell(l, h, r, c) = window || global;
      }
      eligible.clear();
      for (i64 c = 0; c < (causal ? r : nb); ++c)
        if (cell(l, h, r, c) == 0) eligible.push_back(c);
      const i64 n = static_cast<i64>(eligible.size()), take = std::min(random_blocks, n);
      for (i64 k = 0; k < take; ++k) {  // partial Fisher-Yates: eligible[k] <- a uniform pick of eligible[k..n)
        const float u = rng_uniform(seed, static_cast<std::uint64_t>(h), static_cast<std::uint64_t>((r << 20) + k));
        const i64 pick = k + std::min<i64>(n - k - 1, static_cast<i64>(u * static_cast<float>(n - k)));
        std::swap(eligible[k], eligible[pick]);
        cell(l, h, r, eligible[k]) = 1;
      }
    }
  return l;
}

BlockLayout longformer_layout(i64 length, i64 block, i64 window_left, i64 window_right,
                              const std::vector<i64>& global_tokens, bool causal) {
  constexpr const char* kOp = "[longformer_layout]";
  MF_CHECK(window_left >= -1 && window_right >= -1, kOp, " window bounds must be >= 0 (or -1: unbounded), got ",
           window_left, ", ", window_right);
  BlockLayout l = empty_layout(kOp, length, block, 1);
  std::vector<i64> globals = global_tokens;
  for (i64 g : globals) MF_CHECK(g >= 0 && g < length, kOp, " global token ", g, " is outside [0, ", length, ")");
  std::sort(globals.begin(), globals.end());
  const auto global_in = [&](i64 lo, i64 hi) {  // the first global token in [lo, hi], or -1
    const auto it = std::lower_bound(globals.begin(), globals.end(), lo);
    return it != globals.end() && *it <= hi ? *it : i64{-1};
  };
  for (i64 r = 0; r < l.row_blocks; ++r)
    for (i64 c = 0; c < l.col_blocks; ++c) {
      const i64 r0 = r * block, r1 = r0 + block - 1, c0 = c * block, c1 = c0 + block - 1;
      auto [lo, hi] = tile_differences(block, r, c, causal);
      // Window: -right <= i' - j <= left.
      if (window_left >= 0) hi = std::min(hi, window_left);
      if (window_right >= 0) lo = std::max(lo, -window_right);
      bool any = lo <= hi;
      // A global row sees every key (causal: j <= i'); a global key is seen by every row (causal: i' >= j).
      const i64 g_row = global_in(causal ? std::max(r0, c0) : r0, r1);
      const i64 g_key = global_in(c0, causal ? std::min(c1, r1) : c1);
      any = any || g_row >= 0 || g_key >= 0;
      cell(l, 0, r, c) = any;
    }
  return l;
}

BlockLayout layout_from_tensor(const Tensor& map, i64 block, const std::string& what) {
  const std::string op = "[block_layout] " + what;
  MF_CHECK(map.dtype() == DType::I32 || map.dtype() == DType::I64, op, " must hold integers or booleans but holds ",
           dtype_name(map.dtype()));
  MF_CHECK(map.dim() == 2 || map.dim() == 3, op, " must have shape [R, C] or [H, R, C] (blocks) but has shape ",
           shape_str(map.shape()));
  const i64 heads = map.dim() == 3 ? map.size(0) : 1;
  const i64 rows = map.size(map.dim() - 2), cols = map.size(map.dim() - 1);
  MF_CHECK(heads >= 1 && rows >= 1 && cols >= 1, op, " has an empty dimension: shape ", shape_str(map.shape()));
  MF_CHECK(rows == cols, op, " must be square in its last two dimensions (row and column blocks over the same "
           "positions) but has shape ", shape_str(map.shape()));
  BlockLayout l = empty_layout(op.c_str(), rows * block, block, heads);
  const Tensor c = map.contiguous();
  for (i64 x = 0; x < heads * rows * cols; ++x) {
    const i64 v = map.dtype() == DType::I32 ? c.data<std::int32_t>()[x] : c.data<std::int64_t>()[x];
    l.present[static_cast<std::size_t>(x)] = v != 0;
  }
  return l;
}

BlockLayout layout_from_npy(const std::string& path, i64 block) {
  return layout_from_tensor(load_npy(path), block, "layout file '" + path + "'");
}

Tensor layout_element_mask(const BlockLayout& l, i64 q_len, i64 k_len) {
  Tensor m = Tensor::zeros({l.heads, q_len, k_len}, DType::I32);
  std::int32_t* p = m.data<std::int32_t>();
  for (i64 h = 0; h < l.heads; ++h)
    for (i64 i = 0; i < q_len; ++i) {
      const i64 ip = i + k_len - q_len;
      for (i64 j = 0; j < k_len; ++j)
        p[(h * q_len + i) * k_len + j] = l.at(h, ip / l.block, j / l.block) && sparse_rule_allows(l.rule, ip, j);
    }
  return m;
}

}  // namespace mf
