// Performer attention, the plain reference twin (performer.h): every output
// row from the definition, in double: causal row i is the non-causal formula
// (performer-pytorch's softmax_kernel / generalized_kernel +
// linear_attention) on the real keys 0..i, with its own key stabilizer.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "nn/performer/performer.h"

namespace mf::reference {

void performer_attention_forward(const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& projection, std::int64_t batch, std::int64_t seq_len, bool causal,
                                 const Tensor& mask, const PerformerOptions& opt) {
  const std::int64_t hq = q.size(1), hkv = k.size(1), d = q.size(2), m = projection.size(0), group = hq / hkv;
  const bool softmax = opt.kernel == PerformerKernel::Softmax;
  const double c = std::pow(static_cast<double>(d), -0.25), ratio = softmax ? 1.0 / std::sqrt(double(m)) : 1.0;
  const float *qp = q.data<float>(), *kp = k.data<float>(), *vp = v.data<float>(), *w = projection.data<float>();
  float* op = out.data<float>();
  auto logits = [&](const float* x) {  // c W x
    std::vector<double> a(m);
    for (std::int64_t f = 0; f < m; ++f) {
      double s = 0;
      for (std::int64_t e = 0; e < d; ++e) s += double(w[f * d + e]) * x[e];
      a[f] = c * s;
    }
    return a;
  };
  auto half_sq = [&](const float* x) {
    double s = 0;
    for (std::int64_t e = 0; e < d; ++e) s += double(x[e]) * x[e];
    return 0.5 * c * c * s;
  };
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t h = 0; h < hq; ++h) {
      const std::int64_t g = h / group;
      std::vector<std::vector<double>> ka(seq_len);
      std::vector<bool> real(seq_len);
      for (std::int64_t j = 0; j < seq_len; ++j) {
        ka[j] = logits(kp + ((b * seq_len + j) * hkv + g) * d);
        real[j] = !mask.defined() || mask.data<std::int32_t>()[b * seq_len + j] != 0;
      }
      for (std::int64_t i = 0; i < seq_len; ++i) {
        const float* qi = qp + ((b * seq_len + i) * hq + h) * d;
        const std::vector<double> qa = logits(qi);
        std::vector<double> phiq(m);
        const double qmax = *std::max_element(qa.begin(), qa.end()), qdiag = half_sq(qi);
        for (std::int64_t f = 0; f < m; ++f)
          phiq[f] = softmax ? ratio * (std::exp(qa[f] - qdiag - qmax) + opt.softmax_epsilon)
                            : std::max(qa[f], 0.0) + opt.kernel_epsilon;
        const std::int64_t last = causal ? i : seq_len - 1;
        double stab = -INFINITY;  // max over the visible real keys and features
        for (std::int64_t j = 0; j <= last; ++j)
          if (real[j]) stab = std::max(stab, *std::max_element(ka[j].begin(), ka[j].end()));
        std::vector<double> num(d, 0.0);
        double den = 0;
        for (std::int64_t j = 0; j <= last; ++j) {
          if (!real[j]) continue;
          const float* kj = kp + ((b * seq_len + j) * hkv + g) * d;
          const double kdiag = half_sq(kj);
          double a = 0;
          for (std::int64_t f = 0; f < m; ++f)
            a += phiq[f] * (softmax ? ratio * (std::exp(ka[j][f] - kdiag - stab) + opt.softmax_epsilon)
                                    : std::max(ka[j][f], 0.0) + opt.kernel_epsilon);
          const float* vj = vp + ((b * seq_len + j) * hkv + g) * d;
          for (std::int64_t e = 0; e < d; ++e) num[e] += a * vj[e];
          den += a;
        }
        float* oi = op + ((b * seq_len + i) * hq + h) * d;
        for (std::int64_t e = 0; e < d; ++e) oi[e] = den != 0 ? static_cast<float>(num[e] / den) : 0.0f;
      }
    }
}

}  // namespace mf::reference
