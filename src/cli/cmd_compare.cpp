// `modformer compare [--tasks a,b] [--mixers x,y] [--budget-steps N |
// --budget-minutes M] [--params P] [--profile quick|full] [--out DIR]`:
// every (task, mixer) cell trained on the same data in the same budget from a
// base config of about P parameters, evaluated and recorded (src/compare/);
// resumable; results.json, results.md and SVG plots in DIR.
#include <iostream>
#include <memory>

#include "cli/command.h"
#include "compare/harness.h"
#include "core/error.h"

namespace {

std::function<int()> setup_compare(CLI::App& app) {
  auto o = std::make_shared<mf::CompareOptions>();
  std::string tasks_help = "Tasks (default: all):";
  for (const std::string& t : mf::compare_task_names()) tasks_help += " " + t;
  app.add_option("--tasks", o->tasks, tasks_help)->delimiter(',');
  app.add_option("--mixers", o->mixers,
                 "Token mixers from the registry (default: every registered one; \"flash\" = full_attention)")
      ->delimiter(',');
  app.add_option("--budget-steps", o->budget_steps, "Optimizer steps per cell (default: the profile's)");
  app.add_option("--budget-minutes", o->budget_minutes,
                 "Training minutes per cell instead: the step count is chosen by a timed probe and recorded");
  app.add_option("--params", o->params, "Parameters per model (default: the profile's); the width is chosen per mixer");
  app.add_option("--profile", o->profile, "quick (every task and mixer in ~10 min on 2 cores) or full")
      ->capture_default_str();
  app.add_flag("--quick", [o](std::int64_t) { o->profile = "quick"; }, "Same as --profile quick");
  app.add_option("--out", o->out_dir, "Output folder (cells/, data/, results.json, results.md, *.svg)")
      ->capture_default_str();
  app.add_option("--lm-data", o->lm_data, "Text corpus of char_lm and extrapolation (default: dict-gcide)");
  app.add_option("--seed", o->seed, "Seed of every cell (data order and init) and of the generated data")
      ->capture_default_str();
  app.add_flag("--progress", o->progress, "A training progress bar per cell");
  auto mixer_options = std::make_shared<std::string>();
  app.add_option("--mixer-options", *mixer_options,
                 "JSON object of mixer options over the profile's, e.g. '{\"linformer\": {\"k\": 32}}'");
  return [o, mixer_options] {
    if (!mixer_options->empty()) {
      o->mixer_options = nlohmann::json::parse(*mixer_options, nullptr, false);
      MF_CHECK(!o->mixer_options.is_discarded(), "[compare] --mixer-options is not valid JSON: ", *mixer_options);
    }
    o->command_line = "modformer compare";
    for (const auto& t : o->tasks) o->command_line += (&t == &o->tasks.front() ? " --tasks " : ",") + t;
    for (const auto& m : o->mixers) o->command_line += (&m == &o->mixers.front() ? " --mixers " : ",") + m;
    if (o->budget_steps) o->command_line += " --budget-steps " + std::to_string(o->budget_steps);
    if (o->budget_minutes > 0) o->command_line += " --budget-minutes " + std::to_string(o->budget_minutes);
    if (o->params) o->command_line += " --params " + std::to_string(o->params);
    o->command_line += " --profile " + o->profile + " --seed " + std::to_string(o->seed) + " --out " + o->out_dir;
    if (!o->lm_data.empty()) o->command_line += " --lm-data " + o->lm_data;
    if (!mixer_options->empty()) o->command_line += " --mixer-options '" + *mixer_options + "'";
    const nlohmann::json r = mf::run_compare(*o);
    std::size_t ok = 0, other = 0;
    for (const auto& c : r["cells"]) (c["status"] == "ok" ? ok : other) += 1;
    std::cout << ok << " cells measured, " << other << " unsupported or failed (listed in " << o->out_dir
              << "/results.md)\n";
    return 0;
  };
}

}  // namespace

MF_REGISTER_COMMAND("compare",
                    "Train and measure every token mixer on the survey's comparison tasks (same data, budget and "
                    "size); tables and plots",
                    setup_compare);
