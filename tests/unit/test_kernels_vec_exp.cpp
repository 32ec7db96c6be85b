// Accuracy of the kernels' fast exp (src/kernels/vec_exp.h) against the
// correctly rounded exp over a dense sweep, its special values, and bitwise
// agreement of the scalar, AVX2 and AVX-512 forms.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/vec_exp.h"
#include "../support/isa_variants.h"

using mf::exp_approx;

namespace {

// Sweep points: every float in [lo, hi] whose bit pattern is a multiple of
// `stride` away from lo's, plus both ends.
std::vector<float> sweep(float lo, float hi, std::uint32_t stride) {
  std::vector<float> xs;
  // Walk up from lo by bit patterns (monotone within each sign).
  for (float x = lo; x < hi;) {
    xs.push_back(x);
    const std::uint32_t b = std::bit_cast<std::uint32_t>(x);
    if (x < 0) {
      x = b <= 0x80000000u + stride ? 0.0f : std::bit_cast<float>(b - stride);
    } else {
      x = std::bit_cast<float>(b + stride);
    }
  }
  xs.push_back(hi);
  return xs;
}

double ulp_of(float y) {  // spacing of floats at |y| (normal range)
  const float a = std::fabs(y);
  return static_cast<double>(std::nextafter(a, std::numeric_limits<float>::infinity())) - a;
}

}  // namespace

// Polynomial error 0.17 ulp + intermediate roundings + the final rounding:
// below 1 ulp (0.95 worst over every third float, checked once offline).
TEST(KernelsVecExp, WithinOneUlpOnNormalRange) {
  // ln(FLT_MIN) = -87.336, ln(FLT_MAX) = 88.722: the results are normal floats.
  const std::vector<float> xs = sweep(-87.33f, 88.72f, 601);
  ASSERT_GT(xs.size(), 3000000u);
  double worst = 0;
  float worst_x = 0;
  for (float x : xs) {
    const double want = std::exp(static_cast<double>(x));
    const float got = exp_approx(x);
    const double ulps = std::fabs(got - want) / ulp_of(static_cast<float>(want));
    if (!(ulps <= worst)) {
      worst = ulps;
      worst_x = x;
    }
  }
  EXPECT_LE(worst, 1.0) << "worst at x = " << worst_x;
  RecordProperty("max_ulp_error_x1000", static_cast<int>(worst * 1000));
}

TEST(KernelsVecExp, SubnormalResultsRoundedOnce) {
  // exp(x) in [2^-149, 2^-126): error at most one subnormal spacing.
  const double spacing = std::ldexp(1.0, -149);
  for (float x : sweep(-103.9f, -87.34f, 97)) {
    const double want = std::exp(static_cast<double>(x));
    EXPECT_LE(std::fabs(exp_approx(x) - want), spacing) << "x = " << x;
  }
  EXPECT_EQ(exp_approx(-104.0f), 0.0f);
  EXPECT_EQ(exp_approx(-1000.0f), 0.0f);
}

TEST(KernelsVecExp, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(exp_approx(-inf), 0.0f);
  EXPECT_EQ(exp_approx(inf), inf);
  EXPECT_EQ(exp_approx(89.0f), inf);
  EXPECT_EQ(exp_approx(88.73f), inf);
  EXPECT_TRUE(std::isfinite(exp_approx(88.72f)));
  EXPECT_TRUE(std::isnan(exp_approx(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(exp_approx(0.0f), 1.0f);
  EXPECT_EQ(exp_approx(-0.0f), 1.0f);
  EXPECT_EQ(exp_approx(1e-10f), 1.0f);
}

// The vector forms must return exactly the scalar form's bits (a kernel may
// process a row's tail with either).
TEST(KernelsVecExp, VectorFormsMatchScalarBitwise) {
  std::vector<float> xs = sweep(-110.0f, 95.0f, 4099);
  const float inf = std::numeric_limits<float>::infinity();
  for (float s : {-inf, inf, 0.0f, -0.0f, 88.7228f, -87.3365f, -103.97f}) xs.push_back(s);
  // exp_rows runs the vector form of every supported instruction set (odd
  // lengths also take the masked tail).
  for (std::size_t len : {xs.size(), xs.size() - 5}) {
    mf::testing::for_each_isa([&] {
      std::vector<float> out(len);
      mf::exp_rows(out.data(), xs.data(), static_cast<std::int64_t>(len));
      for (std::size_t k = 0; k < len; ++k)
        ASSERT_EQ(std::bit_cast<std::uint32_t>(out[k]), std::bit_cast<std::uint32_t>(exp_approx(xs[k])))
            << "x = " << xs[k];
    });
  }
}
