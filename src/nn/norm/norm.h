// The normalization module of a block: LayerNorm (Ba et al. 2016; weight and
// optional bias) or RMSNorm (Zhang & Sennrich 2019; weight only) over the
// hidden dimension, a thin owner of parameters over the fused kernels in
// src/kernels/{layernorm,rmsnorm}.h. Where a norm sits (pre/post/sandwich) is
// the block's business (src/nn/block/residual_sublayer.h).
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "nn/parameter.h"

namespace mf {

enum class NormKind { RMSNorm, LayerNorm };

struct NormParams {
  NormKind kind = NormKind::RMSNorm;
  float eps = 1e-6f;
  Parameter* weight = nullptr;  // [C]
  Parameter* bias = nullptr;    // [C] (LayerNorm only) or null
};

// Statistics saved by the forward for the backward (the input is saved by the caller).
struct NormSaved {
  Tensor mean;  // [N] (LayerNorm only)
  Tensor rstd;  // [N]
};

// out = norm(in). `saved` is filled (allocated here).
void norm_forward(const Tensor& out,  // [N, C] (written)
                  NormSaved& saved,
                  const Tensor& in,   // [N, C]
                  const NormParams& p);

// din = dnorm/din^T dout (overwritten); weight/bias grads accumulate (+=).
void norm_backward(const Tensor& din,   // [N, C] (overwritten)
                   const Tensor& dout,  // [N, C]
                   const Tensor& in,    // [N, C] (the forward's input)
                   const NormSaved& saved, const NormParams& p);

}  // namespace mf
