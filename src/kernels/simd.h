// Thin SIMD layer for the row kernels: one Vec type per instruction-set
// translation unit (core/isa_target.h: AVX-512 16 lanes, AVX2+FMA 8 lanes,
// scalar 1 lane) so that each kernel is written once and compiled three
// times. Partial loads and stores handle a row's tail without touching
// memory past its end; masked lanes of a load take a given fill value.
// Reductions use a fixed order that depends only on the row length, so results
// do not depend on the thread count.
#pragma once
#if !defined(MF_ISA_NS)
#error "kernels/simd.h belongs in an *_isa.cpp file, after core/isa_target.h"
#endif
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/vec_exp.h"

namespace mf::MF_ISA_NS::simd {

#if MF_ISA_LEVEL == 2

inline constexpr int kWidth = 16;
struct Vec {
  __m512 v;
};
inline Vec set1(float a) { return {_mm512_set1_ps(a)}; }
inline __mmask16 tail_mask(std::int64_t count) { return static_cast<__mmask16>((1u << count) - 1u); }
// Loads `count` (1..kWidth) floats; lanes past `count` get `fill`.
inline Vec load(const float* p, std::int64_t count = kWidth, float fill = 0.0f) {
  if (count == kWidth) return {_mm512_loadu_ps(p)};
  return {_mm512_mask_loadu_ps(_mm512_set1_ps(fill), tail_mask(count), p)};
}
inline void store(float* p, Vec a, std::int64_t count = kWidth) {
  if (count == kWidth)
    _mm512_storeu_ps(p, a.v);
  else
    _mm512_mask_storeu_ps(p, tail_mask(count), a.v);
}
inline Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Vec operator/(Vec a, Vec b) { return {_mm512_div_ps(a.v, b.v)}; }
inline Vec fmadd(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }   // a*b + c
inline Vec fnmadd(Vec a, Vec b, Vec c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }  // c - a*b
inline Vec fmsub(Vec a, Vec b, Vec c) { return {_mm512_fmsub_ps(a.v, b.v, c.v)}; }   // a*b - c
// maskz forms with all lanes: see vec_exp.h (GCC 12 -Wmaybe-uninitialized).
inline Vec max(Vec a, Vec b) { return {_mm512_maskz_max_ps(0xffff, a.v, b.v)}; }
inline Vec min(Vec a, Vec b) { return {_mm512_maskz_min_ps(0xffff, a.v, b.v)}; }
inline Vec abs(Vec a) { return {_mm512_abs_ps(a.v)}; }
// x < y ? a : b, per lane.
inline Vec select_lt(Vec x, Vec y, Vec a, Vec b) {
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.v, y.v, _CMP_LT_OQ), b.v, a.v)};
}
// (Not _mm512_reduce_*_ps, castps512_ps256 or unmasked extracts: GCC 12 trips
// -Wmaybe-uninitialized on them.)
template <int half>
inline __m256 half_of(__m512 a) {
  return _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, _mm512_castps_pd(a), half));
}
inline float reduce_add(Vec a) {
  const __m256 s8 = _mm256_add_ps(half_of<0>(a.v), half_of<1>(a.v));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float reduce_max(Vec a) {
  const __m256 s8 = _mm256_max_ps(half_of<0>(a.v), half_of<1>(a.v));
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// exp_approx (kernels/vec_exp.h) on 16 lanes: the same operations, so the same bits.
inline Vec exp(Vec a) {
  using namespace vec_exp_detail;
  // The all-lanes maskz forms are the plain instructions; GCC 12's unmasked
  // max/min/roundscale/scalef intrinsics trip -Wmaybe-uninitialized.
  constexpr __mmask16 all = 0xffff;
  // max/min return their second operand when either is NaN: NaN passes through.
  __m512 x = _mm512_maskz_max_ps(all, _mm512_set1_ps(kLo), a.v);
  x = _mm512_maskz_min_ps(all, _mm512_set1_ps(kHi), x);
  const __m512 n = _mm512_maskz_roundscale_ps(all, _mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpC6);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpC5));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpC4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpC3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpC2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return {_mm512_maskz_scalef_ps(all, p, n)};
}

#elif MF_ISA_LEVEL == 1

inline constexpr int kWidth = 8;
struct Vec {
  __m256 v;
};
inline Vec set1(float a) { return {_mm256_set1_ps(a)}; }
inline __m256i tail_mask(std::int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline Vec load(const float* p, std::int64_t count = kWidth, float fill = 0.0f) {
  if (count == kWidth) return {_mm256_loadu_ps(p)};
  const __m256i m = tail_mask(count);
  return {_mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m))};
}
inline void store(float* p, Vec a, std::int64_t count = kWidth) {
  if (count == kWidth)
    _mm256_storeu_ps(p, a.v);
  else
    _mm256_maskstore_ps(p, tail_mask(count), a.v);
}
inline Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
inline Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline Vec operator/(Vec a, Vec b) { return {_mm256_div_ps(a.v, b.v)}; }
inline Vec fmadd(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec fnmadd(Vec a, Vec b, Vec c) { return {_mm256_fnmadd_ps(a.v, b.v, c.v)}; }
inline Vec fmsub(Vec a, Vec b, Vec c) { return {_mm256_fmsub_ps(a.v, b.v, c.v)}; }
inline Vec max(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
inline Vec min(Vec a, Vec b) { return {_mm256_min_ps(a.v, b.v)}; }
inline Vec abs(Vec a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)}; }
inline Vec select_lt(Vec x, Vec y, Vec a, Vec b) {
  return {_mm256_blendv_ps(b.v, a.v, _mm256_cmp_ps(x.v, y.v, _CMP_LT_OQ))};
}
inline float reduce_add(Vec a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float reduce_max(Vec a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// exp_approx (kernels/vec_exp.h) on 8 lanes: the same operations, so the same bits.
inline Vec exp(Vec a) {
  using namespace vec_exp_detail;
  __m256 x = _mm256_max_ps(_mm256_set1_ps(kLo), a.v);
  x = _mm256_min_ps(_mm256_set1_ps(kHi), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpC6);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpC5));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpC4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpC3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpC2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i ni = _mm256_cvtps_epi32(n);  // NaN lanes give INT_MIN; p is NaN there anyway
  const __m256i n1 = _mm256_srai_epi32(ni, 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return {_mm256_mul_ps(_mm256_mul_ps(p, s1), s2)};
}

#else  // scalar

inline constexpr int kWidth = 1;
struct Vec {
  float v;
};
inline Vec set1(float a) { return {a}; }
inline Vec load(const float* p, std::int64_t = 1, float = 0.0f) { return {*p}; }
inline void store(float* p, Vec a, std::int64_t = 1) { *p = a.v; }
inline Vec operator+(Vec a, Vec b) { return {a.v + b.v}; }
inline Vec operator-(Vec a, Vec b) { return {a.v - b.v}; }
inline Vec operator*(Vec a, Vec b) { return {a.v * b.v}; }
inline Vec operator/(Vec a, Vec b) { return {a.v / b.v}; }
inline Vec fmadd(Vec a, Vec b, Vec c) { return {std::fma(a.v, b.v, c.v)}; }
inline Vec fnmadd(Vec a, Vec b, Vec c) { return {std::fma(-a.v, b.v, c.v)}; }
inline Vec fmsub(Vec a, Vec b, Vec c) { return {std::fma(a.v, b.v, -c.v)}; }
inline Vec max(Vec a, Vec b) { return {a.v > b.v ? a.v : b.v}; }
inline Vec min(Vec a, Vec b) { return {a.v < b.v ? a.v : b.v}; }
inline Vec abs(Vec a) { return {std::fabs(a.v)}; }
inline Vec select_lt(Vec x, Vec y, Vec a, Vec b) { return x.v < y.v ? a : b; }
inline float reduce_add(Vec a) { return a.v; }
inline float reduce_max(Vec a) { return a.v; }
inline Vec exp(Vec a) { return {exp_approx(a.v)}; }

#endif

inline Vec zero() { return set1(0.0f); }

// Calls f(i, count) for the blocks of kWidth lanes that cover [0, n); only the
// last block may have count < kWidth.
template <class F>
inline void for_each_block(std::int64_t n, F&& f) {
  std::int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) f(i, std::int64_t{kWidth});
  if (i < n) f(i, n - i);
}

// K sums over [0, n): f(i, count) returns std::array<Vec, K> with zeros in the
// lanes past `count`. Four independent accumulators per sum, combined in a
// fixed order; each lane adds at most ceil(n / (4 kWidth)) + 1 terms, so a sum
// of non-negative terms has relative error <= sum_depth(n) * 2^-24.
template <int K, class F>
inline std::array<float, K> sum_blocks(std::int64_t n, F&& f) {
  std::array<std::array<Vec, K>, 4> acc;
  for (auto& a : acc) a.fill(zero());
  std::int64_t i = 0;
  for (; i + 4 * kWidth <= n; i += 4 * kWidth) {
    for (int u = 0; u < 4; ++u) {
      const std::array<Vec, K> t = f(i + u * kWidth, std::int64_t{kWidth});
      for (int k = 0; k < K; ++k) acc[u][k] = acc[u][k] + t[k];
    }
  }
  int u = 0;
  for (; i < n; i += kWidth, ++u) {
    const std::array<Vec, K> t = f(i, n - i < kWidth ? n - i : std::int64_t{kWidth});
    for (int k = 0; k < K; ++k) acc[u][k] = acc[u][k] + t[k];
  }
  std::array<float, K> out;
  for (int k = 0; k < K; ++k) out[k] = reduce_add((acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k]));
  return out;
}

// One sum (see sum_blocks).
template <class F>
inline float sum_block(std::int64_t n, F&& f) {
  return sum_blocks<1>(n, [&](std::int64_t i, std::int64_t c) { return std::array<Vec, 1>{f(i, c)}; })[0];
}

// Largest value of x[0, n) (-inf for n = 0).
inline float row_max(const float* x, std::int64_t n) {
  const float ninf = -std::numeric_limits<float>::infinity();
  Vec m0 = set1(ninf), m1 = m0, m2 = m0, m3 = m0;
  std::int64_t i = 0;
  for (; i + 4 * kWidth <= n; i += 4 * kWidth) {
    m0 = max(m0, load(x + i));
    m1 = max(m1, load(x + i + kWidth));
    m2 = max(m2, load(x + i + 2 * kWidth));
    m3 = max(m3, load(x + i + 3 * kWidth));
  }
  for (; i < n; i += kWidth) m0 = max(m0, load(x + i, n - i < kWidth ? n - i : kWidth, ninf));
  return reduce_max(max(max(m0, m1), max(m2, m3)));
}

// Rounding-error depth of sum_blocks (core/isa.h).
constexpr std::int64_t sum_depth(std::int64_t n) { return simd_sum_depth(n, kWidth); }

}  // namespace mf::MF_ISA_NS::simd
