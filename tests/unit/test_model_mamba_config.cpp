// model_type "mamba": Hugging Face MambaConfig fields in and out, Hugging
// Face's tensor names, strict errors, and a checkpoint round trip. (The
// numbers: the model_mamba_hf fixture in test_model_fixtures.cpp.)
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/transformer.h"
#include "../support/errors.h"
#include "../support/tiny_models.h"

using namespace mf;
namespace mt = mf::testing;

namespace {

nlohmann::json hf_config() {
  return {{"model_type", "mamba"},        {"architectures", {"MambaForCausalLM"}}, {"vocab_size", 50},
          {"hidden_size", 16},            {"num_hidden_layers", 2},                {"state_size", 4},
          {"expand", 2},                  {"conv_kernel", 3},                      {"time_step_rank", "auto"},
          {"layer_norm_epsilon", 1e-5},   {"use_bias", false},                     {"use_conv_bias", true},
          {"hidden_act", "silu"},         {"initializer_range", 0.1},              {"residual_in_fp32", true},
          {"time_step_scale", 1.0},       {"time_step_min", 0.001},                {"time_step_max", 0.1},
          {"time_step_init_scheme", "random"}, {"time_step_floor", 1e-4},          {"rescale_prenorm_residual", false},
          {"use_cache", true},            {"pad_token_id", 0},                     {"bos_token_id", 0},
          {"eos_token_id", 0},            {"torch_dtype", "float32"},              {"transformers_version", "4.40.0"}};
}

void expect_error(const nlohmann::json& j, const std::string& needle) {
  const std::string e = mt::error_of([&] { config_from_json(j, "mamba.json"); });
  EXPECT_NE(e.find(needle), std::string::npos) << "error: " << e << "\nexpected: " << needle;
}

}  // namespace

TEST(MambaConfig, HuggingFaceFieldsAndNames) {
  const ModelConfig c = config_from_json(hf_config(), "mamba.json");
  EXPECT_EQ(c.model_type, "mamba");
  EXPECT_EQ(c.layer_mixer(1), "mamba");
  EXPECT_EQ(c.ffn, FfnKind::None);
  EXPECT_EQ(c.intermediate_size, 32);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.options_of("mamba").at("state_size"), 4);
  EXPECT_EQ(c.options_of("mamba").at("time_step_rank"), 0);  // "auto"
  Transformer m(c, 1);
  std::vector<std::string> names;
  for (const Parameter* p : m.parameters()) names.push_back(p->name);
  const std::vector<std::string> want = {
      "backbone.embeddings.weight",           "backbone.layers.0.norm.weight",
      "backbone.layers.0.mixer.in_proj.weight", "backbone.layers.0.mixer.conv1d.weight",
      "backbone.layers.0.mixer.conv1d.bias",  "backbone.layers.0.mixer.x_proj.weight",
      "backbone.layers.0.mixer.dt_proj.weight", "backbone.layers.0.mixer.dt_proj.bias",
      "backbone.layers.0.mixer.A_log",        "backbone.layers.0.mixer.D",
      "backbone.layers.0.mixer.out_proj.weight"};
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_EQ(names.at(i), want[i]);
  EXPECT_EQ(names.back(), "backbone.norm_f.weight");  // tied head: no lm_head.weight

  // Written back with Hugging Face's fields; reading that gives the same config.
  const nlohmann::json out = config_to_json(c);
  EXPECT_EQ(out.at("architectures")[0], "MambaForCausalLM");
  EXPECT_EQ(out.at("time_step_rank"), "auto");
  EXPECT_EQ(out.at("layer_norm_epsilon"), 1e-5);
  EXPECT_FALSE(out.contains("num_attention_heads"));
  EXPECT_EQ(config_to_json(config_from_json(out, "again")), out);
}

TEST(MambaConfig, CheckpointRoundTripComputesTheSameFunction) {
  const std::string dir = (std::filesystem::temp_directory_path() / ("mf_mamba_cfg_" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(dir);
  const ModelConfig c = config_from_json(hf_config(), "mamba.json");
  Transformer m(c, 4);
  save_checkpoint(dir, m);
  auto back = load_checkpoint(dir);
  const Tensor tok = mt::random_tokens({2, 7}, 1, 50);
  EXPECT_EQ(max_abs_diff(back->logits(tok), m.logits(tok)), 0.0f);
  std::filesystem::remove_all(dir);
}

TEST(MambaConfig, StrictErrors) {
  nlohmann::json j = hf_config();
  j["num_attention_heads"] = 4;
  expect_error(j, "field 'num_attention_heads': unknown field for model_type \"mamba\"");
  j = hf_config();
  j["intermediate_size"] = 48;
  expect_error(j, "field 'intermediate_size': 48 is not expand * hidden_size = 32");
  j = hf_config();
  j["rescale_prenorm_residual"] = true;
  expect_error(j, "field 'rescale_prenorm_residual': true (out_proj initialization");
  j = hf_config();
  j["hidden_act"] = "gelu";
  expect_error(j, "field 'hidden_act': Mamba's gate and convolution use \"silu\"");
  j = hf_config();
  j["time_step_rank"] = "big";
  expect_error(j, "field 'time_step_rank': must be \"auto\" or an integer >= 1");
  j = hf_config();
  j.erase("hidden_size");
  expect_error(j, "field 'hidden_size': missing (required)");
  j = hf_config();
  j["state_size"] = 0;
  expect_error(j, "state_size");
  // A generic config cannot claim model_type "mamba" with other layers.
  ModelConfig g = config_from_json(hf_config(), "mamba.json");
  g.layer_types = {"mamba", "full_attention"};
  EXPECT_NE(mt::error_of([&] { validate_config(g, "g"); }).find("model_type \"mamba\" requires every layer's token mixer"),
            std::string::npos);
}
