// SIMD vocabulary of the flash attention kernels: one struct per instruction
// set (AVX-512, AVX2+FMA, scalar) with the same static functions, so every
// kernel is written once as a template on the ISA. An instruction-set
// translation unit (core/isa_target.h) defines the structs its target can run
// and names its own `ThisIsa`; all three are tested.
// exp2 is a degree-5 polynomial on [-1/2, 1/2] scaled by 2^n; inputs below
// -125 give exactly 0 (no denormals, -inf -> 0), which masking relies on;
// NaN gives NaN, so a NaN score reaches its row's output.
#pragma once
#if !defined(MF_ISA_NS)
#error "nn/attention/flash_simd.h belongs in an *_isa.cpp file, after core/isa_target.h"
#endif
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace mf::MF_ISA_NS::flash {

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();
inline constexpr float kLog2e = 1.4426950408889634f;

// 2^f ~ 1 + f (c1 + f (c2 + f (c3 + f (c4 + f c5)))) on |f| <= 1/2, minimax in
// relative error (tools/derive_flash_exp2.py): < 1.9e-7 evaluated in float32.
inline constexpr float kExp2C1 = 0.6931470036506653f, kExp2C2 = 0.24022242426872253f,
                       kExp2C3 = 0.05550733581185341f, kExp2C4 = 0.009671512991189957f,
                       kExp2C5 = 0.001326472731307149f;
inline constexpr float kExp2Min = -125.0f;  // below: 2^x is treated as 0

// dst[c * ldd + t] = scale * rows[t][c] for t < W (rows: W pointers), c < n_cols <= W:
// the plain loop; AVX-512 overrides it with an in-register transpose.
template <int W>
inline void transpose_rows_plain(const float* const* rows, int n_cols, float scale, float* dst, std::int64_t ldd) {
  for (int t = 0; t < W; ++t)
    for (int c = 0; c < n_cols; ++c) dst[c * ldd + t] = scale * rows[t][c];
}

struct IsaScalar {
  static constexpr int W = 1;
  static constexpr const char* kName = "scalar";
  using V = float;
  using M = bool;
  static V zero() { return 0.0f; }
  static V set1(float x) { return x; }
  static V load(const float* p) { return *p; }
  static V load_n(const float* p, int n) { return n > 0 ? *p : 0.0f; }
  static void store(float* p, V v) { *p = v; }
  static void store_n(float* p, V v, int n) {
    if (n > 0) *p = v;
  }
  static V fmadd(V a, V b, V c) { return std::fma(a, b, c); }  // one rounding in every instantiation
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V max(V a, V b) { return a > b ? a : b; }
  static V abs(V a) { return std::fabs(a); }
  static V floor(V a) { return std::floor(a); }
  static M le(V a, V b) { return a <= b; }
  static M ge(V a, V b) { return a >= b; }
  static M eq(V a, V b) { return a == b; }
  static M mand(M a, M b) { return a && b; }
  static M mor(M a, M b) { return a || b; }
  static M mall(bool b) { return b; }
  static V select(M m, V a, V b) { return m ? a : b; }
  static float reduce_add(V v) { return v; }
  static float reduce_max(V v) { return v; }
  static V exp2(V x) { return x < kExp2Min ? 0.0f : std::exp2(x); }  // NaN stays NaN
  static V sum_lanes_transposed(const V* a) { return a[0]; }
  static void transpose_rows(const float* const* rows, int n_cols, float scale, float* dst, std::int64_t ldd) {
    transpose_rows_plain<W>(rows, n_cols, scale, dst, ldd);
  }
};

#if MF_ISA_LEVEL >= 1
struct IsaAvx2 {
  static constexpr int W = 8;
  static constexpr const char* kName = "avx2";
  using V = __m256;
  using M = __m256;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static __m256i lanes_below(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V load_n(const float* p, int n) { return _mm256_maskload_ps(p, lanes_below(n)); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store_n(float* p, V v, int n) { _mm256_maskstore_ps(p, lanes_below(n), v); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static V floor(V a) { return _mm256_floor_ps(a); }
  static M le(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  static M ge(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static M eq(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static M mand(M a, M b) { return _mm256_and_ps(a, b); }
  static M mor(M a, M b) { return _mm256_or_ps(a, b); }
  static M mall(bool b) { return b ? _mm256_castsi256_ps(_mm256_set1_epi32(-1)) : _mm256_setzero_ps(); }
  static V select(M m, V a, V b) { return _mm256_blendv_ps(b, a, m); }
  static float reduce_add(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float reduce_max(V v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static V exp2(V x) {
    const M live = _mm256_cmp_ps(x, set1(kExp2Min), _CMP_NLT_UQ);  // NaN lanes stay live
    // max/min return their second operand when one is NaN: NaN passes through to the result.
    x = _mm256_min_ps(set1(127.0f), _mm256_max_ps(set1(kExp2Min), x));
    const V n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V f = sub(x, n);
    V p = fmadd(set1(kExp2C5), f, set1(kExp2C4));
    p = fmadd(p, f, set1(kExp2C3));
    p = fmadd(p, f, set1(kExp2C2));
    p = fmadd(p, f, set1(kExp2C1));
    p = fmadd(p, f, set1(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(mul(p, _mm256_castsi256_ps(e)), live);
  }
  // Lane t of the result = sum of the lanes of a[t] (8 vectors).
  static V sum_lanes_transposed(const V* a) {
    V v[4], w[2];
    for (int i = 0; i < 4; ++i)
      v[i] = add(_mm256_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm256_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 2; ++i)
      w[i] = add(_mm256_shuffle_ps(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                 _mm256_shuffle_ps(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return add(_mm256_permute2f128_ps(w[0], w[1], 0x20), _mm256_permute2f128_ps(w[0], w[1], 0x31));
  }
  static void transpose_rows(const float* const* rows, int n_cols, float scale, float* dst, std::int64_t ldd) {
    transpose_rows_plain<W>(rows, n_cols, scale, dst, ldd);
  }
};
#endif

#if MF_ISA_LEVEL >= 2
struct IsaAvx512 {
  static constexpr int W = 16;
  static constexpr const char* kName = "avx512";
  using V = __m512;
  using M = __mmask16;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static __mmask16 lanes_below(int n) {
    return static_cast<__mmask16>(n >= 16 ? 0xFFFFu : (n <= 0 ? 0u : (1u << n) - 1u));
  }
  static V load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(lanes_below(n), p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_n(float* p, V v, int n) { _mm512_mask_storeu_ps(p, lanes_below(n), v); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  // The maskz forms avoid GCC 12's false -Wmaybe-uninitialized on _mm512_undefined_ps.
  static constexpr __mmask16 kAll = 0xFFFF;
  static V max(V a, V b) { return _mm512_maskz_max_ps(kAll, a, b); }
  static V abs(V a) { return _mm512_abs_ps(a); }
  static V floor(V a) { return _mm512_maskz_roundscale_ps(kAll, a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  static M le(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  static M ge(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static M eq(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static M mand(M a, M b) { return static_cast<M>(a & b); }
  static M mor(M a, M b) { return static_cast<M>(a | b); }
  static M mall(bool b) { return b ? static_cast<M>(0xFFFF) : static_cast<M>(0); }
  static V select(M m, V a, V b) { return _mm512_mask_blend_ps(m, b, a); }
  static __m256 low_half(V v) { return _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, _mm512_castps_pd(v), 0)); }
  static __m256 high_half(V v) { return _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, _mm512_castps_pd(v), 1)); }
  static float reduce_add(V v) {
    __m256 h = _mm256_add_ps(low_half(v), high_half(v));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float reduce_max(V v) {
    __m256 h = _mm256_max_ps(low_half(v), high_half(v));
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static V exp2(V x) {
    const M live = _mm512_cmp_ps_mask(x, set1(kExp2Min), _CMP_NLT_UQ);  // NaN lanes stay live (NaN result)
    // No upper clamp: scalef overflows to +inf by itself (softmax inputs are <= 0 anyway).
    const V n = _mm512_maskz_roundscale_ps(kAll, x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V f = sub(x, n);
    V p = fmadd(set1(kExp2C5), f, set1(kExp2C4));
    p = fmadd(p, f, set1(kExp2C3));
    p = fmadd(p, f, set1(kExp2C2));
    p = fmadd(p, f, set1(kExp2C1));
    p = fmadd(p, f, set1(1.0f));
    return _mm512_maskz_scalef_ps(live, p, n);
  }
  // Lane t of the result = sum of the lanes of a[t] (16 vectors): pairs within
  // 128-bit blocks (unpack, shuffle), then across blocks (shuffle_f32x4).
  static V sum_lanes_transposed(const V* a) {
    V v[8], w[4], x[2];
    for (int i = 0; i < 8; ++i)
      v[i] = add(_mm512_maskz_unpacklo_ps(kAll, a[2 * i], a[2 * i + 1]),
                 _mm512_maskz_unpackhi_ps(kAll, a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; ++i)
      w[i] = add(_mm512_maskz_shuffle_ps(kAll, v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                 _mm512_maskz_shuffle_ps(kAll, v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 2; ++i)
      x[i] = add(_mm512_maskz_shuffle_f32x4(kAll, w[2 * i], w[2 * i + 1], 0x88),
                 _mm512_maskz_shuffle_f32x4(kAll, w[2 * i], w[2 * i + 1], 0xDD));
    return add(_mm512_maskz_shuffle_f32x4(kAll, x[0], x[1], 0x88), _mm512_maskz_shuffle_f32x4(kAll, x[0], x[1], 0xDD));
  }
  // 16 x 16 transpose in 4 butterfly stages: stage b swaps bit b of the row and
  // lane indices with two-source permutes (64 permutes per block).
  static void transpose_rows(const float* const* rows, int n_cols, float scale, float* dst, std::int64_t ldd) {
    V r[16];
    const V sv = set1(scale);
    for (int t = 0; t < 16; ++t) r[t] = mul(load_n(rows[t], n_cols), sv);
    // Stage b, lane c: take lane c & ~m (first result) or c | m (second) from row t
    // (c's bit b clear) or row t | m (set, + 16 selects permutex2var's second source).
    alignas(64) static constexpr std::int32_t kIdx[4][2][16] = {
        {{0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
         {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}},
        {{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
         {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}},
        {{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
         {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31}},
        {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
         {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}}};
    for (int bit = 0; bit < 4; ++bit) {
      const int m = 1 << bit;
      const __m512i va = _mm512_load_si512(kIdx[bit][0]), vb = _mm512_load_si512(kIdx[bit][1]);
      for (int t = 0; t < 16; ++t) {
        if (t & m) continue;
        const V a = r[t], b = r[t | m];
        r[t] = _mm512_permutex2var_ps(a, va, b);
        r[t | m] = _mm512_permutex2var_ps(a, vb, b);
      }
    }
    for (int c = 0; c < n_cols; ++c) store(dst + c * ldd, r[c]);
  }
};
#endif

// This translation unit's path.
#if MF_ISA_LEVEL == 2
using ThisIsa = IsaAvx512;
#elif MF_ISA_LEVEL == 1
using ThisIsa = IsaAvx2;
#else
using ThisIsa = IsaScalar;
#endif

}  // namespace mf::MF_ISA_NS::flash
