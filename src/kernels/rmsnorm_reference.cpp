// Reference RMSNorm: the formulas of rmsnorm.h, one row at a time,
// accumulated in double (rstd is rounded to float when saved, as the fast
// kernel saves it).
#include <cmath>
#include <vector>

#include "kernels/rmsnorm.h"

namespace mf::reference {

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, std::int64_t rows,
                     std::int64_t n, float eps) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* x = inp + r * n;
    double ms = 0;
    for (std::int64_t j = 0; j < n; ++j) ms += static_cast<double>(x[j]) * x[j];
    ms /= n;
    const double s = 1.0 / std::sqrt(ms + eps);
    for (std::int64_t j = 0; j < n; ++j) out[r * n + j] = static_cast<float>(x[j] * s * (weight ? weight[j] : 1.0));
    if (rstd) rstd[r] = static_cast<float>(s);
  }
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, std::int64_t rows, std::int64_t n) {
  std::vector<double> dw(n, 0.0);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* x = inp + r * n;
    const float* dy = dout + r * n;
    const double s = rstd[r];
    double sum_dnorm_xhat = 0;
    for (std::int64_t j = 0; j < n; ++j) sum_dnorm_xhat += dy[j] * (weight ? weight[j] : 1.0) * (x[j] * s);
    for (std::int64_t j = 0; j < n; ++j) {
      const double xhat = x[j] * s, dnorm = dy[j] * (weight ? weight[j] : 1.0);
      dinp[r * n + j] = static_cast<float>(s * (dnorm - xhat * (sum_dnorm_xhat / n)));
      dw[j] += dy[j] * xhat;
    }
  }
  if (dweight)
    for (std::int64_t j = 0; j < n; ++j) dweight[j] = static_cast<float>(dweight[j] + dw[j]);
}

}  // namespace mf::reference
