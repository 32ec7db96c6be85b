// Transformer-XL relative attention with segment memory as a token mixer
// ("transformer_xl"): causal, segment memory across calls, generation.
#pragma once
#include "nn/mixer/token_mixer.h"

namespace mf {

TokenMixerEntry transformer_xl_mixer_entry();

}  // namespace mf
