// Whole-model tests: finite differences through every parameter kind,
// determinism, gradient checkpointing (same gradients, less memory), chunked
// FFN, logits vs loss, and input validation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/alloc.h"
#include "core/rng.h"
#include "core/threads.h"
#include "model/transformer.h"
#include "testing/gradcheck.h"
#include "../support/errors.h"
#include "../support/threads.h"
#include "../support/tiny_models.h"

using namespace mf;
namespace mt = mf::testing;

namespace {

ModelConfig tiny(const std::string& kind) {
  ModelConfig c = mt::tiny_modformer_config(AttentionImpl::Dense);
  if (kind == "post_gelu_learned") {
    mt::use_post_norm_gelu_learned(c);
  } else if (kind == "alibi_sandwich_geglu") {
    c.norm_placement = NormPlacement::Sandwich;
    c.ffn = FfnKind::GeGLU;
    c.hidden_act = Activation::GELUTanh;
    c.position = PositionKind::ALiBi;
    c.num_key_value_heads = 1;
  } else if (kind == "window_rope_interleaved") {
    c.sliding_window = 3;
    c.norm = NormKind::LayerNorm;
    c.position = PositionKind::RoPEInterleaved;
  } else if (kind == "sinusoidal_mlp_chunked") {
    c.position = PositionKind::Sinusoidal;
    c.ffn = FfnKind::MLP;
    c.hidden_act = Activation::SiLU;
    c.ffn_chunk_size = 5;
    c.gradient_checkpointing = true;
  } else if (kind == "no_ffn_sandwich") {
    c.ffn = FfnKind::None;
    c.norm_placement = NormPlacement::Sandwich;
  } else if (kind == "reversible") {
    c.reversible = true;
  } else if (kind == "reversible_sandwich_window") {
    c.reversible = true;
    c.norm_placement = NormPlacement::Sandwich;
    c.sliding_window = 3;
    c.num_hidden_layers = 3;
  }
  validate_config(c, kind);
  return c;
}

}  // namespace

// Near-uniform loss at init, and every parameter gets a finite, non-zero
// gradient from one loss (the lm_head and every layer's every matrix and norm).
TEST(ModelTransformer, LossNearUniformAndEveryParameterGetsAGradient) {
  Transformer m(tiny("llama_like"), 1);
  Tensor tok = mt::random_tokens({2, 7}, 1, 23), tgt = mt::random_tokens({2, 7}, 2, 23);
  for (Parameter* p : m.parameters()) p->grad.fill(0.0f);
  const double l = m.loss(tok, tgt, true);
  EXPECT_NEAR(l, std::log(23.0), 1.0);
  for (Parameter* p : m.parameters()) {
    double sq = 0;
    for (std::int64_t i = 0; i < p->grad.numel(); ++i) sq += double(p->grad.data<float>()[i]) * p->grad.data<float>()[i];
    EXPECT_TRUE(std::isfinite(sq) && sq > 0) << p->name << " has gradient norm^2 " << sq;
  }
}

class ModelKinds : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelKinds, GradientsMatchFiniteDifferences) {
  mt::ScopedThreads one(1);
  Transformer m(tiny(GetParam()), 3);
  Tensor tok = mt::random_tokens({2, 6}, 4, 23), tgt = mt::random_tokens({2, 6}, 5, 23);
  tgt.data<std::int32_t>()[3] = -1;  // an ignored target
  for (Parameter* p : m.parameters()) p->grad.fill(0.0f);
  m.loss(tok, tgt, true);
  std::vector<Tensor> values, grads;
  for (Parameter* p : m.parameters()) {
    values.push_back(p->value);
    grads.push_back(p->grad);
  }
  mf::testing::GradcheckOptions opt;
  opt.max_checks_per_input = 6;
  opt.atol = 1e-4;
  opt.rtol = 1e-2;
  const auto r = mf::testing::gradcheck([&] { return m.loss(tok, tgt, false); }, values, grads, opt);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_GT(r.checked, 30);
}

INSTANTIATE_TEST_SUITE_P(Kinds, ModelKinds,
                         ::testing::Values("llama_like", "post_gelu_learned", "alibi_sandwich_geglu",
                                           "window_rope_interleaved", "sinusoidal_mlp_chunked", "no_ffn_sandwich", "reversible",
                                           "reversible_sandwich_window"));

namespace {

std::vector<Tensor> grads_of(Transformer& m, const Tensor& tok, const Tensor& tgt, double* loss) {
  for (Parameter* p : m.parameters()) p->grad.fill(0.0f);
  *loss = m.loss(tok, tgt, true);
  std::vector<Tensor> g;
  for (Parameter* p : m.parameters()) g.push_back(p->grad.clone());
  return g;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

}  // namespace

TEST(ModelTransformer, DeterministicAcrossRunsAndInit) {
  for (int threads : {1, 2}) {
    const int prev = num_threads();
    set_num_threads(threads);
    Transformer a(tiny("llama_like"), 9), b(tiny("llama_like"), 9), c(tiny("llama_like"), 10);
    EXPECT_TRUE(bitwise_equal(a.parameters()[3]->value, b.parameters()[3]->value));
    EXPECT_FALSE(bitwise_equal(a.parameters()[3]->value, c.parameters()[3]->value));
    Tensor tok = mt::random_tokens({2, 11}, 1, 23), tgt = mt::random_tokens({2, 11}, 2, 23);
    double la = 0, lb = 0;
    const auto ga = grads_of(a, tok, tgt, &la);
    const auto gb = grads_of(b, tok, tgt, &lb);
    EXPECT_EQ(la, lb);
    for (std::size_t i = 0; i < ga.size(); ++i) EXPECT_TRUE(bitwise_equal(ga[i], gb[i])) << i;
    set_num_threads(prev);
  }
}

// Recomputing a block in the backward runs the same deterministic forward
// again, so checkpointed gradients equal the stored-activation ones bit for
// bit, while only the block inputs are kept between forward and backward.
TEST(ModelTransformer, GradientCheckpointingSameGradientsLessMemory) {
  ModelConfig cfg = tiny("llama_like");
  cfg.num_hidden_layers = 4;
  cfg.intermediate_size = 96;
  Transformer m(cfg, 5);
  Tensor tok = mt::random_tokens({2, 48}, 1, 23), tgt = mt::random_tokens({2, 48}, 2, 23);
  double l0 = 0, l1 = 0;
  reset_peak_memory();
  std::int64_t base = memory_stats().current_bytes;
  const auto g0 = grads_of(m, tok, tgt, &l0);
  const std::int64_t peak_full = memory_stats().peak_bytes - base;
  const std::int64_t saved_full = m.last_saved_activation_bytes();

  m.set_gradient_checkpointing(true);
  base = memory_stats().current_bytes;
  reset_peak_memory();
  const auto g1 = grads_of(m, tok, tgt, &l1);
  const std::int64_t peak_ckpt = memory_stats().peak_bytes - base;
  const std::int64_t saved_ckpt = m.last_saved_activation_bytes();

  EXPECT_EQ(l0, l1);
  for (std::size_t i = 0; i < g0.size(); ++i) EXPECT_TRUE(bitwise_equal(g0[i], g1[i])) << m.parameters()[i]->name;
  // Checkpointed: the 5 block boundaries [N, C] + final-norm output and stats.
  const std::int64_t N = 96, C = 32;
  EXPECT_EQ(saved_ckpt, (5 + 1) * N * C * 4 + N * 4);
  EXPECT_LT(saved_ckpt * 4, saved_full);
  EXPECT_LT(peak_ckpt, peak_full);
  std::printf("[ measured ] activations kept for backward: %lld bytes stored, %lld checkpointed; peak %lld vs %lld\n",
              static_cast<long long>(saved_full), static_cast<long long>(saved_ckpt),
              static_cast<long long>(peak_full), static_cast<long long>(peak_ckpt));
}

TEST(ModelTransformer, LossEqualsCrossEntropyOfLogits) {
  mt::ScopedThreads one(1);
  for (const char* kind : {"llama_like", "post_gelu_learned"}) {
    Transformer m(tiny(kind), 2);
    Tensor tok = mt::random_tokens({2, 7}, 3, 23), tgt = mt::random_tokens({2, 7}, 4, 23);
    tgt.data<std::int32_t>()[5] = -1;
    const Tensor lg = m.logits(tok);
    ASSERT_EQ(lg.shape(), (Shape{2, 7, 23}));
    double sum = 0;
    int count = 0;
    for (std::int64_t i = 0; i < 14; ++i) {
      const int t = tgt.data<std::int32_t>()[i];
      if (t < 0) continue;
      const float* row = lg.data<float>() + i * 23;
      double mx = row[0], z = 0;
      for (int v = 0; v < 23; ++v) mx = std::max<double>(mx, row[v]);
      for (int v = 0; v < 23; ++v) z += std::exp(row[v] - mx);
      sum += mx + std::log(z) - row[t];
      ++count;
    }
    EXPECT_NEAR(m.loss(tok, tgt, false), sum / count, 1e-5) << kind;
  }
}

// The per-layer generation states are enough for incremental decoding:
// prefix then the rest through them gives the logits of one full forward.
TEST(ModelTransformer, GenerationStateReproducesFullForward) {
  mt::ScopedThreads one(1);
  for (const char* kind : {"llama_like", "post_gelu_learned", "alibi_sandwich_geglu", "window_rope_interleaved",
                           "sinusoidal_mlp_chunked"}) {
    Transformer m(tiny(kind), 4);
    Tensor tok = mt::random_tokens({2, 9}, 8, 23);
    const Tensor full = m.logits(tok);
    GenerationOptions o;
    o.batch = 2;
    const auto cache = m.new_generation_state(o);
    Tensor part1 = tok.slice(1, 0, 5).contiguous(), part2 = tok.slice(1, 5, 8).contiguous(),
           part3 = tok.slice(1, 8, 9).contiguous();
    const Tensor a = m.logits(part1, cache.get());
    const Tensor b = m.logits(part2, cache.get());
    const Tensor c = m.logits(part3, cache.get());
    EXPECT_EQ(cache->past_length(), 9);
    EXPECT_LT(max_abs_diff(a, full.slice(1, 0, 5).contiguous()), 1e-5f) << kind;
    EXPECT_LT(max_abs_diff(b, full.slice(1, 5, 8).contiguous()), 1e-5f) << kind;
    EXPECT_LT(max_abs_diff(c, full.slice(1, 8, 9).contiguous()), 1e-5f) << kind;
  }
}

TEST(ModelTransformer, RejectsBadInputNamingThePosition) {
  Transformer m(tiny("post_gelu_learned"), 1);
  Tensor tok = mt::random_tokens({2, 5}, 1, 23), tgt = mt::random_tokens({2, 5}, 2, 23);
  tok.data<std::int32_t>()[7] = 23;
  try {
    m.logits(tok);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 23 at position [1, 2] is out of range [0, 23)"), std::string::npos)
        << e.what();
  }
  tok.data<std::int32_t>()[7] = 0;
  tgt.data<std::int32_t>()[1] = 99;
  try {
    m.loss(tok, tgt, true);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("target id 99 at position [0, 1]"), std::string::npos) << e.what();
  }
  EXPECT_ERROR("targets must have the shape of tokens [2, 5] but have [2, 4]", m.loss(tok, mt::random_tokens({2, 4}, 2, 23), false));  // shape mismatch
  EXPECT_ERROR("tokens must be a [B, L] tensor but has shape [10]", m.logits(mt::random_tokens({10}, 2, 23)));              // not [B, L]
  try {
    m.logits(mt::random_tokens({1, 65}, 2, 23));  // learned table has 64 positions
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_position_embeddings 64"), std::string::npos) << e.what();
  }
  ModelConfig bad = tiny("llama_like");
  bad.num_key_value_heads = 3;
  EXPECT_ERROR("field 'num_key_value_heads': 3 does not divide num_attention_heads 4", Transformer(bad, 1));
}

// The flash kernels against the dense reference inside the whole model, at a
// length that spans several flash tiles (the fixtures use L = 9).
TEST(ModelTransformer, FlashMatchesDenseOnLongerSequences) {
  for (const char* kind : {"llama_like", "alibi_sandwich_geglu", "window_rope_interleaved"}) {
    ModelConfig cfg = tiny(kind);
    cfg.max_position_embeddings = 256;
    if (std::string(kind) == "window_rope_interleaved") cfg.sliding_window = 37;
    Transformer m(cfg, 6);
    Tensor tok = mt::random_tokens({2, 150}, 1, 23), tgt = mt::random_tokens({2, 150}, 2, 23);
    double ld = 0, lf = 0;
    m.set_attention_impl(AttentionImpl::Dense);
    const auto gd = grads_of(m, tok, tgt, &ld);
    const Tensor logits_d = m.logits(tok);
    m.set_attention_impl(AttentionImpl::Flash);
    const auto gf = grads_of(m, tok, tgt, &lf);
    const Tensor logits_f = m.logits(tok);
    // Both are float32 computations of the same math with different summation
    // orders: differences of a few ulps, amplified by depth (measured <= 1.4e-6
    // relative); 1e-4 of each tensor's scale is far below any real error.
    auto scale = [](const Tensor& t) {
      float s = 0;
      for (float v : t.to_vector()) s = std::max(s, std::fabs(v));
      return s;
    };
    EXPECT_NEAR(ld, lf, 1e-5 * ld) << kind;
    EXPECT_LE(max_abs_diff(logits_d, logits_f), 1e-4f * scale(logits_d)) << kind;
    for (std::size_t i = 0; i < gd.size(); ++i)
      EXPECT_LE(max_abs_diff(gd[i], gf[i]), 1e-4f * scale(gd[i]) + 1e-8f) << kind << " " << m.parameters()[i]->name;
  }
}
