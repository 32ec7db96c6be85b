// Reformer LSH attention (Kitaev et al. 2020, as HF's LSHSelfAttention): fast
// == double reference on awkward shapes (L not a chunk multiple, batch > 1,
// L = 1, padding, several rounds); one chunk over the sequence == exact
// attention with the self-mask; gradients vs finite differences with the hash
// held fixed; PyTorch fixtures (tools/fixtures/reformer.py) with injected
// rotations, including the sorted order; the generation rule vs its plain
// reference; a causal LM that learns and generates; refusals. Whole-model
// fixtures with LSH layers (model_lsh_decoder, model_encoder_lsh) run in
// test_model_fixtures.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "model/config.h"
#include "model/transformer.h"
#include "nn/reformer/lsh_attention.h"
#include "testing/gradcheck.h"
#include "train/adamw.h"
#include "../support/isa_variants.h"
#include "../support/generation.h"
#include "../support/errors.h"
#include "../support/fixtures.h"
#include "../support/mixer_checks.h"
#include "../support/parameters.h"
#include "../support/threads.h"
#include "../support/tiny_models.h"

using namespace mf;
using mf::testing::ScopedThreads;
using mf::testing::close;

namespace {

struct Shape5 {
  std::int64_t batch, seq_len, c, heads, d;
};

// A sublayer with random parameters and N(0, 1) rotations.
struct Layer : mf::testing::OwnedParameters {
  LshAttentionParams p;
  Layer(const Shape5& s, const LshOptions& o, bool bias, std::uint64_t param_seed) {
    seed = param_seed;
    p.num_heads = s.heads, p.head_dim = s.d, p.opt = o;
    const float wc = 1.0f / std::sqrt(static_cast<float>(s.c)), wo = 1.0f / std::sqrt(float(s.heads * s.d));
    p.qk = make("qk", {s.heads * s.d, s.c}, 0.0f, 2.0f * wc);
    p.v = make("v", {s.heads * s.d, s.c}, 0.0f, wc);
    p.o = make("o", {s.c, s.heads * s.d}, 0.0f, wo);
    if (bias) {
      p.qk_bias = make("qk_bias", {s.heads * s.d}, 0.0f, 0.1f);
      p.v_bias = make("v_bias", {s.heads * s.d}, 0.0f, 0.1f);
      p.o_bias = make("o_bias", {s.c}, 0.0f, 0.1f);
    }
    rot = std::make_unique<Parameter>(
        "rot", lsh_draw_rotations(s.heads, s.d, o.n_hashes, o.n_buckets, param_seed + 100), false);
    p.rotations = rot.get();
  }
  std::unique_ptr<Parameter> rot;  // a buffer: not among the trained (owned) parameters
  void zero_grads() {
    for (auto& q : owned) q->grad.fill(0.0f);
  }
};

LshOptions options(std::int64_t rounds, std::int64_t buckets, std::int64_t chunk, bool causal) {
  LshOptions o;
  o.n_hashes = rounds, o.n_buckets = buckets, o.chunk_length = chunk, o.causal = causal;
  return o;
}

struct LayerRun {
  Tensor y, dx;
  std::vector<Tensor> grads;
  Tensor sorted;
};

LayerRun run_fast(Layer& l, const Tensor& x, const Tensor& dy, std::int64_t b, std::int64_t len, const Tensor& mask) {
  l.zero_grads();
  LayerRun r{Tensor::empty(x.shape()), Tensor::empty(x.shape()), {}, {}};
  LshAttentionSaved s;
  lsh_attention_forward(r.y, s, x, b, len, mask, l.p);
  lsh_attention_backward(r.dx, dy, x, s, b, len, mask, l.p);
  for (const Tensor& g : l.grads()) r.grads.push_back(g.clone());
  r.sorted = s.kernel.sorted_pos;
  return r;
}

LayerRun run_reference(Layer& l, const Tensor& x, const Tensor& dy, std::int64_t b, std::int64_t len,
                       const Tensor& mask) {
  l.zero_grads();
  LayerRun r{Tensor::empty(x.shape()), Tensor::empty(x.shape()), {}, {}};
  reference::lsh_attention_forward(r.y, x, b, len, mask, l.p);
  reference::lsh_attention_backward(r.dx, dy, x, b, len, mask, l.p);
  for (const Tensor& g : l.grads()) r.grads.push_back(g.clone());
  return r;
}

}  // namespace

// Fast path == double reference: one and several rounds, causal and not, L not
// a multiple of the chunk, L shorter than a chunk, L = 1, batch > 1, padding.
TEST(LshAttention, FastMatchesReference) {
  struct Case {
    Shape5 s;
    std::int64_t rounds, buckets, chunk;
  };
  const Case cases[] = {
      {{2, 13, 16, 2, 8}, 1, 4, 4},   // one round, 4 chunks (last partial)
      {{2, 20, 12, 3, 8}, 3, 6, 5},   // three rounds, chunk 5
      {{1, 33, 16, 2, 16}, 2, 8, 8},  // D 16, 5 chunks per round
      {{2, 5, 8, 2, 8}, 2, 4, 8},     // shorter than a chunk
      {{3, 1, 8, 2, 8}, 2, 4, 4},     // L = 1
  };
  int runs = 0;
  for (const Case& c : cases)
    for (bool causal : {true, false})
      for (bool padded : {false, true}) {
        SCOPED_TRACE("L=" + std::to_string(c.s.seq_len) + " R=" + std::to_string(c.rounds) +
                     (causal ? " causal" : " bidirectional") + (padded ? " padded" : ""));
        Layer l(c.s, options(c.rounds, c.buckets, c.chunk, causal), padded, 11 + runs);
        const std::int64_t n = c.s.batch * c.s.seq_len;
        const Tensor x = randn({n, c.s.c}, 30 + runs), dy = randn({n, c.s.c}, 60 + runs);
        const Tensor mask = padded && c.s.seq_len > 1 ? mf::testing::tail_and_hole_mask(c.s.batch, c.s.seq_len) : Tensor();
        const LayerRun ref = run_reference(l, x, dy, c.s.batch, c.s.seq_len, mask);
        mf::testing::for_each_isa([&] {
          const LayerRun fast = run_fast(l, x, dy, c.s.batch, c.s.seq_len, mask);
          EXPECT_TRUE(close(fast.y, ref.y, 2e-5, "y"));
          EXPECT_TRUE(close(fast.dx, ref.dx, 2e-5, "dx"));
          for (std::size_t i = 0; i < fast.grads.size(); ++i)
            EXPECT_TRUE(close(fast.grads[i], ref.grads[i], 2e-5, "grad " + l.owned[i]->name));
        });
        ++runs;
      }
}

// One chunk covering the sequence: every round's window holds every position
// (twice), so the output is exact attention over the normalized keys with the
// self-mask (a token sees itself only when nothing else is visible), whatever
// the buckets. Checked through the meter entry point.
TEST(LshAttention, SingleChunkEqualsExactAttentionWithSelfMask) {
  const std::int64_t b = 2, l = 11, h = 2, d = 8;
  const Tensor qk = randn({b * l, h, d}, 1), v = randn({b * l, h, d}, 2);
  const Tensor keys = lsh_normalize_keys(qk);
  for (bool causal : {true, false})
    for (std::int64_t rounds : {1, 3}) {
      SCOPED_TRACE(std::string(causal ? "causal" : "bidirectional") + " rounds " + std::to_string(rounds));
      const Tensor got = lsh_attention(qk, v, b, l, rounds, 8, 77, /*chunk_length=*/16, causal);
      Tensor want = Tensor::zeros(qk.shape());
      for (std::int64_t s = 0; s < b; ++s)
        for (std::int64_t hh = 0; hh < h; ++hh)
          for (std::int64_t i = 0; i < l; ++i) {
            std::vector<double> score(l);
            double mx = -1e300, sum = 0;
            for (std::int64_t j = 0; j < l; ++j) {
              double dot = 0;
              for (std::int64_t e = 0; e < d; ++e) dot += double(qk.at({s * l + i, hh, e})) * keys.at({s * l + j, hh, e});
              score[j] = j == i ? -1e5 : (causal && j > i) ? -1e9 : dot;
              mx = std::max(mx, score[j]);
            }
            for (double& sc : score) sum += sc = std::exp(sc - mx);
            for (std::int64_t e = 0; e < d; ++e) {
              double o = 0;
              for (std::int64_t j = 0; j < l; ++j) o += score[j] / sum * v.at({s * l + j, hh, e});
              want.data<float>()[((s * l + i) * h + hh) * d + e] = static_cast<float>(o);
            }
          }
      EXPECT_TRUE(close(got, want, 1e-5, "out"));
      // Position 0 of a causal sequence sees only itself: its value.
      if (causal) {
        for (std::int64_t e = 0; e < d; ++e) EXPECT_NEAR(got.at({0, 0, e}), v.at({0, 0, e}), 1e-6);
      }
    }
}

// Padding tokens take the extra bucket and are never attended: the outputs of
// the real tokens do not depend on what the padding tokens hold.
TEST(LshAttention, PaddingKeysAreNeverAttended) {
  const Shape5 s{2, 21, 16, 2, 8};
  Layer l(s, options(2, 4, 4, false), true, 2);
  const Tensor mask = mf::testing::tail_and_hole_mask(s.batch, s.seq_len);
  Tensor x = randn({42, 16}, 1);
  Tensor y1 = Tensor::empty(x.shape()), y2 = Tensor::empty(x.shape());
  LshAttentionSaved saved;
  lsh_attention_forward(y1, saved, x, 2, 21, mask, l.p);
  const Tensor junk = randn({42, 16}, 9);
  for (std::int64_t r = 0; r < 42; ++r)
    if (mask.data<std::int32_t>()[r] == 0)
      for (std::int64_t c = 0; c < 16; ++c) x.data<float>()[r * 16 + c] = 10.0f * junk.data<float>()[r * 16 + c];
  lsh_attention_forward(y2, saved, x, 2, 21, mask, l.p);
  for (std::int64_t r = 0; r < 42; ++r) {
    if (mask.data<std::int32_t>()[r] == 0) continue;
    for (std::int64_t c = 0; c < 16; ++c) ASSERT_EQ(y1.data<float>()[r * 16 + c], y2.data<float>()[r * 16 + c]) << r;
  }
  // Negative control: without the mask the junk changes the real tokens.
  lsh_attention_forward(y2, saved, x, 2, 21, Tensor(), l.p);
  EXPECT_GT(max_abs_diff(y1.slice(0, 0, 10), y2.slice(0, 0, 10)), 1e-3f);
}

// A chunk longer than the sequence is one chunk per round, whatever its
// length (no [c, 2c] scratch for chunk_length 65536).
TEST(LshAttention, ChunkLongerThanTheSequence) {
  const Tensor qk = randn({2 * 9, 2, 8}, 3), v = randn({2 * 9, 2, 8}, 4);
  const Tensor a = lsh_attention(qk, v, 2, 9, 2, 4, 5, 9, true);
  const Tensor b = lsh_attention(qk, v, 2, 9, 2, 4, 5, 65536, true);
  EXPECT_LE(max_abs_diff(a, b), 1e-6f);
}

// Several chunks: the output differs from exact attention (the mechanism is
// an approximation), and equals it again once the chunk covers the sequence.
TEST(LshAttention, ChunkingChangesTheOutput) {
  const std::int64_t b = 1, l = 64, h = 2, d = 16;
  const Tensor qk = randn({l, h, d}, 3), v = randn({l, h, d}, 4);
  const Tensor lsh = lsh_attention(qk, v, b, l, 2, 8, 5, 8, true);
  const Tensor exact = lsh_attention(qk, v, b, l, 2, 8, 5, 64, true);
  EXPECT_GT(max_abs_diff(lsh, exact), 1e-2f);
}

// Gradients of x and every parameter vs four-point finite differences of
// sum(y * w); each perturbed forward must keep the sorted order of the base
// (the hash is a constant of the function being differentiated).
TEST(LshAttention, GradientsMatchFiniteDifferences) {
  ScopedThreads one(1);
  const Shape5 s{2, 7, 8, 2, 8};
  for (bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "bidirectional, padded");
    Layer l(s, options(2, 4, 3, causal), true, 5);
    const std::int64_t n = s.batch * s.seq_len;
    Tensor x = randn({n, s.c}, 6);
    const Tensor w = randn({n, s.c}, 7), mask = causal ? Tensor() : mf::testing::tail_and_hole_mask(s.batch, s.seq_len);
    Tensor y = Tensor::empty(x.shape()), dx = Tensor::full(x.shape(), 3.0f);
    LshAttentionSaved saved;
    l.zero_grads();
    lsh_attention_forward(y, saved, x, s.batch, s.seq_len, mask, l.p);
    lsh_attention_backward(dx, w, x, saved, s.batch, s.seq_len, mask, l.p);
    const std::vector<float> base_order = saved.kernel.sorted_pos.to(DType::I64).to(DType::F32).to_vector();
    int reordered = 0;
    auto loss = [&] {
      Tensor yy = Tensor::empty(x.shape());
      LshAttentionSaved ss;
      lsh_attention_forward(yy, ss, x, s.batch, s.seq_len, mask, l.p);
      reordered += ss.kernel.sorted_pos.to(DType::I64).to(DType::F32).to_vector() != base_order;
      return mf::testing::weighted_sum(yy, w);
    };
    std::vector<Tensor> in = l.values(), g = l.grads();
    in.push_back(x);
    g.push_back(dx);
    mf::testing::GradcheckOptions opt;
    opt.step = 3e-3;
    opt.atol = 1e-3;
    opt.rtol = 1e-2;
    const auto r = mf::testing::gradcheck(loss, in, g, opt);
    EXPECT_EQ(reordered, 0) << "a finite-difference step changed the hash: choose other seeds";
    EXPECT_TRUE(r.ok) << r.report;
  }
}

// Equal bits on 1 and 2 threads (forward, backward), at a size whose chunk
// stages run in parallel.
TEST(LshAttention, DeterministicAcrossThreads) {
  const Shape5 s{2, 120, 16, 2, 16};
  Layer l(s, options(2, 8, 16, true), false, 3);
  const Tensor x = randn({240, 16}, 1), dy = randn({240, 16}, 2);
  mf::testing::expect_same_bits_across_threads([&] {
    const LayerRun r = run_fast(l, x, dy, 2, 120, Tensor());
    std::vector<Tensor> all = {r.y, r.dx};
    all.insert(all.end(), r.grads.begin(), r.grads.end());
    return mf::testing::all_values(all);
  });
}

// The generation rule (lsh_attention.h) vs its plain reference: the prompt is
// the causal forward; each later token gets the last row of the causal forward
// over its prefix. With several chunks this is not the full forward over the
// whole sequence; with one chunk over everything it is.
TEST(LshAttention, GenerationFollowsItsRule) {
  const Shape5 s{2, 1, 16, 2, 8};
  const std::int64_t prompt = 6, total = 19;
  for (std::int64_t chunk : {std::int64_t{4}, std::int64_t{32}}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    Layer l(s, options(2, 4, chunk, true), true, 8);
    const Tensor x = randn({s.batch * total, s.c}, 9);  // sequence-major [B, total, C]
    auto rows = [&](std::int64_t from, std::int64_t to) {  // x[:, from:to] as [B*(to-from), C]
      return x.reshape({s.batch, total, s.c}).slice(1, from, to).contiguous().reshape({-1, s.c});
    };
    LshCache cache(s.batch, 32, s.heads, s.d, l.p.opt);
    Tensor y = Tensor::empty({s.batch * prompt, s.c}), want = Tensor::empty({s.batch * prompt, s.c});
    lsh_attention_generate(y, rows(0, prompt), s.batch, prompt, cache, l.p);
    reference::lsh_attention_forward(want, rows(0, prompt), s.batch, prompt, Tensor(), l.p);
    EXPECT_TRUE(close(y, want, 2e-5, "prompt"));
    Tensor full = Tensor::empty({s.batch * total, s.c});
    reference::lsh_attention_forward(full, x, s.batch, total, Tensor(), l.p);
    double worst_vs_full = 0;
    for (std::int64_t t = prompt; t < total; t += 1) {
      // Two tokens in one call at t = 10 (they follow the rule one by one).
      const std::int64_t step = t == 10 ? 2 : 1;
      Tensor ys = Tensor::empty({s.batch * step, s.c});
      lsh_attention_generate(ys, rows(t, t + step), s.batch, step, cache, l.p);
      for (std::int64_t a = 0; a < step; ++a) {
        Tensor rule = Tensor::empty({s.batch, s.c});
        reference::lsh_attention_generate_step(rule, rows(0, t + a + 1), s.batch, t + a, l.p);
        const Tensor got = ys.reshape({s.batch, step, s.c}).select(1, a).contiguous();
        EXPECT_TRUE(close(got, rule, 2e-5, "step " + std::to_string(t + a)));
        const Tensor at_full = full.reshape({s.batch, total, s.c}).select(1, t + a).contiguous();
        worst_vs_full = std::max(worst_vs_full, double(max_abs_diff(got, at_full)));
      }
      t += step - 1;
    }
    EXPECT_EQ(cache.length, total);
    if (chunk >= total)
      EXPECT_LE(worst_vs_full, 1e-5);  // one chunk: the full forward
    else
      EXPECT_GT(worst_vs_full, 1e-3);  // chunks depend on later tokens: the rule, not the full forward
  }
}

// vs the PyTorch rewrite of HF's LSHSelfAttention (float64, rounded once):
// the sorted order, y, dx and every gradient, with injected rotations.
namespace {
const std::vector<std::string> kLshFixtures = {"lsh_one_round_bidirectional", "lsh_two_rounds_causal",
                                               "lsh_three_rounds_causal_odd", "lsh_two_rounds_padded",
                                               "lsh_single_chunk_causal"};

std::int64_t opt(const SafetensorsContents& f, const std::string& name) {
  return f.tensors.at("opt_" + name).to(DType::I64).data<std::int64_t>()[0];
}

// The sorted order [B, H, R, Lp] without its pad slots (positions >= L sort
// last in every round, and a chunk longer than L is cut to L).
std::vector<std::int64_t> real_order(const Tensor& sorted, std::int64_t len) {
  const Tensor s = sorted.to(DType::I64);
  std::vector<std::int64_t> out;
  for (std::int64_t i = 0; i < s.numel(); ++i)
    if (s.data<std::int64_t>()[i] < len) out.push_back(s.data<std::int64_t>()[i]);
  return out;
}
}  // namespace

TEST(LshAttention, MatchesPyTorchFixtures) {
  for (const std::string& name : kLshFixtures) {
    SCOPED_TRACE(name);
    const SafetensorsContents f = mf::testing::load_fixture(name);
    const auto& t = f.tensors;
    std::vector<std::unique_ptr<Parameter>> params;
    auto param = [&](const std::string& key) -> Parameter* {
      if (!t.count(key)) return nullptr;
      params.push_back(std::make_unique<Parameter>(key, t.at(key).contiguous().clone(), key != "rot"));
      return params.back().get();
    };
    LshAttentionParams p;
    p.num_heads = opt(f, "num_heads"), p.head_dim = opt(f, "head_dim");
    p.opt = options(opt(f, "n_hashes"), opt(f, "n_buckets"), opt(f, "chunk_length"), opt(f, "causal") != 0);
    p.qk = param("wqk"), p.v = param("wv"), p.o = param("wo");
    p.qk_bias = param("bqk"), p.v_bias = param("bv"), p.o_bias = param("bo");
    p.rotations = param("rot");
    const std::int64_t b = opt(f, "batch"), l = opt(f, "seq_len");
    const Tensor mask = t.count("mask") ? t.at("mask") : Tensor();
    const Tensor& x = t.at("x");
    Tensor y = Tensor::empty(x.shape()), dx = Tensor::empty(x.shape());
    LshAttentionSaved saved;
    lsh_attention_forward(y, saved, x, b, l, mask, p);
    lsh_attention_backward(dx, t.at("dy"), x, saved, b, l, mask, p);
    EXPECT_EQ(real_order(saved.kernel.sorted_pos, l), real_order(t.at("sorted"), l));
    // float32 through every stage vs exact math: a few 1e-6 of the largest value.
    EXPECT_TRUE(close(y, t.at("y"), 1e-5, "y", 1.0));
    EXPECT_TRUE(close(dx, t.at("dx"), 1e-5, "dx", 1.0));
    for (const auto& q : params) {
      if (q->name == "rot") continue;
      EXPECT_TRUE(close(q->grad, t.at("grad_" + q->name), 1e-5, "grad_" + q->name, 1.0));
    }
  }
}

// Every lsh_* fixture written by tools/fixtures/reformer.py is checked.
TEST(LshAttention, FixtureListCoversEveryFile) {
  mf::testing::expect_fixture_list_covers("lsh_", kLshFixtures);
}

// Each bad input is refused with a message naming the problem.
TEST(LshAttention, RejectsBadInput) {
  using mf::testing::error_of;
  auto expect_error = [](const std::function<void()>& f, const std::string& needle) {
    const std::string e = error_of(f);
    EXPECT_NE(e.find(needle), std::string::npos) << "error: " << e << "\nexpected: " << needle;
  };
  const Shape5 s{1, 8, 16, 2, 8};
  Layer l(s, options(2, 4, 4, true), false, 1);
  const Tensor x = randn({8, 16}, 1), y = Tensor::empty({8, 16});
  LshAttentionSaved saved;
  LshAttentionParams bad = l.p;
  bad.opt.n_buckets = 5;
  expect_error([&] { lsh_attention_forward(y, saved, x, 1, 8, Tensor(), bad); },
               "[lsh_attention] option 'n_buckets' must be even and >= 2");
  bad = l.p;
  bad.opt.n_hashes = 17;
  expect_error([&] { lsh_attention_forward(y, saved, x, 1, 8, Tensor(), bad); },
               "[lsh_attention] option 'n_hashes' must be in [1, 16] but is 17");
  bad = l.p;
  bad.opt.chunk_length = 0;
  expect_error([&] { lsh_attention_forward(y, saved, x, 1, 8, Tensor(), bad); },
               "[lsh_attention] option 'chunk_length' must be >= 1");
  bad = l.p;
  bad.opt.n_buckets = 8;  // the rotations are for 4 buckets
  expect_error([&] { lsh_attention_forward(y, saved, x, 1, 8, Tensor(), bad); },
               "buffer 'rot' must be float32 [H, D, n_hashes, n_buckets/2] = [2, 8, 2, 4] but has shape [2, 8, 2, 2]");
  expect_error([&] { lsh_attention_forward(y, saved, x, 2, 8, Tensor(), l.p); }, "input has 8 rows but batch 2");
  expect_error([&] { lsh_attention_forward(y, saved, x, 1, 8, Tensor::empty({1, 7}, DType::I32), l.p); },
               "key_padding_mask must be a contiguous [B, L] = [1, 8] tensor but has shape [1, 7]");
  Tensor dx = Tensor::empty({8, 16});
  expect_error([&] { lsh_attention_backward(dx, x, x, LshAttentionSaved{}, 1, 8, Tensor(), l.p); },
               "backward called without the saved activations");
  expect_error([&] { lsh_attention(randn({8, 2, 8}, 1), randn({8, 2, 8}, 2), Tensor::zeros({2, 8, 2}), 1, 8, 4, true); },
               "rotations must be [H, D, n_hashes, n_buckets/2] but have shape [2, 8, 2]");
  LshCache cache(1, 10, 2, 8, l.p.opt);
  const Tensor x6 = randn({6, 16}, 3), y6 = Tensor::empty({6, 16});
  lsh_attention_generate(y6, x6, 1, 6, cache, l.p);
  expect_error([&] { lsh_attention_generate(y6, x6, 1, 6, cache, l.p); },
               "generation state is full: 6 positions held + 6 new exceed its capacity 10");
  // Model-level refusals name the mixer.
  nlohmann::json j = {{"model_type", "modformer"}, {"vocab_size", 23}, {"hidden_size", 16},
                      {"intermediate_size", 24},   {"num_hidden_layers", 1}, {"num_attention_heads", 2},
                      {"num_key_value_heads", 2},  {"head_dim", 8},      {"max_position_embeddings", 32},
                      {"position", "learned"},     {"token_mixer", "lsh_attention"}};
  nlohmann::json e = j;
  e["lsh_attention"] = {{"n_buckets", 6}, {"n_hashes", 17}};
  expect_error([&] { Transformer m(config_from_json(e, "t.json"), 1); }, "n_hashes");
  e["lsh_attention"] = {{"n_buckets", 7}};
  expect_error([&] { Transformer m(config_from_json(e, "t.json"), 1); },
               "[lsh_attention] option 'n_buckets' must be even");
  e = j;
  e["num_key_value_heads"] = 1;  // not used by LSH layers (shared QK: one key per head)
  Transformer gqa(config_from_json(e, "t.json"), 1);
  EXPECT_EQ(gqa.find_parameter("model.layers.0.self_attn.qk_proj.weight")->value.shape(), Shape({16, 16}));
  e = j;
  e["position"] = "rope";
  expect_error([&] { Transformer m(config_from_json(e, "t.json"), 1); }, "[lsh_attention] RoPE and ALiBi");
}

// ---- through the model ------------------------------------------------------

namespace {

nlohmann::json lsh_lm_json(std::int64_t chunk) {
  return {{"model_type", "modformer"},
          {"vocab_size", 23},
          {"hidden_size", 32},
          {"intermediate_size", 48},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 2},
          {"num_key_value_heads", 2},
          {"head_dim", 16},
          {"max_position_embeddings", 64},
          {"position", "learned"},
          {"token_mixer", "lsh_attention"},
          {"lsh_attention", {{"n_hashes", 2}, {"n_buckets", 4}, {"chunk_length", chunk}}}};
}

}  // namespace

// A small causal LM with "token_mixer": "lsh_attention" learns a periodic
// sequence (loss falls), the rotations stay fixed (a buffer), and its cached
// generation equals the full forward when one chunk covers the sequence.
TEST(LshAttention, CausalLmTrainsAndGenerates) {
  ScopedThreads two(2);
  Transformer m(config_from_json(lsh_lm_json(8), "lsh.json"), 4);
  const Parameter* rot = m.find_parameter("model.layers.0.self_attn.lsh_rotations");
  ASSERT_NE(rot, nullptr);
  EXPECT_FALSE(rot->trainable);
  const Tensor rot_before = rot->value.clone();
  const std::int64_t b = 2, l = 24;
  Tensor tokens = Tensor::empty({b, l}, DType::I32), targets = Tensor::empty({b, l}, DType::I32);
  for (std::int64_t s = 0; s < b; ++s)
    for (std::int64_t i = 0; i < l; ++i) {
      tokens.data<std::int32_t>()[s * l + i] = static_cast<std::int32_t>((3 * s + i * 5) % 7);
      targets.data<std::int32_t>()[s * l + i] = static_cast<std::int32_t>((3 * s + (i + 1) * 5) % 7);
    }
  AdamW opt(m.parameters(), AdamWConfig{});
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    for (Parameter* p : m.parameters()) p->grad.fill(0.0f);
    const double loss = m.loss(tokens, targets, true);
    if (step == 0) first = loss;
    last = loss;
    opt.step(3e-3);
  }
  EXPECT_LT(last, 0.5 * first) << "loss " << first << " -> " << last;
  EXPECT_EQ(max_abs_diff(rot->value, rot_before), 0.0f);

  // One chunk (64 >= every length): prefill + steps == the full forward.
  Transformer g(config_from_json(lsh_lm_json(64), "lsh.json"), 5);
  const Tensor tok = mf::testing::random_tokens({2, 20}, 7, 23);
  mf::testing::expect_generation_equals_full_forward(g, tok, 7, 1e-4f);
}
