// Reformer LSH self-attention as a token mixer ("lsh_attention").
#pragma once
#include "nn/mixer/token_mixer.h"

namespace mf {

TokenMixerEntry lsh_attention_mixer_entry();

}  // namespace mf
