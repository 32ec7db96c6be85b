// The config-driven decoder-only language model: token embedding (tied or
// not), optional absolute positions, N decoder blocks, final norm (absent
// with post-norm, whose blocks end normalized), and the LM head through the
// fused chunked cross-entropy of src/nn/loss/. Every piece has an explicit
// backward; optional per-block gradient checkpointing keeps only the block
// inputs and recomputes each block in the backward.
//
// Parameter (= checkpoint) names. model_type "llama" uses exactly Hugging
// Face LlamaForCausalLM's; other configs use the same scheme, extended:
//   model.embed_tokens.weight [V, C]          model.embed_positions.weight [P, C] (learned)
//   model.layers.N.self_attn.{q,k,v,o}_proj.weight [out, in]   (.bias with attention_bias)
//   model.layers.N.mlp.{gate,up,down}_proj.weight              (.bias with mlp_bias; mlp: up, down only)
//   norms (.weight, and .bias for LayerNorm), by placement:
//     pre:      model.layers.N.input_layernorm (before attention), .post_attention_layernorm (before the FFN)
//     sandwich: .input_layernorm, .post_attention_layernorm (on the attention output, before the residual
//               add), .pre_feedforward_layernorm, .post_feedforward_layernorm (Gemma 2's names)
//     post:     .post_attention_layernorm (after the attention residual add), .post_feedforward_layernorm
//   model.norm (pre and sandwich only)        lm_head.weight [V, C] (unless tie_word_embeddings)
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/language_model.h"
#include "nn/block/decoder_block.h"
#include "nn/norm/norm.h"
#include "nn/position/rope.h"

namespace mf {

enum class ParamInit { Normal, Ones, Zeros };

struct ParamSpec {
  std::string name;
  Shape shape;
  ParamInit init;
  bool weight_decay;  // matrices of linear layers (and an untied lm_head); not norms, biases, embeddings
};

// Every parameter of `cfg`, in checkpoint order.
std::vector<ParamSpec> transformer_parameter_specs(const ModelConfig& cfg);

class Transformer : public LanguageModel {
 public:
  // Builds the model of `cfg` (validated) with parameters initialized from
  // `seed`: N(0, initializer_range^2) matrices and embeddings, unit norm
  // weights, zero biases (Hugging Face's Llama init). Each parameter draws its
  // own Philox stream, so the values do not depend on the thread count.
  explicit Transformer(const ModelConfig& cfg, std::uint64_t seed = 0);

  const ModelConfig& config() const { return cfg_; }
  std::vector<Parameter*> parameters() override;
  std::vector<const Parameter*> parameters() const;
  Parameter* find_parameter(const std::string& name);  // null when absent
  std::int64_t vocab_size() const override { return cfg_.vocab_size; }
  std::int64_t num_parameters() const;  // scalars (tied weights counted once)

  double loss(const Tensor& tokens, const Tensor& targets, bool compute_grads) override;
  Tensor logits(const Tensor& tokens) override;
  // With a cache: tokens are the next positions after cache->past_length().
  Tensor logits(const Tensor& tokens, KvCacheHook* cache);
  void save(const std::string& dir) const override;

  // Switches that do not change the math (checkpointing, attention kernel,
  // FFN chunking); the config reflects them.
  void set_gradient_checkpointing(bool on) { cfg_.gradient_checkpointing = on; }
  void set_attention_impl(AttentionImpl impl);
  void set_ffn_chunk_size(std::int64_t rows);

  // Activation bytes kept between the last loss(compute_grads = true)
  // forward and its backward, measured at the end of that forward.
  std::int64_t last_saved_activation_bytes() const { return last_saved_bytes_; }

 private:
  struct Layer {
    BlockParams p;
  };
  struct ForwardState {
    std::int64_t batch = 0, seq_len = 0;
    Tensor tokens;                   // int32 [B, L] contiguous
    std::vector<Tensor> inputs;      // inputs[i]: block i's input [N, C]; inputs[layers]: last output
    std::vector<BlockSaved> blocks;  // per block (empty when checkpointed)
    Tensor hidden;                   // [N, C] final hidden (after the final norm)
    NormSaved final_stats;
  };

  Parameter* param(const std::string& name);  // throws when absent
  void build_layers();
  Tensor prepare_tokens(const Tensor& tokens, const char* what) const;
  // Runs embeddings and blocks; fills `st` when given (training), else keeps nothing.
  Tensor forward_hidden(const Tensor& tokens, ForwardState* st, KvCacheHook* cache);
  void backward_hidden(ForwardState& st, const Tensor& dhidden);
  const Tensor& lm_head_weight() const;
  Parameter* lm_head_param();

  ModelConfig cfg_;
  std::vector<std::unique_ptr<Parameter>> params_;
  std::vector<Layer> layers_;
  std::unique_ptr<RopeTable> rope_;
  Tensor sinusoidal_;  // [P, C] (position "sinusoidal")
  NormParams final_norm_;
  std::int64_t last_saved_bytes_ = 0;
};

}  // namespace mf
