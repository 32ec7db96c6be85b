// Finite-difference gradient checker for any component. The loss is
// evaluated by the caller (accumulate it in double); each checked element x
// gets the four-point central difference
//   g ~ (8 (L(x+h) - L(x-h)) - (L(x+2h) - L(x-2h))) / (12 h),
// whose truncation error is O(h^4), so float32 components can be checked
// with h around 1e-2 without float64 twins. x +- h, x +- 2h are rounded to
// float, so the formula is taken with the offsets really applied (the
// derivative of the cubic through the four points; the same weights when
// the offsets are exact).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace mf::testing {

struct GradcheckOptions {
  double step = 1e-2;                 // h
  double atol = 2e-3, rtol = 2e-2;    // |analytic - numeric| <= atol + rtol * |numeric|
  std::int64_t max_checks_per_input = 48;  // random subset of distinct elements (all if fewer)
  std::uint64_t seed = 1234;
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_err = 0;
  std::int64_t checked = 0;
  std::string report;  // the failing elements (the first ~2000 characters): input, flat index, analytic, numeric
};

// `inputs` are float32, contiguous; `loss` reads them (they are perturbed in
// place and restored). `analytic[i]` is dLoss/dinputs[i] (undefined = skip).
// Throws mf::Error if the step is too small to move an input at all.
GradcheckResult gradcheck(const std::function<double()>& loss, std::vector<Tensor> inputs,
                          const std::vector<Tensor>& analytic, const GradcheckOptions& opt = {});

// sum(out * weight) in double: the usual scalar loss for checking a
// component whose output is a tensor (dLoss/dout = weight).
double weighted_sum(const Tensor& out, const Tensor& weight);

}  // namespace mf::testing
