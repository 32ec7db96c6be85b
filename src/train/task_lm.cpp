// Language modelling as a task of the shared training loop: windows of a
// byte corpus as micro-batches (train_window_offsets), validation windows of
// its held-out tail, and bits per byte in the metrics. A model with a segment
// memory (Transformer-XL) instead walks consecutive segments of batch_size
// contiguous streams (SegmentStreams): micro-batch number n = step *
// grad_accum + micro is segment n mod segments of every stream, the memory
// reset at segment 0; validation likewise from an empty memory. The memory
// is not checkpointed: a resumed run starts it empty.
#include <cmath>
#include <limits>

#include "core/error.h"
#include "train/train_task.h"

namespace mf {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

class LmTask : public TrainTask {
 public:
  LmTask(LanguageModel& model, const TextCorpus& corpus, const TrainConfig& cfg)
      : model_(model), corpus_(corpus), cfg_(cfg), fp_(fingerprint_hex(corpus.fingerprint())),
        memory_(model.new_segment_memory(cfg.batch_size)) {
    if (memory_) streams_ = train_segment_streams(corpus, cfg.batch_size, cfg.seq_len);
  }

  std::vector<Parameter*> parameters() override { return model_.parameters(); }
  double micro_batch_loss(std::int64_t step, std::int64_t micro, std::int64_t& tokens) override {
    if (micro == 0) model_.begin_training_step(step);
    tokens += cfg_.batch_size * cfg_.seq_len;
    double loss = 0;
    if (memory_) {
      const std::int64_t segment = (step * cfg_.grad_accum + micro) % streams_.segments;
      if (segment == 0) memory_->reset();
      fill_windows(corpus_, streams_.offsets(segment), cfg_.seq_len, tokens_, targets_);
      loss = model_.loss(tokens_, targets_, true, memory_.get());
    } else {
      fill_windows(corpus_, train_window_offsets(corpus_, cfg_.seed, step, micro, cfg_.batch_size, cfg_.seq_len),
                   cfg_.seq_len, tokens_, targets_);
      loss = model_.loss(tokens_, targets_, true);
    }
    if (micro == 0) aux_sum_ = aux_count_ = 0;
    aux_sum_ += model_.aux_loss();
    ++aux_count_;
    return loss;
  }
  double evaluate() override {
    val = mf::evaluate(model_, corpus_, cfg_.seq_len, cfg_.eval_windows, cfg_.batch_size);
    return val.loss;
  }
  void add_metrics(ordered_json& line, double train_loss, bool evaluated) const override {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    line["val_loss"] = or_null(evaluated ? val.loss : nan);
    line["val_bpb"] = or_null(evaluated ? val.bpb : nan);
    line["train_bpb"] = or_null(bits_per_byte(train_loss));
    // Auxiliary losses (MoE routers, Mixture-of-Depths predictors): the last
    // step's mean over its micro-batches; trained through the gradients, not
    // in train_loss. "aux": the last forward's per-layer statistics.
    if (model_.has_aux_loss()) {
      line["aux_loss"] = or_null(aux_count_ > 0 ? aux_sum_ / aux_count_ : nan);
      const json aux = model_.aux_metrics();
      if (!aux.empty()) line["aux"] = aux;
    }
  }
  std::string progress_suffix() const override {
    return str_cat(" | val bpb ", std::round(val.bpb * 1000) / 1000);
  }
  const char* loss_axis_label() const override { return "cross-entropy (nats per token)"; }

  ordered_json data_state(std::int64_t next_step) const override {
    return {{"source", corpus_.source},
            {"bytes", corpus_.size()},
            {"train_end", corpus_.train_end},
            {"fingerprint", fp_},
            {"sampler", memory_ ? "ordered segments of batch_size contiguous streams (segment memory)"
                                : "philox windows keyed by (seed, step, window index)"},
            {"next_step", next_step}};
  }
  void check_data_state(const json& data, const std::string& out_dir) const override {
    MF_CHECK(data.value("fingerprint", "") == fp_ && data.value("train_end", -1) == corpus_.train_end,
             "[train] cannot resume '", out_dir, "': the corpus differs from the one the checkpoint was trained on (",
             data.value("source", "?"), ", ", data.value("bytes", -1), " bytes)");
  }
  void save_model(const std::string& dir) const override { model_.save(dir); }

  EvalResult val{std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::quiet_NaN(), 0};

 private:
  LanguageModel& model_;
  const TextCorpus& corpus_;
  const TrainConfig& cfg_;
  const std::string fp_;
  std::unique_ptr<SegmentMemory> memory_;  // null: the model keeps no segment memory
  SegmentStreams streams_;
  Tensor tokens_, targets_;
  double aux_sum_ = 0;
  std::int64_t aux_count_ = 0;
};

}  // namespace

EvalResult evaluate(LanguageModel& model, const TextCorpus& corpus, std::int64_t seq_len, std::int64_t max_windows,
                    std::int64_t batch_size) {
  MF_CHECK(batch_size >= 1, "[evaluate] batch_size must be >= 1 but is ", batch_size);
  if (auto memory = model.new_segment_memory(batch_size)) {
    // Consecutive segments of batch_size validation streams, the memory carried.
    const SegmentStreams streams = val_segment_streams(corpus, batch_size, seq_len);
    const std::int64_t segments =
        max_windows > 0 ? std::min(streams.segments, (max_windows + batch_size - 1) / batch_size) : streams.segments;
    double total = 0;
    Tensor tokens, targets;
    for (std::int64_t s = 0; s < segments; ++s) {
      fill_windows(corpus, streams.offsets(s), seq_len, tokens, targets);
      total += model.loss(tokens, targets, false, memory.get());
    }
    EvalResult r;
    r.tokens = segments * batch_size * seq_len;
    r.loss = total / static_cast<double>(segments);
    r.bpb = bits_per_byte(r.loss);
    return r;
  }
  const std::vector<std::int64_t> offsets = val_window_offsets(corpus, seq_len, max_windows);
  MF_CHECK(!offsets.empty(), "[evaluate] the validation split of '", corpus.source, "' holds no window of ",
           seq_len + 1, " bytes");
  double total = 0;
  Tensor tokens, targets;
  for (std::size_t b0 = 0; b0 < offsets.size(); b0 += static_cast<std::size_t>(batch_size)) {
    const std::size_t b1 = std::min(offsets.size(), b0 + static_cast<std::size_t>(batch_size));
    fill_windows(corpus, std::vector<std::int64_t>(offsets.begin() + b0, offsets.begin() + b1), seq_len, tokens,
                 targets);
    total += model.loss(tokens, targets, false) * static_cast<double>((b1 - b0) * seq_len);  // mean -> sum
  }
  EvalResult r;
  r.tokens = static_cast<std::int64_t>(offsets.size()) * seq_len;
  r.loss = total / static_cast<double>(r.tokens);
  r.bpb = bits_per_byte(r.loss);
  return r;
}

TrainResult train(LanguageModel& model, const TextCorpus& corpus, const TrainConfig& cfg, bool resume) {
  validate(cfg);
  MF_CHECK(cfg.task == "lm", "[train] a language model trains with task \"lm\" but the config says \"", cfg.task,
           "\"");
  MF_CHECK(model.vocab_size() >= kByteVocabSize, "[train] the model's vocabulary (", model.vocab_size(),
           ") is smaller than the byte tokenizer's (", kByteVocabSize, ")");
  MF_CHECK(corpus.train_end == TextCorpus::split_point(corpus.size(), cfg.val_fraction), "[train] the corpus '",
           corpus.source, "' is split at byte ", corpus.train_end, " but val_fraction = ", cfg.val_fraction,
           " puts the split at ", TextCorpus::split_point(corpus.size(), cfg.val_fraction));
  // Fail early on data that cannot hold a window (rather than after the first steps).
  train_window_offsets(corpus, cfg.seed, 0, 0, 1, cfg.seq_len);
  val_window_offsets(corpus, cfg.seq_len, 1);
  LmTask task(model, corpus, cfg);
  const TrainLoopResult r = run_train_loop(task, cfg, resume);
  return TrainResult{r.start_step, r.end_step, r.train_loss, task.val, r.tokens_per_s};
}

}  // namespace mf
