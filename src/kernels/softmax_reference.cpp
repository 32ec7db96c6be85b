// Reference softmax / log-softmax: the formulas of softmax.h, one row at a
// time, accumulated in double. The specification that the fast kernels are
// tested against.
#include <cmath>
#include <limits>

#include "kernels/softmax.h"

namespace mf::reference {

namespace {
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

double row_max(const float* x, std::int64_t n) {
  double m = kNegInf;
  for (std::int64_t j = 0; j < n; ++j) m = std::max(m, static_cast<double>(x[j]));
  return m;
}
}  // namespace

void softmax_forward(float* out, const float* inp, std::int64_t rows, std::int64_t n) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* x = inp + r * n;
    float* y = out + r * n;
    const double m = row_max(x, n);
    if (m == kNegInf) {  // fully masked row: all probabilities 0
      for (std::int64_t j = 0; j < n; ++j) y[j] = 0.0f;
      continue;
    }
    double s = 0;
    for (std::int64_t j = 0; j < n; ++j) s += std::exp(x[j] - m);
    for (std::int64_t j = 0; j < n; ++j) y[j] = static_cast<float>(std::exp(x[j] - m) / s);
  }
}

void softmax_backward(float* dinp, const float* dout, const float* out, std::int64_t rows, std::int64_t n) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* dy = dout + r * n;
    const float* y = out + r * n;
    double dot = 0;  // sum_j dy_j y_j
    for (std::int64_t j = 0; j < n; ++j) dot += static_cast<double>(dy[j]) * y[j];
    for (std::int64_t j = 0; j < n; ++j) dinp[r * n + j] = static_cast<float>(y[j] * (dy[j] - dot));
  }
}

void log_softmax_forward(float* out, const float* inp, std::int64_t rows, std::int64_t n) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* x = inp + r * n;
    float* y = out + r * n;
    const double m = row_max(x, n);
    if (m == kNegInf) {  // fully masked row: log 0
      for (std::int64_t j = 0; j < n; ++j) y[j] = -std::numeric_limits<float>::infinity();
      continue;
    }
    double s = 0;
    for (std::int64_t j = 0; j < n; ++j) s += std::exp(x[j] - m);
    const double log_s = std::log(s);
    for (std::int64_t j = 0; j < n; ++j) y[j] = static_cast<float>((x[j] - m) - log_s);
  }
}

void log_softmax_backward(float* dinp, const float* dout, const float* out, std::int64_t rows, std::int64_t n) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* dy = dout + r * n;
    const float* y = out + r * n;
    double s = 0;  // sum_j dy_j
    for (std::int64_t j = 0; j < n; ++j) s += dy[j];
    for (std::int64_t j = 0; j < n; ++j) dinp[r * n + j] = static_cast<float>(dy[j] - std::exp(double{y[j]}) * s);
  }
}

}  // namespace mf::reference
