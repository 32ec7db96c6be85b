#include "core/alloc.h"

#include <atomic>
#include <cstdlib>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "core/error.h"

namespace mf {
namespace {

// glibc's malloc raises its mmap threshold and trims the heap top as large
// blocks are freed; after a long prefill (MB-sized temporaries) that made
// every later decode step fault in fresh pages (per-token cost up to 5x at a
// context of 8192, measured in `bench mixers --causal`'s decode section).
// Fixed thresholds instead: blocks up to 32 MiB come from the heap and up to
// 256 MiB of freed heap is kept for reuse (training steps got no slower;
// Mamba and retention forward+backward at L 4096 got 13-25% faster).
const bool g_malloc_thresholds_fixed = [] {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
  return true;
}();
std::atomic<std::int64_t> g_current{0};
std::atomic<std::int64_t> g_peak{0};
}  // namespace

void* aligned_alloc_counted(std::size_t bytes) {
  const std::size_t rounded = ((bytes + kAlignment - 1) / kAlignment) * kAlignment;
  void* p = rounded == 0 ? nullptr : std::aligned_alloc(kAlignment, rounded);
  if (rounded != 0 && p == nullptr)
    fail("[alloc] out of memory allocating ", bytes, " bytes (", bytes / (1024.0 * 1024.0 * 1024.0), " GiB)");
  const std::int64_t now = g_current.fetch_add(static_cast<std::int64_t>(bytes)) + static_cast<std::int64_t>(bytes);
  std::int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
  return p;
}

void aligned_free_counted(void* ptr, std::size_t bytes) noexcept {
  std::free(ptr);
  g_current.fetch_sub(static_cast<std::int64_t>(bytes));
}

MemoryStats memory_stats() { return {g_current.load(), g_peak.load()}; }

void reset_peak_memory() { g_peak.store(g_current.load()); }

}  // namespace mf
