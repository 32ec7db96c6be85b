// Sequence classification as a task of the shared training loop: shuffled
// padded batches of a TSV training set (ClassifySampler), validation loss and
// accuracy over a whole TSV validation set. Validation takes its loss from
// class_logits (log-softmax in double), so one forward gives both figures.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "train/train_task.h"

namespace mf {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

class ClassifyTask : public TrainTask {
 public:
  ClassifyTask(SequenceClassifier& model, const ClassifyData& train_data, const ClassifyData& val_data,
               const TrainConfig& cfg)
      : model_(model),
        train_(train_data),
        val_data_(val_data),
        cfg_(cfg),
        sampler_(train_data.size(), cfg.seed, cfg.batch_size, cfg.grad_accum) {}

  std::vector<Parameter*> parameters() override { return model_.parameters(); }
  double micro_batch_loss(std::int64_t step, std::int64_t micro, std::int64_t& tokens) override {
    if (micro == 0) model_.begin_training_step(step);
    tokens += fill_classify_batch(train_, sampler_.indices(step, micro), tokens_, mask_, labels_);
    return model_.classify_loss(tokens_, mask_, labels_, true);
  }
  double evaluate() override {
    val = mf::evaluate(model_, val_data_, cfg_.batch_size);
    return val.loss;
  }
  void add_metrics(ordered_json& line, double, bool evaluated) const override {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    line["val_loss"] = or_null(evaluated ? val.loss : nan);
    line["val_accuracy"] = or_null(evaluated ? val.accuracy : nan);
    line["examples"] = line["step"].get<std::int64_t>() * cfg_.grad_accum * cfg_.batch_size;
  }
  std::string progress_suffix() const override {
    return str_cat(" | val acc ", std::round(val.accuracy * 1000) / 1000);
  }
  const char* loss_axis_label() const override { return "cross-entropy (nats per sequence)"; }

  ordered_json data_state(std::int64_t next_step) const override {
    return {{"task", "classify"},
            {"train", data_identity(train_)},
            {"val", data_identity(val_data_)},
            {"sampler", "philox Fisher-Yates shuffle per epoch keyed by (seed, epoch)"},
            {"next_step", next_step}};
  }
  void check_data_state(const json& data, const std::string& out_dir) const override {
    check_data_identities(data, train_, val_data_, out_dir);
  }
  void save_model(const std::string& dir) const override { model_.save(dir); }

  ClassifyEvalResult val{std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::quiet_NaN(), 0, 0};

 private:
  SequenceClassifier& model_;
  const ClassifyData &train_, &val_data_;
  const TrainConfig& cfg_;
  ClassifySampler sampler_;
  Tensor tokens_, mask_, labels_;
};

void check_fits(const ClassifyData& d, const TrainConfig& cfg, std::int64_t num_labels) {
  d.check_labels(num_labels);
  MF_CHECK(d.longest() <= cfg.seq_len, "[train] '", d.source, "' holds a text of ", d.longest(),
           " bytes, longer than seq_len ", cfg.seq_len, "; load it with max_len = seq_len to truncate");
}

}  // namespace

ClassifyEvalResult evaluate(SequenceClassifier& model, const ClassifyData& data, std::int64_t batch_size) {
  MF_CHECK(batch_size >= 1, "[evaluate] batch_size must be >= 1 but is ", batch_size);
  const std::int64_t c = model.num_labels();
  data.check_labels(c);
  ClassifyEvalResult r;
  double loss_sum = 0;
  Tensor tokens, mask, labels;
  std::vector<std::int64_t> idx;
  for (std::int64_t b0 = 0; b0 < data.size(); b0 += batch_size) {
    idx.clear();
    for (std::int64_t i = b0; i < std::min(data.size(), b0 + batch_size); ++i) idx.push_back(i);
    fill_classify_batch(data, idx, tokens, mask, labels);
    const Tensor logits = model.class_logits(tokens, mask);
    const std::int64_t b = static_cast<std::int64_t>(idx.size());
    MF_CHECK(logits.shape() == Shape({b, c}) && logits.dtype() == DType::F32 && logits.is_contiguous(),
             "[evaluate] class_logits gave shape ", shape_str(logits.shape()), " but [", b, ", ", c,
             "] float32 was expected");
    const float* z = logits.data<float>();
    const std::int32_t* y = labels.data<std::int32_t>();
    for (std::int64_t i = 0; i < b; ++i) {
      const float* row = z + i * c;
      const std::int64_t best = std::max_element(row, row + c) - row;  // first of equal maxima
      double sum = 0;
      for (std::int64_t k = 0; k < c; ++k) sum += std::exp(static_cast<double>(row[k]) - row[best]);
      loss_sum += std::log(sum) - (static_cast<double>(row[y[i]]) - row[best]);
      r.correct += best == y[i] ? 1 : 0;
    }
  }
  r.examples = data.size();
  r.loss = loss_sum / static_cast<double>(r.examples);
  r.accuracy = static_cast<double>(r.correct) / static_cast<double>(r.examples);
  return r;
}

ClassifyTrainResult train(SequenceClassifier& model, const ClassifyData& train_data, const ClassifyData& val_data,
                          const TrainConfig& cfg, bool resume) {
  validate(cfg);
  MF_CHECK(cfg.task == "classify", "[train] a sequence classifier trains with task \"classify\" but the config says \"",
           cfg.task, "\"");
  MF_CHECK(model.num_labels() >= 2, "[train] the classifier has ", model.num_labels(), " labels; need at least 2");
  check_fits(train_data, cfg, model.num_labels());
  check_fits(val_data, cfg, model.num_labels());
  ClassifyTask task(model, train_data, val_data, cfg);
  const TrainLoopResult r = run_train_loop(task, cfg, resume);
  return ClassifyTrainResult{r.start_step, r.end_step, r.train_loss, task.val, r.tokens_per_s};
}

}  // namespace mf
