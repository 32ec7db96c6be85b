// Multi-level attention as a token mixer ("multilevel_attention"): a local
// window at full resolution plus mean-pooled coarser levels, one softmax
// (multilevel_attention.h). Not DeepSeek's Multi-head Latent Attention ("mla").
#pragma once
#include <string>

#include "nn/mixer/token_mixer.h"
#include "nn/multilevel/multilevel_attention.h"

namespace mf {

TokenMixerEntry multilevel_attention_mixer_entry();

// The geometry of an options object (window, pool_sizes, level_windows,
// count_bias), its lists parsed strictly ("8,64"); errors name the option.
MultilevelGeometry multilevel_geometry_from_options(const nlohmann::json& options);

}  // namespace mf
