// Fast float exp for the kernels (softmax, activations, Mamba, Performer):
// Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial for
// exp(r) (coefficients from tools/derive_kernel_polynomials.py), then p * 2^n.
// Surprising: the scalar form here and the AVX2 and AVX-512 forms
// (simd::exp in kernels/simd.h) give the same bits for every input (same
// operations, each rounded once), so a row's tail handled by the scalar form
// matches its body. Error < 1 ulp on [-87.3, 88.7] (normal
// results; 0.95 ulp worst over every third float, tested on a sweep by
// tests/unit/test_kernels_vec_exp.cpp); subnormal results are rounded once;
// exp(-inf) = 0, exp(+inf) = inf, exp(NaN) = NaN.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

namespace mf {

namespace vec_exp_detail {
// exp(r) = 1 + r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3 + c6 r^4), |r| <= 0.3475;
// max relative error 1.0e-8 with these float coefficients.
inline constexpr float kExpC6 = 0x1.6d1254p-10f;  // 0.00139263761
inline constexpr float kExpC5 = 0x1.120cbap-7f;   // 0.00836333353
inline constexpr float kExpC4 = 0x1.555518p-5f;   // 0.0416665524
inline constexpr float kExpC3 = 0x1.5554dcp-3f;   // 0.166665763
inline constexpr float kExpC2 = 0.5f;
inline constexpr float kLog2e = 0x1.715476p+0f;  // 1.44269502
// ln2 split so that n * kLn2Hi is exact for |n| < 2^8 (16 significant bits).
inline constexpr float kLn2Hi = 0x1.62e4p-1f;     // 0.693145752
inline constexpr float kLn2Lo = 0x1.7f7d1cp-20f;  // 1.42860677e-06
// Inputs are clamped to [kLo, kHi]: exp(kLo) rounds to 0 and exp(kHi) to inf,
// and n stays in [-151, 128], so 2^n is the product of two normal floats.
inline constexpr float kLo = -105.0f;
inline constexpr float kHi = 89.0f;
}  // namespace vec_exp_detail

// Scalar form; the reference for the vector forms (bitwise).
inline float exp_approx(float x) {
  using namespace vec_exp_detail;
  if (std::isnan(x)) return x;
  x = x < kLo ? kLo : x;
  x = x > kHi ? kHi : x;
  const float n = std::nearbyint(x * kLog2e);
  float r = std::fma(-n, kLn2Hi, x);
  r = std::fma(-n, kLn2Lo, r);
  float p = kExpC6;
  p = std::fma(p, r, kExpC5);
  p = std::fma(p, r, kExpC4);
  p = std::fma(p, r, kExpC3);
  p = std::fma(p, r, kExpC2);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  // p * 2^n = (p * 2^n1) * 2^n2: the first product is exact (normal range), so
  // the result is rounded once, like AVX-512's scalef.
  const std::int32_t ni = static_cast<std::int32_t>(n);
  const std::int32_t n1 = ni >> 1, n2 = ni - n1;
  const float s1 = std::bit_cast<float>(static_cast<std::uint32_t>(n1 + 127) << 23);
  const float s2 = std::bit_cast<float>(static_cast<std::uint32_t>(n2 + 127) << 23);
  return p * s1 * s2;
}

// Row kernels on the vector forms (the variant of active_isa(); see core/isa.h).
// y[i] = exp_approx(x[i]).
void exp_rows(float* y, const float* x, std::int64_t n);
// row[i] = mul * exp_approx(row[i] - shift) + add (Performer's feature map).
void exp_affine_row(float* row, std::int64_t n, float shift, float mul, float add);
// row[i] = exp_approx((row[i] - s1) - s2) (log-sum-exp normalization).
void exp_shift2_row(float* row, std::int64_t n, float s1, float s2);

}  // namespace mf
