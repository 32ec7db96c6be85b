// GEMV for decoding (see gemv.h): the checks of a call, then the kernel of
// the instruction set in use (gemv_isa.cpp).
#include "kernels/gemv.h"

#include <atomic>

#include "core/error.h"
#include "core/isa_dispatch.h"

MF_ISA_DECLARE(void gemv_tiles(std::span<const mf::GemvTarget> targets, const float* x, std::int64_t ldx,
                               std::int64_t n, std::int64_t in))

namespace mf {

namespace {
constexpr const char* kOp = "[gemv]";
std::atomic<std::int64_t> g_gemv_max_rows{kGemvMaxRows};
}  // namespace

std::int64_t gemv_max_rows() { return g_gemv_max_rows.load(std::memory_order_relaxed); }

void set_gemv_max_rows(std::int64_t rows) {
  MF_CHECK(rows >= 0 && rows <= 1024, kOp, " gemv_max_rows must be in [0, 1024], got ", rows);
  g_gemv_max_rows.store(rows, std::memory_order_relaxed);
}

void gemv(std::span<const GemvTarget> targets, const float* x, std::int64_t ldx, std::int64_t n, std::int64_t in) {
  MF_CHECK(n >= 1, kOp, " the number of inputs n must be >= 1, got ", n);
  MF_CHECK(in >= 1, kOp, " the input width must be >= 1, got ", in);
  MF_CHECK(ldx >= in, kOp, " ldx ", ldx, " is smaller than the input width ", in);
  MF_CHECK(x != nullptr, kOp, " x is null");
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const GemvTarget& t = targets[i];
    MF_CHECK(t.rows >= 0, kOp, " target ", i, " has a negative row count ", t.rows);
    MF_CHECK(t.ldy >= t.rows, kOp, " target ", i, ": ldy ", t.ldy, " is smaller than its ", t.rows, " rows");
    MF_CHECK(t.rows == 0 || (t.weight != nullptr && t.y != nullptr), kOp, " target ", i, " has a null weight or y");
  }
  MF_ISA_DISPATCH(gemv_tiles, targets, x, ldx, n, in);
}

void gemv(const float* weight, const float* bias, std::int64_t rows, std::int64_t in, const float* x,
          std::int64_t ldx, std::int64_t n, float* y, std::int64_t ldy) {
  const GemvTarget t{weight, bias, y, rows, ldy};
  gemv(std::span<const GemvTarget>(&t, 1), x, ldx, n, in);
}

}  // namespace mf
