#include "model/mamba_config.h"

#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "core/error.h"
#include "model/config_fields.h"
#include "nn/mixer/mixer_registry.h"

namespace mf {

using json = nlohmann::json;

namespace {

constexpr std::int64_t kMaxDim = std::int64_t{1} << 20;
constexpr std::int64_t kMaxPositions = std::int64_t{1} << 24;

// HF MambaConfig fields that go to the "mamba" token mixer's options, under
// the same names (time_step_rank: "auto" becomes 0), and our chunk_len (the
// scan's checkpoint interval: speed and memory only).
const char* const kMixerFields[] = {"state_size",      "expand",          "conv_kernel",           "use_bias",
                                    "use_conv_bias",   "time_step_min",   "time_step_max",         "time_step_floor",
                                    "time_step_scale", "time_step_init_scheme", "chunk_len"};

}  // namespace

ModelConfig mamba_config_from_json(const json& j, const std::string& s) {
  ModelConfig c;
  c.model_type = "mamba";
  c.token_mixer = "mamba";
  c.ffn = FfnKind::None;
  c.norm = NormKind::RMSNorm;
  c.norm_placement = NormPlacement::Pre;
  c.position = PositionKind::None;
  c.tie_word_embeddings = true;  // PretrainedConfig's default, and every released Mamba
  c.rms_norm_eps = 1e-5;
  c.initializer_range = 0.1;
  c.max_position_embeddings = kMaxPositions;
  c.num_attention_heads = c.num_key_value_heads = 1;  // unused: no attention
  c.head_dim = 8;
  json mixer = json::object();
  std::int64_t expand = 2;
  std::int64_t intermediate = 0;
  std::set<std::string> seen;
  auto ignore_id = [&](const json& v, const std::string& f) {
    if (!v.is_null()) get_int(v, s, f, 0, (std::int64_t{1} << 31) - 1);
  };
  using Setter = std::function<void(const json&, const std::string&)>;
  const std::map<std::string, Setter> table = {
      {"model_type", [&](const json&, const std::string&) {}},
      {"architectures",
       [&](const json& v, const std::string& f) {
         if (!v.is_null() && !v.is_array()) field_error(s, f, "must be a list of strings");
       }},
      {"vocab_size", [&](const json& v, const std::string& f) { c.vocab_size = get_int(v, s, f, 1, std::int64_t{1} << 31); }},
      {"hidden_size", [&](const json& v, const std::string& f) { c.hidden_size = get_int(v, s, f, 1, kMaxDim); }},
      {"num_hidden_layers",
       [&](const json& v, const std::string& f) { c.num_hidden_layers = get_int(v, s, f, 1, 1 << 16); }},
      {"intermediate_size", [&](const json& v, const std::string& f) { intermediate = get_int(v, s, f, 1, kMaxDim); }},
      {"expand",
       [&](const json& v, const std::string& f) {
         expand = get_int(v, s, f, 1, 1 << 10);
         mixer["expand"] = expand;
       }},
      {"time_step_rank",
       [&](const json& v, const std::string& f) {
         if (v.is_string()) {
           if (v.get<std::string>() != "auto") field_error(s, f, "must be \"auto\" or an integer >= 1");
           mixer["time_step_rank"] = 0;
         } else {
           mixer["time_step_rank"] = get_int(v, s, f, 1, kMaxDim);
         }
       }},
      {"layer_norm_epsilon", [&](const json& v, const std::string& f) { c.rms_norm_eps = get_double(v, s, f); }},
      {"hidden_act",
       [&](const json& v, const std::string& f) {
         const std::string a = get_string(v, s, f);
         if (a != "silu" && a != "swish") field_error(s, f, "Mamba's gate and convolution use \"silu\"; got \"" + a + "\"");
       }},
      {"initializer_range", [&](const json& v, const std::string& f) { c.initializer_range = get_double(v, s, f); }},
      {"tie_word_embeddings", [&](const json& v, const std::string& f) { c.tie_word_embeddings = get_bool(v, s, f); }},
      {"residual_in_fp32", [&](const json& v, const std::string& f) { get_bool(v, s, f); }},  // we are float32 throughout
      {"rescale_prenorm_residual",
       [&](const json& v, const std::string& f) {
         if (get_bool(v, s, f))
           field_error(s, f, "true (out_proj initialization divided by sqrt(num_hidden_layers)) is not offered; "
                             "it only changes the initialization, so set it false to train from scratch");
       }},
      {"use_cache", [&](const json& v, const std::string& f) { get_bool(v, s, f); }},
      {"use_mambapy", [&](const json& v, const std::string& f) { get_bool(v, s, f); }},
      {"torch_dtype", [&](const json& v, const std::string& f) { get_string(v, s, f); }},
      {"transformers_version", [&](const json& v, const std::string& f) { get_string(v, s, f); }},
      {"_name_or_path", [&](const json& v, const std::string& f) { get_string(v, s, f); }},
      {"pad_token_id", ignore_id},
      {"bos_token_id", ignore_id},
      {"eos_token_id", ignore_id},
      {"max_position_embeddings",
       [&](const json& v, const std::string& f) { c.max_position_embeddings = get_int(v, s, f, 1, kMaxPositions); }},
      {"gradient_checkpointing",
       [&](const json& v, const std::string& f) { c.gradient_checkpointing = get_bool(v, s, f); }},
  };
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool to_mixer = false;
    for (const char* m : kMixerFields) to_mixer = to_mixer || it.key() == m;
    if (to_mixer && it.key() != std::string("expand")) {
      mixer[it.key()] = it.value();
      seen.insert(it.key());
      continue;
    }
    const auto h = table.find(it.key());
    if (h == table.end())
      field_error(s, it.key(),
                  "unknown field for model_type \"mamba\" (known: Hugging Face MambaConfig's vocab_size, hidden_size, "
                  "num_hidden_layers, intermediate_size, state_size, expand, conv_kernel, use_bias, use_conv_bias, "
                  "time_step_rank, time_step_scale, time_step_min, time_step_max, time_step_floor, "
                  "time_step_init_scheme, layer_norm_epsilon, hidden_act, initializer_range, residual_in_fp32, "
                  "rescale_prenorm_residual, tie_word_embeddings, token ids, use_cache; and our chunk_len, "
                  "max_position_embeddings, gradient_checkpointing)");
    h->second(it.value(), it.key());
    seen.insert(it.key());
  }
  for (const char* required : {"vocab_size", "hidden_size", "num_hidden_layers"})
    if (!seen.count(required)) field_error(s, required, "missing (required)");
  c.intermediate_size = expand * c.hidden_size;
  if (intermediate != 0 && intermediate != c.intermediate_size)
    field_error(s, "intermediate_size",
                str_cat(intermediate, " is not expand * hidden_size = ", c.intermediate_size,
                        " (Mamba's inner width is derived from expand)"));
  c.mixer_options["mamba"] = parse_options(token_mixer_entry("mamba").options, mixer, "[config] " + s + ": ", "mamba");
  validate_config(c, s);
  return c;
}

json mamba_config_to_json(const ModelConfig& c) {
  json j;
  j["architectures"] = json::array({"MambaForCausalLM"});
  j["model_type"] = "mamba";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  const json o = c.options_of("mamba");
  for (const char* m : kMixerFields) j[m] = o.at(m);
  const std::int64_t rank = o.at("time_step_rank").get<std::int64_t>();
  j["time_step_rank"] = rank == 0 ? json("auto") : json(rank);
  j["rescale_prenorm_residual"] = false;
  j["residual_in_fp32"] = true;
  j["layer_norm_epsilon"] = c.rms_norm_eps;
  j["hidden_act"] = "silu";
  j["initializer_range"] = c.initializer_range;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["gradient_checkpointing"] = c.gradient_checkpointing;
  j["torch_dtype"] = "float32";
  return j;
}

void validate_mamba_config(const ModelConfig& c, const std::string& s) {
  auto need = [&](bool ok, const char* field, const std::string& what) {
    if (!ok) field_error(s, field, "model_type \"mamba\" requires " + what + " (use model_type \"modformer\" otherwise)");
  };
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i)
    need(c.layer_mixer(i) == "mamba", c.layer_types.empty() ? "token_mixer" : "layer_types",
         "every layer's token mixer to be \"mamba\"");
  need(c.ffn == FfnKind::None, "ffn", "no channel mixer (ffn \"none\")");
  need(c.norm == NormKind::RMSNorm && c.norm_placement == NormPlacement::Pre, "norm", "RMSNorm pre-norm blocks");
  need(c.position == PositionKind::None, "position", "no position scheme (position \"none\")");
  need(c.is_decoder, "is_decoder", "a decoder");
  need(!c.reversible, "reversible", "ordinary residual blocks");
  need(c.mixture_of_depths.is_null(), "mixture_of_depths", "unrouted blocks");
}

}  // namespace mf
