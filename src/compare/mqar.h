// Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"), as
// zoology/data/associative_recall.py's multiquery_ar: token 0 is blank, keys
// are 1 .. K and values K+1 .. V-1 with K = (V-1)/2. A sequence of length L
// opens with N distinct keys each followed by its value (N distinct values),
// then a query region of L - 2N blanks in which the N keys, in their opening
// order, are written at the even offsets 2g_j of slots g_j drawn without
// replacement with probability proportional to g^(power_a - 1), g = 1 ..
// (L - 2N)/2 (Zoology's power law: queries cluster near the context). The
// target at a query key is its value; no other position is scored.
// Deviation: slot g (1-based) sits at region offset 2(g-1) (Zoology's
// offsets are 2g over 0-based g of the same weights: the same law shifted by
// one slot, so that the region's first slot is usable).
#pragma once
#include <cstdint>

#include "train/sequence_data.h"

namespace mf {

struct MqarOptions {
  std::int64_t vocab_size = 64;
  std::int64_t seq_len = 64;
  std::int64_t num_pairs = 8;
  double power_a = 0.01;
};

// Throws "[mqar] option ..." (e.g. seq_len < 4 num_pairs, too few keys).
void validate(const MqarOptions& o);
// n sequences from (seed): a pure function of its arguments.
SequenceData generate_mqar(std::int64_t n, std::uint64_t seed, const MqarOptions& o, const std::string& source);

}  // namespace mf
