// MixtralConfig <-> ModelConfig (see mixtral_config.h): the Llama fields go
// through the general parser (model_type "modformer" with a "moe" channel
// mixer), the MoE fields into the "moe" options.
#include "model/mixtral_config.h"

#include <set>

#include "core/error.h"
#include "model/config_fields.h"

namespace mf {

using json = nlohmann::json;

namespace {

// MixtralConfig fields read as the general parser reads them.
const std::set<std::string> kLlamaFields = {
    "vocab_size",       "hidden_size",    "intermediate_size",   "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim",    "hidden_act",          "max_position_embeddings", "initializer_range",
    "rms_norm_eps",     "use_cache",      "pad_token_id",        "bos_token_id",      "eos_token_id",
    "tie_word_embeddings", "rope_theta",  "sliding_window",      "attention_dropout", "architectures",
    "torch_dtype",      "transformers_version", "_name_or_path", "gradient_checkpointing", "attention_impl"};

}  // namespace

ModelConfig mixtral_config_from_json(const json& j, const std::string& s) {
  json g = json::object();
  // MixtralConfig's defaults where they differ from ours.
  g["rms_norm_eps"] = 1e-5;
  g["rope_theta"] = 1e6;
  g["max_position_embeddings"] = 4096 * 32;
  g["num_key_value_heads"] = 8;
  json moe = {{"num_local_experts", 8}, {"num_experts_per_tok", 2}, {"param_names", "block_sparse_moe"}};
  double aux_coef = 0.001;
  bool router_logits = false;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& f = it.key();
    const json& v = it.value();
    if (f == "model_type") continue;
    if (kLlamaFields.count(f)) {
      g[f] = v;
    } else if (f == "num_local_experts") {
      moe[f] = get_int(v, s, f, 1, 1 << 16);
    } else if (f == "num_experts_per_tok") {
      moe[f] = get_int(v, s, f, 1, 1 << 16);
    } else if (f == "router_aux_loss_coef") {
      aux_coef = get_double(v, s, f);
      if (aux_coef < 0) field_error(s, f, "must be >= 0");
    } else if (f == "output_router_logits") {
      router_logits = get_bool(v, s, f);
    } else if (f == "router_jitter_noise") {
      if (get_double(v, s, f) != 0.0)
        field_error(s, f, "only 0 is supported (Mixtral's multiplicative jitter of the router input is not "
                          "implemented; router \"noisy_topk\" under model_type \"modformer\" offers Shazeer's noise)");
    } else if (f == "router_z_loss_coef" || f == "capacity_factor") {  // ours, beyond MixtralConfig
      moe[f] = get_double(v, s, f);
    } else {
      field_error(s, f,
                  "unknown field for model_type \"mixtral\" (known: MixtralConfig's vocab_size, hidden_size, "
                  "intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, "
                  "hidden_act, max_position_embeddings, initializer_range, rms_norm_eps, rope_theta, sliding_window, "
                  "tie_word_embeddings, num_local_experts, num_experts_per_tok, output_router_logits, "
                  "router_aux_loss_coef, router_jitter_noise, token ids, use_cache; and our router_z_loss_coef, "
                  "capacity_factor, gradient_checkpointing, attention_impl)");
    }
  }
  moe["router_aux_loss_coef"] = router_logits ? aux_coef : 0.0;
  g["model_type"] = "modformer";
  g["ffn"] = "moe";
  g["moe"] = moe;
  if (g.contains("architectures")) g.erase("architectures");
  ModelConfig c = config_from_json(g, s);
  c.model_type = "mixtral";
  validate_config(c, s);
  return c;
}

json mixtral_config_to_json(const ModelConfig& c) {
  const json o = c.options_of("moe");
  const std::int64_t routed = o.at("n_routed_experts"), local = o.at("num_local_experts");
  const double aux = o.at("router_aux_loss_coef");
  json j;
  j["architectures"] = json::array({"MixtralForCausalLM"});
  j["model_type"] = "mixtral";
  ModelConfig generic = c;  // the Llama fields as the general writer gives them
  generic.model_type = "modformer";
  const json base = config_to_json(generic);
  for (const char* f : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
                        "rms_norm_eps", "rope_theta", "sliding_window", "tie_word_embeddings", "gradient_checkpointing",
                        "attention_impl", "torch_dtype"})
    j[f] = base.at(f);
  j["num_local_experts"] = routed > 0 ? routed : local > 0 ? local : 8;
  j["num_experts_per_tok"] = o.at("num_experts_per_tok");
  j["output_router_logits"] = aux > 0;
  j["router_aux_loss_coef"] = aux > 0 ? aux : 0.001;  // transformers' default; unused without router logits
  j["router_jitter_noise"] = 0.0;
  if (o.at("router_z_loss_coef").get<double>() > 0) j["router_z_loss_coef"] = o.at("router_z_loss_coef");
  if (o.at("capacity_factor").get<double>() > 0) j["capacity_factor"] = o.at("capacity_factor");
  return j;
}

void validate_mixtral_config(const ModelConfig& c, const std::string& s) {
  auto need = [&](bool ok, const char* field, const std::string& what) {
    if (!ok) field_error(s, field, "model_type \"mixtral\" requires " + what + " (use model_type \"modformer\" otherwise)");
  };
  need(c.ffn == FfnKind::MoE, "ffn", "the \"moe\" channel mixer");
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string m = c.layer_mixer(i);
    need(m == "full_attention" || m == "sliding_attention", c.layer_types.empty() ? "token_mixer" : "layer_types",
         "attention in every layer");
  }
  need(c.norm == NormKind::RMSNorm && c.norm_placement == NormPlacement::Pre, "norm", "RMSNorm pre-norm blocks");
  need(c.position == PositionKind::RoPE, "position", "RoPE (rotate-half)");
  need(c.rope_scaling.type == RopeScalingType::None, "rope_scaling", "no RoPE scaling");
  need(c.hidden_act == Activation::SiLU, "hidden_act", "\"silu\"");
  need(!c.attention_bias && !c.mlp_bias, "attention_bias", "no biases");
  need(c.is_decoder && !c.reversible, "is_decoder", "a decoder of ordinary residual blocks");
  const json o = c.options_of("moe");
  need(o.at("router") == "softmax_topk" && o.at("norm_topk_prob").get<bool>(), "moe.router",
       "the softmax_topk router with norm_topk_prob");
  need(o.at("expert") == "swiglu" && o.at("param_names") == "block_sparse_moe", "moe.expert",
       "SwiGLU experts under Mixtral's names (param_names \"block_sparse_moe\")");
  need(o.at("n_shared_experts").get<std::int64_t>() == 0 && o.at("moe_intermediate_size").get<std::int64_t>() == 0 &&
           o.at("first_k_dense_replace").get<std::int64_t>() == 0 && o.at("routed_scaling_factor").get<double>() == 1.0,
       "moe", "no shared experts, no dense layers, experts intermediate_size wide and no routed scaling");
}

}  // namespace mf
