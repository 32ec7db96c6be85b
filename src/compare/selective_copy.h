// Selective copying (Gu and Dao 2023, "Mamba", section 3.1 and appendix E.1;
// after Arjovsky et al.'s copying task): token 0 is noise (blank), token 1
// the copy marker, data tokens are 2 .. V-1. A sequence of length L holds M
// data tokens (uniform, with repetition) at M distinct random positions of
// its first L - M tokens, blanks elsewhere, then M markers; the target at the
// j-th marker is the j-th data token in order. Only the markers are scored.
#pragma once
#include <cstdint>

#include "train/sequence_data.h"

namespace mf {

struct SelectiveCopyOptions {
  std::int64_t vocab_size = 16;  // Mamba: 16
  std::int64_t seq_len = 64;     // Mamba: 4096
  std::int64_t num_tokens = 8;   // M; Mamba: 16
};

void validate(const SelectiveCopyOptions& o);  // throws "[selective_copy] option ..."
SequenceData generate_selective_copy(std::int64_t n, std::uint64_t seed, const SelectiveCopyOptions& o,
                                     const std::string& source);

}  // namespace mf
