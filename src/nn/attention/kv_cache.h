// KV cache for autoregressive generation (the KvCacheHook of
// src/nn/attention/self_attention.h): per layer, K and V preallocated once as
// [B, Hkv, rows, D]. Without a sliding window, rows = capacity and position t
// lives in row t; the attention reads the first past + L rows as a view.
// With a window W, a rolling buffer of W slots (Mistral) keeps the last W
// positions; each slot is stored twice (rows t % W and t % W + W, so 2W rows),
// which makes any W consecutive positions one contiguous, position-ordered
// view: a decode step never copies the cache.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "nn/attention/self_attention.h"

namespace mf {

class KvCache : public KvCacheHook {
 public:
  KvCache(std::int64_t num_layers, std::int64_t batch, std::int64_t num_kv_heads, std::int64_t head_dim,
          std::int64_t sliding_window, std::int64_t capacity, bool copy_out = false);

  std::int64_t past_length() const override { return past_; }
  // k, v: [B, Hkv, L, D] of positions past .. past + L - 1 -> the keys/values
  // those queries attend to, [B, Hkv, Lk, D], in position order, ending with
  // this call's L. Views of the storage, except for a chunk of L > 1 tokens
  // after earlier ones under a window (a packed copy of the W - 1 cached
  // positions and the L new ones). Every layer must be extended once per call,
  // with the same L; past_length() advances when the last layer has been.
  std::pair<Tensor, Tensor> extend(std::int64_t layer, const Tensor& k, const Tensor& v) override;

  // Throws a clear error unless `new_tokens` more positions fit.
  void check_room(std::int64_t new_tokens, const char* what = "the next call") const;
  void reset();  // forget every position (storage is kept)

  std::int64_t capacity() const { return capacity_; }
  std::int64_t remaining() const { return capacity_ - past_; }
  std::int64_t sliding_window() const { return window_; }  // 0: none
  std::int64_t num_layers() const { return static_cast<std::int64_t>(k_.size()); }
  std::int64_t storage_rows() const { return rows_; }  // capacity, or 2W with a window
  std::int64_t bytes() const;                          // K and V storage of every layer
  // The storage of one layer, [B, Hkv, storage_rows(), D] (tests, benchmarks).
  const Tensor& layer_keys(std::int64_t layer) const { return k_.at(static_cast<std::size_t>(layer)); }
  const Tensor& layer_values(std::int64_t layer) const { return v_.at(static_cast<std::size_t>(layer)); }

 private:
  void check_layer_input(std::int64_t layer, const Tensor& k, const Tensor& v) const;
  // Copies rows [from, from + n) of src (this call's [B, Hkv, L, D]) to
  // positions pos .. pos + n - 1 of layer `layer`.
  void write_positions(std::int64_t layer, const Tensor& k, const Tensor& v, std::int64_t from, std::int64_t n,
                       std::int64_t pos);
  // The stored positions [first, last) of a layer as views (last - first <= W with a window).
  std::pair<Tensor, Tensor> view_positions(std::int64_t layer, std::int64_t first, std::int64_t last) const;
  std::pair<Tensor, Tensor> out(Tensor k, Tensor v) const;

  std::int64_t batch_, kv_heads_, head_dim_, window_, capacity_, rows_;
  bool copy_out_;
  std::vector<Tensor> k_, v_;  // per layer [B, Hkv, rows, D]
  std::int64_t past_ = 0;
  std::int64_t call_len_ = 0;       // L of the call in progress
  std::int64_t layers_done_ = 0;    // layers extended in the call in progress
};

}  // namespace mf
