// Multi-scale retention (RetNet) as a token mixer ("retention"): causal,
// generation through the recurrent state (constant time and memory per token).
#pragma once
#include "nn/mixer/token_mixer.h"

namespace mf {

TokenMixerEntry retention_mixer_entry();

}  // namespace mf
