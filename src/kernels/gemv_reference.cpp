// Reference GEMV: y_j[r] = sum_k W[r, k] x_j[k] (+ b[r]) in double, one
// target, row and input at a time.
#include "kernels/gemv.h"

namespace mf::reference {

void gemv(std::span<const GemvTarget> targets, const float* x, std::int64_t ldx, std::int64_t n, std::int64_t in) {
  for (const GemvTarget& t : targets)
    for (std::int64_t j = 0; j < n; ++j)
      for (std::int64_t r = 0; r < t.rows; ++r) {
        double s = t.bias ? t.bias[r] : 0.0;
        for (std::int64_t k = 0; k < in; ++k)
          s += static_cast<double>(t.weight[r * in + k]) * x[j * ldx + k];
        t.y[j * t.ldy + r] = static_cast<float>(s);
      }
}

}  // namespace mf::reference
