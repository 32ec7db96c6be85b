// Reversible residual blocks (src/nn/block/reversible_block.h): the
// backward's reconstructed inputs equal the forward's, and its gradients
// equal those of the same blocks run with every activation stored; a model's
// activation memory stays flat with depth while a standard model's grows; a
// reversible LM trains and generates exactly as its full forward; configs
// that cannot be reversible are refused by name. (Finite differences: the
// "reversible" kinds of test_model_transformer.cpp; PyTorch: the
// model_reversible_sandwich fixture.)
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>

#include "core/alloc.h"
#include "core/rng.h"
#include "model/transformer.h"
#include "nn/block/reversible_block.h"
#include "nn/mixer/mixer_options.h"
#include "nn/mixer/mixer_registry.h"
#include "../support/errors.h"
#include "../support/generation.h"
#include "../support/threads.h"
#include "../support/tiny_models.h"

using namespace mf;
namespace mt = mf::testing;

namespace {

Tensor random(const Shape& s, std::uint64_t seed, float scale = 1.0f) {
  Tensor t = Tensor::empty(s);
  fill_normal(t, seed, 0.0f, scale);
  return t;
}

// Three blocks of (token mixer, SwiGLU) with sandwich norms whose weights
// are not 1, built from the registry as a model builds them.
struct Blocks {
  static constexpr std::int64_t C = 16;
  ParamList params{11, 0.3};
  std::vector<std::unique_ptr<TokenMixer>> token;
  std::vector<std::unique_ptr<ChannelMixer>> channel;
  std::vector<BlockParams> p;

  explicit Blocks(const std::vector<std::string>& mixers) {
    for (std::size_t i = 0; i < mixers.size(); ++i) {
      params.set_prefix("layers." + std::to_string(i) + ".");
      MixerContext ctx;
      ctx.layer = static_cast<std::int64_t>(i);
      ctx.hidden_size = C;
      ctx.num_heads = 2;
      ctx.num_kv_heads = 1;
      ctx.head_dim = 8;
      ctx.intermediate_size = 24;
      ctx.max_position_embeddings = 64;
      ctx.sliding_window = 3;
      ctx.attention_impl = AttentionImpl::Flash;
      const TokenMixerEntry& te = token_mixer_entry(mixers[i]);
      ctx.options = parse_options(te.options, nlohmann::json(), "test: ", mixers[i]);
      token.push_back(te.make(ctx, params));
      const ChannelMixerEntry& ce = channel_mixer_entry("swiglu");
      ctx.options = parse_options(ce.options, nlohmann::json(), "test: ", "swiglu");
      channel.push_back(ce.make(ctx, params));
      BlockParams b;
      auto norm = [&](const std::string& name, std::uint64_t seed) {
        NormParams n;
        n.eps = 1e-5f;
        n.weight = params.add(name, {C}, ParamInit::Ones, false);
        Tensor w = random({C}, seed, 0.2f);
        for (std::int64_t k = 0; k < C; ++k) n.weight->value.data<float>()[k] += w.data<float>()[k];
        return n;
      };
      b.token_norms.in = norm("in", 100 + i);
      b.token_norms.out = norm("out", 200 + i);
      b.channel_norms.in = norm("ffn_in", 300 + i);
      b.channel_norms.out = norm("ffn_out", 400 + i);
      b.token = token.back().get();
      b.channel = channel.back().get();
      p.push_back(b);
    }
  }
  std::vector<Tensor> grads() const {
    std::vector<Tensor> g;
    for (const auto& q : params.all()) g.push_back(q->grad.clone());
    return g;
  }
  void zero_grads() {
    for (const auto& q : params.all()) q->grad.fill(0.0f);
  }
};

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor o = Tensor::empty(a.shape());
  for (std::int64_t i = 0; i < a.numel(); ++i) o.data<float>()[i] = a.data<float>()[i] + b.data<float>()[i];
  return o;
}

}  // namespace

// The same blocks run twice on the same inputs: once reversibly (nothing
// stored; the backward reconstructs), once with every branch's activations
// stored and the plain chain rule. Reconstructed inputs and every gradient
// agree to rounding.
TEST(Reversible, ReconstructsInputsAndMatchesStoredActivations) {
  mt::ScopedThreads one(1);
  Blocks blk({"full_attention", "sliding_attention", "full_attention"});
  MixerCall call;
  call.batch = 2;
  call.seq_len = 9;
  call.causal = true;
  const std::int64_t N = call.batch * call.seq_len, C = Blocks::C;
  const Tensor x0 = random({N, C}, 1), w1 = random({N, C}, 2), w2 = random({N, C}, 3);  // loss = <w1, Y1> + <w2, Y2>

  // Reversible forward, keeping every stream for the comparison only.
  std::vector<Tensor> s1 = {x0}, s2 = {x0};
  for (const BlockParams& b : blk.p) {
    Tensor y1, y2;
    reversible_block_forward(y1, y2, s1.back(), s2.back(), b, call);
    s1.push_back(y1);
    s2.push_back(y2);
  }
  blk.zero_grads();
  Tensor y1 = s1.back(), y2 = s2.back(), dy1 = w1, dy2 = w2;
  for (std::size_t k = blk.p.size(); k-- > 0;) {
    Tensor x1, x2, dx1, dx2;
    reversible_block_backward(x1, x2, dx1, dx2, y1, y2, dy1, dy2, blk.p[k], call);
    EXPECT_LE(max_abs_diff(x1, s1[k]), 2e-5f) << "block " << k << " X1";
    EXPECT_LE(max_abs_diff(x2, s2[k]), 2e-5f) << "block " << k << " X2";
    y1 = x1, y2 = x2, dy1 = dx1, dy2 = dx2;
  }
  const Tensor dx_rev = add(dy1, dy2);
  const std::vector<Tensor> g_rev = blk.grads();

  // Stored activations: every branch saved in the forward, the chain rule backward.
  struct Saved {
    SublayerSaved f_sub, g_sub;
    std::unique_ptr<MixerSaved> f, g;
    Tensor x2, y1;
  };
  std::vector<Saved> saved(blk.p.size());
  Tensor a = x0, b = x0;
  for (std::size_t k = 0; k < blk.p.size(); ++k) {
    Saved& s = saved[k];
    const BlockParams& bp = blk.p[k];
    s.x2 = b;
    const Tensor f = sublayer_branch_forward(s.f_sub, b, bp.token_norms, [&](const Tensor& out, const Tensor& in) {
      s.f = bp.token->forward(out, in, call, true);
    });
    s.y1 = add(a, f);
    const Tensor g = sublayer_branch_forward(s.g_sub, s.y1, bp.channel_norms,
                                             [&](const Tensor& out, const Tensor& in) { s.g = bp.channel->forward(out, in, true); });
    a = s.y1;
    b = add(b, g);
    EXPECT_EQ(max_abs_diff(a, s1[k + 1]), 0.0f);  // the same forward, bit for bit
    EXPECT_EQ(max_abs_diff(b, s2[k + 1]), 0.0f);
  }
  blk.zero_grads();
  dy1 = w1, dy2 = w2;
  for (std::size_t k = blk.p.size(); k-- > 0;) {
    Saved& s = saved[k];
    const BlockParams& bp = blk.p[k];
    const Tensor dg = sublayer_branch_backward(dy2, s.y1, s.g_sub, bp.channel_norms,
                                               [&](const Tensor& din, const Tensor& dout, const Tensor& in) {
                                                 bp.channel->backward(din, dout, in, *s.g);
                                               });
    const Tensor dx1 = add(dy1, dg);
    const Tensor df = sublayer_branch_backward(dx1, s.x2, s.f_sub, bp.token_norms,
                                               [&](const Tensor& din, const Tensor& dout, const Tensor& in) {
                                                 bp.token->backward(din, dout, in, *s.f, call);
                                               });
    dy2 = add(dy2, df);
    dy1 = dx1;
  }
  const Tensor dx_stored = add(dy1, dy2);
  const std::vector<Tensor> g_stored = blk.grads();
  EXPECT_LE(max_abs_diff(dx_rev, dx_stored), 1e-4f);
  for (std::size_t i = 0; i < g_rev.size(); ++i) {
    float scale = 0;
    for (std::int64_t k = 0; k < g_stored[i].numel(); ++k) scale = std::max(scale, std::abs(g_stored[i].data<float>()[k]));
    EXPECT_GT(scale, 0.0f) << blk.params.all()[i]->name << " got no gradient";
    EXPECT_LE(max_abs_diff(g_rev[i], g_stored[i]), 1e-4f * std::max(1.0f, scale)) << blk.params.all()[i]->name;
  }
}

// Activation memory of a training step (peak allocated during loss with
// gradients, above what was allocated before) for 2, 4, 8 and 16 layers:
// flat for reversible blocks, linear for standard ones; at 16 layers the
// reversible model needs less than a quarter of the standard one's.
TEST(Reversible, ActivationMemoryIsFlatInDepth) {
  mt::ScopedThreads one(1);
  const Tensor tok = mt::random_tokens({2, 128}, 1, 23), tgt = mt::random_tokens({2, 128}, 2, 23);
  auto peak = [&](std::int64_t layers, bool reversible) {
    ModelConfig c = mt::tiny_modformer_config(AttentionImpl::Flash);
    c.num_hidden_layers = layers;
    c.hidden_size = 64;
    c.intermediate_size = 192;
    c.max_position_embeddings = 128;
    c.reversible = reversible;
    Transformer m(c, 1);
    m.loss(tok, tgt, true);  // warm: first-call allocations of the kernels
    const std::int64_t base = memory_stats().current_bytes;
    reset_peak_memory();
    m.loss(tok, tgt, true);
    return memory_stats().peak_bytes - base;
  };
  std::int64_t rev[4], std_[4];
  const std::int64_t depths[4] = {2, 4, 8, 16};
  for (int i = 0; i < 4; ++i) {
    rev[i] = peak(depths[i], true);
    std_[i] = peak(depths[i], false);
    std::printf("[ measured ] %2lld layers: activation peak %8lld bytes reversible, %8lld standard\n",
                static_cast<long long>(depths[i]), static_cast<long long>(rev[i]), static_cast<long long>(std_[i]));
  }
  EXPECT_LE(rev[3], rev[0] + rev[0] / 10) << "reversible memory grows with depth";
  EXPECT_GE(std_[3] - std_[2], (std_[2] - std_[1]) * 3 / 2) << "standard memory should grow linearly";
  EXPECT_LT(rev[3] * 4, std_[3]);
}

TEST(Reversible, LmTrainsAndGeneratesLikeItsFullForward) {
  mt::ScopedThreads one(1);
  ModelConfig c = mt::tiny_modformer_config(AttentionImpl::Flash);
  c.reversible = true;
  c.num_hidden_layers = 3;
  c.sliding_window = 4;
  c.layer_types = {"full_attention", "sliding_attention", "full_attention"};
  c.initializer_range = 0.05;
  validate_config(c, "test");
  Transformer m(c, 3);
  // Learn a fixed sequence: the loss must fall far.
  const Tensor tok = mt::random_tokens({2, 17}, 4, 23);
  const Tensor in = tok.slice(1, 0, 16).contiguous(), tgt = tok.slice(1, 1, 17).contiguous();
  const std::vector<Parameter*> params = m.parameters();
  const double first = m.loss(in, tgt, false);
  for (int step = 0; step < 60; ++step) {
    for (Parameter* p : params) p->grad.fill(0.0f);
    m.loss(in, tgt, true);
    for (Parameter* p : params)
      for (std::int64_t k = 0; k < p->value.numel(); ++k) p->value.data<float>()[k] -= 0.5f * p->grad.data<float>()[k];
  }
  const double last = m.loss(in, tgt, false);
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;

  mt::expect_generation_equals_full_forward(m, in, 5, 1e-4f);
}

TEST(Reversible, RefusesWhatCannotBeReversible) {
  ModelConfig c = mt::tiny_modformer_config(AttentionImpl::Flash);
  c.reversible = true;
  c.norm_placement = NormPlacement::Post;
  EXPECT_NE(mt::error_of([&] { validate_config(c, "cfg"); }).find("reversible blocks need norm_placement"),
            std::string::npos);
  c.norm_placement = NormPlacement::Pre;
  c.gradient_checkpointing = true;
  EXPECT_NE(mt::error_of([&] { validate_config(c, "cfg"); }).find("field 'gradient_checkpointing'"),
            std::string::npos);
  c.gradient_checkpointing = false;
  Transformer m(c, 1);
  EXPECT_NE(mt::error_of([&] { m.set_gradient_checkpointing(true); }).find("reversible"), std::string::npos);
  ModelConfig l = mt::tiny_llama_config();
  l.reversible = true;
  EXPECT_NE(mt::error_of([&] { validate_config(l, "cfg"); }).find("model_type \"llama\" requires ordinary residual"),
            std::string::npos);
  // The field round-trips through config.json.
  const ModelConfig back = config_from_json(config_to_json(c), "rt");
  EXPECT_TRUE(back.reversible);
}

// The Reformer: LSH attention in reversible blocks with a chunked FFN. It
// trains, its gradients match finite differences, and its cached generation
// equals the full forward (one LSH chunk covers the sequence, where the LSH
// generation rule is the full causal forward).
TEST(Reversible, ReformerLmTrainsAndGenerates) {
  mt::ScopedThreads one(1);
  ModelConfig c = mt::tiny_modformer_config(AttentionImpl::Flash);
  c.reversible = true;
  c.token_mixer = "lsh_attention";
  c.mixer_options["lsh_attention"] =
      parse_options(token_mixer_entry("lsh_attention").options,
                    nlohmann::json{{"n_hashes", 2}, {"n_buckets", 4}, {"chunk_length", 32}}, "test: ", "lsh_attention");
  c.position = PositionKind::Learned;
  c.ffn_chunk_size = 5;
  c.num_key_value_heads = c.num_attention_heads;
  c.initializer_range = 0.05;
  validate_config(c, "test");
  Transformer m(c, 3);
  const Tensor tok = mt::random_tokens({2, 17}, 4, 23);
  const Tensor in = tok.slice(1, 0, 16).contiguous(), tgt = tok.slice(1, 1, 17).contiguous();
  std::vector<Parameter*> params = m.parameters();
  // Gradients vs central differences on a few entries of every trainable tensor.
  for (Parameter* p : params) p->grad.fill(0.0f);
  m.loss(in, tgt, true);
  for (Parameter* p : params) {
    if (!p->trainable) continue;
    for (std::int64_t k : {std::int64_t{0}, p->value.numel() / 2, p->value.numel() - 1}) {
      float& w = p->value.data<float>()[k];
      const float saved = w, h = 2e-2f;
      w = saved + h;
      const double up = m.loss(in, tgt, false);
      w = saved - h;
      const double down = m.loss(in, tgt, false);
      w = saved;
      const double fd = (up - down) / (2 * h), an = p->grad.data<float>()[k];
      EXPECT_NEAR(an, fd, 2e-3 + 2e-2 * std::abs(fd)) << p->name << "[" << k << "]";
    }
  }
  const double first = m.loss(in, tgt, false);
  for (int step = 0; step < 60; ++step) {
    for (Parameter* p : params) p->grad.fill(0.0f);
    m.loss(in, tgt, true);
    for (Parameter* p : params)
      if (p->trainable)
        for (std::int64_t k = 0; k < p->value.numel(); ++k) p->value.data<float>()[k] -= 0.5f * p->grad.data<float>()[k];
  }
  const double last = m.loss(in, tgt, false);
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
  mt::expect_generation_equals_full_forward(m, in, 6, 1e-4f);
}
