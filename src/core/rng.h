// Counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel
// random numbers: as easy as 1, 2, 3", SC'11). Every value is a pure function
// of (seed, counter), so results do not depend on thread count or order.
#pragma once
#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace mf {

// Four 32-bit random words for (seed, counter).
std::array<std::uint32_t, 4> philox4x32(std::uint64_t seed, std::uint64_t counter_hi, std::uint64_t counter_lo);

// Uniform float in [0, 1) from a 32-bit word (24 random bits).
inline float uniform_from_bits(std::uint32_t w) { return static_cast<float>(w >> 8) * (1.0f / 16777216.0f); }

// The i-th uniform [0,1) / standard normal value of stream `stream` under `seed`.
float rng_uniform(std::uint64_t seed, std::uint64_t stream, std::uint64_t i);
float rng_normal(std::uint64_t seed, std::uint64_t stream, std::uint64_t i);

// Fills a float32 tensor (row-major element order) with N(mean, std^2) or
// U[lo, hi) values; element i gets rng_*(seed, stream, i).
void fill_normal(Tensor& t, std::uint64_t seed, float mean = 0.0f, float std = 1.0f, std::uint64_t stream = 0);
void fill_uniform(Tensor& t, std::uint64_t seed, float lo = 0.0f, float hi = 1.0f, std::uint64_t stream = 0);

// Convenience: a new float32 tensor of N(0, 1) values.
Tensor randn(const Shape& shape, std::uint64_t seed, std::uint64_t stream = 0);

// A sequential generator for host-side code (data sampling, init order);
// still counter-based: (seed, stream, position) determines every draw.
class Rng {
 public:
  explicit Rng(std::uint64_t seed, std::uint64_t stream = 0) : seed_(seed), stream_(stream) {}
  std::uint32_t next_u32();
  std::uint64_t next_u64() { return (static_cast<std::uint64_t>(next_u32()) << 32) | next_u32(); }
  float uniform() { return uniform_from_bits(next_u32()); }
  float normal();
  // Uniform integer in [0, n), n >= 1, without modulo bias.
  std::uint64_t below(std::uint64_t n);
  std::uint64_t position() const { return pos_; }
  void set_position(std::uint64_t p) { pos_ = p; }

 private:
  std::uint64_t seed_, stream_, pos_ = 0;
};

}  // namespace mf
