// Reference LayerNorm: the formulas of layernorm.h, one row at a time,
// accumulated in double (mean and rstd are rounded to float when saved, as
// the fast kernel saves them).
#include <cmath>
#include <vector>

#include "kernels/layernorm.h"

namespace mf::reference {

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, std::int64_t rows, std::int64_t n, float eps) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* x = inp + r * n;
    double m = 0;
    for (std::int64_t j = 0; j < n; ++j) m += x[j];
    m /= n;
    double v = 0;
    for (std::int64_t j = 0; j < n; ++j) v += (x[j] - m) * (x[j] - m);
    v /= n;  // biased variance
    const double s = 1.0 / std::sqrt(v + eps);
    for (std::int64_t j = 0; j < n; ++j) {
      const double w = weight ? weight[j] : 1.0, b = bias ? bias[j] : 0.0;
      out[r * n + j] = static_cast<float>((x[j] - m) * s * w + b);
    }
    if (mean) mean[r] = static_cast<float>(m);
    if (rstd) rstd[r] = static_cast<float>(s);
  }
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, std::int64_t rows,
                        std::int64_t n) {
  std::vector<double> dw(n, 0.0), db(n, 0.0);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* x = inp + r * n;
    const float* dy = dout + r * n;
    const double m = mean[r], s = rstd[r];
    double sum_dnorm = 0, sum_dnorm_xhat = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      const double xhat = (x[j] - m) * s, dnorm = dy[j] * (weight ? weight[j] : 1.0);
      sum_dnorm += dnorm;
      sum_dnorm_xhat += dnorm * xhat;
    }
    for (std::int64_t j = 0; j < n; ++j) {
      const double xhat = (x[j] - m) * s, dnorm = dy[j] * (weight ? weight[j] : 1.0);
      dinp[r * n + j] = static_cast<float>(s * (dnorm - sum_dnorm / n - xhat * (sum_dnorm_xhat / n)));
      dw[j] += dy[j] * xhat;
      db[j] += dy[j];
    }
  }
  for (std::int64_t j = 0; j < n; ++j) {
    if (dweight) dweight[j] = static_cast<float>(dweight[j] + dw[j]);
    if (dbias) dbias[j] = static_cast<float>(dbias[j] + db[j]);
  }
}

}  // namespace mf::reference
