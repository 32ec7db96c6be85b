// `modformer train --task classify` and `modformer eval` on a classifier:
// the flag rules (--val only with classify and required there, --config
// required, an encoder config), and train + eval end to end once a model
// implements SequenceClassifier (src/model/classifier_factory.cpp).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "model/config.h"
#include "../support/cli.h"
#include "../support/tiny_models.h"

using namespace mf;
using mf::testing::run_cli;
namespace fs = std::filesystem;

namespace {

std::string temp_dir(const std::string& tag) {
  const fs::path d = fs::temp_directory_path() / ("mf_classify_cli_" + std::to_string(::getpid()) + "_" + tag);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

// "Source\tTarget", then texts whose label is 1 when they start with 'a'.
void write_tsv(const std::string& path, int n) {
  std::string s = "Source\tTarget\n";
  for (int i = 0; i < n; ++i) s += std::string(i % 2 ? "a" : "b") + std::string(static_cast<std::size_t>(3 + i % 5), 'c') + "\t" + (i % 2 ? "1" : "0") + "\n";
  write_file_atomic(path, s);
}

// The tiny Llama test config as an encoder classifier with 2 labels.
void write_encoder_config(const std::string& path) {
  nlohmann::json j = config_to_json(mf::testing::tiny_llama_config());
  j["model_type"] = "modformer";  // LlamaForCausalLM is a decoder
  j.erase("architectures");
  j["is_decoder"] = false;
  j["num_labels"] = 2;
  write_file_atomic(path, j.dump(2));
}

}  // namespace

TEST(ClassifyCli, FlagRules) {
  const std::string dir = temp_dir("flags");
  write_tsv(dir + "/train.tsv", 20);
  write_tsv(dir + "/val.tsv", 6);
  save_config(dir + "/decoder.json", mf::testing::tiny_llama_config());
  const std::string data = " --data " + dir + "/train.tsv --out " + dir + "/run --steps 2 --no-progress";
  auto err = [&](const std::string& args) {
    const auto r = run_cli("train" + args, dir);
    EXPECT_NE(r.rc, 0) << args;
    return r.err;
  };
  EXPECT_NE(err(data + " --val " + dir + "/val.tsv").find("--val is only valid with --task classify"),
            std::string::npos);
  EXPECT_NE(err(data + " --task classify --config " + dir + "/decoder.json").find("--task classify needs --val VAL.tsv"),
            std::string::npos);
  EXPECT_NE(err(data + " --task classify --val " + dir + "/val.tsv --config " + dir + "/decoder.json")
                .find("needs an encoder classifier config (\"is_decoder\": false"),
            std::string::npos);
  EXPECT_NE(err(" --task classify --val " + dir + "/val.tsv --out " + dir + "/run").find("needs --data TRAIN.tsv"),
            std::string::npos);
  EXPECT_NE(err(data + " --task regress").find("regress"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir + "/run/checkpoint"));
  // Without --config: the built-in encoder, with as many classes as the labels seen.
  const auto builtin = run_cli("train --task classify --data " + dir + "/train.tsv --val " + dir +
                                   "/val.tsv --out " + dir + "/run_default --steps 2 --batch-size 4 --seq-len 16 --no-progress",
                               dir);
  ASSERT_EQ(builtin.rc, 0) << builtin.err;
  EXPECT_NE(builtin.err.find("classifier from the built-in encoder config, 2 labels"), std::string::npos)
      << builtin.err;
  const mf::ModelConfig saved = mf::load_config(dir + "/run_default/checkpoint/config.json");
  EXPECT_FALSE(saved.is_decoder);
  EXPECT_EQ(saved.num_labels, 2);
  EXPECT_EQ(saved.max_position_embeddings, 16);

  // eval on a classifier checkpoint folder: it needs --data, and LM-only flags are refused
  fs::create_directories(dir + "/ckpt");
  write_encoder_config(dir + "/ckpt/config.json");
  auto eval_err = [&](const std::string& args) {
    const auto r = run_cli("eval --model " + dir + "/ckpt" + args, dir);
    EXPECT_NE(r.rc, 0) << args;
    return r.err;
  };
  EXPECT_NE(eval_err("").find("is a classifier: give its validation TSV with --data VAL.tsv"), std::string::npos);
  EXPECT_NE(eval_err(" --data " + dir + "/val.tsv --windows 4").find("--windows are for language models"),
            std::string::npos);
  fs::remove_all(dir);
}

// train --task classify, eval and --resume of an encoder classifier through the CLI.
TEST(ClassifyCli, TrainAndEvalEndToEnd) {
  const std::string dir = temp_dir("e2e");
  write_tsv(dir + "/train.tsv", 40);
  write_tsv(dir + "/val.tsv", 10);
  write_encoder_config(dir + "/encoder.json");
  const std::string out = dir + "/run";
  const auto r = run_cli("train --task classify --config " + dir + "/encoder.json --data " + dir + "/train.tsv --val " +
                             dir + "/val.tsv --out " + out +
                             " --steps 4 --batch-size 4 --seq-len 6 --warmup 1 --log-interval 1 --eval-interval 2"
                             " --checkpoint-interval 2 --no-progress",
                         dir);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("step 4: validation accuracy"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("truncated to 6 bytes"), std::string::npos) << r.err;  // texts of 4..8 bytes
  const std::string metrics = read_file(out + "/metrics.jsonl");
  EXPECT_NE(metrics.find("\"val_accuracy\":"), std::string::npos) << metrics;
  const auto e = run_cli("eval --model " + out, dir);  // the run's --val and seq_len
  ASSERT_EQ(e.rc, 0) << e.err;
  EXPECT_NE(e.out.find("validation accuracy"), std::string::npos) << e.out;
  const auto resumed = run_cli("train --task classify --data " + dir + "/train.tsv --val " + dir + "/val.tsv --out " +
                                   out + " --steps 6 --resume --no-progress",
                               dir);
  ASSERT_EQ(resumed.rc, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("step 6:"), std::string::npos) << resumed.out;
  fs::remove_all(dir);
}
