// Token-level sequence tasks as a task of the shared training loop: shuffled
// padded batches of SequenceData (ClassifySampler over the examples), the
// LanguageModel's cross-entropy on scored targets only, validation loss and
// accuracy on the scored targets of a validation file.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "train/classify_data.h"
#include "train/sequence_task.h"
#include "train/train_task.h"

namespace mf {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

class SequenceTask : public TrainTask {
 public:
  SequenceTask(LanguageModel& model, const SequenceData& train_data, const SequenceData& val_data,
               const TrainConfig& cfg)
      : model_(model),
        train_(train_data),
        val_data_(val_data),
        cfg_(cfg),
        sampler_(train_data.size(), cfg.seed, cfg.batch_size, cfg.grad_accum) {}

  std::vector<Parameter*> parameters() override { return model_.parameters(); }
  double micro_batch_loss(std::int64_t step, std::int64_t micro, std::int64_t& tokens) override {
    if (micro == 0) model_.begin_training_step(step);
    tokens += fill_sequence_batch(train_, sampler_.indices(step, micro), tokens_, targets_);
    return model_.loss(tokens_, targets_, true);
  }
  double evaluate() override {
    val = mf::evaluate(model_, val_data_, cfg_.batch_size);
    return val.loss;
  }
  void add_metrics(ordered_json& line, double, bool evaluated) const override {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    line["val_loss"] = or_null(evaluated ? val.loss : nan);
    line["val_accuracy"] = or_null(evaluated ? val.accuracy : nan);
    line["val_exact"] = or_null(evaluated ? val.exact : nan);
  }
  std::string progress_suffix() const override {
    return str_cat(" | val acc ", std::round(val.accuracy * 1000) / 1000);
  }
  const char* loss_axis_label() const override { return "cross-entropy (nats per scored target)"; }

  ordered_json data_state(std::int64_t next_step) const override {
    return {{"task", "sequence"},
            {"train", data_identity(train_)},
            {"val", data_identity(val_data_)},
            {"sampler", "philox Fisher-Yates shuffle per epoch keyed by (seed, epoch)"},
            {"next_step", next_step}};
  }
  void check_data_state(const json& data, const std::string& out_dir) const override {
    check_data_identities(data, train_, val_data_, out_dir);
  }
  void save_model(const std::string& dir) const override { model_.save(dir); }

  SequenceEvalResult val{std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::quiet_NaN(),
                         std::numeric_limits<double>::quiet_NaN(), 0, 0, 0};

 private:
  LanguageModel& model_;
  const SequenceData &train_, &val_data_;
  const TrainConfig& cfg_;
  ClassifySampler sampler_;
  Tensor tokens_, targets_;
};

void check_fits(const SequenceData& d, std::int64_t vocab, std::int64_t seq_len) {
  MF_CHECK(d.max_token() < vocab, "[train] '", d.source, "' holds token ", d.max_token(),
           " but the model's vocab_size is ", vocab);
  MF_CHECK(d.longest() <= seq_len, "[train] '", d.source, "' holds an example of ", d.longest(),
           " tokens, longer than seq_len ", seq_len);
}

}  // namespace

SequenceEvalResult evaluate(LanguageModel& model, const SequenceData& data, std::int64_t batch_size) {
  MF_CHECK(batch_size >= 1, "[evaluate] batch_size must be >= 1 but is ", batch_size);
  const std::int64_t v = model.vocab_size();
  MF_CHECK(data.max_token() < v, "[evaluate] '", data.source, "' holds token ", data.max_token(),
           " but the model's vocab_size is ", v);
  SequenceEvalResult r;
  double loss_sum = 0;
  std::int64_t exact = 0;
  Tensor tokens, targets;
  std::vector<std::int64_t> idx;
  for (std::int64_t b0 = 0; b0 < data.size(); b0 += batch_size) {
    idx.clear();
    for (std::int64_t i = b0; i < std::min(data.size(), b0 + batch_size); ++i) idx.push_back(i);
    fill_sequence_batch(data, idx, tokens, targets);
    const Tensor logits = model.logits(tokens);
    const std::int64_t b = tokens.shape()[0], l = tokens.shape()[1];
    MF_CHECK(logits.shape() == Shape({b, l, v}) && logits.dtype() == DType::F32 && logits.is_contiguous(),
             "[evaluate] logits have shape ", shape_str(logits.shape()), " but [", b, ", ", l, ", ", v,
             "] float32 was expected");
    const float* z = logits.data<float>();
    const std::int32_t* y = targets.data<std::int32_t>();
    for (std::int64_t r0 = 0; r0 < b; ++r0) {
      bool all_right = true;
      for (std::int64_t j = 0; j < l; ++j) {
        const std::int32_t t = y[r0 * l + j];
        if (t < 0) continue;
        const float* row = z + (r0 * l + j) * v;
        const std::int64_t best = std::max_element(row, row + v) - row;  // first of equal maxima
        double sum = 0;
        for (std::int64_t k = 0; k < v; ++k) sum += std::exp(static_cast<double>(row[k]) - row[best]);
        loss_sum += std::log(sum) - (static_cast<double>(row[t]) - row[best]);
        ++r.scored;
        if (best == t)
          ++r.correct;
        else
          all_right = false;
      }
      exact += all_right ? 1 : 0;
    }
  }
  r.examples = data.size();
  r.loss = loss_sum / static_cast<double>(r.scored);
  r.accuracy = static_cast<double>(r.correct) / static_cast<double>(r.scored);
  r.exact = static_cast<double>(exact) / static_cast<double>(r.examples);
  return r;
}

SequenceTrainResult train(LanguageModel& model, const SequenceData& train_data, const SequenceData& val_data,
                          const TrainConfig& cfg, bool resume) {
  validate(cfg);
  MF_CHECK(cfg.task == "sequence", "[train] sequence data trains with task \"sequence\" but the config says \"",
           cfg.task, "\"");
  check_fits(train_data, model.vocab_size(), cfg.seq_len);
  check_fits(val_data, model.vocab_size(), cfg.seq_len);
  SequenceTask task(model, train_data, val_data, cfg);
  const TrainLoopResult r = run_train_loop(task, cfg, resume);
  return SequenceTrainResult{r.start_step, r.end_step, r.train_loss, task.val, r.tokens_per_s};
}

}  // namespace mf
