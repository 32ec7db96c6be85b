// Whole-tensor comparison for module tests (fast path vs reference, vs
// PyTorch fixtures): the worst element error against a tolerance relative to
// the expected tensor's largest magnitude.
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

// An int32 [B, L] key padding mask: row 0 ends with 3 padding tokens, row 1
// has a hole at position 1, row 2 (when B > 2) starts with padding.
inline Tensor test_padding_mask(std::int64_t b, std::int64_t l) {
  Tensor m = Tensor::empty({b, l}, DType::I32);
  std::int32_t* p = m.data<std::int32_t>();
  for (std::int64_t i = 0; i < b * l; ++i) p[i] = 1;
  for (std::int64_t i = 0; i < std::min<std::int64_t>(3, l - 1); ++i) p[l - 1 - i] = 0;
  if (b > 1 && l > 1) p[l + 1] = 0;
  if (b > 2) p[2 * l] = 0;
  return m;
}

}  // namespace mf::testing
