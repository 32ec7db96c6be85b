#include "model/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace mf {

void SamplingOptions::validate() const {
  MF_CHECK(std::isfinite(temperature) && temperature >= 0.0f, "[sampling] temperature must be >= 0, got ",
           temperature);
  MF_CHECK(top_k >= 0, "[sampling] top_k must be >= 0, got ", top_k);
  MF_CHECK(top_p > 0.0f && top_p <= 1.0f, "[sampling] top_p must be in (0, 1], got ", top_p);
}

std::int64_t sample_token(const float* logits, std::int64_t vocab, const SamplingOptions& opt, Rng& rng) {
  opt.validate();
  MF_CHECK(vocab >= 1, "[sampling] vocabulary is empty");
  for (std::int64_t i = 0; i < vocab; ++i)
    MF_CHECK(!std::isnan(logits[i]), "[sampling] logit ", i, " is NaN");
  if (opt.temperature == 0.0f) return std::max_element(logits, logits + vocab) - logits;

  // Candidates sorted by logit (descending; ties by id), then truncated by top-k.
  std::vector<std::int64_t> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](auto a, auto b) { return logits[a] > logits[b]; });
  std::int64_t keep = vocab;
  if (opt.top_k > 0) keep = std::min(keep, opt.top_k);

  // Softmax at the temperature over the kept candidates (double for the sums).
  const double top = logits[ids[0]];
  MF_CHECK(std::isfinite(top), "[sampling] every logit is -inf or the largest is infinite");
  std::vector<double> prob(keep);
  double total = 0;
  for (std::int64_t r = 0; r < keep; ++r) {
    prob[r] = std::exp((logits[ids[r]] - top) / opt.temperature);
    total += prob[r];
  }
  // Top-p: the smallest prefix whose mass reaches top_p (at least one token).
  if (opt.top_p < 1.0f) {
    double mass = 0;
    std::int64_t r = 0;
    while (r < keep) {
      mass += prob[r] / total;
      ++r;
      if (mass >= opt.top_p) break;
    }
    keep = r;
    total = std::accumulate(prob.begin(), prob.begin() + keep, 0.0);
  }
  const double u = static_cast<double>(rng.uniform()) * total;
  double acc = 0;
  for (std::int64_t r = 0; r < keep; ++r) {
    acc += prob[r];
    if (u < acc) return ids[r];
  }
  return ids[keep - 1];
}

}  // namespace mf
