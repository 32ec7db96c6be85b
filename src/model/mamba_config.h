// model_type "mamba": Hugging Face's MambaConfig (MambaForCausalLM) read into
// a ModelConfig and written back in Hugging Face's fields, so that its
// checkpoints load and ours load in transformers. A Mamba model is a stack
// of blocks x + mixer(RMSNorm(x)) with the "mamba" token mixer and no channel
// mixer (ffn "none"), no positions, a final RMSNorm and a tied LM head; its
// checkpoint names are backbone.embeddings, backbone.layers.N.norm,
// backbone.layers.N.mixer.*, backbone.norm_f (src/model/transformer.cpp).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "model/config.h"

namespace mf {

// Parses a config.json whose model_type is "mamba" (strictly: unknown fields
// and unsupported values are refused by name) and validates it.
ModelConfig mamba_config_from_json(const nlohmann::json& j, const std::string& source);
// Hugging Face's fields, plus our max_position_embeddings (the default
// generation capacity) and gradient_checkpointing.
nlohmann::json mamba_config_to_json(const ModelConfig& c);
// The rules a model_type "mamba" ModelConfig must keep (from validate_config).
void validate_mamba_config(const ModelConfig& c, const std::string& source);

}  // namespace mf
