// Runtime instruction-set dispatch. Every hand-vectorized kernel is compiled
// once per instruction set in every build (the *_isa.cpp translation units,
// see core/isa_target.h), and each call runs the variant of active_isa(): the
// best one that the CPU and the operating system support, capped by the
// environment variable MODFORMER_ISA=scalar|avx2|avx512, or the one a test or
// benchmark chose with set_isa.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mf {

// Ordered: a variant may use everything of the ones before it.
enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };

std::string isa_name(Isa isa);
// Floats per vector of the kernels' SIMD layer (kernels/simd.h): 1, 8, 16.
constexpr int isa_vector_floats(Isa isa) { return isa == Isa::Avx512 ? 16 : isa == Isa::Avx2 ? 8 : 1; }
// Rounding-error depth of the SIMD layer's sums over n terms with `width`
// lanes (simd::sum_blocks: four accumulators per lane, combined in a fixed
// order, then the lanes): terms per lane plus the combining adds.
constexpr std::int64_t simd_sum_depth(std::int64_t n, int width) {
  std::int64_t log2w = 0;
  while ((std::int64_t{1} << log2w) < width) ++log2w;
  return (n + 4 * width - 1) / (4 * width) + 1 + 2 + log2w;
}
// "scalar", "avx2" or "avx512"; throws naming the accepted values.
Isa parse_isa(const std::string& name);

// Whether this CPU and its operating system run `isa` (cpuid and the register
// state the OS saves, xgetbv). Scalar: always. AVX2 means AVX2 + FMA + F16C + BMI2;
// AVX-512 means F, BW, DQ, VL and CD.
bool isa_supported(Isa isa);
Isa detected_isa();                 // the best supported variant
Isa isa_cap();                      // MODFORMER_ISA, or avx512 when unset; throws on a bad value
Isa active_isa();                   // the variant that runs: set_isa's, else min(detected, cap)
void set_isa(Isa isa);              // throws when the host cannot run it
std::vector<Isa> supported_isas();  // every variant the host runs, best first

// Restores the variant in use on destruction (tests and benchmarks).
class ScopedIsa {
 public:
  explicit ScopedIsa(Isa isa);
  ~ScopedIsa();
  ScopedIsa(const ScopedIsa&) = delete;
  ScopedIsa& operator=(const ScopedIsa&) = delete;

 private:
  Isa prev_;
};

}  // namespace mf
