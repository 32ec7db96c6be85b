// `modformer eval --model DIR [--data PATH]`: validation loss and bits per
// byte of a checkpoint on the held-out tail of a corpus. DIR is a checkpoint
// folder or a training output folder (then DIR/checkpoint, with the run's
// corpus, split and sequence length unless given).
#include <filesystem>
#include <iostream>
#include <memory>

#include "cli/command.h"
#include "model/checkpoint.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace {

struct EvalArgs {
  std::string model, data;
  std::int64_t seq_len = 0, windows = 0, batch_size = 8;
  double val_fraction = 0;
  CLI::Option *data_opt = nullptr, *seq_opt = nullptr, *frac_opt = nullptr;
};

int run_eval(const EvalArgs& a) {
  namespace fs = std::filesystem;
  std::string dir = a.model;
  mf::TrainConfig run = mf::default_train_config();  // a training run's settings, when DIR is one
  if (!fs::exists(fs::path(dir) / "config.json")) {
    const std::string ckpt = mf::find_checkpoint(dir);
    MF_CHECK(!ckpt.empty(), "[eval] '", dir, "' holds neither config.json nor a training checkpoint");
    run = mf::train_config_from_checkpoint(dir);
    dir = ckpt;
  }
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
  a->data_opt = app.add_option("--data", a->data, "Text corpus, plain or gzip (default: the run's, else dict-gcide)");
  a->seq_opt = app.add_option("--seq-len", a->seq_len, "Tokens per window (default: the run's, else 256)")
                   ->check(CLI::PositiveNumber);
  a->frac_opt = app.add_option("--val-fraction", a->val_fraction, "Held-out tail of the corpus (default: the run's, else 0.01)");
  app.add_option("--windows", a->windows, "Evaluate at most this many windows (default 0: the whole split)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--batch-size", a->batch_size, "Windows per forward pass")->check(CLI::PositiveNumber);
  return [a] { return run_eval(*a); };
}

}  // namespace

MF_REGISTER_COMMAND("eval", "Validation loss and bits per byte of a checkpoint on a corpus's held-out split",
                    setup_eval);
