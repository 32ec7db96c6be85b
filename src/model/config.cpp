// Strict JSON config parsing and validation (HF config.json names + ours).
// A field is looked up in one table; anything not in it is rejected, except a
// few informational HF fields (architectures, torch_dtype, token ids, ...),
// which are accepted and checked where they would change the math.
#include "model/config.h"

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/atomic_file.h"
#include "core/error.h"
#include "model/config_fields.h"
#include "model/deepseek_v2_config.h"
#include "model/mamba_config.h"
#include "model/mixtral_config.h"
#include "nn/block/mixture_of_depths.h"
#include "nn/mixer/mixer_registry.h"

namespace mf {

namespace {

using json = nlohmann::json;

// One table per enum: JSON name -> value (aliases allowed), value -> canonical name.
template <typename E>
struct EnumTable {
  std::vector<std::pair<std::string, E>> names;  // first entry per value is canonical

  E parse(const json& v, const std::string& source, const std::string& field) const {
    const std::string s = get_string(v, source, field);
    for (const auto& [n, e] : names)
      if (n == s) return e;
    std::string allowed;
    for (const auto& [n, e] : names) allowed += (allowed.empty() ? "\"" : ", \"") + n + "\"";
    field_error(source, field, str_cat("unknown value \"", s, "\" (expected one of ", allowed, ")"));
  }
  std::string name(E e) const {
    for (const auto& [n, x] : names)
      if (x == e) return n;
    return "?";
  }
};

const EnumTable<NormKind> kNormKinds{{{"rmsnorm", NormKind::RMSNorm}, {"layernorm", NormKind::LayerNorm}}};
const EnumTable<NormPlacement> kPlacements{
    {{"pre", NormPlacement::Pre}, {"post", NormPlacement::Post}, {"sandwich", NormPlacement::Sandwich}}};
const EnumTable<FfnKind> kFfnKinds{{{"swiglu", FfnKind::SwiGLU}, {"geglu", FfnKind::GeGLU}, {"mlp", FfnKind::MLP}, {"none", FfnKind::None}, {"moe", FfnKind::MoE}}};
const EnumTable<PositionKind> kPositions{{{"rope", PositionKind::RoPE},
                                          {"rope_interleaved", PositionKind::RoPEInterleaved},
                                          {"alibi", PositionKind::ALiBi},
                                          {"sinusoidal", PositionKind::Sinusoidal},
                                          {"learned", PositionKind::Learned},
                                          {"none", PositionKind::None}}};
const EnumTable<Activation> kActivations{{{"silu", Activation::SiLU},
                                          {"swish", Activation::SiLU},
                                          {"gelu", Activation::GELU},
                                          {"gelu_pytorch_tanh", Activation::GELUTanh},
                                          {"gelu_new", Activation::GELUTanh}}};
const EnumTable<AttentionImpl> kImpls{{{"flash", AttentionImpl::Flash}, {"dense", AttentionImpl::Dense}}};
const EnumTable<RopeScalingType> kRopeTypes{{{"default", RopeScalingType::None},
                                             {"linear", RopeScalingType::Linear},
                                             {"ntk", RopeScalingType::NTK},
                                             {"dynamic", RopeScalingType::Dynamic},
                                             {"yarn", RopeScalingType::YaRN}}};

constexpr std::int64_t kMaxDim = std::int64_t{1} << 20;     // hidden/intermediate sizes
constexpr std::int64_t kMaxVocab = std::int64_t{1} << 31;   // token ids are int32
constexpr std::int64_t kMaxPositions = std::int64_t{1} << 24;

RopeScalingConfig parse_rope_scaling_json(const json& v, const std::string& source) {
  RopeScalingConfig r;
  if (v.is_null()) return r;
  if (!v.is_object())
    field_error(source, "rope_scaling", str_cat("must be an object or null but is ", type_of(v), " (", v.dump(), ")"));
  bool has_type = false;
  for (auto it = v.begin(); it != v.end(); ++it) {
    const std::string f = "rope_scaling." + it.key();
    const json& x = it.value();
    if (it.key() == "type" || it.key() == "rope_type") {
      const RopeScalingType t = kRopeTypes.parse(x, source, f);
      if (has_type && t != r.type) field_error(source, f, "disagrees with the other of 'type'/'rope_type'");
      r.type = t;
      has_type = true;
    } else if (it.key() == "factor") {
      r.factor = get_double(x, source, f);
    } else if (it.key() == "original_max_position_embeddings") {
      r.original_max_position_embeddings = get_int(x, source, f, 1, kMaxPositions);
    } else if (it.key() == "beta_fast") {
      r.beta_fast = get_double(x, source, f);
    } else if (it.key() == "beta_slow") {
      r.beta_slow = get_double(x, source, f);
    } else if (it.key() == "attention_factor") {
      if (!x.is_null()) r.attention_factor = get_double(x, source, f);
    } else if (it.key() == "mscale") {
      if (!x.is_null()) r.mscale = get_double(x, source, f);
    } else if (it.key() == "mscale_all_dim") {
      if (!x.is_null()) r.mscale_all_dim = get_double(x, source, f);
    } else {
      field_error(source, f,
                  "unknown field (expected type/rope_type, factor, original_max_position_embeddings, beta_fast, "
                  "beta_slow, attention_factor, mscale, mscale_all_dim)");
    }
  }
  if (!has_type) field_error(source, "rope_scaling.type", "missing (give 'type' or 'rope_type')");
  return r;
}

json rope_scaling_to_json(const RopeScalingConfig& r) {
  if (r.type == RopeScalingType::None) return nullptr;
  json j;
  j["rope_type"] = kRopeTypes.name(r.type);
  j["type"] = kRopeTypes.name(r.type);  // older HF versions read "type"
  j["factor"] = r.factor;
  if (r.original_max_position_embeddings > 0)
    j["original_max_position_embeddings"] = r.original_max_position_embeddings;
  if (r.type == RopeScalingType::YaRN) {
    j["beta_fast"] = r.beta_fast;
    j["beta_slow"] = r.beta_slow;
    if (r.attention_factor > 0) j["attention_factor"] = r.attention_factor;
    if (r.mscale) j["mscale"] = *r.mscale;
    if (r.mscale_all_dim) j["mscale_all_dim"] = *r.mscale_all_dim;
  }
  return j;
}

}  // namespace

std::string norm_kind_name(NormKind k) { return kNormKinds.name(k); }
std::string norm_placement_name(NormPlacement p) { return kPlacements.name(p); }
std::string ffn_kind_name(FfnKind k) { return kFfnKinds.name(k); }
std::string position_kind_name(PositionKind p) { return kPositions.name(p); }
std::string activation_name(Activation a) {
  return a == Activation::GELUTanh ? "gelu_pytorch_tanh" : kActivations.name(a);
}
std::string rope_scaling_type_name(RopeScalingType t) { return kRopeTypes.name(t); }

ModelConfig config_from_json(const json& j, const std::string& source) {
  MF_CHECK(j.is_object(), "[config] ", source, ": must be a JSON object but is ", j.type_name());
  if (j.contains("model_type") && j["model_type"] == "mamba") return mamba_config_from_json(j, source);
  if (j.contains("model_type") && j["model_type"] == "deepseek_v2") return deepseek_v2_config_from_json(j, source);
  if (j.contains("model_type") && j["model_type"] == "mixtral") return mixtral_config_from_json(j, source);
  ModelConfig c;
  std::set<std::string> seen;
  const std::string& s = source;
  using Setter = std::function<void(const json&, const std::string&)>;
  auto ignore_info = [&](const json& v, const std::string& f) {
    if (f == "architectures") {
      if (!v.is_array()) field_error(s, f, "must be a list of strings");
      for (const auto& a : v)
        if (!a.is_string()) field_error(s, f, "must be a list of strings");
    } else if (f == "torch_dtype") {
      const std::string d = get_string(v, s, f);
      if (d != "float32" && d != "bfloat16" && d != "float16")
        field_error(s, f, "must be \"float32\", \"bfloat16\" or \"float16\" but is \"" + d + "\"");
    } else if (f == "transformers_version" || f == "_name_or_path") {
      get_string(v, s, f);
    } else if (f == "use_cache") {
      get_bool(v, s, f);
    } else if (f == "pretraining_tp") {
      if (get_int(v, s, f, 1, 1 << 20) != 1) field_error(s, f, "only 1 is supported (no tensor-parallel slicing)");
    } else if (f == "attention_dropout") {
      if (get_double(v, s, f) != 0.0) field_error(s, f, "only 0 is supported");
    } else {  // bos/eos/pad token ids: null, an int, or (eos) a list of ints
      auto check_id = [&](const json& x) {
        if (!x.is_null()) get_int(x, s, f, 0, kMaxVocab - 1);
      };
      if (v.is_array()) {
        for (const auto& x : v) check_id(x);
      } else {
        check_id(v);
      }
    }
  };
  const std::map<std::string, Setter> table = {
      {"model_type",
       [&](const json& v, const std::string& f) {
         c.model_type = get_string(v, s, f);
         if (c.model_type != "llama" && c.model_type != "modformer")
           field_error(s, f, "unknown value \"" + c.model_type + "\" (expected \"llama\", \"mamba\", \"mixtral\" or \"modformer\")");
       }},
      {"vocab_size", [&](const json& v, const std::string& f) { c.vocab_size = get_int(v, s, f, 1, kMaxVocab); }},
      {"hidden_size", [&](const json& v, const std::string& f) { c.hidden_size = get_int(v, s, f, 1, kMaxDim); }},
      {"intermediate_size",
       [&](const json& v, const std::string& f) { c.intermediate_size = get_int(v, s, f, 1, kMaxDim); }},
      {"num_hidden_layers",
       [&](const json& v, const std::string& f) { c.num_hidden_layers = get_int(v, s, f, 1, 1 << 16); }},
      {"num_attention_heads",
       [&](const json& v, const std::string& f) { c.num_attention_heads = get_int(v, s, f, 1, 1 << 16); }},
      {"num_key_value_heads",
       [&](const json& v, const std::string& f) {
         if (!v.is_null()) c.num_key_value_heads = get_int(v, s, f, 1, 1 << 16);
       }},
      {"head_dim",
       [&](const json& v, const std::string& f) {
         if (!v.is_null()) c.head_dim = get_int(v, s, f, 1, kMaxDim);
       }},
      {"rms_norm_eps", [&](const json& v, const std::string& f) { c.rms_norm_eps = get_double(v, s, f); }},
      {"layer_norm_eps", [&](const json& v, const std::string& f) { c.layer_norm_eps = get_double(v, s, f); }},
      {"rope_theta", [&](const json& v, const std::string& f) { c.rope_theta = get_double(v, s, f); }},
      {"rope_scaling", [&](const json& v, const std::string&) { c.rope_scaling = parse_rope_scaling_json(v, s); }},
      {"max_position_embeddings",
       [&](const json& v, const std::string& f) { c.max_position_embeddings = get_int(v, s, f, 1, kMaxPositions); }},
      {"tie_word_embeddings", [&](const json& v, const std::string& f) { c.tie_word_embeddings = get_bool(v, s, f); }},
      {"sliding_window",
       [&](const json& v, const std::string& f) {
         c.sliding_window = v.is_null() ? 0 : get_int(v, s, f, 1, kMaxPositions);
       }},
      {"hidden_act", [&](const json& v, const std::string& f) { c.hidden_act = kActivations.parse(v, s, f); }},
      {"attention_bias", [&](const json& v, const std::string& f) { c.attention_bias = get_bool(v, s, f); }},
      {"mlp_bias", [&](const json& v, const std::string& f) { c.mlp_bias = get_bool(v, s, f); }},
      {"norm", [&](const json& v, const std::string& f) { c.norm = kNormKinds.parse(v, s, f); }},
      {"norm_placement", [&](const json& v, const std::string& f) { c.norm_placement = kPlacements.parse(v, s, f); }},
      {"ffn", [&](const json& v, const std::string& f) { c.ffn = kFfnKinds.parse(v, s, f); }},
      {"ffn_chunk_size",
       [&](const json& v, const std::string& f) { c.ffn_chunk_size = get_int(v, s, f, 0, kMaxPositions); }},
      {"position", [&](const json& v, const std::string& f) { c.position = kPositions.parse(v, s, f); }},
      {"attention_impl", [&](const json& v, const std::string& f) { c.attention_impl = kImpls.parse(v, s, f); }},
      {"gradient_checkpointing",
       [&](const json& v, const std::string& f) { c.gradient_checkpointing = get_bool(v, s, f); }},
      {"reversible", [&](const json& v, const std::string& f) { c.reversible = get_bool(v, s, f); }},
      {"mixture_of_depths",
       [&](const json& v, const std::string& f) {
         c.mixture_of_depths = v.is_null() ? json() : parse_options(mod_option_schema(), v, "[config] " + s + ": ", f);
       }},
      {"initializer_range", [&](const json& v, const std::string& f) { c.initializer_range = get_double(v, s, f); }},
      {"token_mixer", [&](const json& v, const std::string& f) { c.token_mixer = get_string(v, s, f); }},
      {"layer_types",
       [&](const json& v, const std::string& f) {
         c.layer_types.clear();
         if (v.is_null()) return;
         if (!v.is_array()) field_error(s, f, str_cat("must be a list of mixer names but is ", type_of(v)));
         for (std::size_t i = 0; i < v.size(); ++i) c.layer_types.push_back(get_string(v[i], s, str_cat(f, "[", i, "]")));
       }},
      {"is_decoder", [&](const json& v, const std::string& f) { c.is_decoder = get_bool(v, s, f); }},
      {"num_labels", [&](const json& v, const std::string& f) { c.num_labels = get_int(v, s, f, 0, 1 << 20); }},
      {"classifier_pooling",
       [&](const json& v, const std::string& f) { c.classifier_pooling = get_string(v, s, f); }},
      {"architectures", ignore_info},
      {"torch_dtype", ignore_info},
      {"transformers_version", ignore_info},
      {"_name_or_path", ignore_info},
      {"use_cache", ignore_info},
      {"pretraining_tp", ignore_info},
      {"attention_dropout", ignore_info},
      {"bos_token_id", ignore_info},
      {"eos_token_id", ignore_info},
      {"pad_token_id", ignore_info},
  };
  for (auto it = j.begin(); it != j.end(); ++it) {
    const auto h = table.find(it.key());
    if (h == table.end() && (find_token_mixer(it.key()) || find_channel_mixer(it.key()))) {
      c.mixer_options[it.key()] = it.value();  // a mixer's options object, checked below
      continue;
    }
    if (h == table.end()) {
      field_error(s, it.key(),
                  "unknown field (known: model_type, vocab_size, hidden_size, intermediate_size, num_hidden_layers, "
                  "num_attention_heads, num_key_value_heads, head_dim, rms_norm_eps, layer_norm_eps, rope_theta, "
                  "rope_scaling, max_position_embeddings, tie_word_embeddings, sliding_window, hidden_act, "
                  "attention_bias, mlp_bias, norm, norm_placement, ffn, ffn_chunk_size, position, attention_impl, "
                  "gradient_checkpointing, reversible, mixture_of_depths, initializer_range, token_mixer, layer_types, is_decoder, num_labels, "
                  "classifier_pooling, and a mixer's options object under its name: " +
                      token_mixer_names() + ")");
    }
    h->second(it.value(), it.key());
    seen.insert(it.key());
  }
  for (const char* required :
       {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"}) {
    if (!seen.count(required)) field_error(s, required, "missing (required)");
  }
  // Dependent defaults, as in HF: KV heads = heads, head_dim = hidden / heads.
  if (!seen.count("num_key_value_heads") || j["num_key_value_heads"].is_null())
    c.num_key_value_heads = c.num_attention_heads;
  if (!seen.count("head_dim") || j["head_dim"].is_null()) {
    if (c.hidden_size % c.num_attention_heads != 0)
      field_error(s, "num_attention_heads",
                  str_cat(c.num_attention_heads, " does not divide hidden_size ", c.hidden_size,
                          " (give head_dim explicitly for such a model)"));
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (!seen.count("hidden_act"))
    c.hidden_act = c.ffn == FfnKind::SwiGLU || c.ffn == FfnKind::MoE ? Activation::SiLU : Activation::GELU;
  // Complete each options object against its mixer's schema (errors name the option).
  for (auto& [name, given] : c.mixer_options) {
    const TokenMixerEntry* t = find_token_mixer(name);
    const auto& schema = t ? t->options : channel_mixer_entry(name).options;
    given = parse_options(schema, given, "[config] " + s + ": ", name);
  }
  validate_config(c, s);
  return c;
}

std::string ModelConfig::layer_mixer(std::int64_t i) const {
  if (!layer_types.empty()) return layer_types.at(static_cast<std::size_t>(i));
  if (!token_mixer.empty()) return token_mixer;
  return sliding_window > 0 ? "sliding_attention" : "full_attention";
}

json ModelConfig::options_of(const std::string& mixer) const {
  const auto it = mixer_options.find(mixer);
  if (it != mixer_options.end()) return it->second;
  const TokenMixerEntry* t = find_token_mixer(mixer);
  const auto& schema = t ? t->options : channel_mixer_entry(mixer).options;
  return parse_options(schema, nullptr, "[config] ", mixer);
}

namespace {

// Which layers a Mixture-of-Depths config may route: routed tokens keep their
// positions only through explicit position ids (RoPE in attention), so
// distances that count rows (ALiBi, sliding windows) and mixers that cannot
// take position ids under RoPE are refused by name.
void validate_mixture_of_depths(const ModelConfig& c, const std::string& s) {
  const char* f = "mixture_of_depths";
  const ModOptions o = mod_options_from_json(parse_options(mod_option_schema(), c.mixture_of_depths, "[config] " + s + ": ", f));
  if (c.reversible) field_error(s, f, "routed blocks cannot be reversible (set one of reversible, mixture_of_depths)");
  if (c.position == PositionKind::ALiBi)
    field_error(s, f, "ALiBi distances count rows, which routed tokens do not keep contiguous (use RoPE)");
  bool any = false;
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
    if (!mod_routes_layer(o, i)) continue;
    any = true;
    const std::string name = c.layer_mixer(i);
    if (name == "sliding_attention")
      field_error(s, f, str_cat("layer ", i, " is routed but is a sliding_attention layer, whose window counts rows "
                                "that routed tokens do not keep contiguous"));
    if (c.uses_rope() && !token_mixer_entry(name).caps.position_ids)
      field_error(s, f, str_cat("layer ", i, " is routed but its mixer \"", name,
                                "\" cannot take the routed tokens' RoPE positions (use position \"none\", or route "
                                "attention layers only)"));
  }
  if (!any)
    field_error(s, "mixture_of_depths.every", str_cat("routes no layer: every = ", o.every, " but the model has ",
                                                       c.num_hidden_layers, " layers"));
}

}  // namespace

void validate_config(const ModelConfig& c, const std::string& s) {
  auto in_range = [&](const char* f, std::int64_t x, std::int64_t lo, std::int64_t hi) {
    if (x < lo || x > hi) field_error(s, f, str_cat("must be in [", lo, ", ", hi, "] but is ", x));
  };
  if (c.model_type != "llama" && c.model_type != "modformer" && c.model_type != "mamba" &&
      c.model_type != "deepseek_v2" && c.model_type != "mixtral")
    field_error(s, "model_type",
                "unknown value \"" + c.model_type +
                    "\" (expected \"llama\", \"mamba\", \"mixtral\", \"deepseek_v2\" or \"modformer\")");
  if (c.model_type == "mamba") validate_mamba_config(c, s);
  if (c.model_type == "deepseek_v2") validate_deepseek_v2_config(c, s);
  if (c.model_type == "mixtral") validate_mixtral_config(c, s);
  in_range("vocab_size", c.vocab_size, 1, kMaxVocab);
  in_range("hidden_size", c.hidden_size, 1, kMaxDim);
  in_range("intermediate_size", c.intermediate_size, 1, kMaxDim);
  in_range("num_hidden_layers", c.num_hidden_layers, 1, 1 << 16);
  in_range("num_attention_heads", c.num_attention_heads, 1, 1 << 16);
  in_range("num_key_value_heads", c.num_key_value_heads, 1, c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    field_error(s, "num_key_value_heads",
                str_cat(c.num_key_value_heads, " does not divide num_attention_heads ", c.num_attention_heads));
  if (c.head_dim < 8 || c.head_dim > 256 || c.head_dim % 8 != 0)
    field_error(s, "head_dim", str_cat("must be a multiple of 8 in [8, 256] (the attention kernels' limit) but is ",
                                       c.head_dim));
  if (!(c.rms_norm_eps > 0 && c.rms_norm_eps < 1)) field_error(s, "rms_norm_eps", "must be in (0, 1)");
  if (!(c.layer_norm_eps > 0 && c.layer_norm_eps < 1)) field_error(s, "layer_norm_eps", "must be in (0, 1)");
  if (!(c.rope_theta > 1 && std::isfinite(c.rope_theta))) field_error(s, "rope_theta", "must be > 1");
  in_range("max_position_embeddings", c.max_position_embeddings, 1, kMaxPositions);
  in_range("sliding_window", c.sliding_window, 0, kMaxPositions);
  in_range("ffn_chunk_size", c.ffn_chunk_size, 0, kMaxPositions);
  if (!(c.initializer_range > 0 && c.initializer_range <= 1)) field_error(s, "initializer_range", "must be in (0, 1]");

  if (c.is_llama()) {
    // LlamaForCausalLM has exactly one architecture; every other switch needs model_type "modformer".
    auto need = [&](bool ok, const char* field, const std::string& what) {
      if (!ok)
        field_error(s, field, "model_type \"llama\" requires " + what + " (use model_type \"modformer\" otherwise)");
    };
    need(c.norm == NormKind::RMSNorm, "norm", "norm \"rmsnorm\"");
    need(c.norm_placement == NormPlacement::Pre, "norm_placement", "norm_placement \"pre\"");
    need(c.ffn == FfnKind::SwiGLU, "ffn", "ffn \"swiglu\"");
    need(c.position == PositionKind::RoPE, "position", "position \"rope\" (rotate-half)");
    need(c.sliding_window == 0, "sliding_window", "no sliding_window");
    need(c.is_decoder, "is_decoder", "a decoder (is_decoder true)");
    need(!c.reversible, "reversible", "ordinary residual blocks (reversible false)");
    need(c.mixture_of_depths.is_null(), "mixture_of_depths", "unrouted blocks (no mixture_of_depths)");
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i)
      need(c.layer_mixer(i) == "full_attention", c.layer_types.empty() ? "token_mixer" : "layer_types",
           "every layer's token mixer to be \"full_attention\"");
    if (c.rope_scaling.type == RopeScalingType::NTK)
      field_error(s, "rope_scaling.type",
                  "\"ntk\" (static NTK-aware) is our own name, unknown to LlamaForCausalLM; use model_type "
                  "\"modformer\", or \"dynamic\" / \"linear\" / \"yarn\"");
  }

  const RopeScalingConfig& r = c.rope_scaling;
  if (r.type != RopeScalingType::None) {
    if (!c.uses_rope())
      field_error(s, "rope_scaling",
                  "is only meaningful with position \"rope\" or \"rope_interleaved\" but position is \"" +
                      position_kind_name(c.position) + "\"");
    if (!(r.factor >= 1)) field_error(s, "rope_scaling.factor", str_cat("must be >= 1 but is ", r.factor));
    if (r.original_max_position_embeddings > c.max_position_embeddings)
      field_error(s, "rope_scaling.original_max_position_embeddings",
                  str_cat(r.original_max_position_embeddings, " exceeds max_position_embeddings ",
                          c.max_position_embeddings));
    if (r.type == RopeScalingType::YaRN) {
      if (!(r.beta_fast > r.beta_slow && r.beta_slow > 0))
        field_error(s, "rope_scaling.beta_fast", "YaRN needs beta_fast > beta_slow > 0");
      if (r.attention_factor < 0) field_error(s, "rope_scaling.attention_factor", "must be > 0");
      if (r.mscale && !(*r.mscale >= 0)) field_error(s, "rope_scaling.mscale", "must be >= 0");
      if (r.mscale_all_dim && !(*r.mscale_all_dim >= 0)) field_error(s, "rope_scaling.mscale_all_dim", "must be >= 0");
    }
  }

  // Blocks from mixers: every layer's token mixer exists, can run as the
  // model needs (causal in decoders, bidirectional in encoders), and finds
  // the model fields it needs; options objects belong to a mixer in use.
  if (!c.layer_types.empty() && static_cast<std::int64_t>(c.layer_types.size()) != c.num_hidden_layers)
    field_error(s, "layer_types",
                str_cat("has ", c.layer_types.size(), " entries but num_hidden_layers is ", c.num_hidden_layers,
                        " (one per layer)"));
  if (!c.token_mixer.empty() && !find_token_mixer(c.token_mixer))
    field_error(s, "token_mixer", "unknown token mixer \"" + c.token_mixer + "\" (known: " + token_mixer_names() + ")");
  std::set<std::string> used;
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string name = c.layer_mixer(i);
    const std::string field = c.layer_types.empty() ? std::string("token_mixer") : str_cat("layer_types[", i, "]");
    const TokenMixerEntry* e = find_token_mixer(name);
    if (!e) field_error(s, field, "unknown token mixer \"" + name + "\" (known: " + token_mixer_names() + ")");
    const std::string why = e->limits.empty() ? std::string() : " (" + e->limits + ")";
    if (c.is_decoder && !e->caps.causal)
      field_error(s, field, "mixer \"" + name + "\" cannot run causally, but is_decoder is true" + why);
    if (!c.is_decoder && !e->caps.bidirectional)
      field_error(s, field, "mixer \"" + name + "\" cannot run bidirectionally, but is_decoder is false" + why);
    if (name == "sliding_attention" && c.sliding_window == 0)
      field_error(s, field, "mixer \"sliding_attention\" needs the model's sliding_window (> 0)");
    used.insert(name);
  }
  used.insert(ffn_kind_name(c.ffn));
  for (const auto& [name, opts] : c.mixer_options)
    if (!used.count(name)) field_error(s, name, "options for mixer \"" + name + "\", which no layer uses");
  if (c.is_decoder) {
    if (c.num_labels != 0)
      field_error(s, "num_labels", "is for encoder classifiers (is_decoder false); a decoder has an LM head");
  } else {
    if (c.num_labels < 2)
      field_error(s, "num_labels",
                  str_cat("an encoder (is_decoder false) is a sequence classifier and needs num_labels >= 2, but it is ",
                          c.num_labels, " (a masked-LM encoder head is not offered)"));
    if (c.tie_word_embeddings)
      field_error(s, "tie_word_embeddings", "an encoder classifier has no LM head to tie");
  }
  if (c.reversible && c.norm_placement == NormPlacement::Post)
    field_error(s, "reversible",
                "reversible blocks need norm_placement \"pre\" or \"sandwich\": a post-norm normalizes Y after the "
                "residual add, so a block's input cannot be recovered from its output");
  if (c.reversible && c.ffn == FfnKind::None)
    field_error(s, "reversible", "reversible blocks need a channel mixer for G (Y2 = X2 + G(Y1)), but ffn is \"none\"");
  if (c.reversible && c.gradient_checkpointing)
    field_error(s, "gradient_checkpointing",
                "reversible blocks already recompute every block in the backward and keep no block inputs; "
                "gradient_checkpointing would add nothing (set one of the two)");
  if (!c.mixture_of_depths.is_null()) validate_mixture_of_depths(c, s);
  if (c.classifier_pooling != "mean" && c.classifier_pooling != "first")
    field_error(s, "classifier_pooling",
                "unknown value \"" + c.classifier_pooling + "\" (expected \"mean\" or \"first\")");

  // Which activation each FFN takes.
  if (c.ffn == FfnKind::SwiGLU && c.hidden_act != Activation::SiLU)
    field_error(s, "hidden_act", "ffn \"swiglu\" needs hidden_act \"silu\" but it is \"" +
                                     activation_name(c.hidden_act) + "\" (use ffn \"geglu\" or \"mlp\")");
  if (c.ffn == FfnKind::GeGLU && c.hidden_act == Activation::SiLU)
    field_error(s, "hidden_act", "ffn \"geglu\" needs hidden_act \"gelu\" or \"gelu_pytorch_tanh\" but it is \"silu\"");

}

json config_to_json(const ModelConfig& c) {
  if (c.model_type == "mamba") return mamba_config_to_json(c);
  if (c.model_type == "deepseek_v2") return deepseek_v2_config_to_json(c);
  if (c.model_type == "mixtral") return mixtral_config_to_json(c);
  json j;
  if (c.is_llama()) j["architectures"] = json::array({"LlamaForCausalLM"});
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["layer_norm_eps"] = c.layer_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = rope_scaling_to_json(c.rope_scaling);
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  j["hidden_act"] = activation_name(c.hidden_act);
  j["attention_bias"] = c.attention_bias;
  j["mlp_bias"] = c.mlp_bias;
  j["norm"] = norm_kind_name(c.norm);
  j["norm_placement"] = norm_placement_name(c.norm_placement);
  j["ffn"] = ffn_kind_name(c.ffn);
  j["ffn_chunk_size"] = c.ffn_chunk_size;
  j["position"] = position_kind_name(c.position);
  j["attention_impl"] = kImpls.name(c.attention_impl);
  j["gradient_checkpointing"] = c.gradient_checkpointing;
  if (c.reversible) j["reversible"] = true;
  if (!c.mixture_of_depths.is_null()) j["mixture_of_depths"] = c.mixture_of_depths;
  j["initializer_range"] = c.initializer_range;
  if (!c.token_mixer.empty()) j["token_mixer"] = c.token_mixer;
  if (!c.layer_types.empty()) j["layer_types"] = c.layer_types;
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {  // every used mixer's options, complete
    const std::string name = c.layer_mixer(i);
    if (!token_mixer_entry(name).options.empty()) j[name] = c.options_of(name);
  }
  for (const auto& [name, opts] : c.mixer_options) j[name] = opts;
  j["is_decoder"] = c.is_decoder;
  if (!c.is_decoder) {
    j["num_labels"] = c.num_labels;
    j["classifier_pooling"] = c.classifier_pooling;
  }
  j["torch_dtype"] = "float32";
  return j;
}

std::string config_to_string(const ModelConfig& c) { return config_to_json(c).dump(2) + "\n"; }

ModelConfig config_from_string(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    fail("[config] ", source, ": invalid JSON: ", e.what());
  }
  return config_from_json(j, source);
}

ModelConfig load_config(const std::string& path) { return config_from_string(read_file(path), path); }

void save_config(const std::string& path, const ModelConfig& c) { write_file_atomic(path, config_to_string(c)); }

ModelConfig default_config() {
  // Llama-style (RoPE, GQA, RMSNorm pre-norm, SwiGLU) over bytes; the sizing
  // and the measurements behind it are in config.h.
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 256;
  c.hidden_size = 192;
  c.intermediate_size = 512;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.max_position_embeddings = 1024;
  c.tie_word_embeddings = false;
  c.rms_norm_eps = 1e-5;
  c.attention_impl = AttentionImpl::Flash;
  validate_config(c, "default_config");
  return c;
}

ModelConfig default_classifier_config(std::int64_t num_labels, std::int64_t max_len) {
  ModelConfig c = default_config();
  c.model_type = "modformer";  // LlamaForCausalLM is a decoder
  c.is_decoder = false;
  c.num_labels = num_labels;
  c.classifier_pooling = "mean";
  c.max_position_embeddings = max_len;
  validate_config(c, "default_classifier_config");
  return c;
}

}  // namespace mf
