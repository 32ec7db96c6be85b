#include "nn/loss/lm_head_cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/profile.h"
#include "kernels/gemm.h"
#include "nn/loss/softmax_cross_entropy.h"

namespace mf {
namespace {

// Below this many logits a parallel region costs more than it saves.
constexpr std::int64_t kParallelMinElements = 1 << 15;

constexpr const char* kOp = "lm_head_cross_entropy";

struct Dims {
  std::int64_t n, h, v, count;
};

Dims check_inputs(const Tensor& hidden, const Tensor& weight, const Tensor& targets, const Tensor* dhidden,
                  const Tensor* dweight) {
  MF_CHECK(hidden.defined() && hidden.dtype() == DType::F32, "[", kOp, "] hidden must be a float32 tensor");
  MF_CHECK(weight.defined() && weight.dtype() == DType::F32, "[", kOp, "] weight must be a float32 tensor");
  MF_CHECK(hidden.dim() == 2, "[", kOp, "] hidden must have 2 dimensions [N, H] but has shape ",
           shape_str(hidden.shape()));
  MF_CHECK(weight.dim() == 2, "[", kOp, "] weight must have 2 dimensions [V, H] but has shape ",
           shape_str(weight.shape()));
  const Dims d{hidden.size(0), hidden.size(1), weight.size(0), 0};
  MF_CHECK(weight.size(1) == d.h, "[", kOp, "] weight has hidden size ", weight.size(1), " but hidden has ", d.h);
  MF_CHECK(d.v >= 1, "[", kOp, "] vocabulary size must be >= 1");
  const std::int64_t count = count_targets(targets, kOp);
  targets.check_shape({d.n}, kOp, "targets");
  const Tensor t = targets.contiguous();
  const std::int32_t* tp = t.data<std::int32_t>();
  for (std::int64_t i = 0; i < d.n; ++i)
    MF_CHECK(tp[i] < d.v, "[", kOp, "] target ", tp[i], " at row ", i, " is out of range for vocabulary size ", d.v);
  if (dhidden != nullptr) {
    MF_CHECK(dhidden->defined() && dhidden->dtype() == DType::F32 && dhidden->is_contiguous(), "[", kOp,
             "] dhidden must be a contiguous float32 tensor");
    dhidden->check_shape({d.n, d.h}, kOp, "dhidden");
  }
  if (dweight != nullptr) {
    MF_CHECK(dweight->defined() && dweight->dtype() == DType::F32 && dweight->is_contiguous(), "[", kOp,
             "] dweight must be a contiguous float32 tensor");
    dweight->check_shape({d.v, d.h}, kOp, "dweight");
  }
  return {d.n, d.h, d.v, count};
}

// The shared pass. Per chunk of rows [r0, r1):
//   Z = H_c W^T                      [c, V]
//   loss_i = logsumexp(Z_i) - Z_i[t_i]
//   dZ = g/count * (softmax(Z) - onehot(t))   (in place of Z; ignored rows 0)
//   dH_c = dZ W                      [c, H]   (overwrite)
//   dW  += dZ^T H_c                  [V, H]   (accumulate, chunk order fixed)
double fused(const Tensor& hidden_in, const Tensor& weight_in, const Tensor& targets_in, Tensor* dhidden,
             Tensor* dweight, float grad_loss, std::int64_t chunk_rows) {
  const profile::Scope timer(profile::Category::Loss);
  MF_CHECK(chunk_rows >= 1, "[", kOp, "] chunk_rows must be >= 1 but is ", chunk_rows);
  MF_CHECK((dhidden == nullptr) == (dweight == nullptr), "[", kOp, "] give both dhidden and dweight or neither");
  const Dims d = check_inputs(hidden_in, weight_in, targets_in, dhidden, dweight);
  const Tensor hidden = hidden_in.contiguous();
  const Tensor weight = weight_in.contiguous();
  const Tensor targets = targets_in.contiguous();
  const float* h = hidden.data<float>();
  const float* w = weight.data<float>();
  const std::int32_t* t = targets.data<std::int32_t>();
  const bool grads = dhidden != nullptr;
  const float scale = d.count > 0 ? grad_loss / static_cast<float>(d.count) : 0.0f;
  if (d.n == 0) return 0.0;

  const std::int64_t chunk = std::min(chunk_rows, d.n);
  Tensor logits = Tensor::empty({chunk, d.v});  // the only [rows x V] buffer
  float* z = logits.data<float>();
  std::vector<double> row_loss(static_cast<std::size_t>(d.n), 0.0);

  for (std::int64_t r0 = 0; r0 < d.n; r0 += chunk) {
    const std::int64_t c = std::min(chunk, d.n - r0);
    const float* hc = h + r0 * d.h;
    std::int64_t live = 0;
    for (std::int64_t i = 0; i < c; ++i) live += t[r0 + i] >= 0 ? 1 : 0;
    if (live == 0) {  // nothing to predict in this chunk
      if (grads) std::fill(dhidden->data<float>() + r0 * d.h, dhidden->data<float>() + (r0 + c) * d.h, 0.0f);
      continue;
    }
    gemm(Trans::N, Trans::T, c, d.v, d.h, 1.0f, hc, d.h, w, d.h, 0.0f, z, d.v);
#pragma omp parallel for schedule(static) if (c * d.v >= kParallelMinElements)
    for (std::int64_t i = 0; i < c; ++i) {
      float* zi = z + i * d.v;
      const std::int32_t ti = t[r0 + i];
      if (ti < 0) {
        if (grads) std::fill(zi, zi + d.v, 0.0f);
        continue;
      }
      const float zt = zi[ti];
      float m = -std::numeric_limits<float>::infinity();
      for (std::int64_t j = 0; j < d.v; ++j) m = std::fmax(m, zi[j]);
      float sum = 0.0f;  // sum_j exp(z_j - m) >= 1
      for (std::int64_t j = 0; j < d.v; ++j) {
        const float e = std::exp(zi[j] - m);
        sum += e;
        if (grads) zi[j] = e;  // kept for the softmax below
      }
      row_loss[static_cast<std::size_t>(r0 + i)] = std::log(static_cast<double>(sum)) + (m - static_cast<double>(zt));
      if (grads) {
        const float inv = scale / sum;
        for (std::int64_t j = 0; j < d.v; ++j) zi[j] *= inv;
        zi[ti] -= scale;
      }
    }
    if (grads) {
      gemm(Trans::N, Trans::N, c, d.h, d.v, 1.0f, z, d.v, w, d.h, 0.0f, dhidden->data<float>() + r0 * d.h, d.h);
      gemm(Trans::T, Trans::N, d.v, d.h, c, 1.0f, z, d.v, hc, d.h, 1.0f, dweight->data<float>(), d.h);
    }
  }
  double total = 0.0;  // row order: the same bits for any thread count
  for (double l : row_loss) total += l;
  return d.count > 0 ? total / static_cast<double>(d.count) : 0.0;
}

}  // namespace

double lm_head_cross_entropy_forward(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                     std::int64_t chunk_rows) {
  return fused(hidden, weight, targets, nullptr, nullptr, 1.0f, chunk_rows);
}

double lm_head_cross_entropy_forward_backward(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                              Tensor& dhidden, Tensor& dweight, float grad_loss,
                                              std::int64_t chunk_rows) {
  return fused(hidden, weight, targets, &dhidden, &dweight, grad_loss, chunk_rows);
}

namespace reference {

double lm_head_cross_entropy(const Tensor& hidden_in, const Tensor& weight_in, const Tensor& targets_in,
                             Tensor* dhidden, Tensor* dweight, double grad_loss) {
  const Dims d = check_inputs(hidden_in, weight_in, targets_in, dhidden, dweight);
  const Tensor hidden = hidden_in.contiguous(), weight = weight_in.contiguous(), targets = targets_in.contiguous();
  const float* h = hidden.data<float>();
  const float* w = weight.data<float>();
  const std::int32_t* t = targets.data<std::int32_t>();
  // logits and d(mean loss)/d(logits), all in double
  std::vector<double> z(static_cast<std::size_t>(d.n * d.v));
  for (std::int64_t i = 0; i < d.n; ++i)
    for (std::int64_t j = 0; j < d.v; ++j) {
      double s = 0;
      for (std::int64_t k = 0; k < d.h; ++k) s += static_cast<double>(h[i * d.h + k]) * w[j * d.h + k];
      z[i * d.v + j] = s;
    }
  double total = 0;
  std::vector<double> dz(z.size(), 0.0);
  for (std::int64_t i = 0; i < d.n; ++i) {
    if (t[i] < 0) continue;
    double m = -std::numeric_limits<double>::infinity();
    for (std::int64_t j = 0; j < d.v; ++j) m = std::max(m, z[i * d.v + j]);
    double sum = 0;
    for (std::int64_t j = 0; j < d.v; ++j) sum += std::exp(z[i * d.v + j] - m);
    const double lse = m + std::log(sum);
    total += lse - z[i * d.v + t[i]];
    for (std::int64_t j = 0; j < d.v; ++j)
      dz[i * d.v + j] = (std::exp(z[i * d.v + j] - lse) - (j == t[i] ? 1.0 : 0.0)) * grad_loss / d.count;
  }
  if (dhidden != nullptr) {
    float* dh = dhidden->data<float>();
    for (std::int64_t i = 0; i < d.n; ++i)
      for (std::int64_t k = 0; k < d.h; ++k) {
        double s = 0;
        for (std::int64_t j = 0; j < d.v; ++j) s += dz[i * d.v + j] * w[j * d.h + k];
        dh[i * d.h + k] = static_cast<float>(s);
      }
  }
  if (dweight != nullptr) {
    float* dw = dweight->data<float>();
    for (std::int64_t j = 0; j < d.v; ++j)
      for (std::int64_t k = 0; k < d.h; ++k) {
        double s = 0;
        for (std::int64_t i = 0; i < d.n; ++i) s += dz[i * d.v + j] * h[i * d.h + k];
        dw[j * d.h + k] += static_cast<float>(s);
      }
  }
  return d.count > 0 ? total / static_cast<double>(d.count) : 0.0;
}

}  // namespace reference
}  // namespace mf
