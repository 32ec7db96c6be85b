// Softmax cross-entropy on given logits, mean over the targets that are not
// ignored (target < 0), as torch.nn.functional.cross_entropy(ignore_index=...).
// The plain form for tests and evaluation; the LM head uses the fused, chunked
// lm_head_cross_entropy instead, which never holds all [N, V] logits.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace mf {

// logits: float32 [N, V]; targets: int32 [N] (< 0 ignored, else < V).
// Returns the mean loss in nats over the non-ignored rows (0 when every row is
// ignored; torch gives NaN there). When dlogits is given ([N, V], overwritten),
// writes grad_scale * d(mean loss)/d(logits); ignored rows get zeros.
double softmax_cross_entropy(const Tensor& logits, const Tensor& targets, Tensor* dlogits = nullptr,
                             float grad_scale = 1.0f);

// Number of targets that are not ignored (>= 0); checks dtype and rank.
std::int64_t count_targets(const Tensor& targets, const char* op);

}  // namespace mf
