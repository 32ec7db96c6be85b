#include "core/rng.h"

#include <cmath>

namespace mf {

std::array<std::uint32_t, 4> philox4x32(std::uint64_t seed, std::uint64_t counter_hi, std::uint64_t counter_lo) {
  constexpr std::uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  std::uint32_t c0 = static_cast<std::uint32_t>(counter_lo), c1 = static_cast<std::uint32_t>(counter_lo >> 32);
  std::uint32_t c2 = static_cast<std::uint32_t>(counter_hi), c3 = static_cast<std::uint32_t>(counter_hi >> 32);
  std::uint32_t k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(kMul0) * c0;
    const std::uint64_t p1 = static_cast<std::uint64_t>(kMul1) * c2;
    const std::uint32_t n0 = static_cast<std::uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const std::uint32_t n1 = static_cast<std::uint32_t>(p1);
    const std::uint32_t n2 = static_cast<std::uint32_t>(p0 >> 32) ^ c3 ^ k1;
    const std::uint32_t n3 = static_cast<std::uint32_t>(p0);
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return {c0, c1, c2, c3};
}

float rng_uniform(std::uint64_t seed, std::uint64_t stream, std::uint64_t i) {
  return uniform_from_bits(philox4x32(seed, stream, i)[0]);
}

float rng_normal(std::uint64_t seed, std::uint64_t stream, std::uint64_t i) {
  // Box-Muller on two words of one Philox block; u1 in (0, 1].
  const auto w = philox4x32(seed, stream, i);
  const float u1 = (static_cast<float>(w[0] >> 8) + 1.0f) * (1.0f / 16777216.0f);
  const float u2 = uniform_from_bits(w[1]);
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.283185307179586f * u2);
}

void fill_normal(Tensor& t, std::uint64_t seed, float mean, float std, std::uint64_t stream) {
  t.check_dtype(DType::F32, "fill_normal");
  MF_CHECK(t.is_contiguous(), "[fill_normal] tensor must be contiguous");
  float* p = t.data<float>();
  const std::int64_t n = t.numel();
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) p[i] = mean + std * rng_normal(seed, stream, static_cast<std::uint64_t>(i));
}

void fill_uniform(Tensor& t, std::uint64_t seed, float lo, float hi, std::uint64_t stream) {
  t.check_dtype(DType::F32, "fill_uniform");
  MF_CHECK(t.is_contiguous(), "[fill_uniform] tensor must be contiguous");
  float* p = t.data<float>();
  const std::int64_t n = t.numel();
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i)
    p[i] = lo + (hi - lo) * rng_uniform(seed, stream, static_cast<std::uint64_t>(i));
}

Tensor randn(const Shape& shape, std::uint64_t seed, std::uint64_t stream) {
  Tensor t = Tensor::empty(shape);
  fill_normal(t, seed, 0.0f, 1.0f, stream);
  return t;
}

std::uint32_t Rng::next_u32() {
  // One Philox block per position; word 0 is used (simple and position-exact).
  return philox4x32(seed_, stream_, pos_++)[0];
}

float Rng::normal() { return rng_normal(seed_, stream_ ^ 0x6e6f726d616cull, pos_++); }

std::uint64_t Rng::below(std::uint64_t n) {
  MF_CHECK(n >= 1, "[rng] below(n) needs n >= 1");
  const std::uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  for (;;) {
    const std::uint64_t v = next_u64();
    if (v < limit) return v % n;
  }
}

}  // namespace mf
