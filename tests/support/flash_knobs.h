// The flash attention kernels' knobs in tests: every SIMD path the host runs
// (core/isa.h), a scope that restores the path in use, and 16-wide tiles
// (small shapes then cross many tiles).
#pragma once
#include <cstdint>
#include <vector>

#include "core/isa.h"
#include "nn/attention/flash_attention.h"

namespace mf::testing {

inline std::vector<Isa> flash_isas() { return supported_isas(); }

struct ScopedFlashIsa {
  Isa prev = active_isa();
  ScopedFlashIsa() = default;
  ScopedFlashIsa(const ScopedFlashIsa&) = delete;
  ScopedFlashIsa& operator=(const ScopedFlashIsa&) = delete;
  ~ScopedFlashIsa() { set_isa(prev); }
};

// 16-wide tiles; small_rows picks the forward kernel: 0 = the S^T kernel
// everywhere, 16 = the few-row kernel everywhere. No split-KV path.
inline FlashTiles tiny_flash_tiles(std::int64_t small_rows = 0) {
  FlashTiles t;
  t.fwd_rows = t.fwd_keys = t.bwd_rows = t.bwd_keys = 16;
  t.small_rows = small_rows;
  t.split_chunk = 16;
  t.split_min_keys = 1 << 30;
  return t;
}

}  // namespace mf::testing
