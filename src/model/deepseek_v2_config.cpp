// model_type "deepseek_v2" (see deepseek_v2_config.h): the HF fields are
// checked here, translated into our own fields and parsed by the generic
// reader, so rope_scaling, token ids and the mla options are validated once.
#include "model/deepseek_v2_config.h"

#include <algorithm>
#include <set>

#include "core/error.h"
#include "model/config_fields.h"

namespace mf {

using json = nlohmann::json;

namespace {

constexpr const char* kMlaFields[] = {"q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                                      "v_head_dim"};
// DeepseekV2Config's MoE fields, the "moe" channel mixer's options under the same names.
constexpr const char* kMoeFields[] = {"n_shared_experts", "n_routed_experts", "num_experts_per_tok",
                                      "moe_intermediate_size", "routed_scaling_factor", "topk_method", "n_group",
                                      "topk_group", "norm_topk_prob", "scoring_func", "aux_loss_alpha", "seq_aux"};
// Fields passed to the generic reader unchanged.
constexpr const char* kCommonFields[] = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings",
    "hidden_act", "attention_bias", "initializer_range", "architectures", "torch_dtype", "transformers_version",
    "_name_or_path", "use_cache", "pretraining_tp", "attention_dropout", "bos_token_id", "eos_token_id",
    "pad_token_id"};

template <std::size_t N>
bool in(const char* const (&list)[N], const std::string& key) {
  for (const char* k : list)
    if (key == k) return true;
  return false;
}

}  // namespace

std::vector<bool> deepseek_v2_moe_layers(std::int64_t num_layers, bool has_routed_experts,
                                         std::int64_t first_k_dense_replace, std::int64_t moe_layer_freq) {
  std::vector<bool> moe(static_cast<std::size_t>(num_layers), false);
  if (!has_routed_experts) return moe;
  for (std::int64_t i = 0; i < num_layers; ++i)
    moe[static_cast<std::size_t>(i)] = i >= first_k_dense_replace && i % moe_layer_freq == 0;
  return moe;
}

ModelConfig deepseek_v2_config_from_json(const json& j, const std::string& s) {
  json ours = {{"model_type", "modformer"}, {"token_mixer", "mla"}, {"ffn", "swiglu"}, {"position", "rope"},
               {"norm", "rmsnorm"}, {"norm_placement", "pre"}, {"hidden_act", "silu"}};
  json mla = {{"decode", "auto"}}, moe = json::object();
  std::int64_t first_k_dense_replace = 0, moe_layer_freq = 1;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "model_type" || key == "auto_map") continue;
    if (in(kCommonFields, key)) {
      ours[key] = v;
    } else if (in(kMlaFields, key)) {
      mla[key] = key == "q_lora_rank" && v.is_null() ? json(0) : v;  // HF's null: a plain q_proj
    } else if (in(kMoeFields, key)) {
      moe[key] = v;
    } else if (key == "first_k_dense_replace") {
      first_k_dense_replace = get_int(v, s, key, 0, 1 << 16);
    } else if (key == "moe_layer_freq") {
      moe_layer_freq = get_int(v, s, key, 1, 1 << 16);
    } else if (key == "ep_size") {
      if (get_int(v, s, key, 1, 1 << 20) != 1) field_error(s, key, "only 1 is supported (no expert parallelism)");
    } else if (key == "rope_scaling") {
      json r = v;
      // DeepseekV2YarnRotaryEmbedding's default pretraining length.
      if (r.is_object() && r.value("type", r.value("rope_type", json())) == "yarn" &&
          !r.contains("original_max_position_embeddings"))
        r["original_max_position_embeddings"] = 4096;
      ours[key] = r;
    } else {
      field_error(s, key,
                  "unknown field for model_type \"deepseek_v2\" (known: Hugging Face DeepseekV2Config's vocab_size, "
                  "hidden_size, intermediate_size, moe_intermediate_size, num_hidden_layers, num_attention_heads, "
                  "num_key_value_heads, n_shared_experts, n_routed_experts, ep_size, routed_scaling_factor, "
                  "kv_lora_rank, q_lora_rank, qk_rope_head_dim, v_head_dim, qk_nope_head_dim, topk_method, n_group, "
                  "topk_group, num_experts_per_tok, moe_layer_freq, first_k_dense_replace, norm_topk_prob, "
                  "scoring_func, aux_loss_alpha, seq_aux, hidden_act, max_position_embeddings, initializer_range, "
                  "rms_norm_eps, use_cache, token ids, pretraining_tp, tie_word_embeddings, rope_theta, "
                  "rope_scaling, attention_bias, attention_dropout)");
    }
  }
  for (const char* required : {"kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"})
    if (!mla.contains(required)) field_error(s, required, "missing (required for model_type \"deepseek_v2\")");
  if (!mla.contains("q_lora_rank")) mla["q_lora_rank"] = 0;
  // head_dim (the query/key head dim qk_nope_head_dim + qk_rope_head_dim) is informative only: MLA sizes its heads.
  const std::int64_t rope_dim = get_int(mla["qk_rope_head_dim"], s, "qk_rope_head_dim", 2, 256);
  const std::int64_t q_head_dim = get_int(mla["qk_nope_head_dim"], s, "qk_nope_head_dim", 0, 256) + rope_dim;
  if (rope_dim % 2 != 0) field_error(s, "qk_rope_head_dim", str_cat("must be even (RoPE turns pairs) but is ", rope_dim));
  if (q_head_dim % 8 != 0 || q_head_dim > 256)
    field_error(s, "qk_rope_head_dim",
                str_cat("qk_nope_head_dim + qk_rope_head_dim = ", q_head_dim,
                        " must be a multiple of 8 and at most 256 (the attention kernels' query/key head dim)"));
  ours["head_dim"] = q_head_dim;
  ours["mla"] = mla;
  // MoE layers: the "moe" channel mixer with the deepseek router (its options
  // under HF's names); the first first_k_dense_replace layers are dense MLPs.
  auto moe_value = [&](const char* key) { return moe.contains(key) ? moe.at(key) : json(); };
  const bool routed = !moe_value("n_routed_experts").is_null();
  const std::int64_t num_layers = ours.contains("num_hidden_layers") && ours["num_hidden_layers"].is_number_integer()
                                      ? ours["num_hidden_layers"].get<std::int64_t>()
                                      : 0;
  const std::vector<bool> moe_layers = deepseek_v2_moe_layers(num_layers, routed, first_k_dense_replace, moe_layer_freq);
  if (std::find(moe_layers.begin(), moe_layers.end(), true) != moe_layers.end()) {
    if (moe_layer_freq != 1)
      field_error(s, "moe_layer_freq",
                  str_cat("only 1 is supported (MoE on every layer from first_k_dense_replace on) but is ",
                          moe_layer_freq));
    if (!moe_value("topk_method").is_null() && moe_value("topk_method") != "greedy")
      field_error(s, "topk_method",
                  "only \"greedy\" is supported (group_limited_greedy and noaux_tc routing are not implemented)");
    if (!moe_value("scoring_func").is_null() && moe_value("scoring_func") != "softmax")
      field_error(s, "scoring_func", "only \"softmax\" is supported");
    const std::int64_t k = get_int(moe_value("num_experts_per_tok"), s, "num_experts_per_tok", 1, 1 << 16);
    json o = {{"router", "deepseek"},
              {"expert", "swiglu"},
              {"n_routed_experts", get_int(moe_value("n_routed_experts"), s, "n_routed_experts", 1, 1 << 16)},
              {"num_experts_per_tok", k},
              {"first_k_dense_replace", first_k_dense_replace}};
    if (!moe_value("n_shared_experts").is_null())
      o["n_shared_experts"] = get_int(moe_value("n_shared_experts"), s, "n_shared_experts", 0, 1 << 16);
    if (!moe_value("moe_intermediate_size").is_null()) o["moe_intermediate_size"] = moe_value("moe_intermediate_size");
    if (!moe_value("routed_scaling_factor").is_null()) o["routed_scaling_factor"] = moe_value("routed_scaling_factor");
    if (!moe_value("norm_topk_prob").is_null()) o["norm_topk_prob"] = moe_value("norm_topk_prob");
    // DeepSeek's expert-level balance loss alpha * sum_i (E f_i / k) P_i is
    // ours, alpha' * E * sum_i f_i P_i, with alpha' = alpha / k; seq_aux (per
    // sequence) is computed over the whole batch here.
    if (moe_value("aux_loss_alpha").is_number())
      o["router_aux_loss_coef"] = moe_value("aux_loss_alpha").get<double>() / static_cast<double>(k);
    ours["ffn"] = "moe";
    ours["moe"] = o;
  }
  ModelConfig c = config_from_json(ours, s);
  c.model_type = "deepseek_v2";
  validate_config(c, s);
  return c;
}

json deepseek_v2_config_to_json(const ModelConfig& c) {
  // The fields HF shares with our generic config, as the generic writer spells them.
  ModelConfig generic = c;
  generic.model_type = "modformer";
  const json g = config_to_json(generic);
  json j;
  j["architectures"] = json::array({"DeepseekV2ForCausalLM"});
  j["model_type"] = "deepseek_v2";
  for (const char* f : kCommonFields)
    if (g.contains(f)) j[f] = g.at(f);
  j["rope_scaling"] = g.at("rope_scaling");
  const json o = c.options_of("mla");
  for (const char* f : kMlaFields) j[f] = o.at(f);
  if (o.at("q_lora_rank").get<std::int64_t>() == 0) j["q_lora_rank"] = nullptr;
  j["n_routed_experts"] = nullptr;  // every layer dense (see deepseek_v2_config.h)
  j["n_shared_experts"] = nullptr;
  j["first_k_dense_replace"] = 0;
  j["moe_layer_freq"] = 1;
  if (c.ffn == FfnKind::MoE) {
    const json m = c.options_of("moe");
    const std::int64_t k = m.at("num_experts_per_tok");
    j["n_routed_experts"] = m.at("n_routed_experts");
    j["num_experts_per_tok"] = k;
    if (m.at("n_shared_experts").get<std::int64_t>() > 0) j["n_shared_experts"] = m.at("n_shared_experts");
    j["moe_intermediate_size"] = m.at("moe_intermediate_size");
    j["routed_scaling_factor"] = m.at("routed_scaling_factor");
    j["norm_topk_prob"] = m.at("norm_topk_prob");
    j["first_k_dense_replace"] = m.at("first_k_dense_replace");
    j["topk_method"] = "greedy";
    j["scoring_func"] = "softmax";
    j["aux_loss_alpha"] = m.at("router_aux_loss_coef").get<double>() * static_cast<double>(k);
    j["seq_aux"] = true;
  }
  j["attention_dropout"] = 0.0;
  j["pretraining_tp"] = 1;
  j["torch_dtype"] = "float32";
  return j;
}

void validate_deepseek_v2_config(const ModelConfig& c, const std::string& s) {
  auto need = [&](bool ok, const char* field, const std::string& what) {
    if (!ok)
      field_error(s, field, "model_type \"deepseek_v2\" requires " + what + " (use model_type \"modformer\" otherwise)");
  };
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i)
    need(c.layer_mixer(i) == "mla", c.layer_types.empty() ? "token_mixer" : "layer_types",
         "every layer's token mixer to be \"mla\"");
  need(c.ffn == FfnKind::SwiGLU || c.ffn == FfnKind::MoE, "ffn", "SwiGLU MLPs or MoE (ffn \"swiglu\" or \"moe\")");
  if (c.ffn == FfnKind::MoE) {
    const json m = c.options_of("moe");
    need(m.at("router") == "deepseek" && m.at("expert") == "swiglu" && m.at("param_names") == "mlp" &&
             m.at("capacity_factor").get<double>() == 0.0 && m.at("router_z_loss_coef").get<double>() == 0.0 &&
             m.at("num_local_experts").get<std::int64_t>() == 0,
         "moe", "DeepSeek's MoE (router \"deepseek\", SwiGLU experts, mlp.* names, no capacity limit, no z-loss)");
  }
  need(c.norm == NormKind::RMSNorm && c.norm_placement == NormPlacement::Pre, "norm", "RMSNorm pre-norm blocks");
  need(c.position == PositionKind::RoPE, "position", "position \"rope\" (MLA rotates its rope parts itself)");
  need(c.is_decoder, "is_decoder", "a decoder");
  need(!c.reversible, "reversible", "ordinary residual blocks");
  need(c.sliding_window == 0, "sliding_window", "no sliding_window");
  need(!c.mlp_bias, "mlp_bias", "no MLP biases");
}

}  // namespace mf
