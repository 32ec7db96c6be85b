// Sampling: greedy, temperature, top-k, top-p, determinism and bad options.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

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

TEST(Sampling, TopKAndTopPTruncate) {
  const float logits[4] = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};  // p = .1 .2 .3 .4
  Rng rng(3);
  SamplingOptions k2;
  k2.top_k = 2;
  SamplingOptions p05;
  p05.top_p = 0.65f;  // {3, 2} has mass .7 >= .65; {3} alone .4 < .65
  for (int i = 0; i < 2000; ++i) {
    EXPECT_GE(sample_token(logits, 4, k2, rng), 2);
    EXPECT_GE(sample_token(logits, 4, p05, rng), 2);
  }
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
  EXPECT_THROW(opt.validate(), Error);
  opt = {};
  opt.top_p = 0;
  EXPECT_THROW(opt.validate(), Error);
  opt = {};
  opt.top_k = -3;
  EXPECT_THROW(opt.validate(), Error);
  const float nan_logits[2] = {0.0f, NAN};
  Rng rng(1);
  EXPECT_THROW(sample_token(nan_logits, 2, SamplingOptions{}, rng), Error);
}
