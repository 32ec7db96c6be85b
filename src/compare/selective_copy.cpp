#include "compare/selective_copy.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "core/rng.h"

namespace mf {

void validate(const SelectiveCopyOptions& o) {
  MF_CHECK(o.vocab_size >= 3, "[selective_copy] option 'vocab_size' must be >= 3 (blank, marker, a data token) but is ",
           o.vocab_size);
  MF_CHECK(o.num_tokens >= 1, "[selective_copy] option 'num_tokens' must be >= 1 but is ", o.num_tokens);
  MF_CHECK(o.seq_len >= 2 * o.num_tokens, "[selective_copy] option 'seq_len' (", o.seq_len,
           ") must be >= 2 * num_tokens (", 2 * o.num_tokens, ")");
}

SequenceData generate_selective_copy(std::int64_t n, std::uint64_t seed, const SelectiveCopyOptions& o,
                                     const std::string& source) {
  validate(o);
  MF_CHECK(n >= 1, "[selective_copy] the number of sequences must be >= 1 but is ", n);
  const std::int64_t M = o.num_tokens, prefix = o.seq_len - M;
  SequenceData d;
  d.source = source;
  Rng rng(seed, 0x73636f7079ull);
  std::vector<std::int32_t> in(static_cast<std::size_t>(o.seq_len)), target(in.size());
  std::vector<std::int64_t> pos(static_cast<std::size_t>(prefix));
  for (std::int64_t e = 0; e < n; ++e) {
    std::fill(in.begin(), in.end(), 0);
    std::fill(target.begin(), target.end(), -1);
    for (std::int64_t i = 0; i < prefix; ++i) pos[static_cast<std::size_t>(i)] = i;
    for (std::int64_t i = 0; i < M; ++i) {  // M distinct positions: a partial Fisher-Yates shuffle
      const std::int64_t j = i + static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(prefix - i)));
      std::swap(pos[static_cast<std::size_t>(i)], pos[static_cast<std::size_t>(j)]);
    }
    std::sort(pos.begin(), pos.begin() + M);
    for (std::int64_t i = 0; i < M; ++i) {
      const auto token = static_cast<std::int32_t>(2 + rng.below(static_cast<std::uint64_t>(o.vocab_size - 2)));
      in[static_cast<std::size_t>(pos[static_cast<std::size_t>(i)])] = token;
      in[static_cast<std::size_t>(prefix + i)] = 1;
      target[static_cast<std::size_t>(prefix + i)] = token;
    }
    d.add(in, target);
  }
  return d;
}

}  // namespace mf
