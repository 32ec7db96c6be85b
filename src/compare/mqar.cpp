#include "compare/mqar.h"

#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/rng.h"

namespace mf {
namespace {

constexpr std::uint64_t kMqarStream = 0x6d7161720000ull;

// k distinct values of 0..n-1 (a partial Fisher-Yates shuffle).
std::vector<std::int64_t> draw_distinct(Rng& rng, std::int64_t n, std::int64_t k) {
  std::vector<std::int64_t> pool(static_cast<std::size_t>(n));
  std::iota(pool.begin(), pool.end(), 0);
  for (std::int64_t i = 0; i < k; ++i) {
    const std::int64_t j = i + static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(n - i)));
    std::swap(pool[static_cast<std::size_t>(i)], pool[static_cast<std::size_t>(j)]);
  }
  pool.resize(static_cast<std::size_t>(k));
  return pool;
}

}  // namespace

void validate(const MqarOptions& o) {
  MF_CHECK(o.vocab_size >= 5, "[mqar] option 'vocab_size' must be >= 5 but is ", o.vocab_size);
  MF_CHECK(o.num_pairs >= 1, "[mqar] option 'num_pairs' must be >= 1 but is ", o.num_pairs);
  const std::int64_t keys = (o.vocab_size - 1) / 2, values = o.vocab_size - 1 - keys;
  MF_CHECK(o.num_pairs <= keys && o.num_pairs <= values, "[mqar] option 'num_pairs' (", o.num_pairs,
           ") exceeds the ", keys, " keys / ", values, " values of vocab_size ", o.vocab_size);
  MF_CHECK(o.seq_len >= 4 * o.num_pairs, "[mqar] option 'seq_len' (", o.seq_len,
           ") must be >= 4 * num_pairs (", 4 * o.num_pairs, "): the pairs and a query slot per key");
  MF_CHECK(o.power_a > 0 && o.power_a <= 1, "[mqar] option 'power_a' must be in (0, 1] but is ", o.power_a);
}

SequenceData generate_mqar(std::int64_t n, std::uint64_t seed, const MqarOptions& o, const std::string& source) {
  validate(o);
  MF_CHECK(n >= 1, "[mqar] the number of sequences must be >= 1 but is ", n);
  const std::int64_t keys = (o.vocab_size - 1) / 2, values = o.vocab_size - 1 - keys, N = o.num_pairs;
  const std::int64_t context = 2 * N, slots = (o.seq_len - context) / 2;
  std::vector<double> slot_weight(static_cast<std::size_t>(slots));
  for (std::int64_t g = 0; g < slots; ++g)
    slot_weight[static_cast<std::size_t>(g)] = std::pow(static_cast<double>(g + 1), o.power_a - 1);
  SequenceData d;
  d.source = source;
  Rng rng(seed, kMqarStream);
  std::vector<std::int32_t> in(static_cast<std::size_t>(o.seq_len)), target(in.size());
  std::vector<double> w;
  for (std::int64_t e = 0; e < n; ++e) {
    std::fill(in.begin(), in.end(), 0);
    std::fill(target.begin(), target.end(), -1);
    const std::vector<std::int64_t> k = draw_distinct(rng, keys, N), v = draw_distinct(rng, values, N);
    for (std::int64_t j = 0; j < N; ++j) {
      in[static_cast<std::size_t>(2 * j)] = static_cast<std::int32_t>(1 + k[static_cast<std::size_t>(j)]);
      in[static_cast<std::size_t>(2 * j + 1)] = static_cast<std::int32_t>(1 + keys + v[static_cast<std::size_t>(j)]);
    }
    w = slot_weight;  // weighted draws without replacement, one slot per key in order
    for (std::int64_t j = 0; j < N; ++j) {
      double total = 0;
      for (double x : w) total += x;
      double u = static_cast<double>(rng.uniform()) * total;
      std::int64_t g = -1, last_free = -1;
      for (std::int64_t s = 0; s < slots && g < 0; ++s) {
        const double ws = w[static_cast<std::size_t>(s)];
        if (ws == 0) continue;
        last_free = s;
        if (u < ws) g = s;
        else u -= ws;
      }
      if (g < 0) g = last_free;  // rounding at the top end: the last free slot
      w[static_cast<std::size_t>(g)] = 0;
      const std::size_t at = static_cast<std::size_t>(context + 2 * g);
      in[at] = in[static_cast<std::size_t>(2 * j)];
      target[at] = in[static_cast<std::size_t>(2 * j + 1)];
    }
    d.add(in, target);
  }
  return d;
}

}  // namespace mf
