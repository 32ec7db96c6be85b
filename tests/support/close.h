// A tensor comparison relative to the tensor's scale, for module tests
// (fast vs reference twin, PyTorch fixtures): the worst element's error
// against tol times the largest |want| (or a floor, for tensors that are
// zero in theory and only carry rounding noise).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "core/tensor.h"

namespace mf::testing {

// max |got - want| <= tol * max(max |want|, floor), over the flattened tensors.
inline ::testing::AssertionResult close(const Tensor& got, const Tensor& want, double tol, const std::string& what,
                                        double floor = 1e-30) {
  if (got.shape() != want.shape())
    return ::testing::AssertionFailure() << what << ": shape " << shape_str(got.shape()) << " vs "
                                         << shape_str(want.shape());
  const auto a = got.to_vector(), b = want.to_vector();
  double mag = 0, err = 0;
  std::size_t worst = 0;
  for (float v : b) mag = std::max(mag, std::fabs(double(v)));
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double e = std::fabs(double(a[i]) - b[i]);
    if (!(e <= err)) err = e, worst = i;
  }
  if (err <= tol * std::max(mag, floor)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": worst element " << worst << " got " << a[worst] << " want "
                                       << b[worst] << " (err " << err << ", max |want| " << mag << ")";
}

}  // namespace mf::testing
