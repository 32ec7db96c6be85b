// Position-wise feed-forward networks of a block, one front door for the
// three kinds: GELU MLP (Vaswani et al. 2017 / GPT-2), SwiGLU and GeGLU
// (Shazeer, "GLU Variants Improve Transformer", 2020), optionally chunked over
// the tokens (Kitaev et al., "Reformer", 2020): chunks of `chunk_size` rows are
// computed one at a time and their [chunk, I] intermediates are recomputed in
// the backward instead of stored, so activation memory is O(chunk * I) not
// O(N * I), at the price of re-running the up projections in the backward.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "nn/parameter.h"

namespace mf {

// None: a block without a channel mixer (Mamba's blocks: norm, mixer, residual).
// MoE: the mixture-of-experts channel mixer (src/nn/moe/), whose experts are
// FFNs of the other kinds; never an ffn_forward kind itself.
enum class FfnKind { SwiGLU, GeGLU, MLP, None, MoE };
// silu (= swish); gelu (erf); gelu_tanh (HF "gelu_new" / "gelu_pytorch_tanh").
enum class Activation { SiLU, GELU, GELUTanh };

struct FfnParams {
  FfnKind kind = FfnKind::SwiGLU;
  Activation act = Activation::SiLU;  // SwiGLU: SiLU; GeGLU: GELU/GELUTanh; MLP: any
  Parameter* gate = nullptr;          // [I, C] (gated kinds only)
  Parameter* up = nullptr;            // [I, C]
  Parameter* down = nullptr;          // [C, I]
  Parameter* gate_bias = nullptr;     // [I] or null
  Parameter* up_bias = nullptr;       // [I] or null
  Parameter* down_bias = nullptr;     // [C] or null
  std::int64_t chunk_size = 0;        // rows per chunk; 0 = all rows at once

  std::int64_t hidden() const { return up->value.size(1); }
  std::int64_t intermediate() const { return up->value.size(0); }
};

// Saved by the unchunked forward: the pre-activations (the activated product
// is recomputed in the backward). Chunked: nothing (all recomputed).
struct FfnSaved {
  Tensor gate;  // [N, I] x Wg^T + bg (gated kinds)
  Tensor up;    // [N, I] x Wu^T + bu
};

// Checks parameter shapes against the kind; errors name the parameter.
void ffn_check_params(const FfnParams& p);

void ffn_forward(const Tensor& out,  // [N, C] (written)
                 FfnSaved& saved,
                 const Tensor& in,   // [N, C]
                 const FfnParams& p);

// din overwritten; every parameter gradient accumulates (+=).
void ffn_backward(const Tensor& din,   // [N, C]
                  const Tensor& dout,  // [N, C]
                  const Tensor& in,    // [N, C] (the forward's input)
                  const FfnSaved& saved, const FfnParams& p);

}  // namespace mf
