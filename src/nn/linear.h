// Linear layer y = x W^T + b with W stored [out, in] (torch.nn.Linear and
// Hugging Face checkpoints), forward and backward through the GEMM interface.
// Gradient contract: din is overwritten; dweight and dbias accumulate (+=).
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace mf {

// out = in W^T (+ bias). Tensors are handles: `out` is written through.
void linear_forward(const Tensor& out,     // [N, out_features] (written)
                    const Tensor& in,      // [N, in_features]
                    const Tensor& weight,  // [out_features, in_features]
                    const Tensor& bias);   // [out_features] or undefined

// din = dout W (overwritten; undefined = skip; with accumulate_din, din +=
// dout W instead, for inputs that feed several projections, e.g. q/k/v);
// dweight += dout^T in; dbias += sum over rows of dout (undefined = skip).
void linear_backward(const Tensor& din,      // [N, in_features] or undefined
                     const Tensor& dweight,  // [out_features, in_features] (+=)
                     const Tensor& dbias,    // [out_features] (+=) or undefined
                     const Tensor& dout,     // [N, out_features]
                     const Tensor& in,       // [N, in_features]
                     const Tensor& weight,   // [out_features, in_features]
                     bool accumulate_din = false);

// Convenience: allocates and returns out.
Tensor linear_forward(const Tensor& in, const Tensor& weight, const Tensor& bias);

namespace reference {
// Plain loops in double; the specification (same contracts).
void linear_forward(const Tensor& out, const Tensor& in, const Tensor& weight, const Tensor& bias);
void linear_backward(const Tensor& din, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                     const Tensor& in, const Tensor& weight);
}  // namespace reference

}  // namespace mf
