// model_type "deepseek_v2": Hugging Face's DeepseekV2Config read into a
// ModelConfig and written back in its fields. Every layer's token mixer is
// "mla" (options from q_lora_rank, kv_lora_rank, qk_nope_head_dim,
// qk_rope_head_dim, v_head_dim); blocks are RMSNorm pre-norm with
// Llama's names (model.embed_tokens, model.layers.N.{input_layernorm,
// self_attn.*, post_attention_layernorm, mlp.*}, model.norm, lm_head).
// Dense layers (all layers without n_routed_experts; layers below
// first_k_dense_replace or off the moe_layer_freq grid otherwise) are SwiGLU
// MLPs mlp.{gate,up,down}_proj. MoE layers need the channel mixer "moe"
// (options under HF's names: n_shared_experts, n_routed_experts,
// num_experts_per_tok, moe_intermediate_size, routed_scaling_factor,
// topk_method, n_group, topk_group, norm_topk_prob, scoring_func,
// aux_loss_alpha, seq_aux) and per-layer channel mixers in ModelConfig; a
// config with MoE layers is refused by name until both exist.
// rope_scaling keeps DeepSeek's YaRN fields (mscale, mscale_all_dim); its
// original_max_position_embeddings defaults to 4096 as in DeepSeek's
// DeepseekV2YarnRotaryEmbedding.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"

namespace mf {

ModelConfig deepseek_v2_config_from_json(const nlohmann::json& j, const std::string& source);
nlohmann::json deepseek_v2_config_to_json(const ModelConfig& c);
void validate_deepseek_v2_config(const ModelConfig& c, const std::string& source);

// HF's rule for which layers are MoE: n_routed_experts set, layer >= first_k_dense_replace
// and layer % moe_layer_freq == 0.
std::vector<bool> deepseek_v2_moe_layers(std::int64_t num_layers, bool has_routed_experts,
                                         std::int64_t first_k_dense_replace, std::int64_t moe_layer_freq);

}  // namespace mf
