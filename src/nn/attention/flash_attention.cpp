// Flash attention: the entry points (dispatch to the instruction set in use,
// core/isa.h) and the tile-size check. The kernels are split by stage, each
// compiled once per instruction set: flash_geometry.h (tile geometry and
// visibility), flash_forward_isa.cpp (forward and split-KV decode),
// flash_backward_isa.cpp (backward).
#include <algorithm>
#include <cstdint>
#include <utility>

#include "core/error.h"
#include "core/isa_dispatch.h"
#include "nn/attention/attention_problem.h"
#include "nn/attention/flash_attention.h"

MF_ISA_DECLARE(void flash_attention_forward(const mf::AttentionProblem& p, const float* q, const float* k,
                                            const float* v, float* out, float* lse))
MF_ISA_DECLARE(void flash_attention_backward(const mf::AttentionProblem& p, const float* q, const float* k,
                                             const float* v, const float* out, const float* lse, const float* dout,
                                             float* dq, float* dk, float* dv))

namespace mf {

void flash_attention_forward(const AttentionProblem& p, const float* q, const float* k, const float* v, float* out,
                             float* lse) {
  MF_ISA_DISPATCH(flash_attention_forward, p, q, k, v, out, lse);
}

void flash_attention_backward(const AttentionProblem& p, const float* q, const float* k, const float* v,
                              const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  MF_ISA_DISPATCH(flash_attention_backward, p, q, k, v, out, lse, dout, dq, dk, dv);
}

std::int64_t flash_forward_key_splits(const FlashTiles& tiles, std::int64_t group, std::int64_t q_len,
                                      std::int64_t k_len) {
  const std::int64_t rows_per_tile = std::max<std::int64_t>(1, tiles.fwd_rows / group);
  const bool one_query_tile = (q_len + rows_per_tile - 1) / rows_per_tile == 1;
  if (!one_query_tile || k_len < tiles.split_min_keys || k_len <= tiles.split_chunk) return 0;
  return (k_len + tiles.split_chunk - 1) / tiles.split_chunk;
}

void check_flash_tiles(const FlashTiles& t) {
  const std::pair<const char*, std::int64_t> sizes[] = {{"fwd_rows", t.fwd_rows},
                                                         {"fwd_keys", t.fwd_keys},
                                                         {"bwd_rows", t.bwd_rows},
                                                         {"bwd_keys", t.bwd_keys},
                                                         {"split_chunk", t.split_chunk}};
  for (const auto& [name, x] : sizes)
    MF_CHECK(x >= 16 && x % 16 == 0 && x <= 4096, "[flash_attention] tile size ", name,
             " must be a multiple of 16 in [16, 4096], got ", x);
  MF_CHECK(t.small_rows >= 0 && t.small_rows <= t.fwd_rows, "[flash_attention] small_rows must be in [0, fwd_rows], got ",
           t.small_rows);
  MF_CHECK(t.split_min_keys >= 1, "[flash_attention] split_min_keys must be >= 1, got ", t.split_min_keys);
}

}  // namespace mf
