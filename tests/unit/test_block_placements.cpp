// Norm module and block: finite differences for RMSNorm/LayerNorm and
// for a whole block under each norm placement (pre, post, sandwich) with
// RoPE, ALiBi and a sliding window; the placement really changes the math.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <span>

#include "core/rng.h"
#include "core/threads.h"
#include "model/config.h"
#include "nn/block/block.h"
#include "nn/mixer/mixer_registry.h"
#include "nn/norm/norm.h"
#include "testing/gradcheck.h"
#include "../support/errors.h"
#include "../support/parameters.h"
#include "../support/threads.h"

using namespace mf;
using mf::testing::ScopedThreads;

namespace {

struct Params : mf::testing::OwnedParameters {
  NormParams norm(NormKind kind, std::int64_t c) {
    NormParams n;
    n.kind = kind;
    n.eps = 1e-5f;
    n.weight = make("norm.weight", {c}, 1.0f, 0.2f);
    if (kind == NormKind::LayerNorm) n.bias = make("norm.bias", {c}, 0.0f, 0.2f);
    return n;
  }
};

}  // namespace

TEST(NormModule, BackwardMatchesFiniteDifferences) {
  ScopedThreads one(1);
  for (NormKind kind : {NormKind::RMSNorm, NormKind::LayerNorm}) {
    Params ps;
    ps.seed = 3;
    const std::int64_t n = 4, c = 24;
    NormParams p = ps.norm(kind, c);
    Tensor x = randn({n, c}, 1), w = randn({n, c}, 2);
    auto loss = [&] {
      Tensor y = Tensor::empty({n, c});
      NormSaved s;
      norm_forward(y, s, x, p);
      return mf::testing::weighted_sum(y, w);
    };
    Tensor y = Tensor::empty({n, c}), dx = Tensor::empty({n, c});
    NormSaved s;
    norm_forward(y, s, x, p);
    EXPECT_EQ(s.mean.defined(), kind == NormKind::LayerNorm);
    norm_backward(dx, w, x, s, p);
    std::vector<Tensor> in = ps.values(), g = ps.grads();
    in.push_back(x);
    g.push_back(dx);
    const auto r = mf::testing::gradcheck(loss, in, g);
    EXPECT_TRUE(r.ok) << r.report;
  }
}

TEST(NormModule, RejectsMismatchedWeight) {
  Params ps;
  NormParams p = ps.norm(NormKind::RMSNorm, 8);
  Tensor x = randn({3, 9}, 1), y = Tensor::empty({3, 9});
  NormSaved s;
  EXPECT_ERROR("tensor 'norm.weight' must have shape [9] but has [8]", norm_forward(y, s, x, p));
  NormParams q = ps.norm(NormKind::LayerNorm, 9);
  q.kind = NormKind::RMSNorm;  // a bias on an RMSNorm
  EXPECT_ERROR("RMSNorm has no bias but 'norm.bias' was given", norm_forward(y, s, x, q));
}

namespace {

struct BlockCase {
  NormPlacement placement;
  NormKind norm;
  const char* position;  // "rope", "alibi", "window"
};

// A block of the attention and SwiGLU mixers, made through their registry
// entries, with random parameters (biases included).
struct BlockFixture {
  Params ps;
  BlockParams p;
  std::unique_ptr<RopeTable> rope;
  std::unique_ptr<TokenMixer> token;
  std::unique_ptr<ChannelMixer> channel;
  static constexpr std::int64_t C = 16, Hq = 4, Hkv = 2, D = 8, I = 24;

  explicit BlockFixture(const BlockCase& k) {
    ps.seed = 11;
    mf::testing::RandomParamStore store(ps, 0.5f);
    const bool pre = k.placement == NormPlacement::Pre, sandwich = k.placement == NormPlacement::Sandwich;
    MixerContext ctx;
    ctx.hidden_size = C;
    ctx.num_heads = Hq;
    ctx.num_kv_heads = Hkv;
    ctx.head_dim = D;
    ctx.intermediate_size = I;
    ctx.attention_bias = true;
    ctx.attention_impl = AttentionImpl::Dense;
    ctx.hidden_act = Activation::SiLU;
    std::string mixer = "full_attention";
    if (std::string(k.position) == "rope") {
      RopeConfig rc;
      rc.rotary_dim = D;
      rc.theta = 100.0;
      rope = std::make_unique<RopeTable>(rc, 16);
      ctx.rope = rope.get();
    } else if (std::string(k.position) == "alibi") {
      ctx.alibi = true;
    } else {
      ctx.sliding_window = 2;
      mixer = "sliding_attention";
    }
    if (pre || sandwich) p.token_norms.in = ps.norm(k.norm, C);
    if (sandwich) p.token_norms.out = ps.norm(k.norm, C);
    if (k.placement == NormPlacement::Post) p.token_norms.post = ps.norm(k.norm, C);
    token = token_mixer_entry(mixer).make(ctx, store);
    if (pre || sandwich) p.channel_norms.in = ps.norm(k.norm, C);
    if (sandwich) p.channel_norms.out = ps.norm(k.norm, C);
    if (k.placement == NormPlacement::Post) p.channel_norms.post = ps.norm(k.norm, C);
    channel = channel_mixer_entry("swiglu").make(ctx, store);
    p.token = token.get();
    p.channel = channel.get();
  }
};

}  // namespace

static MixerCall causal_call(std::int64_t batch, std::int64_t seq_len) {
  MixerCall c;
  c.batch = batch;
  c.seq_len = seq_len;
  return c;
}

class BlockPlacements : public ::testing::TestWithParam<BlockCase> {};

TEST_P(BlockPlacements, BackwardMatchesFiniteDifferences) {
  ScopedThreads one(1);
  BlockFixture f(GetParam());
  const std::int64_t B = 2, L = 5, N = B * L, C = BlockFixture::C;
  const MixerCall call = causal_call(B, L);
  Tensor x = randn({N, C}, 21), w = randn({N, C}, 22);
  auto loss = [&] {
    BlockSaved s;
    return mf::testing::weighted_sum(block_forward(s, x, f.p, call), w);
  };
  BlockSaved s;
  block_forward(s, x, f.p, call);
  const Tensor dx = block_backward(w, x, s, f.p, call);
  std::vector<Tensor> in = f.ps.values(), g = f.ps.grads();
  in.push_back(x);
  g.push_back(dx);
  mf::testing::GradcheckOptions opt;
  opt.max_checks_per_input = 12;
  // Gradients here are O(1..100); the float32 rounding of the 160 summed
  // outputs leaves ~1e-3 of noise in each numeric derivative (measured by
  // varying h), so near-cancelling elements need that much absolute slack.
  opt.atol = 3e-3;
  opt.rtol = 1e-2;
  const auto r = mf::testing::gradcheck(loss, in, g, opt);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_GT(r.checked, 100);
}

INSTANTIATE_TEST_SUITE_P(All, BlockPlacements,
                         ::testing::Values(BlockCase{NormPlacement::Pre, NormKind::RMSNorm, "rope"},
                                           BlockCase{NormPlacement::Post, NormKind::LayerNorm, "alibi"},
                                           BlockCase{NormPlacement::Sandwich, NormKind::RMSNorm, "window"},
                                           BlockCase{NormPlacement::Sandwich, NormKind::LayerNorm, "rope"},
                                           BlockCase{NormPlacement::Post, NormKind::RMSNorm, "window"},
                                           BlockCase{NormPlacement::Pre, NormKind::LayerNorm, "alibi"}));

TEST(BlockPlacementMath, PostNormOutputIsNormalizedAndPreNormIsNot) {
  const std::int64_t B = 1, L = 4, N = B * L, C = BlockFixture::C;
  const MixerCall call = causal_call(B, L);
  Tensor x = randn({N, C}, 5);
  for (float& v : std::span(x.data<float>(), x.numel())) v = 3.0f * v + 1.0f;
  BlockFixture post({NormPlacement::Post, NormKind::LayerNorm, "rope"});
  for (auto* n : {&post.p.channel_norms.post}) {  // unit weight, zero bias: rows of y are standardized
    n->weight->value.fill(1.0f);
    n->bias->value.fill(0.0f);
  }
  BlockSaved s;
  const Tensor y = block_forward(s, x, post.p, call);
  for (std::int64_t r = 0; r < N; ++r) {
    double mean = 0, sq = 0;
    for (std::int64_t c = 0; c < C; ++c) mean += y.at({r, c}) / C;
    for (std::int64_t c = 0; c < C; ++c) sq += (y.at({r, c}) - mean) * (y.at({r, c}) - mean) / C;
    EXPECT_NEAR(mean, 0.0, 1e-5);
    EXPECT_NEAR(sq, 1.0, 1e-3);
  }
  BlockFixture pre({NormPlacement::Pre, NormKind::LayerNorm, "rope"});
  BlockSaved s2;
  const Tensor y2 = block_forward(s2, x, pre.p, call);
  double mean0 = 0;
  for (std::int64_t c = 0; c < C; ++c) mean0 += y2.at({0, c}) / C;
  EXPECT_GT(std::fabs(mean0), 0.1);  // the residual stream keeps x's offset
}
