// DeepSeek-V2 Multi-head Latent Attention (src/nn/mla/): the fast path (flash
// and dense kernels) vs the float64 reference twin on awkward shapes; every
// weight, both norms, the biases and x vs finite differences; PyTorch fixtures
// of a rewrite of HF's DeepseekV2Attention with YaRN (tools/fixtures/mla.py)
// through the mixer and its checkpoint names; generation: absorbed decode ==
// naive == full forward; the cache holds exactly r + dr floats per token; the
// cache-bytes table against MHA and GQA; refusals that name the problem.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/deepseek_v2_config.h"
#include "model/transformer.h"
#include "nn/mixer/mixer_registry.h"
#include "nn/mixer/param_store.h"
#include "nn/mla/mla.h"
#include "testing/gradcheck.h"
#include "../support/close.h"
#include "../support/errors.h"
#include "../support/fixtures.h"
#include "../support/generation.h"
#include "../support/model_fixture.h"
#include "../support/mixer_checks.h"
#include "../support/parameters.h"
#include "../support/periodic_lm.h"
#include "../support/threads.h"

using namespace mf;
using mf::testing::close;

namespace {

struct Dims {
  std::int64_t c, h, rq, r, dn, dr, dv;
  bool bias;
};

RopeConfig yarn_rope() {
  RopeConfig rc;
  rc.rotary_dim = 8;
  rc.scaling = RopeScaling::Yarn;
  rc.factor = 4.0;
  rc.original_max_position_embeddings = 8;
  rc.mscale = 1.0;
  rc.mscale_all_dim = 0.5;
  return rc;
}

// A mixer of random parameters (RandomParamStore) and its MlaParams view of the
// same parameters, found by their checkpoint names.
struct Layer : mf::testing::OwnedParameters {
  std::unique_ptr<RopeTable> model_rope;
  std::unique_ptr<TokenMixer> mixer;
  MlaParams p;
  std::unique_ptr<RopeTable> rope;
  Layer(const Dims& d, const RopeConfig& model_rc, std::uint64_t param_seed, const std::string& decode = "auto",
        AttentionImpl impl = AttentionImpl::Flash) {
    seed = param_seed;
    model_rope = std::make_unique<RopeTable>(model_rc, 64);
    MixerContext ctx;
    ctx.hidden_size = d.c;
    ctx.num_heads = d.h;
    ctx.num_kv_heads = d.h;
    ctx.head_dim = 16;
    ctx.max_position_embeddings = 64;
    ctx.attention_bias = d.bias;
    ctx.attention_impl = impl;
    ctx.rope = model_rope.get();
    const nlohmann::json given = {{"q_lora_rank", d.rq}, {"kv_lora_rank", d.r}, {"qk_nope_head_dim", d.dn},
                                  {"qk_rope_head_dim", d.dr}, {"v_head_dim", d.dv}, {"decode", decode}};
    const TokenMixerEntry& e = token_mixer_entry("mla");
    ctx.options = parse_options(e.options, given, "[test] ", "mla");
    mf::testing::RandomParamStore store(*this, 0.3f);
    mixer = e.make(ctx, store);
    p.num_heads = d.h, p.q_lora_rank = d.rq, p.kv_lora_rank = d.r, p.qk_nope_head_dim = d.dn;
    p.qk_rope_head_dim = d.dr, p.v_head_dim = d.dv, p.impl = impl;
    p.q_proj = find("q_proj.weight"), p.q_a_proj = find("q_a_proj.weight"), p.q_a_bias = find("q_a_proj.bias");
    p.q_a_layernorm = find("q_a_layernorm.weight"), p.q_b_proj = find("q_b_proj.weight");
    p.kv_a_proj_with_mqa = find("kv_a_proj_with_mqa.weight"), p.kv_a_bias = find("kv_a_proj_with_mqa.bias");
    p.kv_a_layernorm = find("kv_a_layernorm.weight"), p.kv_b_proj = find("kv_b_proj.weight");
    p.o_proj = find("o_proj.weight"), p.o_bias = find("o_proj.bias");
    RopeConfig rc = model_rc;
    rc.rotary_dim = d.dr;
    rc.convention = RopeConvention::Interleaved;
    rope = std::make_unique<RopeTable>(rc, 64);
    p.rope = rope.get();
    p.softmax_scale = mla_softmax_scale(d.dn + d.dr, &rc);
  }
  Parameter* find(const std::string& name) {
    for (auto& q : owned)
      if (q->name == "self_attn." + name) return q.get();
    return nullptr;
  }
  void zero_grads() {
    for (auto& q : owned) q->grad.fill(0.0f);
  }
};

MixerCall call_of(std::int64_t b, std::int64_t l) {
  MixerCall c;
  c.batch = b;
  c.seq_len = l;
  return c;
}

}  // namespace

TEST(Mla, FastMatchesReference) {
  struct Case {
    Dims d;
    std::int64_t b, l;
  };
  const Case cases[] = {{{32, 4, 16, 24, 16, 8, 16, true}, 2, 37},   // q lora, biases, awkward length
                        {{24, 2, 0, 16, 8, 16, 32, false}, 1, 19},   // q_proj, value dim > q/k dim
                        {{16, 3, 8, 16, 8, 8, 8, false}, 3, 1},      // L = 1
                        {{32, 1, 16, 32, 128, 64, 128, false}, 1, 5}};  // DeepSeek's 192 / 128 head dims
  for (const Case& c : cases)
    for (AttentionImpl impl : {AttentionImpl::Flash, AttentionImpl::Dense}) {
      SCOPED_TRACE("L " + std::to_string(c.l) + " dq " + std::to_string(c.d.dn + c.d.dr) + " impl " +
                   std::to_string(static_cast<int>(impl)));
      Layer layer(c.d, yarn_rope(), 3, "auto", impl);
      const Tensor x = randn({c.b * c.l, c.d.c}, 4);
      Tensor y = Tensor::empty(x.shape());
      MlaSaved saved;
      mla_forward(y, saved, x, c.b, c.l, true, Tensor(), layer.p);
      EXPECT_TRUE(close(y, reference::mla_forward(x, c.b, c.l, true, layer.p), 2e-5, "y"));
      if (c.l > 1) {  // bidirectional
        mla_forward(y, saved, x, c.b, c.l, false, Tensor(), layer.p);
        EXPECT_TRUE(close(y, reference::mla_forward(x, c.b, c.l, false, layer.p), 2e-5, "y bidirectional"));
      }
    }
}

TEST(Mla, GradientsMatchFiniteDifferences) {
  mf::testing::ScopedThreads one(1);
  struct Case {
    Dims d;
    bool causal, padded;
  };
  const Case cases[] = {{{16, 2, 8, 16, 8, 8, 16, true}, true, false},    // all seven weights, both norms, biases
                        {{16, 2, 0, 8, 8, 8, 8, false}, false, true}};    // q_proj, bidirectional with padding
  const std::int64_t b = 2, l = 5;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.d.rq > 0 ? "q lora" : "q_proj");
    Layer layer(c.d, yarn_rope(), 8);
    Tensor x = randn({b * l, c.d.c}, 9);
    const Tensor w = randn({b * l, c.d.c}, 10);
    const Tensor mask = c.padded ? mf::testing::tail_and_hole_mask(b, l) : Tensor();
    auto loss = [&] {
      Tensor y = Tensor::empty(x.shape());
      MlaSaved s;
      mla_forward(y, s, x, b, l, c.causal, mask, layer.p);
      return mf::testing::weighted_sum(y, w);
    };
    layer.zero_grads();
    Tensor y = Tensor::empty(x.shape()), dx = Tensor::full(x.shape(), 3.0f);
    MlaSaved s;
    mla_forward(y, s, x, b, l, c.causal, mask, layer.p);
    mla_backward(dx, w, x, s, b, l, c.causal, mask, layer.p);
    std::vector<Tensor> in = layer.values(), g = layer.grads();
    in.push_back(x);
    g.push_back(dx);
    EXPECT_EQ(layer.owned.size(), c.d.rq > 0 ? 10u : 5u);
    mf::testing::GradcheckOptions opt;
    opt.atol = 5e-4;
    opt.rtol = 5e-3;
    const auto r = mf::testing::gradcheck(loss, in, g, opt);
    EXPECT_TRUE(r.ok) << r.report;
  }
}

namespace {
const std::vector<std::string> kMlaFixtures = {"mla_qlora_yarn_bias", "mla_qproj_yarn_mscale", "mla_qlora_plain_rope"};

double cfg_value(const mf::testing::FixtureModule& f, const std::string& name) {
  return f.tensor("cfg_" + name).to(DType::F32).data<float>()[0];
}
}  // namespace

// Through the mixer: its parameters are filled from the fixture by checkpoint
// name (every name present, none left over); full forward and backward, then
// generation (prefill of 4, then steps) against the fixture's y rows.
TEST(Mla, MatchesPyTorchFixtures) {
  for (const std::string& name : kMlaFixtures) {
    SCOPED_TRACE(name);
    mf::testing::FixtureModule f(name);
    const std::int64_t b = f.option("batch"), l = f.option("seq_len"), c = f.tensor("x").size(1);
    RopeConfig rc;
    rc.theta = cfg_value(f, "rope_theta");
    rc.rotary_dim = 2;
    if (cfg_value(f, "factor") > 0) {
      rc.scaling = RopeScaling::Yarn;
      rc.factor = cfg_value(f, "factor");
      rc.original_max_position_embeddings = f.option("original_max_position_embeddings");
      rc.beta_fast = cfg_value(f, "beta_fast");
      rc.beta_slow = cfg_value(f, "beta_slow");
      rc.mscale = cfg_value(f, "mscale");
      rc.mscale_all_dim = cfg_value(f, "mscale_all_dim");
    }
    RopeTable model_rope(rc, f.option("max_position_embeddings"));
    MixerContext ctx;
    ctx.hidden_size = c;
    ctx.num_heads = ctx.num_kv_heads = f.option("num_heads");
    ctx.head_dim = 8;
    ctx.max_position_embeddings = f.option("max_position_embeddings");
    ctx.attention_bias = f.option("attention_bias") != 0;
    ctx.rope = &model_rope;
    const nlohmann::json given = {{"q_lora_rank", f.option("q_lora_rank")}, {"kv_lora_rank", f.option("kv_lora_rank")},
                                  {"qk_nope_head_dim", f.option("qk_nope_head_dim")},
                                  {"qk_rope_head_dim", f.option("qk_rope_head_dim")},
                                  {"v_head_dim", f.option("v_head_dim")}};
    const TokenMixerEntry& e = token_mixer_entry("mla");
    ctx.options = parse_options(e.options, given, "[test] ", "mla");
    ParamList params(0, 0.02);
    const auto mixer = e.make(ctx, params);
    std::size_t weights = 0;
    for (const auto& [key, t] : f.file.tensors) weights += key.rfind("self_attn.", 0) == 0;
    EXPECT_EQ(params.all().size(), weights);
    for (const auto& p : params.all()) {
      ASSERT_TRUE(f.file.tensors.count(p->name)) << p->name;
      p->value.copy_from(f.tensor(p->name));
    }
    const Tensor& x = f.tensor("x");
    Tensor y = Tensor::empty(x.shape()), dx = Tensor::empty(x.shape());
    const MixerCall call = call_of(b, l);
    const auto saved = mixer->forward(y, x, call, true);
    mixer->backward(dx, f.tensor("dy"), x, *saved, call);
    EXPECT_TRUE(close(y, f.tensor("y"), 1e-5, "y", 1.0));
    EXPECT_TRUE(close(dx, f.tensor("dx"), 1e-5, "dx", 1.0));
    for (const auto& p : params.all())
      EXPECT_TRUE(close(p->grad, f.tensor("grad_" + p->name), 1e-5, "grad_" + p->name, 1.0));

    // Generation at positions > 0: prefill 4 tokens, then one token per step (absorbed form).
    GenerationOptions go;
    go.batch = b;
    auto state = mixer->new_state(go);
    const std::int64_t prefill = 4;
    const Tensor x3 = x.reshape({b, l, c});
    for (std::int64_t t0 = 0; t0 < l;) {
      const std::int64_t n = t0 == 0 ? prefill : 1;
      MixerCall gc = call_of(b, n);
      gc.state = state.get();
      gc.past = t0;
      const Tensor xs = x3.slice(1, t0, t0 + n).contiguous().reshape({b * n, c});
      Tensor ys = Tensor::empty(xs.shape());
      mixer->forward(ys, xs, gc, false);
      const Tensor want = f.tensor("y").reshape({b, l, c}).slice(1, t0, t0 + n).contiguous().reshape({b * n, c});
      EXPECT_TRUE(close(ys, want, 1e-5, "generated y at position " + std::to_string(t0), 1.0));
      t0 += n;
    }
  }
}

TEST(Mla, FixtureListCoversEveryFile) { mf::testing::expect_fixture_list_covers("mla_", kMlaFixtures); }

// Absorbed decode == naive decode == the full forward, on a prefill followed by
// single steps and a chunk of three, batch 2, both kernels.
TEST(Mla, AbsorbedDecodeEqualsNaiveEqualsFullForward) {
  const Dims d{32, 4, 16, 24, 16, 8, 16, true};
  const std::int64_t b = 2, l = 23, c = d.c;
  const Tensor x = randn({b * l, c}, 21);
  Layer full(d, yarn_rope(), 5);
  Tensor want = Tensor::empty(x.shape());
  full.mixer->forward(want, x, call_of(b, l), false);
  for (const char* decode : {"absorbed", "naive", "auto"}) {
    SCOPED_TRACE(decode);
    Layer layer(d, yarn_rope(), 5, decode);
    GenerationOptions go;
    go.batch = b;
    go.capacity = 30;
    auto state = layer.mixer->new_state(go);
    const Tensor x3 = x.reshape({b, l, c});
    const std::int64_t chunks[] = {7, 1, 1, 3, 1, 10};
    std::int64_t t0 = 0;
    for (std::int64_t n : chunks) {
      MixerCall gc = call_of(b, n);
      gc.state = state.get();
      gc.past = t0;
      const Tensor xs = x3.slice(1, t0, t0 + n).contiguous().reshape({b * n, c});
      Tensor ys = Tensor::empty(xs.shape());
      layer.mixer->forward(ys, xs, gc, false);
      const Tensor w = want.reshape({b, l, c}).slice(1, t0, t0 + n).contiguous().reshape({b * n, c});
      EXPECT_TRUE(close(ys, w, 2e-5, "positions from " + std::to_string(t0)));
      t0 += n;
    }
    ASSERT_EQ(t0, l);
  }
}

// The latent cache holds (kv_lora_rank + qk_rope_head_dim) floats per token per
// layer, nothing else; the table against MHA and GQA of the same width is printed
// (the report's figures: DeepSeek-V2's per-layer shapes, hidden 5120, 128 heads).
TEST(Mla, CacheHoldsOnlyTheLatentAndTheRopeKey) {
  const Dims d{32, 4, 16, 24, 16, 8, 16, false};
  Layer layer(d, yarn_rope(), 1);
  GenerationOptions go;
  go.batch = 3;
  go.capacity = 40;
  const auto state = layer.mixer->new_state(go);
  EXPECT_EQ(state->bytes(), 3 * 40 * (d.r + d.dr) * static_cast<std::int64_t>(sizeof(float)));

  // Bytes per token per layer from each mixer's state: DeepSeek-V2 (hidden 5120, 128 heads
  // of 128, r = 512, dr = 64), MHA and GQA (8 KV heads) of the same width.
  auto per_token = [](const std::string& mixer, std::int64_t kv_heads, const nlohmann::json& options) {
    ModelConfig cfg;
    cfg.model_type = "modformer";
    cfg.hidden_size = 5120;
    cfg.num_attention_heads = 128;
    cfg.num_key_value_heads = kv_heads;
    cfg.head_dim = 128;
    cfg.max_position_embeddings = 64;
    cfg.num_hidden_layers = 1;
    RopeTable rope(rope_config(cfg), 64);
    const TokenMixerEntry& e = token_mixer_entry(mixer);
    MixerContext ctx = mixer_context(cfg, 0, mixer, &rope);
    ctx.options = parse_options(e.options, options, "[test] ", mixer);
    struct CountOnly final : ParamStore {  // no values: the shapes only matter for the state
      std::vector<std::unique_ptr<Parameter>> owned;
      Parameter* add(const std::string& n, const Shape&, ParamInit, bool) override { return hold(n); }
      Parameter* add_custom(const std::string& n, const Shape&, const ParamInitFn&, bool) override { return hold(n); }
      Parameter* shared(const std::string& n, const Shape&, const ParamInitFn&, bool) override { return hold(n); }
      Parameter* hold(const std::string& n) {
        owned.push_back(std::make_unique<Parameter>());
        owned.back()->name = n;
        return owned.back().get();
      }
    } store;
    const auto m = e.make(ctx, store);
    GenerationOptions o;
    o.batch = 1;
    o.capacity = 64;
    return m->new_state(o)->bytes() / 64;
  };
  const std::int64_t mla = per_token("mla", 128,
                                     {{"q_lora_rank", 1536}, {"kv_lora_rank", 512}, {"qk_nope_head_dim", 128},
                                      {"qk_rope_head_dim", 64}, {"v_head_dim", 128}});
  const std::int64_t mha = per_token("full_attention", 128, nlohmann::json::object());
  const std::int64_t gqa = per_token("full_attention", 8, nlohmann::json::object());
  EXPECT_EQ(mla, (512 + 64) * 4);
  EXPECT_EQ(mha, 2 * 128 * 128 * 4);
  EXPECT_EQ(gqa, 2 * 8 * 128 * 4);
  std::printf("cache bytes per token per layer (float32, hidden 5120, 128 heads of 128): MLA %lld, MHA %lld, "
              "GQA-8 %lld (MHA / MLA = %.1f, GQA-8 / MLA = %.2f)\n",
              static_cast<long long>(mla), static_cast<long long>(mha), static_cast<long long>(gqa),
              static_cast<double>(mha) / mla, static_cast<double>(gqa) / mla);
}

TEST(Mla, RejectsBadInput) {
  const TokenMixerEntry& e = token_mixer_entry("mla");
  MixerContext ctx;
  ctx.hidden_size = 16;
  ctx.num_heads = ctx.num_kv_heads = 2;
  ctx.head_dim = 16;
  ctx.max_position_embeddings = 32;
  auto make = [&](const nlohmann::json& given) {
    ctx.options = parse_options(e.options, given, "[test] ", "mla");
    ParamList params(0, 0.02);
    return e.make(ctx, params);
  };
  EXPECT_ERROR("option 'qk_rope_head_dim' must be even", make({{"qk_rope_head_dim", 3}}));
  EXPECT_ERROR("must be a multiple of 8 and at most 256", make({{"qk_nope_head_dim", 250}, {"qk_rope_head_dim", 64}}));
  EXPECT_ERROR("option 'v_head_dim' must be a multiple of 8", make({{"v_head_dim", 12}}));
  EXPECT_ERROR("field 'mla.decode'", make({{"decode", "fast"}}));
  ctx.options = parse_options(e.options, nlohmann::json::object(), "[test] ", "mla");
  ParamList params(0, 0.02);
  const auto m = e.make(ctx, params);
  Tensor y = Tensor::empty({6, 16});
  EXPECT_ERROR("input has 6 rows but batch 2 x seq_len 4", m->forward(y, randn({6, 16}, 1), call_of(2, 4), false));
  GenerationOptions go;
  go.capacity = 4;
  auto state = m->new_state(go);
  MixerCall gc = call_of(1, 6);
  gc.state = state.get();
  EXPECT_ERROR("the latent cache holds 4 positions but the call needs 6", m->forward(y, randn({6, 16}, 1), gc, false));
  gc = call_of(1, 1);
  gc.state = state.get();
  gc.past = 2;
  Tensor y1 = Tensor::empty({1, 16});
  EXPECT_ERROR("continues at position 2 but the latent cache holds 0", m->forward(y1, randn({1, 16}, 1), gc, false));
  ParamList other_params(0, 0.02);
  const auto other = token_mixer_entry("full_attention").make(ctx, other_params)->new_state(go);
  gc.state = other.get();
  gc.past = 0;
  EXPECT_ERROR("the generation state was not made by this mixer", m->forward(y1, randn({1, 16}, 1), gc, false));
}

// The whole-model fixture of tools/fixtures/model.py with an MLA layer (then
// exact attention; YaRN with mscale / mscale_all_dim, biases): logits, loss and
// every parameter gradient vs plain torch in float64; then generation through
// the model's states (latent cache + KV cache) equals its full forward.
TEST(Mla, WholeModelFixtureMatchesTorch) {
  mf::testing::ScopedThreads one(1);
  mf::testing::ModelFixture f = mf::testing::load_model_fixture("model_mla_yarn");
  Transformer& m = *f.model;
  EXPECT_EQ(m.token_mixer(0).name(), "mla");
  mf::testing::expect_decoder_matches_fixture(f);
  int mla_params = 0;
  for (Parameter* p : m.parameters()) mla_params += p->name.rfind("model.layers.0.self_attn.", 0) == 0;
  EXPECT_EQ(mla_params, 10);  // q_a, q_b, kv_a, kv_b, o weights; the 2 norms; q_a, kv_a, o biases
  const Tensor& tokens = f.file.tensors.at("tokens");
  const auto state = mf::testing::expect_generation_equals_full_forward(m, tokens, 4, 1e-4f);
  (void)state;
}

namespace {
nlohmann::json tiny_deepseek_v2() {
  return nlohmann::json::parse(R"({
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
    "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV2Config"},
    "vocab_size": 37, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
    "n_shared_experts": null, "n_routed_experts": null, "ep_size": 1, "routed_scaling_factor": 1.0,
    "kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8, "v_head_dim": 16, "qk_nope_head_dim": 16,
    "topk_method": "greedy", "n_group": null, "topk_group": null, "num_experts_per_tok": null,
    "moe_layer_freq": 1, "first_k_dense_replace": 0, "norm_topk_prob": false, "scoring_func": "softmax",
    "aux_loss_alpha": 0.001, "seq_aux": true, "hidden_act": "silu", "max_position_embeddings": 64,
    "initializer_range": 0.02, "rms_norm_eps": 1e-6, "use_cache": true, "pad_token_id": null,
    "bos_token_id": 0, "eos_token_id": 1, "pretraining_tp": 1, "tie_word_embeddings": false,
    "rope_theta": 10000, "attention_bias": false, "attention_dropout": 0.0,
    "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 16, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}
  })");
}
}  // namespace

// model_type "deepseek_v2": HF's fields in, HF's tensor names on the model, HF's
// fields out.
TEST(Mla, DeepseekV2ConfigUsesHuggingFaceNames) {
  const ModelConfig c = config_from_json(tiny_deepseek_v2(), "deepseek");
  EXPECT_EQ(c.model_type, "deepseek_v2");
  EXPECT_EQ(c.layer_mixer(1), "mla");
  EXPECT_EQ(c.options_of("mla").at("q_lora_rank"), 24);
  ASSERT_TRUE(c.rope_scaling.mscale_all_dim.has_value());
  EXPECT_DOUBLE_EQ(*c.rope_scaling.mscale_all_dim, 0.707);
  Transformer m(c, 1);
  std::set<std::string> names;
  for (Parameter* p : m.parameters()) names.insert(p->name);
  for (const char* n : {"model.embed_tokens.weight", "model.layers.1.input_layernorm.weight",
                        "model.layers.1.self_attn.q_a_proj.weight", "model.layers.1.self_attn.q_a_layernorm.weight",
                        "model.layers.1.self_attn.q_b_proj.weight", "model.layers.1.self_attn.kv_a_proj_with_mqa.weight",
                        "model.layers.1.self_attn.kv_a_layernorm.weight", "model.layers.1.self_attn.kv_b_proj.weight",
                        "model.layers.1.self_attn.o_proj.weight", "model.layers.1.post_attention_layernorm.weight",
                        "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
                        "model.layers.1.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight"})
    EXPECT_TRUE(names.count(n)) << n;
  EXPECT_EQ(names.size(), 3u + 2u * 12u);
  // Out in HF's fields and back.
  const nlohmann::json out = config_to_json(c);
  EXPECT_EQ(out.at("model_type"), "deepseek_v2");
  EXPECT_EQ(out.at("kv_lora_rank"), 16);
  EXPECT_EQ(out.at("rope_scaling").at("mscale"), 0.707);
  const ModelConfig back = config_from_json(out, "round trip");
  EXPECT_EQ(back.options_of("mla"), c.options_of("mla"));
  EXPECT_EQ(config_to_json(back), out);
  // q_lora_rank null: a plain q_proj; yarn without original_max_position_embeddings: 4096.
  nlohmann::json j = tiny_deepseek_v2();
  j["q_lora_rank"] = nullptr;
  j["max_position_embeddings"] = 8192;
  j["rope_scaling"].erase("original_max_position_embeddings");
  const ModelConfig plain = config_from_json(j, "plain");
  EXPECT_EQ(plain.options_of("mla").at("q_lora_rank"), 0);
  EXPECT_EQ(plain.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_TRUE(config_to_json(plain).at("q_lora_rank").is_null());
}

TEST(Mla, DeepseekV2ConfigRefusesWhatItCannotBuild) {
  nlohmann::json j = tiny_deepseek_v2();
  j["n_routed_experts"] = 8;
  j["num_experts_per_tok"] = 2;
  j["first_k_dense_replace"] = 1;
  {  // MoE from layer 1 on: DeepSeek's router and names; HF's fields out and back.
    const ModelConfig moe = config_from_json(j, "moe");
    EXPECT_EQ(moe.ffn, FfnKind::MoE);
    EXPECT_EQ(moe.options_of("moe").at("router"), "deepseek");
    Transformer m(moe, 1);
    std::set<std::string> names;
    for (Parameter* p : m.parameters()) names.insert(p->name);
    for (const char* n : {"model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp.gate.weight",
                          "model.layers.1.mlp.experts.7.down_proj.weight"})
      EXPECT_TRUE(names.count(n)) << n;
    const nlohmann::json out = config_to_json(moe);
    EXPECT_EQ(out.at("n_routed_experts"), 8);
    EXPECT_EQ(out.at("first_k_dense_replace"), 1);
    EXPECT_EQ(out.at("aux_loss_alpha"), 0.001);
    EXPECT_EQ(config_to_json(config_from_json(out, "round trip")), out);
  }
  j["moe_layer_freq"] = 2;  // layer 2 MoE, layer 1 dense: off the grid
  j["num_hidden_layers"] = 3;
  EXPECT_ERROR("field 'moe_layer_freq': only 1 is supported", config_from_json(j, "moe"));
  j["moe_layer_freq"] = 1;
  j["topk_method"] = "group_limited_greedy";
  EXPECT_ERROR("field 'topk_method': only \"greedy\" is supported", config_from_json(j, "moe"));
  j = tiny_deepseek_v2();
  j["sliding_window"] = 4;
  EXPECT_ERROR("field 'sliding_window': unknown field for model_type \"deepseek_v2\"", config_from_json(j, "x"));
  j = tiny_deepseek_v2();
  j.erase("kv_lora_rank");
  EXPECT_ERROR("field 'kv_lora_rank': missing", config_from_json(j, "x"));
  j = tiny_deepseek_v2();
  j["ep_size"] = 2;
  EXPECT_ERROR("field 'ep_size': only 1 is supported", config_from_json(j, "x"));
  j = tiny_deepseek_v2();
  j["qk_rope_head_dim"] = 7;
  EXPECT_ERROR("field 'qk_rope_head_dim': must be even", config_from_json(j, "x"));
  j["qk_rope_head_dim"] = 6;
  EXPECT_ERROR("qk_nope_head_dim + qk_rope_head_dim = 22 must be a multiple of 8", config_from_json(j, "x"));
  EXPECT_EQ(deepseek_v2_moe_layers(5, true, 1, 2), (std::vector<bool>{false, false, true, false, true}));
  EXPECT_EQ(deepseek_v2_moe_layers(3, false, 0, 1), (std::vector<bool>{false, false, false}));
}

// A DeepSeek-V2-style model (MLA attention, a dense first layer, then shared +
// routed experts) trains: SGD on period-5 sequences halves the loss.
TEST(Mla, DeepseekV2MoeModelTrains) {
  nlohmann::json j = tiny_deepseek_v2();
  j["n_routed_experts"] = 4;
  j["num_experts_per_tok"] = 2;
  j["n_shared_experts"] = 1;
  j["first_k_dense_replace"] = 1;
  Transformer m(config_from_json(j, "deepseek moe"), 3);
  const auto [tokens, targets] = mf::testing::periodic_lm_batch(4, 24);
  const auto [first, last] = mf::testing::sgd_losses(m, tokens, targets, 40, 0.5f);
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
}
