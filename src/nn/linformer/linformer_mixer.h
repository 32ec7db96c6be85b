// Linformer self-attention as a token mixer ("linformer"): encoder only.
#pragma once
#include "nn/mixer/token_mixer.h"

namespace mf {

TokenMixerEntry linformer_mixer_entry();

}  // namespace mf
