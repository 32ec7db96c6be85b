// What the shared training loop (trainer.cpp) needs from a task: language
// modelling on a text corpus (task_lm.cpp) or sequence classification on TSV
// files (task_classify.cpp). The loop owns the optimizer, schedule, clipping,
// accumulation, metrics, checkpoints, resume and NaN stops; a task owns the
// model, its data, its batches and its validation.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "nn/parameter.h"
#include "train/trainer.h"

namespace mf {

class TrainTask {
 public:
  virtual ~TrainTask() = default;

  virtual std::vector<Parameter*> parameters() = 0;
  // Micro-batch `micro` of optimizer step `step` (a pure function of the
  // config's seed and these two): its mean loss, gradients added with +=.
  // `tokens` gets the real (non-padding) tokens of the batch.
  virtual double micro_batch_loss(std::int64_t step, std::int64_t micro, std::int64_t& tokens) = 0;
  // Runs validation and keeps its result; returns the validation loss.
  virtual double evaluate() = 0;
  // The task's fields of a metrics line, placed after "train_loss";
  // `evaluated` says whether evaluate() ran at this step (else they are null).
  virtual void add_metrics(nlohmann::ordered_json& line, double train_loss, bool evaluated) const = 0;
  // Appended to the progress bar once a validation has run (" | val bpb 1.87").
  virtual std::string progress_suffix() const = 0;
  virtual const char* loss_axis_label() const = 0;  // y axis of loss.svg

  // The "data" object of trainer_state.json, and the check on resume that the
  // data is the one the checkpoint was trained on (throws naming out_dir).
  virtual nlohmann::ordered_json data_state(std::int64_t next_step) const = 0;
  virtual void check_data_state(const nlohmann::json& saved, const std::string& out_dir) const = 0;
  virtual void save_model(const std::string& dir) const = 0;
};

// A metrics value: null when not measured (NaN) or not finite.
inline nlohmann::json or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }
// 16 hex digits, the form data fingerprints take in trainer_state.json.
inline std::string fingerprint_hex(std::uint64_t f) {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(f));
  return buf;
}

// The identity of a data set in trainer_state.json (source, size,
// fingerprint), and the resume check that the "train" and "val" sets are the
// ones the checkpoint was trained on (throws naming out_dir). Data: a type
// with `source`, size() and fingerprint() (ClassifyData, SequenceData).
template <typename Data>
nlohmann::ordered_json data_identity(const Data& d) {
  return {{"source", d.source}, {"examples", d.size()}, {"fingerprint", fingerprint_hex(d.fingerprint())}};
}
template <typename Data>
void check_data_identities(const nlohmann::json& data, const Data& train, const Data& val, const std::string& out_dir) {
  const std::pair<const char*, const Data*> sets[] = {{"train", &train}, {"val", &val}};
  for (const auto& [key, d] : sets) {
    const nlohmann::json saved = data.value(key, nlohmann::json::object());
    MF_CHECK(nlohmann::json(data_identity(*d)) == saved, "[train] cannot resume '", out_dir, "': the ", key,
             " data '", d->source, "' (", d->size(), " examples) differs from the one the checkpoint was trained on (",
             saved.value("source", "?"), ", ", saved.value("examples", -1), " examples)");
  }
}

struct TrainLoopResult {
  std::int64_t start_step = 0, end_step = 0;
  double train_loss = 0;    // mean loss of the last step
  double tokens_per_s = 0;  // real tokens over this run's steps (evaluation excluded)
};

// The loop behind both train() overloads; cfg is validated and cfg.out_dir
// set by the caller, which has also checked that its data fits cfg.
TrainLoopResult run_train_loop(TrainTask& task, const TrainConfig& cfg, bool resume);

}  // namespace mf
