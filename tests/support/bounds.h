// Helpers for kernel tests: element-wise comparison against per-element
// error bounds (derived in each test from the kernel's rounding steps, in
// units of u = 2^-24), random inputs, and bitwise equality. Set
// MODFORMER_TEST_VERBOSE=1 to print each check's worst error/bound ratio.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "core/rng.h"

namespace mf::testing {

inline constexpr double kU = 0x1p-24;  // unit roundoff of float32
// Absolute floor for results in the subnormal range (where relative bounds end).
inline constexpr double kTinyAbs = 1e-37;

// |got[i] - want[i]| <= bound[i] + kTinyAbs for all i (NaN fails). The message
// names the worst element relative to its bound.
inline ::testing::AssertionResult within_bounds(const std::vector<float>& got, const std::vector<double>& want,
                                                const std::vector<double>& bound, const std::string& what) {
  if (got.size() != want.size() || got.size() != bound.size())
    return ::testing::AssertionFailure() << what << ": size mismatch";
  double worst = 0;
  std::size_t wi = 0;
  std::int64_t bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    // Equal values (including equal infinities) have no error.
    const double err = got[i] == want[i] ? 0.0 : std::fabs(static_cast<double>(got[i]) - want[i]);
    const double ratio = err / (bound[i] + kTinyAbs);
    if (!(ratio <= 1.0)) ++bad;
    if (!(ratio <= worst)) {
      worst = ratio;
      wi = i;
    }
  }
  std::ostringstream os;
  os << what << ": worst element " << wi << " got " << got[wi] << " want " << want[wi] << " bound "
     << bound[wi] << " (error/bound " << worst << ")";
  if (bad == 0) {
    if (std::getenv("MODFORMER_TEST_VERBOSE")) std::printf("[bounds] %s\n", os.str().c_str());
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << bad << " of " << got.size() << " elements out of bounds; " << os.str();
}

inline std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// n values N(0, scale^2) from (seed, stream).
inline std::vector<float> random_normal(std::int64_t n, std::uint64_t seed, float scale = 1.0f,
                                        std::uint64_t stream = 0) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = scale * rng_normal(seed, stream, i);
  return v;
}

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

}  // namespace mf::testing
