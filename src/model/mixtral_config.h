// model_type "mixtral": Hugging Face's MixtralConfig (MixtralForCausalLM)
// read into a ModelConfig and written back in Hugging Face's fields. A
// Mixtral model is a Llama model (RMSNorm pre-norm, RoPE, GQA attention,
// optional sliding window) whose channel mixer is the "moe" mixer with the
// softmax_topk router (top-k renormalized) and SwiGLU experts, under
// Mixtral's checkpoint names model.layers.N.block_sparse_moe.gate.weight
// [E, C] and model.layers.N.block_sparse_moe.experts.K.{w1,w2,w3}.weight
// (w1 = gate, w3 = up, w2 = down); every other name is Llama's.
// router_aux_loss_coef trains only with output_router_logits true, as in
// transformers; writing sets output_router_logits = (coefficient > 0).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "model/config.h"

namespace mf {

// Parses a config.json whose model_type is "mixtral" (strictly: unknown
// fields and unsupported values such as a nonzero router_jitter_noise are
// refused by name) and validates it.
ModelConfig mixtral_config_from_json(const nlohmann::json& j, const std::string& source);
nlohmann::json mixtral_config_to_json(const ModelConfig& c);
// The rules a model_type "mixtral" ModelConfig must keep (from validate_config).
void validate_mixtral_config(const ModelConfig& c, const std::string& source);

}  // namespace mf
