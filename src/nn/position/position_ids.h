// Which absolute position each row of a [B, L, ...] activation has, shared by
// every position encoding (RoPE, sinusoidal, learned): either a start offset
// (row l sits at offset + l, as in KV-cache decoding) or explicit int32 ids.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace mf {

struct PositionIds {
  std::int64_t offset = 0;  // row l of every sequence sits at position offset + l
  Tensor ids;               // optional int32 [L] or [B, L]; when given, offset must stay 0
};

// PositionIds checked against a call's B and L, ready for kernels.
struct ResolvedPositions {
  const std::int32_t* ids = nullptr;  // null: offset + l
  bool per_batch = false;             // ids are [B, L] (else [L])
  std::int64_t offset = 0;
  std::int64_t length = 0;            // L
  std::int64_t end = 0;               // 1 + the largest position of the call (0 when empty)
  Tensor keep;                        // keeps the contiguous ids alive

  std::int64_t at(std::int64_t b, std::int64_t l) const {
    return ids != nullptr ? ids[(per_batch ? b * length : 0) + l] : offset + l;
  }
};

// Validates (offset >= 0; ids int32 of shape [L] or [B, L], every id >= 0,
// offset 0 when ids are given) and names `op` in errors.
ResolvedPositions resolve_positions(const PositionIds& pos, std::int64_t batch, std::int64_t length, const char* op);

// x[b, l, :] += table[pos(b, l), :] for x [B, L, H] (last dimension
// contiguous) and table [P, H]; errors name `op` and `table_name` when a
// position is >= P. Parallel over rows.
void add_position_rows(const Tensor& x, const Tensor& table, const ResolvedPositions& pos, const char* op,
                       const char* table_name);

// grad[pos(b, l), :] += dy[b, l, :] for dy [B, L, H] and grad [P, H].
// Deterministic whatever the thread count: threads own column blocks and each
// walks the rows in (b, l) order, so every sum has one fixed order.
void accumulate_position_rows(const Tensor& grad, const Tensor& dy, const ResolvedPositions& pos, const char* op,
                              const char* table_name);

}  // namespace mf
