// `modformer eval --model DIR [--data PATH]`: validation loss and bits per
// byte of a checkpoint on the held-out tail of a corpus. DIR is a checkpoint
// folder or a training output folder (then DIR/checkpoint, with the run's
// corpus, split and sequence length unless given). A classifier checkpoint
// (config.json with "is_decoder": false) reports accuracy and loss on the
// TSV file --data (default: a training run's --val).
#include <filesystem>
#include <iostream>
#include <memory>

#include "cli/command.h"
#include "model/checkpoint.h"
#include "model/classifier_factory.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace {

struct EvalArgs {
  std::string model, data;
  std::int64_t seq_len = 0, windows = 0, batch_size = 8;
  double val_fraction = 0;
  CLI::Option *data_opt = nullptr, *seq_opt = nullptr, *frac_opt = nullptr, *windows_opt = nullptr;
};

// `run` holds the training run's settings when the folder was a run (from_run).
int run_eval_classify(const EvalArgs& a, const std::string& dir, const mf::TrainConfig& run, bool from_run) {
  MF_CHECK(a.frac_opt->count() == 0 && a.windows_opt->count() == 0,
           "[eval] --val-fraction and --windows are for language models; '", dir,
           "' is a classifier, evaluated on every example of --data");
  const std::string data = a.data_opt->count() > 0 ? a.data : from_run ? run.val_path : std::string();
  MF_CHECK(!data.empty(), "[eval] '", dir, "' is a classifier: give its validation TSV with --data VAL.tsv");
  const std::int64_t max_len = a.seq_opt->count() > 0 ? a.seq_len
                               : from_run            ? run.seq_len
                                                     : mf::inspect_model_config(dir + "/config.json").max_position_embeddings;
  auto model = mf::load_classifier(dir);
  const mf::ClassifyData val = mf::ClassifyData::load(data, max_len);
  const mf::ClassifyEvalResult r = mf::evaluate(*model, val, a.batch_size);
  std::cout << "model: " << dir << " (classifier, " << model->num_labels() << " labels)\n"
            << "data: " << val.source << ", " << val.summary() << "\n"
            << "validation accuracy " << r.accuracy << " (" << r.correct << "/" << r.examples << "), loss " << r.loss
            << " nats/example\n";
  return 0;
}

int run_eval(const EvalArgs& a) {
  namespace fs = std::filesystem;
  std::string dir = a.model;
  mf::TrainConfig run = mf::default_train_config();  // a training run's settings, when DIR is one
  bool from_run = false;
  if (!fs::exists(fs::path(dir) / "config.json")) {
    const std::string ckpt = mf::find_checkpoint(dir);
    MF_CHECK(!ckpt.empty(), "[eval] '", dir, "' holds neither config.json nor a training checkpoint");
    run = mf::train_config_from_checkpoint(dir);
    dir = ckpt;
    from_run = true;
  }
  if (mf::inspect_model_config(dir + "/config.json").classifier) return run_eval_classify(a, dir, run, from_run);
  auto model = mf::load_checkpoint(dir);
  const std::string data = a.data_opt->count() > 0 ? a.data : run.data_path;
  const double fraction = a.frac_opt->count() > 0 ? a.val_fraction : run.val_fraction;
  std::int64_t seq_len = a.seq_opt->count() > 0 ? a.seq_len : run.seq_len;
  seq_len = std::min(seq_len, model->config().max_position_embeddings);
  const mf::TextCorpus corpus = mf::TextCorpus::load(data, fraction);
  const mf::EvalResult r = mf::evaluate(*model, corpus, seq_len, a.windows, a.batch_size);
  std::cout << "model: " << dir << "\n"
            << "data: " << corpus.source << ", validation = last " << corpus.val_bytes() << " bytes (" << fraction * 100
            << "%), " << r.tokens << " tokens in windows of " << seq_len << "\n"
            << "validation loss " << r.loss << " nats/byte, " << r.bpb << " bits/byte\n";
  return 0;
}

std::function<int()> setup_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  app.add_option("--model", a->model, "Checkpoint folder, or a training output folder")->required();
  a->data_opt = app.add_option("--data", a->data,
                               "Text corpus, plain or gzip (default: the run's, else dict-gcide); for a classifier "
                               "the TSV to evaluate (default: the run's --val)");
  a->seq_opt = app.add_option("--seq-len", a->seq_len,
                              "Tokens per window (default: the run's, else 256); for a classifier the max length, "
                              "longer texts truncated and counted (default: the run's, else max_position_embeddings)")
                   ->check(CLI::PositiveNumber);
  a->frac_opt = app.add_option("--val-fraction", a->val_fraction, "Held-out tail of the corpus (default: the run's, else 0.01)");
  a->windows_opt = app.add_option("--windows", a->windows, "Evaluate at most this many windows (default 0: the whole split)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--batch-size", a->batch_size, "Windows per forward pass")->check(CLI::PositiveNumber);
  return [a] { return run_eval(*a); };
}

}  // namespace

MF_REGISTER_COMMAND("eval",
                    "Validation loss and bits per byte of a checkpoint on a corpus's held-out split (classifiers: "
                    "accuracy and loss on a TSV file)",
                    setup_eval);
