// Transformer-XL (Dai et al. 2019): the tiled relative-attention kernel vs
// its reference twin (literal rel-shift) on awkward shapes; gradients vs
// finite differences; PyTorch fixtures (tools/fixtures/transformer_xl.py, a
// rewrite of the reference's RelPartialLearnableMultiHeadAttn); segment by
// segment with memory == one causal pass; the memory gets no gradient; a tiny
// LM trains through segments; generation == the full forward; refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/safetensors.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/transformer.h"
#include "nn/mixer/mixer_registry.h"
#include "nn/transformer_xl/rel_attention.h"
#include "testing/gradcheck.h"
#include "train/data.h"
#include "train/trainer.h"
#include "../support/errors.h"
#include "../support/fixtures.h"
#include "../support/generation.h"
#include "../support/mixer_checks.h"
#include "../support/parameters.h"
#include "../support/threads.h"
#include "../support/tiny_models.h"
#include "../support/train_runs.h"

using namespace mf;
using mf::testing::close;
using mf::testing::ScopedThreads;

namespace {

struct Shape6 {
  std::int64_t batch, seq_len, mem_len, c, heads, head_dim, clamp_len, kv_heads = 0;  // 0: = heads
};

struct Layer : mf::testing::OwnedParameters {
  RelAttentionParams p;
  Layer(const Shape6& s, std::uint64_t param_seed) {
    seed = param_seed;
    const std::int64_t hd = s.heads * s.head_dim, kv_heads = s.kv_heads > 0 ? s.kv_heads : s.heads;
    p.num_heads = s.heads, p.num_kv_heads = kv_heads, p.head_dim = s.head_dim, p.clamp_len = s.clamp_len;
    p.qkv = make("qkv_net", {hd + 2 * kv_heads * s.head_dim, s.c}, 0.0f, 1.0f / std::sqrt(static_cast<float>(s.c)));
    p.r = make("r_net", {hd, s.c}, 0.0f, 1.0f / std::sqrt(static_cast<float>(s.c)));
    p.u = make("r_w_bias", {s.heads, s.head_dim}, 0.0f, 0.3f);
    p.v = make("r_r_bias", {s.heads, s.head_dim}, 0.0f, 0.3f);
    p.o = make("o_net", {s.c, hd}, 0.0f, 1.0f / std::sqrt(static_cast<float>(hd)));
  }
  void zero_grads() {
    for (auto& q : owned) q->grad.fill(0.0f);
  }
};

struct LayerRun {
  Tensor y, dx;
  std::vector<Tensor> grads;
};

LayerRun run_fast(Layer& l, const Tensor& x, const Tensor& mem, const Tensor& dy, std::int64_t b, std::int64_t len) {
  l.zero_grads();
  LayerRun r{Tensor::empty(x.shape()), Tensor::empty(x.shape()), {}};
  RelAttentionSaved s;
  rel_attention_forward(r.y, &s, x, mem, b, len, l.p);
  rel_attention_backward(r.dx, dy, x, s, b, len, l.p);
  for (const Tensor& g : l.grads()) r.grads.push_back(g.clone());
  return r;
}

LayerRun run_reference(Layer& l, const Tensor& x, const Tensor& mem, const Tensor& dy, std::int64_t b,
                       std::int64_t len) {
  l.zero_grads();
  LayerRun r{Tensor::empty(x.shape()), Tensor::empty(x.shape()), {}};
  reference::rel_attention_forward(r.y, x, mem, b, len, l.p);
  reference::rel_attention_backward(r.dx, dy, x, mem, b, len, l.p);
  for (const Tensor& g : l.grads()) r.grads.push_back(g.clone());
  return r;
}

Tensor memory_of(const Shape6& s, std::uint64_t seed) {
  return s.mem_len > 0 ? randn({s.batch, s.mem_len, s.c}, seed) : Tensor();
}

// A tiny decoder of transformer_xl layers over bytes: no absolute positions
// (the relative sinusoids are the positions), post-norm LayerNorm as the
// reference, untied head; 4 heads sharing kv_heads key/value heads.
ModelConfig tiny_txl_config(std::int64_t mem_len, std::int64_t clamp_len = 0, std::int64_t kv_heads = 4) {
  ModelConfig cfg = mf::testing::tiny_modformer_config(AttentionImpl::Flash);
  cfg.num_key_value_heads = kv_heads;
  cfg.position = PositionKind::None;
  cfg.norm = NormKind::LayerNorm;
  cfg.norm_placement = NormPlacement::Post;
  nlohmann::json j = config_to_json(cfg);
  j["token_mixer"] = "transformer_xl";
  j["transformer_xl"] = {{"mem_len", mem_len}, {"clamp_len", clamp_len}};
  return config_from_json(j, "test.json");
}

}  // namespace

// The tiled kernel (online softmax over key tiles, the position term per tile)
// == the dense reference with the literal rel-shift: L not a multiple of the
// 32-row query tile or 64-key tile, M = 0 and M > 0, L = 1, batch > 1, clamp_len
// active, GQA 2:1 and 8:1, head dims 4..16; forward, dx and every parameter gradient.
TEST(TransformerXl, FastMatchesReference) {
  ScopedThreads one(1);  // tiny shapes: fork/join would dominate (DeterministicAcrossThreadCounts runs 2)
  const Shape6 shapes[] = {
      {2, 37, 0, 16, 2, 8, 0},   // M = 0, one partial query tile
      {2, 45, 19, 24, 3, 8, 0},  // keys past one key tile, 3 heads
      {1, 1, 70, 16, 2, 8, 0},   // L = 1 with a long memory
      {3, 33, 40, 16, 4, 4, 10},  // clamp_len active
      {1, 70, 65, 16, 2, 16, 30},  // several query and key tiles, clamp
      {2, 35, 30, 16, 4, 8, 0, 2},  // GQA 2:1
      {1, 20, 9, 16, 8, 4, 6, 1},   // GQA 8:1 (one key/value head), clamp
  };
  int i = 0;
  for (const Shape6& s : shapes) {
    SCOPED_TRACE("B=" + std::to_string(s.batch) + " L=" + std::to_string(s.seq_len) + " M=" +
                 std::to_string(s.mem_len) + " clamp=" + std::to_string(s.clamp_len));
    Layer l(s, 10 + i);
    const std::int64_t n = s.batch * s.seq_len;
    const Tensor x = randn({n, s.c}, 20 + i), dy = randn({n, s.c}, 30 + i), mem = memory_of(s, 40 + i);
    const LayerRun fast = run_fast(l, x, mem, dy, s.batch, s.seq_len);
    const LayerRun ref = run_reference(l, x, mem, dy, s.batch, s.seq_len);
    EXPECT_TRUE(close(fast.y, ref.y, 2e-5, "y"));
    EXPECT_TRUE(close(fast.dx, ref.dx, 2e-5, "dx"));
    for (std::size_t k = 0; k < fast.grads.size(); ++k)
      EXPECT_TRUE(close(fast.grads[k], ref.grads[k], 2e-5, "grad " + l.owned[k]->name));
    ++i;
  }
}

// dx and every parameter gradient vs four-point finite differences of
// sum(y * w), the memory held constant (it is an input without gradient).
TEST(TransformerXl, GradientsMatchFiniteDifferences) {
  ScopedThreads one(1);
  for (const Shape6& s : {Shape6{2, 5, 3, 8, 2, 4, 0}, Shape6{1, 6, 4, 8, 4, 2, 3, 2}}) {
    SCOPED_TRACE("M=" + std::to_string(s.mem_len) + " clamp=" + std::to_string(s.clamp_len));
    Layer l(s, 5);
    const std::int64_t n = s.batch * s.seq_len;
    Tensor x = randn({n, s.c}, 6);
    const Tensor w = randn({n, s.c}, 7), mem = memory_of(s, 8);
    auto loss = [&] {
      Tensor y = Tensor::empty(x.shape());
      rel_attention_forward(y, nullptr, x, mem, s.batch, s.seq_len, l.p);
      return mf::testing::weighted_sum(y, w);
    };
    l.zero_grads();
    Tensor y = Tensor::empty(x.shape()), dx = Tensor::full(x.shape(), 3.0f);
    RelAttentionSaved saved;
    rel_attention_forward(y, &saved, x, mem, s.batch, s.seq_len, l.p);
    rel_attention_backward(dx, w, x, saved, s.batch, s.seq_len, l.p);
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

// Equal bits on 1 and 2 threads, forward and backward, on shapes that go parallel.
TEST(TransformerXl, DeterministicAcrossThreadCounts) {
  const Shape6 s{2, 50, 30, 32, 4, 8, 0, 2};
  Layer l(s, 3);
  const Tensor x = randn({100, 32}, 1), dy = randn({100, 32}, 2), mem = memory_of(s, 4);
  mf::testing::expect_same_bits_across_threads([&] {
    const LayerRun r = run_fast(l, x, mem, dy, s.batch, s.seq_len);
    std::vector<Tensor> all = {r.y, r.dx};
    all.insert(all.end(), r.grads.begin(), r.grads.end());
    return mf::testing::all_values(all);
  });
}

namespace {
const std::vector<std::string> kTxlFixtures = {"transformer_xl_no_memory", "transformer_xl_memory",
                                               "transformer_xl_memory_clamped", "transformer_xl_long_memory_l1"};
}  // namespace

// vs the PyTorch rewrite of RelPartialLearnableMultiHeadAttn (float64, the
// literal _rel_shift, mems given): y, dx and every parameter gradient.
TEST(TransformerXl, MatchesPyTorchFixtures) {
  ScopedThreads one(1);
  for (const std::string& name : kTxlFixtures) {
    SCOPED_TRACE(name);
    mf::testing::FixtureModule f(name);
    RelAttentionParams p;
    p.num_heads = f.option("num_heads"), p.head_dim = f.option("head_dim"), p.clamp_len = f.option("clamp_len");
    p.num_kv_heads = p.num_heads;  // the reference has no grouped keys
    p.qkv = f.param("qkv_net"), p.r = f.param("r_net"), p.u = f.param("r_w_bias"), p.v = f.param("r_r_bias");
    p.o = f.param("o_net");
    const std::int64_t b = f.option("batch"), l = f.option("seq_len");
    const Tensor mem = f.file.tensors.count("memory") ? f.tensor("memory") : Tensor();
    EXPECT_EQ(mem.defined() ? mem.size(1) : 0, f.option("mem_len"));
    const Tensor& x = f.tensor("x");
    Tensor y = Tensor::empty(x.shape()), dx = Tensor::empty(x.shape());
    RelAttentionSaved saved;
    rel_attention_forward(y, &saved, x, mem, b, l, p);
    rel_attention_backward(dx, f.tensor("dy"), x, saved, b, l, p);
    f.expect_matches(y, dx, 1e-5);
  }
}

TEST(TransformerXl, FixtureListCoversEveryFile) {
  mf::testing::expect_fixture_list_covers("transformer_xl_", kTxlFixtures);
}

// The whole-model fixture of tools/fixtures/model.py (a transformer_xl layer
// with clamp_len 6 < L = 9, then exact attention; post-norm LayerNorm):
// logits, loss and every parameter gradient vs plain torch in float64.
TEST(TransformerXl, WholeModelFixtureMatchesTorch) {
  ScopedThreads one(1);
  const std::string name = "model_transformer_xl";
  const SafetensorsContents st = mf::testing::load_fixture(name);
  const Tensor cj = st.tensors.at("config_json");
  std::string text;
  for (std::int64_t i = 0; i < cj.numel(); ++i) text += static_cast<char>(cj.data<std::int32_t>()[i]);
  std::map<std::string, Tensor> weights;
  for (const auto& [k, t] : st.tensors)
    if (k.rfind("w:", 0) == 0) weights[k.substr(2)] = t;
  Transformer m(config_from_string(text, name), 123);
  load_weights(m, weights, name);
  EXPECT_EQ(m.token_mixer(0).name(), "transformer_xl");
  const Tensor& tokens = st.tensors.at("tokens");
  EXPECT_TRUE(close(m.logits(tokens), st.tensors.at("logits"), 1e-4, "logits"));
  for (Parameter* p : m.parameters()) p->grad.fill(0.0f);
  const double loss = m.loss(tokens, st.tensors.at("targets"), true);
  const double want = st.tensors.at("loss").to_vector()[0];
  EXPECT_NEAR(loss, want, 1e-4 * want);
  int txl_params = 0;
  for (Parameter* p : m.parameters()) {
    ASSERT_TRUE(st.tensors.count("g:" + p->name)) << p->name;
    EXPECT_TRUE(close(p->grad, st.tensors.at("g:" + p->name), 1e-4, "gradient of " + p->name, 1e-3));
    txl_params += p->name.find(".self_attn.r_") != std::string::npos;
  }
  EXPECT_EQ(txl_params, 3);  // r_net.weight, r_w_bias, r_r_bias
}

// Segment by segment with a memory long enough to hold every earlier input
// == one causal pass over the concatenation (logits of every position).
TEST(TransformerXl, SegmentsWithMemoryEqualOneCausalPass) {
  ScopedThreads one(1);
  const std::int64_t seg = 7, segments = 3;
  Transformer m(tiny_txl_config(seg * segments), 11);
  const Tensor tokens = mf::testing::random_tokens({2, seg * segments}, 5, 23);
  const Tensor full = m.logits(tokens);
  auto memory = m.new_segment_memory(2);
  ASSERT_NE(memory, nullptr);
  for (std::int64_t s = 0; s < segments; ++s) {
    const Tensor part = m.segment_logits(tokens.slice(1, s * seg, (s + 1) * seg).contiguous(), memory.get());
    EXPECT_TRUE(close(part, full.slice(1, s * seg, (s + 1) * seg).contiguous(), 2e-5, "segment " + std::to_string(s)));
  }
  // A shorter memory truncates the context: the third segment now differs.
  Transformer short_mem(tiny_txl_config(seg), 11);
  auto small = short_mem.new_segment_memory(2);
  Tensor last;
  for (std::int64_t s = 0; s < segments; ++s)
    last = short_mem.segment_logits(tokens.slice(1, s * seg, (s + 1) * seg).contiguous(), small.get());
  EXPECT_GT(max_abs_diff(last, full.slice(1, 2 * seg, 3 * seg).contiguous()), 1e-3);
  EXPECT_EQ(small->bytes(), 2 * 2 * seg * 32 * 4);  // 2 layers x [B = 2, mem_len 7, C = 32] floats
}

// Stop-gradient: a segment's loss reaches the previous segment only through
// the memory, which is a constant. Segment 1 uses tokens 0..9, segment 2
// tokens 10..19: after segment 2's backward the embedding rows of tokens 0..9
// have no gradient, although segment 2's loss depends on them (changing the
// memory changes it).
TEST(TransformerXl, MemoryGetsNoGradient) {
  ScopedThreads one(1);
  Transformer m(tiny_txl_config(16), 7);
  Tensor first = mf::testing::random_tokens({2, 8}, 1, 10), second = mf::testing::random_tokens({2, 8}, 2, 10);
  for (std::int64_t i = 0; i < second.numel(); ++i) second.data<std::int32_t>()[i] += 10;
  const Tensor targets = mf::testing::random_tokens({2, 8}, 3, 23);
  auto memory = m.new_segment_memory(2);
  m.loss(first, targets, false, memory.get());
  for (Parameter* p : m.parameters()) p->grad.fill(0.0f);
  const double with_memory = m.loss(second, targets, true, memory.get());
  const Tensor& g = m.find_parameter("model.embed_tokens.weight")->grad;
  for (std::int64_t row = 0; row < 20; ++row) {
    double norm = 0;
    for (std::int64_t c = 0; c < 32; ++c) norm += std::fabs(g.data<float>()[row * 32 + c]);
    if (row < 10) {
      EXPECT_EQ(norm, 0.0) << "token " << row << " (segment 1 only) got a gradient through the memory";
    }
  }
  double second_rows = 0;
  for (std::int64_t i = 0; i < second.numel(); ++i) {
    const std::int64_t row = second.data<std::int32_t>()[i];
    for (std::int64_t c = 0; c < 32; ++c) second_rows += std::fabs(g.data<float>()[row * 32 + c]);
  }
  EXPECT_GT(second_rows, 0.0);
  const double without_memory = m.loss(second, targets, false);
  EXPECT_GT(std::fabs(with_memory - without_memory), 1e-4);
}

// Cached generation (prefill, then one token per step) == the full forward.
TEST(TransformerXl, GenerationEqualsFullForward) {
  ScopedThreads one(1);
  Transformer m(tiny_txl_config(8, 9, 2), 3);  // clamp_len 9 < 19 positions, GQA 4:2
  const Tensor tokens = mf::testing::random_tokens({2, 19}, 4, 23);
  mf::testing::expect_generation_equals_full_forward(m, tokens, 6, 2e-5f);
}

// A tiny LM with the mixer trains through the shared loop on ordered
// segments (the memory carried from step to step): the loss falls, the
// validation walks segments too, and the data state names the sampler.
TEST(TransformerXl, TinyLmTrainsThroughSegments) {
  ScopedThreads one(1);
  std::string text;
  for (int i = 0; i < 400; ++i) text += "the quick brown fox jumps over the lazy dog " + std::to_string(i % 7) + ". ";
  const TextCorpus corpus = TextCorpus::from_text(text, 0.05, "fox");
  ModelConfig cfg = tiny_txl_config(16);
  nlohmann::json j = config_to_json(cfg);
  j["vocab_size"] = 256;
  Transformer m(config_from_json(j, "test.json"), 1);
  TrainConfig tc = mf::testing::small_train_config(mf::testing::fresh_temp_dir("txl_train"));
  tc.steps = 30;
  tc.seq_len = 16;
  tc.grad_accum = 1;
  tc.lr = 0.01;
  tc.eval_interval = 0;
  tc.val_fraction = 0.05;
  tc.checkpoint_interval = 0;
  const double before = evaluate(m, corpus, tc.seq_len, 8, tc.batch_size).loss;
  const TrainResult r = train(m, corpus, tc);
  EXPECT_LT(r.val.loss, before - 0.5) << "before " << before << " after " << r.val.loss;
  EXPECT_EQ(r.val.tokens, 2 * tc.batch_size * tc.seq_len);  // ceil(8 windows / batch 4) segments per stream
  const SegmentStreams streams = train_segment_streams(corpus, tc.batch_size, tc.seq_len);
  const auto offsets = streams.offsets(1);
  EXPECT_EQ(offsets[1] - offsets[0], streams.stream_len);
  EXPECT_EQ(offsets[0], tc.seq_len);
}

// Each bad input or impossible config is refused with a message naming it.
TEST(TransformerXl, RejectsBadInput) {
  ScopedThreads single(1);
  const Shape6 s{1, 4, 0, 8, 2, 4, 0};
  Layer l(s, 1);
  const Tensor x = randn({4, 8}, 1), y = Tensor::empty({4, 8});
  EXPECT_ERROR("memory must be a contiguous float32 [B, M, C] = [1, M, 8]",
               rel_attention_forward(y, nullptr, x, Tensor::zeros({1, 3, 6}), 1, 4, l.p));
  RelAttentionParams bad = l.p;
  Parameter wrong("r_net", Tensor::zeros({8, 7}), true);
  bad.r = &wrong;
  EXPECT_ERROR("parameter r_net ('r_net') must be a contiguous float32 tensor of shape [8, 8]",
               rel_attention_forward(y, nullptr, x, Tensor(), 1, 4, bad));
  EXPECT_ERROR("input has 4 rows but batch 2", rel_attention_forward(y, nullptr, x, Tensor(), 2, 4, l.p));
  Tensor dx = Tensor::empty({4, 8});
  EXPECT_ERROR("backward called without the saved activations",
               rel_attention_backward(dx, x, x, RelAttentionSaved{}, 1, 4, l.p));
  // Configs.
  ModelConfig cfg = tiny_txl_config(4);
  nlohmann::json j = config_to_json(cfg);
  j["position"] = "rope";
  EXPECT_ERROR("set \"position\": \"none\"", Transformer(config_from_json(j, "t.json")));
  j = config_to_json(cfg);
  j["num_key_value_heads"] = 3;
  EXPECT_ERROR("num_key_value_heads", Transformer(config_from_json(j, "t.json")));
  j = config_to_json(cfg);
  j["transformer_xl"] = {{"mem_len", -1}};
  EXPECT_ERROR("mem_len", config_from_json(j, "t.json"));
  j = config_to_json(cfg);
  j["is_decoder"] = false;
  j["num_labels"] = 2;
  EXPECT_ERROR("mixer \"transformer_xl\" cannot run bidirectionally",
               Transformer(config_from_json(j, "t.json")).class_logits(mf::testing::random_tokens({1, 4}, 1, 23),
                                                                      Tensor()));
  // Memory batch mismatch; gradient checkpointing with a memory; memory on a
  // model without one.
  Transformer m(cfg, 1);
  auto memory = m.new_segment_memory(2);
  const Tensor tokens = mf::testing::random_tokens({1, 4}, 1, 23);
  EXPECT_ERROR("the segment memory was made for batch 2", m.segment_logits(tokens, memory.get()));
  auto one = m.new_segment_memory(1);
  m.set_gradient_checkpointing(true);
  EXPECT_ERROR("cannot be used with reversible blocks or gradient checkpointing",
               m.loss(tokens, tokens, true, one.get()));
  Transformer plain(mf::testing::tiny_modformer_config(AttentionImpl::Flash), 1);
  EXPECT_EQ(plain.new_segment_memory(1), nullptr);
  // Streams too short for one segment.
  const TextCorpus corpus = TextCorpus::from_text(std::string(400, 'a'), 0.25, "short");
  EXPECT_ERROR("the validation split (100 bytes) cut into 4 streams holds no segment of 33 bytes per stream",
               val_segment_streams(corpus, 4, 32));
  EXPECT_ERROR("segment 9 is outside [0, 9)", train_segment_streams(corpus, 1, 32).offsets(9));
}
