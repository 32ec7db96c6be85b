// Generation through a model's per-layer states equals its full forward: a
// prefill of the first `prefill` tokens, then one token per step.
#pragma once
#include <cstdint>

#include <gtest/gtest.h>

#include "model/transformer.h"

namespace mf::testing {

// tokens int32 [B, L]; returns the generation state (for checks of its size).
inline std::unique_ptr<GenerationState> expect_generation_equals_full_forward(Transformer& m, const Tensor& tokens,
                                                                              std::int64_t prefill, float tol) {
  const std::int64_t len = tokens.size(1);
  const Tensor full = m.logits(tokens);
  GenerationOptions o;
  o.batch = tokens.size(0);
  auto state = m.new_generation_state(o);
  const Tensor a = m.logits(tokens.slice(1, 0, prefill).contiguous(), state.get());
  EXPECT_LE(max_abs_diff(a, full.slice(1, 0, prefill).contiguous()), tol) << "prefill";
  for (std::int64_t t = prefill; t < len; ++t) {
    const Tensor step = m.logits(tokens.slice(1, t, t + 1).contiguous(), state.get());
    EXPECT_LE(max_abs_diff(step, full.slice(1, t, t + 1).contiguous()), tol) << "position " << t;
  }
  return state;
}

}  // namespace mf::testing
