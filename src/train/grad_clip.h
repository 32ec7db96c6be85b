// Global L2-norm gradient clipping (Pascanu et al. 2013; torch's
// clip_grad_norm_): g *= max_norm / (norm + 1e-6) when that factor is < 1.
// The norm is summed in double over fixed blocks, so it has the same bits for
// any thread count; a NaN/Inf norm leaves the gradients untouched.
#pragma once
#include <vector>

#include "nn/parameter.h"

namespace mf {

// sqrt(sum over all parameters of sum(grad^2)), in double.
double global_grad_norm(const std::vector<Parameter*>& params);

// Returns the norm before clipping. max_norm <= 0 disables clipping. When the
// norm is NaN or Inf nothing is changed and the caller must check (std::isfinite).
double clip_grad_norm(const std::vector<Parameter*>& params, double max_norm);

// grad *= factor for every parameter (gradient accumulation averages with it).
void scale_grads(const std::vector<Parameter*>& params, float factor);
// grad = 0 for every parameter.
void zero_grads(const std::vector<Parameter*>& params);

}  // namespace mf
