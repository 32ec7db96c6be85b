// 64-byte aligned allocation with an engine-wide byte counter (current and
// peak), used by benchmarks and tests to prove memory claims.
#pragma once
#include <cstddef>
#include <cstdint>

namespace mf {

inline constexpr std::size_t kAlignment = 64;

// Returns uninitialized memory aligned to kAlignment.
// Throws mf::Error (naming the size) when the allocation fails.
void* aligned_alloc_counted(std::size_t bytes);
void aligned_free_counted(void* ptr, std::size_t bytes) noexcept;

struct MemoryStats {
  std::int64_t current_bytes;  // bytes held by the engine now
  std::int64_t peak_bytes;     // high-water mark since the last reset
};
MemoryStats memory_stats();
// Sets the peak to the current value, so a later peak measures one region.
void reset_peak_memory();

}  // namespace mf
