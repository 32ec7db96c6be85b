// FNet as a token mixer ("fnet"): no parameters, encoder only.
#pragma once
#include "nn/mixer/token_mixer.h"

namespace mf {

TokenMixerEntry fnet_mixer_entry();

}  // namespace mf
