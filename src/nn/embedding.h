// Token embedding lookup out[i] = table[token[i]] and its backward (a
// scatter-add into the table's gradient). Deterministic: the backward gives
// each thread a block of columns and walks the tokens in order.
// Gradient contract: dtable accumulates (+=); tokens have no gradient.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace mf {

// Throws "[op] token id 300 at position [1, 5] is out of range [0, 256)" for
// the first bad id of `tokens` (int32 or int64, any shape).
void check_token_ids(const Tensor& tokens, std::int64_t vocab_size, const char* op);

void embedding_forward(const Tensor& out,     // [N, C] (written)
                       const Tensor& tokens,  // int32, N elements (any shape, contiguous)
                       const Tensor& table);  // [V, C]

void embedding_backward(const Tensor& dtable,  // [V, C] (+=)
                        const Tensor& dout,    // [N, C]
                        const Tensor& tokens);  // int32, N elements

}  // namespace mf
