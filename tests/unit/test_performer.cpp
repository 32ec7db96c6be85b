// Performer (FAVOR+): fast core == reference twin (softmax and ReLU kernels,
// causal and not, padding, GQA, chunk sizes that do not divide L, L = 1); the
// chunked causal scan == the masked quadratic form; causal outputs never see
// later tokens (bit-identical); gradients vs finite differences and vs
// PyTorch (tools/fixtures/performer.py); the projection's structure, redraws
// and checkpointing; a Performer LM trains and generates like its full
// forward; bad input is refused by name.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "nn/mixer/mixer_registry.h"
#include "nn/performer/performer.h"
#include "testing/gradcheck.h"
#include "train/trainer.h"
#include "../support/isa_variants.h"
#include "../support/generation.h"
#include "../support/mixer_checks.h"
#include "../support/errors.h"
#include "../support/fixtures.h"
#include "../support/parameters.h"
#include "../support/threads.h"
#include "../support/tiny_models.h"
#include "../support/train_runs.h"

using namespace mf;
namespace fs = std::filesystem;
namespace mt = mf::testing;

namespace {

using mf::testing::close;

Tensor make_mask(std::int64_t b, std::int64_t l) { return mf::testing::test_padding_mask(b, l); }

Tensor projection(std::int64_t m, std::int64_t d, std::uint64_t seed, PerformerScaling s = PerformerScaling::Chi) {
  Tensor w = Tensor::empty({m, d});
  performer_draw_projection(w, seed, 0, 0, s);
  return w;
}

struct CoreCase {
  std::int64_t batch, len, hq, hkv, d, m;
};

Tensor scaled_randn(const Shape& s, std::uint64_t seed, float scale) {
  Tensor t = randn(s, seed);
  for (float& v : std::span(t.data<float>(), t.numel())) v *= scale;
  return t;
}

// A mixer built through the registry, with random parameters (RandomParamStore).
struct MixerUnderTest {
  mt::OwnedParameters owner;
  std::unique_ptr<mt::RandomParamStore> store;
  std::unique_ptr<TokenMixer> mixer;
  MixerUnderTest(const nlohmann::json& options, std::int64_t c, std::int64_t hq, std::int64_t hkv, std::int64_t d,
                 bool bias, RopeTable* rope, std::uint64_t seed) {
    owner.seed = seed;
    store = std::make_unique<mt::RandomParamStore>(owner, 1.0f / std::sqrt(static_cast<float>(c)));
    const TokenMixerEntry& e = token_mixer_entry("performer", "");
    MixerContext ctx;
    ctx.hidden_size = c, ctx.num_heads = hq, ctx.num_kv_heads = hkv, ctx.head_dim = d;
    ctx.attention_bias = bias;
    ctx.rope = rope;
    ctx.max_position_embeddings = 256;
    ctx.options = parse_options(e.options, options, "", "performer");
    mixer = e.make(ctx, *store);
  }
  Parameter* find(const std::string& name) const {
    for (const auto& p : owner.owned)
      if (p->name == name) return p.get();
    return nullptr;
  }
};

}  // namespace

// The fast core == the double reference (row-by-row definition) over
// kernels, causal or not, padding, GQA 1..4, L = 1, chunks that do not divide L.
TEST(Performer, FastMatchesReference) {
  mt::ScopedThreads one(1);  // tiny shapes: fork/join would dominate
  const CoreCase cases[] = {{2, 13, 4, 2, 8, 12}, {1, 1, 2, 2, 16, 16}, {3, 33, 4, 1, 8, 20}, {1, 24, 2, 2, 32, 40},
                            {1, 20, 2, 1, 64, 256}};  // the defaults: d 64, m 256 (four W blocks)
  int n = 0;
  for (const CoreCase& s : cases)
    for (PerformerKernel kernel : {PerformerKernel::Softmax, PerformerKernel::Relu})
      for (bool causal : {false, true})
        for (bool padded : {false, true})
          for (std::int64_t chunk : {1, 5, 64}) {
            if (!causal && chunk != 64) continue;
            SCOPED_TRACE("case " + std::to_string(n) + (kernel == PerformerKernel::Relu ? " relu" : " softmax") +
                         (causal ? " causal chunk " + std::to_string(chunk) : " bidirectional") +
                         (padded ? " padded" : "") + " L=" + std::to_string(s.len));
            const std::int64_t rows = s.batch * s.len;
            const Tensor q = scaled_randn({rows, s.hq, s.d}, 10 + n, 1.5f), k = scaled_randn({rows, s.hkv, s.d}, 40 + n, 1.5f);
            const Tensor v = randn({rows, s.hkv, s.d}, 70 + n), w = projection(s.m, s.d, 3 + n);
            const Tensor mask = padded ? make_mask(s.batch, s.len) : Tensor();
            PerformerOptions opt;
            opt.kernel = kernel;
            opt.chunk_size = chunk;
            Tensor ref = Tensor::empty(q.shape());
            reference::performer_attention_forward(ref, q, k, v, w, s.batch, s.len, causal, mask, opt);
            mf::testing::for_each_isa([&] {
              Tensor fast = Tensor::empty(q.shape());
              performer_attention_forward(fast, nullptr, q, k, v, w, s.batch, s.len, causal, mask, opt);
              EXPECT_TRUE(close(fast, ref, 2e-5, "out"));
            });
            ++n;
          }
  EXPECT_EQ(n, 5 * 2 * (2 + 2 * 3));
}

// With the same features (ReLU: no stabilizer), the causal chunked scan is the
// masked quadratic form (tril(phiQ phiK^T) V) / (tril(phiQ phiK^T) 1),
// written out here, for chunk sizes that divide L and ones that do not; and
// the softmax scan gives the same bits... up to float rounding for every chunk size.
TEST(Performer, CausalScanEqualsMaskedQuadraticForm) {
  mt::ScopedThreads one(1);  // tiny shapes: fork/join would dominate
  const std::int64_t l = 21, d = 8, m = 12, h = 2;
  const Tensor q = randn({l, h, d}, 1), k = randn({l, h, d}, 2), v = randn({l, h, d}, 3), w = projection(m, d, 4);
  PerformerOptions opt;
  opt.kernel = PerformerKernel::Relu;
  opt.kernel_epsilon = 1e-3;
  const double c = std::pow(double(d), -0.25);
  auto feature = [&](const float* x) {
    std::vector<double> f(m);
    for (std::int64_t j = 0; j < m; ++j) {
      double s = 0;
      for (std::int64_t e = 0; e < d; ++e) s += double(w.data<float>()[j * d + e]) * x[e];
      f[j] = std::max(c * s, 0.0) + opt.kernel_epsilon;
    }
    return f;
  };
  Tensor want = Tensor::empty(q.shape());
  for (std::int64_t hh = 0; hh < h; ++hh)
    for (std::int64_t i = 0; i < l; ++i) {
      const auto fq = feature(q.data<float>() + (i * h + hh) * d);
      std::vector<double> num(d, 0.0);
      double den = 0;
      for (std::int64_t j = 0; j <= i; ++j) {
        const auto fk = feature(k.data<float>() + (j * h + hh) * d);
        double a = 0;
        for (std::int64_t f = 0; f < m; ++f) a += fq[f] * fk[f];
        for (std::int64_t e = 0; e < d; ++e) num[e] += a * v.data<float>()[(j * h + hh) * d + e];
        den += a;
      }
      for (std::int64_t e = 0; e < d; ++e) want.data<float>()[(i * h + hh) * d + e] = float(num[e] / den);
    }
  for (std::int64_t chunk : {1, 2, 5, 7, 8, 21, 64}) {
    opt.chunk_size = chunk;
    EXPECT_TRUE(close(performer_attention(q, k, v, w, true, opt), want, 1e-5, "chunk " + std::to_string(chunk)));
  }
  // Softmax kernel: every chunking gives the reference's value.
  opt.kernel = PerformerKernel::Softmax;
  Tensor ref = Tensor::empty(q.shape());
  reference::performer_attention_forward(ref, q, k, v, w, 1, l, true, Tensor(), opt);
  for (std::int64_t chunk : {1, 3, 8, 16, 21}) {
    opt.chunk_size = chunk;
    EXPECT_TRUE(close(performer_attention(q, k, v, w, true, opt), ref, 2e-5, "softmax chunk " + std::to_string(chunk)));
  }
  // The last causal row sees every key: it equals the non-causal row.
  const Tensor causal = performer_attention(q, k, v, w, true, opt), bidir = performer_attention(q, k, v, w, false, opt);
  EXPECT_TRUE(close(causal.slice(0, l - 1, l).contiguous(), bidir.slice(0, l - 1, l).contiguous(), 1e-5, "last row"));
}

// Causal stabilizer rule: changing tokens after position i (here making
// their key logits much larger, which moves the reference's global max)
// leaves outputs up to i bit-identical, through the whole mixer; not so
// for the bidirectional mixer (negative control).
TEST(Performer, CausalOutputsDoNotDependOnLaterTokens) {
  mt::ScopedThreads one(1);  // tiny shapes: fork/join would dominate
  const std::int64_t b = 2, l = 37, c = 16;
  for (const char* kernel : {"softmax", "relu"}) {
    SCOPED_TRACE(kernel);
    MixerUnderTest t({{"kernel", kernel}, {"chunk_size", 8}, {"nb_features", 24}}, c, 4, 2, 8, true, nullptr, 5);
    const Tensor x = randn({b * l, c}, 1);
    for (std::int64_t cut : {0, 12, 16, 30}) {
      Tensor x2 = x.clone();
      for (std::int64_t s = 0; s < b; ++s)
        for (std::int64_t i = cut + 1; i < l; ++i)
          for (std::int64_t e = 0; e < c; ++e) x2.data<float>()[(s * l + i) * c + e] *= 6.0f;
      for (bool causal : {true, false}) {
        MixerCall call;
        call.batch = b, call.seq_len = l, call.causal = causal;
        Tensor y1 = Tensor::empty(x.shape()), y2 = Tensor::empty(x.shape());
        t.mixer->forward(y1, x, call, false);
        t.mixer->forward(y2, x2, call, false);
        std::vector<float> a, bb;
        for (std::int64_t s = 0; s < b; ++s) {
          const auto ra = y1.slice(0, s * l, s * l + cut + 1).contiguous().to_vector();
          const auto rb = y2.slice(0, s * l, s * l + cut + 1).contiguous().to_vector();
          a.insert(a.end(), ra.begin(), ra.end());
          bb.insert(bb.end(), rb.begin(), rb.end());
        }
        if (causal)
          EXPECT_TRUE(mt::same_bits(a, bb)) << "cut " << cut;
        else
          EXPECT_FALSE(mt::same_bits(a, bb)) << "cut " << cut;
      }
    }
  }
}

// Backward of the whole sublayer (x, q/k/v/o weights and biases; RoPE; GQA)
// vs four-point finite differences. The stabilizers are constants for the
// gradient (the reference's detach); the output depends on them only through
// the softmax eps, so these checks run with eps = 0, where the detached
// gradient is the exact derivative (the PyTorch fixtures check eps = 1e-4).
// ReLU has kinks that a finite-difference step would cross: its cases use
// positive x, Wq, Wk, biases and W, so every logit is clearly positive (the
// zero branch is checked against autograd by the ReLU fixtures).
TEST(Performer, GradientsMatchFiniteDifferences) {
  mt::ScopedThreads one(1);
  RopeConfig rc;
  rc.theta = 100.0;
  rc.rotary_dim = 8;
  RopeTable rope(rc, 64);
  struct Case {
    PerformerKernel kernel;
    bool causal, padded;
    std::int64_t chunk;
    RopeTable* rope;
  };
  const Case cases[] = {{PerformerKernel::Softmax, true, false, 3, &rope},
                        {PerformerKernel::Softmax, false, true, 64, nullptr},
                        {PerformerKernel::Softmax, true, true, 4, nullptr},
                        {PerformerKernel::Relu, true, false, 2, nullptr},
                        {PerformerKernel::Relu, false, true, 64, nullptr}};
  const std::int64_t b = 2, l = 7, c = 8, hq = 4, hkv = 2, d = 8, m = 12;
  for (const Case& k : cases) {
    const bool relu = k.kernel == PerformerKernel::Relu;
    SCOPED_TRACE(std::string(relu ? "relu" : "softmax") + (k.causal ? " causal" : " bidirectional") +
                 (k.padded ? " padded" : ""));
    mt::OwnedParameters owner;
    owner.seed = 9;
    PerformerParams p;
    p.num_heads = hq, p.num_kv_heads = hkv, p.head_dim = d, p.rope = k.rope;
    const float wc = 1.0f / std::sqrt(float(c));
    p.q = owner.make("q", {hq * d, c}, 0.0f, wc), p.k = owner.make("k", {hkv * d, c}, 0.0f, wc);
    p.v = owner.make("v", {hkv * d, c}, 0.0f, wc), p.o = owner.make("o", {c, hq * d}, 0.0f, wc);
    p.q_bias = owner.make("bq", {hq * d}, 0.0f, 0.1f), p.k_bias = owner.make("bk", {hkv * d}, 0.0f, 0.1f);
    p.v_bias = owner.make("bv", {hkv * d}, 0.0f, 0.1f), p.o_bias = owner.make("bo", {c}, 0.0f, 0.1f);
    Parameter proj("proj", projection(m, d, 4), false);
    p.projection = &proj;
    p.options.kernel = k.kernel;
    p.options.chunk_size = k.chunk;
    p.options.kernel_epsilon = 0.01;
    p.options.softmax_epsilon = 0.0;
    Tensor x = randn({b * l, c}, 6);
    if (relu)
      for (const Tensor& t : {x, p.q->value, p.k->value, p.q_bias->value, p.k_bias->value, proj.value})
        for (float& v : std::span(t.data<float>(), t.numel())) v = std::fabs(v);
    const Tensor wsum = randn({b * l, c}, 7), mask = k.padded ? make_mask(b, l) : Tensor();
    auto loss = [&] {
      Tensor y = Tensor::empty(x.shape());
      performer_forward(y, nullptr, x, b, l, k.causal, mask, p);
      return mt::weighted_sum(y, wsum);
    };
    Tensor y = Tensor::empty(x.shape()), dx = Tensor::full(x.shape(), 3.0f);
    PerformerSaved saved;
    performer_forward(y, &saved, x, b, l, k.causal, mask, p);
    performer_backward(dx, wsum, x, saved, b, l, k.causal, mask, p);
    EXPECT_EQ(max_abs_diff(proj.grad, Tensor::zeros(proj.grad.shape())), 0.0f);  // a buffer: no gradient
    std::vector<Tensor> in = owner.values(), g = owner.grads();
    in.push_back(x);
    g.push_back(dx);
    mt::GradcheckOptions opt;
    opt.atol = 5e-4;
    opt.rtol = 5e-3;
    if (relu) opt.atol = 1e-3;  // larger logits (all positive), larger float32 noise
    const auto r = mt::gradcheck(loss, in, g, opt);
    EXPECT_TRUE(r.ok) << r.report;
  }
}

// vs the PyTorch rewrite of performer-pytorch (float64, rounded once): y, dx
// and every parameter gradient, causal fixtures at several chunk sizes.
namespace {
const std::vector<std::string> kPerformerFixtures = {
    "performer_softmax_bidir_gqa2_padded", "performer_softmax_causal_rope", "performer_softmax_causal_large_logits",
    "performer_softmax_causal_padded",     "performer_relu_bidir",          "performer_relu_causal_gqa4_padded",
};
std::int64_t opt_int(const SafetensorsContents& f, const std::string& name) {
  return f.tensors.at("opt_" + name).to(DType::I64).data<std::int64_t>()[0];
}
double opt_num(const SafetensorsContents& f, const std::string& name) {
  return f.tensors.at("opt_" + name).to_vector()[0];
}
}  // namespace

TEST(Performer, MatchesPyTorchFixtures) {
  mt::ScopedThreads one(1);  // tiny shapes: fork/join would dominate
  for (const std::string& name : kPerformerFixtures) {
    const SafetensorsContents f = mt::load_fixture(name);
    const auto& t = f.tensors;
    std::vector<std::unique_ptr<Parameter>> params;
    auto param = [&](const std::string& key) -> Parameter* {
      if (!t.count(key)) return nullptr;
      params.push_back(std::make_unique<Parameter>(key, t.at(key).contiguous().clone(), true));
      return params.back().get();
    };
    PerformerParams p;
    p.num_heads = opt_int(f, "num_heads"), p.num_kv_heads = opt_int(f, "num_kv_heads");
    p.head_dim = opt_int(f, "head_dim");
    p.q = param("wq"), p.k = param("wk"), p.v = param("wv"), p.o = param("wo");
    p.q_bias = param("bq"), p.k_bias = param("bk"), p.v_bias = param("bv"), p.o_bias = param("bo");
    Parameter proj("proj", t.at("proj").contiguous().clone(), false);
    p.projection = &proj;
    p.options.kernel = opt_int(f, "kernel") == 0 ? PerformerKernel::Softmax : PerformerKernel::Relu;
    p.options.kernel_epsilon = opt_num(f, "kernel_epsilon");
    std::unique_ptr<RopeTable> rope;
    if (opt_num(f, "rope_theta") > 0) {
      RopeConfig rc;
      rc.theta = opt_num(f, "rope_theta");
      rc.rotary_dim = p.head_dim;
      rope = std::make_unique<RopeTable>(rc, 64);
      p.rope = rope.get();
    }
    const std::int64_t b = opt_int(f, "batch"), l = opt_int(f, "seq_len");
    const bool causal = opt_int(f, "causal") != 0;
    const Tensor mask = t.count("mask") ? t.at("mask") : Tensor();
    const Tensor& x = t.at("x");
    for (std::int64_t chunk : {1, 4, 64}) {
      if (!causal && chunk != 64) continue;
      SCOPED_TRACE(name + " chunk " + std::to_string(chunk));
      p.options.chunk_size = chunk;
      for (auto& q : params) q->grad.fill(0.0f);
      Tensor y = Tensor::empty(x.shape()), dx = Tensor::empty(x.shape());
      PerformerSaved saved;
      performer_forward(y, &saved, x, b, l, causal, mask, p);
      performer_backward(dx, t.at("dy"), x, saved, b, l, causal, mask, p);
      EXPECT_TRUE(close(y, t.at("y"), 2e-5, "y", 1.0));
      EXPECT_TRUE(close(dx, t.at("dx"), 2e-5, "dx", 1.0));
      for (const auto& q : params) EXPECT_TRUE(close(q->grad, t.at("grad_" + q->name), 2e-5, "grad_" + q->name, 1.0));
    }
  }
}

TEST(Performer, FixtureListCoversEveryFile) {
  mf::testing::expect_fixture_list_covers("performer_", kPerformerFixtures);
}

// W: rows of each d-row block orthonormal before scaling (the last block
// truncated), row norms chi(d) (mean ~ sqrt(d)) or all sqrt(d); a pure
// function of (seed, stream, draw).
TEST(Performer, ProjectionHasOrthogonalBlocksAndChiNorms) {
  const std::int64_t d = 16, m = 520;  // 32 full blocks and 8 rows of a 33rd
  for (PerformerScaling s : {PerformerScaling::Chi, PerformerScaling::SqrtD}) {
    const Tensor w = projection(m, d, 11, s);
    const float* p = w.data<float>();
    std::vector<double> norms(m);
    for (std::int64_t i = 0; i < m; ++i) {
      double n2 = 0;
      for (std::int64_t e = 0; e < d; ++e) n2 += double(p[i * d + e]) * p[i * d + e];
      norms[i] = std::sqrt(n2);
    }
    double worst_dot = 0;
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = (i / d) * d; j < i; ++j) {  // same block
        double dot = 0;
        for (std::int64_t e = 0; e < d; ++e) dot += double(p[i * d + e]) * p[j * d + e];
        worst_dot = std::max(worst_dot, std::fabs(dot) / (norms[i] * norms[j]));
      }
    EXPECT_LT(worst_dot, 1e-5);
    double mean = 0, minimum = 1e9, maximum = 0;
    for (double n : norms) mean += n / m, minimum = std::min(minimum, n), maximum = std::max(maximum, n);
    if (s == PerformerScaling::SqrtD) {
      EXPECT_NEAR(minimum, 4.0, 1e-5);
      EXPECT_NEAR(maximum, 4.0, 1e-5);
    } else {
      // E chi(16) = sqrt(2) Gamma(8.5) / Gamma(8) = 3.9219; sd ~ 0.70 / sqrt(520) = 0.031.
      EXPECT_NEAR(mean, 3.9219, 0.12);
      EXPECT_GT(maximum - minimum, 1.0);  // really random norms
    }
    // Rows from different blocks are not orthogonal in general.
    double cross = 0;
    for (std::int64_t e = 0; e < d; ++e) cross += double(p[e]) * p[d * d + e];
    EXPECT_GT(std::fabs(cross), 1e-3);
  }
  const Tensor a = projection(40, 8, 5), b2 = projection(40, 8, 5);
  EXPECT_EQ(max_abs_diff(a, b2), 0.0f);
  Tensor redrawn = Tensor::empty({40, 8});
  performer_draw_projection(redrawn, 5, 0, 1, PerformerScaling::Chi);
  EXPECT_GT(max_abs_diff(a, redrawn), 0.1f);
}

// Redraws: the same (seed, step) gives the same W; W changes exactly at the
// steps that are positive multiples of feature_redraw_interval; a model built
// with another seed that takes over the W in use (a checkpoint resume) at any
// step, a redraw step included, continues exactly like the uninterrupted run;
// a forward (evaluation, generation) never redraws; interval 0 never redraws.
TEST(Performer, RedrawFollowsTheTrainingStepOnly) {
  mt::ScopedThreads one(1);  // tiny shapes: fork/join would dominate
  const nlohmann::json o = {{"feature_redraw_interval", 3}, {"nb_features", 16}};
  MixerUnderTest a(o, 16, 2, 2, 8, false, nullptr, 21), b(o, 16, 2, 2, 8, false, nullptr, 21);
  Parameter* wa = a.find("self_attn.performer_projection");
  Parameter* wb = b.find("self_attn.performer_projection");
  ASSERT_NE(wa, nullptr);
  EXPECT_FALSE(wa->trainable);
  const Tensor initial = wa->value.clone();
  std::vector<Tensor> seen;
  for (std::int64_t step = 0; step < 10; ++step) {
    const Tensor before = wa->value.clone();
    a.mixer->begin_training_step(step);
    b.mixer->begin_training_step(step);
    const bool changed = max_abs_diff(before, wa->value) > 0.0f;
    EXPECT_EQ(changed, step > 0 && step % 3 == 0) << "step " << step;
    EXPECT_EQ(max_abs_diff(wa->value, wb->value), 0.0f) << "same seed, step " << step;
    seen.push_back(wa->value.clone());
  }
  EXPECT_EQ(max_abs_diff(seen[0], initial), 0.0f);
  a.mixer->begin_training_step(9);  // the same step again: no second redraw
  EXPECT_EQ(max_abs_diff(wa->value, seen[9]), 0.0f);
  for (std::int64_t resume : {4, 6}) {  // resumed at a plain step and at a redraw step
    MixerUnderTest r(o, 16, 2, 2, 8, false, nullptr, 99);
    Parameter* wr = r.find("self_attn.performer_projection");
    EXPECT_GT(max_abs_diff(wr->value, initial), 0.0f);  // another seed: another W
    wr->value.copy_from(seen[resume - 1]);              // the checkpoint written after step resume - 1
    for (std::int64_t step = resume; step < 10; ++step) {
      r.mixer->begin_training_step(step);
      EXPECT_EQ(max_abs_diff(wr->value, seen[step]), 0.0f) << "resumed at " << resume << ", step " << step;
    }
  }
  // Forwards and generation states leave W alone.
  const Tensor w_now = wa->value.clone();
  const Tensor x = randn({10, 16}, 3);
  Tensor y = Tensor::empty(x.shape());
  MixerCall call;
  call.batch = 1, call.seq_len = 10, call.causal = true;
  a.mixer->forward(y, x, call, false);
  const auto state = a.mixer->new_state(GenerationOptions{});
  call.state = state.get();
  a.mixer->forward(y, x, call, false);
  EXPECT_EQ(max_abs_diff(wa->value, w_now), 0.0f);
  MixerUnderTest never({{"feature_redraw_interval", 0}}, 16, 2, 2, 8, false, nullptr, 21);
  const Tensor w0 = never.find("self_attn.performer_projection")->value.clone();
  for (std::int64_t step : {0, 1000, 5000}) never.mixer->begin_training_step(step);
  EXPECT_EQ(max_abs_diff(never.find("self_attn.performer_projection")->value, w0), 0.0f);
}

// Prefill of any length then single steps == the full causal forward
// (the mixer alone, GQA, softmax and ReLU).
TEST(Performer, PrefillAndStepsEqualTheFullCausalForward) {
  mt::ScopedThreads one(1);
  const std::int64_t b = 2, l = 23, c = 16;
  for (const char* kernel : {"softmax", "relu"}) {
    MixerUnderTest t({{"kernel", kernel}, {"chunk_size", 4}, {"nb_features", 20}}, c, 4, 2, 8, true, nullptr, 3);
    const Tensor x = scaled_randn({b, l, c}, 4, 2.0f);
    MixerCall full;
    full.batch = b, full.seq_len = l, full.causal = true;
    Tensor want = Tensor::empty({b * l, c});
    t.mixer->forward(want, x.reshape({b * l, c}), full, false);
    GenerationOptions go;
    go.batch = b;
    const auto state = t.mixer->new_state(go);
    std::int64_t pos = 0;
    for (std::int64_t len : {7, 1, 1, 5, 1, 8}) {
      MixerCall call;
      call.batch = b, call.seq_len = len, call.causal = true, call.state = state.get(), call.past = pos;
      const Tensor xs = x.slice(1, pos, pos + len).contiguous().reshape({b * len, c});
      Tensor y = Tensor::empty({b * len, c});
      t.mixer->forward(y, xs, call, false);
      const Tensor ws = want.reshape({b, l, c}).slice(1, pos, pos + len).contiguous().reshape({b * len, c});
      EXPECT_TRUE(close(y, ws, 2e-5, std::string(kernel) + " positions from " + std::to_string(pos)));
      pos += len;
    }
    EXPECT_EQ(pos, l);
    EXPECT_EQ(state->bytes(), (b * 2 * 20 * 9 + b * 2 * 9 + b * 2) * 4);
    state->reset();
    MixerCall again;
    again.batch = b, again.seq_len = 3, again.causal = true, again.state = state.get();
    Tensor y = Tensor::empty({b * 3, c});
    t.mixer->forward(y, x.slice(1, 0, 3).contiguous().reshape({b * 3, c}), again, false);
    EXPECT_TRUE(close(y, want.reshape({b, l, c}).slice(1, 0, 3).contiguous().reshape({b * 3, c}), 2e-5, "after reset"));
  }
}

// Equal bits on 1 and 2 threads (several (sequence, KV head) tasks).
TEST(Performer, DeterministicAcrossThreads) {
  MixerUnderTest t({{"chunk_size", 16}, {"nb_features", 64}}, 32, 4, 2, 16, true, nullptr, 8);
  const std::int64_t b = 2, l = 300;  // B Hq L m (d+1) = 2.6M: the tasks run in parallel
  const Tensor x = randn({b * l, 32}, 1), dy = randn({b * l, 32}, 2);
  for (bool causal : {true, false}) {
    mt::expect_same_bits_across_threads([&] {
      for (auto& p : t.owner.owned) p->grad.fill(0.0f);
      MixerCall call;
      call.batch = b, call.seq_len = l, call.causal = causal;
      Tensor y = Tensor::empty(x.shape()), dx = Tensor::empty(x.shape());
      auto saved = t.mixer->forward(y, x, call, true);
      t.mixer->backward(dx, dy, x, *saved, call);
      std::vector<float> all = y.to_vector(), d = dx.to_vector();
      all.insert(all.end(), d.begin(), d.end());
      for (const auto& p : t.owner.owned) {
        const auto g = p->grad.to_vector();
        all.insert(all.end(), g.begin(), g.end());
      }
      return all;
    });
  }
}

namespace {
nlohmann::json performer_lm_json() {
  return {{"model_type", "modformer"}, {"vocab_size", 256},        {"hidden_size", 32},
          {"intermediate_size", 48},   {"num_hidden_layers", 2},   {"num_attention_heads", 4},
          {"num_key_value_heads", 2},  {"head_dim", 8},            {"max_position_embeddings", 64},
          {"token_mixer", "performer"}, {"performer", {{"nb_features", 32}, {"chunk_size", 8},
                                                       {"feature_redraw_interval", 5}}}};
}
}  // namespace

// A saved and reloaded model (its W redrawn first) computes the same function.
TEST(Performer, CheckpointReloadComputesTheSameFunction) {
  mt::ScopedThreads one(1);
  Transformer m(config_from_json(performer_lm_json(), "test.json"), 4);
  m.begin_training_step(10);  // interval 5: W redrawn
  const Tensor tok = mt::random_tokens({2, 20}, 1, 256);
  const Tensor want = m.logits(tok);
  const std::string dir = mt::fresh_temp_dir("performer_ckpt");
  save_checkpoint(dir, m);
  const auto loaded = load_checkpoint(dir);
  EXPECT_EQ(max_abs_diff(loaded->logits(tok), want), 0.0f);
  ASSERT_NE(loaded->find_parameter("model.layers.1.self_attn.performer_projection"), nullptr);
  Transformer fresh(config_from_json(performer_lm_json(), "test.json"), 4);  // the initial W
  EXPECT_GT(max_abs_diff(fresh.logits(tok), want), 1e-4f);
  fs::remove_all(dir);
}

// A causal Performer LM learns text (loss falls, W redrawn every 5 steps) and
// its cached generation (prefill + steps) equals the full forward.
TEST(Performer, LanguageModelTrainsAndGeneratesLikeTheFullForward) {
  mt::ScopedThreads one(1);
  std::string text;
  for (int i = 0; i < 300; ++i) text += "the cat sat on the mat and the dog sat on the log. ";
  const TextCorpus corpus = TextCorpus::from_text(text, 0.02, "performer test");
  Transformer m(config_from_json(performer_lm_json(), "test.json"), 7);
  const std::string dir = mt::fresh_temp_dir("performer_train");
  TrainConfig cfg = mt::small_train_config(dir);
  cfg.steps = 30;
  cfg.batch_size = 4;
  cfg.seq_len = 32;
  cfg.grad_accum = 1;
  cfg.lr = 1e-2;
  cfg.min_lr = 1e-3;
  cfg.warmup_steps = 4;
  cfg.eval_interval = 0;
  cfg.checkpoint_interval = 0;
  cfg.log_interval = 10;
  const EvalResult before = evaluate(m, corpus, 32, 8, 4);
  const TrainResult r = train(m, corpus, cfg);
  EXPECT_LT(r.val.loss, before.loss - 1.5) << "before " << before.loss << " after " << r.val.loss;
  fs::remove_all(dir);

  const Tensor tok = mt::random_tokens({2, 20}, 7, 256);
  mf::testing::expect_generation_equals_full_forward(m, tok, 7, 1e-4f);
}

// Each bad input is refused with a message naming the problem and the mixer.
TEST(Performer, RejectsBadInput) {
  mt::ScopedThreads one(1);  // tiny shapes: fork/join would dominate
  using mt::error_of;
  auto expect_error = [](const std::function<void()>& f, const std::string& needle) {
    const std::string e = error_of(f);
    EXPECT_NE(e.find(needle), std::string::npos) << "error: " << e << "\nexpected: " << needle;
  };
  nlohmann::json j = performer_lm_json();
  j["performer"] = {{"kernel", "cosine"}};
  expect_error([&] { config_from_json(j, "t.json"); }, "field 'performer.kernel': unknown value \"cosine\"");
  j["performer"] = {{"nb_features", 0}};
  expect_error([&] { config_from_json(j, "t.json"); }, "performer.nb_features");
  j["performer"] = {{"chunk", 8}};
  expect_error([&] { config_from_json(j, "t.json"); }, "performer.chunk");
  j = performer_lm_json();
  j["position"] = "alibi";
  expect_error([&] { Transformer m(config_from_json(j, "t.json"), 1); }, "[performer] ALiBi is not supported");

  const Tensor q = randn({8, 2, 8}, 1), k = randn({8, 1, 8}, 2), v = randn({8, 1, 8}, 3), w = projection(6, 8, 1);
  Tensor out = Tensor::empty(q.shape());
  PerformerOptions opt;
  expect_error([&] { performer_attention_forward(out, nullptr, q, k, v, projection(6, 4, 1), 1, 8, false, Tensor(), opt); },
               "[performer] projection must be a contiguous float32 [m, d] = [m, 8] tensor");
  expect_error([&] { performer_attention_forward(out, nullptr, q, k, v, w, 2, 8, false, Tensor(), opt); },
               "[performer] q has shape [8, 2, 8] but [16, 2, 8] was expected");
  expect_error([&] { performer_attention_forward(out, nullptr, q, randn({8, 3, 8}, 2), randn({8, 3, 8}, 3), w, 1, 8,
                                                 false, Tensor(), opt); },
               "[performer] query heads (2) must be a multiple of KV heads (3)");
  expect_error([&] { performer_attention_forward(out, nullptr, q, k, v, w, 1, 8, false, Tensor::zeros({1, 7}, DType::I32), opt); },
               "[performer] key_padding_mask must be a contiguous int32 [B, L] = [1, 8] tensor");
  opt.chunk_size = 0;
  expect_error([&] { performer_attention_forward(out, nullptr, q, k, v, w, 1, 8, true, Tensor(), opt); },
               "option 'chunk_size' must be >= 1");
  opt.chunk_size = 4;
  PerformerState st(1, 1, 6, 8);
  expect_error([&] { performer_attention_forward(out, nullptr, q, k, v, w, 1, 8, false, Tensor(), opt, &st); },
               "[performer] a generation state needs a causal call");
  PerformerState wrong(2, 1, 6, 8);
  expect_error([&] { performer_attention_forward(out, nullptr, q, k, v, w, 1, 8, true, Tensor(), opt, &wrong); },
               "[performer] generation state of shape [2, 1, 6, 9] does not fit batch 1");
  Tensor dq = Tensor::empty(q.shape()), dk = Tensor::empty(k.shape()), dv = Tensor::empty(v.shape());
  expect_error([&] { performer_attention_backward(dq, dk, dv, q, q, k, v, w, PerformerAttentionSaved{}, 1, 8, true,
                                                  Tensor(), opt); },
               "[performer] backward called without the saved activations");
  // A forward saved bidirectionally cannot serve a causal backward.
  PerformerAttentionSaved saved;
  performer_attention_forward(out, &saved, q, k, v, w, 1, 8, false, Tensor(), opt);
  expect_error([&] { performer_attention_backward(dq, dk, dv, q, q, k, v, w, saved, 1, 8, true, Tensor(), opt); },
               "without the saved activations of a forward of this shape (and causal setting)");
  // The mixer: a generation state whose position does not match the call.
  MixerUnderTest t({{"nb_features", 6}}, 16, 2, 1, 8, false, nullptr, 1);
  const auto state = t.mixer->new_state(GenerationOptions{});
  MixerCall call;
  call.batch = 1, call.seq_len = 2, call.causal = true, call.state = state.get(), call.past = 5;
  Tensor y = Tensor::empty({2, 16});
  expect_error([&] { t.mixer->forward(y, randn({2, 16}, 1), call, false); },
               "[performer] the generation state holds 0 positions but the call starts at position 5");
}

// Padding keys are left out: a padded sequence's real rows equal those of the
// sequence without its padding (bidirectional), and padding after the last
// real token changes no causal output.
TEST(Performer, PaddingKeysAreIgnored) {
  mt::ScopedThreads one(1);  // tiny shapes: fork/join would dominate
  MixerUnderTest t({{"nb_features", 16}}, 16, 2, 2, 8, true, nullptr, 2);
  const Tensor x = randn({12, 16}, 1);
  Tensor mask = Tensor::zeros({1, 12}, DType::I32);
  for (int i = 0; i < 9; ++i) mask.data<std::int32_t>()[i] = 1;
  for (bool causal : {false, true}) {
    MixerCall padded, alone;
    padded.batch = alone.batch = 1;
    padded.seq_len = 12, alone.seq_len = 9;
    padded.causal = alone.causal = causal;
    padded.key_padding_mask = mask;
    Tensor y = Tensor::empty({12, 16}), y9 = Tensor::empty({9, 16});
    t.mixer->forward(y, x, padded, false);
    t.mixer->forward(y9, x.slice(0, 0, 9).contiguous(), alone, false);
    EXPECT_TRUE(close(y.slice(0, 0, 9).contiguous(), y9, 1e-5, causal ? "causal" : "bidirectional"));
  }
}
