// A whole-model training check small enough for a unit test: plain SGD on
// period-5 token sequences with next-token targets (4 sequences of 24
// tokens, ids 3..7); the caller checks that the loss falls.
#pragma once
#include <cstdint>
#include <utility>

#include "model/transformer.h"

namespace mf::testing {

// Returns the losses of the first and the last of `steps` SGD steps.
inline std::pair<double, double> sgd_on_period5_pattern(Transformer& m, int steps, float lr) {
  Tensor tokens = Tensor::empty({4, 24}, DType::I32), targets = Tensor::empty({4, 24}, DType::I32);
  for (std::int64_t s = 0; s < 4; ++s)
    for (std::int64_t t = 0; t < 24; ++t) {
      tokens.data<std::int32_t>()[s * 24 + t] = static_cast<std::int32_t>((t + s) % 5 + 3);
      targets.data<std::int32_t>()[s * 24 + t] = static_cast<std::int32_t>((t + s + 1) % 5 + 3);
    }
  double first = 0, last = 0;
  for (int step = 0; step < steps; ++step) {
    for (Parameter* p : m.parameters()) p->grad.fill(0.0f);
    const double loss = m.loss(tokens, targets, true);
    if (step == 0) first = loss;
    last = loss;
    for (Parameter* p : m.parameters()) {
      float* v = p->value.data<float>();
      const float* g = p->grad.data<float>();
      for (std::int64_t i = 0; i < p->value.numel(); ++i) v[i] -= lr * g[i];
    }
  }
  return {first, last};
}

}  // namespace mf::testing
