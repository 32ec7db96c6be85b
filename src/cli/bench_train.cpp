// `modformer bench train`: training tokens/s of the default (or a given)
// config against the same model in PyTorch eager, in one run (see
// src/bench/train_bench.h).
#include <memory>

#include "bench/train_bench.h"
#include "cli/bench_registry.h"
#include "cli/command.h"  // MF_CLI_CONCAT, used by MF_REGISTER_BENCH

namespace {
std::function<int()> setup_train_bench(CLI::App& app) {
  auto opt = std::make_shared<mf::bench::TrainBenchOptions>();
  auto no_pytorch = std::make_shared<bool>(false);
  auto no_ckpt = std::make_shared<bool>(false);
  auto no_components = std::make_shared<bool>(false);
  auto no_progress = std::make_shared<bool>(false);
  app.add_option("--config", opt->config_path, "Model config JSON (default: the built-in Llama-style config)")
      ->check(CLI::ExistingFile);
  app.add_option("--batch-size", opt->batch_size, "Sequences per step (default: the trainer's default)");
  app.add_option("--seq-len", opt->seq_len, "Tokens per sequence (default: the trainer's default)");
  app.add_option("--warmup", opt->warmup, "Untimed steps before each measurement")->check(CLI::Range(0, 1000))
      ->capture_default_str();
  app.add_option("--steps", opt->steps, "Timed steps per measurement")->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app.add_option("--rounds", opt->rounds, "Rounds; engines alternate per round and the best round of each is kept")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_flag("--no-pytorch", *no_pytorch, "Do not run the PyTorch twin (bench/train_pytorch.py)");
  app.add_flag("--no-checkpointing", *no_ckpt, "Skip the gradient-checkpointing measurement");
  app.add_flag("--no-components", *no_components, "Skip the attention / linear-layer breakdown");
  app.add_flag("--profile", opt->profile,
               "One more run under the profiler: time per step by category, model FLOPs/s as a fraction of sgemm");
  app.add_option("--profile-svg", opt->profile_svg, "Where --profile writes its bar chart (\"\" = not written)")
      ->capture_default_str();
  app.add_option("--python", opt->python, "Python interpreter with torch")->capture_default_str();
  app.add_option("--script", opt->script, "The PyTorch twin (default: bench/train_pytorch.py beside the build)");
  app.add_option("--json", opt->json_path, "Write the results as JSON to this file");
  app.add_flag("--no-progress", *no_progress, "No progress bar");
  return [opt, no_pytorch, no_ckpt, no_components, no_progress] {
    mf::bench::TrainBenchOptions o = *opt;
    o.pytorch = !*no_pytorch;
    o.checkpointing = !*no_ckpt;
    o.components = !*no_components;
    o.progress = !*no_progress;
    return mf::bench::run_train_bench(o);
  };
}
}  // namespace

MF_REGISTER_BENCH("train", "Training tokens/s of a config vs the same model in PyTorch eager, with phase breakdown",
                  setup_train_bench);
