// Mixture of Depths (src/nn/block/mixture_of_depths.h): the routed block
// against its plain twin and against the full block under a key mask (routed
// tokens keep their positions), finite differences for x, the router and the
// block's parameters and for the predictor's auxiliary loss, PyTorch
// fixtures (tools/fixtures/mod.py), the model with capacity 1 and unit
// router weights equal to the unrouted model, the predictor driving
// generation, config errors, and a small MoD language model that trains.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <set>

#include "core/rng.h"
#include "model/config.h"
#include "model/transformer.h"
#include "nn/block/mixture_of_depths.h"
#include "nn/mixer/mixer_registry.h"
#include "testing/gradcheck.h"
#include "../support/close.h"
#include "../support/errors.h"
#include "../support/fixtures.h"
#include "../support/mixer_checks.h"
#include "../support/parameters.h"
#include "../support/threads.h"
#include "../support/tiny_models.h"

using namespace mf;
namespace mt = mf::testing;

namespace {

// A store that hands out given tensors by name (fixtures), as new parameters.
struct NamedParamStore final : ParamStore {
  std::map<std::string, Tensor> values;
  std::vector<std::unique_ptr<Parameter>> owned;
  Parameter* make(const std::string& name, const Shape& shape) {
    const auto it = values.find(name);
    MF_CHECK(it != values.end(), "[test] no tensor '", name, "'");
    Tensor v = it->second.contiguous().clone();
    v.check_shape(shape, "test", name.c_str());
    owned.push_back(std::make_unique<Parameter>(name, v, true));
    return owned.back().get();
  }
  Parameter* add(const std::string& name, const Shape& shape, ParamInit, bool) override { return make(name, shape); }
  Parameter* add_custom(const std::string& name, const Shape& shape, const ParamInitFn&, bool) override {
    return make(name, shape);
  }
  Parameter* shared(const std::string& name, const Shape& shape, const ParamInitFn&, bool) override {
    return make(name, shape);
  }
};

// The mixers' context of the test blocks: GQA 4:2 heads of 8, SwiGLU, RoPE.
MixerContext block_context(std::int64_t c, std::int64_t i, RopeTable* rope, AttentionImpl impl) {
  MixerContext ctx;
  ctx.hidden_size = c;
  ctx.num_heads = 4;
  ctx.num_kv_heads = 2;
  ctx.head_dim = 8;
  ctx.intermediate_size = i;
  ctx.attention_impl = impl;
  ctx.hidden_act = Activation::SiLU;
  ctx.rope = rope;
  return ctx;
}

// A routed Llama block (pre-RMSNorm attention with RoPE and GQA 4:2, pre-RMSNorm
// SwiGLU) with its router and predictor, every parameter random.
struct RoutedBlock {
  static constexpr std::int64_t C = 16, D = 8, I = 24;  // 4 query heads, 2 KV heads (block_context)
  mt::OwnedParameters ps;
  std::unique_ptr<RopeTable> rope;
  std::unique_ptr<TokenMixer> token;
  std::unique_ptr<ChannelMixer> channel;
  BlockParams p;
  ModParams mod;

  NormParams norm() {
    NormParams n;
    n.eps = 1e-5f;
    n.weight = ps.make("norm.weight", {C}, 1.0f, 0.2f);
    return n;
  }
  explicit RoutedBlock(ModOptions opt, AttentionImpl impl = AttentionImpl::Dense, float router_scale = 1.0f,
                       std::uint64_t seed = 5) {
    ps.seed = seed;
    mt::RandomParamStore store(ps, 0.4f);
    RopeConfig rc;
    rc.rotary_dim = D;
    rc.theta = 100.0;
    rope = std::make_unique<RopeTable>(rc, 64);
    const MixerContext ctx = block_context(C, I, rope.get(), impl);
    p.token_norms.in = norm();
    token = token_mixer_entry("full_attention").make(ctx, store);
    p.channel_norms.in = norm();
    channel = channel_mixer_entry("swiglu").make(ctx, store);
    p.token = token.get();
    p.channel = channel.get();
    mod = mod_make_params(opt, C, store);
    for (std::int64_t c = 0; c < C; ++c) mod.router_w->value.data<float>()[c] *= router_scale / 0.4f;
  }
};

MixerCall call_of(std::int64_t b, std::int64_t l, bool causal = true) {
  MixerCall c;
  c.batch = b;
  c.seq_len = l;
  c.causal = causal;
  return c;
}

ModOptions options(double capacity, RouterActivation act = RouterActivation::Linear, bool bias = false) {
  ModOptions o;
  o.capacity = capacity;
  o.router_activation = act;
  o.router_bias = bias;
  o.predictor_hidden = 8;
  o.predictor_loss_coef = 0.5;
  return o;
}

// x [B*L, C] whose router logits (w_r · x) sit on a grid of spacing >= 0.3
// per row, so that perturbations of finite differences never change the
// selection: the component of x along w_r is replaced by a shuffled grid.
Tensor separated_input(const RoutedBlock& f, std::int64_t B, std::int64_t L, std::uint64_t seed) {
  const std::int64_t C = RoutedBlock::C;
  Tensor x = randn({B * L, C}, seed);
  const float* w = f.mod.router_w->value.data<float>();
  double ww = 0;
  for (std::int64_t c = 0; c < C; ++c) ww += double(w[c]) * w[c];
  Rng rng(seed + 1);
  for (std::int64_t b = 0; b < B; ++b) {
    std::vector<std::int64_t> slot(static_cast<std::size_t>(L));
    for (std::int64_t l = 0; l < L; ++l) slot[static_cast<std::size_t>(l)] = l;
    for (std::int64_t l = L - 1; l > 0; --l) std::swap(slot[static_cast<std::size_t>(l)], slot[rng.below(l + 1)]);
    for (std::int64_t l = 0; l < L; ++l) {
      float* row = x.data<float>() + (b * L + l) * C;
      double along = 0;
      for (std::int64_t c = 0; c < C; ++c) along += double(row[c]) * w[c];
      const double want = 0.3 * (static_cast<double>(slot[static_cast<std::size_t>(l)]) - 0.5 * L);
      for (std::int64_t c = 0; c < C; ++c) row[c] += static_cast<float>((want - along) * w[c] / ww);
    }
  }
  return x;
}

}  // namespace

TEST(MixtureOfDepths, CapacityTokens) {
  EXPECT_EQ(mod_capacity_tokens(0.125, 256), 32);
  EXPECT_EQ(mod_capacity_tokens(0.1, 30), 3);  // not 4 from 3.0000000000000004
  EXPECT_EQ(mod_capacity_tokens(0.125, 1), 1);
  EXPECT_EQ(mod_capacity_tokens(0.3, 11), 4);
  EXPECT_EQ(mod_capacity_tokens(1.0, 7), 7);
  EXPECT_ERROR("option 'capacity' must be in (0, 1]", mod_capacity_tokens(0.0, 8));
}

// Fast == plain twin on random and awkward shapes, both kernels, both router forms.
TEST(MixtureOfDepths, ForwardMatchesReference) {
  struct Case {
    std::int64_t B, L;
    double capacity;
    RouterActivation act;
    bool bias, causal, padded;
    AttentionImpl impl;
  };
  const Case cases[] = {
      {2, 13, 0.25, RouterActivation::Linear, false, true, false, AttentionImpl::Dense},
      {3, 37, 0.125, RouterActivation::Sigmoid, true, true, false, AttentionImpl::Flash},
      {1, 1, 0.125, RouterActivation::Linear, true, true, false, AttentionImpl::Flash},
      {2, 9, 1.0, RouterActivation::Linear, false, true, false, AttentionImpl::Dense},
      {3, 10, 0.5, RouterActivation::Sigmoid, false, false, true, AttentionImpl::Dense},
      {2, 65, 0.2, RouterActivation::Linear, false, true, false, AttentionImpl::Flash},
  };
  for (const Case& k : cases) {
    RoutedBlock f(options(k.capacity, k.act, k.bias), k.impl);
    MixerCall call = call_of(k.B, k.L, k.causal);
    if (k.padded) {
      call.key_padding_mask = Tensor::empty({k.B, k.L}, DType::I32);
      for (std::int64_t i = 0; i < k.B * k.L; ++i) call.key_padding_mask.data<std::int32_t>()[i] = (i % 4) != 1;
    }
    const Tensor x = randn({k.B * k.L, RoutedBlock::C}, 7);
    ModSaved s;
    const Tensor fast = mod_forward(s, x, f.p, f.mod, call, true);
    const Tensor ref = reference::mod_forward(x, f.p, f.mod, call);
    EXPECT_TRUE(mt::close(fast, ref, 2e-5, "B " + std::to_string(k.B) + " L " + std::to_string(k.L)));
    EXPECT_EQ(s.k, mod_capacity_tokens(k.capacity, k.L));
    // Unrouted rows pass through unchanged, bit for bit.
    std::set<std::int64_t> routed;
    for (std::int64_t j = 0; j < k.B * s.k; ++j) routed.insert((j / s.k) * k.L + s.selected.data<std::int32_t>()[j]);
    for (std::int64_t i = 0; i < k.B * k.L; ++i) {
      if (routed.count(i)) continue;
      for (std::int64_t c = 0; c < RoutedBlock::C; ++c)
        ASSERT_EQ(fast.data<float>()[i * RoutedBlock::C + c], x.data<float>()[i * RoutedBlock::C + c]);
    }
    if (k.padded) {  // padding tokens are routed only when real ones run out
      for (std::int64_t j = 0; j < k.B * s.k; ++j)
        EXPECT_NE(call.key_padding_mask.data<std::int32_t>()[(j / s.k) * k.L + s.selected.data<std::int32_t>()[j]], 0);
    }
  }
}

TEST(MixtureOfDepths, TiesGoToTheEarlierPosition) {
  RoutedBlock f(options(0.25));
  f.mod.router_w->value.fill(0.0f);  // every logit 0
  const Tensor x = randn({2 * 8, RoutedBlock::C}, 3);
  ModSaved s;
  mod_forward(s, x, f.p, f.mod, call_of(2, 8), true);
  ASSERT_EQ(s.k, 2);
  for (std::int64_t b = 0; b < 2; ++b) {
    EXPECT_EQ(s.selected.data<std::int32_t>()[b * 2], 0);
    EXPECT_EQ(s.selected.data<std::int32_t>()[b * 2 + 1], 1);
  }
}

// Routed tokens keep their positions: the block on the gathered tokens equals
// the block on the whole sequence with the unrouted tokens masked out as keys
// (norms and the FFN are per token), at the routed rows. A block that saw the
// routed tokens at positions 0..k-1 would differ (RoPE is relative, but the
// gaps between routed tokens change the angles).
TEST(MixtureOfDepths, RoutedTokensKeepTheirPositions) {
  const std::int64_t B = 2, L = 12, C = RoutedBlock::C;
  RoutedBlock f(options(0.25, RouterActivation::Linear, true));
  f.mod.router_b->value.fill(0.0f);
  const Tensor x = randn({B * L, C}, 9);
  ModSaved s;
  const MixerCall call = call_of(B, L);
  const Tensor out = mod_forward(s, x, f.p, f.mod, call, true);
  MixerCall masked = call_of(B, L);
  masked.key_padding_mask = Tensor::zeros({B, L}, DType::I32);
  for (std::int64_t j = 0; j < B * s.k; ++j)
    masked.key_padding_mask.data<std::int32_t>()[(j / s.k) * L + s.selected.data<std::int32_t>()[j]] = 1;
  BlockSaved bs;
  const Tensor full = block_forward(bs, x, f.p, masked, false);
  for (std::int64_t j = 0; j < B * s.k; ++j) {
    const std::int64_t i = (j / s.k) * L + s.selected.data<std::int32_t>()[j];
    const float g = s.router.data<float>()[i];
    for (std::int64_t c = 0; c < C; ++c) {
      const float want = x.data<float>()[i * C + c] + g * (full.data<float>()[i * C + c] - x.data<float>()[i * C + c]);
      EXPECT_NEAR(out.data<float>()[i * C + c], want, 2e-5f * (1 + std::fabs(want)));
    }
  }
}

// d/dx, d/d(router) and d/d(block parameters) vs finite differences, with
// router logits spread apart so that no perturbation changes the selection.
TEST(MixtureOfDepths, BackwardMatchesFiniteDifferences) {
  mt::ScopedThreads one(1);
  for (RouterActivation act : {RouterActivation::Linear, RouterActivation::Sigmoid}) {
    RoutedBlock f(options(0.4, act, true), AttentionImpl::Dense, 1.0f, 13);
    f.mod.opt.predictor = false;  // the predictor's own check is below
    f.mod.pred_w1 = f.mod.pred_b1 = f.mod.pred_w2 = f.mod.pred_b2 = nullptr;
    const std::int64_t B = 2, L = 7, C = RoutedBlock::C;
    const MixerCall call = call_of(B, L);
    Tensor x = separated_input(f, B, L, 21);
    const Tensor w = randn({B * L, C}, 22);
    auto loss = [&] {
      ModSaved s;
      return mt::weighted_sum(mod_forward(s, x, f.p, f.mod, call, false), w);
    };
    ModSaved s;
    mod_forward(s, x, f.p, f.mod, call, true);
    const Tensor dx = mod_backward(w, x, s, f.p, f.mod, call);
    std::vector<Tensor> in, g;
    for (const auto& q : f.ps.owned) {
      if (q->name.rfind("mod_predictor", 0) == 0) continue;
      in.push_back(q->value);
      g.push_back(q->grad);
    }
    in.push_back(x);
    g.push_back(dx);
    mt::GradcheckOptions opt;
    opt.max_checks_per_input = 16;
    opt.atol = 3e-3;
    opt.rtol = 1e-2;
    const auto r = mt::gradcheck(loss, in, g, opt);
    EXPECT_TRUE(r.ok) << r.report;
    EXPECT_GT(r.checked, 100);
    // The router really gets a gradient.
    double router_grad = 0;
    for (std::int64_t c = 0; c < C; ++c) router_grad += std::fabs(f.mod.router_w->grad.data<float>()[c]);
    EXPECT_GT(router_grad, 1e-3);
  }
}

// The predictor's BCE: its gradient (added by the backward) vs finite
// differences of the auxiliary loss, and nothing of it reaches x.
TEST(MixtureOfDepths, PredictorLossMatchesFiniteDifferences) {
  mt::ScopedThreads one(1);
  RoutedBlock f(options(0.4));
  const std::int64_t B = 2, L = 9, C = RoutedBlock::C;
  const MixerCall call = call_of(B, L);
  Tensor x = separated_input(f, B, L, 31);
  auto loss = [&] {
    ModSaved s;
    mod_forward(s, x, f.p, f.mod, call, true);
    return s.aux_loss;
  };
  ModSaved s;
  mod_forward(s, x, f.p, f.mod, call, true);
  EXPECT_GT(s.aux_loss, 0);
  const Tensor dx = mod_backward(Tensor::zeros({B * L, C}), x, s, f.p, f.mod, call);
  for (float v : dx.to_vector()) ASSERT_EQ(v, 0.0f);  // stop-gradient: zero dy gives zero dx
  const auto r = mt::gradcheck(loss, {f.mod.pred_w1->value, f.mod.pred_b1->value, f.mod.pred_w2->value,
                                      f.mod.pred_b2->value},
                               {f.mod.pred_w1->grad, f.mod.pred_b1->grad, f.mod.pred_w2->grad, f.mod.pred_b2->grad});
  EXPECT_TRUE(r.ok) << r.report;
}

// Bits do not depend on the thread count.
TEST(MixtureOfDepths, DeterministicAcrossThreadCounts) {
  auto run = [](int threads) {
    mt::ScopedThreads t(threads);
    RoutedBlock f(options(0.3, RouterActivation::Sigmoid, true), AttentionImpl::Flash);
    const Tensor x = randn({3 * 40, RoutedBlock::C}, 41), w = randn({3 * 40, RoutedBlock::C}, 42);
    ModSaved s;
    const Tensor y = mod_forward(s, x, f.p, f.mod, call_of(3, 40), true);
    const Tensor dx = mod_backward(w, x, s, f.p, f.mod, call_of(3, 40));
    std::vector<Tensor> all = {y, dx};
    for (const Tensor& g : f.ps.grads()) all.push_back(g);
    return mt::all_values(all);
  };
  EXPECT_EQ(run(1), run(2));
}

// Outputs, dx, the auxiliary loss and every gradient vs PyTorch.
TEST(MixtureOfDepths, MatchesPyTorchFixtures) {
  const std::vector<std::string> names = {"mod_linear_b2_l11", "mod_linear_l1", "mod_sigmoid_bias_b3_l7"};
  mt::expect_fixture_list_covers("mod_", names);
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    const SafetensorsContents file = mt::load_fixture(name);
    const auto opt_of = [&](const char* o) { return mt::fixture_option(file, o); };
    const std::int64_t B = opt_of("batch"), L = opt_of("seq_len"), C = RoutedBlock::C;
    NamedParamStore store;
    for (const auto& [k, v] : file.tensors) store.values[k] = v;
    RopeConfig rc;
    rc.rotary_dim = RoutedBlock::D;
    RopeTable rope(rc, 64);
    const MixerContext ctx = block_context(C, RoutedBlock::I, &rope, AttentionImpl::Dense);
    BlockParams p;
    auto norm = [&](const std::string& n) {
      NormParams q;
      q.eps = 1e-5f;
      q.weight = store.add(n + ".weight", {C}, ParamInit::Ones, false);
      return q;
    };
    p.token_norms.in = norm("input_layernorm");
    auto token = token_mixer_entry("full_attention").make(ctx, store);
    p.channel_norms.in = norm("post_attention_layernorm");
    auto channel = channel_mixer_entry("swiglu").make(ctx, store);
    p.token = token.get();
    p.channel = channel.get();
    ModOptions o;
    o.capacity = file.tensors.at("capacity").to_vector()[0];
    o.router_activation = opt_of("sigmoid") ? RouterActivation::Sigmoid : RouterActivation::Linear;
    o.router_bias = file.tensors.count("mod_router.bias") > 0;
    o.predictor_hidden = opt_of("predictor_hidden");
    o.predictor_loss_coef = file.tensors.at("loss_coef").to_vector()[0];
    const ModParams mod = mod_make_params(o, C, store);

    const Tensor x = file.tensors.at("x").contiguous();
    const MixerCall call = call_of(B, L);
    ModSaved s;
    const Tensor y = mod_forward(s, x, p, mod, call, true);
    EXPECT_EQ(s.selected.to(DType::F32).to_vector(), file.tensors.at("selected").to(DType::F32).to_vector());
    EXPECT_NEAR(s.aux_loss, file.tensors.at("aux_loss").to_vector()[0], 1e-5);
    const Tensor dx = mod_backward(file.tensors.at("dy").contiguous(), x, s, p, mod, call);
    EXPECT_TRUE(mt::close(y, file.tensors.at("y"), 1e-5, "y", 1.0));
    EXPECT_TRUE(mt::close(dx, file.tensors.at("dx"), 2e-5, "dx", 1.0));
    for (const auto& q : store.owned)
      EXPECT_TRUE(mt::close(q->grad, file.tensors.at("grad_" + q->name), 2e-5, "grad_" + q->name, 1.0));
  }
}

namespace {

ModelConfig mod_model_config(double capacity) {
  ModelConfig c = mt::tiny_modformer_config(AttentionImpl::Flash);
  c.num_hidden_layers = 3;
  c.mixture_of_depths = parse_options(mod_option_schema(),
                                      {{"capacity", capacity}, {"every", 2}, {"router_bias", true},
                                       {"predictor_hidden", 16}},
                                      "test ", "mixture_of_depths");
  validate_config(c, "test");
  return c;
}

// Copies every parameter of `from` that `to` has under the same name.
void copy_shared_parameters(Transformer& to, Transformer& from) {
  for (Parameter* q : from.parameters())
    if (Parameter* t = to.find_parameter(q->name)) t->value.copy_from(q->value);
}

void set_router(Transformer& m, std::int64_t layer, float weight, float bias) {
  const std::string pre = "model.layers." + std::to_string(layer) + ".";
  m.find_parameter(pre + "mod_router.weight")->value.fill(weight);
  m.find_parameter(pre + "mod_router.bias")->value.fill(bias);
}

// An unrouted 3-layer model and the same model with layer 1 routed at
// `capacity`, sharing every parameter, with the router's weight forced to 1
// (w_r = 0, b_r = 1).
struct UnitRouterPair {
  Transformer base, routed;
  static ModelConfig plain() {
    ModelConfig c = mt::tiny_modformer_config(AttentionImpl::Flash);
    c.num_hidden_layers = 3;
    return c;
  }
  explicit UnitRouterPair(double capacity) : base(plain(), 4), routed(mod_model_config(capacity), 4) {
    copy_shared_parameters(routed, base);
    set_router(routed, 1, 0.0f, 1.0f);
  }
};

}  // namespace

// Capacity 1 and router weights forced to 1 (w_r = 0, b_r = 1): the routed
// model is the unrouted one, in logits, loss and every shared gradient.
TEST(MixtureOfDepths, FullCapacityUnitRouterEqualsUnroutedModel) {
  mt::ScopedThreads one(1);
  UnitRouterPair pair(1.0);
  Transformer &base = pair.base, &routed = pair.routed;
  EXPECT_FALSE(routed.routed_layer(0));
  EXPECT_TRUE(routed.routed_layer(1));
  EXPECT_FALSE(routed.routed_layer(2));
  const Tensor tok = mt::random_tokens({2, 11}, 5, 23), tgt = mt::random_tokens({2, 11}, 6, 23);
  EXPECT_TRUE(mt::close(routed.logits(tok), base.logits(tok), 1e-6, "logits"));
  const double a = base.loss(tok, tgt, true), b = routed.loss(tok, tgt, true);
  EXPECT_NEAR(a, b, 1e-6);
  EXPECT_TRUE(routed.has_aux_loss());
  EXPECT_GT(routed.aux_loss(), 0);
  for (Parameter* q : base.parameters())
    EXPECT_TRUE(mt::close(routed.find_parameter(q->name)->grad, q->grad, 1e-5, q->name, 1e-3));
  // Gradient checkpointing recomputes the routed block: the same gradients, bit for bit.
  std::vector<std::vector<float>> grads;
  for (bool ckpt : {false, true}) {
    Transformer m(mod_model_config(0.5), 8);
    m.set_gradient_checkpointing(ckpt);
    m.loss(tok, tgt, true);
    std::vector<float> all;
    for (Parameter* q : m.parameters()) {
      const auto v = q->grad.to_vector();
      all.insert(all.end(), v.begin(), v.end());
    }
    grads.push_back(all);
  }
  EXPECT_EQ(grads[0], grads[1]);
}

// Generation routes by the predictor: with its bias forced large every token
// goes through the routed block (= the unrouted model when the router
// weight is 1), forced very negative none does (= the model whose routed
// block adds nothing, router weight 0); a prefill equals one-token steps.
TEST(MixtureOfDepths, PredictorDrivesGeneration) {
  mt::ScopedThreads one(1);
  UnitRouterPair pair(0.25);
  Transformer &base = pair.base, &routed = pair.routed;
  Parameter* pred_bias = routed.find_parameter("model.layers.1.mod_predictor.fc2.bias");
  const Tensor tok = mt::random_tokens({2, 10}, 7, 23);
  GenerationOptions go;
  go.batch = 2;
  auto generate = [&](Transformer& m, std::int64_t prefill) {
    auto state = m.new_generation_state(go);
    std::vector<Tensor> parts = {m.logits(tok.slice(1, 0, prefill).contiguous(), state.get())};
    for (std::int64_t t = prefill; t < tok.size(1); ++t)
      parts.push_back(m.logits(tok.slice(1, t, t + 1).contiguous(), state.get()));
    std::vector<float> all;
    for (const Tensor& p : parts) {
      const auto v = p.to_vector();
      all.insert(all.end(), v.begin(), v.end());
    }
    return Tensor::from_vector({2 * 10 * 23}, all);
  };
  // [B, L, V] logits in generate()'s order: the prefill's [B, P, V], then each step's [B, 1, V].
  auto in_generate_order = [&](const Tensor& logits, std::int64_t prefill) {
    std::vector<float> all;
    const auto v = logits.slice(1, 0, prefill).contiguous().to_vector();
    all.insert(all.end(), v.begin(), v.end());
    for (std::int64_t t = prefill; t < tok.size(1); ++t) {
      const auto s = logits.slice(1, t, t + 1).contiguous().to_vector();
      all.insert(all.end(), s.begin(), s.end());
    }
    return Tensor::from_vector({2 * 10 * 23}, all);
  };

  pred_bias->value.fill(50.0f);  // always routed
  EXPECT_TRUE(mt::close(generate(routed, 4), in_generate_order(base.logits(tok), 4), 2e-5, "always routed"));

  pred_bias->value.fill(-50.0f);  // never routed
  Transformer skipped(mod_model_config(0.25), 4);
  copy_shared_parameters(skipped, routed);
  set_router(skipped, 1, 0.0f, 0.0f);  // the routed block's update weighs 0
  EXPECT_TRUE(mt::close(generate(routed, 4), in_generate_order(skipped.logits(tok), 4), 2e-5, "never routed"));
  EXPECT_FALSE(mt::close(generate(routed, 4), in_generate_order(base.logits(tok), 4), 2e-5, "differs"));

  // A predictor that routes some tokens: a prefill of everything equals a
  // prefill of 3 and one-token steps (skipped tokens leave no KV entry).
  pred_bias->value.fill(0.0f);
  set_router(routed, 1, 0.3f, 0.5f);
  Parameter* pred_w = routed.find_parameter("model.layers.1.mod_predictor.fc2.weight");
  for (std::int64_t i = 0; i < pred_w->value.numel(); ++i) pred_w->value.data<float>()[i] *= 20.0f;
  auto state = routed.new_generation_state(go);
  const Tensor once = routed.logits(tok, state.get());
  EXPECT_TRUE(mt::close(generate(routed, 3), in_generate_order(once, 3), 2e-5, "prefill vs steps"));
}

TEST(MixtureOfDepths, ConfigErrorsNameTheField) {
  ModelConfig c = mod_model_config(0.125);
  const ModelConfig back = config_from_json(config_to_json(c), "rt");
  EXPECT_EQ(back.mixture_of_depths, c.mixture_of_depths);
  EXPECT_ERROR("field 'mixture_of_depths.capacity'",
               config_from_json(nlohmann::json::parse(R"({"model_type": "modformer", "vocab_size": 23,
                 "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "mixture_of_depths": {"capacity": 0}})"),
                                "cfg"));
  EXPECT_ERROR("field 'mixture_of_depths.capcity'",
               config_from_json(nlohmann::json::parse(R"({"model_type": "modformer", "vocab_size": 23,
                 "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "mixture_of_depths": {"capcity": 0.5}})"),
                                "cfg"));
  ModelConfig e = c;
  e.mixture_of_depths["every"] = 4;
  EXPECT_ERROR("routes no layer", validate_config(e, "cfg"));
  ModelConfig a = c;
  a.position = PositionKind::ALiBi;
  EXPECT_ERROR("ALiBi distances count rows", validate_config(a, "cfg"));
  ModelConfig w = c;
  w.sliding_window = 4;
  w.layer_types = {"full_attention", "sliding_attention", "full_attention"};
  EXPECT_ERROR("layer 1 is routed but is a sliding_attention layer", validate_config(w, "cfg"));
  ModelConfig r = c;
  r.reversible = true;
  EXPECT_ERROR("routed blocks cannot be reversible", validate_config(r, "cfg"));
  ModelConfig l = c;
  l.model_type = "llama";
  EXPECT_ERROR("model_type \"llama\" requires unrouted blocks", validate_config(l, "cfg"));
  ModelConfig np = c;
  np.mixture_of_depths["predictor"] = false;
  Transformer m(np, 1);
  EXPECT_ERROR("cannot generate without the causal predictor", m.new_generation_state());
}

// A small MoD LM (layer 1 of 3 routed, capacity 25%) learns a fixed
// sequence: its loss falls far, the router learns, and the predictor's
// auxiliary loss falls.
TEST(MixtureOfDepths, SmallLmTrains) {
  mt::ScopedThreads one(1);
  ModelConfig c = mod_model_config(0.25);
  c.initializer_range = 0.05;
  Transformer m(c, 3);
  const Tensor tok = mt::random_tokens({2, 17}, 4, 23);
  const Tensor in = tok.slice(1, 0, 16).contiguous(), tgt = tok.slice(1, 1, 17).contiguous();
  const std::vector<Parameter*> params = m.parameters();
  const double first = m.loss(in, tgt, false);
  const std::vector<float> router_at_init = m.find_parameter("model.layers.1.mod_router.weight")->value.to_vector();
  double first_aux = -1, last_aux = 0;
  for (int step = 0; step < 60; ++step) {
    for (Parameter* p : params) p->grad.fill(0.0f);
    m.loss(in, tgt, true);
    if (first_aux < 0) first_aux = m.aux_loss();
    last_aux = m.aux_loss();
    for (Parameter* p : params)
      for (std::int64_t k = 0; k < p->value.numel(); ++k) p->value.data<float>()[k] -= 0.5f * p->grad.data<float>()[k];
  }
  const double last = m.loss(in, tgt, false);
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
  EXPECT_NE(m.find_parameter("model.layers.1.mod_router.weight")->value.to_vector(), router_at_init);
  EXPECT_LT(last_aux, first_aux) << "predictor aux loss " << first_aux << " -> " << last_aux;
  EXPECT_GT(m.predictor_accuracy(), 0.5);
}

TEST(MixtureOfDepths, RejectsBadInput) {
  RoutedBlock f(options(0.5));
  const Tensor x = randn({2 * 5, RoutedBlock::C}, 1);
  ModSaved s;
  EXPECT_ERROR("[mixture_of_depths] input has 10 rows but batch 2 x seq_len 4", mod_forward(s, x, f.p, f.mod, call_of(2, 4)));
  EXPECT_ERROR("backward called without the training forward's saved state",
               mod_backward(x, x, s, f.p, f.mod, call_of(2, 5)));
  MixerCall with_ids = call_of(2, 5);
  with_ids.position_ids = Tensor::zeros({2, 5}, DType::I32);
  EXPECT_ERROR("takes no position ids of its own", mod_forward(s, x, f.p, f.mod, with_ids));
  RoutedBlock g(options(0.5));
  g.mod.router_w->value = Tensor::zeros({RoutedBlock::C + 1});
  EXPECT_ERROR("mod_router.weight", mod_forward(s, x, g.p, g.mod, call_of(2, 5)));
  // A mixer without the position_ids capability refuses explicit ids by name.
  MixerCall ids = call_of(1, 4);
  ids.position_ids = Tensor::zeros({1, 4}, DType::I32);
  MixerContext ctx = block_context(RoutedBlock::C, RoutedBlock::I, nullptr, AttentionImpl::Dense);
  ctx.options = parse_options(token_mixer_entry("retention").options, nullptr, "test ", "retention");
  mt::OwnedParameters ps;
  mt::RandomParamStore store(ps, 0.3f);
  auto retention = token_mixer_entry("retention").make(ctx, store);
  Tensor y = Tensor::empty({4, RoutedBlock::C});
  EXPECT_ERROR("[retention] does not take explicit position ids", retention->forward(y, randn({4, RoutedBlock::C}, 2), ids, false));
}
