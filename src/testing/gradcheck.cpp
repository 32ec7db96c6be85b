#include "testing/gradcheck.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <set>
#include <sstream>

#include "core/rng.h"

namespace mf::testing {

namespace {
// Weights c_k with f'(0) ~ sum_k c_k f(d_k): the derivative at 0 of the cubic
// through the four nodes d_k (Lagrange). For d = (-2h, -h, h, 2h) these are
// (1, -8, 8, -1) / (12 h), the classic O(h^4) formula; for nodes moved by
// float rounding they stay consistent, which dividing by h would not.
std::array<double, 4> derivative_weights(const std::array<double, 4>& d) {
  std::array<double, 4> c{};
  for (int j = 0; j < 4; ++j) {
    double num = 0, den = 1;
    for (int m = 0; m < 4; ++m) {
      if (m == j) continue;
      den *= d[j] - d[m];
      double prod = 1;
      for (int k = 0; k < 4; ++k)
        if (k != j && k != m) prod *= -d[k];
      num += prod;
    }
    c[j] = num / den;
  }
  return c;
}
}  // namespace

GradcheckResult gradcheck(const std::function<double()>& loss, std::vector<Tensor> inputs,
                          const std::vector<Tensor>& analytic, const GradcheckOptions& opt) {
  MF_CHECK(inputs.size() == analytic.size(), "[gradcheck] ", inputs.size(), " inputs but ", analytic.size(),
           " gradients");
  GradcheckResult r;
  std::ostringstream worst;
  Rng rng(opt.seed);
  for (std::size_t t = 0; t < inputs.size(); ++t) {
    if (!analytic[t].defined()) continue;
    Tensor& x = inputs[t];
    MF_CHECK(x.is_contiguous() && x.dtype() == DType::F32, "[gradcheck] input ", t, " must be contiguous float32");
    MF_CHECK(analytic[t].shape() == x.shape(), "[gradcheck] gradient ", t, " has shape ",
             shape_str(analytic[t].shape()), " but input has ", shape_str(x.shape()));
    const std::vector<float> g = analytic[t].to_vector();
    const std::int64_t n = x.numel();
    std::vector<std::int64_t> idx;
    if (n <= opt.max_checks_per_input) {
      for (std::int64_t i = 0; i < n; ++i) idx.push_back(i);
    } else {  // distinct elements, in sorted order
      std::set<std::int64_t> chosen;
      while (static_cast<std::int64_t>(chosen.size()) < opt.max_checks_per_input)
        chosen.insert(static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(n))));
      idx.assign(chosen.begin(), chosen.end());
    }
    float* p = x.data<float>();
    for (std::int64_t i : idx) {
      const float orig = p[i];
      // The offsets the float input really moves by (x + h rounds to the float
      // grid, which is coarse for large |x|); exact in double.
      // (volatile: g++ 12.2 at -O3 -march=native vectorized this loop and
      // dropped the float rounding, leaving d = the requested steps.)
      std::array<double, 4> d;
      const double steps[4] = {-2 * opt.step, -opt.step, opt.step, 2 * opt.step};
      for (int k = 0; k < 4; ++k) {
        const volatile float moved = static_cast<float>(orig + steps[k]);
        d[k] = static_cast<double>(moved) - orig;
      }
      MF_CHECK(d[0] < d[1] && d[1] < 0 && 0 < d[2] && d[2] < d[3], "[gradcheck] step ", opt.step,
               " is below the float spacing at input ", t, " element ", i, " (value ", orig, ")");
      const std::array<double, 4> c = derivative_weights(d);
      double numeric = 0;
      for (int k = 0; k < 4; ++k) {
        p[i] = static_cast<float>(orig + d[k]);
        const double l = loss();
        p[i] = orig;
        numeric += c[k] * l;
      }
      const double err = std::fabs(g[i] - numeric);
      ++r.checked;
      r.max_abs_err = std::max(r.max_abs_err, err);
      if (!(err <= opt.atol + opt.rtol * std::fabs(numeric))) {
        if (r.ok || r.report.size() < 2000)
          worst << "input " << t << " element " << i << ": analytic " << g[i] << ", numeric " << numeric << "\n";
        r.ok = false;
        r.report = worst.str();
      }
    }
  }
  return r;
}

double weighted_sum(const Tensor& out, const Tensor& weight) {
  MF_CHECK(out.shape() == weight.shape(), "[weighted_sum] shapes differ: ", shape_str(out.shape()), " vs ",
           shape_str(weight.shape()));
  const auto a = out.to_vector();
  const auto w = weight.to_vector();
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * w[i];
  return s;
}

}  // namespace mf::testing
