// `modformer train [--config CONFIG.json] --out DIR [--steps N] [--data PATH] [--resume]`:
// trains a model (default: the built-in Llama-style config) on a byte-level
// corpus (default: dict-gcide), with progress bar, DIR/metrics.jsonl, DIR/loss.svg
// and atomic checkpoints in DIR/checkpoint; --resume continues bit-identically.
// `--task classify --data TRAIN.tsv --val VAL.tsv --config ENCODER.json` trains
// a sequence classifier instead (without --config: the built-in encoder,
// default_classifier_config, with as many classes as the labels seen).
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "core/atomic_file.h"
#include "model/checkpoint.h"
#include "model/classifier_factory.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace {

struct TrainArgs {
  std::string config, train_config, out, data;
  bool resume = false, no_progress = false;
  std::uint64_t seed = 0;
  // Overrides of TrainConfig fields, applied only when given on the command line.
  std::vector<std::pair<CLI::Option*, std::function<void(mf::TrainConfig&)>>> overrides;
};

std::string output_files(const std::string& out) {
  return mf::str_cat("checkpoint: ", (std::filesystem::path(out) / mf::kCheckpointDirName).string(), ", metrics: ", out,
                     "/metrics.jsonl, curve: ", out, "/loss.svg\n");
}

// An encoder config that fits seq_len; `what` names it in errors.
void check_classifier_config(const std::string& path, std::int64_t seq_len) {
  const mf::ModelConfigKind kind = mf::inspect_model_config(path);
  MF_CHECK(kind.classifier, "[train] --task classify needs an encoder classifier config (\"is_decoder\": false, ",
           "\"num_labels\"), but '", path, "' is not one");
  MF_CHECK(kind.max_position_embeddings == 0 || seq_len <= kind.max_position_embeddings, "[train] seq_len ", seq_len,
           " exceeds max_position_embeddings (", kind.max_position_embeddings, ") of '", path, "'");
}

int run_train_classify(const TrainArgs& a, const mf::TrainConfig& tc, const std::string& ckpt) {
  MF_CHECK(!tc.data_path.empty(), "[train] --task classify needs --data TRAIN.tsv");
  MF_CHECK(!tc.val_path.empty(), "[train] --task classify needs --val VAL.tsv");
  std::unique_ptr<mf::SequenceClassifier> model;
  if (!ckpt.empty()) {
    const std::string saved = ckpt + "/config.json";
    if (!a.config.empty())
      MF_CHECK(nlohmann::json::parse(mf::read_file(a.config), nullptr, false) ==
                   nlohmann::json::parse(mf::read_file(saved), nullptr, false),
               "[train] --config '", a.config, "' differs from the config of the checkpoint being resumed (", saved,
               "); omit --config to resume");
    check_classifier_config(saved, tc.seq_len);
    model = mf::load_classifier(ckpt);
  }
  const mf::ClassifyData train_data = mf::ClassifyData::load(tc.data_path, tc.seq_len);
  const mf::ClassifyData val_data = mf::ClassifyData::load(tc.val_path, tc.seq_len);
  if (ckpt.empty() && !a.config.empty()) {
    check_classifier_config(a.config, tc.seq_len);
    model = mf::make_classifier(a.config, tc.seed);
  } else if (ckpt.empty()) {
    // The built-in encoder, with as many classes as the labels seen (at least 2).
    const std::int64_t labels = std::max<std::int64_t>(2, std::max(train_data.max_label(), val_data.max_label()) + 1);
    model = mf::make_classifier(mf::default_classifier_config(labels, tc.seq_len), tc.seed);
  }
  std::int64_t params = 0;
  for (const mf::Parameter* p : model->parameters()) params += p->value.numel();
  std::cerr << "model: classifier from "
            << (!ckpt.empty() ? ckpt : a.config.empty() ? std::string("the built-in encoder config") : a.config) << ", " << model->num_labels()
            << " labels, " << params << " parameters\n"
            << "train: " << train_data.source << ", " << train_data.summary() << "\n"
            << "validation: " << val_data.source << ", " << val_data.summary() << "\n"
            << "steps: " << tc.steps << " x " << tc.grad_accum * tc.batch_size << " examples (batch " << tc.batch_size
            << " x accum " << tc.grad_accum << ", max length " << tc.seq_len << "), lr " << tc.lr << " -> "
            << tc.min_lr << ", warmup " << tc.warmup_steps << "\n";
  if (!ckpt.empty()) std::cerr << "resumed from " << ckpt << "\n";
  if (a.resume && ckpt.empty()) std::cerr << "no checkpoint in " << a.out << ": starting from step 0\n";
  const mf::ClassifyTrainResult r = mf::train(*model, train_data, val_data, tc, a.resume);
  std::cout << "step " << r.end_step << ": validation accuracy " << r.val.accuracy << " (" << r.val.correct << "/"
            << r.val.examples << "), loss " << r.val.loss << " nats/example; training "
            << static_cast<std::int64_t>(r.tokens_per_s) << " tokens/s\n"
            << output_files(a.out);
  return 0;
}

int run_train(TrainArgs& a) {
  const std::string ckpt = a.resume ? mf::find_checkpoint(a.out) : std::string();
  // Training settings: the checkpoint's when resuming, else a file or the defaults; then the flags.
  mf::TrainConfig tc = !ckpt.empty()               ? mf::train_config_from_checkpoint(a.out)
                       : !a.train_config.empty() ? mf::train_config_from_json(mf::read_file(a.train_config), a.train_config)
                                                 : mf::default_train_config();
  for (auto& [opt, apply] : a.overrides)
    if (opt->count() > 0) apply(tc);
  tc.out_dir = a.out;
  tc.progress = !a.no_progress;
  mf::validate(tc);
  if (tc.task == "classify") return run_train_classify(a, tc, ckpt);
  MF_CHECK(tc.val_path.empty(), "[train] --val is only valid with --task classify (a language model holds out ",
           "the tail of --data; see --val-fraction)");

  std::unique_ptr<mf::Transformer> model;
  if (!ckpt.empty()) {
    model = mf::load_checkpoint(ckpt);
    if (!a.config.empty())
      MF_CHECK(mf::config_to_string(mf::load_config(a.config)) == mf::config_to_string(model->config()),
               "[train] --config '", a.config, "' differs from the config of the checkpoint being resumed (", ckpt,
               "/config.json)");
  } else {
    const mf::ModelConfig cfg = a.config.empty() ? mf::default_config() : mf::load_config(a.config);
    model = std::make_unique<mf::Transformer>(cfg, tc.seed);
  }
  MF_CHECK(model->vocab_size() >= mf::kByteVocabSize, "[train] the model's vocab_size (", model->vocab_size(),
           ") is below the byte tokenizer's 256");
  MF_CHECK(tc.seq_len <= model->config().max_position_embeddings, "[train] seq_len ", tc.seq_len,
           " exceeds the model's max_position_embeddings (", model->config().max_position_embeddings, ")");

  const mf::TextCorpus corpus = mf::TextCorpus::load(tc.data_path, tc.val_fraction);
  std::cerr << "model: " << model->config().model_type << ", " << model->config().num_hidden_layers << " layers, hidden "
            << model->config().hidden_size << ", " << model->num_parameters() << " parameters\n"
            << "data: " << corpus.source << ", " << corpus.train_bytes() << " train / " << corpus.val_bytes()
            << " validation bytes\n"
            << "steps: " << tc.steps << " x " << tc.grad_accum * tc.batch_size * tc.seq_len << " tokens (batch "
            << tc.batch_size << " x accum " << tc.grad_accum << " x seq " << tc.seq_len << "), lr " << tc.lr << " -> "
            << tc.min_lr << ", warmup " << tc.warmup_steps << "\n";
  if (!ckpt.empty()) std::cerr << "resumed from " << ckpt << "\n";
  if (a.resume && ckpt.empty()) std::cerr << "no checkpoint in " << a.out << ": starting from step 0\n";
  const mf::TrainResult r = mf::train(*model, corpus, tc, a.resume);
  std::cout << "step " << r.end_step << ": validation loss " << r.val.loss << " nats/byte, " << r.val.bpb
            << " bits/byte (" << r.val.tokens << " tokens); training " << static_cast<std::int64_t>(r.tokens_per_s)
            << " tokens/s\n"
            << output_files(a.out);
  return 0;
}

template <typename T>
void add_override(CLI::App& app, TrainArgs& a, const std::string& flag, T mf::TrainConfig::*field,
                  const std::string& help) {
  auto value = std::make_shared<T>();
  CLI::Option* opt = app.add_option(flag, *value, help);
  a.overrides.emplace_back(opt, [value, field](mf::TrainConfig& tc) { tc.*field = *value; });
}

std::function<int()> setup_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  app.add_option("--config", a->config,
                 "Model config JSON (default: the built-in Llama-style config; classify: the built-in encoder)")
      ->check(CLI::ExistingFile);
  add_override(app, *a, "--task", &mf::TrainConfig::task,
               "lm: language model on a corpus (default); classify: sequence classifier on TSV files");
  a->overrides.back().first->check(CLI::IsMember({"lm", "classify"}));
  app.add_option("--out", a->out, "Output folder: metrics.jsonl, loss.svg, checkpoint/")->required();
  app.add_flag("--resume", a->resume, "Continue from DIR/checkpoint (starts fresh when there is none)");
  app.add_option("--train-config", a->train_config, "Training settings JSON (fields of TrainConfig)")
      ->check(CLI::ExistingFile);
  add_override(app, *a, "--steps", &mf::TrainConfig::steps, "Optimizer steps in the whole run");
  add_override(app, *a, "--data", &mf::TrainConfig::data_path,
               "Text corpus, plain or gzip (default: /usr/share/dictd/gcide.dict.dz from dict-gcide); classify: the "
               "training TSV (TEXT<TAB>LABEL lines, optional header)");
  add_override(app, *a, "--val", &mf::TrainConfig::val_path, "classify only (required): the validation TSV");
  add_override(app, *a, "--seed", &mf::TrainConfig::seed, "Seed of the data order and the model init");
  add_override(app, *a, "--batch-size", &mf::TrainConfig::batch_size, "Sequences per micro-batch");
  add_override(app, *a, "--seq-len", &mf::TrainConfig::seq_len,
               "Tokens (bytes) per sequence; classify: the max length (longer texts are truncated and counted)");
  add_override(app, *a, "--grad-accum", &mf::TrainConfig::grad_accum, "Micro-batches per optimizer step");
  add_override(app, *a, "--lr", &mf::TrainConfig::lr, "Peak learning rate");
  add_override(app, *a, "--min-lr", &mf::TrainConfig::min_lr, "Final learning rate of the cosine");
  add_override(app, *a, "--warmup", &mf::TrainConfig::warmup_steps, "Linear warmup steps");
  add_override(app, *a, "--weight-decay", &mf::TrainConfig::weight_decay, "AdamW decoupled weight decay");
  add_override(app, *a, "--grad-clip", &mf::TrainConfig::grad_clip, "Max global gradient norm (<= 0: off)");
  add_override(app, *a, "--log-interval", &mf::TrainConfig::log_interval, "Steps between metrics lines");
  add_override(app, *a, "--eval-interval", &mf::TrainConfig::eval_interval, "Steps between validations");
  add_override(app, *a, "--eval-windows", &mf::TrainConfig::eval_windows,
               "Validation windows per evaluation (0: the whole split)");
  add_override(app, *a, "--checkpoint-interval", &mf::TrainConfig::checkpoint_interval, "Steps between checkpoints");
  add_override(app, *a, "--val-fraction", &mf::TrainConfig::val_fraction, "Held-out tail of the corpus");
  app.add_flag("--no-progress", a->no_progress, "No progress bar");
  return [a] { return run_train(*a); };
}

}  // namespace

MF_REGISTER_COMMAND("train",
                    "Train a model on a byte-level text corpus (default: dict-gcide) or a classifier on TSV files, "
                    "with checkpoints",
                    setup_train);
