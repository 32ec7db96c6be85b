// Learned absolute position embeddings (BERT, GPT-2): a parameter
// [max_position_embeddings, hidden] whose row pos(b, l) is added to the hidden
// state of token (b, l). The input gradient is the identity (dx = dy), so the
// backward only accumulates the parameter gradient, in a fixed order.
#pragma once
#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "nn/parameter.h"
#include "nn/position/position_ids.h"

namespace mf {

// A [max_positions, hidden] parameter drawn from N(0, std^2) (Philox stream
// of `seed`), no weight decay (embeddings are not decayed).
Parameter learned_position_init(std::string name, std::int64_t max_positions, std::int64_t hidden,
                                std::uint64_t seed, float std = 0.02f);

// y[b, l, :] = x[b, l, :] + weight[pos(b, l), :]. In place (x's values
// change) or into a new contiguous tensor. A position >= max_positions is an
// error: "[learned_position] position 4100 >= max_position_embeddings 4096".
void learned_position_forward_inplace(const Tensor& x,  // [B, L, hidden]
                                      const Parameter& weight, const PositionIds& positions);
Tensor learned_position_forward(const Tensor& x, const Parameter& weight, const PositionIds& positions);

// weight.grad[pos(b, l), :] += dy[b, l, :] (accumulates; rows hit by several
// tokens sum them in (b, l) order, whatever the thread count). dx = dy.
void learned_position_backward(const Tensor& dy,  // [B, L, hidden]
                               Parameter& weight, const PositionIds& positions);

// Reference twins: plain loops, sums in double.
Tensor learned_position_forward_reference(const Tensor& x, const Tensor& weight, const PositionIds& positions);
Tensor learned_position_backward_reference(const Tensor& dy, const Tensor& weight, const PositionIds& positions);
// (returns the weight gradient [max_positions, hidden] of this call alone)

}  // namespace mf
