#include "compare/induction_heads.h"

#include <vector>

#include "core/error.h"
#include "core/rng.h"

namespace mf {

void validate(const InductionHeadsOptions& o) {
  MF_CHECK(o.vocab_size >= 3, "[induction_heads] option 'vocab_size' must be >= 3 but is ", o.vocab_size);
  MF_CHECK(o.seq_len >= 3, "[induction_heads] option 'seq_len' must be >= 3 but is ", o.seq_len);
}

SequenceData generate_induction_heads(std::int64_t n, std::uint64_t seed, const InductionHeadsOptions& o,
                                      const std::string& source) {
  validate(o);
  MF_CHECK(n >= 1, "[induction_heads] the number of sequences must be >= 1 but is ", n);
  const std::int64_t L = o.seq_len;
  SequenceData d;
  d.source = source;
  Rng rng(seed, 0x696e647563ull);
  std::vector<std::int32_t> in(static_cast<std::size_t>(L)), target(in.size(), -1);
  const auto token = [&] { return static_cast<std::int32_t>(1 + rng.below(static_cast<std::uint64_t>(o.vocab_size - 1))); };
  for (std::int64_t e = 0; e < n; ++e) {
    for (auto& t : in) t = token();
    const std::int64_t p = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(L - 2)));
    in[static_cast<std::size_t>(p)] = 0;
    in[static_cast<std::size_t>(L - 1)] = 0;
    target[static_cast<std::size_t>(L - 1)] = in[static_cast<std::size_t>(p + 1)];
    d.add(in, target);
  }
  return d;
}

}  // namespace mf
