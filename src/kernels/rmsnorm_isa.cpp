// Fast RMSNorm (see rmsnorm.h): per row one SIMD reduction (sum of squares)
// and one write pass; backward is two passes per row with the weight
// gradient gathered over fixed row parts.
// The kernels, compiled once per instruction set (core/isa_target.h);
// rmsnorm.cpp dispatches to the variant in use.
#include "kernels/rmsnorm.h"

#include <cmath>

#include "core/profile.h"
#include "kernels/rows.h"
#include "core/isa_target.h"
#include "kernels/simd.h"

namespace mf::MF_ISA_NS {

using simd::Vec;

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, std::int64_t rows,
                     std::int64_t n, float eps) {
  const profile::Scope timer(profile::Category::Norm);
  const float inv_n = 1.0f / static_cast<float>(n);
  kernels::parallel_rows(rows, n, [&](std::int64_t r) {
    const float* x = inp + r * n;
    float* y = out + r * n;
    const float ms = simd::sum_block(n, [&](std::int64_t i, std::int64_t c) {
                       const Vec v = simd::load(x + i, c);
                       return v * v;
                     }) *
                     inv_n;
    const float s = 1.0f / std::sqrt(ms + eps);
    const Vec vs = simd::set1(s);
    simd::for_each_block(n, [&](std::int64_t i, std::int64_t c) {
      Vec v = simd::load(x + i, c) * vs;
      if (weight) v = v * simd::load(weight + i, c);
      simd::store(y + i, v, c);
    });
    if (rstd) rstd[r] = s;
  });
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, std::int64_t rows, std::int64_t n) {
  const profile::Scope timer(profile::Category::Norm);
  const float inv_n = 1.0f / static_cast<float>(n);
  auto row = [&](std::int64_t r, float* dw) {
    const float* x = inp + r * n;
    const float* dy = dout + r * n;
    float* dx = dinp + r * n;
    const Vec vs = simd::set1(rstd[r]);
    auto dnorm_at = [&](std::int64_t i, std::int64_t c) {
      const Vec g = simd::load(dy + i, c);
      return weight ? g * simd::load(weight + i, c) : g;
    };
    const float sum_dnorm_xhat = simd::sum_block(
        n, [&](std::int64_t i, std::int64_t c) { return dnorm_at(i, c) * (simd::load(x + i, c) * vs); });
    const Vec mean_dnorm_xhat = simd::set1(sum_dnorm_xhat * inv_n);
    simd::for_each_block(n, [&](std::int64_t i, std::int64_t c) {
      // All loads before the stores (4K aliasing, see layernorm.cpp).
      const Vec g = simd::load(dy + i, c), xhat = simd::load(x + i, c) * vs;
      const Vec dnorm = weight ? g * simd::load(weight + i, c) : g;
      const Vec dw_old = dw ? simd::load(dw + i, c) : simd::zero();
      // dx = rstd * (dnorm - xhat * mean(dnorm * xhat))
      simd::store(dx + i, vs * simd::fnmadd(xhat, mean_dnorm_xhat, dnorm), c);
      if (dw) simd::store(dw + i, simd::fmadd(g, xhat, dw_old), c);
    });
  };
  if (!dweight) {
    kernels::parallel_rows(rows, n, [&](std::int64_t r) { row(r, nullptr); });
    return;
  }
  kernels::parallel_rows_accumulate<1>(rows, n, {dweight},
                                       [&](std::int64_t r, const std::array<float*, 1>& acc) { row(r, acc[0]); });
}

}  // namespace mf::MF_ISA_NS
