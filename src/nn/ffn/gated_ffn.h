// Gated feed-forward (Shazeer 2020): out = (act(x Wg^T) * (x Wu^T)) Wd^T with
// act = SiLU (SwiGLU, Llama) or GELU (GeGLU); biases optional. Forward saves
// the two pre-activations; the backward recomputes their product.
#pragma once
#include "nn/ffn/ffn.h"

namespace mf {

// The pre-activations only (what the forward saves); the chunked path
// recomputes them in the backward.
void gated_ffn_preactivations(FfnSaved& saved, const Tensor& in /* [N, C] */, const FfnParams& p);

void gated_ffn_forward(const Tensor& out,  // [N, C] (written)
                       FfnSaved& saved,    // gate, up: [N, I] (allocated here)
                       const Tensor& in,   // [N, C]
                       const FfnParams& p);

void gated_ffn_backward(const Tensor& din,   // [N, C] (overwritten)
                        const Tensor& dout,  // [N, C]
                        const Tensor& in,    // [N, C]
                        const FfnSaved& saved, const FfnParams& p);

// The activated product h = act(gate) * up for the given activation.
void gated_activation_forward(const Tensor& h, const Tensor& gate, const Tensor& up, Activation act);

}  // namespace mf
