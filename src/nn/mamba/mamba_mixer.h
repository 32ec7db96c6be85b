// Mamba (selective state space) as a token mixer ("mamba"): decoder only, with
// a generation state (rolling conv inputs and the SSM state).
#pragma once
#include "nn/mixer/token_mixer.h"

namespace mf {

TokenMixerEntry mamba_mixer_entry();

}  // namespace mf
