// Multi-scale retention (RetNet, Sun et al. 2023): fast == reference twin for
// each form on awkward shapes; the parallel, chunkwise (chunk 1, a divisor, a
// non-divisor, L) and recurrent forms agree as the group norm's eps -> 0;
// gradients vs finite differences; PyTorch fixtures (tools/fixtures/retnet.py,
// a rewrite of torchscale's forms); future independence; prefill + steps ==
// full forward; a small retention LM learns and generates like its full
// forward; refusals that name the problem.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/safetensors.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "nn/mixer/mixer_registry.h"
#include "nn/retnet/retention.h"
#include "testing/gradcheck.h"
#include "../support/generation.h"
#include "../support/close.h"
#include "../support/errors.h"
#include "../support/fixtures.h"
#include "../support/model_fixture.h"
#include "../support/parameters.h"
#include "../support/periodic_lm.h"
#include "../support/threads.h"
#include "../support/tiny_models.h"

using namespace mf;
using mf::testing::ScopedThreads;
using mf::testing::close;

namespace {

struct LayerShape {
  std::int64_t batch, seq_len, c, heads, value_factor, chunk;
};

// A retention sublayer with random parameters (unit-scale scores).
struct Layer : mf::testing::OwnedParameters {
  RetentionParams p;
  Layer(const LayerShape& s, bool bias, std::uint64_t param_seed, float eps = 1e-6f) {
    seed = param_seed;
    const std::int64_t vd = s.value_factor * s.c;
    p.num_heads = s.heads, p.key_dim = s.c / s.heads, p.value_dim = vd / s.heads, p.chunk_size = s.chunk;
    p.eps = eps;
    const float wc = 1.0f / std::sqrt(static_cast<float>(s.c));
    p.q = make("q", {s.c, s.c}, 0.0f, 2.0f * wc);
    p.k = make("k", {s.c, s.c}, 0.0f, 2.0f * wc);
    p.v = make("v", {vd, s.c}, 0.0f, wc);
    p.g = make("g", {vd, s.c}, 0.0f, wc);
    p.o = make("o", {s.c, vd}, 0.0f, 1.0f / std::sqrt(static_cast<float>(vd)));
    if (bias) {
      p.q_bias = make("q_bias", {s.c}, 0.0f, 0.1f);
      p.k_bias = make("k_bias", {s.c}, 0.0f, 0.1f);
      p.v_bias = make("v_bias", {vd}, 0.0f, 0.1f);
      p.g_bias = make("g_bias", {vd}, 0.0f, 0.1f);
      p.o_bias = make("o_bias", {s.c}, 0.0f, 0.1f);
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

LayerRun run_fast(Layer& l, const Tensor& x, const Tensor& dy, std::int64_t b, std::int64_t len, RetentionForm form) {
  l.zero_grads();
  LayerRun r{Tensor::empty(x.shape()), Tensor::empty(x.shape()), {}};
  RetentionSaved s;
  retention_forward(r.y, &s, x, b, len, form, nullptr, l.p);
  retention_backward(r.dx, dy, x, s, b, len, l.p);
  for (const Tensor& g : l.grads()) r.grads.push_back(g.clone());
  return r;
}

LayerRun run_reference(Layer& l, const Tensor& x, const Tensor& dy, std::int64_t b, std::int64_t len,
                       RetentionForm form) {
  l.zero_grads();
  LayerRun r{Tensor::empty(x.shape()), Tensor::empty(x.shape()), {}};
  reference::retention_forward(r.y, x, b, len, form, nullptr, l.p);
  reference::retention_backward(r.dx, dy, x, b, len, form, l.p);
  for (const Tensor& g : l.grads()) r.grads.push_back(g.clone());
  return r;
}

// Gradients are compared with a floor of 0.01 on their scale: at L = 1 the
// gradients of q and k vanish in theory (the group norm removes the
// magnitude of q_0 . k_0), so what is left is float32 cancellation noise.
void expect_runs_close(const LayerRun& got, const LayerRun& want, double tol, const Layer& l) {
  EXPECT_TRUE(close(got.y, want.y, tol, "y"));
  EXPECT_TRUE(close(got.dx, want.dx, tol, "dx", 0.01));
  for (std::size_t i = 0; i < got.grads.size(); ++i)
    EXPECT_TRUE(close(got.grads[i], want.grads[i], tol, "grad " + l.owned[i]->name, 0.01));
}

constexpr RetentionForm kForms[] = {RetentionForm::Parallel, RetentionForm::Chunkwise, RetentionForm::Recurrent};

}  // namespace

// The fast blockwise kernel equals the literal torchscale loops in double, for
// every form, on lengths that are not multiples of the chunk, batch > 1, L = 1,
// chunk 1 and chunk > L, with and without biases, 1 and 2 threads.
TEST(RetNet, FastMatchesReference) {
  const LayerShape shapes[] = {{2, 13, 16, 2, 2, 4}, {1, 1, 8, 2, 1, 4}, {2, 9, 12, 3, 1, 1},
                               {1, 10, 8, 1, 2, 16}, {1, 24, 16, 4, 2, 8}};
  int cases = 0;
  for (int threads : {1, 2}) {
    ScopedThreads scoped(threads);
    for (const LayerShape& s : shapes) {
      for (RetentionForm form : kForms) {
        SCOPED_TRACE("L " + std::to_string(s.seq_len) + " chunk " + std::to_string(s.chunk) + " form " +
                     retention_form_name(form) + " threads " + std::to_string(threads));
        Layer l(s, s.seq_len % 2 == 1, 3);
        const std::int64_t n = s.batch * s.seq_len;
        const Tensor x = randn({n, s.c}, 4), dy = randn({n, s.c}, 5);
        expect_runs_close(run_fast(l, x, dy, s.batch, s.seq_len, form),
                          run_reference(l, x, dy, s.batch, s.seq_len, form), 2e-5, l);
        ++cases;
      }
    }
  }
  EXPECT_EQ(cases, 2 * 5 * 3);
}

// The three forms are R_t times different per-row constants, so after the
// group norm they agree as eps -> 0: with eps = 1e-12 within 2e-5 relative
// (float32), outputs and every gradient, for chunk sizes 1, a divisor of L,
// a non-divisor and L (and the reference agrees in double). With torchscale's
// eps 1e-6 and small activations they differ (a negative control).
TEST(RetNet, FormsAgreeAsEpsGoesToZero) {
  ScopedThreads one(1);
  const std::int64_t b = 2, len = 12, c = 16;
  const Tensor x = randn({b * len, c}, 8), dy = randn({b * len, c}, 9);
  for (std::int64_t chunk : {1, 3, 5, 12}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    Layer l({b, len, c, 2, 2, chunk}, true, 7, 1e-12f);
    const LayerRun parallel = run_fast(l, x, dy, b, len, RetentionForm::Parallel);
    expect_runs_close(run_fast(l, x, dy, b, len, RetentionForm::Chunkwise), parallel, 2e-5, l);
    expect_runs_close(run_fast(l, x, dy, b, len, RetentionForm::Recurrent), parallel, 2e-5, l);
    expect_runs_close(run_reference(l, x, dy, b, len, RetentionForm::Chunkwise), parallel, 2e-5, l);
  }
  // Negative control: tiny activations (values scaled by 1e-3) and eps 1e-6.
  Layer l({b, len, c, 2, 2, 3}, false, 7, 1e-6f);
  for (float& w : std::span(l.p.v->value.data<float>(), l.p.v->value.numel())) w *= 1e-3f;
  const Tensor yp = Tensor::empty(x.shape()), yr = Tensor::empty(x.shape());
  retention_forward(yp, nullptr, x, b, len, RetentionForm::Parallel, nullptr, l.p);
  retention_forward(yr, nullptr, x, b, len, RetentionForm::Recurrent, nullptr, l.p);
  EXPECT_GT(max_abs_diff(yp, yr), 1e-3f * std::max(max_abs_diff(yp, Tensor::zeros(x.shape())), 1e-30f));
}

// Gradients of x and every parameter vs four-point finite differences of
// sum(y * w). The normalizers are detached in the backward; finite
// differences see them move, so parallel and chunkwise run with eps = 1e-12
// (where the output does not depend on them); the recurrent form's normalizer
// depends on positions only, so it is checked at torchscale's eps 1e-6.
TEST(RetNet, GradientsMatchFiniteDifferences) {
  ScopedThreads one(1);
  const LayerShape s{2, 7, 8, 2, 2, 3};
  for (RetentionForm form : kForms) {
    SCOPED_TRACE(retention_form_name(form));
    Layer l(s, true, 11, form == RetentionForm::Recurrent ? 1e-6f : 1e-12f);
    const std::int64_t n = s.batch * s.seq_len, dk = s.c / s.heads;
    // Row 0 of a sequence is sign(q_0 . k_0) v_0 / rms(v_0) after the group norm (eps -> 0),
    // a step function of q_0 . k_0: x is drawn until no |q_0 . k_0| is near the jump.
    Tensor x;
    for (std::uint64_t x_seed = 12;; ++x_seed) {
      x = randn({n, s.c}, x_seed);
      Tensor y = Tensor::empty(x.shape());
      RetentionSaved probe;
      retention_forward(y, &probe, x, s.batch, s.seq_len, form, nullptr, l.p);
      double smallest = 1e30;
      for (std::int64_t b = 0; b < s.batch; ++b)
        for (std::int64_t h = 0; h < s.heads; ++h) {
          double dot = 0;
          for (std::int64_t d = 0; d < dk; ++d)
            dot += probe.q.data<float>()[(b * s.seq_len * s.heads + h) * dk + d] *
                   probe.k.data<float>()[(b * s.seq_len * s.heads + h) * dk + d];
          smallest = std::min(smallest, std::fabs(dot));
        }
      if (smallest > 0.2) break;
      ASSERT_LT(x_seed, 100u);
    }
    const Tensor w = randn({n, s.c}, 13);
    auto loss = [&] {
      Tensor y = Tensor::empty(x.shape());
      retention_forward(y, nullptr, x, s.batch, s.seq_len, form, nullptr, l.p);
      return mf::testing::weighted_sum(y, w);
    };
    l.zero_grads();
    Tensor y = Tensor::empty(x.shape()), dx = Tensor::full(x.shape(), 3.0f);
    RetentionSaved saved;
    retention_forward(y, &saved, x, s.batch, s.seq_len, form, nullptr, l.p);
    retention_backward(dx, w, x, saved, s.batch, s.seq_len, l.p);
    std::vector<Tensor> in = l.values(), g = l.grads();
    in.push_back(x);
    g.push_back(dx);
    mf::testing::GradcheckOptions opt;
    opt.step = 5e-3;
    opt.atol = 5e-4;
    opt.rtol = 5e-3;
    const auto r = mf::testing::gradcheck(loss, in, g, opt);
    EXPECT_TRUE(r.ok) << r.report;
  }
}

// Output t depends on x_0..x_t only: changing the inputs from position 6 on
// leaves rows 0..5 bit-identical (every form; the chunkwise form's chunk
// straddles the change).
TEST(RetNet, FutureIndependence) {
  const std::int64_t b = 2, len = 11, c = 8, cut = 6;
  Layer l({b, len, c, 2, 2, 4}, false, 21);
  const Tensor x = randn({b * len, c}, 22);
  Tensor x2 = x.clone();
  for (std::int64_t s = 0; s < b; ++s)
    for (std::int64_t t = cut; t < len; ++t)
      for (std::int64_t j = 0; j < c; ++j) x2.data<float>()[(s * len + t) * c + j] += 1.0f;
  for (RetentionForm form : kForms) {
    SCOPED_TRACE(retention_form_name(form));
    Tensor y1 = Tensor::empty(x.shape()), y2 = Tensor::empty(x.shape());
    retention_forward(y1, nullptr, x, b, len, form, nullptr, l.p);
    retention_forward(y2, nullptr, x2, b, len, form, nullptr, l.p);
    for (std::int64_t s = 0; s < b; ++s) {
      const Tensor a = y1.slice(0, s * len, s * len + cut).contiguous();
      const Tensor z = y2.slice(0, s * len, s * len + cut).contiguous();
      EXPECT_EQ(max_abs_diff(a, z), 0.0f) << "sequence " << s;
      EXPECT_GT(max_abs_diff(y1.slice(0, s * len + cut, (s + 1) * len).contiguous(),
                             y2.slice(0, s * len + cut, (s + 1) * len).contiguous()),
                1e-3f);
    }
  }
}

// Generation: a prefill of 5 positions (2 blocks of 3), then steps of 1 and a
// second prefill of 4, continue the recurrent state and equal the full
// recurrent-form forward (and the reference's own step-by-step recurrence);
// the state is [B, H, Dk, Dv] whatever the length.
TEST(RetNet, PrefillAndStepsEqualFullForward) {
  const std::int64_t b = 2, len = 14, c = 8;
  Layer l({b, len, c, 2, 2, 3}, true, 31);
  const Tensor x = randn({b * len, c}, 32);
  Tensor full = Tensor::empty(x.shape());
  retention_forward(full, nullptr, x, b, len, RetentionForm::Recurrent, nullptr, l.p);
  auto rows = [&](const Tensor& t, std::int64_t from, std::int64_t to) {  // positions [from, to) of each sequence
    Tensor out = Tensor::empty({b * (to - from), c});
    for (std::int64_t s = 0; s < b; ++s)
      out.slice(0, s * (to - from), (s + 1) * (to - from)).copy_from(t.slice(0, s * len + from, s * len + to));
    return out;
  };
  for (bool use_reference : {false, true}) {
    SCOPED_TRACE(use_reference ? "reference" : "fast");
    RetentionState state = retention_new_state(b, l.p);
    std::int64_t t = 0;
    for (std::int64_t piece : {5, 1, 1, 4, 1, 1, 1}) {
      const Tensor xs = rows(x, t, t + piece);
      Tensor ys = Tensor::empty(xs.shape());
      if (use_reference)
        reference::retention_forward(ys, xs, b, piece, RetentionForm::Recurrent, &state, l.p);
      else
        retention_forward(ys, nullptr, xs, b, piece, RetentionForm::Recurrent, &state, l.p);
      EXPECT_TRUE(close(ys, rows(full, t, t + piece), 1e-5, "positions " + std::to_string(t)));
      t += piece;
      EXPECT_EQ(state.past, t);
    }
    EXPECT_EQ(t, len);
    EXPECT_EQ(state.kv.shape(), Shape({b, 2, 4, 8}));
  }
}

TEST(RetNet, RejectsBadInput) {
  using mf::testing::error_of;
  const LayerShape s{1, 8, 8, 2, 2, 4};
  Layer l(s, false, 1);
  const Tensor x = randn({8, 8}, 1), y = Tensor::empty({8, 8});
  auto expect = [](const std::string& e, const std::string& needle) {
    EXPECT_NE(e.find(needle), std::string::npos) << "error: " << e << "\nexpected: " << needle;
  };
  RetentionParams bad = l.p;
  bad.key_dim = 3;
  expect(error_of([&] { retention_forward(y, nullptr, x, 1, 8, RetentionForm::Parallel, nullptr, bad); }),
         "[retention] the key dim per head (hidden / heads) must be even");
  bad = l.p;
  bad.chunk_size = 0;
  expect(error_of([&] { retention_forward(y, nullptr, x, 1, 8, RetentionForm::Parallel, nullptr, bad); }),
         "[retention] option 'chunk_size' must be >= 1");
  bad = l.p;
  bad.eps = -1.0f;
  expect(error_of([&] { retention_forward(y, nullptr, x, 1, 8, RetentionForm::Parallel, nullptr, bad); }),
         "option 'group_norm_eps' must be finite and >= 0");
  bad = l.p;
  bad.g = nullptr;
  expect(error_of([&] { retention_forward(y, nullptr, x, 1, 8, RetentionForm::Parallel, nullptr, bad); }),
         "[retention] parameter g_proj of shape [16, 8] is required but null");
  Parameter wrong("layers.0.retention.v_proj.weight", Tensor::zeros({8, 8}), true);
  bad = l.p;
  bad.v = &wrong;
  expect(error_of([&] { retention_forward(y, nullptr, x, 1, 8, RetentionForm::Parallel, nullptr, bad); }),
         "parameter v_proj ('layers.0.retention.v_proj.weight') must be a contiguous float32 tensor of shape [16, 8]");
  expect(error_of([&] { retention_forward(y, nullptr, x, 2, 8, RetentionForm::Parallel, nullptr, l.p); }),
         "[retention] input has 8 rows but batch 2 x seq_len 8");
  RetentionState state = retention_new_state(1, l.p);
  expect(error_of([&] { retention_forward(y, nullptr, x, 1, 8, RetentionForm::Chunkwise, &state, l.p); }),
         "a call with a generation state runs the recurrent form, not chunkwise");
  RetentionState other = retention_new_state(2, l.p);
  expect(error_of([&] { retention_forward(y, nullptr, x, 1, 8, RetentionForm::Recurrent, &other, l.p); }),
         "generation state must hold a contiguous [B, H, Dk, Dv] = [1, 2, 4, 8] tensor but has [2, 2, 4, 8]");
  Tensor dx = Tensor::empty({8, 8});
  expect(error_of([&] { retention_backward(dx, x, x, RetentionSaved{}, 1, 8, l.p); }),
         "backward called without the saved activations");
  // Through the mixer entry and the model config.
  const TokenMixerEntry& entry = token_mixer_entry("retention", "");
  MixerContext ctx;
  ctx.hidden_size = 12, ctx.num_heads = 4;
  ctx.options = parse_options(entry.options, nullptr, "", "retention");
  mf::testing::OwnedParameters owner;
  mf::testing::RandomParamStore store(owner, 0.1f);
  expect(error_of([&] { entry.make(ctx, store); }), "[retention] the key dim per head, hidden_size / "
                                                    "num_attention_heads = 3, must be even");
  ctx.num_heads = 5;
  expect(error_of([&] { entry.make(ctx, store); }), "[retention] hidden_size (12) must be divisible by");
  expect(error_of([&] { parse_options(entry.options, {{"form", "fast"}}, "", "retention"); }), "form");
  expect(error_of([&] { parse_options(entry.options, {{"chunk_size", 0}}, "", "retention"); }), "chunk_size");
  ctx.num_heads = 2;
  auto mixer = entry.make(ctx, store);
  MixerCall call;
  call.batch = 1, call.seq_len = 4;
  call.key_padding_mask = Tensor::zeros({1, 4}, DType::I32);
  const Tensor x4 = randn({4, 12}, 3), y4 = Tensor::empty({4, 12});
  expect(error_of([&] { mixer->forward(y4, x4, call, false); }), "[retention] does not support a key padding mask");
  call.key_padding_mask = Tensor();
  call.causal = false;
  expect(error_of([&] { mixer->forward(y4, x4, call, false); }), "[retention] cannot run bidirectionally");
}

// vs the PyTorch rewrite of torchscale's retention (float64 math rounded
// once): y, dx and every parameter gradient, for each form at torchscale's
// eps, including a chunkwise case whose L is not a multiple of the chunk.
namespace {
const std::vector<std::string> kRetNetFixtures = {
    "retnet_parallel_b2_l9",    "retnet_parallel_bias_h4", "retnet_chunkwise_l12_c4",
    "retnet_chunkwise_l11_c4",  "retnet_chunkwise_c1",     "retnet_recurrent_b2_l7",
};
}  // namespace

TEST(RetNet, MatchesPyTorchFixtures) {
  for (const std::string& name : kRetNetFixtures) {
    SCOPED_TRACE(name);
    mf::testing::FixtureModule f(name);
    RetentionParams p;
    p.num_heads = f.option("num_heads"), p.key_dim = f.option("key_dim"), p.value_dim = f.option("value_dim");
    p.chunk_size = f.option("chunk_size");
    p.eps = f.tensor("opt_eps").to_vector()[0];
    const auto form = static_cast<RetentionForm>(f.option("form"));
    p.q = f.param("wq"), p.k = f.param("wk"), p.v = f.param("wv"), p.g = f.param("wg"), p.o = f.param("wo");
    p.q_bias = f.param("bq"), p.k_bias = f.param("bk"), p.v_bias = f.param("bv"), p.g_bias = f.param("bg");
    p.o_bias = f.param("bo");
    const std::int64_t b = f.option("batch"), l = f.option("seq_len");
    const Tensor& x = f.tensor("x");
    Tensor y = Tensor::empty(x.shape()), dx = Tensor::empty(x.shape());
    RetentionSaved saved;
    retention_forward(y, &saved, x, b, l, form, nullptr, p);
    retention_backward(dx, f.tensor("dy"), x, saved, b, l, p);
    f.expect_matches(y, dx, 2e-5);
  }
}

TEST(RetNet, FixtureListCoversEveryFile) {
  mf::testing::expect_fixture_list_covers("retnet_", kRetNetFixtures);
}

// A 2-layer retention LM ("token_mixer": "retention") learns a repeating
// pattern (the loss falls), and its cached generation (prefill, then steps)
// equals its full forward: exactly in the recurrent form, and within the eps
// term in the default (auto) form with eps 0.
TEST(RetNet, TinyLmTrainsAndGeneratesLikeTheFullForward) {
  ScopedThreads one(1);
  ModelConfig cfg = mf::testing::tiny_modformer_config(AttentionImpl::Flash);
  cfg.initializer_range = 0.02;
  nlohmann::json j = config_to_json(cfg);
  j["token_mixer"] = "retention";
  j["retention"] = {{"chunk_size", 4}};
  Transformer m(config_from_json(j, "test.json"), 3);
  const auto [tokens, targets] = mf::testing::periodic_lm_batch(4, 24);  // period-5 sequences
  const auto [first, last] = mf::testing::sgd_losses(m, tokens, targets, 40, 0.5f);
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
  // Generation vs the full forward.
  for (const char* form : {"recurrent", "auto"}) {
    SCOPED_TRACE(form);
    nlohmann::json jf = j;
    jf["retention"] = {{"chunk_size", 4}, {"form", form}, {"group_norm_eps", std::string(form) == "auto" ? 0.0 : 1e-6}};
    Transformer g(config_from_json(jf, "test.json"), 3);
    const Tensor tok = mf::testing::random_tokens({2, 13}, 7, cfg.vocab_size);
    mf::testing::expect_generation_equals_full_forward(g, tok, 6, 1e-4f);
  }
}

// The whole-model fixture of tools/fixtures/model.py with retention layers
// (retention, full attention, retention; chunkwise form, biases): logits,
// loss and every parameter gradient vs plain torch in float64.
TEST(RetNet, WholeModelFixtureMatchesTorch) {
  ScopedThreads one(1);
  mf::testing::ModelFixture f = mf::testing::load_model_fixture("model_retention_hybrid");
  EXPECT_EQ(f.model->token_mixer(0).name(), "retention");
  mf::testing::expect_decoder_matches_fixture(f);
  int retention_params = 0;
  for (Parameter* p : f.model->parameters()) retention_params += p->name.find(".retention.") != std::string::npos;
  EXPECT_EQ(retention_params, 2 * 10);  // 5 weights + 5 biases per retention layer
}
