// Sinusoidal absolute position encoding (Vaswani et al., "Attention Is All
// You Need", 2017): PE[pos, 2i] = sin(pos / base^(2i/d)), PE[pos, 2i+1] =
// cos(pos / base^(2i/d)), base 10000, added to the hidden states. No
// parameters; the backward is the identity on the input (dx = dy), so there
// is no backward function: pass the gradient through unchanged.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "nn/position/position_ids.h"

namespace mf {

// [max_positions, hidden] table, computed in double, stored float32. An odd
// hidden size ends with a sin column.
Tensor sinusoidal_table(std::int64_t max_positions, std::int64_t hidden, double base = 10000.0);

// x[b, l, :] += table[pos(b, l), :]. In place (x's values change) or into a
// new contiguous tensor. Errors name a position >= the table's rows.
void sinusoidal_forward_inplace(const Tensor& x,      // [B, L, hidden]
                                const Tensor& table,  // [P, hidden] from sinusoidal_table
                                const PositionIds& positions);
Tensor sinusoidal_forward(const Tensor& x, const Tensor& table, const PositionIds& positions);

// Reference twin: the formula per element, in double, no table.
Tensor sinusoidal_forward_reference(const Tensor& x, const PositionIds& positions, double base = 10000.0);

}  // namespace mf
