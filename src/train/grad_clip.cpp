#include "train/grad_clip.h"

#include <algorithm>
#include <cmath>

#include "core/profile.h"

namespace mf {
namespace {

constexpr std::int64_t kBlock = 4096;  // fixed summation blocks: thread-count independent

double sum_squares(const Tensor& g) {
  g.check_dtype(DType::F32, "grad_norm");
  MF_CHECK(g.is_contiguous(), "[grad_norm] gradients must be contiguous");
  const float* p = g.data<float>();
  const std::int64_t n = g.numel();
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<std::size_t>(blocks), 0.0);
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
  for (std::int64_t b = 0; b < blocks; ++b) {
    double s = 0;
    for (std::int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) s += static_cast<double>(p[i]) * p[i];
    partial[static_cast<std::size_t>(b)] = s;
  }
  double total = 0;
  for (double s : partial) total += s;
  return total;
}

}  // namespace

double global_grad_norm(const std::vector<Parameter*>& params) {
  double total = 0;
  for (const Parameter* p : params) total += sum_squares(p->grad);
  return std::sqrt(total);
}

double clip_grad_norm(const std::vector<Parameter*>& params, double max_norm) {
  const profile::Scope timer(profile::Category::Optimizer);
  const double norm = global_grad_norm(params);
  if (!std::isfinite(norm) || max_norm <= 0) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) scale_grads(params, static_cast<float>(coef));
  return norm;
}

void scale_grads(const std::vector<Parameter*>& params, float factor) {
  for (Parameter* prm : params) {
    float* g = prm->grad.data<float>();
    const std::int64_t n = prm->grad.numel();
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
    for (std::int64_t i = 0; i < n; ++i) g[i] *= factor;
  }
}

void zero_grads(const std::vector<Parameter*>& params) {
  const profile::Scope timer(profile::Category::Optimizer);
  for (Parameter* prm : params) prm->grad.fill(0.0f);
}

}  // namespace mf
