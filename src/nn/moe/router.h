// The MoE router library: which experts each token goes to and with what
// weight, and the routers' auxiliary losses. One formula covers the four
// routers of the literature. Per token t with clean logits z = x Wg^T [E]:
//   routing logits  r = z                                 (softmax_topk, switch, deepseek)
//                   r = z + eps * softplus(x Wn^T)         (noisy_topk, training only; Shazeer et al. 2017,
//                                                           eps ~ N(0, 1) from Philox (seed, step, layer))
//   p = softmax(r) over all E experts; the k largest p are chosen (ties: lower expert first), in
//   descending order; chosen expert j gets the gate weight
//                   w_j = s * p_j / D,   D = sum of the k chosen p when renormalizing, else 1,
//   with s = routed_scaling_factor and renormalizing:
//     softmax_topk (Mixtral): norm_topk_prob (default true; HF Mixtral always renormalizes)
//     switch (Fedus et al. 2021): k = 1, never (w = p of the top expert)
//     noisy_topk: always (Shazeer's softmax over the kept top-k of H)
//     deepseek (DeepSeek-V2/V3 greedy): norm_topk_prob and k > 1 (the V3 rule: scale applied after the
//       normalization; V2's code skips the scale when it normalizes, which differs only when both are on)
// Capacity (capacity_factor f > 0; any router): each expert takes at most ceil(f * k * N / E)
// assignments, admitted in (slot, token) order: every token's first choice before any second choice,
// tokens in order (GShard's priority; Switch's ceil(f * N / E) at k = 1). An assignment over capacity
// is dropped: weight 0, no expert runs, and a token with every choice dropped passes through the
// residual (the layer adds 0).
// Auxiliary losses, from the clean logits z (q = softmax(z); for every router but noisy_topk q = p):
//   load balancing  L_bal = alpha * E * sum_i f_i P_i   (Switch; HF Mixtral's load_balancing_loss_func per
//                   layer), f_i = (tokens whose k choices include i) / N, counted before capacity drops
//                   (sum_i f_i = k), P_i = mean_t q_ti; f carries no gradient.
//   router z-loss   L_z = beta * mean_t (logsumexp_i z_ti)^2   (Zoph et al. 2022, ST-MoE)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace mf {

enum class RouterKind { SoftmaxTopK, Switch, NoisyTopK, DeepSeek };

RouterKind parse_router_kind(const std::string& name, const std::string& prefix);  // errors list the names
std::string router_kind_name(RouterKind k);

struct RouterOptions {
  RouterKind kind = RouterKind::SoftmaxTopK;
  std::int64_t num_experts = 8;
  std::int64_t top_k = 2;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  double capacity_factor = 0.0;  // 0: no capacity limit
  double aux_loss_coef = 0.0;    // alpha
  double z_loss_coef = 0.0;      // beta

  bool renormalizes() const;
  // Refuses impossible combinations, naming the option (prefix e.g. "[moe] ").
  void validate(const std::string& prefix) const;
  // Most assignments one expert takes from n tokens (n * top_k when unlimited).
  std::int64_t capacity(std::int64_t n) const;
};

// What the router decided and what its backward needs.
struct RouterSaved {
  std::int64_t tokens = 0;
  Tensor logits;         // [N, E] clean logits z = x Wg^T
  Tensor noise_logits;   // [N, E] x Wn^T (noisy_topk with noise), else undefined
  Tensor noise;          // [N, E] the standard normal draws used (noisy_topk with noise), else undefined
  Tensor probs;          // [N, E] p = softmax(routing logits)
  std::vector<std::int32_t> expert;  // [N * k] chosen expert of slot (t, j), descending p
  std::vector<float> weight;         // [N * k] gate weight w (0 when dropped)
  std::vector<std::uint8_t> kept;    // [N * k] 1: admitted under capacity
  std::vector<std::int64_t> load;    // [E] kept assignments per expert
  std::vector<double> chosen_fraction;  // [E] f_i (before capacity)
  std::int64_t dropped = 0;             // assignments over capacity
  double balance_loss = 0, z_loss = 0;  // weighted by their coefficients
};

// Routes x [N, C]: z = x Wg^T with w_gate [E, C]; noisy_topk with a defined
// `noise` [N, E] also needs w_noise [E, C] (an undefined noise: no noise, as
// at evaluation). Fills every field of `saved`.
void router_forward(RouterSaved& saved, const Tensor& x, const Tensor& w_gate, const Tensor& w_noise,
                    const Tensor& noise, const RouterOptions& opt);

// From dweight [N * k] (dLoss/dw of every slot; dropped slots ignored), adds
// the auxiliary losses' gradients and returns dLoss/dz in dlogits [N, E]
// (overwritten) and, with noise, dLoss/d(x Wn^T) in dnoise_logits [N, E]
// (overwritten; else untouched).
void router_backward(const Tensor& dlogits, const Tensor& dnoise_logits, const std::vector<float>& dweight,
                     const RouterSaved& saved, const RouterOptions& opt);

}  // namespace mf
