// AdamW vs torch.optim.AdamW, optimizer state round trip, the warmup+cosine
// schedule and global-norm gradient clipping.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <vector>

#include "../support/errors.h"
#include "../support/fixtures.h"
#include "../support/tiny_models.h"
#include "core/rng.h"
#include "model/transformer.h"
#include "train/adamw.h"
#include "train/grad_clip.h"
#include "train/schedule.h"

using namespace mf;

namespace {

// Distance in units in the last place between two floats of the same sign.
std::int64_t ulps(float a, float b) {
  std::int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if ((ia < 0) != (ib < 0)) return a == b ? 0 : std::numeric_limits<std::int32_t>::max();
  return std::llabs(static_cast<std::int64_t>(ia) - ib);
}

std::int64_t max_ulps(const Tensor& a, const Tensor& b) {
  const auto va = a.to_vector(), vb = b.to_vector();
  EXPECT_EQ(va.size(), vb.size());
  std::int64_t worst = 0;
  for (std::size_t i = 0; i < va.size(); ++i) worst = std::max(worst, ulps(va[i], vb[i]));
  return worst;
}

std::string temp_dir(const char* tag) {
  auto d = std::filesystem::temp_directory_path() / (std::string("mf_") + tag + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d.string();
}

}  // namespace

// Same float32 inputs, same learning rates: torch (float32, single-tensor
// path) and ours differ only where one rounding differs (FMA in torch's
// vectorized add), so allow 4 ulps after 5 steps (measured: 1 on w, 0 on b).
TEST(TrainAdamW, MatchesTorchFloat32) {
  auto fx = mf::testing::load_fixture("adamw_steps");
  const double lrs[] = {1e-3, 3e-3, 2e-3, 5e-4, 1e-2};  // tools/fixtures/adamw.py LRS, exactly
  Parameter w("w", fx.tensors.at("w0").clone(), true);
  Parameter b("b", fx.tensors.at("b0").clone(), false);
  AdamWConfig cfg;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.95;
  cfg.eps = 1e-8;
  cfg.weight_decay = 0.1;
  AdamW opt({&w, &b}, cfg);
  for (int s = 0; s < 5; ++s) {
    EXPECT_FLOAT_EQ(fx.tensors.at("lrs").at({s}), static_cast<float>(lrs[s]));
    w.grad.copy_from(fx.tensors.at("grads_w").select(0, s));
    b.grad.copy_from(fx.tensors.at("grads_b").select(0, s));
    opt.step(lrs[s]);
  }
  EXPECT_EQ(opt.steps_taken(), 5);
  EXPECT_LE(max_ulps(w.value, fx.tensors.at("w")), 4);
  EXPECT_LE(max_ulps(b.value, fx.tensors.at("b")), 4);
  const auto st = opt.state_tensors();
  ASSERT_EQ(st.size(), 4u);
  EXPECT_EQ(st[0].first, "w.exp_avg");
  EXPECT_EQ(st[3].first, "b.exp_avg_sq");
  for (const auto& [name, t] : st) EXPECT_LE(max_ulps(t, fx.tensors.at(name)), 4) << name;
  // the weight-decayed parameter really differs from an undecayed run
  Parameter w2("w", fx.tensors.at("w0").clone(), false);
  AdamW opt2({&w2}, cfg);
  for (int s = 0; s < 5; ++s) {
    w2.grad.copy_from(fx.tensors.at("grads_w").select(0, s));
    opt2.step(lrs[s]);
  }
  EXPECT_GT(max_ulps(w2.value, fx.tensors.at("w")), 100);
}

// Saving after k steps, loading into fresh parameters/optimizer and continuing
// gives the same bits as never stopping.
TEST(TrainAdamW, StateRoundTripContinuesBitwise) {
  const std::string dir = temp_dir("adamw");
  auto run = [](Parameter& p, AdamW& opt, int from, int to) {
    for (int s = from; s < to; ++s) {
      p.grad.copy_from(randn(p.value.shape(), 100 + s));
      opt.step(1e-2 * (s + 1));
    }
  };
  Parameter a("layer.weight", randn({7, 5}, 1), true);
  AdamW oa({&a}, {});
  run(a, oa, 0, 6);

  Parameter b("layer.weight", randn({7, 5}, 1), true);
  AdamW ob({&b}, {});
  run(b, ob, 0, 3);
  ob.save(dir + "/opt.safetensors");
  Tensor saved_value = b.value.clone();

  Parameter c("layer.weight", saved_value, true);
  AdamW oc({&c}, {});
  oc.load(dir + "/opt.safetensors");
  EXPECT_EQ(oc.steps_taken(), 3);
  run(c, oc, 3, 6);
  EXPECT_EQ(c.value.to_vector(), a.value.to_vector());
  EXPECT_EQ(oc.state_tensors()[1].second.to_vector(), oa.state_tensors()[1].second.to_vector());

  // wrong parameter set: a clear error naming the missing tensor
  Parameter d("other.weight", randn({7, 5}, 1), true);
  AdamW od({&d}, {});
  try {
    od.load(dir + "/opt.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'other.weight.exp_avg' is missing"), std::string::npos) << e.what();
  }
  Parameter e("layer.weight", randn({5, 7}, 1), true);
  AdamW oe({&e}, {});
  EXPECT_ERROR("tensor 'layer.weight.exp_avg' must have shape [5, 7] but has [7, 5]", oe.load(dir + "/opt.safetensors"));
  std::filesystem::remove_all(dir);
}

TEST(TrainAdamW, BuffersAreNeitherUpdatedNorGivenState) {
  Parameter w("w", Tensor::full({4}, 1.0f), true), buf("buf", Tensor::full({3}, 2.0f), false);
  buf.trainable = false;
  w.grad.fill(0.5f);
  buf.grad.fill(0.5f);  // even a stray gradient must not move a buffer
  AdamW opt({&w, &buf}, AdamWConfig{});
  opt.step(0.1);
  for (std::int64_t i = 0; i < 3; ++i) EXPECT_EQ(buf.value.data<float>()[i], 2.0f);
  EXPECT_NE(w.value.data<float>()[0], 1.0f);
  const auto state = opt.state_tensors();
  ASSERT_EQ(state.size(), 2u);
  EXPECT_EQ(state[0].first, "w.exp_avg");
}

TEST(TrainAdamW, RejectsBadConfig) {
  Parameter p("x", randn({3}, 1), true);
  AdamWConfig c;
  c.beta2 = 1.0;
  EXPECT_ERROR("beta2 must be in [0, 1) but is 1", AdamW({&p}, c));
  c = {};
  c.eps = 0;
  EXPECT_ERROR("eps must be > 0 but is 0", AdamW({&p}, c));
  Parameter q("x", randn({3}, 2), true);
  EXPECT_ERROR("parameter name 'x' appears twice", AdamW({&p, &q}, {}));  // duplicate name
  AdamW ok({&p}, {});
  EXPECT_ERROR("learning rate must be finite and >= 0 but is nan", ok.step(std::nan("")));
}

TEST(TrainSchedule, WarmupThenCosine) {
  CosineSchedule s{1e-3, 1e-4, 10, 110};
  s.validate();
  EXPECT_DOUBLE_EQ(s.lr_at(0), 1e-4);   // 1e-3 * 1/10
  EXPECT_DOUBLE_EQ(s.lr_at(4), 5e-4);
  EXPECT_DOUBLE_EQ(s.lr_at(9), 1e-3);   // warmup reaches the peak
  EXPECT_DOUBLE_EQ(s.lr_at(10), 1e-3);  // cosine starts at the peak
  // t = (59.5 - 10) / 99 is not integral; the midpoint step 59.5 would be 5.5e-4.
  EXPECT_NEAR(s.lr_at(60), 1e-4 + 0.9e-3 * 0.5 * (1 + std::cos(M_PI * 50.0 / 99.0)), 1e-15);
  EXPECT_DOUBLE_EQ(s.lr_at(109), 1e-4);  // last update at exactly min_lr
  EXPECT_DOUBLE_EQ(s.lr_at(500), 1e-4);
  for (int i = 11; i < 110; ++i) EXPECT_LE(s.lr_at(i), s.lr_at(i - 1));
  CosineSchedule none{2e-3, 0.0, 0, 1};
  EXPECT_DOUBLE_EQ(none.lr_at(0), 2e-3);  // a one-step run without warmup uses the peak
  EXPECT_ERROR("min_lr must be in [0, lr = 0.001] but is 0.002", (CosineSchedule{1e-3, 2e-3, 0, 10}.validate()));
  EXPECT_ERROR("warmup_steps must be >= 0 but is -1", (CosineSchedule{1e-3, 0, -1, 10}.validate()));
  EXPECT_ERROR("lr must be > 0 but is 0", (CosineSchedule{0, 0, 0, 10}.validate()));
}

TEST(TrainGradClip, NormScaleAndNonFinite) {
  Parameter a("a", Tensor::zeros({2}), true), b("b", Tensor::zeros({1, 1}), false);
  a.grad = Tensor::from_vector({2}, {3.0f, 0.0f});
  b.grad = Tensor::from_vector({1, 1}, {4.0f});
  std::vector<Parameter*> ps{&a, &b};
  EXPECT_DOUBLE_EQ(global_grad_norm(ps), 5.0);
  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 10.0), 5.0);  // below the limit: unchanged
  EXPECT_EQ(a.grad.at({0}), 3.0f);
  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 1.0), 5.0);  // returns the norm before clipping
  EXPECT_NEAR(a.grad.at({0}), 0.6f, 1e-6f);
  EXPECT_NEAR(b.grad.at({0, 0}), 0.8f, 1e-6f);
  EXPECT_NEAR(global_grad_norm(ps), 1.0, 1e-6);
  b.grad.data<float>()[0] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(std::isfinite(clip_grad_norm(ps, 1.0)));
  EXPECT_NEAR(a.grad.at({0}), 0.6f, 1e-6f);  // untouched
  b.grad.data<float>()[0] = std::nanf("");
  EXPECT_TRUE(std::isnan(clip_grad_norm(ps, 1.0)));
  // large tensor: the same bits as a sequential double sum over fixed blocks
  Parameter big("big", Tensor::zeros({100003}), true);
  big.grad = randn({100003}, 5);
  double want = 0;
  {
    const auto v = big.grad.to_vector();
    for (std::size_t blk = 0; blk < v.size(); blk += 4096) {
      double s = 0;
      for (std::size_t i = blk; i < std::min(v.size(), blk + 4096); ++i) s += double(v[i]) * v[i];
      want += s;
    }
  }
  EXPECT_EQ(global_grad_norm({&big}), std::sqrt(want));
  zero_grads(ps);
  EXPECT_EQ(global_grad_norm(ps), 0.0);
}

// Weight decay goes to the matrices of the projections and the untied output
// head, never to norms, biases or embeddings (token and learned positions):
// checked by name on a Llama config and on a post-norm LayerNorm model with
// biases, learned positions and tied embeddings. A step with zero gradients
// then leaves every undecayed parameter bit for bit and multiplies every
// decayed one by exactly (1 - lr * weight_decay).
TEST(TrainAdamW, WeightDecayGoesToProjectionMatricesOnly) {
  ModelConfig gpt_like = mf::testing::tiny_modformer_config(AttentionImpl::Flash);
  mf::testing::use_post_norm_gelu_learned(gpt_like);
  const std::vector<std::pair<ModelConfig, std::set<std::string>>> cases = {
      {mf::testing::tiny_llama_config(),
       {"model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight", "model.layers.1.input_layernorm.weight",
        "model.layers.1.post_attention_layernorm.weight"}},
      {gpt_like,
       {"model.embed_tokens.weight", "model.embed_positions.weight", "model.layers.0.self_attn.q_proj.bias",
        "model.layers.0.self_attn.k_proj.bias", "model.layers.0.self_attn.v_proj.bias",
        "model.layers.0.self_attn.o_proj.bias", "model.layers.0.post_attention_layernorm.weight",
        "model.layers.0.post_attention_layernorm.bias", "model.layers.0.mlp.up_proj.bias",
        "model.layers.0.mlp.down_proj.bias", "model.layers.0.post_feedforward_layernorm.weight",
        "model.layers.0.post_feedforward_layernorm.bias", "model.layers.1.self_attn.q_proj.bias",
        "model.layers.1.self_attn.k_proj.bias", "model.layers.1.self_attn.v_proj.bias",
        "model.layers.1.self_attn.o_proj.bias", "model.layers.1.post_attention_layernorm.weight",
        "model.layers.1.post_attention_layernorm.bias", "model.layers.1.mlp.up_proj.bias",
        "model.layers.1.mlp.down_proj.bias", "model.layers.1.post_feedforward_layernorm.weight",
        "model.layers.1.post_feedforward_layernorm.bias"}}};
  const std::vector<std::set<std::string>> decayed_by_case = {
      {"lm_head.weight"}, {}};  // plus every *_proj.weight; the GPT-like head is tied to the embedding
  for (std::size_t c = 0; c < cases.size(); ++c) {
    const auto& [cfg, undecayed] = cases[c];
    Transformer model(cfg, 7);
    std::set<std::string> decayed_names, undecayed_names;
    for (Parameter* p : model.parameters()) (p->weight_decay ? decayed_names : undecayed_names).insert(p->name);
    EXPECT_EQ(undecayed_names, undecayed) << "case " << c;
    std::set<std::string> decayed = decayed_by_case[c];
    for (const std::string layer : {"model.layers.0.", "model.layers.1."})
      for (const char* proj : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.up_proj", "mlp.down_proj"})
        decayed.insert(layer + proj + ".weight");
    if (c == 0)
      for (const std::string layer : {"model.layers.0.", "model.layers.1."}) decayed.insert(layer + "mlp.gate_proj.weight");
    EXPECT_EQ(decayed_names, decayed) << "case " << c;

    // Nonzero values everywhere (biases start at zero, norm weights at one),
    // zero gradients (as the model leaves them before any backward).
    std::map<std::string, std::vector<float>> before;
    std::uint64_t seed = 100;
    for (Parameter* p : model.parameters()) {
      p->value.copy_from(randn(p->value.shape(), ++seed));
      ASSERT_EQ(global_grad_norm({p}), 0.0) << p->name;
      before[p->name] = p->value.to_vector();
    }
    AdamWConfig opt_cfg;
    opt_cfg.weight_decay = 0.1;
    const double lr = 0.05;
    AdamW opt(model.parameters(), opt_cfg);
    opt.step(lr);
    const float factor = static_cast<float>(1.0 - lr * opt_cfg.weight_decay);
    for (const Parameter* p : model.parameters()) {
      const std::vector<float>& old_values = before.at(p->name);
      const std::vector<float> new_values = p->value.to_vector();
      std::size_t mismatches = 0;
      for (std::size_t i = 0; i < old_values.size(); ++i)
        mismatches += new_values[i] != (p->weight_decay ? old_values[i] * factor : old_values[i]);
      EXPECT_EQ(mismatches, 0u) << p->name << (p->weight_decay ? " (decayed)" : " (not decayed)");
    }
  }
}
