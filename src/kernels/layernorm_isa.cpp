// Fast LayerNorm (see layernorm.h): per row two SIMD reductions (mean, then
// variance around it) and one write pass; backward is two passes per row
// with parameter gradients gathered over fixed row parts.
// The kernels, compiled once per instruction set (core/isa_target.h);
// layernorm.cpp dispatches to the variant in use.
#include "kernels/layernorm.h"

#include <cmath>

#include "core/profile.h"
#include "kernels/rows.h"
#include "core/isa_target.h"
#include "kernels/simd.h"

namespace mf::MF_ISA_NS {

using simd::Vec;

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, std::int64_t rows, std::int64_t n, float eps) {
  const profile::Scope timer(profile::Category::Norm);
  const float inv_n = 1.0f / static_cast<float>(n);
  kernels::parallel_rows(rows, n, [&](std::int64_t r) {
    const float* x = inp + r * n;
    float* y = out + r * n;
    const float m = simd::sum_block(n, [&](std::int64_t i, std::int64_t c) { return simd::load(x + i, c); }) * inv_n;
    const Vec vm = simd::set1(m);
    const float var = simd::sum_block(n, [&](std::int64_t i, std::int64_t c) {
                        const Vec d = simd::load(x + i, c, m) - vm;  // tail lanes: m - m = 0
                        return d * d;
                      }) *
                      inv_n;
    const float s = 1.0f / std::sqrt(var + eps);
    const Vec vs = simd::set1(s);
    simd::for_each_block(n, [&](std::int64_t i, std::int64_t c) {
      Vec v = (simd::load(x + i, c) - vm) * vs;
      if (weight) v = v * simd::load(weight + i, c);
      if (bias) v = v + simd::load(bias + i, c);
      simd::store(y + i, v, c);
    });
    if (mean) mean[r] = m;
    if (rstd) rstd[r] = s;
  });
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, std::int64_t rows,
                        std::int64_t n) {
  const profile::Scope timer(profile::Category::Norm);
  const float inv_n = 1.0f / static_cast<float>(n);
  auto row = [&](std::int64_t r, float* dw, float* db) {
    const float* x = inp + r * n;
    const float* dy = dout + r * n;
    float* dx = dinp + r * n;
    const Vec vm = simd::set1(mean[r]), vs = simd::set1(rstd[r]);
    auto dnorm_at = [&](std::int64_t i, std::int64_t c) {
      const Vec g = simd::load(dy + i, c);
      return weight ? g * simd::load(weight + i, c) : g;
    };
    // Tail lanes: dy loads 0, so dnorm and dnorm * xhat are 0 there.
    const auto sums = simd::sum_blocks<2>(n, [&](std::int64_t i, std::int64_t c) {
      const Vec xhat = (simd::load(x + i, c) - vm) * vs, dnorm = dnorm_at(i, c);
      return std::array<Vec, 2>{dnorm, dnorm * xhat};
    });
    const Vec mean_dnorm = simd::set1(sums[0] * inv_n), mean_dnorm_xhat = simd::set1(sums[1] * inv_n);
    simd::for_each_block(n, [&](std::int64_t i, std::int64_t c) {
      // All loads before the stores: with power-of-two n the rows sit at
      // 4 KiB strides, and a load issued after a store to the same address
      // bits stalls (4K aliasing; measured 2x slower with n = 1024).
      const Vec g = simd::load(dy + i, c), xhat = (simd::load(x + i, c) - vm) * vs;
      const Vec dnorm = weight ? g * simd::load(weight + i, c) : g;
      const Vec dw_old = dw ? simd::load(dw + i, c) : simd::zero(), db_old = db ? simd::load(db + i, c) : simd::zero();
      // dx = rstd * (dnorm - mean(dnorm) - xhat * mean(dnorm * xhat))
      simd::store(dx + i, vs * simd::fnmadd(xhat, mean_dnorm_xhat, dnorm - mean_dnorm), c);
      if (dw) simd::store(dw + i, simd::fmadd(g, xhat, dw_old), c);
      if (db) simd::store(db + i, db_old + g, c);
    });
  };
  if (!dweight && !dbias) {
    kernels::parallel_rows(rows, n, [&](std::int64_t r) { row(r, nullptr, nullptr); });
    return;
  }
  kernels::parallel_rows_accumulate<2>(rows, n, {dweight, dbias},
                                       [&](std::int64_t r, const std::array<float*, 2>& acc) { row(r, acc[0], acc[1]); });
}

}  // namespace mf::MF_ISA_NS
