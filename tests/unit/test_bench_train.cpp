// `modformer bench train`: the command runs on a tiny config and writes valid
// JSON; the PyTorch twin (bench/train_pytorch.py) is the same model as ours --
// same parameter count over several configs, same loss for the same weights --
// and refuses configs it does not model by naming the field. The twin's tests
// skip (saying why) where /usr/bin/python3 cannot import torch.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "bench/train_bench.h"
#include "core/atomic_file.h"
#include "model/config.h"
#include "model/transformer.h"
#include "../support/errors.h"
#include "../support/tiny_models.h"

using namespace mf;
using mf::testing::tiny_llama_config;
namespace fs = std::filesystem;

namespace {

const std::string kPython = "/usr/bin/python3";
const std::string kScript = std::string(MODFORMER_FIXTURES_DIR) + "/../../bench/train_pytorch.py";

std::string temp_dir(const std::string& tag) {
  const fs::path d = fs::temp_directory_path() / ("mf_bench_train_" + std::to_string(::getpid()) + "_" + tag);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

// Empty when the twin can run; else why not (for GTEST_SKIP). Asked once
// per test binary (importing torch takes seconds).
std::string twin_unavailable() {
  static const std::string why = [] {
    const std::string dir = temp_dir("probe");
    save_config(dir + "/tiny.json", tiny_llama_config());
    std::string reason;
    const nlohmann::json j =
        bench::run_train_script(kPython, kScript, {"--config", dir + "/tiny.json", "--count-params"}, reason);
    fs::remove_all(dir);
    if (!j.is_null()) return std::string();
    if (reason.find("cannot import torch") == std::string::npos && reason.find("cannot run") == std::string::npos)
      ADD_FAILURE() << "the twin failed for another reason than a missing torch: " << reason;
    return reason;
  }();
  return why;
}

}  // namespace

TEST(BenchTrain, CliRunsTinyConfigAndWritesJson) {
  const std::string dir = temp_dir("cli");
  save_config(dir + "/tiny.json", tiny_llama_config());
  const std::string out = dir + "/bench.json";
  const std::string cmd = std::string(MODFORMER_CLI_PATH) + " --threads 1 bench train --config " + dir +
                          "/tiny.json --batch-size 2 --seq-len 16 --warmup 1 --steps 2 --no-pytorch --no-progress"
                          " --json " + out + " > " + dir + "/stdout.txt 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_file(dir + "/stdout.txt");
  const nlohmann::json j = nlohmann::json::parse(read_file(out));  // throws (fails) on invalid JSON
  EXPECT_EQ(j.at("benchmark"), "train");
  EXPECT_EQ(j.at("batch_size"), 2);
  EXPECT_EQ(j.at("seq_len"), 16);
  EXPECT_EQ(j.at("threads"), 1);
  EXPECT_EQ(j.at("parameters").at("modformer").get<std::int64_t>(), Transformer(tiny_llama_config(), 0).num_parameters());
  const nlohmann::json& m = j.at("modformer");
  EXPECT_GT(m.at("tokens_per_s").get<double>(), 0);
  const nlohmann::json& ph = m.at("phases");
  EXPECT_GT(ph.at("step_s").get<double>(), 0);
  EXPECT_GT(ph.at("forward_s").get<double>(), 0);
  EXPECT_GE(ph.at("backward_s").get<double>(), 0);
  EXPECT_GT(ph.at("optimizer_s").get<double>(), 0);
  // Parameters + gradients + two AdamW moments are resident before a step; the peak adds activations.
  const std::int64_t params = j.at("parameters").at("modformer").get<std::int64_t>();
  EXPECT_GE(m.at("resident_engine_bytes").get<std::int64_t>(), 4 * params * 4);
  EXPECT_GT(m.at("peak_engine_bytes").get<std::int64_t>(), m.at("resident_engine_bytes").get<std::int64_t>());
  // Checkpointing keeps only block inputs: fewer activation bytes.
  EXPECT_LT(j.at("modformer_checkpointing").at("saved_activation_bytes").get<std::int64_t>(),
            m.at("saved_activation_bytes").get<std::int64_t>());
  EXPECT_GT(j.at("checkpointing").at("activation_bytes_saved").get<std::int64_t>(), 0);
  EXPECT_TRUE(j.at("components").at("attention_s").get<double>() > 0);
  EXPECT_TRUE(j.at("components").at("linear_s").get<double>() > 0);
  EXPECT_FALSE(j.at("pytorch").at("available").get<bool>());
  EXPECT_TRUE(j.at("ratio").is_null());
  EXPECT_NE(read_file(dir + "/stdout.txt").find("PyTorch eager: not measured"), std::string::npos);
  fs::remove_all(dir);
}

TEST(BenchTrain, BadOptionsAreNamed) {
  EXPECT_ERROR("seq_len 65 exceeds the model's max_position_embeddings (64)", bench::measure_modformer_training(tiny_llama_config(), 2, 65, 0, 1, false));  // > max positions
  try {
    bench::measure_modformer_training(tiny_llama_config(), 0, 8, 0, 1, false);
    FAIL() << "batch 0 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[bench train] batch (0)"), std::string::npos) << e.what();
  }
  std::string reason;
  EXPECT_TRUE(bench::run_train_script("/nonexistent/python3", kScript, {"--count-params"}, reason).is_null());
  EXPECT_NE(reason.find("cannot run '/nonexistent/python3'"), std::string::npos) << reason;
  EXPECT_TRUE(bench::run_train_script(kPython, "", {}, reason).is_null());
  EXPECT_NE(reason.find("train_pytorch.py not found"), std::string::npos) << reason;
}

TEST(BenchTrain, PytorchTwinHasOurParameterCount) {
  if (const std::string why = twin_unavailable(); !why.empty())
    GTEST_SKIP() << "PyTorch twin not runnable here (CI installs python3-torch): " << why;
  std::vector<ModelConfig> configs;
  ModelConfig tied = tiny_llama_config();  // tied embeddings: counted once on both sides
  tied.tie_word_embeddings = true;
  configs.push_back(tied);
  ModelConfig mqa = tiny_llama_config();  // MQA, biases, head_dim * heads != hidden
  mqa.num_key_value_heads = 1;
  mqa.head_dim = 16;
  mqa.attention_bias = true;
  mqa.mlp_bias = true;
  configs.push_back(mqa);
  configs.push_back(default_config());
  const std::string dir = temp_dir("count");
  for (std::size_t i = 0; i < configs.size(); ++i) {
    const std::string path = dir + "/c" + std::to_string(i) + ".json";
    save_config(path, configs[i]);
    EXPECT_EQ(bench::pytorch_parameter_count(kPython, kScript, path), Transformer(configs[i], 0).num_parameters())
        << "config " << i;
  }
  fs::remove_all(dir);
}

TEST(BenchTrain, PytorchTwinComputesOurLossForOurWeights) {
  if (const std::string why = twin_unavailable(); !why.empty())
    GTEST_SKIP() << "PyTorch twin not runnable here (CI installs python3-torch): " << why;
  const std::string dir = temp_dir("loss");
  std::vector<double> losses;
  for (const bool window : {false, true}) {  // the twin's mask must match ours with a sliding window too
    ModelConfig c = tiny_llama_config();
    if (window) {
      c.model_type = "modformer";  // "llama" has no sliding window
      c.sliding_window = 5;
    }
    c.initializer_range = 0.2;  // logits of order 1, so that a wrong mask or rotation changes the loss
    const std::string sub = dir + (window ? "/w" : "/full");
    fs::create_directories(sub);
    Transformer model(c, 7);
    model.save(sub);
    const std::int64_t B = 2, L = 12;
    Tensor tokens = Tensor::empty({B, L}, DType::I32), targets = Tensor::empty({B, L}, DType::I32);
    for (std::int64_t b = 0; b < B; ++b)  // the script's check_tokens
      for (std::int64_t i = 0; i < L; ++i) {
        tokens.data<std::int32_t>()[b * L + i] = static_cast<std::int32_t>((131 * b + 31 * i + 7) % c.vocab_size);
        targets.data<std::int32_t>()[b * L + i] = static_cast<std::int32_t>((131 * b + 31 * (i + 1) + 7) % c.vocab_size);
      }
    const double ours = model.loss(tokens, targets, false);
    std::string reason;
    const nlohmann::json j = bench::run_train_script(
        kPython, kScript,
        {"--config", sub + "/config.json", "--check-loss", sub + "/model.safetensors", "--batch-size",
         std::to_string(B), "--seq-len", std::to_string(L)},
        reason);
    ASSERT_FALSE(j.is_null()) << reason;
    // Both sides compute in float32: the loss (a mean of log-softmax terms of
    // size ~6, ulp ~5e-7) differs by rounding only (measured ~1e-7); 1e-5
    // allows a few tens of ulps, far below what a wrong mask, rotation or GQA
    // mapping changes (0.04-0.25 when mutated; see the window/no-window pair below).
    EXPECT_NEAR(j.at("loss").get<double>(), ours, 1e-5) << (window ? "window" : "full");
    losses.push_back(ours);
  }
  EXPECT_GT(std::abs(losses[0] - losses[1]), 1e-2) << "the window does not change the loss: the check is blind";
  fs::remove_all(dir);
}

TEST(BenchTrain, PytorchTwinRefusesWhatItDoesNotModel) {
  if (const std::string why = twin_unavailable(); !why.empty())
    GTEST_SKIP() << "PyTorch twin not runnable here (CI installs python3-torch): " << why;
  const std::string dir = temp_dir("refuse");
  ModelConfig c = tiny_llama_config();
  c.model_type = "modformer";
  c.norm = NormKind::LayerNorm;
  save_config(dir + "/ln.json", c);
  try {
    bench::pytorch_parameter_count(kPython, kScript, dir + "/ln.json");
    FAIL() << "a LayerNorm config was accepted by the Llama twin";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("field 'norm'"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}
