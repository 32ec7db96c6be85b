// Sparse mixture of experts (Shazeer et al. 2017; Switch, Fedus et al. 2021;
// Mixtral, Jiang et al. 2024; DeepSeekMoE, Dai et al. 2024):
//   y_t = sum over token t's kept choices j of w_tj * Expert_{e_tj}(x_t)  +  Shared(x_t)
// with the router of router.h (choices e_tj, gate weights w_tj, capacity
// drops) and experts that are FFNs of the existing kinds (ffn.h: SwiGLU,
// GeGLU, GELU MLP); Shared is DeepSeek's always-on shared-experts MLP (width
// n_shared_experts * moe_intermediate_size), absent when n_shared_experts = 0.
// Compute: kept assignments are grouped by expert (counting sort, stable in
// token order), gathered into one [R, C] tensor with each expert's rows
// contiguous, each expert runs ffn_forward once over its rows (one GEMM per
// projection per expert, no per-token loop), and the weighted outputs are
// scattered back per token in slot order (deterministic at any thread
// count). The backward runs each expert's ffn_backward over its rows, the
// router's backward through the gate weights (plus the auxiliary losses'
// gradients) and the gate GEMMs.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "nn/ffn/ffn.h"
#include "nn/moe/router.h"

namespace mf {

struct MoeParams {
  RouterOptions router;
  Parameter* gate = nullptr;        // [E, C] router weight
  Parameter* gate_noise = nullptr;  // [E, C] noisy_topk's noise weight, else null
  std::vector<FfnParams> experts;   // E routed experts
  FfnParams shared;                 // shared experts (shared.up null: none)

  bool has_shared() const { return shared.up != nullptr; }
  std::int64_t hidden() const { return gate->value.size(1); }
};

struct MoeSaved {
  RouterSaved router;
  std::vector<std::int64_t> offset;  // [E + 1] first row of each expert in the grouped tensors
  std::vector<std::int64_t> row;     // [N * k] grouped row of assignment t * k + j (-1: dropped)
  Tensor grouped_in;                 // [R, C] inputs gathered by expert (R = kept assignments)
  Tensor grouped_out;                // [R, C] expert outputs before the gate weight
  std::vector<FfnSaved> experts;     // per expert (rows offset[e] .. offset[e + 1])
  FfnSaved shared;
};

// Checks the parameters (router options, shapes, experts of one kind); errors name the tensor.
void moe_check_params(const MoeParams& p);

// y [N, C] (written) from x [N, C]. noise [N, E]: noisy_topk's standard
// normal draws (undefined: no noise, as at evaluation).
void moe_forward(const Tensor& y, MoeSaved& saved, const Tensor& x, const MoeParams& p, const Tensor& noise);

// dx [N, C] overwritten; parameter gradients accumulate (+=), the auxiliary
// losses' gradients included.
void moe_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MoeSaved& saved, const MoeParams& p);

// The router's part of the backward, shared by both twins: from dweight
// [N * k] writes dx = dLoss/dx through the gate (and noise) projections
// (overwritten) and accumulates the gate (and noise) weight gradients.
void moe_router_backward(const Tensor& dx, const std::vector<float>& dweight, const Tensor& x,
                         const RouterSaved& router, const MoeParams& p);

namespace reference {
// The plain twin: a loop over tokens, each kept choice running its expert on
// that one row (the specification of the grouped compute). Only
// saved.router is filled and read.
void moe_forward(const Tensor& y, MoeSaved& saved, const Tensor& x, const MoeParams& p, const Tensor& noise);
void moe_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MoeSaved& saved, const MoeParams& p);
}  // namespace reference

}  // namespace mf
