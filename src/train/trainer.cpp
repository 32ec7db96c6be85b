#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <variant>
#include <vector>

#include "core/atomic_file.h"
#include "core/progress.h"
#include "core/svg_plot.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/grad_clip.h"
#include "train/schedule.h"
#include "train/train_task.h"

namespace mf {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---- config <-> JSON through one field table ----
using FieldPtr = std::variant<std::int64_t TrainConfig::*, double TrainConfig::*, std::uint64_t TrainConfig::*,
                              std::string TrainConfig::*, bool TrainConfig::*>;
struct Field {
  const char* name;
  FieldPtr ptr;
  bool trajectory;  // changes the numbers a run produces: must match on resume
};
const std::vector<Field>& fields() {
  static const std::vector<Field> f = {
      {"task", &TrainConfig::task, true},
      {"steps", &TrainConfig::steps, false},  // may grow on resume (the cosine then stretches)
      {"batch_size", &TrainConfig::batch_size, true},
      {"seq_len", &TrainConfig::seq_len, true},
      {"grad_accum", &TrainConfig::grad_accum, true},
      {"lr", &TrainConfig::lr, true},
      {"min_lr", &TrainConfig::min_lr, true},
      {"warmup_steps", &TrainConfig::warmup_steps, true},
      {"weight_decay", &TrainConfig::weight_decay, true},
      {"beta1", &TrainConfig::beta1, true},
      {"beta2", &TrainConfig::beta2, true},
      {"eps", &TrainConfig::eps, true},
      {"grad_clip", &TrainConfig::grad_clip, true},
      {"log_interval", &TrainConfig::log_interval, false},
      {"eval_interval", &TrainConfig::eval_interval, false},
      {"eval_windows", &TrainConfig::eval_windows, false},
      {"checkpoint_interval", &TrainConfig::checkpoint_interval, false},
      {"seed", &TrainConfig::seed, true},
      {"data_path", &TrainConfig::data_path, false},  // the data itself is checked by fingerprint
      {"val_path", &TrainConfig::val_path, false},
      {"val_fraction", &TrainConfig::val_fraction, true},
      {"out_dir", &TrainConfig::out_dir, false},
      {"progress", &TrainConfig::progress, false},
  };
  return f;
}

json config_json(const TrainConfig& cfg) {
  json j = json::object();
  for (const Field& f : fields()) std::visit([&](auto p) { j[f.name] = cfg.*p; }, f.ptr);
  return j;
}

TrainConfig config_from(const json& j, const std::string& source) {
  MF_CHECK(j.is_object(), "[train] config in '", source, "' must be a JSON object");
  TrainConfig cfg;
  for (const auto& [key, value] : j.items()) {
    const Field* field = nullptr;
    for (const Field& f : fields())
      if (key == f.name) field = &f;
    MF_CHECK(field != nullptr, "[train] unknown field '", key, "' in '", source, "'");
    std::visit(
        [&](auto p) {
          using T = std::remove_reference_t<decltype(cfg.*p)>;
          bool ok = false;
          if constexpr (std::is_same_v<T, std::string>) ok = value.is_string();
          else if constexpr (std::is_same_v<T, bool>) ok = value.is_boolean();
          else if constexpr (std::is_same_v<T, double>) ok = value.is_number();
          else if constexpr (std::is_same_v<T, std::uint64_t>) ok = value.is_number_unsigned();
          else ok = value.is_number_integer();
          MF_CHECK(ok, "[train] field '", key, "' in '", source, "' has the wrong type (", value.type_name(), ")");
          cfg.*p = value.get<T>();
        },
        field->ptr);
  }
  validate(cfg);
  return cfg;
}

// ---- metrics ----
struct MetricsRow {
  std::int64_t step;
  double train_loss, val_loss;  // NaN when not measured at this step
};

double or_nan(const json& v) { return v.is_number() ? v.get<double>() : std::numeric_limits<double>::quiet_NaN(); }

void write_loss_svg(const std::string& path, const std::vector<MetricsRow>& rows, const char* y_label) {
  PlotSeries train{"train", {}, {}}, val{"validation", {}, {}};
  for (const MetricsRow& r : rows) {
    if (std::isfinite(r.train_loss)) {
      train.x.push_back(static_cast<double>(r.step));
      train.y.push_back(r.train_loss);
    }
    if (std::isfinite(r.val_loss)) {
      val.x.push_back(static_cast<double>(r.step));
      val.y.push_back(r.val_loss);
    }
  }
  PlotOptions opt;
  opt.title = "loss";
  opt.x_label = "step";
  opt.y_label = y_label;
  write_svg_line_chart(path, {train, val}, opt);
}

// Reads metrics.jsonl, keeping the lines of steps <= up_to (a resumed run
// rewrites what came after its checkpoint).
std::vector<std::string> read_metric_lines(const std::string& path, std::int64_t up_to,
                                           std::vector<MetricsRow>& rows) {
  std::vector<std::string> keep;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step") || !j["step"].is_number_integer()) continue;  // torn last line
    const std::int64_t step = j["step"].get<std::int64_t>();
    if (step > up_to) continue;
    rows.push_back({step, or_nan(j.value("train_loss", json())), or_nan(j.value("val_loss", json()))});
    keep.push_back(line);
  }
  return keep;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

void validate(const TrainConfig& c) {
  MF_CHECK(c.task == "lm" || c.task == "classify" || c.task == "sequence",
           "[train] task must be \"lm\", \"classify\" or \"sequence\" but is \"", c.task, "\"");
  MF_CHECK(c.steps >= 1, "[train] steps must be >= 1 but is ", c.steps);
  MF_CHECK(c.batch_size >= 1, "[train] batch_size must be >= 1 but is ", c.batch_size);
  MF_CHECK(c.seq_len >= 1, "[train] seq_len must be >= 1 but is ", c.seq_len);
  MF_CHECK(c.grad_accum >= 1, "[train] grad_accum must be >= 1 but is ", c.grad_accum);
  CosineSchedule{c.lr, c.min_lr, c.warmup_steps, c.steps}.validate();
  validate(AdamWConfig{c.beta1, c.beta2, c.eps, c.weight_decay});
  MF_CHECK(std::isfinite(c.grad_clip), "[train] grad_clip must be finite but is ", c.grad_clip);
  MF_CHECK(c.log_interval >= 1, "[train] log_interval must be >= 1 but is ", c.log_interval);
  MF_CHECK(c.eval_interval >= 0, "[train] eval_interval must be >= 0 but is ", c.eval_interval);
  MF_CHECK(c.eval_windows >= 0, "[train] eval_windows must be >= 0 but is ", c.eval_windows);
  MF_CHECK(c.checkpoint_interval >= 0, "[train] checkpoint_interval must be >= 0 but is ", c.checkpoint_interval);
  MF_CHECK(c.val_fraction > 0 && c.val_fraction < 1, "[train] val_fraction must be in (0, 1) but is ", c.val_fraction);
}

TrainConfig default_train_config() {
  TrainConfig c;
  c.steps = 1600;  // val 1.87 bits/byte on gcide; ~9 min at the 12.7k tokens/s of a quiet 2-core machine (issue 4 note)
  c.batch_size = 16;
  c.seq_len = 256;
  c.grad_accum = 1;
  c.lr = 2e-3;
  c.min_lr = 2e-4;
  c.warmup_steps = 30;
  c.weight_decay = 0.1;
  c.grad_clip = 1.0;
  c.log_interval = 10;
  c.eval_interval = 100;
  c.eval_windows = 32;
  c.checkpoint_interval = 100;
  return c;
}

std::string train_config_to_json(const TrainConfig& cfg) { return config_json(cfg).dump(2); }

TrainConfig train_config_from_json(const std::string& text, const std::string& source) {
  json j = json::parse(text, nullptr, false);
  MF_CHECK(!j.is_discarded(), "[train] '", source, "' is not valid JSON");
  return config_from(j, source);
}

namespace {
json read_trainer_state(const std::string& ckpt) {
  const std::string path = ckpt + "/" + kTrainerStateFile;
  json st = json::parse(read_file(path), nullptr, false);
  MF_CHECK(!st.is_discarded() && st.is_object(), "[train] '", path, "' is not valid JSON");
  MF_CHECK(st.value("format", "") == "modformer-trainer-state" && st.value("version", 0) == 1, "[train] '", path,
           "' is not a modformer trainer state (version 1)");
  for (const char* key : {"step", "config", "data", "log_accumulator"})
    MF_CHECK(st.contains(key), "[train] '", path, "' has no field '", key, "'");
  MF_CHECK(st["step"].is_number_integer() && st["step"].get<std::int64_t>() >= 0, "[train] '", path,
           "' has a bad step");
  return st;
}
}  // namespace

TrainConfig train_config_from_checkpoint(const std::string& out_dir) {
  const std::string ckpt = find_checkpoint(out_dir);
  MF_CHECK(!ckpt.empty(), "[train] no checkpoint in '", out_dir, "'");
  return config_from(read_trainer_state(ckpt)["config"], ckpt + "/" + kTrainerStateFile);
}

TrainLoopResult run_train_loop(TrainTask& task, const TrainConfig& cfg, bool resume) {
  MF_CHECK(!cfg.out_dir.empty(), "[train] out_dir is empty");
  std::error_code ec;
  fs::create_directories(cfg.out_dir, ec);
  MF_CHECK(fs::is_directory(cfg.out_dir), "[train] cannot create output folder '", cfg.out_dir, "': ", ec.message());
  const std::string metrics_path = cfg.out_dir + "/metrics.jsonl", svg_path = cfg.out_dir + "/loss.svg";

  const std::vector<Parameter*> params = task.parameters();
  AdamW opt(params, AdamWConfig{cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay});
  const CosineSchedule schedule{cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.steps};

  // ---- start or resume ----
  std::int64_t step = 0, tokens_seen = 0;
  double log_loss_sum = 0;
  std::int64_t log_loss_steps = 0;
  std::vector<MetricsRow> history;
  std::string last_ckpt = find_checkpoint(cfg.out_dir);
  std::int64_t last_ckpt_step = -1;
  if (!last_ckpt.empty() && !resume)
    fail("[train] '", cfg.out_dir, "' already holds a checkpoint (", last_ckpt,
         "); resume it (--resume) or choose another output folder");
  if (resume && !last_ckpt.empty()) {
    const json st = read_trainer_state(last_ckpt);
    const std::string state_path = last_ckpt + "/" + kTrainerStateFile;
    const TrainConfig saved = config_from(st["config"], state_path);
    const json now = config_json(cfg), then = config_json(saved);
    for (const Field& f : fields())
      MF_CHECK(!f.trajectory || now[f.name] == then[f.name], "[train] cannot resume '", cfg.out_dir, "': field '",
               f.name, "' is ", now[f.name].dump(), " but the checkpoint was trained with ", then[f.name].dump());
    task.check_data_state(st["data"], cfg.out_dir);
    step = st["step"].get<std::int64_t>();
    MF_CHECK(step <= cfg.steps, "[train] the checkpoint is at step ", step, ", past steps = ", cfg.steps);
    MF_CHECK(st.contains("tokens_seen") && st["tokens_seen"].is_number_integer(), "[train] '", state_path,
             "' has no integer field 'tokens_seen'");
    tokens_seen = st["tokens_seen"].get<std::int64_t>();
    load_parameters(params, last_ckpt + "/" + kModelFile);
    opt.load(last_ckpt + "/" + kOptimizerFile);
    MF_CHECK(opt.steps_taken() == step, "[train] optimizer state in '", last_ckpt, "' is at step ", opt.steps_taken(),
             " but the trainer state says ", step);
    log_loss_sum = st["log_accumulator"].value("loss_sum", 0.0);
    log_loss_steps = st["log_accumulator"].value("steps", 0);
    last_ckpt_step = step;
    const std::vector<std::string> keep = read_metric_lines(metrics_path, step, history);
    std::string text;
    for (const std::string& l : keep) text += l + "\n";
    write_file_atomic(metrics_path, text);
  } else {
    write_file_atomic(metrics_path, std::string());
    fs::remove(svg_path, ec);
  }

  auto save_checkpoint = [&](std::int64_t done) {
    nlohmann::ordered_json st = {{"format", "modformer-trainer-state"},
               {"version", 1},
               {"step", done},
               {"config", config_json(cfg)},
               {"data", task.data_state(done)},
               {"log_accumulator", {{"loss_sum", log_loss_sum}, {"steps", log_loss_steps}}},
               {"tokens_seen", tokens_seen}};
    last_ckpt = commit_checkpoint(cfg.out_dir, [&](const std::string& dir) {
      task.save_model(dir);
      opt.save(dir + "/" + kOptimizerFile);
      write_file_atomic(dir + "/" + kTrainerStateFile, st.dump(2) + "\n");  // last: marks the folder complete
    });
    last_ckpt_step = done;
  };
  auto stop_non_finite = [&](const char* what, double value, std::int64_t at) {
    const std::string keep = last_ckpt.empty() ? std::string("no checkpoint has been written yet")
                                               : str_cat("the last good checkpoint is '", last_ckpt, "' (step ",
                                                         last_ckpt_step, ")");
    fail("[train] ", what, " is ", value, " at step ", at + 1, " of ", cfg.steps, "; training stopped before that update, ",
         keep);
  };

  // ---- the loop ----
  TrainLoopResult result;
  result.start_step = step;
  std::unique_ptr<ProgressBar> bar;
  if (cfg.progress) {
    ProgressBar::Options po;
    po.unit = "step";
    po.initial = step;
    bar = std::make_unique<ProgressBar>("train", cfg.steps, po);
  }
  double train_seconds = 0, interval_seconds = 0;
  std::int64_t interval_tokens = 0, run_tokens = 0;
  bool evaluated_once = false;
  double step_loss = std::numeric_limits<double>::quiet_NaN();
  std::ofstream metrics(metrics_path, std::ios::app);
  MF_CHECK(metrics.good(), "[train] cannot append to '", metrics_path, "'");

  while (step < cfg.steps) {
    const auto t0 = std::chrono::steady_clock::now();
    zero_grads(params);
    double loss_sum = 0;
    std::int64_t step_tokens = 0;
    for (std::int64_t micro = 0; micro < cfg.grad_accum; ++micro) {
      const double l = task.micro_batch_loss(step, micro, step_tokens);
      if (!std::isfinite(l)) {
        if (bar) bar->finish("stopped");
        stop_non_finite("the loss", l, step);
      }
      loss_sum += l;
    }
    step_loss = loss_sum / static_cast<double>(cfg.grad_accum);
    if (cfg.grad_accum > 1) scale_grads(params, static_cast<float>(1.0 / static_cast<double>(cfg.grad_accum)));
    const double grad_norm = clip_grad_norm(params, cfg.grad_clip);
    if (!std::isfinite(grad_norm)) {
      if (bar) bar->finish("stopped");
      stop_non_finite("the gradient norm", grad_norm, step);
    }
    const double lr = schedule.lr_at(step);
    opt.step(lr);
    ++step;
    const double dt = seconds_since(t0);
    train_seconds += dt;
    interval_seconds += dt;
    tokens_seen += step_tokens;
    interval_tokens += step_tokens;
    run_tokens += step_tokens;
    log_loss_sum += step_loss;
    ++log_loss_steps;

    const bool last = step == cfg.steps;
    const bool do_eval = last || (cfg.eval_interval > 0 && step % cfg.eval_interval == 0);
    const bool do_log = last || do_eval || step % cfg.log_interval == 0;
    const bool do_ckpt = last || (cfg.checkpoint_interval > 0 && step % cfg.checkpoint_interval == 0);
    const double tok_s = interval_seconds > 0 ? static_cast<double>(interval_tokens) / interval_seconds : 0;
    if (do_log) {
      double val_loss = std::numeric_limits<double>::quiet_NaN();
      if (do_eval) {
        val_loss = task.evaluate();
        evaluated_once = true;
      }
      const double train_loss = log_loss_sum / static_cast<double>(log_loss_steps);  // mean since the last line
      nlohmann::ordered_json line = {{"step", step}, {"train_loss", or_null(train_loss)}};
      task.add_metrics(line, train_loss, do_eval);
      line["tokens_per_s"] = tok_s;
      line["lr"] = lr;
      line["grad_norm"] = grad_norm;
      line["tokens"] = tokens_seen;
      metrics << line.dump() << "\n";
      metrics.flush();
      MF_CHECK(metrics.good(), "[train] error writing '", metrics_path, "'");
      history.push_back({step, train_loss, val_loss});
      write_loss_svg(svg_path, history, task.loss_axis_label());
      log_loss_sum = 0;
      log_loss_steps = 0;
      interval_seconds = 0;
      interval_tokens = 0;
    }
    if (bar) {
      char extra[96];
      std::snprintf(extra, sizeof extra, "loss %.4f | %s tok/s | lr %.2e", step_loss, format_count(tok_s).c_str(), lr);
      bar->update(step, std::string(extra) + (evaluated_once ? task.progress_suffix() : std::string()));
      if (last) bar->finish();
    }
    if (do_ckpt) save_checkpoint(step);
  }
  result.end_step = step;
  result.train_loss = step_loss;
  result.tokens_per_s = train_seconds > 0 ? static_cast<double>(run_tokens) / train_seconds : 0;
  if (result.start_step == cfg.steps) task.evaluate();
  return result;
}

}  // namespace mf
