// The registry of token and channel mixers: one entry per technique, listed
// in one table (src/nn/mixer/mixer_registry.cpp). Lookups by name fail with
// the list of known names.
#pragma once
#include <string>
#include <vector>

#include "nn/mixer/channel_mixer.h"
#include "nn/mixer/token_mixer.h"

namespace mf {

const std::vector<TokenMixerEntry>& token_mixer_registry();
const std::vector<ChannelMixerEntry>& channel_mixer_registry();

// Null when absent.
const TokenMixerEntry* find_token_mixer(const std::string& name);
const ChannelMixerEntry* find_channel_mixer(const std::string& name);
// Throw "<prefix>unknown token mixer "x" (known: ...)".
const TokenMixerEntry& token_mixer_entry(const std::string& name, const std::string& error_prefix = "[mixer] ");
const ChannelMixerEntry& channel_mixer_entry(const std::string& name, const std::string& error_prefix = "[mixer] ");
std::string token_mixer_names();    // "full_attention", "sliding_attention", ...
std::string channel_mixer_names();

// "causal, bidirectional, generation, padding" (what the mixer supports).
std::string capabilities_text(const MixerCapabilities& c);

}  // namespace mf
