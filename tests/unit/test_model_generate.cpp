// KV-cache generation: cached decoding equals a full forward for every model
// kind (RoPE+GQA, ALiBi, sliding window with a wrapping ring, learned
// positions) and every prefill chunking; views are read in place; greedy and
// seeded sampling are deterministic; capacity and misuse errors are clear.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "core/alloc.h"
#include "core/rng.h"
#include "core/threads.h"
#include "model/generate.h"
#include "nn/attention/kv_cache.h"
#include "model/transformer.h"
#include "nn/attention/attention.h"
#include "nn/attention/flash_attention.h"
#include "../support/threads.h"
#include "../support/tiny_models.h"

using namespace mf;
namespace mt = mf::testing;

namespace {

ModelConfig tiny(const std::string& kind, AttentionImpl impl = AttentionImpl::Dense) {
  ModelConfig c = mt::tiny_modformer_config(impl);
  if (kind == "llama") {  // RoPE rotate-half, GQA 4:2, RMSNorm, SwiGLU, HF names
    c.model_type = "llama";
  } else if (kind == "alibi") {
    c.position = PositionKind::ALiBi;
    c.num_key_value_heads = 1;  // MQA
    c.ffn = FfnKind::GeGLU;
    c.hidden_act = Activation::GELUTanh;
  } else if (kind == "window") {  // window 3 < sequence: the ring wraps several times
    c.sliding_window = 3;
    c.position = PositionKind::RoPEInterleaved;
    c.norm = NormKind::LayerNorm;
  } else if (kind == "window_alibi") {  // distances through the ring
    c.sliding_window = 4;
    c.position = PositionKind::ALiBi;
  } else if (kind == "learned") {  // post-norm LayerNorm, GELU MLP, learned positions, biases, tied
    mt::use_post_norm_gelu_learned(c);
  } else {
    ADD_FAILURE() << "unknown kind " << kind;
  }
  validate_config(c, kind);
  return c;
}

const char* const kKinds[] = {"llama", "alibi", "window", "window_alibi", "learned"};

std::unique_ptr<GenerationState> state_for(Transformer& m, std::int64_t batch, std::int64_t capacity = 0,
                                           bool copy_out = false) {
  GenerationOptions o;
  o.batch = batch;
  o.capacity = capacity;
  o.copy_out = copy_out;
  return m.new_generation_state(o);
}

// Feeds tok [B, L] through `cache` in chunks of the given sizes (summing to
// L) and returns the logits of every position, [B, L, V].
Tensor cached_logits(Transformer& m, GenerationState& cache, const Tensor& tok, const std::vector<std::int64_t>& chunks) {
  const std::int64_t B = tok.size(0), L = tok.size(1), V = m.vocab_size();
  Tensor out = Tensor::empty({B, L, V});
  std::int64_t s = 0;
  for (std::int64_t n : chunks) {
    EXPECT_EQ(cache.past_length(), s);
    const Tensor part = m.logits(tok.slice(1, s, s + n).contiguous(), &cache);
    out.slice(1, s, s + n).copy_from(part);
    s += n;
  }
  EXPECT_EQ(s, L);
  return out;
}

float max_abs(const Tensor& t) {
  float m = 0;
  for (float x : t.to_vector()) m = std::max(m, std::fabs(x));
  return m;
}

// Cached and full forwards compute the same function; they differ only in
// float32 rounding (GEMMs over 1 vs L rows, attention accumulations cut at
// other tile/chunk boundaries). A rounding error of a few ulps per operation,
// grown over at most ~sqrt(40) accumulated terms per dot product and carried
// through each layer's residual stream, bounds the logit difference by about
// 16 eps per layer, relative to the logit scale. The negative control below
// shows that a real cache bug (a wrong position) is orders of magnitude larger.
float logit_tolerance(const ModelConfig& c, const Tensor& full) {
  const float eps = std::numeric_limits<float>::epsilon();
  return 16.0f * eps * static_cast<float>(c.num_hidden_layers) * std::max(1.0f, max_abs(full));
}

std::vector<std::vector<std::int64_t>> schedules(std::int64_t L) {
  std::vector<std::vector<std::int64_t>> s;
  s.push_back({L});                                 // one prefill call
  s.push_back(std::vector<std::int64_t>(L, 1));     // token by token
  s.push_back({5, 1, 3, 7, 1, L - 17});             // uneven chunks, several longer than the window
  s.push_back({9, 1, 1, 1, 1, 1, 1, 1, L - 16});    // prefill > window, then decode steps
  return s;
}

std::vector<AttentionImpl> impls() { return {AttentionImpl::Dense, AttentionImpl::Flash}; }
const char* impl_name(AttentionImpl i) { return i == AttentionImpl::Dense ? "dense" : "flash"; }

}  // namespace

// The attention front door reads a cache's strided views in place (same bits
// as a packed copy, no copy of the keys).
TEST(ModelGenerate, FrontDoorReadsStridedKvViewsInPlace) {
  mt::ScopedThreads one(1);
  for (AttentionImpl impl : impls()) {
    const Tensor store_k = randn({2, 2, 50, 16}, 1), store_v = randn({2, 2, 50, 16}, 2);
    const Tensor q = randn({2, 4, 3, 16}, 3);
    const Tensor kv = store_k.slice(2, 7, 40), vv = store_v.slice(2, 7, 40);
    ASSERT_FALSE(kv.is_contiguous());
    AttentionOptions opt;
    opt.causal = true;
    opt.alibi = true;
    opt.window_left = 20;
    const Tensor kc = kv.contiguous(), vc = vv.contiguous();
    auto extra_bytes = [&](const Tensor& k, const Tensor& v, AttentionOutput& o) {
      reset_peak_memory();
      const std::int64_t before = memory_stats().current_bytes;
      o = attention_forward(q, k, v, opt, impl);
      return memory_stats().peak_bytes - before;
    };
    AttentionOutput packed, viewed, mixed;
    const std::int64_t extra_packed = extra_bytes(kc, vc, packed);
    const std::int64_t extra_viewed = extra_bytes(kv, vv, viewed);
    EXPECT_EQ(max_abs_diff(packed.out, viewed.out), 0.0f) << impl_name(impl);
    EXPECT_EQ(max_abs_diff(packed.lse, viewed.lse), 0.0f) << impl_name(impl);
    // Views cost what packed inputs cost (outputs and kernel scratch only) ...
    EXPECT_EQ(extra_viewed, extra_packed) << impl_name(impl);
    // ... and so do views whose strides differ from k's (v has its own
    // strides in the problem since value head dims may differ: DeepSeek MLA).
    const Tensor other_v = randn({2, 2, 60, 16}, 4).slice(2, 0, 33);
    const std::int64_t extra_mixed = extra_bytes(kv, other_v, mixed);
    EXPECT_EQ(extra_mixed, extra_packed) << impl_name(impl);
    EXPECT_EQ(max_abs_diff(mixed.out, attention_forward(q, kc, other_v.contiguous(), opt, impl).out), 0.0f)
        << impl_name(impl);
  }
}

// The test: for each model kind, implementation and chunking, the logits of
// every position through the cache equal one full forward.
TEST(ModelGenerate, CachedDecodingEqualsFullForward) {
  mt::ScopedThreads one(1);
  for (const char* kind : kKinds)
    for (AttentionImpl impl : impls()) {
      Transformer m(tiny(kind, impl), 7);
      const Tensor tok = mt::random_tokens({2, 24}, 11, 23);
      const Tensor full = m.logits(tok);
      const float tol = logit_tolerance(m.config(), full);
      std::vector<Tensor> got;
      for (const auto& chunks : schedules(24)) {
        auto cache = state_for(m, 2);
        got.push_back(cached_logits(m, *cache, tok, chunks));
        EXPECT_EQ(cache->past_length(), 24);
        EXPECT_LE(max_abs_diff(got.back(), full), tol)
            << kind << " " << impl_name(impl) << " schedule " << got.size() - 1;
      }
      for (std::size_t i = 1; i < got.size(); ++i)  // the chunkings agree with each other too
        EXPECT_LE(max_abs_diff(got[i], got[0]), tol) << kind << " " << impl_name(impl) << " schedule " << i;
    }
}

// Decode steps through the flash-decoding path (keys split into chunks that
// are merged): with the default tiles a step takes it from 2048 cached keys
// on, so a 2048-token prefill is followed by steps at 2049..2064 keys (split
// into 3 chunks), against the full forward (whose rows take the tiled path).
TEST(ModelGenerate, FlashDecodingSplitPathEqualsFullForward) {
  mt::ScopedThreads one(1);
  const FlashTiles defaults;
  const std::int64_t prefill = defaults.split_min_keys, steps = 16;
  for (const char* kind : {"llama", "alibi"}) {
    ModelConfig c = tiny(kind, AttentionImpl::Flash);
    c.max_position_embeddings = prefill + steps;
    Transformer m(c, 7);
    const Tensor tok = mt::random_tokens({1, prefill + steps}, 3, 23);
    const Tensor full = m.logits(tok);
    auto cache = state_for(m, 1);
    std::vector<std::int64_t> chunks = {prefill};
    chunks.resize(1 + steps, 1);
    const Tensor got = cached_logits(m, *cache, tok, chunks);
    EXPECT_LE(max_abs_diff(got, full), logit_tolerance(m.config(), full)) << kind;
  }
}

// Negative control: the comparison above can fail. Dropping the cached past
// (positions restart) or mis-ordering the ring is far above the tolerance.
TEST(ModelGenerate, BrokenCacheIsDetected) {
  mt::ScopedThreads one(1);
  for (const char* kind : kKinds) {
    Transformer m(tiny(kind), 7);
    const Tensor tok = mt::random_tokens({1, 16}, 5, 23);
    const Tensor full = m.logits(tok);
    const float tol = logit_tolerance(m.config(), full);
    auto cache = state_for(m, 1);
    m.logits(tok.slice(1, 0, 10).contiguous(), cache.get());
    cache->reset();  // forgets the first 10 positions: the last 6 restart at position 0
    const Tensor tail = m.logits(tok.slice(1, 10, 16).contiguous(), cache.get());
    EXPECT_GT(max_abs_diff(tail, full.slice(1, 10, 16).contiguous()), 100 * tol) << kind;
  }
}

// Sliding window: storage is 2W rows whatever the capacity, the ring wraps
// many times, and decode steps read views of the ring (no copies).
TEST(ModelGenerate, WindowRingIsBoundedAndDecodeReturnsViews) {
  mt::ScopedThreads one(1);
  const ModelConfig c = tiny("window");
  KvCache cache(c.num_hidden_layers, 1, c.num_key_value_heads, c.head_dim, c.sliding_window, 1000);
  EXPECT_EQ(cache.storage_rows(), 2 * c.sliding_window);
  EXPECT_EQ(cache.capacity(), 1000);
  const std::int64_t bytes = cache.bytes();
  EXPECT_EQ(bytes, 2 * c.num_hidden_layers * c.num_key_value_heads * 2 * c.sliding_window * c.head_dim * 4);
  // Drive the hook directly: position t's key is filled with t, so the keys
  // handed out must read t - W + 1 .. t in order.
  const std::int64_t W = c.sliding_window;
  for (std::int64_t t = 0; t < 17; ++t) {
    for (std::int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
      Tensor k = Tensor::full({1, c.num_key_value_heads, 1, c.head_dim}, static_cast<float>(t));
      Tensor v = Tensor::full({1, c.num_key_value_heads, 1, c.head_dim}, static_cast<float>(-t));
      auto [ko, vo] = cache.extend(layer, k, v);
      const std::int64_t n = std::min(t + 1, W);
      ASSERT_EQ(ko.size(2), n);
      for (std::int64_t j = 0; j < n; ++j) {
        EXPECT_EQ(ko.at({0, 1, j, 3}), static_cast<float>(t - n + 1 + j)) << "t " << t << " j " << j;
        EXPECT_EQ(vo.at({0, 0, j, 7}), static_cast<float>(-(t - n + 1 + j)));
      }
      // A view into the layer's storage, not a copy.
      const char* base = static_cast<const char*>(cache.layer_keys(layer).raw_data());
      const char* p = static_cast<const char*>(ko.raw_data());
      EXPECT_TRUE(p >= base && p < base + cache.layer_keys(layer).nbytes());
    }
  }
  EXPECT_EQ(cache.past_length(), 17);
  EXPECT_EQ(cache.bytes(), bytes);
  // A chunk of 5 > W after 17 positions: the W - 1 cached ones, then the 5 new.
  for (std::int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    Tensor k = Tensor::empty({1, c.num_key_value_heads, 5, c.head_dim});
    for (std::int64_t j = 0; j < 5; ++j) k.slice(2, j, j + 1).fill(static_cast<float>(17 + j));
    auto [ko, vo] = cache.extend(layer, k, k);
    ASSERT_EQ(ko.size(2), W - 1 + 5);
    for (std::int64_t j = 0; j < ko.size(2); ++j) EXPECT_EQ(ko.at({0, 0, j, 0}), static_cast<float>(17 - W + 1 + j));
  }
  // ... and the ring now holds the last W of them.
  for (std::int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    auto [ko, vo] = cache.extend(layer, Tensor::full({1, c.num_key_value_heads, 1, c.head_dim}, 22.0f),
                                 Tensor::full({1, c.num_key_value_heads, 1, c.head_dim}, 22.0f));
    for (std::int64_t j = 0; j < W; ++j) EXPECT_EQ(ko.at({0, 1, j, 5}), static_cast<float>(22 - W + 1 + j));
  }
}

// A full cache hands out the first past + L rows as a view; a decode step
// allocates far less than the cache (no copy of past keys).
TEST(ModelGenerate, DecodeStepDoesNotCopyTheCache) {
  mt::ScopedThreads one(1);
  ModelConfig c = tiny("llama");
  c.max_position_embeddings = 512;
  Transformer m(c, 3);
  for (bool copy_out : {false, true}) {
    auto cache = state_for(m, 1, 0, copy_out);
    m.logits(mt::random_tokens({1, 400}, 2, 23), cache.get());
    const Tensor step = mt::random_tokens({1, 1}, 3, 23);
    reset_peak_memory();
    const std::int64_t before = memory_stats().current_bytes;
    m.logits(step, cache.get());
    const std::int64_t extra = memory_stats().peak_bytes - before;
    const std::int64_t one_layer_kv = 2 * 401 * c.kv_dim() * 4;  // packed K and V of one layer
    if (copy_out)
      EXPECT_GE(extra, one_layer_kv) << "the copying baseline should copy";
    else
      EXPECT_LT(extra, one_layer_kv / 4) << "a decode step should not copy the cached keys";
  }
}

// Greedy generation is deterministic and equals the argmax of a full forward
// over the growing sequence (no cache), token after token.
TEST(ModelGenerate, GreedyIsDeterministicAndMatchesFullForwardArgmax) {
  mt::ScopedThreads one(1);
  for (const char* kind : {"llama", "window", "learned"}) {
    Transformer m(tiny(kind), 9);
    const std::vector<std::int32_t> prompt = {3, 1, 4, 1, 5, 9, 2};
    GenerateOptions g;
    g.max_new_tokens = 14;
    g.sampling.temperature = 0.0f;
    const GenerateResult a = generate(m, prompt, g);
    const GenerateResult b = generate(m, prompt, g);
    ASSERT_EQ(a.tokens.size(), 14u);
    EXPECT_EQ(a.tokens, b.tokens) << kind;
    std::vector<std::int32_t> seq = prompt;
    for (std::size_t i = 0; i < a.tokens.size(); ++i) {
      Tensor t = Tensor::empty({1, static_cast<std::int64_t>(seq.size())}, DType::I32);
      std::copy(seq.begin(), seq.end(), t.data<std::int32_t>());
      const Tensor lg = m.logits(t);
      const float* last = lg.data<float>() + (seq.size() - 1) * 23;
      const auto best = static_cast<std::int32_t>(std::max_element(last, last + 23) - last);
      ASSERT_EQ(a.tokens[i], best) << kind << " token " << i;
      seq.push_back(best);
    }
    g.prefill_chunk = 3;  // chunked prefill: the same tokens
    EXPECT_EQ(generate(m, prompt, g).tokens, a.tokens) << kind;
  }
}

// Sampling: the same seed gives the same tokens on any thread count; other
// seeds give other tokens. Streaming sees each token once, in order.
TEST(ModelGenerate, SeededSamplingIsDeterministicAndStreams) {
  Transformer m(tiny("llama"), 4);
  const std::vector<std::int32_t> prompt = {1, 2, 3};
  GenerateOptions g;
  g.max_new_tokens = 30;
  g.sampling.temperature = 1.5f;
  g.sampling.top_k = 12;
  g.sampling.top_p = 0.95f;
  g.seed = 42;
  std::vector<std::int32_t> streamed;
  GenerateResult a;
  {
    mt::ScopedThreads one(1);
    a = generate(m, prompt, g, [&](std::int32_t t) { streamed.push_back(t); });
  }
  EXPECT_EQ(streamed, a.tokens);
  EXPECT_EQ(a.prompt_tokens, 3);
  EXPECT_GT(a.prefill_tokens_per_s(), 0.0);
  EXPECT_GT(a.decode_tokens_per_s(), 0.0);
  {
    mt::ScopedThreads two(2);
    EXPECT_EQ(generate(m, prompt, g).tokens, a.tokens);
  }
  mt::ScopedThreads one(1);
  g.seed = 43;
  EXPECT_NE(generate(m, prompt, g).tokens, a.tokens);
  g.sampling.temperature = 0.0f;  // greedy ignores the seed
  const auto greedy = generate(m, prompt, g).tokens;
  g.seed = 7;
  EXPECT_EQ(generate(m, prompt, g).tokens, greedy);
}

namespace {
void expect_error(const std::function<void()>& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing: " << part;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}
}  // namespace

TEST(ModelGenerate, CapacityErrorsAreClear) {
  mt::ScopedThreads one(1);
  Transformer m(tiny("llama"), 1);  // max_position_embeddings 64
  GenerateOptions g;
  g.sampling.temperature = 0.0f;
  g.max_new_tokens = 10;
  // 60 + 10 - 1 = 69 positions > 64, refused before any work.
  expect_error([&] { generate(m, std::vector<std::int32_t>(60, 1), g); }, "needs 69 positions but the context holds 64");
  g.max_new_tokens = 5;  // 60 + 5 - 1 = 64: fits exactly
  EXPECT_EQ(generate(m, std::vector<std::int32_t>(60, 1), g).tokens.size(), 5u);
  expect_error([&] { generate(m, std::vector<std::int32_t>(65, 1), g); }, "prompt has 65 tokens");
  g.capacity = 8;
  expect_error([&] { generate(m, std::vector<std::int32_t>(5, 1), g); }, "needs 9 positions but the context holds 8");
  g.capacity = 0;
  expect_error([&] { generate(m, {}, g); }, "prompt is empty");
  expect_error([&] { generate(m, {1, 23}, g); }, "prompt token 23 at position 1");
  g.max_new_tokens = 0;
  expect_error([&] { generate(m, {1}, g); }, "max_new_tokens must be >= 1");
  g.max_new_tokens = 3;
  g.sampling.top_p = 0.0f;
  expect_error([&] { generate(m, {1}, g); }, "top_p");

  // The cache itself: a call past capacity is refused before anything is written.
  auto cache = state_for(m, 1, 6);
  m.logits(mt::random_tokens({1, 4}, 1, 23), cache.get());
  expect_error([&] { m.logits(mt::random_tokens({1, 3}, 1, 23), cache.get()); },
               "needs positions 4..6 but the cache holds at most 6 positions");
  EXPECT_EQ(cache->past_length(), 4);
  m.logits(mt::random_tokens({1, 2}, 1, 23), cache.get());  // still usable: exactly full
  EXPECT_EQ(cache->remaining(), 0);
  expect_error([&] { m.logits(mt::random_tokens({1, 1}, 1, 23), cache.get()); }, "holds at most 6 positions");

  // A window bounds storage, not positions: the capacity still caps them.
  Transformer wm(tiny("window"), 1);
  auto wc = state_for(wm, 1, 6);
  EXPECT_EQ(wc->bytes(), 2 * tiny("window").num_hidden_layers * tiny("window").kv_dim() * 6 * 4);  // 2W = 6 rows
  wm.logits(mt::random_tokens({1, 6}, 1, 23), wc.get());
  expect_error([&] { wm.logits(mt::random_tokens({1, 1}, 1, 23), wc.get()); }, "holds at most 6 positions");
}

TEST(ModelGenerate, HookMisuseIsRejected) {
  const ModelConfig c = tiny("llama");
  KvCache cache(c.num_hidden_layers, 2, c.num_key_value_heads, c.head_dim, 0, c.max_position_embeddings);
  const Tensor k = Tensor::zeros({2, 2, 3, 8});
  expect_error([&] { cache.extend(2, k, k); }, "layer 2 is out of range [0, 2)");
  expect_error([&] { cache.extend(0, Tensor::zeros({1, 2, 3, 8}), Tensor::zeros({1, 2, 3, 8})); },
               "k must have shape [2, 2, L >= 1, 8]");
  expect_error([&] { cache.extend(0, k, Tensor::zeros({2, 2, 4, 8})); }, "v must have k's shape");
  expect_error([&] { cache.extend(1, k, k); }, "extended out of order (expected layer 0)");
  cache.extend(0, k, k);
  expect_error([&] { cache.extend(1, Tensor::zeros({2, 2, 2, 8}), Tensor::zeros({2, 2, 2, 8})); },
               "got 2 new positions but layer 0 got 3");
  expect_error([&] { cache.extend(0, k, k); }, "an earlier call stopped midway");
  cache.reset();
  cache.extend(0, k, k);
  cache.extend(1, k, k);
  EXPECT_EQ(cache.past_length(), 3);
  expect_error([&] { KvCache(2, 0, 2, 8, 0, 16); }, "batch must be >= 1");
  expect_error([&] { KvCache(4, 1, 1 << 20, 256, 0, std::int64_t{1} << 40); }, "cache size overflows");
  Transformer m(c, 1), learned(tiny("learned"), 1);
  expect_error([&] { state_for(m, 1, -1); }, "capacity must be >= 0");
  expect_error([&] { state_for(m, 0); }, "generation batch must be >= 1");
  // learned positions: the table has 64 rows
  expect_error([&] { state_for(learned, 1, 65); }, "capacity 65 exceeds the learned position table");
  EXPECT_EQ(state_for(m, 1, 65)->capacity(), 65);  // RoPE extrapolates: allowed
}
