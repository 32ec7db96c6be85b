// Reference twin of the FNet transform (fnet.h): the 2-D DFT's real part in
// double, written as the two separable stages of cos(a + b) = cos a cos b -
// sin a sin b, so that it is O(L^2 C + L C^2) and still checkable by eye.
#include <cmath>
#include <numbers>

#include "nn/fnet/fnet.h"

namespace mf::reference {

std::vector<double> fnet_forward(const Tensor& x, std::int64_t batch, std::int64_t seq_len) {
  const Tensor xc = x.contiguous();
  const std::int64_t L = seq_len, C = x.size(-1);
  const float* xp = xc.data<float>();
  // Angles reduced exactly in integers: 2 pi ((j k) mod N) / N.
  auto angle = [](std::int64_t j, std::int64_t k, std::int64_t n) {
    return 2.0 * std::numbers::pi * static_cast<double>((j * k) % n) / static_cast<double>(n);
  };
  auto table = [&](std::int64_t n, auto f) {  // [n, n]: f(angle(j, k, n))
    std::vector<double> t(static_cast<std::size_t>(n * n));
    for (std::int64_t j = 0; j < n; ++j)
      for (std::int64_t k = 0; k < n; ++k) t[j * n + k] = f(angle(j, k, n));
    return t;
  };
  const std::vector<double> cos_c = table(C, [](double a) { return std::cos(a); }),
                            sin_c = table(C, [](double a) { return std::sin(a); });
  const std::vector<double> cos_l = table(L, [](double a) { return std::cos(a); }),
                            sin_l = table(L, [](double a) { return std::sin(a); });
  std::vector<double> y(static_cast<std::size_t>(batch * L * C));
  std::vector<double> p(static_cast<std::size_t>(L * C)), q(p.size());  // [L, C]
  for (std::int64_t b = 0; b < batch; ++b) {
    const float* xb = xp + b * L * C;
    // Hidden stage: p = x cos, q = x sin (along c).
    for (std::int64_t l = 0; l < L; ++l)
      for (std::int64_t k = 0; k < C; ++k) {
        double pc = 0, qs = 0;
        for (std::int64_t c = 0; c < C; ++c) {
          pc += xb[l * C + c] * cos_c[c * C + k];
          qs += xb[l * C + c] * sin_c[c * C + k];
        }
        p[l * C + k] = pc;
        q[l * C + k] = qs;
      }
    // Sequence stage: y = cos p - sin q (along l).
    for (std::int64_t m = 0; m < L; ++m)
      for (std::int64_t k = 0; k < C; ++k) {
        double s = 0;
        for (std::int64_t l = 0; l < L; ++l)
          s += cos_l[l * L + m] * p[l * C + k] - sin_l[l * L + m] * q[l * C + k];
        y[(b * L + m) * C + k] = s;
      }
  }
  return y;
}

}  // namespace mf::reference
