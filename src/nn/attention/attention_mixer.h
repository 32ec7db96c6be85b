// Exact self-attention as a token mixer (src/nn/mixer/token_mixer.h):
// "full_attention" and "sliding_attention" (Hugging Face's layer_types
// names), the latter with the model's sliding_window. Causal or
// bidirectional, key padding, and generation through a per-layer KV cache
// (full, or a mirrored rolling window of W slots).
#pragma once
#include "nn/mixer/token_mixer.h"

namespace mf {

TokenMixerEntry full_attention_mixer_entry();
TokenMixerEntry sliding_attention_mixer_entry();

}  // namespace mf
