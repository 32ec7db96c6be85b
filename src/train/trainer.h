// The training loop over a LanguageModel on a text corpus or a
// SequenceClassifier on classification TSV files (one loop, two tasks; see
// train_task.h): per step, zero the gradients, accumulate micro-batches, clip
// the global norm, take the warmup+cosine learning rate and an AdamW step.
// Logs JSON lines and an SVG loss curve, writes atomic checkpoints, resumes
// bit-identically, and stops cleanly on NaN/Inf keeping the last good checkpoint.
#pragma once
#include <cstdint>
#include <string>

#include "model/language_model.h"
#include "model/sequence_classifier.h"
#include "train/classify_data.h"
#include "train/data.h"

namespace mf {

struct TrainConfig {
  std::string task = "lm";          // "lm" (LanguageModel on a corpus), "classify" (SequenceClassifier on TSV) or
                                    // "sequence" (LanguageModel on SequenceData, train/sequence_task.h)
  std::int64_t steps = 1000;        // optimizer updates in the whole run
  std::int64_t batch_size = 16;     // sequences per micro-batch
  std::int64_t seq_len = 256;       // tokens per sequence (classify: the max length; longer texts are truncated)
  std::int64_t grad_accum = 1;      // micro-batches per update (gradients averaged)
  double lr = 1e-3;                 // peak learning rate
  double min_lr = 1e-4;             // cosine floor
  std::int64_t warmup_steps = 100;
  double weight_decay = 0.1;        // only on parameters with Parameter::weight_decay
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;           // max global L2 norm; <= 0 disables clipping
  std::int64_t log_interval = 10;   // a metrics line every this many steps (and at the end)
  std::int64_t eval_interval = 100;  // validation every this many steps (and at the end); 0 = only at the end
  std::int64_t eval_windows = 64;   // lm: validation windows of seq_len tokens (0 = the whole split); classify: unused (the whole file)
  std::int64_t checkpoint_interval = 200;  // 0 = only at the end
  std::uint64_t seed = 1234;        // data order (and, in the CLI, model init)
  std::string data_path;            // corpus file ("" = the dict-gcide default) or training TSV; informational for train()
  std::string val_path;             // classify: the validation TSV; informational for train()
  double val_fraction = 0.01;       // lm: held-out tail of the corpus; train() checks the corpus split matches
  std::string out_dir;              // metrics.jsonl, loss.svg, checkpoint/
  bool progress = true;             // progress bar and messages on stderr
};

// Throws mf::Error naming the field when a value is out of range.
void validate(const TrainConfig& cfg);
// What `modformer train` uses for the built-in default model and corpus.
TrainConfig default_train_config();
// JSON with the field names above; parsing rejects unknown fields and wrong
// types, naming the field and `source`.
std::string train_config_to_json(const TrainConfig& cfg);
TrainConfig train_config_from_json(const std::string& json_text, const std::string& source);
// The config stored in OUT/checkpoint/trainer_state.json (for `train --resume`).
TrainConfig train_config_from_checkpoint(const std::string& out_dir);

struct EvalResult {
  double loss = 0;          // mean nats per token over the validation windows
  double bpb = 0;           // bits per byte (= loss / ln 2 for the byte tokenizer)
  std::int64_t tokens = 0;  // tokens evaluated
};
// Validation loss over the fixed windows val_window_offsets(corpus, seq_len, max_windows);
// for a model with a segment memory (LanguageModel::new_segment_memory), over
// consecutive segments of batch_size validation streams (val_segment_streams;
// at most ceil(max_windows / batch_size) per stream when max_windows > 0),
// the memory carried from segment to segment.
EvalResult evaluate(LanguageModel& model, const TextCorpus& corpus, std::int64_t seq_len, std::int64_t max_windows,
                    std::int64_t batch_size);

struct ClassifyEvalResult {
  double loss = 0;            // mean cross-entropy (nats) per example
  double accuracy = 0;        // fraction of examples whose largest logit is the label
  std::int64_t examples = 0;  // examples evaluated
  std::int64_t correct = 0;
};
// Loss and accuracy over every example of `data`, in order, batch_size at a
// time (each batch padded to its own longest text); from class_logits.
ClassifyEvalResult evaluate(SequenceClassifier& model, const ClassifyData& data, std::int64_t batch_size);

template <typename Eval>
struct TrainResultOf {
  std::int64_t start_step = 0;  // 0, or the step resumed from
  std::int64_t end_step = 0;    // == cfg.steps
  double train_loss = 0;        // mean loss of the last step
  Eval val;                     // the final evaluation
  double tokens_per_s = 0;      // real (non-padding) tokens over this run's steps (evaluation excluded)
};
using TrainResult = TrainResultOf<EvalResult>;
using ClassifyTrainResult = TrainResultOf<ClassifyEvalResult>;

// Trains `model` on `corpus`. With resume, restores the newest checkpoint in
// cfg.out_dir (model parameters, optimizer, step; the data order follows from
// (seed, step)) and continues exactly as an uninterrupted run would; without a
// checkpoint it starts from step 0. Without resume an existing checkpoint is an
// error (so a run is never overwritten by accident). On a NaN/Inf loss or
// gradient norm throws mf::Error naming the step and the last good checkpoint,
// which is left intact.
// cfg.task must be "lm".
TrainResult train(LanguageModel& model, const TextCorpus& corpus, const TrainConfig& cfg, bool resume = false);

// The same loop for a classifier (cfg.task must be "classify"): micro-batches
// from ClassifySampler(train_data.size(), cfg.seed, batch_size, grad_accum);
// validation over the whole of val_data; metrics lines carry val_loss and
// val_accuracy (no bits per byte). Labels of both sets are checked against
// model.num_labels() and texts against cfg.seq_len (the loaders truncate).
ClassifyTrainResult train(SequenceClassifier& model, const ClassifyData& train_data, const ClassifyData& val_data,
                          const TrainConfig& cfg, bool resume = false);

}  // namespace mf
