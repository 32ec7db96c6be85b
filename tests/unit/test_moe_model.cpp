// The "moe" channel mixer inside models: model_type "mixtral" (Hugging Face
// MixtralConfig fields and block_sparse_moe names, a checkpoint round trip),
// DeepSeek's dense first layers and names, noisy routing reproducible from
// (seed, step) and off at evaluation, option errors through the config, and
// a Mixtral-style model that trains with its auxiliary losses logged. (The
// numbers against PyTorch: model_mixtral_hf, model_moe_deepseek and
// model_moe_switch_capacity in test_model_fixtures.cpp.)
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/atomic_file.h"
#include "core/safetensors.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/transformer.h"
#include "train/data.h"
#include "train/trainer.h"
#include "../support/errors.h"
#include "../support/tiny_models.h"
#include "../support/train_runs.h"

using namespace mf;
namespace mt = mf::testing;

namespace {

nlohmann::json hf_mixtral() {
  return {{"model_type", "mixtral"},      {"architectures", {"MixtralForCausalLM"}},
          {"vocab_size", 40},             {"hidden_size", 16},
          {"intermediate_size", 24},      {"num_hidden_layers", 2},
          {"num_attention_heads", 2},     {"num_key_value_heads", 1},
          {"hidden_act", "silu"},         {"max_position_embeddings", 64},
          {"rms_norm_eps", 1e-5},         {"rope_theta", 1e6},
          {"sliding_window", nullptr},    {"tie_word_embeddings", false},
          {"num_local_experts", 4},       {"num_experts_per_tok", 2},
          {"output_router_logits", true}, {"router_aux_loss_coef", 0.02},
          {"router_jitter_noise", 0.0},   {"attention_dropout", 0.0},
          {"use_cache", true},            {"bos_token_id", 1},
          {"eos_token_id", 2},            {"torch_dtype", "bfloat16"},
          {"transformers_version", "4.44.0"}};
}

ModelConfig moe_config(const nlohmann::json& moe) {
  nlohmann::json j = {{"model_type", "modformer"}, {"vocab_size", 40},   {"hidden_size", 16},
                      {"intermediate_size", 24},   {"num_hidden_layers", 2}, {"num_attention_heads", 2},
                      {"max_position_embeddings", 64}, {"ffn", "moe"},   {"moe", moe}};
  return config_from_json(j, "moe.json");
}

std::set<std::string> names_of(Transformer& m) {
  std::set<std::string> s;
  for (const Parameter* p : m.parameters()) s.insert(p->name);
  return s;
}

}  // namespace

TEST(MixtralConfig, HuggingFaceFieldsAndNames) {
  const ModelConfig c = config_from_json(hf_mixtral(), "mixtral.json");
  EXPECT_EQ(c.model_type, "mixtral");
  EXPECT_EQ(c.ffn, FfnKind::MoE);
  const nlohmann::json o = c.options_of("moe");
  EXPECT_EQ(o.at("num_local_experts"), 4);
  EXPECT_EQ(o.at("num_experts_per_tok"), 2);
  EXPECT_EQ(o.at("router_aux_loss_coef"), 0.02);
  Transformer m(c, 1);
  const std::set<std::string> names = names_of(m);
  for (const char* want : {"model.layers.1.block_sparse_moe.gate.weight", "model.layers.1.block_sparse_moe.experts.3.w1.weight",
                           "model.layers.1.block_sparse_moe.experts.3.w2.weight",
                           "model.layers.0.block_sparse_moe.experts.0.w3.weight", "model.layers.0.self_attn.q_proj.weight",
                           "model.layers.0.post_attention_layernorm.weight", "lm_head.weight"})
    EXPECT_TRUE(names.count(want)) << want;
  EXPECT_EQ(m.find_parameter("model.layers.0.block_sparse_moe.gate.weight")->value.shape(), (Shape{4, 16}));
  EXPECT_EQ(m.find_parameter("model.layers.0.block_sparse_moe.experts.2.w2.weight")->value.shape(), (Shape{16, 24}));
  EXPECT_EQ(names.size(), 1u + 2 * (2 + 4 + 1 + 4 * 3) + 2);  // embed, 2 x (norms, q/k/v/o, gate, experts), norm, head

  const nlohmann::json out = config_to_json(c);
  EXPECT_EQ(out.at("architectures")[0], "MixtralForCausalLM");
  EXPECT_EQ(out.at("num_local_experts"), 4);
  EXPECT_EQ(out.at("output_router_logits"), true);
  EXPECT_FALSE(out.contains("ffn"));
  EXPECT_EQ(config_to_json(config_from_json(out, "again")), out);
}

TEST(MixtralConfig, CheckpointRoundTripComputesTheSameFunction) {
  const std::string dir = mt::fresh_temp_dir("mixtral_ckpt");
  Transformer m(config_from_json(hf_mixtral(), "mixtral.json"), 4);
  save_checkpoint(dir, m);
  const SafetensorsContents st = load_safetensors(dir + "/model.safetensors");
  EXPECT_TRUE(st.tensors.count("model.layers.1.block_sparse_moe.experts.0.w1.weight"));
  EXPECT_EQ(nlohmann::json::parse(read_file(dir + "/config.json")).at("model_type"), "mixtral");
  auto back = load_checkpoint(dir);
  EXPECT_EQ(back->config().model_type, "mixtral");
  const Tensor tok = mt::random_tokens({2, 7}, 1, 40);
  EXPECT_EQ(max_abs_diff(back->logits(tok), m.logits(tok)), 0.0f);
  std::filesystem::remove_all(dir);
}

TEST(MixtralConfig, StrictErrors) {
  auto expect_error = [](const nlohmann::json& j, const std::string& needle) {
    const std::string e = mt::error_of([&] { config_from_json(j, "mixtral.json"); });
    EXPECT_NE(e.find(needle), std::string::npos) << "error: " << e << "\nexpected: " << needle;
  };
  nlohmann::json j = hf_mixtral();
  j["router_jitter_noise"] = 0.1;
  expect_error(j, "field 'router_jitter_noise': only 0 is supported");
  j = hf_mixtral();
  j["ffn"] = "swiglu";
  expect_error(j, "field 'ffn': unknown field for model_type \"mixtral\"");
  j = hf_mixtral();
  j["num_experts_per_tok"] = 5;  // refused when the layers are built
  const std::string e = mt::error_of([&] { Transformer m(config_from_json(j, "mixtral.json"), 1); });
  EXPECT_NE(e.find("option 'num_experts_per_tok' must be in [1, 4]"), std::string::npos) << e;
  j = hf_mixtral();
  j["hidden_act"] = "gelu";
  expect_error(j, "hidden_act");
}

TEST(MoeModel, DeepSeekDenseFirstLayersAndNames) {
  const ModelConfig c = moe_config({{"router", "deepseek"}, {"n_routed_experts", 6}, {"num_experts_per_tok", 2},
                                    {"moe_intermediate_size", 8}, {"n_shared_experts", 2},
                                    {"routed_scaling_factor", 2.5}, {"norm_topk_prob", false},
                                    {"first_k_dense_replace", 1}});
  Transformer m(c, 2);
  const std::set<std::string> names = names_of(m);
  for (const char* want : {"model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp.gate.weight",
                           "model.layers.1.mlp.experts.5.down_proj.weight", "model.layers.1.mlp.shared_experts.up_proj.weight"})
    EXPECT_TRUE(names.count(want)) << want;
  EXPECT_FALSE(names.count("model.layers.0.mlp.gate.weight"));
  EXPECT_EQ(m.find_parameter("model.layers.0.mlp.up_proj.weight")->value.shape(), (Shape{24, 16}));
  EXPECT_EQ(m.find_parameter("model.layers.1.mlp.experts.0.up_proj.weight")->value.shape(), (Shape{8, 16}));
  EXPECT_EQ(m.find_parameter("model.layers.1.mlp.shared_experts.up_proj.weight")->value.shape(), (Shape{16, 16}));
  EXPECT_EQ(m.channel_mixer(0)->name(), "swiglu");
  EXPECT_EQ(m.channel_mixer(1)->name(), "moe");
}

TEST(MoeModel, OptionErrorsNameTheOption) {
  auto err = [](const nlohmann::json& moe) { return mt::error_of([&] { Transformer m(moe_config(moe), 1); }); };
  EXPECT_NE(err({{"router", "switch"}}).find("router \"switch\" routes each token to one expert: option "
                                            "'num_experts_per_tok' must be 1 but is 2"),
            std::string::npos);
  EXPECT_NE(err({{"num_local_experts", 4}, {"n_routed_experts", 6}}).find("name the same number; give one"),
            std::string::npos);
  EXPECT_NE(err({{"router", "greedy"}}).find("moe.router"), std::string::npos);
  EXPECT_NE(err({{"capacity", 1.0}}).find("moe.capacity"), std::string::npos);
}

// noisy_topk: the noise is a function of (seed, step, layer) in training and
// absent at evaluation.
TEST(MoeModel, NoisyRoutingIsReproducibleAndOffAtEvaluation) {
  const ModelConfig c = moe_config({{"router", "noisy_topk"}, {"num_local_experts", 4}});
  Transformer a(c, 3), b(c, 3);
  EXPECT_TRUE(a.find_parameter("model.layers.0.mlp.gate_noise.weight") != nullptr);
  const Tensor tok = mt::random_tokens({2, 9}, 5, 40), tgt = mt::random_tokens({2, 9}, 6, 40);
  a.begin_training_step(3);
  b.begin_training_step(3);
  const double la = a.loss(tok, tgt, true), lb = b.loss(tok, tgt, true);
  EXPECT_EQ(la, lb);
  b.begin_training_step(4);
  EXPECT_NE(b.loss(tok, tgt, true), la);
  EXPECT_EQ(a.loss(tok, tgt, false), b.loss(tok, tgt, false));  // no noise at evaluation
}

// A Mixtral-style model (8 experts, top-2, both auxiliary losses) trains;
// metrics.jsonl carries the auxiliary loss, per-expert load and drops.
TEST(MoeModel, TrainsAndLogsRouterMetrics) {
  const std::string dir = mt::fresh_temp_dir("moe_train");
  nlohmann::json j = {{"model_type", "modformer"},  {"vocab_size", 256}, {"hidden_size", 32},
                      {"intermediate_size", 32},    {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},   {"max_position_embeddings", 64}, {"ffn", "moe"},
                      {"moe", {{"num_local_experts", 8}, {"num_experts_per_tok", 2}, {"router_aux_loss_coef", 0.01},
                               {"router_z_loss_coef", 0.001}, {"capacity_factor", 1.25}}}};
  Transformer m(config_from_json(j, "moe.json"), 7);
  std::string text;
  for (int i = 0; text.size() < (1u << 16); ++i) text += "the cat sat on the mat number " + std::to_string(i % 97) + ". ";
  TrainConfig cfg = mt::small_train_config(dir);
  const TextCorpus corpus = TextCorpus::from_text(std::move(text), cfg.val_fraction, "moe test corpus");
  cfg.steps = 16;
  cfg.grad_accum = 1;
  cfg.lr = 0.02;
  cfg.grad_clip = 1.0;
  cfg.log_interval = 8;
  cfg.eval_interval = 0;
  cfg.checkpoint_interval = 0;
  const EvalResult before = evaluate(m, corpus, 32, 8, 4);
  const TrainResult r = train(m, corpus, cfg);
  EXPECT_LT(r.val.loss, before.loss - 1.0) << "before " << before.loss << " after " << r.val.loss;
  const auto lines = mt::metric_lines(dir);
  ASSERT_EQ(lines.size(), 2u);
  for (const auto& line : lines) {
    ASSERT_TRUE(line.contains("aux_loss")) << line.dump();
    EXPECT_GT(line["aux_loss"].get<double>(), 0.0);
    const auto& layer = line["aux"]["layers.1.moe"];
    ASSERT_EQ(layer["load"].size(), 8u);
    double total = 0;
    for (const auto& v : layer["load"]) total += v.get<double>();
    EXPECT_NEAR(total + layer["dropped_fraction"].get<double>(), 1.0, 1e-9);  // shares of all assignments
    EXPECT_GE(layer["dropped_fraction"].get<double>(), 0.0);
    EXPECT_LE(layer["dropped_fraction"].get<double>(), 1.0);
    EXPECT_NEAR(line["aux_loss"].get<double>(),
                line["aux"]["layers.0.moe"]["balance_loss"].get<double>() + line["aux"]["layers.0.moe"]["z_loss"].get<double>() +
                    layer["balance_loss"].get<double>() + layer["z_loss"].get<double>(),
                1e-12);
  }
  EXPECT_LT(lines.back()["aux"]["layers.1.moe"]["dropped_fraction"].get<double>(), 0.5);  // the balance loss works
  std::filesystem::remove_all(dir);
}

// Gradient checkpointing re-runs each block's forward in the backward: with
// MoE (noisy routing, capacity drops, auxiliary losses) that replay is the
// same routing and the same bits.
TEST(MoeModel, GradientCheckpointingGivesTheSameBits) {
  const ModelConfig c = moe_config({{"router", "noisy_topk"}, {"num_local_experts", 4}, {"capacity_factor", 1.0},
                                    {"router_aux_loss_coef", 0.05}, {"router_z_loss_coef", 0.01}});
  Transformer a(c, 9), b(c, 9);
  b.set_gradient_checkpointing(true);
  const Tensor tok = mt::random_tokens({2, 11}, 7, 40), tgt = mt::random_tokens({2, 11}, 8, 40);
  a.begin_training_step(5);
  b.begin_training_step(5);
  EXPECT_EQ(a.loss(tok, tgt, true), b.loss(tok, tgt, true));
  EXPECT_EQ(a.aux_loss(), b.aux_loss());
  EXPECT_GT(a.aux_loss(), 0.0);
  const auto pa = a.parameters(), pb = b.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) EXPECT_EQ(max_abs_diff(pa[i]->grad, pb[i]->grad), 0.0f) << pa[i]->name;
}
