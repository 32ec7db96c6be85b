// model_type "deepseek_v2": Hugging Face's DeepseekV2Config read into a
// ModelConfig and written back in its fields. Every layer's token mixer is
// "mla" (options from q_lora_rank, kv_lora_rank, qk_nope_head_dim,
// qk_rope_head_dim, v_head_dim); blocks are RMSNorm pre-norm with
// Llama's names (model.embed_tokens, model.layers.N.{input_layernorm,
// self_attn.*, post_attention_layernorm, mlp.*}, model.norm, lm_head).
// Dense layers (all layers without n_routed_experts; layers below
// first_k_dense_replace or off the moe_layer_freq grid otherwise) are SwiGLU
// MLPs mlp.{gate,up,down}_proj. MoE layers (n_routed_experts set; layers
// from first_k_dense_replace on; moe_layer_freq must be 1) are the channel
// mixer "moe" with the deepseek router: mlp.gate, mlp.experts.N.*_proj,
// mlp.shared_experts.*_proj; greedy top-k over softmax scores only
// (topk_method "greedy", scoring_func "softmax"); aux_loss_alpha becomes
// router_aux_loss_coef = aux_loss_alpha / num_experts_per_tok (DeepSeek's
// expert-level balance loss in our form), computed over the batch whatever
// seq_aux says.
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
