// Block layouts for block-sparse attention (the BlockLayout of
// src/nn/attention/block_sparse.h): which (block x block) tiles of the score
// matrix exist, for the patterns of
//   - Child et al. 2019 (Sparse Transformer), strided and fixed, defined per
//     element: the layout holds every tile that contains a visible element and
//     the layout's element rule cuts inside them (exact at element level);
//   - Zaheer et al. 2020 (BigBird): window, global and random blocks, defined
//     per tile (exact: no element rule);
//   - Beltagy et al. 2020 (Longformer): window + global tokens, defined per
//     element by the exact kernel's own window and global-token masks; the
//     layout holds every tile that contains a visible element, so a call with
//     the layout and the same window/global options gives the same attention;
//   - a user's map read from .npy.
// Rows of a layout are absolute query positions (key coordinates). Every
// causal builder is prefix-consistent: the map for n blocks is the top-left
// corner of the map for more blocks (generation reuses it).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/attention/block_sparse.h"

namespace mf {

// Number of blocks that cover `length` positions.
std::int64_t layout_blocks(std::int64_t length, std::int64_t block);

// Strided (Child et al.): i' sees j iff |i' - j| < stride or (i' - j) mod stride == 0
// (and j <= i' when causal). Tiles: those holding a visible pair. Element rule: Strided.
BlockLayout strided_layout(std::int64_t length, std::int64_t block, std::int64_t stride, bool causal);

// Fixed (Child et al.): i' sees j iff floor(i' / l) == floor(j / l) (its own
// l-block) or j mod l >= l - c (the last c "summary" positions of every
// l-block; causal: only those at j <= i', so of earlier blocks and its own).
// Tiles: those holding a visible pair. Element rule: Fixed.
BlockLayout fixed_layout(std::int64_t length, std::int64_t block, std::int64_t period, std::int64_t summary,
                         bool causal);

// BigBird (Zaheer et al., ITC): tile row R sees column blocks
//   window: |R - C| <= window_blocks (causal: R - window_blocks <= C <= R);
//   global: C < global_blocks, and rows R < global_blocks see every column (causal: C <= R);
//   random: min(random_blocks, #eligible) distinct blocks among the columns not
//     already present (causal: C < R), drawn by a partial Fisher-Yates shuffle
//     from Philox(seed, stream = head, counter = R * 2^20 + k).
// heads = 1: one map for all heads; heads = H: a map per query head (stream = head).
BlockLayout bigbird_layout(std::int64_t length, std::int64_t block, std::int64_t window_blocks,
                           std::int64_t global_blocks, std::int64_t random_blocks, std::int64_t heads,
                           std::uint64_t seed, bool causal);

// Longformer (Beltagy et al.): tiles holding a pair visible under the exact
// kernel's window [i' - window_left, i' + window_right] (a bound < 0: unbounded)
// or global tokens (a global position sees and is seen by every position),
// and j <= i' when causal. Element rule: none; the call must pass the same
// window and global tokens in its AttentionOptions.
BlockLayout longformer_layout(std::int64_t length, std::int64_t block, std::int64_t window_left,
                              std::int64_t window_right, const std::vector<std::int64_t>& global_tokens,
                              bool causal);

// A user map: int32 or int64 (bool/uint8 .npy files load as int32), [R, C] (shared)
// or [H, R, C] (per head); nonzero = present. `what` names the source in errors.
BlockLayout layout_from_tensor(const Tensor& map, std::int64_t block, const std::string& what);
BlockLayout layout_from_npy(const std::string& path, std::int64_t block);

// The layout as a dense element mask for Lq query rows at positions
// Lk - Lq .. Lk - 1 and Lk keys: int32 [heads, Lq, Lk], 1 where the tile is
// present and the element rule allows the pair (tests and the reference).
Tensor layout_element_mask(const BlockLayout& layout, std::int64_t q_len, std::int64_t k_len);

}  // namespace mf
