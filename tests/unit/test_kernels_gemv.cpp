// GEMV (kernels/gemv.h) against its reference twin on awkward sizes (rows and
// widths off the tile and vector sizes, 1..16 inputs, strides, biases), and
// the bit-level promises decoding relies on: a row of a batch gets the bits it
// gets alone, fused targets equal separate calls, threads do not change bits.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/rng.h"
#include "kernels/gemv.h"
#include "../support/errors.h"
#include "../support/isa_variants.h"
#include "../support/threads.h"

using namespace mf;

namespace {

std::vector<float> random_values(std::int64_t n, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = rng.normal();
  return v;
}

// |fast - reference| <= 2 * in * 2^-24 * sum_k |w x| (+ |b|) per element: the
// float rounding bound of an in-term dot product with a tree at the end.
void expect_near_reference(std::int64_t rows, std::int64_t in, std::int64_t n, bool with_bias, std::int64_t pad) {
  const std::int64_t ldx = in + pad, ldy = rows + pad;
  const auto w = random_values(rows * in, 1), x = random_values(n * ldx, 2), b = random_values(rows, 3);
  std::vector<float> fast(static_cast<std::size_t>(n * ldy), -7.0f), ref = fast;
  GemvTarget t{w.data(), with_bias ? b.data() : nullptr, fast.data(), rows, ldy};
  gemv(std::span<const GemvTarget>(&t, 1), x.data(), ldx, n, in);
  t.y = ref.data();
  reference::gemv(std::span<const GemvTarget>(&t, 1), x.data(), ldx, n, in);
  for (std::int64_t j = 0; j < n; ++j) {
    for (std::int64_t r = 0; r < rows; ++r) {
      double mag = with_bias ? std::fabs(b[r]) : 0.0;
      for (std::int64_t k = 0; k < in; ++k) mag += std::fabs(double(w[r * in + k]) * x[j * ldx + k]);
      const double bound = 2.0 * (in + 8) * std::ldexp(1.0, -24) * mag + 1e-30;
      ASSERT_LE(std::fabs(double(fast[j * ldy + r]) - ref[j * ldy + r]), bound)
          << "rows " << rows << " in " << in << " n " << n << " at [" << j << ", " << r << "]";
    }
    for (std::int64_t r = rows; r < ldy; ++r) ASSERT_EQ(fast[j * ldy + r], -7.0f) << "wrote past the rows";
  }
}

}  // namespace

TEST(Gemv, MatchesReferenceOnAwkwardSizes) {
  mf::testing::ScopedThreads two(2);
  for (std::int64_t rows : {1, 3, 4, 5, 17, 131})
    for (std::int64_t in : {1, 7, 16, 17, 33, 100, 515})
      for (std::int64_t n : {1, 2, 3, 5, 16})
        mf::testing::for_each_isa([&] { expect_near_reference(rows, in, n, (rows + n) % 2 == 0, n % 3); });
}

TEST(Gemv, LargeEnoughToRunInParallelMatchesReference) {
  mf::testing::ScopedThreads two(2);
  mf::testing::for_each_isa([&] {
    expect_near_reference(1031, 257, 1, true, 0);
    expect_near_reference(517, 130, 7, false, 1);
  });
}

// Batched generation equals sequential generation only if a row's bits do not
// depend on the other rows of the call.
TEST(Gemv, EachInputOfABatchGetsItsBitsAlone) {
  mf::testing::ScopedThreads two(2);
  const std::int64_t rows = 203, in = 131;
  const auto w = random_values(rows * in, 4), x = random_values(16 * in, 5), b = random_values(rows, 6);
  mf::testing::for_each_isa([&] {
  for (std::int64_t n : {2, 3, 4, 5, 9, 16}) {
    std::vector<float> batch(static_cast<std::size_t>(n * rows));
    gemv(w.data(), b.data(), rows, in, x.data(), in, n, batch.data(), rows);
    for (std::int64_t j = 0; j < n; ++j) {
      std::vector<float> alone(static_cast<std::size_t>(rows));
      gemv(w.data(), b.data(), rows, in, x.data() + j * in, in, 1, alone.data(), rows);
      for (std::int64_t r = 0; r < rows; ++r)
        ASSERT_EQ(batch[j * rows + r], alone[r]) << "n " << n << " input " << j << " row " << r;
    }
  }
  });
}

TEST(Gemv, FusedTargetsEqualSeparateCalls) {
  mf::testing::ScopedThreads two(2);
  const std::int64_t in = 96, n = 3;
  const std::int64_t sizes[] = {70, 13, 13};
  const auto x = random_values(n * in, 7);
  std::vector<std::vector<float>> w, fused, alone;
  std::vector<GemvTarget> targets;
  for (int i = 0; i < 3; ++i) {
    w.push_back(random_values(sizes[i] * in, 10 + i));
    fused.emplace_back(static_cast<std::size_t>(n * sizes[i]));
    alone.emplace_back(static_cast<std::size_t>(n * sizes[i]));
  }
  for (int i = 0; i < 3; ++i) targets.push_back({w[i].data(), nullptr, fused[i].data(), sizes[i], sizes[i]});
  gemv(targets, x.data(), in, n, in);
  for (int i = 0; i < 3; ++i) {
    gemv(w[i].data(), nullptr, sizes[i], in, x.data(), in, n, alone[i].data(), sizes[i]);
    EXPECT_EQ(fused[i], alone[i]) << "target " << i;
  }
}

TEST(Gemv, ThreadCountDoesNotChangeBits) {
  const std::int64_t rows = 1411, in = 515;
  const auto w = random_values(rows * in, 8), x = random_values(4 * in, 9);
  mf::testing::expect_same_bits_across_threads([&] {
    std::vector<float> y(static_cast<std::size_t>(4 * rows));
    gemv(w.data(), nullptr, rows, in, x.data(), in, 4, y.data(), rows);
    return y;
  });
}

TEST(Gemv, RejectsBadArguments) {
  std::vector<float> w(12, 1.0f), x(4, 1.0f), y(3, 0.0f);
  EXPECT_ERROR("[gemv] the number of inputs n must be >= 1, got 0", gemv(w.data(), nullptr, 3, 4, x.data(), 4, 0, y.data(), 3));
  EXPECT_ERROR("[gemv] the input width must be >= 1, got 0", gemv(w.data(), nullptr, 3, 0, x.data(), 4, 1, y.data(), 3));
  EXPECT_ERROR("[gemv] ldx 3 is smaller than the input width 4", gemv(w.data(), nullptr, 3, 4, x.data(), 3, 1, y.data(), 3));
  EXPECT_ERROR("[gemv] target 0: ldy 2 is smaller than its 3 rows",
               gemv(w.data(), nullptr, 3, 4, x.data(), 4, 1, y.data(), 2));
  EXPECT_ERROR("[gemv] target 0 has a null weight or y", gemv(nullptr, nullptr, 3, 4, x.data(), 4, 1, y.data(), 3));
  EXPECT_ERROR("[gemv] x is null", gemv(w.data(), nullptr, 3, 4, nullptr, 4, 1, y.data(), 3));
  EXPECT_ERROR("[gemv] gemv_max_rows must be in [0, 1024], got -1", set_gemv_max_rows(-1));
  EXPECT_EQ(gemv_max_rows(), kGemvMaxRows);
}
