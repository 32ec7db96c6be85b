// The mixture-of-experts channel mixer "moe" (config "ffn": "moe", options
// under "moe" with Hugging Face's names; see moe_mixer.cpp for the table).
#pragma once
#include "nn/mixer/channel_mixer.h"

namespace mf {

ChannelMixerEntry moe_mixer_entry();

}  // namespace mf
