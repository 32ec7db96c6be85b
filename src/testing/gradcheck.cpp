#include "testing/gradcheck.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/rng.h"

namespace mf::testing {

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
    } else {
      for (std::int64_t c = 0; c < opt.max_checks_per_input; ++c) idx.push_back(static_cast<std::int64_t>(rng.below(n)));
    }
    float* p = x.data<float>();
    for (std::int64_t i : idx) {
      const float orig = p[i];
      const double h = opt.step;
      auto at = [&](double delta) {
        p[i] = static_cast<float>(orig + delta);
        const double l = loss();
        p[i] = orig;
        return l;
      };
      const double numeric = (8.0 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12.0 * h);
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
