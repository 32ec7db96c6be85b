// Flash-decoding (Dao, Haziza, Massa, Sizov 2023): a few query rows against a
// long KV cache. The keys are cut into fixed-size chunks processed in
// parallel, each giving a partial (O, rowmax, rowsum) that are merged in a
// fixed order, so results do not depend on the thread count. GQA: the query
// heads of a KV group are stacked into one tile, so each cached K/V row is
// read once per group. flash_attention_forward takes this path by itself
// when a problem has one query tile per (batch, KV head) and many keys.
//
// KV cache as seen by a generator. Keys are given in logical order (oldest
// first) as up to two contiguous segments, so a rolling buffer of capacity C
// holding the last n > C tokens is passed without copying as
//   seg[0] = slots [n % C, C), seg[1] = slots [0, n % C)   (kv_ring_segments).
// Positions are relative: query row i sits at logical key index
// (len - lq + i), len = seg[0].len + seg[1].len, so the lq new tokens' own
// K/V must already be written to the cache. With a sliding window of w keys
// to the left, the cache must hold C >= w + lq tokens (the first new query
// still needs its whole window). ALiBi and windows only use distances and
// are exact under a rolling buffer; absolute-position features (global
// tokens, key padding, dropout) are not offered here.
#pragma once
#include <cstdint>

namespace mf {

struct KvCacheSegment {
  const float* k = nullptr;  // row 0 of head 0 of this segment
  const float* v = nullptr;
  std::int64_t len = 0;      // rows (tokens) in this segment
};

struct FlashDecodeArgs {
  std::int64_t hq = 0, hkv = 0, d = 0, lq = 1;  // hq % hkv == 0; d a multiple of 8 in [8, 256]
  const float* q = nullptr;  // q(h, i, :) = q + h * q_head_stride + i * q_row_stride   [hq, lq, d]
  float* out = nullptr;      // same layout as q                                         [hq, lq, d]
  float* lse = nullptr;      // optional, natural log, [hq, lq] contiguous
  std::int64_t q_head_stride = 0, q_row_stride = 0;
  KvCacheSegment seg[2];     // k(h, j, :) = seg.k + h * k_head_stride + j * k_row_stride
  std::int64_t k_head_stride = 0, k_row_stride = 0;
  float scale = 0.0f;        // 0: 1/sqrt(d)
  bool causal = true;        // the new rows see each other causally
  std::int64_t window_left = -1;  // < 0: unbounded
  bool alibi = false;             // slopes of alibi_slopes(hq)
};

// out = softmax(scale q k^T + alibi, masked) v for the lq rows; rows with
// no visible key get 0 (lse = -inf). Throws mf::Error on inconsistent args.
void flash_attention_decode(const FlashDecodeArgs& args);

// The two segments of a rolling buffer [capacity rows] that has seen
// n_tokens tokens in total (slot of token t: t % capacity).
void kv_ring_segments(const float* k, const float* v, std::int64_t capacity, std::int64_t n_tokens,
                      std::int64_t k_row_stride, KvCacheSegment seg[2]);

}  // namespace mf
