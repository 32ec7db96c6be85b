// Block-sparse attention as a token mixer ("sparse_attention"): the exact
// attention mixer (same self_attn.{q,k,v,o}_proj parameters and checkpoint
// names, RoPE/ALiBi, GQA, KV cache) whose every call carries a block layout
// (block_layout.h): Sparse Transformer strided or fixed (Child et al. 2019),
// BigBird (Zaheer et al. 2020), Longformer (Beltagy et al. 2020) or a user
// map from .npy. The flash kernels skip absent tiles.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "nn/attention/block_sparse.h"
#include "nn/mixer/token_mixer.h"

namespace mf {

TokenMixerEntry sparse_attention_mixer_entry();

// The layout a sparse_attention mixer with options `options` (parsed, every
// field set) uses for calls of `key_len` keys, causal or not, with `num_heads`
// query heads (bigbird per-head maps). Exposed for tests and benchmarks.
std::shared_ptr<const BlockLayout> sparse_attention_layout(const nlohmann::json& options, std::int64_t key_len,
                                                           bool causal, std::int64_t num_heads);

}  // namespace mf
