// The comparison harness: data files, cells, parameter matching, training,
// evaluation and the results object (report.cpp turns it into tables/plots).
// The rules, the same for every mixer:
// - Model: model_type "modformer", pre-norm RMSNorm, SwiGLU with
//   intermediate = 8h/3 rounded up to 16, head_dim 32 (h/32 heads, as many
//   KV heads), untied head, profile.layers layers; the width h (a multiple
//   of 32) is the one whose parameter count is closest in ratio to --params
//   (recorded with the actual count). Positions "auto": RoPE, or learned
//   absolute positions for a mixer that refuses RoPE (LSH attention); mixers
//   that do not use RoPE (FNet, Linformer, Mamba, retention) carry order in
//   their own mechanism. sliding_attention gets a window of a quarter of the
//   training length (at least 8). Decoder tasks need a causal mixer; ListOps
//   (an encoder classifier, mean pooling, padded batches) needs a
//   bidirectional one with a key padding mask; a mixer without is recorded
//   as unsupported with the registry's reason, and a config the model
//   refuses likewise (with its error); an error while training is "failed".
// - Training: AdamW (weight decay 0.1), warmup then cosine to min_lr,
//   clipping 1.0, batch profile.batch_size, the same seed for every cell
//   (init and data order), checkpoints profile.checkpoints times per run,
//   evaluation once at the end on the held-out files.
// - A finished cell (ok or unsupported) is skipped on a re-run with the same
//   settings, refused with other settings; a failed one is run again; an
//   interrupted one resumes from its checkpoint (bit-identical, train.h).
#include "compare/harness.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>

#include "bench/mixer_bench.h"
#include "compare/induction_heads.h"
#include "compare/mqar.h"
#include "compare/report.h"
#include "compare/selective_copy.h"
#include "core/alloc.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/json_report.h"
#include "core/threads.h"
#include "model/transformer.h"
#include "nn/mixer/mixer_registry.h"
#include "train/checkpoint.h"
#include "train/classify_data.h"
#include "train/sequence_task.h"
#include "train/train_task.h"
#include "train/trainer.h"

#ifndef MODFORMER_SOURCE_DIR
#define MODFORMER_SOURCE_DIR "."
#endif

namespace mf {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kResultFile = "result.json";

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string git_commit() {
  const std::string cmd = std::string("git -C '") + MODFORMER_SOURCE_DIR + "' describe --always --dirty --abbrev=40 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return "unknown";
  char buf[128] = {0};
  std::string s;
  while (std::fgets(buf, sizeof buf, p)) s += buf;
  pclose(p);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s.empty() ? "unknown" : s;
}

// ---- what each task needs ----
struct TaskSpec {
  const char* name;
  bool decoder;  // causal LM head (else an encoder classifier)
  const char* metric;  // the headline number of results.md
};
const TaskSpec kTasks[] = {
    {"char_lm", true, "val bits/byte (lower is better)"},
    {"listops", false, "test accuracy"},
    {"mqar", true, "accuracy over all pair counts"},
    {"selective_copy", true, "accuracy"},
    {"induction_heads", true, "accuracy at the training length"},
    {"extrapolation", true, "val bits/byte at each length"},
    {"speed", true, "time and memory vs length"},
};
const TaskSpec& task_spec(const std::string& name) {
  for (const TaskSpec& t : kTasks)
    if (name == t.name) return t;
  fail("[compare] unknown task \"", name, "\" (known: ", [] {
    std::string s;
    for (const TaskSpec& t : kTasks) s += (s.empty() ? "" : ", ") + std::string(t.name);
    return s;
  }(), ")");
}

// A cell: one training run.
struct Cell {
  // position: the model's position scheme, or "auto": RoPE, else (for a mixer
  // that refuses RoPE) learned absolute positions
  std::string task, mixer, position;
  std::string id() const { return task + "__" + mixer + (position == "auto" ? "" : "__" + position); }
};

// ---- data files (generated when missing, else read: a user's files in the same format) ----
struct TaskData {
  std::vector<std::string> files;  // recorded paths
  json identity = json::array();   // {path, fingerprint, summary}
};

template <typename Make>
SequenceData sequence_file(const std::string& path, Make make, TaskData& td) {
  if (!fs::exists(path)) make().save(path);
  SequenceData d = SequenceData::load(path);
  td.files.push_back(path);
  td.identity.push_back({{"path", path}, {"fingerprint", fingerprint_hex(d.fingerprint())}, {"summary", d.summary()}});
  return d;
}

struct AllData {
  std::string dir;
  // char_lm / extrapolation
  std::unique_ptr<TextCorpus> corpus;
  TaskData lm;
  // listops
  std::unique_ptr<ClassifyData> listops_train, listops_test;
  TaskData listops;
  // sequence tasks: train, and named test sets
  std::map<std::string, SequenceData> seq_train;
  std::map<std::string, std::vector<std::pair<std::string, SequenceData>>> seq_tests;
  std::map<std::string, TaskData> seq;
};

// Loads (generating when missing) a task's data once per run: every cell of the
// task shares it.
void prepare_data(AllData& d, const std::string& task, const CompareProfile& p, const CompareOptions& o) {
  if (task == "listops" ? d.listops_train != nullptr : d.seq_train.count(task) > 0) return;
  const std::string dir = d.dir + "/" + (task == "extrapolation" ? std::string("char_lm") : task);
  fs::create_directories(dir);
  const std::uint64_t s = o.seed;
  if (task == "char_lm" || task == "extrapolation") {
    if (d.corpus) return;
    const std::string path = dir + "/corpus.txt";
    if (!fs::exists(path)) write_file_atomic(path, load_corpus_text(o.lm_data, p.lm_corpus_bytes));
    d.corpus = std::make_unique<TextCorpus>(TextCorpus::load(path, 0.05));
    d.lm.files.push_back(path);
    d.lm.identity.push_back({{"path", path},
                             {"source", o.lm_data.empty() ? std::string(kDefaultCorpusPath) : o.lm_data},
                             {"fingerprint", fingerprint_hex(d.corpus->fingerprint())},
                             {"summary", str_cat(d.corpus->size(), " bytes, validation = the last 5%")}});
  } else if (task == "listops") {
    const std::string train = dir + "/train.tsv", test = dir + "/test.tsv";
    if (!fs::exists(train)) write_file_atomic(train, listops_tsv(generate_listops(p.listops_train, s + 1, p.listops)));
    if (!fs::exists(test)) write_file_atomic(test, listops_tsv(generate_listops(p.listops_test, s + 2, p.listops)));
    d.listops_train = std::make_unique<ClassifyData>(ClassifyData::load(train));
    d.listops_test = std::make_unique<ClassifyData>(ClassifyData::load(test));
    for (const ClassifyData* c : {d.listops_train.get(), d.listops_test.get()}) {
      d.listops.files.push_back(c->source);
      d.listops.identity.push_back(
          {{"path", c->source}, {"fingerprint", fingerprint_hex(c->fingerprint())}, {"summary", c->summary()}});
    }
  } else if (task == "mqar") {
    TaskData& td = d.seq[task];
    SequenceData train;
    train.source = dir + "/train.tsv";
    for (std::size_t i = 0; i < p.mqar_pairs.size(); ++i) {
      const MqarOptions mo{p.mqar_vocab, p.mqar_seq_len, p.mqar_pairs[i], 0.01};
      const std::string n = std::to_string(p.mqar_pairs[i]);
      const SequenceData part = sequence_file(
          dir + "/train_pairs" + n + ".tsv",
          [&] { return generate_mqar(p.mqar_train_per_pairs, s + 10 + i, mo, "mqar train"); }, td);
      for (std::int64_t e = 0; e < part.size(); ++e) {  // one training set mixing every pair count
        const auto b = part.inputs.begin() + part.offsets[static_cast<std::size_t>(e)];
        const auto t = part.targets.begin() + part.offsets[static_cast<std::size_t>(e)];
        train.add({b, b + part.length(e)}, {t, t + part.length(e)});
      }
      d.seq_tests[task].emplace_back(
          n, sequence_file(dir + "/test_pairs" + n + ".tsv",
                           [&] { return generate_mqar(p.mqar_test_per_pairs, s + 100 + i, mo, "mqar test"); }, td));
    }
    d.seq_train[task] = std::move(train);
  } else if (task == "selective_copy") {
    TaskData& td = d.seq[task];
    const SelectiveCopyOptions co{p.copy_vocab, p.copy_seq_len, p.copy_tokens};
    d.seq_train[task] = sequence_file(
        dir + "/train.tsv", [&] { return generate_selective_copy(p.copy_train, s + 20, co, "copy train"); }, td);
    SequenceData test = sequence_file(
        dir + "/test.tsv", [&] { return generate_selective_copy(p.copy_test, s + 21, co, "copy test"); }, td);
    const std::string length = std::to_string(test.longest());
    d.seq_tests[task].emplace_back(length, std::move(test));
  } else if (task == "induction_heads") {
    TaskData& td = d.seq[task];
    const InductionHeadsOptions io{p.induction_vocab, p.induction_seq_len};
    d.seq_train[task] = sequence_file(
        dir + "/train.tsv", [&] { return generate_induction_heads(p.induction_train, s + 30, io, "train"); }, td);
    for (std::int64_t f : p.induction_factors) {
      const InductionHeadsOptions t{p.induction_vocab, f * p.induction_seq_len};
      const std::string n = std::to_string(t.seq_len);
      d.seq_tests[task].emplace_back(
          n, sequence_file(dir + "/test_len" + n + ".tsv",
                           [&] { return generate_induction_heads(p.induction_test, s + 31 + f, t, "test"); }, td));
    }
  }
}

const TaskData& task_data(const AllData& d, const std::string& task) {
  if (task == "char_lm" || task == "extrapolation") return d.lm;
  if (task == "listops") return d.listops;
  return d.seq.at(task);
}

// ---- model configs ----
std::int64_t longest_needed(const Cell& c, const CompareProfile& p, const AllData& d) {
  if (c.task == "char_lm") return p.lm_seq_len;
  if (c.task == "extrapolation")
    return p.lm_seq_len * *std::max_element(p.extrapolation_factors.begin(), p.extrapolation_factors.end());
  if (c.task == "listops") return std::max(d.listops_train->longest(), d.listops_test->longest());
  std::int64_t m = d.seq_train.at(c.task).longest();
  for (const auto& [name, t] : d.seq_tests.at(c.task)) m = std::max(m, t.longest());
  return m;
}

std::int64_t train_length(const Cell& c, const CompareProfile& p, const AllData& d) {
  if (c.task == "char_lm" || c.task == "extrapolation") return p.lm_seq_len;
  // The classifier pads every batch to seq_len, so it must hold the test set's
  // longest expression too (the generator keeps both within one bound, but a
  // test expression may be longer than every training one).
  if (c.task == "listops") return std::max(d.listops_train->longest(), d.listops_test->longest());
  return d.seq_train.at(c.task).longest();
}

std::int64_t vocab_of(const Cell& c, const AllData& d) {
  if (c.task == "char_lm" || c.task == "extrapolation" || c.task == "listops") return kByteVocabSize;
  std::int32_t m = d.seq_train.at(c.task).max_token();
  for (const auto& [name, t] : d.seq_tests.at(c.task)) m = std::max(m, t.max_token());
  return m + 1;
}

PositionKind position_of(const std::string& name) {
  for (PositionKind k : {PositionKind::RoPE, PositionKind::RoPEInterleaved, PositionKind::ALiBi, PositionKind::Sinusoidal,
                         PositionKind::Learned, PositionKind::None})
    if (position_kind_name(k) == name) return k;
  fail("[compare] unknown position scheme \"", name, "\"");
}

ModelConfig cell_config(const Cell& c, const CompareProfile& p, const AllData& d, std::int64_t hidden,
                        const std::string& position) {
  ModelConfig m;
  m.model_type = "modformer";
  m.vocab_size = vocab_of(c, d);
  m.hidden_size = hidden;
  m.num_attention_heads = std::max<std::int64_t>(1, hidden / 32);
  m.num_key_value_heads = m.num_attention_heads;
  m.head_dim = hidden / m.num_attention_heads;
  m.intermediate_size = (8 * hidden / 3 + 15) / 16 * 16;
  m.num_hidden_layers = p.layers;
  m.rms_norm_eps = 1e-5;
  m.max_position_embeddings = longest_needed(c, p, d);
  m.position = position_of(position);
  m.token_mixer = c.mixer;
  if (p.mixer_options.contains(c.mixer))
    m.mixer_options[c.mixer] = parse_options(token_mixer_entry(c.mixer, "[compare] ").options,
                                             p.mixer_options[c.mixer], "[compare] ", c.mixer);
  if (c.mixer == "sliding_attention") m.sliding_window = std::max<std::int64_t>(8, train_length(c, p, d) / 4);
  if (!task_spec(c.task).decoder) {
    m.is_decoder = false;
    m.num_labels = 10;
    m.classifier_pooling = "mean";
  }
  validate_config(m, "[compare] " + c.id());
  return m;
}

// The width (multiple of 32, head_dim 32) whose parameter count is closest
// (in ratio) to the target; layers fixed by the profile. Position "auto"
// tries RoPE, then learned positions when the mixer refuses RoPE (Reformer's
// LSH attention); `position` gets the scheme used. `refusal` gets the
// model's error when the mixer refuses every choice (the cell is then
// unsupported); an error of the base config itself propagates.
ModelConfig match_params(const Cell& c, const CompareProfile& p, const AllData& d, std::int64_t target,
                         std::int64_t& actual, std::string& position, std::string& refusal) {
  const std::vector<std::string> choices =
      c.position == "auto" ? std::vector<std::string>{"rope", "learned"} : std::vector<std::string>{c.position};
  for (const std::string& pos : choices) {
    try {
      Transformer(cell_config(c, p, d, 32, pos), 0);
    } catch (const Error& e) {
      refusal += (refusal.empty() ? "" : "; ") + std::string(e.what());
      continue;
    }
    refusal.clear();
    position = pos;
    break;
  }
  if (!refusal.empty()) return {};
  ModelConfig best;
  double best_gap = 1e300;
  for (std::int64_t h = 32; h <= 2048; h += 32) {
    const ModelConfig m = cell_config(c, p, d, h, position);
    const std::int64_t n = Transformer(m, 0).num_parameters();
    const double gap = std::abs(std::log(static_cast<double>(n) / static_cast<double>(target)));
    if (gap < best_gap) {
      best_gap = gap;
      best = m;
      actual = n;
    }
    if (n > target) break;
  }
  return best;
}

// ---- one cell ----
struct CellRun {
  const Cell& cell;
  const CompareProfile& p;
  const CompareOptions& o;
  const AllData& d;
  std::int64_t steps, params_target;
  std::string dir;
};

TrainConfig cell_train_config(const CellRun& r) {
  TrainConfig t;
  t.task = r.cell.task == "listops" ? "classify" : (r.cell.task == "char_lm" || r.cell.task == "extrapolation") ? "lm"
                                                                                                              : "sequence";
  t.steps = r.steps;
  t.batch_size = r.p.batch_size;
  t.seq_len = train_length(r.cell, r.p, r.d);
  t.lr = r.p.lr;
  t.min_lr = r.p.min_lr;
  t.warmup_steps = std::min(r.p.warmup_steps, r.steps);
  t.weight_decay = 0.1;
  t.log_interval = std::max<std::int64_t>(1, r.steps / 20);
  t.eval_interval = 0;  // only at the end (the budget is training)
  t.eval_windows = r.p.lm_eval_windows;
  t.checkpoint_interval = std::max<std::int64_t>(1, r.steps / std::max<std::int64_t>(1, r.p.checkpoints));
  t.seed = r.o.seed;
  t.val_fraction = 0.05;
  t.out_dir = r.dir + "/run";
  t.progress = r.o.progress;
  return t;
}

// Extrapolation: validation bits per byte at each factor * T with the trained
// weights, and for RoPE models also with each scaling applied at evaluation.
json extrapolation_eval(const ModelConfig& trained, const std::string& run_dir, const CompareProfile& p,
                        const TextCorpus& corpus) {
  const std::string ckpt = find_checkpoint(run_dir);
  std::vector<std::string> scalings = {"none"};
  if (trained.uses_rope()) scalings = {"none", "linear", "dynamic", "yarn"};
  json out = json::object();
  for (const std::string& sc : scalings) {
    json rows = json::array();
    for (std::int64_t f : p.extrapolation_factors) {
      ModelConfig m = trained;
      if (sc != "none" && f > 1) {
        m.rope_scaling.type = sc == "linear" ? RopeScalingType::Linear : sc == "dynamic" ? RopeScalingType::Dynamic
                                                                                           : RopeScalingType::YaRN;
        m.rope_scaling.factor = static_cast<double>(f);
        m.rope_scaling.original_max_position_embeddings = p.lm_seq_len;
      }
      const std::int64_t L = f * p.lm_seq_len;
      json row = {{"factor", f}, {"length", L}};
      try {
        Transformer model(m, 0);
        load_parameters(model.parameters(), ckpt + "/" + kModelFile);
        const std::int64_t windows = std::max<std::int64_t>(2, p.lm_eval_windows / f);
        const EvalResult e = evaluate(model, corpus, L, windows, std::max<std::int64_t>(1, p.batch_size / f));
        row["val_bpb"] = e.bpb;
        row["tokens"] = e.tokens;
      } catch (const Error& e) {
        row["val_bpb"] = nullptr;
        row["error"] = e.what();
      }
      rows.push_back(row);
    }
    out[sc] = rows;
  }
  return out;
}

json run_cell(const CellRun& r, const TrainConfig& tc, ModelConfig cfg, json& res) {
  const Cell& c = r.cell;
  const std::string ckpt = find_checkpoint(tc.out_dir);
  std::unique_ptr<Transformer> model = std::make_unique<Transformer>(cfg, tc.seed);
  res["resumed_from_step"] = nullptr;
  if (!ckpt.empty()) {
    const json st = json::parse(read_file(ckpt + "/" + kTrainerStateFile), nullptr, false);
    if (st.is_object() && st.contains("step")) res["resumed_from_step"] = st["step"];
  }
  reset_peak_memory();
  const std::int64_t base = memory_stats().current_bytes;
  const auto t0 = std::chrono::steady_clock::now();
  json metrics = json::object();
  double tokens_per_s = 0;
  if (c.task == "char_lm" || c.task == "extrapolation") {
    const TrainResult t = train(*model, *r.d.corpus, tc, true);
    tokens_per_s = t.tokens_per_s;
    metrics["val_bpb"] = t.val.bpb;
    metrics["val_loss"] = t.val.loss;
    metrics["train_loss"] = t.train_loss;
    if (c.task == "extrapolation") metrics["lengths"] = extrapolation_eval(cfg, tc.out_dir, r.p, *r.d.corpus);
  } else if (c.task == "listops") {
    const ClassifyTrainResult t = train(*model, *r.d.listops_train, *r.d.listops_test, tc, true);
    tokens_per_s = t.tokens_per_s;
    metrics["accuracy"] = t.val.accuracy;
    metrics["val_loss"] = t.val.loss;
    metrics["train_loss"] = t.train_loss;
  } else {
    const auto& tests = r.d.seq_tests.at(c.task);
    const SequenceTrainResult t = train(*model, r.d.seq_train.at(c.task), tests.front().second, tc, true);
    tokens_per_s = t.tokens_per_s;
    metrics["train_loss"] = t.train_loss;
    json per = json::array();
    std::int64_t scored = 0, correct = 0;
    for (const auto& [name, data] : tests) {
      const SequenceEvalResult e = evaluate(*model, data, tc.batch_size);
      per.push_back({{c.task == "mqar" ? "pairs" : "length", std::stoll(name)},
                     {"accuracy", e.accuracy},
                     {"exact", e.exact},
                     {"loss", e.loss},
                     {"scored", e.scored}});
      scored += e.scored;
      correct += e.correct;
    }
    metrics["accuracy"] = c.task == "mqar" ? static_cast<double>(correct) / static_cast<double>(scored)
                                           : per.front()["accuracy"].get<double>();
    metrics[c.task == "mqar" ? "by_pairs" : "by_length"] = per;
  }
  res["train_seconds"] = seconds_since(t0);
  res["tokens_per_s"] = tokens_per_s;
  res["peak_bytes"] = memory_stats().peak_bytes - base;
  return metrics;
}

std::string fmt(double v, int digits = 3) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string headline(const json& res) {
  if (res["status"] != "ok") return res["status"].get<std::string>() + ": " + res.value("reason", std::string());
  const json& m = res["metrics"];
  std::string s = m.contains("val_bpb") ? "val bpb " + fmt(m["val_bpb"].get<double>()) : "acc " + fmt(m["accuracy"].get<double>());
  return s + ", " + fmt(res["tokens_per_s"].get<double>(), 0) + " tok/s, peak " +
         fmt(res["peak_bytes"].get<double>() / (1 << 20), 1) + " MiB, " + fmt(res["train_seconds"].get<double>(), 1) +
         " s";
}

// Cells of a task: one per mixer (extrapolation: also full_attention with
// ALiBi, sinusoidal, learned and no positions); a mixer the task cannot use
// is kept, marked.
std::vector<Cell> cells_of(const std::string& task, const std::vector<std::string>& mixers) {
  std::vector<Cell> out;
  for (const std::string& m : mixers) out.push_back({task, m, "auto"});
  if (task == "extrapolation" && std::find(mixers.begin(), mixers.end(), "full_attention") != mixers.end())
    for (const char* pos : {"alibi", "sinusoidal", "learned", "none"}) out.push_back({task, "full_attention", pos});
  return out;
}

// Why the task cannot use the mixer ("" when it can).
std::string cannot(const Cell& c) {
  const TokenMixerEntry& e = token_mixer_entry(c.mixer, "[compare] ");
  const std::string why = e.limits.empty() ? "" : " (" + e.limits + ")";
  if (task_spec(c.task).decoder && !e.caps.causal) return "cannot run causally; the task needs a decoder" + why;
  if (!task_spec(c.task).decoder && !e.caps.bidirectional) return "cannot run bidirectionally; the task needs an encoder" + why;
  if (!task_spec(c.task).decoder && !e.caps.padding) return "has no key padding mask; the task pads its batches" + why;
  return "";
}

// Steps that fit `minutes` for this model: two timed training steps on a
// scratch copy (the first is a warm-up), at least 1.
std::int64_t steps_for_minutes(const CellRun& r, const ModelConfig& cfg, TrainConfig tc, double minutes) {
  tc.steps = 2;
  tc.warmup_steps = 1;
  tc.checkpoint_interval = 0;
  tc.progress = false;
  tc.out_dir = r.dir + "/probe";
  fs::remove_all(tc.out_dir);
  Transformer model(cfg, tc.seed);
  const auto t0 = std::chrono::steady_clock::now();
  if (tc.task == "lm") {
    train(model, *r.d.corpus, tc, false);
  } else if (tc.task == "classify") {
    train(model, *r.d.listops_train, *r.d.listops_test, tc, false);
  } else {
    train(model, r.d.seq_train.at(r.cell.task), r.d.seq_tests.at(r.cell.task).front().second, tc, false);
  }
  const double per_step = seconds_since(t0) / 2;  // includes one evaluation: a safe over-estimate
  fs::remove_all(tc.out_dir);
  return std::max<std::int64_t>(1, static_cast<std::int64_t>(minutes * 60 / per_step));
}

json speed_section(const CompareProfile& p, const std::vector<std::string>& mixers) {
  json out = json::object();
  for (const bool causal : {false, true}) {
    std::vector<std::int64_t> lengths = p.speed_lengths;
    std::sort(lengths.begin(), lengths.end());
    std::vector<std::string> names;
    json rows = json::array();
    for (const std::string& m : mixers) {
      const TokenMixerEntry& e = token_mixer_entry(m, "[compare] ");
      if (!(causal ? e.caps.causal : e.caps.bidirectional)) continue;
      try {  // a mixer that refuses the benchmark's config gets a row saying so
        make_bench_mixers({m}, p.speed_hidden, p.speed_heads, lengths.back(), causal, "[compare] ", p.mixer_options);
        names.push_back(m);
      } catch (const Error& err) {
        rows.push_back({{"mixer", m}, {"error", err.what()}, {"rows", json::array()}});
      }
    }
    if (names.empty()) {
      out[causal ? "causal" : "bidirectional"] = rows;
      continue;
    }
    MixerBenchSet set =
        make_bench_mixers(names, p.speed_hidden, p.speed_heads, lengths.back(), causal, "[compare] ", p.mixer_options);
    const auto cells = measure_mixer_speed(set, lengths, 1, static_cast<int>(p.speed_reps), causal);
    DecodeTimes dec;
    if (causal) dec = measure_decode(set, p.decode_contexts, 1, static_cast<int>(p.speed_reps), p.decode_steps);
    for (std::size_t m = 0; m < names.size(); ++m) {
      json rec = {{"mixer", names[m]}, {"rows", json::array()}};
      for (std::size_t li = 0; li < lengths.size(); ++li)
        rec["rows"].push_back({{"L", lengths[li]},
                               {"forward_s", cells[m][li].forward_s},
                               {"forward_backward_s", cells[m][li].train_s},
                               {"peak_activation_bytes", cells[m][li].peak_bytes}});
      for (std::size_t g = 0; g < dec.mixers.size(); ++g)
        if (dec.mixers[g] == m) {
          rec["decode"] = json::array();
          for (std::size_t ci = 0; ci < p.decode_contexts.size(); ++ci)
            rec["decode"].push_back({{"context", p.decode_contexts[ci]}, {"seconds_per_token", dec.per_token[g][ci]}});
        }
      rows.push_back(rec);
    }
    out[causal ? "causal" : "bidirectional"] = rows;
  }
  out["hidden"] = p.speed_hidden;
  out["heads"] = p.speed_heads;
  out["batch"] = 1;
  out["reps"] = p.speed_reps;
  return out;
}

}  // namespace

const std::vector<std::string>& compare_task_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const TaskSpec& t : kTasks) v.push_back(t.name);
    return v;
  }();
  return names;
}

std::vector<std::string> resolve_compare_mixers(const std::vector<std::string>& names) {
  std::vector<std::string> out;
  if (names.empty())
    for (const TokenMixerEntry& e : token_mixer_registry()) out.push_back(e.name);
  for (const std::string& n : names) {
    const std::string name = n == "flash" ? "full_attention" : n;
    token_mixer_entry(name, "[compare] --mixers: ");
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
  }
  return out;
}

json run_compare(const CompareOptions& o) {
  std::ostream& log = o.log ? *o.log : std::cerr;
  CompareProfile p = compare_profile(o.profile);
  MF_CHECK(o.budget_steps >= 0, "[compare] --budget-steps must be >= 0 but is ", o.budget_steps);
  MF_CHECK(o.budget_minutes >= 0 && std::isfinite(o.budget_minutes), "[compare] --budget-minutes must be >= 0 but is ",
           o.budget_minutes);
  MF_CHECK(o.budget_steps == 0 || o.budget_minutes == 0,
           "[compare] give --budget-steps or --budget-minutes, not both");
  MF_CHECK(o.params >= 0, "[compare] --params must be >= 0 but is ", o.params);
  if (o.budget_steps > 0) p.steps = o.budget_steps;
  MF_CHECK(o.mixer_options.is_object(), "[compare] --mixer-options must be a JSON object of mixer names");
  for (const auto& [name, opts] : o.mixer_options.items()) {
    token_mixer_entry(name, "[compare] --mixer-options: ");
    p.mixer_options[name] = opts;
  }
  const std::int64_t params_target = o.params > 0 ? o.params : p.params;
  std::vector<std::string> tasks = o.tasks.empty() ? compare_task_names() : o.tasks;
  for (const std::string& t : tasks) task_spec(t);
  const std::vector<std::string> mixers = resolve_compare_mixers(o.mixers);
  MF_CHECK(!o.out_dir.empty(), "[compare] --out is empty");
  fs::create_directories(o.out_dir + "/cells");
  fs::create_directories(o.out_dir + "/data");

  AllData d;
  d.dir = o.out_dir + "/data";
  const std::string commit = git_commit();
  json results = {{"format", "modformer-compare"},
                  {"version", 1},
                  {"command", o.command_line},
                  {"profile", p.name},
                  {"steps", p.steps},
                  {"budget_minutes", o.budget_minutes},
                  {"params_target", params_target},
                  {"mixer_options", p.mixer_options},
                  {"seed", o.seed},
                  {"commit", commit},
                  {"threads", num_threads()},
                  {"environment", run_environment_json()},
                  {"tasks", tasks},
                  {"mixers", mixers},
                  {"cells", json::array()}};

  std::vector<Cell> cells;
  for (const std::string& t : tasks)
    if (t != "speed")
      for (const Cell& c : cells_of(t, mixers)) cells.push_back(c);
  const std::size_t total = cells.size() + (std::find(tasks.begin(), tasks.end(), "speed") != tasks.end() ? 1 : 0);
  std::size_t index = 0;
  for (const Cell& c : cells) {
    ++index;
    const std::string dir = o.out_dir + "/cells/" + c.id();
    const std::string result_path = dir + "/" + kResultFile;
    const std::string prefix = str_cat("[", index, "/", total, "] ", c.task, " / ", c.mixer,
                                       c.position == "auto" ? "" : " (" + c.position + ")", ": ");
    if (fs::exists(result_path)) {
      json res = json::parse(read_file(result_path), nullptr, false);
      if (res.is_object() && (res.value("status", "") == "ok" || res.value("status", "") == "unsupported")) {
        // A finished cell counts only for the settings it was measured with.
        const bool same = res.value("profile", "") == p.name && res.value("seed", json()) == o.seed &&
                          res.value("params_target", json(params_target)) == params_target &&
                          (o.budget_minutes > 0 || res.value("steps", json(p.steps)) == p.steps) &&
                          res.value("budget_minutes", 0.0) == o.budget_minutes;
        MF_CHECK(same, "[compare] cell '", dir, "' was measured with other settings (profile ", res.value("profile", "?"),
                 ", seed ", res.value("seed", json()).dump(), ", ", res.value("params_target", json()).dump(),
                 " parameters, ", res.value("steps", json()).dump(), " steps, ", res.value("budget_minutes", 0.0),
                 " budget minutes); use another --out, or delete that folder to measure it again");
        log << prefix << "finished earlier, skipped (" << headline(res) << ")\n" << std::flush;
        results["cells"].push_back(res);
        continue;
      }
    }
    fs::create_directories(dir);
    json res = {{"task", c.task},          {"mixer", c.mixer},   {"position", c.position},
                {"run_dir", dir},          {"profile", p.name},  {"seed", o.seed},
                {"params_target", params_target}, {"budget_minutes", o.budget_minutes}, {"commit", commit}};
    const auto t0 = std::chrono::steady_clock::now();
    try {
      prepare_data(d, c.task, p, o);
      res["data"] = task_data(d, c.task).identity;
      const std::string why = cannot(c);
      if (!why.empty()) {
        res["status"] = "unsupported";
        res["reason"] = str_cat("mixer \"", c.mixer, "\" ", why);
      } else {
        std::int64_t actual = 0;
        std::string refusal, position;
        const ModelConfig cfg = match_params(c, p, d, params_target, actual, position, refusal);
        res["position_used"] = position;
        if (!refusal.empty()) {
          res["status"] = "unsupported";
          res["reason"] = str_cat("the model refuses the config: ", refusal);
        }
        if (!res.contains("status")) {
          res["params"] = actual;
          res["params_target"] = params_target;
          res["hidden_size"] = cfg.hidden_size;
          res["layers"] = cfg.num_hidden_layers;
          res["model_config"] = config_to_json(cfg);
          CellRun run{c, p, o, d, p.steps, params_target, dir};
          TrainConfig tc = cell_train_config(run);
          const std::string tc_path = dir + "/train_config.json";
          if (o.budget_minutes > 0) {  // the step count is chosen once per cell and kept for its resumption
            if (fs::exists(tc_path)) {
              tc.steps = train_config_from_json(read_file(tc_path), tc_path).steps;
            } else {
              tc.steps = steps_for_minutes(run, cfg, tc, o.budget_minutes);
            }
            tc.warmup_steps = std::min(p.warmup_steps, tc.steps);
            tc.log_interval = std::max<std::int64_t>(1, tc.steps / 20);
            tc.checkpoint_interval = std::max<std::int64_t>(1, tc.steps / std::max<std::int64_t>(1, p.checkpoints));
          }
          write_file_atomic(tc_path, train_config_to_json(tc) + "\n");
          write_file_atomic(dir + "/config.json", config_to_string(cfg) + "\n");
          res["train_config"] = json::parse(train_config_to_json(tc));
          res["steps"] = tc.steps;
          try {
            res["metrics"] = run_cell(run, tc, cfg, res);
            res["status"] = "ok";
          } catch (const Error& e) {
            res["status"] = "failed";
            res["reason"] = e.what();
          }
        }
      }
    } catch (const Error& e) {
      res["status"] = "failed";
      res["reason"] = e.what();
    }
    res["seconds"] = seconds_since(t0);
    write_json_file(result_path, res);
    const std::string resumed =
        res.contains("resumed_from_step") && res["resumed_from_step"].is_number()
            ? str_cat(" [resumed from step ", res["resumed_from_step"].get<std::int64_t>(), "]")
            : "";
    log << prefix << headline(res) << resumed << "\n" << std::flush;
    results["cells"].push_back(res);
  }
  if (std::find(tasks.begin(), tasks.end(), "speed") != tasks.end()) {
    const std::string path = o.out_dir + "/cells/speed/" + kResultFile;
    const std::string prefix = str_cat("[", total, "/", total, "] speed / every mixer: ");
    json speed;
    if (fs::exists(path)) {
      speed = json::parse(read_file(path), nullptr, false);
      log << prefix << "finished earlier, skipped\n";
    }
    if (!speed.is_object()) {
      fs::create_directories(o.out_dir + "/cells/speed");
      const auto t0 = std::chrono::steady_clock::now();
      try {
        speed = speed_section(p, mixers);
        speed["status"] = "ok";
      } catch (const Error& e) {
        speed = {{"status", "failed"}, {"reason", e.what()}};
      }
      speed["load_average_1min"] = load_average_1min();
      write_json_file(path, speed);
      log << prefix << speed["status"].get<std::string>() << " in " << fmt(seconds_since(t0), 1) << " s\n";
    }
    results["speed"] = speed;
  }
  write_json_file(o.out_dir + "/results.json", results);
  write_compare_report(results, o.out_dir);
  log << "wrote " << o.out_dir << "/results.json, " << o.out_dir << "/results.md and the SVG plots\n";
  return results;
}

}  // namespace mf
