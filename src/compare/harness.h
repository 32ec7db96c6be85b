// `modformer compare`: every (task, mixer) cell of the survey's comparisons,
// trained on the same data in the same budget from a base config of about
// the same parameter count, evaluated, and recorded in a run folder per cell
// (resumable: a finished cell is skipped, an interrupted one resumes from its
// checkpoint). Tasks: character LM (bits per byte), ListOps (accuracy, an
// encoder classifier), MQAR (accuracy vs number of pairs), selective copying,
// induction heads (accuracy vs test length), length extrapolation (bits per
// byte at 1x..16x the training length, position schemes and RoPE scalings),
// and speed/memory vs length (bench/mixer_bench.h). Mixers come from the
// registry, so a newly registered mixer appears with no change here.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compare/listops.h"

namespace mf {

// Sizes of one profile: "quick" (every task and mixer in ~10 minutes on 2
// cores), "full" (the real measurements), "tiny" (tests: seconds).
struct CompareProfile {
  std::string name;
  std::int64_t steps = 0, params = 0, layers = 0, batch_size = 0, warmup_steps = 0;
  double lr = 0, min_lr = 0;
  std::int64_t checkpoints = 4;  // checkpoints per cell run (resume granularity)
  // char_lm and extrapolation
  std::int64_t lm_seq_len = 0, lm_corpus_bytes = 0, lm_eval_windows = 0;
  std::vector<std::int64_t> extrapolation_factors;  // eval lengths = factor * lm_seq_len
  // listops
  ListOpsOptions listops;
  std::int64_t listops_train = 0, listops_test = 0;
  // mqar
  std::int64_t mqar_vocab = 0, mqar_seq_len = 0, mqar_train_per_pairs = 0, mqar_test_per_pairs = 0;
  std::vector<std::int64_t> mqar_pairs;
  // selective copying
  std::int64_t copy_vocab = 0, copy_seq_len = 0, copy_tokens = 0, copy_train = 0, copy_test = 0;
  // induction heads
  std::int64_t induction_vocab = 0, induction_seq_len = 0, induction_train = 0, induction_test = 0;
  std::vector<std::int64_t> induction_factors;  // test lengths = factor * induction_seq_len
  // speed and memory
  std::int64_t speed_hidden = 0, speed_heads = 0, speed_reps = 0, decode_steps = 0;
  std::vector<std::int64_t> speed_lengths, decode_contexts;
  // Options of mixers whose registry defaults do not fit the profile's
  // lengths ({"linformer": {"k": 16}}: Linformer's default k = 128 exceeds
  // the quick profile's sequences); applied only to mixers in use.
  nlohmann::json mixer_options = nlohmann::json::object();
};
CompareProfile compare_profile(const std::string& name);  // throws naming the known profiles

struct CompareOptions {
  std::vector<std::string> tasks;   // empty: every task
  std::vector<std::string> mixers;  // empty: every registered token mixer; "flash" = full_attention
  std::string profile = "full";
  std::int64_t budget_steps = 0;    // 0: the profile's
  double budget_minutes = 0;        // > 0: steps per cell from a timed probe (recorded)
  std::int64_t params = 0;          // 0: the profile's
  std::string out_dir = "compare";
  std::string lm_data;              // corpus of char_lm / extrapolation ("": dict-gcide)
  nlohmann::json mixer_options = nlohmann::json::object();  // {"mixer": {options}}, over the profile's
  std::uint64_t seed = 1234;
  bool progress = false;            // the trainer's progress bar per cell
  std::string command_line;         // recorded in results.json
  std::ostream* log = nullptr;      // a progress line per cell (default std::cerr)
};

const std::vector<std::string>& compare_task_names();
// Registry names; "flash" is an alias of full_attention; throws for an unknown name.
std::vector<std::string> resolve_compare_mixers(const std::vector<std::string>& names);

// Runs (or resumes) every cell, writes OUT/results.json, OUT/results.md and
// the SVG plots; returns the results object.
nlohmann::json run_compare(const CompareOptions& options);

}  // namespace mf
