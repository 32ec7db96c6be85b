// The token-mixer interface: the part of a block that mixes along the
// sequence (exact attention, FNet, Linformer, and every mechanism to come).
// A mixer owns its parameters (asked from a ParamStore under checkpoint
// names), a forward that returns an explicit saved state and a backward that
// reads it (llm.c style), its capability flags (so that an impossible config
// is refused by name), and, where it can generate, a per-layer generation
// state whose prefill and steps equal the full forward. A technique becomes a
// mixer through one TokenMixerEntry in src/nn/mixer/mixer_registry.cpp.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "nn/attention/attention.h"
#include "nn/ffn/ffn.h"
#include "nn/mixer/mixer_options.h"
#include "nn/mixer/param_store.h"
#include "nn/position/rope.h"

namespace mf {

// The model-level fields a mixer may read (each mixer reads those it needs),
// and its own options object, parsed against its schema (every option set).
struct MixerContext {
  std::int64_t layer = 0;
  std::int64_t hidden_size = 0;
  std::int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t max_position_embeddings = 0;
  std::int64_t sliding_window = 0;  // sliding_attention layers: a token sees itself and the W - 1 before it
  bool attention_bias = false, mlp_bias = false;
  Activation hidden_act = Activation::SiLU;
  std::int64_t ffn_chunk_size = 0;
  AttentionImpl attention_impl = AttentionImpl::Flash;
  RopeTable* rope = nullptr;  // RoPE on queries and keys (owned by the model), or null
  bool alibi = false;
  double initializer_range = 0.02;
  double rms_norm_eps = 1e-6;  // norms inside a mixer (MLA's q_a_layernorm, kv_a_layernorm)
  nlohmann::json options = nlohmann::json::object();
};

struct MixerCapabilities {
  bool causal = false;           // runs causally (a token sees itself and earlier ones): decoders
  bool bidirectional = false;    // runs without a causal mask: encoders
  bool generation = false;       // has a per-layer generation state (prefill + steps)
  bool variable_length = false;  // any sequence length per call (up to max_seq_len), not one fixed length
  bool padding = false;          // honours a key padding mask
  bool segment_memory = false;   // keeps a memory of earlier segments across calls (Transformer-XL): see MixerCall::memory
  bool position_ids = false;     // honours explicit position ids (MixerCall::position_ids)
};

// Where a call sits.
struct MixerCall {
  std::int64_t batch = 0, seq_len = 0;  // x is [batch * seq_len, C], token-major
  bool causal = true;
  Tensor key_padding_mask;      // int32 [B, L], nonzero = token, 0 = padding; undefined: none
  class MixerState* state = nullptr;  // generation: this layer's state (forward only)
  std::int64_t past = 0;        // positions before this call (generation)
  // Batched decode (TokenMixer::forward_rows): row i of x is the next position
  // row_past[i] of its own sequence, whose state is row_states[i]; seq_len 1,
  // batch = the rows, `state` null. Null: an ordinary call.
  class MixerState* const* row_states = nullptr;
  const std::int64_t* row_past = nullptr;
  // Segment-level recurrence (mixers with segment_memory; training and
  // evaluation): this layer's memory of the previous segments, made by
  // TokenMixer::new_memory. The forward reads it as a constant (no gradient
  // reaches it) and then moves it on to include this segment; a training
  // forward's saved state keeps what its backward needs.
  class MixerState* memory = nullptr;
  // int32 [B, L]: each row's absolute position (Mixture of Depths runs a
  // block on routed tokens that keep their original positions); undefined:
  // past + l. Refused by mixers without the position_ids capability.
  Tensor position_ids;
};

// What a forward keeps for its backward.
class MixerSaved {
 public:
  virtual ~MixerSaved() = default;
  // Every tensor held (the caller counts each storage once: saved-bytes accounting).
  virtual void tensors(std::vector<const Tensor*>& out) const = 0;
};

// A layer's generation state: KV cache, rolling window, recurrent state,
// latent cache, segment memory.
class MixerState {
 public:
  virtual ~MixerState() = default;
  virtual std::int64_t bytes() const = 0;  // memory held
  virtual void reset() = 0;                // forget every position (storage is kept)
};

struct GenerationOptions {
  std::int64_t batch = 1;
  std::int64_t capacity = 0;  // most positions (prompt + fed-back tokens); 0: max_position_embeddings
  bool copy_out = false;      // KV caches: return packed copies instead of views (a benchmark baseline)
};

class TokenMixer {
 public:
  // limits: why a capability is missing, appended to refusals.
  TokenMixer(std::string name, MixerCapabilities caps, std::string limits = "")
      : name_(std::move(name)), caps_(caps), limits_(std::move(limits)) {}
  virtual ~TokenMixer() = default;

  const std::string& name() const { return name_; }
  const MixerCapabilities& capabilities() const { return caps_; }

  // y [B*L, C] (written) from x [B*L, C]. Returns the saved state when
  // for_backward (a training forward), else null. With call.state the call
  // continues a generation (positions past .. past + L - 1).
  virtual std::unique_ptr<MixerSaved> forward(const Tensor& y, const Tensor& x, const MixerCall& call,
                                              bool for_backward) = 0;
  // dx [B*L, C] overwritten; parameter gradients accumulate (+=).
  virtual void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MixerSaved& saved,
                        const MixerCall& call) = 0;
  // A fresh generation state; refused (naming the mixer) when it cannot generate.
  virtual std::unique_ptr<MixerState> new_state(const GenerationOptions& opt) const;
  // Batched decode: y [n, C] (written) from x [n, C], row i one new position
  // of the sequence whose batch-1 state is call.row_states[i] (see MixerCall).
  // Each row must get what forward gives it alone. Default: forward on each
  // row in turn; a mixer overrides it to share its weight reads across rows.
  virtual void forward_rows(const Tensor& y, const Tensor& x, const MixerCall& call);
  // A fresh (empty) segment memory for `batch` streams (MixerCall::memory);
  // null for mixers without segment_memory.
  virtual std::unique_ptr<MixerState> new_memory(std::int64_t batch) const {
    (void)batch;
    return nullptr;
  }

  // Training step `step` begins (from the model's begin_training_step):
  // a mixer with per-step state (feature redraws) updates it here. Never
  // called in evaluation or generation.
  virtual void begin_training_step(std::int64_t step) { (void)step; }

  // Auxiliary training losses (any mixer or router may have some: MoE load
  // balancing and z-loss, Mixture of Depths' router): the sum of the
  // coefficient-weighted auxiliary losses of the last forward in training
  // mode (ChannelMixer::set_training), whose gradient the backward adds to the
  // parameter and input gradients; 0 when none. The model's loss() returns
  // the task loss alone (so bits/byte stay comparable); the trainer logs this
  // beside it. aux_metrics: that forward's statistics for metrics.jsonl (a
  // JSON object, e.g. per-expert load; empty when none).
  virtual double aux_loss() const { return 0.0; }
  virtual nlohmann::json aux_metrics() const { return nlohmann::json::object(); }

  // The exact-attention kernel (flash or dense) for mixers that use one; a
  // switch that does not change the math. Others ignore it.
  virtual void set_attention_impl(AttentionImpl impl) { (void)impl; }

  // Refuses a call this mixer cannot serve (causal or not, padding,
  // generation), naming the mixer. Every forward starts with it.
  void check_call(const MixerCall& call) const;

 private:
  std::string name_;
  MixerCapabilities caps_;
  std::string limits_;
};

// One registration per technique.
struct TokenMixerEntry {
  std::string name;     // layer_types / token_mixer value, and its options object's key
  std::string summary;  // one line for `modformer mixers`
  MixerCapabilities caps;
  std::string limits;   // why a capability is missing (shown in refusals), or ""
  std::vector<OptionSpec> options;
  std::function<std::unique_ptr<TokenMixer>(const MixerContext& ctx, ParamStore& params)> make;
};

}  // namespace mf
