// Mamba (Gu & Dao 2023): the selective scan (fast, chunked) vs its plain
// reference twin and vs a PyTorch rewrite of selective_scan_ref; the scan
// token by token == the whole scan; gradients vs finite differences; the
// whole mixer vs its twin, vs HF's MambaMixer.slow_forward (fixtures) and vs
// finite differences; generation (prefill + steps == full forward), future
// independence, refusals; and a small LM of Mamba layers that trains and
// generates like its full forward.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "core/rng.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/transformer.h"
#include "nn/linear.h"
#include "nn/mamba/mamba.h"
#include "nn/mixer/mixer_registry.h"
#include "testing/gradcheck.h"
#include "train/data.h"
#include "train/trainer.h"
#include "../support/isa_variants.h"
#include "../support/close.h"
#include "../support/errors.h"
#include "../support/fixtures.h"
#include "../support/generation.h"
#include "../support/parameters.h"
#include "../support/threads.h"
#include "../support/tiny_models.h"
#include "../support/train_runs.h"

using namespace mf;
using mf::testing::close;
using mf::testing::error_of;
using mf::testing::ScopedThreads;

namespace {

// ---- the scan ------------------------------------------------------------------

struct ScanCase {
  std::int64_t batch, len, dim, n;
};

// Random scan inputs; B and C are column slices of one wider matrix (strided
// rows, as the mixer hands them over).
struct ScanData {
  Tensor bc_store, u, delta, a_log, d;
  SelectiveScanInputs in;
  ScanData(const ScanCase& s, std::uint64_t seed) {
    const std::int64_t rows = s.batch * s.len;
    u = randn({rows, s.dim}, seed, 0);
    delta = randn({rows, s.dim}, seed, 1);
    for (float& v : std::span(delta.data<float>(), delta.numel())) v = std::log1p(std::exp(v - 1.0f));
    a_log = randn({s.dim, s.n}, seed, 2);
    for (float& v : std::span(a_log.data<float>(), a_log.numel())) v *= 0.5f;
    d = randn({s.dim}, seed, 3);
    bc_store = randn({rows, 3 + 2 * s.n}, seed, 4);
    in = {u, delta, a_log, bc_store.slice(1, 3, 3 + s.n), bc_store.slice(1, 3 + s.n, 3 + 2 * s.n), d};
  }
};

struct ScanRun {
  Tensor y, state, du, ddelta, db, dc, da_log, dd;
};

ScanRun new_run(const ScanCase& s) {
  const std::int64_t rows = s.batch * s.len;
  return {Tensor::empty({rows, s.dim}),   Tensor::zeros({s.batch, s.dim, s.n}), Tensor::empty({rows, s.dim}),
          Tensor::empty({rows, s.dim}),   Tensor::empty({rows, s.n}),            Tensor::empty({rows, s.n}),
          Tensor::zeros({s.dim, s.n}),    Tensor::zeros({s.dim})};
}

SelectiveScanGrads grads_of(const ScanRun& r) { return {r.du, r.ddelta, r.db, r.dc, r.da_log, r.dd}; }

ScanRun scan_fast(const ScanCase& s, const SelectiveScanInputs& in, const Tensor& dy, std::int64_t chunk) {
  ScanRun r = new_run(s);
  const Tensor states = Tensor::empty({s.batch, selective_scan_chunks(s.len, chunk), s.dim, s.n});
  selective_scan_forward(r.y, states, in, s.batch, chunk, r.state);
  selective_scan_backward(grads_of(r), dy, in, states, s.batch, chunk);
  return r;
}

ScanRun scan_reference(const ScanCase& s, const SelectiveScanInputs& in, const Tensor& dy) {
  ScanRun r = new_run(s);
  reference::selective_scan_forward(r.y, in, s.batch, r.state);
  reference::selective_scan_backward(grads_of(r), dy, in, s.batch);
  return r;
}

void expect_runs_close(const ScanRun& a, const ScanRun& b, double tol) {
  EXPECT_TRUE(close(a.y, b.y, tol, "y"));
  EXPECT_TRUE(close(a.state, b.state, tol, "final state"));
  EXPECT_TRUE(close(a.du, b.du, tol, "du"));
  EXPECT_TRUE(close(a.ddelta, b.ddelta, tol, "ddelta"));
  EXPECT_TRUE(close(a.db, b.db, tol, "dB"));
  EXPECT_TRUE(close(a.dc, b.dc, tol, "dC"));
  EXPECT_TRUE(close(a.da_log, b.da_log, tol, "dA_log"));
  EXPECT_TRUE(close(a.dd, b.dd, tol, "dD"));
}

// ---- the mixer -------------------------------------------------------------------

struct MixerShape {
  std::int64_t c, expand, n, k, r;
  bool bias, conv_bias;
};

// A mixer with random parameters everywhere (so every gradient is exercised).
struct Layer : mf::testing::OwnedParameters {
  MambaParams p;
  Layer(const MixerShape& s, std::int64_t chunk, std::uint64_t param_seed) {
    seed = param_seed;
    const std::int64_t di = s.expand * s.c;
    p.hidden = s.c, p.inner = di, p.state_size = s.n, p.conv_kernel = s.k, p.dt_rank = s.r, p.chunk_len = chunk;
    auto inv_sqrt = [](std::int64_t v) { return 1.0f / std::sqrt(static_cast<float>(v)); };
    p.in_proj = make("mixer.in_proj.weight", {2 * di, s.c}, 0.0f, inv_sqrt(s.c));
    if (s.bias) p.in_proj_bias = make("mixer.in_proj.bias", {2 * di}, 0.0f, 0.2f);
    p.conv_weight = make("mixer.conv1d.weight", {di, 1, s.k}, 0.0f, inv_sqrt(s.k));
    if (s.conv_bias) p.conv_bias = make("mixer.conv1d.bias", {di}, 0.0f, 0.2f);
    p.x_proj = make("mixer.x_proj.weight", {s.r + 2 * s.n, di}, 0.0f, inv_sqrt(di));
    p.dt_proj = make("mixer.dt_proj.weight", {di, s.r}, 0.0f, inv_sqrt(s.r));
    p.dt_bias = make("mixer.dt_proj.bias", {di}, -1.0f, 0.5f);
    p.a_log = make("mixer.A_log", {di, s.n}, 0.0f, 0.3f);
    p.d_skip = make("mixer.D", {di}, 1.0f, 0.2f);
    p.out_proj = make("mixer.out_proj.weight", {s.c, di}, 0.0f, inv_sqrt(di));
    if (s.bias) p.out_proj_bias = make("mixer.out_proj.bias", {s.c}, 0.0f, 0.2f);
  }
  void zero_grads() {
    for (auto& q : owned) q->grad.fill(0.0f);
  }
};

struct LayerRun {
  Tensor y, dx;
  std::vector<Tensor> grads;
};

LayerRun run_fast(Layer& l, const Tensor& x, const Tensor& dy, std::int64_t b, std::int64_t len) {
  l.zero_grads();
  LayerRun r{Tensor::empty(dy.shape()), Tensor::empty(x.shape()), {}};
  MambaSaved s;
  mamba_forward(r.y, &s, x, b, len, l.p, nullptr);
  mamba_backward(r.dx, dy, x, s, b, len, l.p);
  for (const Tensor& g : l.grads()) r.grads.push_back(g.clone());
  return r;
}

LayerRun run_reference(Layer& l, const Tensor& x, const Tensor& dy, std::int64_t b, std::int64_t len) {
  l.zero_grads();
  LayerRun r{Tensor::empty(dy.shape()), Tensor::empty(x.shape()), {}};
  reference::mamba_forward(r.y, x, b, len, l.p, nullptr);
  reference::mamba_backward(r.dx, dy, x, b, len, l.p);
  for (const Tensor& g : l.grads()) r.grads.push_back(g.clone());
  return r;
}

Tensor forward_only(const Layer& l, const Tensor& x, std::int64_t b, std::int64_t len, MambaCache* cache) {
  Tensor y = Tensor::empty({b * len, l.p.hidden});
  mamba_forward(y, nullptr, x, b, len, l.p, cache);
  return y;
}

// Rows [t0, t1) of every sequence of a [B*L, C] tensor, as [B*(t1-t0), C].
Tensor time_slice(const Tensor& t, std::int64_t batch, std::int64_t t0, std::int64_t t1) {
  return t.contiguous().reshape({batch, -1, t.size(1)}).slice(1, t0, t1).contiguous().reshape({-1, t.size(1)});
}

std::int64_t opt(const SafetensorsContents& f, const std::string& name) { return mf::testing::fixture_option(f, name); }

const std::vector<std::string> kMambaFixtures = {
    "mamba_scan_batch2",           "mamba_scan_odd_state",          "mamba_scan_one_step",
    "mamba_mixer_defaults",        "mamba_mixer_bias_k3_big_dt",    "mamba_mixer_no_conv_bias_short",
};

}  // namespace

// Fast scan == double reference on awkward shapes: L = 1, L not a multiple of
// the chunk, chunk 1 and chunk > L, N not a multiple of the SIMD width,
// channels spanning more than one task group, batch > 1, strided B and C.
TEST(MambaScan, FastMatchesReference) {
  const ScanCase cases[] = {{1, 1, 3, 16}, {2, 37, 5, 16}, {3, 20, 70, 5}, {1, 45, 130, 20}};
  int i = 0;
  for (const ScanCase& s : cases)
    for (std::int64_t chunk : {1, 7, 64}) {
      SCOPED_TRACE("B=" + std::to_string(s.batch) + " L=" + std::to_string(s.len) + " D=" + std::to_string(s.dim) +
                   " N=" + std::to_string(s.n) + " chunk=" + std::to_string(chunk));
      const ScanData data(s, 10 + i);
      const Tensor dy = randn({s.batch * s.len, s.dim}, 50 + i++);
      const ScanRun ref = scan_reference(s, data.in, dy);
      mf::testing::for_each_isa([&] { expect_runs_close(scan_fast(s, data.in, dy, chunk), ref, 2e-5); });
    }
}

// The scan one token at a time, carrying the state, gives the bits of the
// whole scan, and the same final state; a split in two calls likewise.
TEST(MambaScan, StepsEqualTheFullScan) {
  const ScanCase s{2, 19, 70, 16};
  const ScanData data(s, 3);
  Tensor y = Tensor::empty({s.batch * s.len, s.dim}), state = Tensor::zeros({s.batch, s.dim, s.n});
  selective_scan_forward(y, Tensor(), data.in, s.batch, 8, state);
  Tensor step_state = Tensor::zeros({s.batch, s.dim, s.n});
  for (std::int64_t t = 0; t < s.len; ++t) {
    auto rows = [&](const Tensor& v) { return time_slice(v, s.batch, t, t + 1); };
    const SelectiveScanInputs step{rows(data.in.u), rows(data.in.delta), data.in.a_log, rows(data.in.b),
                                   rows(data.in.c), data.in.d};
    Tensor y_step = Tensor::empty({s.batch, s.dim});
    selective_scan_forward(y_step, Tensor(), step, s.batch, 8, step_state);
    EXPECT_EQ(y_step.to_vector(), rows(y).to_vector()) << "step " << t;
  }
  EXPECT_EQ(step_state.to_vector(), state.to_vector());
}

// Gradients of u, Delta, A_log, B, C, D vs four-point finite differences.
TEST(MambaScan, GradientsMatchFiniteDifferences) {
  ScopedThreads one(1);
  const ScanCase s{2, 9, 3, 5};
  ScanData data(s, 7);
  data.bc_store = data.bc_store.contiguous();
  Tensor b = data.in.b.contiguous(), c = data.in.c.contiguous();
  data.in.b = b, data.in.c = c;
  const Tensor w = randn({s.batch * s.len, s.dim}, 8);
  auto loss = [&] {
    Tensor y = Tensor::empty(w.shape());
    selective_scan_forward(y, Tensor(), data.in, s.batch, 4, Tensor());
    return mf::testing::weighted_sum(y, w);
  };
  ScanRun r = scan_fast(s, data.in, w, 4);
  mf::testing::GradcheckOptions o;
  o.atol = 5e-4;
  o.rtol = 5e-3;
  const auto res = mf::testing::gradcheck(loss, {data.in.u, data.in.delta, data.in.a_log, b, c, data.in.d},
                                          {r.du, r.ddelta, r.da_log, r.db, r.dc, r.dd}, o);
  EXPECT_TRUE(res.ok) << res.report;
}

// vs the PyTorch rewrite of selective_scan_ref (float64 math rounded once).
TEST(MambaScan, MatchesPyTorchFixtures) {
  for (const std::string name : {"mamba_scan_batch2", "mamba_scan_odd_state", "mamba_scan_one_step"}) {
    SCOPED_TRACE(name);
    const SafetensorsContents f = mf::testing::load_fixture(name);
    const auto& t = f.tensors;
    const std::int64_t batch = opt(f, "batch"), rows = t.at("u").size(0), dim = t.at("u").size(1),
                       n = t.at("a_log").size(1);
    const ScanCase s{batch, rows / batch, dim, n};
    const SelectiveScanInputs in{t.at("u"), t.at("delta"), t.at("a_log"), t.at("b"), t.at("c"), t.at("d")};
    const ScanRun r = scan_fast(s, in, t.at("dy"), 4);
    EXPECT_TRUE(close(r.y, t.at("y"), 1e-5, "y", 1.0));
    EXPECT_TRUE(close(r.state, t.at("last_state"), 1e-5, "last_state", 1.0));
    for (const auto& [got, key] : {std::pair{r.du, "u"}, {r.ddelta, "delta"}, {r.da_log, "a_log"}, {r.db, "b"},
                                   {r.dc, "c"}, {r.dd, "d"}})
      EXPECT_TRUE(close(got, t.at(std::string("grad_") + key), 1e-5, std::string("grad_") + key, 1.0));
  }
}

namespace {
// The fast mixer of every instruction set against the reference run; returns
// the fast runs (one per supported variant).
std::vector<LayerRun> expect_fast_matches(Layer& l, const Tensor& x, const Tensor& dy, std::int64_t b,
                                          std::int64_t len, const LayerRun& ref) {
  std::vector<LayerRun> runs;
  mf::testing::for_each_isa([&] {
    runs.push_back(run_fast(l, x, dy, b, len));
    const LayerRun& fast = runs.back();
    EXPECT_TRUE(close(fast.y, ref.y, 2e-5, "y"));
    EXPECT_TRUE(close(fast.dx, ref.dx, 2e-5, "dx"));
    for (std::size_t g = 0; g < fast.grads.size(); ++g)
      EXPECT_TRUE(close(fast.grads[g], ref.grads[g], 2e-5, "grad " + l.owned[g]->name));
  });
  return runs;
}
}  // namespace

// Fast mixer == double reference: batch 2, L = 1, L not a multiple of the
// chunk, biases on and off, conv kernels 1 and 4, the auto dt rank.
TEST(Mamba, FastMatchesReference) {
  const MixerShape shapes[] = {{16, 2, 16, 4, 1, false, true}, {12, 3, 5, 1, 3, true, false},
                               {24, 3, 8, 3, 2, true, true}};
  int i = 0;
  for (const MixerShape& s : shapes)
    for (std::int64_t len : {1, 13, 70}) {
      SCOPED_TRACE("C=" + std::to_string(s.c) + " L=" + std::to_string(len) + " K=" + std::to_string(s.k));
      Layer l(s, 8, 20 + i);
      const std::int64_t b = 2;
      const Tensor x = randn({b * len, s.c}, 40 + i), dy = randn({b * len, s.c}, 60 + i);
      ++i;
      expect_fast_matches(l, x, dy, b, len, run_reference(l, x, dy, b, len));
    }
}

// Delta = softplus(pre) over its whole range: tiny (pre -30: Delta ~ 1e-13,
// kept to its relative precision), moderate, and past torch's threshold of 20
// (Delta = pre, gradient 1): fast == double reference.
TEST(Mamba, SoftplusAcrossItsRange) {
  const MixerShape s{16, 2, 4, 4, 1, false, true};
  Layer l(s, 8, 31);
  float* bias = l.p.dt_bias->value.data<float>();
  for (std::int64_t d = 0; d < l.p.inner; ++d) bias[d] = -30.0f + 60.0f * static_cast<float>(d) / (l.p.inner - 1);
  const std::int64_t b = 2, len = 9;
  const Tensor x = randn({b * len, s.c}, 32), dy = randn({b * len, s.c}, 33);
  const LayerRun ref = run_reference(l, x, dy, b, len);
  for (const LayerRun& fast : expect_fast_matches(l, x, dy, b, len, ref)) {
    // Element-wise: the smallest Delta's channel keeps its gradient to the bias.
    const auto got = fast.grads[5].to_vector(), want = ref.grads[5].to_vector();  // mixer.dt_proj.bias
    ASSERT_EQ(l.owned[5]->name, "mixer.dt_proj.bias");
    for (std::size_t d = 0; d < got.size(); ++d)
      EXPECT_NEAR(got[d], want[d], 1e-4 * std::fabs(want[d]) + 1e-30) << "channel " << d;
  }
}

// Gradients of x and every parameter vs four-point finite differences.
TEST(Mamba, GradientsMatchFiniteDifferences) {
  ScopedThreads one(1);
  Layer l({8, 2, 4, 3, 2, true, true}, 4, 5);
  const std::int64_t b = 2, len = 7;
  Tensor x = randn({b * len, 8}, 6);
  const Tensor w = randn({b * len, 8}, 7);
  auto loss = [&] { return mf::testing::weighted_sum(forward_only(l, x, b, len, nullptr), w); };
  const LayerRun r = run_fast(l, x, w, b, len);
  for (std::size_t i = 0; i < l.owned.size(); ++i) l.owned[i]->grad.copy_from(r.grads[i]);
  std::vector<Tensor> in = l.values(), g = l.grads();
  in.push_back(x);
  g.push_back(r.dx);
  mf::testing::GradcheckOptions o;
  o.atol = 5e-4;
  o.rtol = 5e-3;
  const auto res = mf::testing::gradcheck(loss, in, g, o);
  EXPECT_TRUE(res.ok) << res.report;
}

// vs HF's MambaMixer.slow_forward rewritten in PyTorch: y, dx, every gradient.
TEST(Mamba, MatchesPyTorchFixtures) {
  for (const std::string name : {"mamba_mixer_defaults", "mamba_mixer_bias_k3_big_dt", "mamba_mixer_no_conv_bias_short"}) {
    SCOPED_TRACE(name);
    mf::testing::FixtureModule f(name);
    const auto& t = f.file.tensors;
    auto param = [&](const std::string& key) { return f.param(key); };
    auto opt = [&](const mf::testing::FixtureModule& m, const std::string& n) { return m.option(n); };
    MambaParams p;
    const Tensor& x = t.at("x");
    p.hidden = x.size(1), p.inner = opt(f, "expand") * p.hidden, p.state_size = opt(f, "state_size");
    p.conv_kernel = opt(f, "conv_kernel"), p.dt_rank = opt(f, "time_step_rank"), p.chunk_len = 5;
    p.in_proj = param("mixer.in_proj.weight"), p.in_proj_bias = param("mixer.in_proj.bias");
    p.conv_weight = param("mixer.conv1d.weight"), p.conv_bias = param("mixer.conv1d.bias");
    p.x_proj = param("mixer.x_proj.weight"), p.dt_proj = param("mixer.dt_proj.weight");
    p.dt_bias = param("mixer.dt_proj.bias"), p.a_log = param("mixer.A_log"), p.d_skip = param("mixer.D");
    p.out_proj = param("mixer.out_proj.weight"), p.out_proj_bias = param("mixer.out_proj.bias");
    const std::int64_t b = opt(f, "batch"), len = opt(f, "seq_len");
    Tensor y = Tensor::empty(x.shape()), dx = Tensor::empty(x.shape());
    MambaSaved saved;
    mamba_forward(y, &saved, x, b, len, p, nullptr);
    mamba_backward(dx, t.at("dy"), x, saved, b, len, p);
    f.expect_matches(y, dx, 1e-5);
  }
}

// Every mamba_* fixture written by tools/fixtures/mamba.py is checked.
TEST(Mamba, FixtureListCoversEveryFile) {
  mf::testing::expect_fixture_list_covers("mamba_", kMambaFixtures);
}

// A sequence split into calls that carry (conv state, SSM state) equals the
// full pass: a prefill of 5, a call of 3 (shorter than the conv kernel's
// reach back), then single steps; the reference twin's cache likewise.
TEST(Mamba, SplitWithCarriedStateEqualsFullPass) {
  const MixerShape s{16, 2, 16, 4, 1, true, true};
  Layer l(s, 4, 9);
  const std::int64_t b = 2, len = 17;
  const Tensor x = randn({b * len, s.c}, 10);
  const Tensor full = forward_only(l, x, b, len, nullptr);
  MambaCache cache = mamba_new_cache(l.p, b), ref_cache = mamba_new_cache(l.p, b);
  std::vector<std::int64_t> cuts = {0, 5, 8};
  for (std::int64_t t = 9; t <= len; ++t) cuts.push_back(t);
  for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
    const std::int64_t t0 = cuts[i], t1 = cuts[i + 1];
    const Tensor part = time_slice(x, b, t0, t1);
    const Tensor y = forward_only(l, part, b, t1 - t0, &cache);
    EXPECT_TRUE(close(y, time_slice(full, b, t0, t1), 1e-5, "rows " + std::to_string(t0) + ".." + std::to_string(t1)));
    Tensor y_ref = Tensor::empty(y.shape());
    reference::mamba_forward(y_ref, part, b, t1 - t0, l.p, &ref_cache);
    EXPECT_TRUE(close(y, y_ref, 2e-5, "reference with cache"));
  }
  EXPECT_TRUE(close(cache.conv, ref_cache.conv, 1e-6, "conv state"));
  EXPECT_TRUE(close(cache.ssm, ref_cache.ssm, 2e-5, "ssm state"));
  // The conv state holds the last K inputs x (in_proj's first Di outputs).
  const Tensor xz = linear_forward(time_slice(x, b, len - 4, len), l.p.in_proj->value, l.p.in_proj_bias->value);
  EXPECT_TRUE(close(cache.conv.select(0, 1).transpose(0, 1).contiguous(),
                    xz.slice(0, 4, 8).slice(1, 0, l.p.inner).contiguous(), 1e-6, "conv state = last inputs"));
}

// Changing x_t leaves every output before t bit-identical (and changes t).
TEST(Mamba, OutputsBeforeAChangeAreBitIdentical) {
  const MixerShape s{16, 2, 16, 4, 1, false, true};
  Layer l(s, 8, 4);
  const std::int64_t b = 2, len = 30, t = 17;
  Tensor x = randn({b * len, s.c}, 5);
  const Tensor before = forward_only(l, x, b, len, nullptr);
  for (std::int64_t c = 0; c < s.c; ++c) x.data<float>()[(len + t) * s.c + c] += 1.0f;  // sequence 1, position t
  const Tensor after = forward_only(l, x, b, len, nullptr);
  const auto p = before.to_vector(), q = after.to_vector();
  for (std::int64_t r = 0; r < b * len; ++r) {
    const bool may_change = r >= len + t;
    bool same = true;
    for (std::int64_t c = 0; c < s.c; ++c) same = same && p[r * s.c + c] == q[r * s.c + c];
    if (may_change)
      EXPECT_FALSE(same) << "row " << r << " should change";  // position t and, through the state, every later one
    else
      EXPECT_TRUE(same) << "row " << r << " changed";
  }
}

// Saved state = what the backward reads (chunk states [B, ceil(L/T), Di, N],
// never [B, L, Di, N]). The scan gives the same bits on 1 and 2 threads; the
// whole mixer the same bits on repeated runs (across thread counts its GEMMs
// may differ: OpenBLAS sums some small products in another order when it
// runs single-threaded).
TEST(Mamba, SavedStateAndDeterminism) {
  const MixerShape s{32, 3, 16, 4, 2, false, true};  // Di = 96: two channel groups
  Layer l(s, 16, 3);
  const std::int64_t b = 2, len = 50;
  const Tensor x = randn({b * len, s.c}, 1), dy = randn({b * len, s.c}, 2);
  MambaSaved saved;
  Tensor y = Tensor::empty(x.shape());
  mamba_forward(y, &saved, x, b, len, l.p, nullptr);
  EXPECT_EQ(saved.chunk_states.shape(), Shape({2, 4, 96, 16}));
  EXPECT_EQ(saved.tensors().size(), 8u);
  std::size_t bytes = 0;
  for (const Tensor* t : saved.tensors()) bytes += t->nbytes();
  EXPECT_EQ(saved.bytes(), bytes);
  auto flat = [](const std::vector<Tensor>& ts) {
    std::vector<float> all;
    for (const Tensor& t : ts) {
      const auto v = t.to_vector();
      all.insert(all.end(), v.begin(), v.end());
    }
    return all;
  };
  const ScanCase sc{2, 50, 96, 16};
  const ScanData data(sc, 4);
  const Tensor dys = randn({100, 96}, 5);
  mf::testing::expect_same_bits_across_threads([&] {
    const ScanRun r = scan_fast(sc, data.in, dys, 16);
    return flat({r.y, r.state, r.du, r.ddelta, r.db, r.dc, r.da_log, r.dd});
  });
  ScopedThreads two(2);
  auto mixer_bits = [&] {
    const LayerRun r = run_fast(l, x, dy, b, len);
    std::vector<Tensor> all = {r.y, r.dx};
    all.insert(all.end(), r.grads.begin(), r.grads.end());
    return flat(all);
  };
  EXPECT_EQ(mixer_bits(), mixer_bits());
}

// Each bad input is refused with a message naming the problem and the mixer.
TEST(Mamba, RejectsBadInput) {
  const MixerShape s{8, 2, 4, 3, 1, false, true};
  Layer l(s, 4, 1);
  const Tensor x = randn({6, 8}, 1), y = Tensor::empty({6, 8});
  auto expect = [](const std::function<void()>& f, const std::string& needle) {
    const std::string e = error_of(f);
    EXPECT_NE(e.find(needle), std::string::npos) << "error: " << e << "\nexpected: " << needle;
  };
  expect([&] { mamba_forward(y, nullptr, x, 2, 4, l.p, nullptr); }, "[mamba] input has 6 rows but batch 2 x seq_len 4");
  expect([&] { mamba_forward(y, nullptr, randn({6, 9}, 1), 1, 6, l.p, nullptr); },
         "[mamba] input has 9 features but hidden_size is 8");
  MambaParams bad = l.p;
  Parameter wrong("layers.0.mixer.A_log", Tensor::zeros({16, 5}), false);
  bad.a_log = &wrong;
  expect([&] { mamba_forward(y, nullptr, x, 1, 6, bad, nullptr); },
         "[mamba] parameter A_log ('layers.0.mixer.A_log') must be a contiguous float32 tensor of shape [16, 4]");
  bad = l.p;
  bad.dt_bias = nullptr;
  expect([&] { mamba_forward(y, nullptr, x, 1, 6, bad, nullptr); }, "[mamba] missing parameter dt_proj.bias");
  MambaCache other = mamba_new_cache(l.p, 3);
  expect([&] { mamba_forward(y, nullptr, x, 1, 6, l.p, &other); }, "[mamba] generation conv state must be [B, Di, K]");
  MambaSaved saved;
  MambaCache one = mamba_new_cache(l.p, 1);
  expect([&] { mamba_forward(y, &saved, x, 1, 6, l.p, &one); }, "[mamba] a forward that continues a generation state is inference only");
  Tensor dx = Tensor::empty({6, 8});
  expect([&] { mamba_backward(dx, x, x, MambaSaved{}, 1, 6, l.p); }, "[mamba] backward called without the saved");
  // Through the registry: options and calls the mixer cannot serve.
  const TokenMixerEntry& e = token_mixer_entry("mamba", "");
  MixerContext ctx;
  ctx.hidden_size = 8;
  ctx.options = parse_options(e.options, {{"time_step_min", 0.5}, {"time_step_max", 0.1}}, "", "mamba");
  mf::testing::OwnedParameters owner;
  mf::testing::RandomParamStore store(owner, 0.3f);
  expect([&] { e.make(ctx, store); }, "[mamba] option 'time_step_min' (0.5) exceeds 'time_step_max' (0.1)");
  expect([&] { parse_options(e.options, {{"state_size", 0}}, "", "mamba"); }, "mamba.state_size");
  ctx.options = parse_options(e.options, nlohmann::json(), "", "mamba");
  auto mixer = e.make(ctx, store);
  MixerCall call;
  call.batch = 1, call.seq_len = 6;
  call.causal = false;
  expect([&] { mixer->forward(y, x, call, false); }, "[mamba] cannot run bidirectionally");
  call.causal = true;
  call.key_padding_mask = Tensor::zeros({1, 6}, DType::I32);
  expect([&] { mixer->forward(y, x, call, false); }, "[mamba] does not support a key padding mask");
}

// The registry entry: checkpoint names and shapes as HF's MambaMixer, the
// reference initialization, no weight decay on A_log, D and biases.
TEST(Mamba, CheckpointNamesAndInitialization) {
  const TokenMixerEntry& e = token_mixer_entry("mamba", "");
  MixerContext ctx;
  ctx.hidden_size = 40;  // dt rank auto: ceil(40 / 16) = 3
  ctx.options = parse_options(e.options, {{"use_bias", true}}, "", "mamba");
  ParamList store(7, 0.02);
  e.make(ctx, store);
  std::vector<std::pair<std::string, Shape>> got;
  for (const auto& q : store.all()) got.emplace_back(q->name, q->value.shape());
  const std::vector<std::pair<std::string, Shape>> want = {
      {"mixer.in_proj.weight", {160, 40}}, {"mixer.in_proj.bias", {160}},     {"mixer.conv1d.weight", {80, 1, 4}},
      {"mixer.conv1d.bias", {80}},         {"mixer.x_proj.weight", {35, 80}}, {"mixer.dt_proj.weight", {80, 3}},
      {"mixer.dt_proj.bias", {80}},        {"mixer.A_log", {80, 16}},         {"mixer.D", {80}},
      {"mixer.out_proj.weight", {40, 80}}, {"mixer.out_proj.bias", {40}}};
  EXPECT_EQ(got, want);
  const Parameter* a_log = store.find("mixer.A_log");
  EXPECT_FLOAT_EQ(a_log->value.at({5, 0}), 0.0f);
  EXPECT_FLOAT_EQ(a_log->value.at({5, 15}), std::log(16.0f));
  EXPECT_FALSE(a_log->weight_decay);
  EXPECT_FALSE(store.find("mixer.D")->weight_decay);
  EXPECT_EQ(store.find("mixer.D")->value.to_vector(), std::vector<float>(80, 1.0f));
  for (float v : store.find("mixer.dt_proj.weight")->value.to_vector()) EXPECT_LE(std::fabs(v), 1.0f / std::sqrt(3.0f));
  for (float b : store.find("mixer.dt_proj.bias")->value.to_vector()) {
    const double dt = std::log1p(std::exp(double(b)));  // softplus(bias) is the initial Delta
    EXPECT_GE(dt, 0.001 * 0.999);
    EXPECT_LE(dt, 0.1 * 1.001);
  }
}

// A small LM of Mamba layers learns (validation loss falls), its cached
// generation (prefill + single steps) equals the full forward, and the
// whole-model fixture (a Mamba layer then an attention layer) matches torch.
TEST(MambaModel, TrainsAndGeneratesLikeTheFullForward) {
  ScopedThreads one(1);
  ModelConfig cfg = config_from_json({{"model_type", "modformer"}, {"vocab_size", 256}, {"hidden_size", 32},
                                      {"intermediate_size", 48}, {"num_hidden_layers", 2},
                                      {"num_attention_heads", 2}, {"num_key_value_heads", 2}, {"head_dim", 16},
                                      {"max_position_embeddings", 64}, {"token_mixer", "mamba"},
                                      {"mamba", {{"state_size", 8}, {"chunk_len", 16}}}},
                                     "mamba.json");
  Transformer m(cfg, 11);
  std::string text;
  for (int i = 0; i < 300; ++i) text += "the cat sat on the mat. ";
  const TextCorpus corpus = TextCorpus::from_text(text, 0.05, "cats");
  const std::string dir = (std::filesystem::temp_directory_path() / ("mf_mamba_" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(dir);
  const double before = evaluate(m, corpus, 32, 4, 4).loss;
  TrainConfig tc = mf::testing::small_train_config(dir);
  tc.steps = 30;
  tc.val_fraction = 0.05;
  tc.lr = 1e-2;
  tc.min_lr = 1e-3;
  tc.eval_interval = 0;
  tc.checkpoint_interval = 0;
  const TrainResult r = train(m, corpus, tc);
  EXPECT_LT(r.val.loss, 0.6 * before) << "validation loss " << before << " -> " << r.val.loss;
  std::filesystem::remove_all(dir);

  const auto state =
      mf::testing::expect_generation_equals_full_forward(m, mf::testing::random_tokens({2, 20}, 7, 256), 7, 1e-4f);
  // Two layers x (conv [2, 64, 4] + SSM [2, 64, 8]) floats: independent of the context length.
  EXPECT_EQ(state->bytes(), 2 * (2 * 64 * 4 + 2 * 64 * 8) * 4);
}

TEST(MambaModel, HybridMatchesTorchFixture) {
  ScopedThreads one(1);
  const SafetensorsContents st = mf::testing::load_fixture("model_mamba_hybrid");
  std::string text;
  const Tensor cj = st.tensors.at("config_json");
  for (std::int64_t i = 0; i < cj.numel(); ++i) text += static_cast<char>(cj.data<std::int32_t>()[i]);
  Transformer m(config_from_string(text, "model_mamba_hybrid"), 1);
  std::map<std::string, Tensor> weights;
  for (const auto& [k, t] : st.tensors)
    if (k.rfind("w:", 0) == 0) weights[k.substr(2)] = t;
  load_weights(m, weights, "model_mamba_hybrid");
  ASSERT_NE(m.find_parameter("model.layers.0.mixer.A_log"), nullptr);  // layer 0 is the Mamba layer
  ASSERT_NE(m.find_parameter("model.layers.1.self_attn.q_proj.weight"), nullptr);
  EXPECT_EQ(m.parameters().size(), weights.size());
  const Tensor& want = st.tensors.at("logits");
  float scale = 0;
  for (float v : want.to_vector()) scale = std::max(scale, std::fabs(v));
  EXPECT_LE(max_abs_diff(m.logits(st.tensors.at("tokens")), want), 1e-4f * scale);
  for (Parameter* p : m.parameters()) p->grad.fill(0.0f);
  const double loss = m.loss(st.tensors.at("tokens"), st.tensors.at("targets"), true);
  const double want_loss = st.tensors.at("loss").to_vector()[0];
  EXPECT_NEAR(loss, want_loss, 1e-4 * want_loss);
  for (Parameter* p : m.parameters()) {
    const Tensor& g = st.tensors.at("g:" + p->name);
    float gs = 0;
    for (float v : g.to_vector()) gs = std::max(gs, std::fabs(v));
    EXPECT_LE(max_abs_diff(p->grad, g), 1e-4f * gs + 1e-7f) << p->name;
  }
}
