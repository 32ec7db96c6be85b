// DeepSeek-V2 Multi-head Latent Attention as a token mixer ("mla"), with the
// latent KV cache (c_KV and the rope key only) for generation.
#pragma once
#include "nn/mixer/token_mixer.h"

namespace mf {

TokenMixerEntry mla_mixer_entry();

}  // namespace mf
