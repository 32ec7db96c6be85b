// Two-layer MLP feed-forward (Vaswani et al. 2017; GELU as in BERT/GPT-2):
// out = act(x W1^T + b1) W2^T + b2, W1 = up [I, C], W2 = down [C, I]. Forward
// saves the pre-activation; the backward recomputes the activation.
#pragma once
#include "nn/ffn/ffn.h"

namespace mf {

// The pre-activations only (what the forward saves); the chunked path
// recomputes them in the backward.
void mlp_ffn_preactivations(FfnSaved& saved, const Tensor& in /* [N, C] */, const FfnParams& p);

void mlp_ffn_forward(const Tensor& out,  // [N, C] (written)
                     FfnSaved& saved,    // up: [N, I] pre-activation (allocated here)
                     const Tensor& in,   // [N, C]
                     const FfnParams& p);

void mlp_ffn_backward(const Tensor& din,   // [N, C] (overwritten)
                      const Tensor& dout,  // [N, C]
                      const Tensor& in,    // [N, C]
                      const FfnSaved& saved, const FfnParams& p);

}  // namespace mf
