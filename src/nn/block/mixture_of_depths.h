// Mixture of Depths (Raposo et al. 2024, "Mixture-of-Depths: Dynamically
// allocating compute in transformer-based language models"): a router around
// a whole block (any token mixer + channel mixer) that sends only the top
// `capacity` fraction of each sequence through it; the other tokens skip it
// by the residual.
//
// Training (and every call without a generation state), per batch row b:
//   r_i   = w_r · x_i (+ b_r with "router_bias")            router logit, [C] weight
//   g_i   = r_i ("router_activation": "linear", the paper)  or sigmoid(r_i)
//   S_b   = the k = ceil(capacity * L - 1e-9) positions of largest r_i (clamped
//           to [1, L]); ties go to the earlier position; padding positions
//           (key padding mask 0) rank after every real one
//   x̃     = x[S_b] in sequence order ([k, C]); the block runs on it with the
//           tokens' original positions (explicit position ids for RoPE; the
//           causal mask over x̃ is the original one restricted to S_b)
//   out_i = x_i + g_i * (block(x̃)_j - x̃_j)  for i = S_b[j]      (the paper's
//           x_i + r_i f_i(X̃): the block's residual update scaled by g_i)
//   out_i = x_i                              for i not in S_b
// Backward through the block, the gather/scatter and the router (the
// selection itself has no gradient: tokens outside S_b give r_i none).
//
// Top-k over the sequence is not causal (whether token i is routed depends
// on later tokens). For generation the paper's second method is used: a
// causal predictor, a small MLP on stop-gradient(x_i),
//   p_i = w2 · silu(W1 x_i + b1) + b2,
// trained by a binary cross-entropy against top-k membership t_i = [i in S_b],
//   aux = predictor_loss_coef * mean_i (softplus(p_i) - t_i p_i),
// whose gradient reaches only the predictor (an auxiliary loss, not part of
// the LM loss). Every call with a generation state (prefill and steps alike)
// routes token i through the block iff sigmoid(p_i) > 0.5, i.e. p_i > 0, and
// weights it by g_i as above. A skipped token is absent from this layer's
// state: it writes no KV-cache entry (nor any recurrent state update), so
// later routed tokens of the layer attend only to earlier routed ones, as
// the routing implies. Each batch row keeps its own inner state (rows route
// different numbers of tokens), so a prefill of L tokens equals L one-token
// steps.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nn/block/block.h"

namespace mf {

enum class RouterActivation { Linear, Sigmoid };

struct ModOptions {
  double capacity = 0.125;        // fraction of each sequence routed through the block, (0, 1]
  std::int64_t every = 2;         // layers l with l % every == every - 1 are routed (1, 3, 5, ... for 2)
  RouterActivation router_activation = RouterActivation::Linear;
  bool router_bias = false;       // mod_router.bias [1] (0 at init); the paper has none
  bool predictor = true;          // the causal predictor (needed to generate)
  std::int64_t predictor_hidden = 64;
  double predictor_loss_coef = 0.1;
};

// The strict schema of the config's "mixture_of_depths" object.
const std::vector<OptionSpec>& mod_option_schema();
// From a complete options object (parse_options against the schema).
ModOptions mod_options_from_json(const nlohmann::json& complete);
// Whether layer l is routed.
inline bool mod_routes_layer(const ModOptions& o, std::int64_t layer) { return layer % o.every == o.every - 1; }
// k = ceil(capacity * L - 1e-9) clamped to [1, L] (the 1e-9 keeps 0.1 * 30 at 3).
std::int64_t mod_capacity_tokens(double capacity, std::int64_t seq_len);

// Parameters, named relative to the layer:
//   mod_router.weight [C]        (+ mod_router.bias [1] with router_bias)
//   mod_predictor.fc1.weight [H, C], .fc1.bias [H], .fc2.weight [1, H], .fc2.bias [1]  (with predictor)
struct ModParams {
  ModOptions opt;
  Parameter* router_w = nullptr;
  Parameter* router_b = nullptr;  // null without router_bias
  Parameter *pred_w1 = nullptr, *pred_b1 = nullptr, *pred_w2 = nullptr, *pred_b2 = nullptr;  // null without predictor
};

// Registers the parameters (after the block's own, in this order).
ModParams mod_make_params(const ModOptions& opt, std::int64_t hidden_size, ParamStore& store);

struct ModSaved {
  std::int64_t k = 0;       // routed tokens per row
  Tensor router;            // [N] r_i
  Tensor selected;          // int32 [B, k] routed positions, ascending per row
  Tensor x_routed;          // [B*k, C] x̃
  Tensor update;            // [B*k, C] block(x̃) - x̃
  BlockSaved inner;         // the block's saved state on x̃
  MixerCall inner_call;     // the call the block ran with (batch B, seq_len k, position ids)
  Tensor predictor_hidden;  // [N, H] W1 x + b1 (pre-activation), when a predictor exists
  Tensor predictor_logit;   // [N] p_i
  double aux_loss = 0;      // predictor_loss_coef * mean BCE
  double predictor_accuracy = 0;  // fraction of tokens with (p_i > 0) == t_i

  void clear() { *this = ModSaved{}; }
};

// A routed layer's generation state: per batch row, the block's own state
// (batch 1) holding only that row's routed tokens.
class ModState final : public MixerState {
 public:
  std::vector<std::unique_ptr<MixerState>> rows;
  std::vector<std::int64_t> routed;  // tokens each row's inner state holds
  std::int64_t bytes() const override;
  void reset() override;
};
std::unique_ptr<MixerState> mod_new_state(const BlockParams& block, const ModParams& p, const GenerationOptions& opt);

// Returns out [N, C] from x [N, C], N = call.batch * call.seq_len. Without
// call.state: top-k routing (keeps what the backward needs when
// for_backward); with it (a ModState): predictor routing, nothing kept.
Tensor mod_forward(ModSaved& saved, const Tensor& x, const BlockParams& block, const ModParams& p,
                   const MixerCall& call, bool for_backward = true);
// Returns dx [N, C]; parameter gradients accumulate (+=): the block's, the
// router's and, from the auxiliary loss, the predictor's.
Tensor mod_backward(const Tensor& dy, const Tensor& x, const ModSaved& saved, const BlockParams& block,
                    const ModParams& p, const MixerCall& call);
// Bytes held by `saved` not yet in `seen`.
std::int64_t mod_saved_bytes(const ModSaved& saved, std::set<const void*>& seen);

namespace reference {
// The plain twin of the training forward: per row a naive selection
// (sort by (-r, position)), a gather loop, block_forward, a scatter loop;
// returns out [N, C]. The predictor is not involved.
Tensor mod_forward(const Tensor& x, const BlockParams& block, const ModParams& p, const MixerCall& call);
}  // namespace reference

}  // namespace mf
