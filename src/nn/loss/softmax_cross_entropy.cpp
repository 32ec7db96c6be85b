#include "nn/loss/softmax_cross_entropy.h"

#include <cmath>
#include <limits>
#include <vector>

namespace mf {

// Below this many logits a parallel region costs more than it saves.
constexpr std::int64_t kParallelMinElements = 1 << 15;

std::int64_t count_targets(const Tensor& targets, const char* op) {
  MF_CHECK(targets.defined(), "[", op, "] targets are undefined");
  MF_CHECK(targets.dtype() == DType::I32, "[", op, "] targets must be int32 but are ", dtype_name(targets.dtype()));
  MF_CHECK(targets.dim() == 1, "[", op, "] targets must have 1 dimension [N] but have shape ",
           shape_str(targets.shape()));
  const Tensor t = targets.contiguous();
  const std::int32_t* p = t.data<std::int32_t>();
  std::int64_t count = 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) count += p[i] >= 0 ? 1 : 0;
  return count;
}

double softmax_cross_entropy(const Tensor& logits_in, const Tensor& targets_in, Tensor* dlogits, float grad_scale) {
  constexpr const char* op = "softmax_cross_entropy";
  MF_CHECK(logits_in.defined() && logits_in.dtype() == DType::F32 && logits_in.dim() == 2, "[", op,
           "] logits must be float32 [N, V] but are ", logits_in.defined() ? dtype_name(logits_in.dtype()) : "undefined",
           " ", shape_str(logits_in.shape()));
  const std::int64_t n = logits_in.size(0), v = logits_in.size(1);
  MF_CHECK(v >= 1, "[", op, "] vocabulary size must be >= 1");
  const std::int64_t count = count_targets(targets_in, op);
  targets_in.check_shape({n}, op, "targets");
  if (dlogits != nullptr) {
    MF_CHECK(dlogits->defined() && dlogits->dtype() == DType::F32 && dlogits->is_contiguous(), "[", op,
             "] dlogits must be a contiguous float32 tensor");
    dlogits->check_shape({n, v}, op, "dlogits");
  }
  const Tensor logits = logits_in.contiguous();
  const Tensor targets = targets_in.contiguous();
  const float* z = logits.data<float>();
  const std::int32_t* t = targets.data<std::int32_t>();
  for (std::int64_t i = 0; i < n; ++i)
    MF_CHECK(t[i] < v, "[", op, "] target ", t[i], " at row ", i, " is out of range for vocabulary size ", v);

  std::vector<double> row_loss(static_cast<std::size_t>(n), 0.0);
  const float scale = count > 0 ? grad_scale / static_cast<float>(count) : 0.0f;
  float* dz = dlogits != nullptr ? dlogits->data<float>() : nullptr;
#pragma omp parallel for schedule(static) if (n * v >= kParallelMinElements)
  for (std::int64_t i = 0; i < n; ++i) {
    const float* zi = z + i * v;
    if (t[i] < 0) {
      if (dz != nullptr)
        for (std::int64_t j = 0; j < v; ++j) dz[i * v + j] = 0.0f;
      continue;
    }
    // log-softmax with the max subtracted: lse = m + log(sum exp(z - m)).
    float m = -std::numeric_limits<float>::infinity();
    for (std::int64_t j = 0; j < v; ++j) m = std::fmax(m, zi[j]);
    double sum = 0.0;
    for (std::int64_t j = 0; j < v; ++j) {
      const double e = std::exp(static_cast<double>(zi[j]) - m);
      sum += e;
      if (dz != nullptr) dz[i * v + j] = static_cast<float>(e);  // kept for the softmax below
    }
    row_loss[static_cast<std::size_t>(i)] = m + std::log(sum) - zi[t[i]];
    if (dz != nullptr) {
      // d(loss_i)/dz_j = softmax_j - [j == t_i]
      const double inv = scale / sum;
      for (std::int64_t j = 0; j < v; ++j) dz[i * v + j] = static_cast<float>(dz[i * v + j] * inv);
      dz[i * v + t[i]] -= scale;
    }
  }
  double total = 0.0;  // summed in row order: the same bits for any thread count
  for (double l : row_loss) total += l;
  return count > 0 ? total / static_cast<double>(count) : 0.0;
}

}  // namespace mf
