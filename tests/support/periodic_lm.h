// A tiny language-modelling task for mixer tests: B sequences of a period-5
// token cycle (sequence s starts at phase s) with next-token targets, and
// plain SGD steps on it that report the first and last loss.
#pragma once
#include <cstdint>
#include <utility>

#include "model/transformer.h"

namespace mf::testing {

// tokens[s, t] = (t + s) % 5 + 3, targets[s, t] = tokens[s, t + 1] (int32 [B, L]).
inline std::pair<Tensor, Tensor> periodic_lm_batch(std::int64_t b, std::int64_t l) {
  Tensor tokens = Tensor::empty({b, l}, DType::I32), targets = Tensor::empty({b, l}, DType::I32);
  for (std::int64_t s = 0; s < b; ++s)
    for (std::int64_t t = 0; t < l; ++t) {
      tokens.data<std::int32_t>()[s * l + t] = static_cast<std::int32_t>((t + s) % 5 + 3);
      targets.data<std::int32_t>()[s * l + t] = static_cast<std::int32_t>((t + s + 1) % 5 + 3);
    }
  return {tokens, targets};
}

// `steps` SGD steps (learning rate lr) on the batch; returns {first loss, last loss}.
inline std::pair<double, double> sgd_losses(Transformer& m, const Tensor& tokens, const Tensor& targets, int steps,
                                            float lr) {
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
