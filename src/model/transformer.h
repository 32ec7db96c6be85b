// The config-driven transformer: token embedding (tied or not), optional
// absolute positions, N blocks made of mixers (src/nn/mixer/: a token mixer
// per layer, from layer_types or token_mixer, and the channel mixer of
// "ffn"), final norm (absent with post-norm, whose blocks end normalized),
// and either the LM head of a decoder (through the fused chunked
// cross-entropy of src/nn/loss/) or, for an encoder (is_decoder false), a
// pooled sequence-classification head. Every piece has an explicit backward;
// optional per-block gradient checkpointing keeps only the block inputs and
// recomputes each block in the backward; reversible blocks (config
// "reversible") keep only the last block's two streams and reconstruct every
// block's inputs in the backward (src/nn/block/reversible_block.h).
//
// Parameter (= checkpoint) names. model_type "llama" uses exactly Hugging
// Face LlamaForCausalLM's; other configs use the same scheme, extended:
//   model.embed_tokens.weight [V, C]          model.embed_positions.weight [P, C] (learned)
//   model.layers.N.<token mixer's names>: attention: self_attn.{q,k,v,o}_proj.weight [out, in]
//       (.bias with attention_bias); others: see `modformer mixers`
//   model.layers.N.mlp.{gate,up,down}_proj.weight              (.bias with mlp_bias; mlp: up, down only)
//   norms (.weight, and .bias for LayerNorm), by placement:
//     pre:      model.layers.N.input_layernorm (before the token mixer), .post_attention_layernorm (before the FFN)
//     sandwich: .input_layernorm, .post_attention_layernorm (on the token mixer's output, before the residual
//               add), .pre_feedforward_layernorm, .post_feedforward_layernorm (Gemma 2's names)
//     post:     .post_attention_layernorm (after the token mixer's residual add), .post_feedforward_layernorm
//   model.norm (pre and sandwich only)
//   decoders: lm_head.weight [V, C] (unless tie_word_embeddings)
// model_type "mamba" uses Hugging Face MambaForCausalLM's: backbone.embeddings.weight,
//   backbone.layers.N.norm.weight, backbone.layers.N.mixer.*, backbone.norm_f.weight
//   encoders: classifier.weight [num_labels, C], classifier.bias [num_labels]
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/generation_state.h"
#include "model/language_model.h"
#include "model/sequence_classifier.h"
#include "nn/block/block.h"
#include "nn/block/mixture_of_depths.h"
#include "nn/mixer/param_store.h"
#include "nn/norm/norm.h"
#include "nn/position/rope.h"

namespace mf {

// The RoPE table settings of a config (position "rope"/"rope_interleaved").
RopeConfig rope_config(const ModelConfig& c);
// What the mixers of layer `layer` read from the config (their own options
// included); `rope` is the model's table or null.
MixerContext mixer_context(const ModelConfig& c, std::int64_t layer, const std::string& mixer, RopeTable* rope);

class Transformer : public LanguageModel, public SequenceClassifier {
 public:
  // Builds the model of `cfg` (validated) with parameters initialized from
  // `seed`: N(0, initializer_range^2) matrices and embeddings, unit norm
  // weights, zero biases (Hugging Face's Llama init), unless a mixer asks for
  // its own. Each parameter draws its own Philox stream (its index), so the
  // values do not depend on the thread count.
  explicit Transformer(const ModelConfig& cfg, std::uint64_t seed = 0);

  const ModelConfig& config() const { return cfg_; }
  std::vector<Parameter*> parameters() override;
  std::vector<const Parameter*> parameters() const;
  Parameter* find_parameter(const std::string& name);  // null when absent
  std::int64_t vocab_size() const override { return cfg_.vocab_size; }
  std::int64_t num_labels() const override { return cfg_.num_labels; }
  std::int64_t num_parameters() const;  // scalars (tied weights counted once)

  // Decoders.
  double loss(const Tensor& tokens, const Tensor& targets, bool compute_grads) override;
  Tensor logits(const Tensor& tokens) override;
  // Segment-level recurrence (layers whose token mixer has segment_memory,
  // e.g. transformer_xl): one memory per such layer, null when there is none.
  // loss and segment_logits with it continue each stream by one segment.
  // Refused with gradient checkpointing or reversible blocks (their backward
  // re-runs forwards, which would read a memory that has moved on).
  std::unique_ptr<SegmentMemory> new_segment_memory(std::int64_t batch) override;
  double loss(const Tensor& tokens, const Tensor& targets, bool compute_grads, SegmentMemory* memory) override;
  Tensor segment_logits(const Tensor& tokens, SegmentMemory* memory);
  // With a generation state: tokens are the next positions after state->past_length().
  Tensor logits(const Tensor& tokens, GenerationState* state);
  // Batched decode: tokens[i] is the next position of the sequence of
  // states[i] (batch-1 states, all distinct; their lengths may differ).
  // Returns logits [n, V], row i equal bit for bit to logits({tokens[i]},
  // states[i]); the projections read each weight once for all rows (the
  // mixers' forward_rows), every state advances by one. Reversible models run
  // the rows one after another.
  Tensor logits_rows(std::span<const std::int32_t> tokens, std::span<GenerationState* const> states);
  // One state per layer (refused, naming the layer's mixer, when a mixer
  // cannot generate). capacity 0: max_position_embeddings.
  std::unique_ptr<GenerationState> new_generation_state(const GenerationOptions& opt = {}) const;

  // Encoder classifiers (is_decoder false).
  double classify_loss(const Tensor& tokens, const Tensor& mask, const Tensor& labels, bool compute_grads) override;
  Tensor class_logits(const Tensor& tokens, const Tensor& mask) override;

  void begin_training_step(std::int64_t step) override;
  // Auxiliary losses of the last training forward: the mixers' (MoE) plus the
  // Mixture-of-Depths predictors' (summed over routed layers; their gradient is
  // added by the backward, not part of loss()'s value), and the predictors'
  // accuracy on top-k membership (mean over routed layers).
  bool has_aux_loss() const override;
  double aux_loss() const override;
  nlohmann::json aux_metrics() const override;
  double predictor_accuracy() const { return last_predictor_accuracy_; }
  // Whether layer i is a routed (Mixture-of-Depths) block.
  bool routed_layer(std::int64_t i) const { return layers_.at(static_cast<std::size_t>(i)).mod != nullptr; }
  void save(const std::string& dir) const override;
  // Layer i's token mixer (tests, benchmarks).
  const TokenMixer& token_mixer(std::int64_t i) const { return *layers_.at(static_cast<std::size_t>(i)).token; }
  // Layer i's channel mixer, or null (ffn "none").
  const ChannelMixer* channel_mixer(std::int64_t i) const { return layers_.at(static_cast<std::size_t>(i)).channel.get(); }

  // Switches that do not change the math (checkpointing, attention kernel,
  // FFN chunking); the config reflects them.
  void set_gradient_checkpointing(bool on);
  void set_attention_impl(AttentionImpl impl);
  void set_ffn_chunk_size(std::int64_t rows);

  // Activation bytes kept between the last loss(compute_grads = true)
  // forward and its backward, measured at the end of that forward.
  std::int64_t last_saved_activation_bytes() const { return last_saved_bytes_; }

 private:
  struct Layer {
    std::unique_ptr<TokenMixer> token;
    std::unique_ptr<ChannelMixer> channel;
    BlockParams p;
    std::unique_ptr<ModParams> mod;  // a Mixture-of-Depths routed block, or null
  };
  struct ForwardState {
    std::int64_t batch = 0, seq_len = 0;
    Tensor tokens;                   // int32 [B, L] contiguous
    Tensor mask;                     // int32 [B, L] key padding mask, or undefined (no padding)
    std::vector<Tensor> inputs;      // inputs[i]: block i's input [N, C]; inputs[layers]: last output
                                     // (reversible: only the final norm's input, the streams' mean)
    std::vector<Tensor> reversible_out;  // reversible: the last block's Y1, Y2
    std::vector<BlockSaved> blocks;  // per block (empty when checkpointed)
    std::vector<ModSaved> routed;    // per block: routed blocks' state (empty when checkpointed)
    Tensor hidden;                   // [N, C] final hidden (after the final norm)
    NormSaved final_stats;
  };

  Parameter* param(const std::string& name);  // throws when absent
  std::vector<ChannelMixer*> channel_mixers();
  void build();
  Tensor prepare_tokens(const Tensor& tokens, const char* what) const;
  Tensor prepare_mask(const Tensor& mask, const Tensor& tokens) const;  // undefined when nothing is padded
  MixerCall mixer_call(std::int64_t batch, std::int64_t seq_len, const Tensor& mask) const;
  // Block i forward (routed or not) into `saved` / `routed`, keeping what
  // its backward needs when `keep`; in a training forward a routed block
  // also adds its predictor's auxiliary loss to the running sums.
  Tensor layer_forward(std::size_t i, const Tensor& x, BlockSaved& saved, ModSaved& routed, const MixerCall& call,
                       bool keep, bool training);
  // Runs embeddings and blocks on prepared tokens and mask (prepare_tokens,
  // prepare_mask); fills `st` when given (training), else keeps nothing.
  Tensor forward_hidden(const Tensor& tokens, const Tensor& mask, ForwardState* st, GenerationState* state,
                        SegmentMemory* memory = nullptr);
  void backward_hidden(ForwardState& st, const Tensor& dhidden);
  Tensor logits_of(const Tensor& tokens, GenerationState* state, SegmentMemory* memory);
  void record_saved_bytes(const ForwardState& st);
  // [B, C] pooled hidden states of an encoder (mean over mask, or first token).
  Tensor pool(const Tensor& hidden, const Tensor& mask, std::int64_t batch, std::int64_t seq_len) const;
  const Tensor& lm_head_weight() const;
  Parameter* lm_head_param();

  ModelConfig cfg_;
  ParamList params_;
  std::vector<Layer> layers_;
  std::unique_ptr<RopeTable> rope_;
  Tensor sinusoidal_;  // [P, C] (position "sinusoidal")
  NormParams final_norm_;
  Parameter* embed_ = nullptr;  // the token embedding (and the LM head when tied)
  std::int64_t last_saved_bytes_ = 0;
  std::int64_t aux_layers_ = 0;  // routed layers with a predictor
  double last_aux_loss_ = 0, last_predictor_accuracy_ = 0;
};

}  // namespace mf
