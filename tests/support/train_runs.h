// Shared by the training-loop tests (language model and classify tasks): a
// small run's settings (12 steps, accumulation 2, active clipping, logs,
// evaluations and checkpoints at different intervals) and metrics.jsonl read
// back without its one wall-clock field.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "train/trainer.h"

namespace mf::testing {

// An empty folder under the system temp dir, unique per process and tag.
inline std::string fresh_temp_dir(const std::string& tag) {
  const std::filesystem::path d =
      std::filesystem::temp_directory_path() / ("mf_test_" + std::to_string(::getpid()) + "_" + tag);
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d.string();
}

inline TrainConfig small_train_config(const std::string& dir) {
  TrainConfig cfg;
  cfg.steps = 12;
  cfg.batch_size = 4;
  cfg.seq_len = 32;
  cfg.grad_accum = 2;
  cfg.lr = 0.05;
  cfg.min_lr = 0.005;
  cfg.warmup_steps = 3;
  cfg.weight_decay = 0.01;
  cfg.grad_clip = 0.5;  // active: the test models' gradients start above it
  cfg.log_interval = 3;
  cfg.eval_interval = 6;
  cfg.eval_windows = 8;
  cfg.checkpoint_interval = 4;
  cfg.seed = 99;
  cfg.val_fraction = 0.02;
  cfg.out_dir = dir;
  cfg.progress = false;
  return cfg;
}

inline std::vector<nlohmann::json> metric_lines(const std::string& dir) {
  std::vector<nlohmann::json> out;
  std::ifstream in(dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    j.erase("tokens_per_s");  // wall-clock: the only field allowed to differ
    out.push_back(j);
  }
  return out;
}

}  // namespace mf::testing
