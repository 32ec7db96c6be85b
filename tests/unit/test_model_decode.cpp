// The decode path: Transformer::logits_rows (batched decode of sequences of
// different lengths, each with its own state) gives every row the bits a
// one-row decode gives it, for attention (the fused GEMV path of
// forward_rows), absolute positions, sliding windows, recurrent mixers (the
// default per-row forward_rows) and reversible models; generate_batch equals
// generate() prompt by prompt (greedy and seeded sampling); decode through
// the GEMV path still equals the full forward; misuse is refused by name.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/gemv.h"
#include "model/generate.h"
#include "model/transformer.h"
#include "nn/block/mixture_of_depths.h"
#include "../support/errors.h"
#include "../support/generation.h"
#include "../support/threads.h"
#include "../support/tiny_models.h"

using namespace mf;
namespace mt = mf::testing;

namespace {

ModelConfig decode_config(const std::string& kind) {
  ModelConfig c = mt::tiny_modformer_config(AttentionImpl::Flash);
  c.attention_bias = true;  // the fused q/k/v GEMV carries the biases
  if (kind == "learned") {
    mt::use_post_norm_gelu_learned(c);
  } else if (kind == "window") {
    c.sliding_window = 3;
    c.layer_types = {"sliding_attention", "full_attention"};
    c.ffn = FfnKind::GeGLU;
    c.hidden_act = Activation::GELUTanh;
    c.mlp_bias = true;
  } else if (kind == "hybrid") {
    c.layer_types = {"mamba", "full_attention"};
  } else if (kind == "reversible") {
    c.reversible = true;
    c.initializer_range = 0.05;
  } else if (kind == "routed") {  // Mixture of Depths: the predictor routes each generated token
    c.mixture_of_depths = parse_options(mod_option_schema(), {{"capacity", 0.5}, {"every", 2}, {"predictor_hidden", 8}},
                                        "test ", "mixture_of_depths");
  }
  validate_config(c, kind);
  return c;
}

std::vector<std::int32_t> random_prompt(std::int64_t len, std::uint64_t seed, std::int64_t vocab) {
  const Tensor t = mt::random_tokens({len}, seed, vocab);
  return {t.data<std::int32_t>(), t.data<std::int32_t>() + len};
}

Tensor row_tokens(const std::vector<std::int32_t>& ids) {
  Tensor t = Tensor::empty({1, static_cast<std::int64_t>(ids.size())}, DType::I32);
  std::copy(ids.begin(), ids.end(), t.data<std::int32_t>());
  return t;
}

}  // namespace

// Ragged prompts, prefilled one by one into two sets of states; then batched
// steps on one set and one-row steps on the other must agree bit for bit.
TEST(ModelDecode, BatchedRowsGetTheBitsOfOneRowDecoding) {
  mt::ScopedThreads two(2);
  for (const std::string kind : {"llama", "learned", "window", "hybrid", "reversible", "routed"}) {
    SCOPED_TRACE(kind);
    Transformer m(decode_config(kind), 3);
    const std::int64_t lengths[] = {5, 1, 9};
    std::vector<std::unique_ptr<GenerationState>> batched, alone;
    std::vector<GenerationState*> rows;
    std::vector<std::int32_t> next;
    for (std::int64_t i = 0; i < 3; ++i) {
      const auto prompt = random_prompt(lengths[i], 10 + i, m.vocab_size());
      for (auto* set : {&batched, &alone}) {
        set->push_back(m.new_generation_state());
        m.logits(row_tokens(prompt), set->back().get());
      }
      rows.push_back(batched.back().get());
      next.push_back(static_cast<std::int32_t>(7 * i + 2));
    }
    for (int step = 0; step < 6; ++step) {
      const Tensor out = m.logits_rows(next, rows);
      ASSERT_EQ(out.shape(), (Shape{3, m.vocab_size()}));
      for (std::int64_t i = 0; i < 3; ++i) {
        const Tensor one = m.logits(row_tokens({next[i]}), alone[i].get()).reshape({1, m.vocab_size()});
        ASSERT_EQ(max_abs_diff(out.slice(0, i, i + 1), one), 0.0f) << "step " << step << " row " << i;
        EXPECT_EQ(rows[i]->past_length(), lengths[i] + step + 1);
        next[i] = static_cast<std::int32_t>((next[i] * 5 + step + i) % m.vocab_size());
      }
    }
  }
}

TEST(ModelDecode, BatchedGenerationEqualsSequential) {
  mt::ScopedThreads two(2);
  Transformer m(decode_config("llama"), 4);
  std::vector<std::vector<std::int32_t>> prompts;
  for (std::int64_t i = 0; i < 5; ++i) prompts.push_back(random_prompt(1 + 3 * i, 20 + i, m.vocab_size()));
  for (float temperature : {0.0f, 0.9f}) {
    GenerateOptions g;
    g.max_new_tokens = 12;
    g.sampling.temperature = temperature;
    g.seed = 17;
    std::vector<std::vector<std::int32_t>> streamed(prompts.size());
    const BatchGenerateResult b =
        generate_batch(m, prompts, g, [&](std::int64_t i, std::int32_t t) { streamed[i].push_back(t); });
    ASSERT_EQ(b.tokens.size(), prompts.size());
    EXPECT_EQ(streamed, b.tokens);
    EXPECT_EQ(b.decode_tokens, 11 * 5);
    EXPECT_EQ(b.decode_step_seconds.size(), 11u);
    for (std::size_t i = 0; i < prompts.size(); ++i)
      EXPECT_EQ(b.tokens[i], generate(m, prompts[i], g).tokens) << "prompt " << i << " temperature " << temperature;
  }
}

// The GEMV path (a decode step of one row) against the full forward, with
// biases, GQA and the prompt fed one token at a time.
TEST(ModelDecode, GemvDecodeEqualsFullForward) {
  mt::ScopedThreads two(2);
  for (const std::string kind : {"llama", "learned", "window"}) {
    SCOPED_TRACE(kind);
    Transformer m(decode_config(kind), 5);
    mt::expect_generation_equals_full_forward(m, mt::random_tokens({2, 13}, 6, m.vocab_size()), 1, 2e-5f);
  }
}

// The switch that bench generate's baseline uses: GEMM for every size gives
// the same logits up to rounding.
TEST(ModelDecode, GemmBaselineAgreesWithTheGemvPath) {
  mt::ScopedThreads two(2);
  Transformer m(decode_config("llama"), 7);
  const auto prompt = random_prompt(6, 30, m.vocab_size());
  auto run = [&](std::int64_t max_rows) {
    const std::int64_t prev = gemv_max_rows();
    set_gemv_max_rows(max_rows);
    auto state = m.new_generation_state();
    m.logits(row_tokens(prompt), state.get());
    const Tensor step = m.logits(row_tokens({3}), state.get());
    set_gemv_max_rows(prev);
    return step;
  };
  const Tensor gemv_path = run(kGemvMaxRows), gemm_path = run(0);
  EXPECT_LE(max_abs_diff(gemv_path, gemm_path), 2e-5f);
  EXPECT_GT(max_abs_diff(gemm_path, Tensor::zeros(gemm_path.shape())), 0.1f);  // not trivially equal
}

TEST(ModelDecode, MisuseIsRefusedByName) {
  Transformer m(decode_config("llama"), 1);
  auto a = m.new_generation_state(), b = m.new_generation_state();
  GenerationOptions two;
  two.batch = 2;
  auto wide = m.new_generation_state(two);
  const std::vector<std::int32_t> tokens{1, 2};
  std::vector<GenerationState*> same{a.get(), a.get()}, mixed{a.get(), wide.get()}, one{a.get()};
  EXPECT_ERROR("row 1 shares its state with an earlier row", m.logits_rows(tokens, same));
  EXPECT_ERROR("the state of row 1 was made for batch 2", m.logits_rows(tokens, mixed));
  EXPECT_ERROR("2 tokens but 1 states", m.logits_rows(tokens, one));
  std::vector<GenerationState*> ok{a.get(), b.get()};
  EXPECT_ERROR("token id 99 of row 1 is out of range", m.logits_rows(std::vector<std::int32_t>{1, 99}, ok));
  GenerateOptions g;
  g.max_new_tokens = 4;
  EXPECT_ERROR("the prompt 1 is empty", generate_batch(m, {{1, 2}, {}}, g));
  EXPECT_ERROR("batched generation needs at least one prompt", generate_batch(m, {}, g));
  g.max_new_tokens = 64;
  EXPECT_ERROR("a prompt 0 of 2 tokens plus 64 new tokens needs 65 positions", generate_batch(m, {{1, 2}}, g));
}
