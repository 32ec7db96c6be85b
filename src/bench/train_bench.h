// `modformer bench train`: training tokens/s (forward + backward + clipping +
// AdamW) of a model config against the same model in PyTorch eager
// (bench/train_pytorch.py under /usr/bin/python3, a child process), in one
// run; plus a per-phase and per-component breakdown, peak engine memory, and
// the memory/time trade of gradient checkpointing. With --profile, one more
// run under the scoped-timer profiler (core/profile.h) splits the step by
// category (GEMM, attention forward/backward, norms, activations, RoPE, loss,
// embedding, optimizer, copies) and rates the model's FLOPs/s against the
// same-run sgemm rate at the model's largest GEMM shape (see ProfileReport).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/profile.h"
#include "model/config.h"

namespace mf::bench {

struct TrainBenchOptions {
  std::string config_path;           // "" = default_config()
  std::int64_t batch_size = 0;       // 0 = default_train_config()'s
  std::int64_t seq_len = 0;          // 0 = default_train_config()'s
  int warmup = 2;                    // untimed steps first (each variant)
  int steps = 5;                     // timed steps (each variant, each round)
  int rounds = 1;                    // variants alternate per round; the best round of each is kept
  bool pytorch = true;               // run the PyTorch twin
  bool checkpointing = true;         // also measure with gradient checkpointing
  bool components = true;            // time attention and linear layers alone at the model's shapes
  bool profile = false;              // one more run under the profiler: category table, SVG, sgemm fractions
  std::string profile_svg = "profile.svg";  // the bar chart (--profile only); "" = not written
  std::string python = "/usr/bin/python3";
  std::string script;                // "" = find bench/train_pytorch.py (see find_train_script)
  std::string json_path;             // "" = not written
  std::string command_line;          // recorded in the JSON (how to reproduce)
  bool progress = true;
};

// Where bench/train_pytorch.py is: `explicit_path` if given (must exist), else
// the first of <exe dir>/../bench/, <exe dir>/bench/, ./bench/ that holds it;
// "" when none does.
std::string find_train_script(const std::string& explicit_path);

// Seconds per step of one variant (means over the timed steps).
struct PhaseTimes {
  double step_s = 0;       // whole training step
  double forward_s = 0;    // PyTorch: forward; modformer: a gradient-free forward (no activations kept)
  double backward_s = 0;   // modformer: loss-with-gradients time minus that forward
  double optimizer_s = 0;  // zero grads + global-norm clip + AdamW
};

struct EngineRun {
  double tokens_per_s = 0;
  PhaseTimes phases;
  std::int64_t peak_engine_bytes = 0;       // allocator high-water mark over the timed steps
  std::int64_t resident_engine_bytes = 0;   // parameters + gradients + optimizer state (before a step)
  std::int64_t saved_activation_bytes = 0;  // kept between forward and backward
  double last_loss = 0;
};

struct ComponentTimes {  // per training step (all layers), forward + backward
  double attention_s = 0;  // attention core (flash/dense kernel) alone
  double linear_s = 0;     // every projection + LM head, through linear_forward/backward
};

struct PytorchRun {
  bool available = false;
  std::string reason;  // why not, when !available
  std::int64_t parameters = 0;
  double tokens_per_s = 0;
  PhaseTimes phases;
  std::int64_t peak_rss_bytes = 0;
  nlohmann::json raw;  // the script's JSON line
};

// Profiler totals of a measurement, summed over its timed steps.
struct TrainingProfile {
  profile::Snapshot forward;  // the gradient-free forward
  profile::Snapshot step;     // the training step (zero grads, loss with gradients, clip, AdamW)
  int steps = 0;
};

// One training step timing of `cfg` in this process; with `profile`, the
// profiler is on for the timed steps and its totals land there.
EngineRun measure_modformer_training(const ModelConfig& cfg, std::int64_t batch, std::int64_t seq_len, int warmup,
                                     int steps, bool checkpointing, TrainingProfile* profile = nullptr);

// Model FLOPs of one forward: the GEMM FLOPs counted by the profiler in a
// gradient-free forward (`forward_gemm_flops`, per step) plus the attention
// core's, 4 * B * Hq * D * (causal query-key pairs per sequence) for each
// full/sliding attention layer. The backward is counted as 2x the forward
// (the usual model-FLOPs convention: recomputation is not counted).
double model_forward_flops(const ModelConfig& cfg, std::int64_t batch, std::int64_t seq_len,
                           double forward_gemm_flops);
// Causal query-key pairs of one sequence of length L with a window W (0: none): sum_i min(i + 1, W).
double causal_attention_pairs(std::int64_t seq_len, std::int64_t window);
ComponentTimes measure_components(const ModelConfig& cfg, std::int64_t batch, std::int64_t seq_len, int reps);

// Runs the PyTorch twin on the config at `config_json_path`; never throws for
// a missing interpreter, torch or script (available = false, reason says why).
PytorchRun run_pytorch_twin(const std::string& python, const std::string& script, const std::string& config_json_path,
                            std::int64_t batch, std::int64_t seq_len, int threads, int warmup, int steps);
// Runs `python script args...` (stdout and stderr captured); returns the
// script's last JSON line when it has "ok": true, else null with `reason` set
// (interpreter missing, torch not importable, config refused, crash).
nlohmann::json run_train_script(const std::string& python, const std::string& script,
                                const std::vector<std::string>& args, std::string& reason);

// The twin's parameter count for a config (--count-params); throws with the
// reason when it cannot be obtained.
std::int64_t pytorch_parameter_count(const std::string& python, const std::string& script,
                                     const std::string& config_json_path);

// Prints the report (Markdown) on stdout, progress on stderr; returns the exit code.
int run_train_bench(const TrainBenchOptions& options);

}  // namespace mf::bench
