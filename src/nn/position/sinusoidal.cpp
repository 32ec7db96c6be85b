#include "nn/position/sinusoidal.h"

#include <cmath>

namespace mf {

namespace {
// PE[pos, j] for column j: the pair index i = j / 2 sets the frequency.
inline double sinusoid(double pos, std::int64_t j, std::int64_t hidden, double base) {
  const double angle = pos / std::pow(base, static_cast<double>(j - j % 2) / static_cast<double>(hidden));
  return j % 2 == 0 ? std::sin(angle) : std::cos(angle);
}

void check_base(double base) {
  MF_CHECK(std::isfinite(base) && base > 1.0, "[sinusoidal] base must be a finite number > 1, got ", base);
}
}  // namespace

Tensor sinusoidal_table(std::int64_t max_positions, std::int64_t hidden, double base) {
  MF_CHECK(max_positions >= 0, "[sinusoidal] max_positions must be >= 0, got ", max_positions);
  MF_CHECK(hidden >= 1, "[sinusoidal] hidden size must be >= 1, got ", hidden);
  check_base(base);
  Tensor t = Tensor::empty({max_positions, hidden});
  float* p = t.data<float>();
  std::vector<double> inv(static_cast<std::size_t>(hidden));
  for (std::int64_t j = 0; j < hidden; ++j)
    inv[j] = 1.0 / std::pow(base, static_cast<double>(j - j % 2) / static_cast<double>(hidden));
#pragma omp parallel for schedule(static) if (max_positions * hidden > 8192)
  for (std::int64_t pos = 0; pos < max_positions; ++pos)
    for (std::int64_t j = 0; j < hidden; ++j) {
      const double angle = static_cast<double>(pos) * inv[j];
      p[pos * hidden + j] = static_cast<float>(j % 2 == 0 ? std::sin(angle) : std::cos(angle));
    }
  return t;
}

void sinusoidal_forward_inplace(const Tensor& x, const Tensor& table, const PositionIds& positions) {
  MF_CHECK(x.dim() == 3, "[sinusoidal] x must have 3 dimensions [B, L, hidden] but has shape ", shape_str(x.shape()));
  const ResolvedPositions pos = resolve_positions(positions, x.size(0), x.size(1), "sinusoidal");
  add_position_rows(x, table, pos, "sinusoidal", "table rows");
}

Tensor sinusoidal_forward(const Tensor& x, const Tensor& table, const PositionIds& positions) {
  Tensor y = x.clone();
  sinusoidal_forward_inplace(y, table, positions);
  return y;
}

Tensor sinusoidal_forward_reference(const Tensor& x, const PositionIds& positions, double base) {
  MF_CHECK(x.dim() == 3 && x.dtype() == DType::F32,
           "[sinusoidal] x must be float32 with 3 dimensions [B, L, hidden] but has shape ", shape_str(x.shape()));
  check_base(base);
  const ResolvedPositions pos = resolve_positions(positions, x.size(0), x.size(1), "sinusoidal");
  Tensor y = x.clone();
  float* p = y.data<float>();
  const std::int64_t B = x.size(0), L = x.size(1), H = x.size(2);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t l = 0; l < L; ++l)
      for (std::int64_t j = 0; j < H; ++j) {
        float& v = p[(b * L + l) * H + j];
        v = static_cast<float>(v + sinusoid(static_cast<double>(pos.at(b, l)), j, H, base));
      }
  return y;
}

}  // namespace mf
