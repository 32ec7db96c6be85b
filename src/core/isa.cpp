#include "core/isa.h"

#include <cpuid.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <optional>

#include "core/error.h"

namespace mf {
namespace {

std::uint64_t xgetbv0() {
  std::uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<std::uint64_t>(hi) << 32) | lo;
}

struct Support {
  bool avx2 = false, avx512 = false;
};

Support probe() {
  Support s;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(1, 0, &a, &b, &c, &d)) return s;
  const bool fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
  if (!osxsave || !avx) return s;
  const std::uint64_t xcr0 = xgetbv0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;    // SSE + AVX state
  const bool os_zmm = (xcr0 & 0xE6) == 0xE6;  // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return s;
  const bool avx2 = (b >> 5) & 1, bmi1 = (b >> 3) & 1, bmi2 = (b >> 8) & 1;
  const bool f = (b >> 16) & 1, dq = (b >> 17) & 1, cd = (b >> 28) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
  s.avx2 = os_ymm && avx2 && fma && f16c && bmi1 && bmi2;
  s.avx512 = s.avx2 && os_zmm && f && dq && cd && bw && vl;
  return s;
}

const Support& support() {
  static const Support s = probe();
  return s;
}

// The variant called `name`, if any.
std::optional<Isa> isa_named(const std::string& name) {
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (name == isa_name(i)) return i;
  return std::nullopt;
}

constexpr int kUnset = -1;
std::atomic<int> g_override{kUnset};

}  // namespace

std::string isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar:
      return "scalar";
    case Isa::Avx2:
      return "avx2";
    case Isa::Avx512:
      return "avx512";
  }
  return "?";
}

Isa parse_isa(const std::string& name) {
  if (const auto i = isa_named(name)) return *i;
  fail("unknown instruction set \"", name, "\" (known: scalar, avx2, avx512)");
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar:
      return true;
    case Isa::Avx2:
      return support().avx2;
    case Isa::Avx512:
      return support().avx512;
  }
  return false;
}

Isa detected_isa() {
  if (isa_supported(Isa::Avx512)) return Isa::Avx512;
  if (isa_supported(Isa::Avx2)) return Isa::Avx2;
  return Isa::Scalar;
}

Isa isa_cap() {
  const char* env = std::getenv("MODFORMER_ISA");
  if (env == nullptr || *env == '\0') return Isa::Avx512;
  const std::string v = env;
  if (const auto i = isa_named(v)) return *i;
  fail("MODFORMER_ISA=\"", v, "\" is not an instruction set (known: scalar, avx2, avx512)");
}

Isa active_isa() {
  const int o = g_override.load(std::memory_order_relaxed);
  if (o != kUnset) return static_cast<Isa>(o);
  static const Isa chosen = [] {
    const Isa cap = isa_cap(), det = detected_isa();
    return static_cast<int>(cap) < static_cast<int>(det) ? cap : det;
  }();
  return chosen;
}

void set_isa(Isa isa) {
  MF_CHECK(isa_supported(isa), "instruction set ", isa_name(isa),
           " is not supported by this CPU (detected: ", isa_name(detected_isa()), ")");
  g_override.store(static_cast<int>(isa), std::memory_order_relaxed);
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::Avx512, Isa::Avx2, Isa::Scalar})
    if (isa_supported(i)) v.push_back(i);
  return v;
}

ScopedIsa::ScopedIsa(Isa isa) : prev_(active_isa()) { set_isa(isa); }
ScopedIsa::~ScopedIsa() { g_override.store(static_cast<int>(prev_), std::memory_order_relaxed); }

}  // namespace mf
