// Next-token sampling from logits: greedy, temperature, top-k and top-p
// (nucleus, Holtzman et al. 2019), drawn with the counter-based RNG so a seed
// gives the same text on any thread count.
#pragma once
#include <cstdint>

#include "core/rng.h"

namespace mf {

struct SamplingOptions {
  float temperature = 1.0f;  // 0: greedy (argmax)
  std::int64_t top_k = 0;    // 0: off; else keep the k most likely tokens
  float top_p = 1.0f;        // 1: off; else keep the smallest set with mass >= top_p
  void validate() const;     // errors name the option
};

// logits: [vocab]; returns a token id. Ties in greedy go to the lowest id.
std::int64_t sample_token(const float* logits, std::int64_t vocab, const SamplingOptions& opt, Rng& rng);

}  // namespace mf
