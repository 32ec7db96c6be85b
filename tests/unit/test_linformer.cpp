// Linformer sublayer (Wang et al. 2020): k = n with E = F = I equals exact
// attention; fast == reference twin on awkward shapes for every projection and
// sharing mode; gradients vs finite differences; PyTorch fixtures
// (tools/fixtures/linformer.py); refusals that name the problem.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/rng.h"
#include "nn/attention/attention.h"
#include "nn/linear.h"
#include "nn/linformer/linformer.h"
#include "testing/gradcheck.h"
#include "../support/mixer_checks.h"
#include "../support/errors.h"
#include "../support/fixtures.h"
#include "../support/mixer_checks.h"
#include "../support/parameters.h"
#include "../support/threads.h"

using namespace mf;
using mf::testing::ScopedThreads;
using mf::testing::close;

namespace {

using mf::testing::close;

struct LayerShape {
  std::int64_t batch, seq_len, c, hq, hkv, d, n, k;
};

// A sublayer with random parameters for one (shape, projection, sharing).
struct Layer : mf::testing::OwnedParameters {
  LinformerParams p;
  Layer(const LayerShape& s, LinformerProjection proj, LinformerSharing share, bool bias, std::uint64_t param_seed) {
    seed = param_seed;
    p.num_heads = s.hq, p.num_kv_heads = s.hkv, p.head_dim = s.d, p.max_len = s.n, p.proj_len = s.k;
    p.projection = proj, p.sharing = share;
    const float wc = 1.0f / std::sqrt(static_cast<float>(s.c)), wo = 1.0f / std::sqrt(static_cast<float>(s.hq * s.d));
    p.q = make("q", {s.hq * s.d, s.c}, 0.0f, wc);
    p.k = make("k", {s.hkv * s.d, s.c}, 0.0f, wc);
    p.v = make("v", {s.hkv * s.d, s.c}, 0.0f, wc);
    p.o = make("o", {s.c, s.hq * s.d}, 0.0f, wo);
    if (bias) {
      p.q_bias = make("q_bias", {s.hq * s.d}, 0.0f, 0.1f);
      p.k_bias = make("k_bias", {s.hkv * s.d}, 0.0f, 0.1f);
      p.v_bias = make("v_bias", {s.hkv * s.d}, 0.0f, 0.1f);
      p.o_bias = make("o_bias", {s.c}, 0.0f, 0.1f);
    }
    for (const auto& [role, shape] : linformer_projection_shapes(p)) {
      const std::int64_t fan_in = proj == LinformerProjection::Linear ? s.n : s.d * (s.n / s.k);
      Parameter* w = make(role, shape, 0.0f, 1.0f / std::sqrt(static_cast<float>(fan_in)));
      (role == "e" ? p.e : p.f) = w;
    }
  }
  void zero_grads() {
    for (auto& q : owned) q->grad.fill(0.0f);
  }
};

struct LayerRun {
  Tensor y, dx;
  std::vector<Tensor> grads;
};

LayerRun run_fast(Layer& l, const Tensor& x, const Tensor& dy, std::int64_t b, std::int64_t len, const Tensor& mask) {
  l.zero_grads();
  LayerRun r{Tensor::empty(x.shape()), Tensor::empty(x.shape()), {}};
  LinformerSaved s;
  linformer_forward(r.y, s, x, b, len, mask, l.p);
  linformer_backward(r.dx, dy, x, s, b, len, mask, l.p);
  for (const Tensor& g : l.grads()) r.grads.push_back(g.clone());
  return r;
}

LayerRun run_reference(Layer& l, const Tensor& x, const Tensor& dy, std::int64_t b, std::int64_t len, const Tensor& mask) {
  l.zero_grads();
  LayerRun r{Tensor::empty(x.shape()), Tensor::empty(x.shape()), {}};
  reference::linformer_forward(r.y, x, b, len, mask, l.p);
  reference::linformer_backward(r.dx, dy, x, b, len, mask, l.p);
  for (const Tensor& g : l.grads()) r.grads.push_back(g.clone());
  return r;
}

const char* name_of(LinformerProjection p) {
  const char* names[] = {"linear", "conv", "mean", "max"};
  return names[static_cast<int>(p)];
}
const char* name_of(LinformerSharing s) {
  const char* names[] = {"none", "headwise", "kv", "layerwise"};
  return names[static_cast<int>(s)];
}

}  // namespace

// k = n = L and E = F = I (per head or shared): the projection is the identity,
// so the sublayer is exact non-causal attention, forward and every gradient.
TEST(Linformer, IdentityProjectionEqualsExactAttention) {
  const LayerShape s{2, 24, 32, 4, 2, 16, 24, 24};
  for (LinformerSharing share : {LinformerSharing::None, LinformerSharing::Headwise, LinformerSharing::KeyValue}) {
    SCOPED_TRACE(name_of(share));
    Layer l(s, LinformerProjection::Linear, share, true, 11);
    for (Parameter* w : {l.p.e, l.p.f}) {
      if (!w || (w == l.p.f && share == LinformerSharing::KeyValue)) continue;
      w->value.fill(0.0f);
      float* v = w->value.data<float>();
      const std::int64_t heads = share == LinformerSharing::None ? s.hkv : 1;
      for (std::int64_t h = 0; h < heads; ++h)
        for (std::int64_t i = 0; i < s.n; ++i) v[(h * s.n + i) * s.n + i] = 1.0f;
    }
    const std::int64_t n = s.batch * s.seq_len;
    const Tensor x = randn({n, s.c}, 5), dy = randn({n, s.c}, 6);
    const LayerRun fast = run_fast(l, x, dy, s.batch, s.seq_len, Tensor());
    // The same sublayer from exact parts: projections, the attention front door
    // (non-causal, varlen rows of L), the output projection.
    l.zero_grads();
    const Tensor q = linear_forward(x, l.p.q->value, l.p.q_bias->value).reshape({n, s.hq, s.d});
    const Tensor k = linear_forward(x, l.p.k->value, l.p.k_bias->value).reshape({n, s.hkv, s.d});
    const Tensor v = linear_forward(x, l.p.v->value, l.p.v_bias->value).reshape({n, s.hkv, s.d});
    VarlenSeqlens seqs{{0, s.seq_len, n}, {0, s.seq_len, n}};
    const AttentionOutput a = attention_varlen_forward(q, k, v, seqs, AttentionOptions{});
    const Tensor y = linear_forward(a.out.reshape({n, s.hq * s.d}), l.p.o->value, l.p.o_bias->value);
    Tensor dout = Tensor::empty({n, s.hq * s.d}), dx = Tensor::empty(x.shape());
    linear_backward(dout, l.p.o->grad, l.p.o_bias->grad, dy, a.out.reshape({n, s.hq * s.d}), l.p.o->value);
    const AttentionGrads g = attention_varlen_backward(q, k, v, a.out, a.lse, dout.reshape({n, s.hq, s.d}), seqs,
                                                       AttentionOptions{});
    linear_backward(dx, l.p.q->grad, l.p.q_bias->grad, g.dq.reshape({n, s.hq * s.d}), x, l.p.q->value);
    linear_backward(dx, l.p.k->grad, l.p.k_bias->grad, g.dk.reshape({n, s.hkv * s.d}), x, l.p.k->value, true);
    linear_backward(dx, l.p.v->grad, l.p.v_bias->grad, g.dv.reshape({n, s.hkv * s.d}), x, l.p.v->value, true);
    EXPECT_TRUE(close(fast.y, y, 1e-5, "y"));
    EXPECT_TRUE(close(fast.dx, dx, 1e-5, "dx"));
    for (std::size_t i = 0; i < 8; ++i)  // q, k, v, o and their biases (E/F have no exact twin)
      EXPECT_TRUE(close(fast.grads[i], l.owned[i]->grad, 1e-5, l.owned[i]->name));
  }
}

// Fast path == double reference: every projection x sharing mode, L not a
// multiple of anything and L < n, GQA 1:1, 2:1, 4:1, D 32/64/80, with and
// without the padding mask, with and without biases.
TEST(Linformer, FastMatchesReference) {
  const LayerShape shapes[] = {
      {2, 13, 24, 4, 2, 32, 16, 4},  // GQA 2:1, L < n, partial last window (s = 4)
      {1, 20, 16, 4, 1, 64, 20, 5},  // GQA 4:1, L = n
      {2, 9, 20, 2, 2, 80, 24, 6},   // D 80, L much shorter than n
  };
  const LinformerProjection projs[] = {LinformerProjection::Linear, LinformerProjection::Conv,
                                       LinformerProjection::Mean, LinformerProjection::Max};
  const LinformerSharing shares[] = {LinformerSharing::None, LinformerSharing::Headwise, LinformerSharing::KeyValue,
                                     LinformerSharing::Layerwise};
  int cases = 0;
  for (const LayerShape& s : shapes)
    for (LinformerProjection proj : projs)
      for (LinformerSharing share : shares) {
        const bool pooling = proj == LinformerProjection::Mean || proj == LinformerProjection::Max;
        if (pooling && share != LinformerSharing::None) continue;  // no parameters to share
        for (bool padded : {false, true}) {
          SCOPED_TRACE(std::string(name_of(proj)) + " " + name_of(share) + " L=" + std::to_string(s.seq_len) +
                       " D=" + std::to_string(s.d) + (padded ? " padded" : ""));
          Layer l(s, proj, share, padded, 21 + cases);
          const std::int64_t n = s.batch * s.seq_len;
          const Tensor x = randn({n, s.c}, 30 + cases), dy = randn({n, s.c}, 60 + cases);
          const Tensor mask = padded ? mf::testing::tail_and_hole_mask(s.batch, s.seq_len) : Tensor();
          const LayerRun fast = run_fast(l, x, dy, s.batch, s.seq_len, mask);
          const LayerRun ref = run_reference(l, x, dy, s.batch, s.seq_len, mask);
          EXPECT_TRUE(close(fast.y, ref.y, 2e-5, "y"));
          EXPECT_TRUE(close(fast.dx, ref.dx, 2e-5, "dx"));
          for (std::size_t i = 0; i < fast.grads.size(); ++i)
            EXPECT_TRUE(close(fast.grads[i], ref.grads[i], 2e-5, "grad " + l.owned[i]->name));
          ++cases;
        }
      }
  EXPECT_EQ(cases, 3 * 10 * 2);  // 3 shapes x (linear 4 + conv 4 + mean + max) x mask
}

// Gradients of x and every parameter (E, F, Wq, Wk, Wv, Wo, biases) vs
// four-point finite differences of sum(y * w).
TEST(Linformer, GradientsMatchFiniteDifferences) {
  ScopedThreads one(1);
  struct Case {
    LinformerProjection proj;
    LinformerSharing share;
  };
  const Case cases[] = {{LinformerProjection::Linear, LinformerSharing::None},
                        {LinformerProjection::Linear, LinformerSharing::KeyValue},
                        {LinformerProjection::Conv, LinformerSharing::Headwise},
                        {LinformerProjection::Mean, LinformerSharing::None},
                        {LinformerProjection::Max, LinformerSharing::None}};
  const LayerShape s{2, 7, 8, 4, 2, 8, 8, 4};  // s = 2, partial last window, GQA 2:1
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(name_of(c.proj)) + " " + name_of(c.share));
    Layer l(s, c.proj, c.share, true, 5);
    const std::int64_t n = s.batch * s.seq_len;
    Tensor x = randn({n, s.c}, 6);
    const Tensor w = randn({n, s.c}, 7), mask = mf::testing::tail_and_hole_mask(s.batch, s.seq_len);
    if (c.proj == LinformerProjection::Max) {
      // Keep every window's maximum clear of its runner-up (and of the zero pad)
      // so that no finite-difference step crosses a tie: a sawtooth feature
      // 6 + 6 (i mod s) that k and v read with weight 1.
      float* xp = x.data<float>();
      for (std::int64_t r = 0; r < n; ++r) xp[r * s.c] = 6.0f + 6.0f * static_cast<float>((r % s.seq_len) % 2);
      for (Parameter* p : {l.p.k, l.p.v})
        for (std::int64_t row = 0; row < s.hkv * s.d; ++row) p->value.data<float>()[row * s.c] = 1.0f;
      // q does not read it: the common offset of the keys then leaves the
      // softmax unchanged and the logits stay moderate.
      for (std::int64_t row = 0; row < s.hq * s.d; ++row) l.p.q->value.data<float>()[row * s.c] = 0.0f;
    }
    auto loss = [&] {
      Tensor y = Tensor::empty(x.shape());
      LinformerSaved saved;
      linformer_forward(y, saved, x, s.batch, s.seq_len, mask, l.p);
      return mf::testing::weighted_sum(y, w);
    };
    l.zero_grads();
    Tensor y = Tensor::empty(x.shape()), dx = Tensor::full(x.shape(), 3.0f);
    LinformerSaved saved;
    linformer_forward(y, saved, x, s.batch, s.seq_len, mask, l.p);
    linformer_backward(dx, w, x, saved, s.batch, s.seq_len, mask, l.p);
    std::vector<Tensor> in = l.values(), g = l.grads();
    in.push_back(x);
    g.push_back(dx);
    mf::testing::GradcheckOptions opt;
    opt.atol = 5e-4;
    opt.rtol = 5e-3;
    const auto r = mf::testing::gradcheck(loss, in, g, opt);
    EXPECT_TRUE(r.ok) << r.report;
  }
}

// Layerwise sharing: two layers handed one E accumulate both gradients into it.
TEST(Linformer, LayerwiseSharedProjectionAccumulatesOverLayers) {
  const LayerShape s{1, 10, 16, 2, 2, 8, 12, 4};
  Layer a(s, LinformerProjection::Linear, LinformerSharing::Layerwise, false, 1);
  Layer b(s, LinformerProjection::Linear, LinformerSharing::Layerwise, false, 2);
  b.p.e = a.p.e;
  const Tensor x = randn({10, 16}, 3), dy = randn({10, 16}, 4);
  Tensor y = Tensor::empty(x.shape()), dx = Tensor::empty(x.shape());
  auto grad_of = [&](Layer& l) {
    a.zero_grads();
    LinformerSaved saved;
    linformer_forward(y, saved, x, 1, 10, Tensor(), l.p);
    linformer_backward(dx, dy, x, saved, 1, 10, Tensor(), l.p);
    return a.p.e->grad.clone();
  };
  const Tensor ga = grad_of(a), gb = grad_of(b);
  a.zero_grads();
  for (Layer* l : {&a, &b}) {
    LinformerSaved saved;
    linformer_forward(y, saved, x, 1, 10, Tensor(), l->p);
    linformer_backward(dx, dy, x, saved, 1, 10, Tensor(), l->p);
  }
  const auto sum = a.p.e->grad.to_vector(), ea = ga.to_vector(), eb = gb.to_vector();
  for (std::size_t i = 0; i < sum.size(); ++i) ASSERT_NEAR(sum[i], ea[i] + eb[i], 1e-5) << i;
}

// Saved state: only what the backward reads (no K/V for pooling, argmax for
// max), bytes = the sum of the tensors; equal bits on 1 and 2 threads.
TEST(Linformer, SavedStateAndDeterminism) {
  const LayerShape s{2, 64, 32, 4, 2, 16, 64, 16};
  Layer lin(s, LinformerProjection::Linear, LinformerSharing::None, false, 3);
  Layer mean(s, LinformerProjection::Mean, LinformerSharing::None, false, 3);
  Layer mx(s, LinformerProjection::Max, LinformerSharing::None, false, 3);
  const Tensor x = randn({128, 32}, 1), dy = randn({128, 32}, 2);
  Tensor y = Tensor::empty(x.shape());
  LinformerSaved sl, sm, sx;
  linformer_forward(y, sl, x, 2, 64, Tensor(), lin.p);
  linformer_forward(y, sm, x, 2, 64, Tensor(), mean.p);
  linformer_forward(y, sx, x, 2, 64, Tensor(), mx.p);
  EXPECT_EQ(sl.tensors().size(), 7u);  // q, k, v, kp, vp, out, lse
  EXPECT_EQ(sm.tensors().size(), 5u);  // q, kp, vp, out, lse
  EXPECT_EQ(sx.tensors().size(), 7u);  // + argmax of k and v
  std::size_t bytes = 0;
  for (const Tensor* t : sl.tensors()) bytes += t->nbytes();
  EXPECT_EQ(sl.bytes(), bytes);
  EXPECT_EQ(sl.kp.shape(), Shape({2 * 16, 2, 16}));
  for (Layer* l : {&lin, &mx}) {
    mf::testing::expect_same_bits_across_threads([&] {
      const LayerRun r = run_fast(*l, x, dy, 2, 64, mf::testing::tail_and_hole_mask(2, 64));
      std::vector<Tensor> all = {r.y, r.dx};
      all.insert(all.end(), r.grads.begin(), r.grads.end());
      return mf::testing::all_values(all);
    });
  }
}

// Each bad input is refused with a message naming the problem.
TEST(Linformer, RejectsBadInput) {
  using mf::testing::error_of;
  const LayerShape s{1, 8, 16, 2, 2, 8, 8, 4};
  Layer l(s, LinformerProjection::Linear, LinformerSharing::Headwise, false, 1);
  const Tensor x = randn({8, 16}, 1), y = Tensor::empty({8, 16});
  LinformerSaved saved;
  // L > n
  const Tensor x_long = randn({10, 16}, 2), y_long = Tensor::empty({10, 16});
  EXPECT_NE(error_of([&] { linformer_forward(y_long, saved, x_long, 1, 10, Tensor(), l.p); })
                .find("[linformer] sequence length 10 exceeds max_len (n) = 8"),
            std::string::npos);
  // Wrong E shape
  LinformerParams bad = l.p;
  Parameter wrong("layers.0.linformer.e", Tensor::zeros({4, 9}), true);
  bad.e = &wrong;
  const std::string e_msg = error_of([&] { linformer_forward(y, saved, x, 1, 8, Tensor(), bad); });
  EXPECT_NE(e_msg.find("parameter e ('layers.0.linformer.e') must be a contiguous float32 tensor of shape [4, 8]"),
            std::string::npos)
      << e_msg;
  // Missing F for headwise sharing
  bad = l.p;
  bad.f = nullptr;
  EXPECT_NE(error_of([&] { linformer_forward(y, saved, x, 1, 8, Tensor(), bad); }).find("needs parameter f of shape [4, 8]"),
            std::string::npos);
  // kv sharing with a separate f
  bad = l.p;
  bad.sharing = LinformerSharing::KeyValue;
  EXPECT_NE(error_of([&] { linformer_forward(y, saved, x, 1, 8, Tensor(), bad); }).find("f must be null or e"),
            std::string::npos);
  // Conv with n % k != 0
  bad = l.p;
  bad.projection = LinformerProjection::Conv;
  bad.proj_len = 3;
  EXPECT_NE(error_of([&] { linformer_forward(y, saved, x, 1, 8, Tensor(), bad); })
                .find("max_len (n = 8) must be divisible by proj_len (k = 3)"),
            std::string::npos);
  // Pooling with parameters
  bad = l.p;
  bad.projection = LinformerProjection::Mean;
  EXPECT_NE(error_of([&] { linformer_forward(y, saved, x, 1, 8, Tensor(), bad); }).find("has no parameters, but e"),
            std::string::npos);
  // k > n
  bad = l.p;
  bad.proj_len = 9;
  EXPECT_NE(error_of([&] { linformer_forward(y, saved, x, 1, 8, Tensor(), bad); }).find("proj_len (k) must be in [1, max_len = 8]"),
            std::string::npos);
  // Bad mask shape and dtype
  const Tensor mask_bad = Tensor::empty({1, 7}, DType::I32);
  EXPECT_NE(error_of([&] { linformer_forward(y, saved, x, 1, 8, mask_bad, l.p); })
                .find("key_padding_mask must be a contiguous [B, L] = [1, 8] tensor but has shape [1, 7]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { linformer_forward(y, saved, x, 1, 8, Tensor::zeros({1, 8}), l.p); })
                .find("key_padding_mask must be int32"),
            std::string::npos);
  // Rows that do not match batch x seq_len; backward without a forward
  EXPECT_NE(error_of([&] { linformer_forward(y, saved, x, 2, 8, Tensor(), l.p); }).find("input has 8 rows but batch 2"),
            std::string::npos);
  Tensor dx = Tensor::empty({8, 16});
  EXPECT_NE(error_of([&] { linformer_backward(dx, x, x, LinformerSaved{}, 1, 8, Tensor(), l.p); })
                .find("backward called without the saved activations"),
            std::string::npos);
}

// vs the PyTorch rewrite (float64 math rounded once): y, dx and every gradient.
namespace {
const std::vector<std::string> kLinformerFixtures = {
    "linformer_linear_none_gqa2_padded", "linformer_linear_headwise_full_len", "linformer_linear_kv_short_padded",
    "linformer_linear_layerwise",        "linformer_conv_none_partial",         "linformer_conv_headwise_padded",
    "linformer_conv_kv_short",           "linformer_mean_padded_partial",       "linformer_max_full",
    "linformer_max_partial_padded",
};
}  // namespace

TEST(Linformer, MatchesPyTorchFixtures) {
  for (const std::string& name : kLinformerFixtures) {
    SCOPED_TRACE(name);
    mf::testing::FixtureModule f(name);
    LinformerParams p;
    p.num_heads = f.option("num_heads"), p.num_kv_heads = f.option("num_kv_heads"), p.head_dim = f.option("head_dim");
    p.max_len = f.option("max_len"), p.proj_len = f.option("proj_len");
    p.projection = static_cast<LinformerProjection>(f.option("projection"));
    p.sharing = static_cast<LinformerSharing>(f.option("sharing"));
    p.q = f.param("wq"), p.k = f.param("wk"), p.v = f.param("wv"), p.o = f.param("wo");
    p.q_bias = f.param("bq"), p.k_bias = f.param("bk"), p.v_bias = f.param("bv"), p.o_bias = f.param("bo");
    p.e = f.param("e"), p.f = f.param("f");
    const std::int64_t b = f.option("batch"), l = f.option("seq_len");
    const Tensor mask = f.file.tensors.count("mask") ? f.tensor("mask") : Tensor();
    const Tensor& x = f.tensor("x");
    Tensor y = Tensor::empty(x.shape()), dx = Tensor::empty(x.shape());
    LinformerSaved saved;
    linformer_forward(y, saved, x, b, l, mask, p);
    linformer_backward(dx, f.tensor("dy"), x, saved, b, l, mask, p);
    // float32 through every stage vs exact math: a few 1e-6 relative to the
    // largest value; 1e-5 still catches any semantic error (>= 1e-3). A
    // gradient that is exactly 0 in theory (the key bias under mean pooling:
    // softmax is shift invariant) is float32 cancellation noise of O(1)
    // terms, hence the floor of 1 on the magnitude.
    f.expect_matches(y, dx, 1e-5);
  }
}

// Every linformer_* fixture written by tools/fixtures/linformer.py is checked.
TEST(Linformer, FixtureListCoversEveryFile) {
  mf::testing::expect_fixture_list_covers("linformer_", kLinformerFixtures);
}
