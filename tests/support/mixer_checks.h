// Shared by the token-mixer tests (Linformer, Reformer LSH, Performer, ...): a
// tensor comparison relative to the expected tensor's scale, key padding masks
// with tail padding and holes, fixture-list and bitwise-run helpers.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "../support/close.h"

namespace mf::testing {

// int32 [b, l], 1 = token: row 0 ends in min(3, l - 1) padding tokens; row 1
// (when b > 1 and l > 2) has a hole at position 1.
inline Tensor tail_and_hole_mask(std::int64_t b, std::int64_t l) {
  Tensor m = Tensor::empty({b, l}, DType::I32);
  std::int32_t* p = m.data<std::int32_t>();
  for (std::int64_t i = 0; i < b * l; ++i) p[i] = 1;
  for (std::int64_t i = 0; i < std::min<std::int64_t>(3, l - 1); ++i) p[l - 1 - i] = 0;
  if (b > 1 && l > 2) p[l + 1] = 0;
  return m;
}

// int32 [b, l], 1 = token: as tail_and_hole_mask (the hole when l > 1), and
// row 2 (when b > 2) starts with a padding token.
inline Tensor test_padding_mask(std::int64_t b, std::int64_t l) {
  Tensor m = Tensor::empty({b, l}, DType::I32);
  std::int32_t* p = m.data<std::int32_t>();
  for (std::int64_t i = 0; i < b * l; ++i) p[i] = 1;
  for (std::int64_t i = 0; i < std::min<std::int64_t>(3, l - 1); ++i) p[l - 1 - i] = 0;
  if (b > 1 && l > 1) p[l + 1] = 0;
  if (b > 2) p[2 * l] = 0;
  return m;
}

// Every value of the tensors, in order (for bitwise comparisons of a run).
inline std::vector<float> all_values(const std::vector<Tensor>& tensors) {
  std::vector<float> all;
  for (const Tensor& t : tensors) {
    const std::vector<float> v = t.to_vector();
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}

}  // namespace mf::testing
