// Performer (FAVOR+) self-attention as a token mixer ("performer"): causal or
// bidirectional, padding, and generation through a recurrent state.
#pragma once
#include "nn/mixer/token_mixer.h"

namespace mf {

TokenMixerEntry performer_mixer_entry();

}  // namespace mf
