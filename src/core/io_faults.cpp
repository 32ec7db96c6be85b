#include "core/io_faults.h"

#include <atomic>
#include <cerrno>

namespace mf {

namespace {

struct Armed {
  std::atomic<int> remaining{-1};  // -1: not armed; else matching steps to let pass before failing
  std::atomic<int> err{0};
};
Armed g_faults[3];
std::atomic<bool> g_armed{false};
std::atomic<bool> g_no_exchange{false};

}  // namespace

void inject_io_fault(IoStep step, int skip, int err) {
  Armed& a = g_faults[static_cast<int>(step)];
  a.err = err;
  a.remaining = skip;
  g_armed = true;
}

void force_rename_exchange_fallback(bool on) { g_no_exchange = on; }

void clear_io_faults() {
  for (Armed& a : g_faults) a.remaining = -1;
  g_armed = false;
  g_no_exchange = false;
}

bool take_io_fault(IoStep step) {
  if (!g_armed.load(std::memory_order_relaxed)) return false;
  Armed& a = g_faults[static_cast<int>(step)];
  int r = a.remaining.load();
  while (r >= 0) {
    if (a.remaining.compare_exchange_weak(r, r - 1)) {
      if (r > 0) return false;
      errno = a.err;
      return true;
    }
  }
  return false;
}

bool rename_exchange_unavailable() { return g_no_exchange.load(std::memory_order_relaxed); }

}  // namespace mf
