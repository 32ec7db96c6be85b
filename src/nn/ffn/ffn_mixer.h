// The feed-forward family as channel mixers (src/nn/mixer/channel_mixer.h):
// "swiglu", "geglu" and "mlp" (the config's "ffn" values), over the FFN front
// door of ffn.h with Llama's checkpoint names mlp.{gate,up,down}_proj.
#pragma once
#include "nn/mixer/channel_mixer.h"

namespace mf {

ChannelMixerEntry swiglu_mixer_entry();
ChannelMixerEntry geglu_mixer_entry();
ChannelMixerEntry mlp_mixer_entry();

}  // namespace mf
