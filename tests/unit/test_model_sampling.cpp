// Sampling: greedy, temperature, top-k, top-p, determinism and bad options.
#include <vector>
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "../support/errors.h"
#include "model/sampling.h"

using namespace mf;

TEST(Sampling, GreedyPicksArgmaxLowestIdOnTies) {
  const float logits[5] = {1, 3, 3, -2, 0};
  Rng rng(1);
  SamplingOptions opt;
  opt.temperature = 0;
  EXPECT_EQ(sample_token(logits, 5, opt, rng), 1);
}

TEST(Sampling, FrequenciesFollowSoftmaxAtTemperature) {
  const float logits[3] = {0.0f, std::log(2.0f), std::log(5.0f)};  // p = 1/8, 2/8, 5/8
  SamplingOptions opt;
  Rng rng(7);
  std::map<std::int64_t, int> count;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++count[sample_token(logits, 3, opt, rng)];
  EXPECT_NEAR(count[0] / double(n), 1.0 / 8, 0.01);
  EXPECT_NEAR(count[1] / double(n), 2.0 / 8, 0.012);
  EXPECT_NEAR(count[2] / double(n), 5.0 / 8, 0.012);
  opt.temperature = 0.5f;  // p ∝ {1, 4, 25}
  count.clear();
  for (int i = 0; i < n; ++i) ++count[sample_token(logits, 3, opt, rng)];
  EXPECT_NEAR(count[2] / double(n), 25.0 / 30, 0.012);
}

// Truncation keeps the right set and renormalizes inside it: p = .1 .2 .3 .4
// with top_k = 2 samples tokens 3 and 2 in the ratio 4 : 3; top_p = 0.65
// keeps {3, 2} (the boundary token 2 that carries the mass past 0.65 is kept)
// in the same ratio; top_p = 0.75 keeps {3, 2, 1} in 4 : 3 : 2.
TEST(Sampling, TopKAndTopPTruncateAndRenormalize) {
  const float logits[4] = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  Rng rng(3);
  const int n = 30000;
  auto frequencies = [&](const SamplingOptions& opt) {
    std::vector<double> f(4, 0.0);
    for (int i = 0; i < n; ++i) f[static_cast<std::size_t>(sample_token(logits, 4, opt, rng))] += 1.0 / n;
    return f;
  };
  SamplingOptions k2;
  k2.top_k = 2;
  SamplingOptions p065;
  p065.top_p = 0.65f;
  for (const SamplingOptions& opt : {k2, p065}) {
    const std::vector<double> f = frequencies(opt);
    EXPECT_EQ(f[0] + f[1], 0.0);
    EXPECT_NEAR(f[3], 4.0 / 7, 0.012);
    EXPECT_NEAR(f[2], 3.0 / 7, 0.012);
  }
  SamplingOptions p075;
  p075.top_p = 0.75f;  // {3, 2} has .7 < .75: token 1 is the boundary token, kept
  const std::vector<double> f = frequencies(p075);
  EXPECT_EQ(f[0], 0.0);
  EXPECT_NEAR(f[3], 4.0 / 9, 0.012);
  EXPECT_NEAR(f[2], 3.0 / 9, 0.012);
  EXPECT_NEAR(f[1], 2.0 / 9, 0.012);
  SamplingOptions both;  // top_k first, then top_p inside the kept set: k = 3 keeps {3, 2, 1}; p = .5 of .9 keeps {3, 2}
  both.top_k = 3;
  both.top_p = 0.5f;
  const std::vector<double> g = frequencies(both);
  EXPECT_EQ(g[0] + g[1], 0.0);
  EXPECT_NEAR(g[3], 4.0 / 7, 0.012);
  SamplingOptions tiny;
  tiny.top_p = 0.01f;  // always the single most likely token
  EXPECT_EQ(sample_token(logits, 4, tiny, rng), 3);
}

TEST(Sampling, SameSeedSameTokens) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::sin(i * 1.7f);
  SamplingOptions opt;
  opt.top_k = 20;
  opt.top_p = 0.9f;
  Rng a(11), b(11);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(sample_token(logits.data(), 100, opt, a), sample_token(logits.data(), 100, opt, b));
}

TEST(Sampling, RejectsBadOptions) {
  SamplingOptions opt;
  opt.temperature = -1;
  EXPECT_ERROR("temperature must be >= 0, got -1", opt.validate());
  opt = {};
  opt.top_p = 0;
  EXPECT_ERROR("top_p must be in (0, 1], got 0", opt.validate());
  opt = {};
  opt.top_k = -3;
  EXPECT_ERROR("top_k must be >= 0, got -3", opt.validate());
  const float nan_logits[2] = {0.0f, NAN};
  Rng rng(1);
  EXPECT_ERROR("logit 1 is NaN", sample_token(nan_logits, 2, SamplingOptions{}, rng));
}
