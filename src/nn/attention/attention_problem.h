// The plain parameter block every attention kernel (dense, flash, decode)
// works from: element offsets and strides for each batch entry, so that
// [B, H, L, D] tensors and varlen packed [total, H, D] tensors are one case.
// Built and validated by the front door (attention.cpp); kernels trust it.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "nn/attention/block_sparse.h"
#include "nn/attention/flash_attention.h"

namespace mf {

struct AttentionProblem {
  std::int64_t batch = 0, hq = 0, hkv = 0, d = 0;
  // Per batch entry b: rows of q/out/dout (q_len) and of k/v (k_len); the
  // element offset of row 0, head 0 of q/dq (q_off), of k/dk (k_off), and of
  // lse (lse_off); v/dv and out/dout: v_off and o_off below.
  std::vector<std::int64_t> q_len, k_len, q_off, k_off, lse_off;
  // Strides in elements, shared by all batch entries. q and dq use the q
  // strides; k and dk the k strides; the last dim is unit-stride.
  std::int64_t q_head_stride = 0, q_row_stride = 0;
  std::int64_t k_head_stride = 0, k_row_stride = 0;
  std::int64_t lse_head_stride = 0;  // lse rows are unit-stride
  // The value / output head dimension (DeepSeek MLA: 128 against a q/k head
  // dim of 192) and its layout: v and dv use v_off and the v strides; out and
  // dout use o_off and the o strides. The front door sets dv = d and the k / q
  // layouts when V has K's head dimension.
  std::int64_t dv = 0;
  std::vector<std::int64_t> v_off, o_off;
  std::int64_t v_head_stride = 0, v_row_stride = 0;
  std::int64_t o_head_stride = 0, o_row_stride = 0;

  float scale = 1.0f;
  bool causal = false;
  std::int64_t window_left = -1, window_right = -1;  // < 0: unbounded
  std::vector<std::int64_t> global_tokens;           // sorted, unique
  std::vector<float> alibi_slopes;                   // [hq], or empty for no ALiBi
  float dropout_p = 0.0f;
  std::uint64_t dropout_seed = 0;
  const std::int32_t* key_mask = nullptr;  // [batch, key_mask_stride] or null
  std::int64_t key_mask_stride = 0;
  FlashTiles tiles;  // the flash kernels' tile sizes (the dense reference ignores them)
  const BlockLayout* layout = nullptr;  // block-sparse layout (block_sparse.h), or null

  std::int64_t group() const { return hq / hkv; }  // query heads per KV head
  std::int64_t shift(std::int64_t b) const { return k_len[b] - q_len[b]; }  // i' = i + shift
  bool is_global(std::int64_t pos) const {
    for (auto g : global_tokens)
      if (g == pos) return true;
    return false;
  }
};

// Whether row i of batch entry b may see key j (see attention.h for the rule).
inline bool attention_visible(const AttentionProblem& p, std::int64_t b, std::int64_t i, std::int64_t j) {
  const std::int64_t ip = i + p.shift(b);
  if (p.causal && j > ip) return false;
  if (p.key_mask != nullptr && p.key_mask[b * p.key_mask_stride + j] == 0) return false;
  const bool in_window = (p.window_left < 0 || j >= ip - p.window_left) && (p.window_right < 0 || j <= ip + p.window_right);
  return in_window || (!p.global_tokens.empty() && (p.is_global(ip) || p.is_global(j)));
}

// Whether the block-sparse layout lets query head h at absolute position ip
// see key j (its tile is present and its element rule allows the pair).
inline bool attention_layout_visible(const AttentionProblem& p, std::int64_t h, std::int64_t ip, std::int64_t j) {
  if (p.layout == nullptr) return true;
  const BlockLayout& l = *p.layout;
  return l.at(l.heads == 1 ? 0 : h, ip / l.block, j / l.block) && sparse_rule_allows(l.rule, ip, j);
}

// Whether row i of query head h of batch entry b sees at least one key.
inline bool attention_row_sees_a_key(const AttentionProblem& p, std::int64_t b, std::int64_t h, std::int64_t i) {
  const std::int64_t ip = i + p.shift(b);
  const std::int64_t key_end = p.causal ? std::min(p.k_len[b], ip + 1) : p.k_len[b];
  for (std::int64_t j = 0; j < key_end; ++j)
    if (attention_visible(p, b, i, j) && attention_layout_visible(p, h, ip, j)) return true;
  return false;
}

// Window bounds at least as long as the longest sequence cut no key (a row at
// position i' in [-Lq, Lk) reaches every key in [0, Lk)): they are made
// unbounded, so that no kernel adds a bound of up to INT64_MAX to a position.
inline void drop_vacuous_window_bounds(AttentionProblem& p) {
  std::int64_t longest = 0;
  for (std::int64_t b = 0; b < p.batch; ++b) longest = std::max({longest, p.q_len[b], p.k_len[b]});
  if (p.window_left >= longest) p.window_left = -1;
  if (p.window_right >= longest) p.window_right = -1;
}

// Score bias added to scale * q.k (ALiBi), for query head h.
inline float attention_bias(const AttentionProblem& p, std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) {
  if (p.alibi_slopes.empty()) return 0.0f;
  const std::int64_t dist = i + p.shift(b) - j;
  return -p.alibi_slopes[h] * static_cast<float>(dist < 0 ? -dist : dist);
}

// Dropout keep decision for P[b, h, i, j]: Philox on (seed, stream = b*hq + h,
// counter = i * k_len + j), kept iff uniform >= p. Identical in forward and
// backward, and in every implementation.
inline bool attention_dropout_keep(const AttentionProblem& p, std::int64_t b, std::int64_t h, std::int64_t i,
                                   std::int64_t j) {
  if (p.dropout_p <= 0.0f) return true;
  return rng_uniform(p.dropout_seed, static_cast<std::uint64_t>(b * p.hq + h),
                     static_cast<std::uint64_t>(i * p.k_len[b] + j)) >= p.dropout_p;
}

// Kernels: pointers are the bases that the offsets in `p` index.
void dense_attention_forward(const AttentionProblem& p, const float* q, const float* k, const float* v, float* out,
                             float* lse);
void dense_attention_backward(const AttentionProblem& p, const float* q, const float* k, const float* v,
                              const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv);
void flash_attention_forward(const AttentionProblem& p, const float* q, const float* k, const float* v, float* out,
                             float* lse);
// The flash forward's plan for one batch entry: the number of key chunks
// (tiles.split_chunk keys each) of its split-KV (flash-decoding) path, taken
// when the entry's query rows fit one tile and it has at least
// tiles.split_min_keys keys; 0 when the keys are walked in one pass. (A call
// whose partial results would exceed 256 MiB takes no split at all.)
std::int64_t flash_forward_key_splits(const FlashTiles& tiles, std::int64_t group, std::int64_t q_len,
                                      std::int64_t k_len);
void flash_attention_backward(const AttentionProblem& p, const float* q, const float* k, const float* v,
                              const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv);

}  // namespace mf
