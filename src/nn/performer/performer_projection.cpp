// Performer's random-feature projection W [m, d] (performer.h,
// performer_draw_projection): performer-pytorch's
// gaussian_orthogonal_random_matrix with our own QR (modified Gram-Schmidt
// in double) and Philox draws, so a (seed, stream, draw) gives the same W on
// every machine and thread count.
#include <bit>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "nn/performer/performer.h"

namespace mf {

void performer_draw_projection(Tensor& projection, std::uint64_t seed, std::uint64_t stream, std::uint64_t draw,
                               PerformerScaling scaling) {
  MF_CHECK(projection.defined() && projection.dim() == 2 && projection.dtype() == DType::F32 &&
               projection.is_contiguous() && projection.size(0) >= 1 && projection.size(1) >= 1,
           "[performer] the projection must be a contiguous float32 [m, d] tensor");
  const std::int64_t m = projection.size(0), d = projection.size(1);
  const std::uint64_t s = stream + (draw << 32);
  const std::int64_t blocks = (m + d - 1) / d;
  float* w = projection.data<float>();
  std::vector<double> a(d * d);
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    // Gaussian G [d, d]; its QR's Q has orthonormal columns; rows of Q^T are the features.
    const std::uint64_t base = static_cast<std::uint64_t>(blk * d * d);
    for (std::int64_t i = 0; i < d * d; ++i) a[i] = rng_normal(seed, s, base + i);
    // Modified Gram-Schmidt over the columns of G (column c = a[r * d + c]).
    for (std::int64_t c = 0; c < d; ++c) {
      for (std::int64_t p = 0; p < c; ++p) {
        double dot = 0;
        for (std::int64_t r = 0; r < d; ++r) dot += a[r * d + p] * a[r * d + c];
        for (std::int64_t r = 0; r < d; ++r) a[r * d + c] -= dot * a[r * d + p];
      }
      double norm = 0;
      for (std::int64_t r = 0; r < d; ++r) norm += a[r * d + c] * a[r * d + c];
      norm = std::sqrt(norm);
      MF_CHECK(norm > 1e-12, "[performer] internal: degenerate Gaussian block in the projection draw");
      for (std::int64_t r = 0; r < d; ++r) a[r * d + c] /= norm;
    }
    for (std::int64_t i = 0; i < d && blk * d + i < m; ++i)  // row i of Q^T = column i of Q
      for (std::int64_t r = 0; r < d; ++r) w[(blk * d + i) * d + r] = static_cast<float>(a[r * d + i]);
  }
  const std::uint64_t norms_base = static_cast<std::uint64_t>(blocks * d * d);
  for (std::int64_t i = 0; i < m; ++i) {
    double mult = std::sqrt(static_cast<double>(d));
    if (scaling == PerformerScaling::Chi) {  // |g| for g ~ N(0, I_d): chi(d)
      double sq = 0;
      for (std::int64_t r = 0; r < d; ++r) {
        const double z = rng_normal(seed, s, norms_base + static_cast<std::uint64_t>(i * d + r));
        sq += z * z;
      }
      mult = std::sqrt(sq);
    }
    for (std::int64_t r = 0; r < d; ++r) w[i * d + r] = static_cast<float>(w[i * d + r] * mult);
  }
}

void performer_redraw_projection(Tensor& projection, std::uint64_t draw, PerformerScaling scaling) {
  MF_CHECK(projection.defined() && projection.dtype() == DType::F32 && projection.is_contiguous(),
           "[performer] the projection must be a contiguous float32 [m, d] tensor");
  std::uint64_t h = 0x9e3779b97f4a7c15ull ^ draw;
  const float* w = projection.data<float>();
  for (std::int64_t i = 0; i < projection.numel(); ++i) {  // splitmix64 steps, each word folded in
    h += 0x9e3779b97f4a7c15ull + std::bit_cast<std::uint32_t>(w[i]);
    std::uint64_t z = h;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    h = z ^ (z >> 31);
  }
  performer_draw_projection(projection, h, 0, draw, scaling);
}

}  // namespace mf
