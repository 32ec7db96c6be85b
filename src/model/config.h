// The JSON model config: Hugging Face config.json field names where HF has
// them (LlamaConfig), plus our own fields for the switches HF has no name for.
// Parsing is strict: unknown fields, wrong types, out-of-range values and
// impossible combinations are errors that name the field.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "nn/attention/attention.h"

namespace mf {

enum class NormKind { RMSNorm, LayerNorm };
// pre: x + f(norm(x)) (GPT-2/Llama); post: norm(x + f(x)) (original
// Transformer, BERT); sandwich: x + norm_b(f(norm_a(x))) (CogView, Gemma 2).
enum class NormPlacement { Pre, Post, Sandwich };
enum class FfnKind { SwiGLU, GeGLU, MLP };
// rope: rotate-half pairs (i, i + D/2) as in GPT-NeoX/Llama; rope_interleaved:
// pairs (2i, 2i + 1) as in the RoFormer paper.
enum class PositionKind { RoPE, RoPEInterleaved, ALiBi, Sinusoidal, Learned, None };
// silu (= swish); gelu (erf); gelu_tanh (HF "gelu_new" / "gelu_pytorch_tanh").
enum class Activation { SiLU, GELU, GELUTanh };
enum class RopeScalingType { None, Linear, NTK, Dynamic, YaRN };

struct RopeScalingConfig {
  RopeScalingType type = RopeScalingType::None;
  double factor = 1.0;
  std::int64_t original_max_position_embeddings = 0;  // 0: max_position_embeddings
  double beta_fast = 32.0, beta_slow = 1.0;           // YaRN ramp bounds (rotations)
  double attention_factor = 0.0;                      // YaRN; 0: 0.1 ln(factor) + 1
};

struct ModelConfig {
  std::string model_type = "llama";  // "llama" (HF LlamaForCausalLM names) | "modformer"
  std::int64_t vocab_size = 256;
  std::int64_t hidden_size = 256;
  std::int64_t intermediate_size = 768;
  std::int64_t num_hidden_layers = 4;
  std::int64_t num_attention_heads = 4;
  std::int64_t num_key_value_heads = 4;
  std::int64_t head_dim = 64;
  double rms_norm_eps = 1e-6;
  double layer_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScalingConfig rope_scaling;
  std::int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  std::int64_t sliding_window = 0;  // 0: none; W: a token sees itself and the W - 1 before it
  Activation hidden_act = Activation::SiLU;
  bool attention_bias = false;
  bool mlp_bias = false;
  // Our own fields.
  NormKind norm = NormKind::RMSNorm;
  NormPlacement norm_placement = NormPlacement::Pre;
  FfnKind ffn = FfnKind::SwiGLU;
  std::int64_t ffn_chunk_size = 0;  // tokens per FFN chunk; 0: whole sequence at once
  PositionKind position = PositionKind::RoPE;
  AttentionImpl attention_impl = AttentionImpl::Flash;
  bool gradient_checkpointing = false;
  double initializer_range = 0.02;

  std::int64_t q_dim() const { return num_attention_heads * head_dim; }
  std::int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  double norm_eps() const { return norm == NormKind::RMSNorm ? rms_norm_eps : layer_norm_eps; }
  bool uses_rope() const { return position == PositionKind::RoPE || position == PositionKind::RoPEInterleaved; }
  bool is_llama() const { return model_type == "llama"; }
};

// Parses and validates; `source` (a file name or "<default>") prefixes errors.
ModelConfig config_from_json(const nlohmann::json& j, const std::string& source = "config");
ModelConfig config_from_string(const std::string& text, const std::string& source = "config");
ModelConfig load_config(const std::string& path);
// Every field, explicitly (so a saved config never depends on our defaults);
// for llama also "architectures": ["LlamaForCausalLM"].
nlohmann::json config_to_json(const ModelConfig& c);
std::string config_to_string(const ModelConfig& c);  // pretty-printed JSON
void save_config(const std::string& path, const ModelConfig& c);  // atomic

// Throws mf::Error "[config] <source>: field '<name>': <problem>" for the
// first problem found.
void validate_config(const ModelConfig& c, const std::string& source = "config");

// The built-in Llama-style config that `modformer train` uses without
// --config: byte vocabulary, sized to train well on 2 cores in ~10 minutes.
ModelConfig default_config();

// Names as written in JSON.
std::string norm_kind_name(NormKind k);
std::string norm_placement_name(NormPlacement p);
std::string ffn_kind_name(FfnKind k);
std::string position_kind_name(PositionKind p);
std::string activation_name(Activation a);
std::string rope_scaling_type_name(RopeScalingType t);

}  // namespace mf
