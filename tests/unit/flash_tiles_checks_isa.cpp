// The flash micro-kernel (tile_gemm) against a plain loop and the kernels'
// exp2 against std::exp2, compiled once per instruction set (the test TU
// rules of core/isa_target.h); test_attention_flash.cpp calls the variants
// the host supports.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "core/isa_target.h"
#include "nn/attention/flash_tiles.h"

namespace mf::MF_ISA_NS {

void check_flash_tile_gemm(std::uint64_t seed) {
  using I = flash::ThisIsa;
  Rng rng(seed);
  for (int trial = 0; trial < 60; ++trial) {
    const std::int64_t m = 1 + static_cast<std::int64_t>(rng.below(40)),
                       n = 8 * (1 + static_cast<std::int64_t>(rng.below(20)));
    const std::int64_t k = 1 + static_cast<std::int64_t>(rng.below(70));
    const bool acol = rng.below(2) == 1;
    const auto mode = static_cast<flash::TileMode>(rng.below(3));
    const std::int64_t lda = (acol ? m : k) + static_cast<std::int64_t>(rng.below(5));
    const std::int64_t ldb = n + static_cast<std::int64_t>(rng.below(9)),
                       ldc = n + static_cast<std::int64_t>(rng.below(9));
    std::vector<float> a((acol ? k : m) * lda), b(k * ldb), c(m * ldc), scale(m);
    for (auto& x : a) x = rng.normal();
    for (auto& x : b) x = rng.normal();
    for (auto& x : c) x = rng.normal();
    for (auto& x : scale) x = rng.uniform();
    std::vector<float> got = c;
    // col_max (full vectors only): running max over the rows of C.
    const bool with_max = n % I::W == 0;
    std::vector<float> colmax(n, -1e30f);
    float* cmx = with_max ? colmax.data() : nullptr;
    if (acol)
      flash::tile_gemm<I, true>(m, n, k, a.data(), lda, b.data(), ldb, got.data(), ldc, mode, scale.data(), cmx);
    else
      flash::tile_gemm<I, false>(m, n, k, a.data(), lda, b.data(), ldb, got.data(), ldc, mode, scale.data(), cmx);
    for (std::int64_t j = 0; j < n && with_max; ++j) {
      float mx = -1e30f;
      for (std::int64_t i = 0; i < m; ++i) mx = std::max(mx, got[i * ldc + j]);
      ASSERT_EQ(colmax[j], mx) << I::kName << " column max " << j;
    }
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < ldc; ++j) {
        if (j >= n) {  // padding beyond N is never touched
          ASSERT_EQ(got[i * ldc + j], c[i * ldc + j]);
          continue;
        }
        double s = 0, mag = 0;
        for (std::int64_t x = 0; x < k; ++x) {
          const double t = static_cast<double>(acol ? a[x * lda + i] : a[i * lda + x]) * b[x * ldb + j];
          s += t;
          mag += std::fabs(t);
        }
        const double c0 = c[i * ldc + j];
        const double want = mode == flash::TileMode::Store ? s
                            : mode == flash::TileMode::Add ? c0 + s
                                                           : scale[i] * c0 + s;
        // float32 sums of k products: |error| <= k * eps * sum |terms| (Higham), eps = 2^-24.
        ASSERT_NEAR(got[i * ldc + j], want, (k + 2) * 6e-8 * (mag + std::fabs(c0)) + 1e-30)
            << I::kName << " m=" << m << " n=" << n << " k=" << k << " acol=" << acol;
      }
  }
}

void check_flash_exp2() {
  using I = flash::ThisIsa;
  std::vector<float> xs;
  for (float x = -130.0f; x <= 0.0f; x += 0.0137f) xs.push_back(x);
  xs.push_back(-std::numeric_limits<float>::infinity());
  xs.push_back(0.0f);
  xs.push_back(-125.0f);
  xs.push_back(-124.99f);
  while (xs.size() % 16 != 0) xs.push_back(-1.0f);
  for (std::size_t i = 0; i < xs.size(); i += I::W) {
    float out[16];
    I::store(out, I::exp2(I::load(&xs[i])));
    for (int l = 0; l < I::W; ++l) {
      const float x = xs[i + l];
      if (x < flash::kExp2Min) {
        ASSERT_EQ(out[l], 0.0f) << I::kName << " x=" << x;
      } else {
        const double want = std::exp2(static_cast<double>(x));
        ASSERT_NEAR(out[l], want, 3e-7 * want) << I::kName << " x=" << x;
        ASSERT_TRUE(std::isnormal(out[l])) << I::kName << " x=" << x;
      }
    }
  }
}

}  // namespace mf::MF_ISA_NS
