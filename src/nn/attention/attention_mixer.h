// Exact self-attention as a token mixer (src/nn/mixer/token_mixer.h):
// "full_attention" and "sliding_attention" (Hugging Face's layer_types
// names), the latter with the model's sliding_window. Causal or
// bidirectional, key padding, and generation through a per-layer KV cache
// (full, or a mirrored rolling window of W slots).
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "nn/mixer/token_mixer.h"

namespace mf {

TokenMixerEntry full_attention_mixer_entry();
TokenMixerEntry sliding_attention_mixer_entry();

// The q, k, v, o projections of an attention-like mixer under the attention
// mixer's checkpoint names, self_attn.{q,k,v,o}_proj.weight ([Hq*D, C],
// [Hkv*D, C] twice, [C, Hq*D]; normal init, weight decay) and, with
// attention_bias, their .bias (zeros, no decay), asked from the store in
// that order. Each slot receives its parameter (bias slots stay untouched
// without attention_bias).
struct AttentionProjectionSlots {
  Parameter **q, **k, **v, **o;
  Parameter **q_bias, **k_bias, **v_bias, **o_bias;
};
void add_attention_projections(ParamStore& store, const MixerContext& ctx, const AttentionProjectionSlots& slots);
// The full-attention mixer (its self_attn.* parameters, KV cache and
// capabilities) under another name, with extra options for each call given
// its key length: the block-sparse mixer (src/nn/sparse/) is one.
std::unique_ptr<TokenMixer> make_attention_mixer(
    const std::string& name, const MixerContext& ctx, ParamStore& store,
    std::function<void(AttentionOptions&, std::int64_t key_len)> adjust_options);

}  // namespace mf
