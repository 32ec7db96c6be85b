// Fast softmax / log-softmax (see softmax.h): three passes per row (max;
// exp and sum; scale), SIMD through kernels/simd.h, rows in parallel.
// Accumulation is float: sums of positive terms lose <= sum_depth(n) ulp.
// The kernels, compiled once per instruction set (core/isa_target.h);
// softmax.cpp dispatches to the variant in use.
#include "kernels/softmax.h"

#include <cmath>
#include <limits>

#include "kernels/rows.h"
#include "core/isa_target.h"
#include "kernels/simd.h"

namespace mf::MF_ISA_NS {

namespace {
using simd::Vec;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void fill_row(float* y, std::int64_t n, float v) {
  for (std::int64_t j = 0; j < n; ++j) y[j] = v;
}

// y[j] = exp(x[j] - m), returns sum_j y[j]. Lanes past the row end load -inf
// and so add exp(-inf) = 0.
float exp_shifted_row(float* y, const float* x, std::int64_t n, float m) {
  const Vec vm = simd::set1(m);
  return simd::sum_block(n, [&](std::int64_t i, std::int64_t c) {
    const Vec e = simd::exp(simd::load(x + i, c, kNegInf) - vm);
    simd::store(y + i, e, c);
    return e;
  });
}

// sum_j exp(x[j] - m) without storing.
float sum_exp_shifted_row(const float* x, std::int64_t n, float m) {
  const Vec vm = simd::set1(m);
  return simd::sum_block(
      n, [&](std::int64_t i, std::int64_t c) { return simd::exp(simd::load(x + i, c, kNegInf) - vm); });
}
}  // namespace

void softmax_forward(float* out, const float* inp, std::int64_t rows, std::int64_t n) {
  kernels::parallel_rows(rows, n, [&](std::int64_t r) {
    const float* x = inp + r * n;
    float* y = out + r * n;
    const float m = simd::row_max(x, n);
    if (m == kNegInf) return fill_row(y, n, 0.0f);  // fully masked row
    const float s = exp_shifted_row(y, x, n, m);    // s >= 1 (the max term is exp(0))
    const Vec inv = simd::set1(1.0f / s);
    simd::for_each_block(n, [&](std::int64_t i, std::int64_t c) { simd::store(y + i, simd::load(y + i, c) * inv, c); });
  });
}

void softmax_backward(float* dinp, const float* dout, const float* out, std::int64_t rows, std::int64_t n) {
  kernels::parallel_rows(rows, n, [&](std::int64_t r) {
    const float* dy = dout + r * n;
    const float* y = out + r * n;
    float* dx = dinp + r * n;
    // dot = sum_j dy_j y_j; dx = y * (dy - dot)
    const Vec dot = simd::set1(
        simd::sum_block(n, [&](std::int64_t i, std::int64_t c) { return simd::load(dy + i, c) * simd::load(y + i, c); }));
    simd::for_each_block(n, [&](std::int64_t i, std::int64_t c) {
      simd::store(dx + i, simd::load(y + i, c) * (simd::load(dy + i, c) - dot), c);
    });
  });
}

void log_softmax_forward(float* out, const float* inp, std::int64_t rows, std::int64_t n) {
  kernels::parallel_rows(rows, n, [&](std::int64_t r) {
    const float* x = inp + r * n;
    float* y = out + r * n;
    const float m = simd::row_max(x, n);
    if (m == kNegInf) return fill_row(y, n, kNegInf);  // fully masked row: log 0
    // y = (x - m) - log(s): subtracting m first keeps the error relative to |x - m|.
    const Vec vm = simd::set1(m), log_s = simd::set1(std::log(sum_exp_shifted_row(x, n, m)));
    simd::for_each_block(n, [&](std::int64_t i, std::int64_t c) {
      simd::store(y + i, (simd::load(x + i, c) - vm) - log_s, c);
    });
  });
}

void log_softmax_backward(float* dinp, const float* dout, const float* out, std::int64_t rows, std::int64_t n) {
  kernels::parallel_rows(rows, n, [&](std::int64_t r) {
    const float* dy = dout + r * n;
    const float* y = out + r * n;
    float* dx = dinp + r * n;
    // dx = dy - exp(y) * sum_j dy_j
    const Vec s = simd::set1(simd::sum_block(n, [&](std::int64_t i, std::int64_t c) { return simd::load(dy + i, c); }));
    simd::for_each_block(n, [&](std::int64_t i, std::int64_t c) {
      simd::store(dx + i, simd::fnmadd(simd::exp(simd::load(y + i, c)), s, simd::load(dy + i, c)), c);
    });
  });
}

}  // namespace mf::MF_ISA_NS
