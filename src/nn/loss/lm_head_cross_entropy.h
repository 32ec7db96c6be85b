// The LM head fused with softmax cross-entropy: loss = mean_i CE(h_i W^T, t_i)
// over the rows whose target is not ignored (< 0). Rows are processed in chunks
// so that at most [chunk_rows x V] logits exist at once (the chunked-loss idea
// of Liger-Kernel / Cut Cross-Entropy, here on the CPU); the gradient of the
// mean loss is known before the loss itself, so forward and backward share one
// pass and each chunk's logits become its dlogits in place.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace mf {

// Rows per chunk: 256 keeps [256 x V] logits in L2-sized pieces for byte
// vocabularies and bounds the scratch at 256*V*4 bytes for large ones.
inline constexpr std::int64_t kLmHeadChunkRows = 256;

// hidden: float32 [N, H]; weight: float32 [V, H] (Hugging Face lm_head layout);
// targets: int32 [N], < 0 ignored, else < V. Returns the mean loss in nats over
// the non-ignored rows (0 when every row is ignored).
double lm_head_cross_entropy_forward(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                     std::int64_t chunk_rows = kLmHeadChunkRows);

// As the forward, and with g = grad_loss (d outer / d mean loss):
//   dhidden [N, H]  = g * dL/dhidden   (overwritten; ignored rows get 0)
//   dweight [V, H] += g * dL/dweight   (accumulated)
double lm_head_cross_entropy_forward_backward(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                              Tensor& dhidden, Tensor& dweight, float grad_loss = 1.0f,
                                              std::int64_t chunk_rows = kLmHeadChunkRows);

namespace reference {
// Full [N, V] logits, log-softmax and gradients in double; the specification.
// dhidden / dweight may be null; same overwrite / accumulate contract.
double lm_head_cross_entropy(const Tensor& hidden, const Tensor& weight, const Tensor& targets, Tensor* dhidden,
                             Tensor* dweight, double grad_loss = 1.0);
}  // namespace reference

}  // namespace mf
