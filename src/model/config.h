// The JSON model config: Hugging Face config.json field names where HF has
// them (LlamaConfig), plus our own fields for the switches HF has no name for.
// Parsing is strict: unknown fields, wrong types, out-of-range values and
// impossible combinations are errors that name the field.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nn/attention/attention.h"
#include "nn/ffn/ffn.h"
#include "nn/norm/norm.h"

namespace mf {

// pre: x + f(norm(x)) (GPT-2/Llama); post: norm(x + f(x)) (original
// Transformer, BERT); sandwich: x + norm_b(f(norm_a(x))) (CogView, Gemma 2).
enum class NormPlacement { Pre, Post, Sandwich };
// rope: rotate-half pairs (i, i + D/2) as in GPT-NeoX/Llama; rope_interleaved:
// pairs (2i, 2i + 1) as in the RoFormer paper.
enum class PositionKind { RoPE, RoPEInterleaved, ALiBi, Sinusoidal, Learned, None };
enum class RopeScalingType { None, Linear, NTK, Dynamic, YaRN };

struct RopeScalingConfig {
  RopeScalingType type = RopeScalingType::None;
  double factor = 1.0;
  std::int64_t original_max_position_embeddings = 0;  // 0: max_position_embeddings
  double beta_fast = 32.0, beta_slow = 1.0;           // YaRN ramp bounds (rotations)
  double attention_factor = 0.0;                      // YaRN; 0: 0.1 ln(factor) + 1
  // YaRN as DeepSeek-V2 (RopeConfig::mscale): absent unless given.
  std::optional<double> mscale, mscale_all_dim;
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
  // Reversible residual blocks (src/nn/block/reversible_block.h): two
  // streams, Y1 = X1 + F(X2), Y2 = X2 + G(Y1), both starting as the
  // embeddings and averaged before the final norm (as reformer-pytorch);
  // the backward reconstructs each block's inputs instead of storing them.
  bool reversible = false;
  // Mixture of Depths (src/nn/block/mixture_of_depths.h): null, or the
  // complete "mixture_of_depths" options object (capacity, every, ...):
  // routed layers run their block on the top-capacity tokens only.
  nlohmann::json mixture_of_depths;
  double initializer_range = 0.02;
  // Blocks from mixers (src/nn/mixer/): the token mixer of every layer, or
  // one per layer in layer_types (Hugging Face's field, as in Gemma 3 and
  // Qwen3-Next: "full_attention", "sliding_attention", "fnet", ...). Empty
  // token_mixer: "sliding_attention" when sliding_window is set, else
  // "full_attention". Each mixer's options sit in an object under its name
  // ("linformer": {"k": 128}), parsed against its schema (every option set).
  std::string token_mixer;
  std::vector<std::string> layer_types;
  std::map<std::string, nlohmann::json> mixer_options;
  // Encoders: is_decoder false gives bidirectional blocks and a pooled
  // sequence-classification head of num_labels classes instead of the LM head.
  bool is_decoder = true;
  std::int64_t num_labels = 0;
  std::string classifier_pooling = "mean";  // "mean" over non-padding tokens, or "first"

  std::int64_t q_dim() const { return num_attention_heads * head_dim; }
  std::int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  double norm_eps() const { return norm == NormKind::RMSNorm ? rms_norm_eps : layer_norm_eps; }
  bool uses_rope() const { return position == PositionKind::RoPE || position == PositionKind::RoPEInterleaved; }
  bool is_llama() const { return model_type == "llama"; }
  // The token mixer of layer i (layer_types[i], else token_mixer or its default).
  std::string layer_mixer(std::int64_t i) const;
  // A mixer's options object (complete; {} for a mixer without options).
  nlohmann::json options_of(const std::string& mixer) const;
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
// --config: byte vocabulary (256), hidden 192, 4 layers, 6 query heads of 32
// sharing 2 KV heads (GQA 3:1), SwiGLU 512, RMSNorm pre-norm, RoPE, flash
// attention; 1.67M parameters. Chosen by measurement on the 2-core machine:
// validation bits/byte after 300 AdamW steps (gcide, seq 256, batch 8 =
// 614k tokens, lr 2e-3) and training tokens/s with 2 threads (best step):
//   hidden 128, 4 layers, 2x64 / 1 KV (0.85M):  2.366 bpb  ~24k tok/s
//   hidden 192, 4 layers, 3x64 / 1 KV (1.67M):  2.325 bpb  ~11k tok/s
//   hidden 192, 4 layers, 6x32 / 2 KV (1.67M):  2.367 bpb  ~9.5k tok/s  <- default
//   hidden 192, 4 layers, 4x48 / 2 KV (1.72M):  2.435 bpb  ~8.9k tok/s
//   hidden 192, 6 layers, 3x64 / 1 KV (2.46M):  2.533 bpb
//   hidden 256, 4 layers, 4x64 / 2 KV (3.28M):  2.39 bpb   ~5.3k tok/s
//   hidden 384, 6 layers, 6x64 / 2 KV (9.64M):  -          ~2.3k tok/s
// and hidden 192 3x64/1KV reached 1.861 bpb after 2.05M tokens. Width 192
// learns as fast per token as 256 at twice the speed, so a 10-minute run sees
// ~5M tokens; 6x32 heads with 2 KV heads keep the default a true GQA model
// (3x64 with one KV head, i.e. MQA, measured ~15% faster and 0.04 bpb better
// at equal tokens: a one-line switch if the GQA demonstration is not wanted).
ModelConfig default_config();

// The built-in encoder classifier that `modformer train --task classify` uses
// without --config: default_config()'s widths and blocks (RoPE, GQA,
// RMSNorm pre-norm, SwiGLU, flash attention), bidirectional, mean pooling,
// num_labels classes, positions up to max_len.
ModelConfig default_classifier_config(std::int64_t num_labels, std::int64_t max_len);

// Names as written in JSON.
std::string norm_kind_name(NormKind k);
std::string norm_placement_name(NormPlacement p);
std::string ffn_kind_name(FfnKind k);
std::string position_kind_name(PositionKind p);
std::string activation_name(Activation a);
std::string rope_scaling_type_name(RopeScalingType t);

}  // namespace mf
