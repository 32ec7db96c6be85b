// Induction heads (Olsson et al. 2022; the synthetic task of Gu and Dao 2023,
// "Mamba", section 4.1.2): token 0 is the trigger, other tokens are 1 .. V-1.
// A sequence of length L is uniform tokens 1 .. V-1 except that the trigger
// appears at one random position p in [0, L - 3] followed by the answer token
// at p + 1, and again at the last position L - 1, whose target is the answer
// (the only scored position). Trained at one length, tested at longer ones.
#pragma once
#include <cstdint>

#include "train/sequence_data.h"

namespace mf {

struct InductionHeadsOptions {
  std::int64_t vocab_size = 16;  // Mamba: 16
  std::int64_t seq_len = 64;     // Mamba: trained at 256, tested up to 2^20
};

void validate(const InductionHeadsOptions& o);  // throws "[induction_heads] option ..."
SequenceData generate_induction_heads(std::int64_t n, std::uint64_t seed, const InductionHeadsOptions& o,
                                      const std::string& source);

}  // namespace mf
