// The training loop with a tiny real model (a bigram table, logits = W[token]):
// learning on gcide text, bit-identical resume after a simulated kill, clean
// stops on NaN/Inf, checkpoint swap recovery, config checks and evaluation.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/io_faults.h"
#include "core/atomic_file.h"
#include "core/rng.h"
#include "core/threads.h"
#include "core/safetensors.h"
#include "model/language_model.h"
#include "nn/loss/softmax_cross_entropy.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "../support/errors.h"
#include "../support/train_runs.h"

using namespace mf;
using mf::testing::error_of;
using mf::testing::metric_lines;
namespace fs = std::filesystem;

namespace {

// logits[b, l] = W[tokens[b, l]]; W [256, 256] with real gradients. Hooks
// simulate failures: a NaN loss, a NaN gradient, or a kill (an exception) at
// a given call of loss(..., compute_grads = true).
class BigramModel : public LanguageModel {
 public:
  explicit BigramModel(std::uint64_t seed) : w_("bigram.weight", randn({256, 256}, seed), true) {
    float* p = w_.value.data<float>();
    for (std::int64_t i = 0; i < w_.value.numel(); ++i) p[i] *= 0.02f;
  }
  std::vector<Parameter*> parameters() override { return {&w_}; }
  std::int64_t vocab_size() const override { return 256; }

  double loss(const Tensor& tokens, const Tensor& targets, bool compute_grads) override {
    if (compute_grads) ++grad_calls;
    if (compute_grads && grad_calls == kill_at_call) {
      if (sigkill) ::raise(SIGKILL);  // a real kill: no unwinding, nothing flushed
      throw std::runtime_error("simulated kill");
    }
    const std::int64_t n = tokens.numel();
    Tensor logits = gather(tokens);
    Tensor flat_targets = targets.reshape({n});
    if (!compute_grads) return softmax_cross_entropy(logits, flat_targets);
    Tensor dlogits = Tensor::empty({n, 256});
    double l = softmax_cross_entropy(logits, flat_targets, &dlogits);
    const std::int32_t* tok = tokens.data<std::int32_t>();
    float* g = w_.grad.data<float>();
    const float* d = dlogits.data<float>();
    for (std::int64_t i = 0; i < n; ++i)
      for (int j = 0; j < 256; ++j) g[tok[i] * 256 + j] += d[i * 256 + j];
    if (grad_calls == nan_grad_at_call) g[5] = std::numeric_limits<float>::quiet_NaN();
    if (grad_calls == nan_loss_at_call) l = std::numeric_limits<double>::infinity();
    return l;
  }
  Tensor logits(const Tensor& tokens) override {
    Tensor out = gather(tokens);
    Shape s = tokens.shape();
    s.push_back(256);
    return out.reshape(s);
  }
  void save(const std::string& dir) const override {
    write_file_atomic(dir + "/config.json", "{\"model_type\": \"bigram\", \"vocab_size\": 256}\n");
    if (++save_calls == sigkill_in_save_at_call) ::raise(SIGKILL);  // mid-checkpoint: half a model folder
    save_safetensors(dir + "/model.safetensors", {{w_.name, w_.value}});
  }
  const Tensor& weight() const { return w_.value; }

  std::int64_t grad_calls = 0, kill_at_call = -1, nan_loss_at_call = -1, nan_grad_at_call = -1;
  bool sigkill = false;  // kill_at_call raises SIGKILL instead of throwing
  mutable std::int64_t save_calls = 0;
  std::int64_t sigkill_in_save_at_call = -1;

 private:
  Tensor gather(const Tensor& tokens) const {
    const std::int64_t n = tokens.numel();
    Tensor out = Tensor::empty({n, 256});
    const std::int32_t* tok = tokens.data<std::int32_t>();
    for (std::int64_t i = 0; i < n; ++i)
      std::copy_n(w_.value.data<float>() + tok[i] * 256, 256, out.data<float>() + i * 256);
    return out;
  }
  Parameter w_;
};

std::string fresh_dir(const std::string& tag) {
  const fs::path d = fs::temp_directory_path() / ("mf_trainer_" + std::to_string(::getpid()) + "_" + tag);
  fs::remove_all(d);
  return d.string();
}

// Small text with structure; gcide's first bytes when available.
const TextCorpus& corpus() {
  static const TextCorpus c = [] {
    std::string text;
    if (fs::exists(kDefaultCorpusPath)) {
      text = load_corpus_text("", 1 << 20);
    } else {
      for (int i = 0; text.size() < (1u << 20); ++i)
        text += "The quick brown fox jumps over the lazy dog number " + std::to_string(i) + ".\n";
    }
    return TextCorpus::from_text(std::move(text), 0.02, "test corpus");
  }();
  return c;
}

TrainConfig small_config(const std::string& dir) { return mf::testing::small_train_config(dir); }

std::int64_t checkpoint_step(const std::string& dir) {
  return nlohmann::json::parse(read_file(dir + "/checkpoint/trainer_state.json"))["step"].get<std::int64_t>();
}

}  // namespace

TEST(TrainTrainer, LossDecreasesOnText) {
  const std::string dir = fresh_dir("learn");
  BigramModel model(1);
  const EvalResult before = evaluate(model, corpus(), 64, 16, 8);
  EXPECT_NEAR(before.loss, std::log(256.0), 0.05);  // near-uniform start
  TrainConfig cfg = small_config(dir);
  cfg.steps = 50;
  cfg.batch_size = 16;
  cfg.seq_len = 64;
  cfg.grad_accum = 1;
  cfg.lr = 0.1;
  cfg.min_lr = 0.01;
  cfg.warmup_steps = 5;
  cfg.log_interval = 10;
  cfg.eval_interval = 20;
  cfg.eval_windows = 16;
  cfg.checkpoint_interval = 0;
  const TrainResult r = train(model, corpus(), cfg);
  EXPECT_EQ(r.end_step, 50);
  // a bigram model of English text sits near 2.4 nats/byte; after 50 steps it must be well below uniform (5.55)
  EXPECT_LT(r.val.loss, 3.3) << "val loss " << r.val.loss;
  EXPECT_NEAR(r.val.bpb, r.val.loss / std::log(2.0), 1e-12);
  const auto lines = metric_lines(dir);
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[0]["step"], 10);
  EXPECT_TRUE(lines[0]["val_loss"].is_null());
  EXPECT_TRUE(lines[1]["val_loss"].is_number());  // step 20 evaluates
  for (const char* key : {"train_loss", "val_bpb", "lr", "grad_norm"}) EXPECT_TRUE(lines[4].contains(key)) << key;
  EXPECT_NE(read_file(dir + "/metrics.jsonl").find("\"tokens_per_s\":"), std::string::npos);
  EXPECT_LT(lines[4]["train_loss"].get<double>(), lines[0]["train_loss"].get<double>() - 1.0);
  EXPECT_LT(lines[4]["val_loss"].get<double>(), lines[1]["val_loss"].get<double>());
  EXPECT_NEAR(lines[4]["lr"].get<double>(), 0.01, 1e-12);  // the last update uses min_lr
  const std::string svg = read_file(dir + "/loss.svg");
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("validation"), std::string::npos);
  EXPECT_EQ(checkpoint_step(dir), 50);  // the end always checkpoints
  fs::remove_all(dir);
}

// Run A goes straight through; run B is killed mid-step 10 (after the step-8
// checkpoint), then a freshly initialized model resumes it. Everything that
// is not wall-clock time must be bit-identical.
TEST(TrainTrainer, ResumeAfterKillIsBitIdentical) {
  const std::string dir_a = fresh_dir("resume_a"), dir_b = fresh_dir("resume_b");
  BigramModel a(7);
  const TrainResult ra = train(a, corpus(), small_config(dir_a));

  BigramModel b(7);
  b.kill_at_call = 2 * 9 + 2;  // grad_accum 2: the second micro-batch of step 10
  EXPECT_EQ(mf::testing::exception_message_of([&] { train(b, corpus(), small_config(dir_b)); }), "simulated kill");
  EXPECT_EQ(checkpoint_step(dir_b), 8);
  EXPECT_EQ(metric_lines(dir_b).size(), 3u);  // steps 3, 6, 9 were logged before the kill

  BigramModel c(12345);  // different init: everything must come from the checkpoint
  const TrainResult rc = train(c, corpus(), small_config(dir_b), /*resume=*/true);
  EXPECT_EQ(rc.start_step, 8);
  EXPECT_EQ(rc.end_step, 12);
  EXPECT_EQ(c.weight().to_vector(), a.weight().to_vector());
  EXPECT_EQ(rc.train_loss, ra.train_loss);
  EXPECT_EQ(rc.val.loss, ra.val.loss);
  EXPECT_EQ(metric_lines(dir_b), metric_lines(dir_a));  // step 9 line rewritten, not duplicated
  const auto oa = load_safetensors(dir_a + "/checkpoint/optimizer.safetensors");
  const auto ob = load_safetensors(dir_b + "/checkpoint/optimizer.safetensors");
  for (const auto& [name, t] : oa.tensors) EXPECT_EQ(ob.tensors.at(name).to_vector(), t.to_vector()) << name;
  EXPECT_EQ(oa.metadata.at("step"), "12");

  // resuming a finished run does nothing but evaluate
  BigramModel d(5);
  const TrainResult rd = train(d, corpus(), small_config(dir_b), true);
  EXPECT_EQ(rd.start_step, 12);
  EXPECT_EQ(rd.val.loss, ra.val.loss);
  fs::remove_all(dir_a);
  fs::remove_all(dir_b);
}

// Real kills: a forked child trains and is SIGKILLed in the middle of a step
// (inside the backward of step 10) or in the middle of writing a checkpoint
// (the model half written, at step 8); the run resumed in this process ends
// with the weights, optimizer state and metrics of an uninterrupted run, bit
// for bit. The children train on one thread (a forked child cannot use the
// parent's OpenMP pool).
TEST(TrainTrainer, ResumeAfterRealSigkillIsBitIdentical) {
  struct Kill {
    const char* what;
    std::int64_t at_grad_call, in_save_call;
    std::int64_t checkpoint_after;  // the step of the checkpoint the resume starts from
  };
  const Kill kills[] = {{"mid-step", 2 * 9 + 2, -1, 8}, {"mid-checkpoint", -1, 2, 4}};
  std::vector<std::string> dirs;
  for (const Kill& k : kills) {
    const std::string dir = fresh_dir(std::string("sigkill_") + (k.at_grad_call > 0 ? "step" : "ckpt"));
    dirs.push_back(dir);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      set_num_threads(1);  // no OpenMP team: a pool made before the fork does not exist in the child
      BigramModel m(7);
      m.sigkill = true;
      m.kill_at_call = k.at_grad_call;
      m.sigkill_in_save_at_call = k.in_save_call;
      try {
        train(m, corpus(), small_config(dir));
      } catch (...) {
      }
      ::_exit(3);  // not killed: the test fails below
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << k.what << ": status " << status;
    ASSERT_EQ(find_checkpoint(dir), dir + "/checkpoint") << k.what;  // also clears the killed write's leftovers
    EXPECT_EQ(checkpoint_step(dir), k.checkpoint_after) << k.what;
  }
  const std::string dir_a = fresh_dir("sigkill_reference");
  BigramModel a(7);
  const TrainResult ra = train(a, corpus(), small_config(dir_a));
  const auto oa = load_safetensors(dir_a + "/checkpoint/optimizer.safetensors");
  for (std::size_t i = 0; i < dirs.size(); ++i) {
    SCOPED_TRACE(kills[i].what);
    BigramModel c(12345);
    const TrainResult rc = train(c, corpus(), small_config(dirs[i]), /*resume=*/true);
    EXPECT_EQ(rc.start_step, kills[i].checkpoint_after);
    EXPECT_EQ(c.weight().to_vector(), a.weight().to_vector());
    EXPECT_EQ(rc.val.loss, ra.val.loss);
    EXPECT_EQ(metric_lines(dirs[i]), metric_lines(dir_a));
    const auto ob = load_safetensors(dirs[i] + "/checkpoint/optimizer.safetensors");
    for (const auto& [name, t] : oa.tensors) EXPECT_EQ(ob.tensors.at(name).to_vector(), t.to_vector()) << name;
    fs::remove_all(dirs[i]);
  }
  fs::remove_all(dir_a);
}

// Gradient accumulation is a split batch: 3 steps of accumulation 2 x batch 4
// see the windows of accumulation 1 x batch 8 and give the same gradient
// norms and weights, to rounding (clipping off, so that the norm is the raw one).
TEST(TrainTrainer, GradientAccumulationEqualsTheWholeBatch) {
  auto run = [&](std::int64_t batch, std::int64_t accum, const std::string& dir) {
    TrainConfig cfg = small_config(dir);
    cfg.steps = 3;
    cfg.batch_size = batch;
    cfg.grad_accum = accum;
    cfg.grad_clip = 0;
    cfg.log_interval = 1;
    cfg.checkpoint_interval = 0;
    cfg.eval_interval = 0;
    auto m = std::make_unique<BigramModel>(7);
    train(*m, corpus(), cfg);
    return m;
  };
  const std::string da = fresh_dir("accum_a"), db = fresh_dir("accum_b");
  const auto split = run(4, 2, da), whole = run(8, 1, db);
  const auto la = metric_lines(da), lb = metric_lines(db);
  ASSERT_EQ(la.size(), 3u);
  ASSERT_EQ(lb.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    const double ga = la[i]["grad_norm"].get<double>(), gb = lb[i]["grad_norm"].get<double>();
    EXPECT_NEAR(ga, gb, 1e-5 * gb) << "step " << i + 1;
    EXPECT_NEAR(la[i]["train_loss"].get<double>(), lb[i]["train_loss"].get<double>(), 1e-9) << "step " << i + 1;
  }
  const std::vector<float> wa = split->weight().to_vector(), wb = whole->weight().to_vector();
  float diff = 0, scale = 0;
  for (std::size_t i = 0; i < wa.size(); ++i) {
    diff = std::max(diff, std::abs(wa[i] - wb[i]));
    scale = std::max(scale, std::abs(wb[i]));
  }
  EXPECT_LE(diff, 1e-5f * scale);
  fs::remove_all(da);
  fs::remove_all(db);
}

TEST(TrainTrainer, NonFiniteLossStopsAndKeepsCheckpoint) {
  const std::string dir = fresh_dir("nan_loss");
  BigramModel m(3);
  m.nan_loss_at_call = 2 * 6 + 1;  // step 7
  const std::string e = error_of([&] { train(m, corpus(), small_config(dir)); });
  EXPECT_NE(e.find("the loss is inf at step 7 of 12"), std::string::npos) << e;
  EXPECT_NE(e.find("last good checkpoint is '" + dir + "/checkpoint' (step 4)"), std::string::npos) << e;
  EXPECT_EQ(checkpoint_step(dir), 4);
  EXPECT_TRUE(fs::is_regular_file(dir + "/checkpoint/model.safetensors"));
  // the run can be resumed once the cause is gone, and matches a clean run
  BigramModel resumed(11);
  train(resumed, corpus(), small_config(dir), true);
  const std::string clean_dir = fresh_dir("nan_clean");
  BigramModel clean(3);
  train(clean, corpus(), small_config(clean_dir));
  EXPECT_EQ(resumed.weight().to_vector(), clean.weight().to_vector());
  fs::remove_all(dir);
  fs::remove_all(clean_dir);
}

TEST(TrainTrainer, NonFiniteGradientStopsBeforeTheUpdate) {
  const std::string dir = fresh_dir("nan_grad");
  BigramModel m(3);
  m.nan_grad_at_call = 2;  // step 1, before any checkpoint
  const std::string e = error_of([&] { train(m, corpus(), small_config(dir)); });
  EXPECT_NE(e.find("the gradient norm is nan at step 1 of 12"), std::string::npos) << e;
  EXPECT_NE(e.find("no checkpoint has been written yet"), std::string::npos) << e;
  EXPECT_EQ(find_checkpoint(dir), "");
  for (float x : m.weight().to_vector()) ASSERT_TRUE(std::isfinite(x));  // no NaN update was applied
  fs::remove_all(dir);
}

TEST(TrainTrainer, ResumeChecksConfigAndData) {
  const std::string dir = fresh_dir("checks");
  BigramModel m(1);
  TrainConfig cfg = small_config(dir);
  cfg.steps = 4;
  train(m, corpus(), cfg);
  EXPECT_NE(error_of([&] { train(m, corpus(), cfg); }).find("already holds a checkpoint"), std::string::npos);
  TrainConfig other = cfg;
  other.lr = 0.02;
  EXPECT_NE(error_of([&] { train(m, corpus(), other, true); }).find("field 'lr' is 0.02"), std::string::npos);
  const TextCorpus shifted = TextCorpus::from_text(corpus().bytes->substr(1), 0.02, "shifted");
  EXPECT_NE(error_of([&] { train(m, shifted, cfg, true); }).find("the corpus differs"), std::string::npos);
  const TextCorpus resplit = TextCorpus::from_text(*corpus().bytes, 0.05, "resplit");
  EXPECT_NE(error_of([&] { train(m, resplit, cfg, true); }).find("val_fraction = 0.02 puts the split at"),
            std::string::npos);
  // more steps on resume is allowed (the run is extended)
  TrainConfig longer = cfg;
  longer.steps = 6;
  EXPECT_EQ(train(m, corpus(), longer, true).end_step, 6);
  EXPECT_EQ(train_config_from_checkpoint(dir).steps, 6);
  fs::remove_all(dir);
}

TEST(TrainTrainer, ConfigJsonRoundTripAndErrors) {
  TrainConfig cfg = small_config("/tmp/x");
  cfg.min_lr = 1e-4;
  cfg.seed = 0xfeedfacecafebeefull;
  cfg.lr = 3.0000000000000004e-4;
  const TrainConfig back = train_config_from_json(train_config_to_json(cfg), "test");
  EXPECT_EQ(train_config_to_json(back), train_config_to_json(cfg));
  EXPECT_EQ(back.seed, cfg.seed);
  EXPECT_EQ(back.lr, cfg.lr);
  EXPECT_NE(error_of([] { train_config_from_json("{\"stepz\": 3}", "c.json"); }).find("unknown field 'stepz' in 'c.json'"),
            std::string::npos);
  EXPECT_NE(error_of([] { train_config_from_json("{\"steps\": 2.5}", "c.json"); }).find("field 'steps'"),
            std::string::npos);
  EXPECT_NE(error_of([] { train_config_from_json("{\"min_lr\": 1.0}", "c.json"); }).find("min_lr"), std::string::npos);
  EXPECT_NE(error_of([] { train_config_from_json("{\"grad_accum\": 0}", "c.json"); }).find("grad_accum must be >= 1"),
            std::string::npos);
  EXPECT_NE(error_of([] { train_config_from_json("[1", "c.json"); }).find("not valid JSON"), std::string::npos);
}

TEST(TrainTrainer, EvaluateIsTheMeanOverValidationWindows) {
  BigramModel m(4);
  const auto offsets = val_window_offsets(corpus(), 16, 5);
  double sum = 0;
  for (std::int64_t o : offsets) {
    Tensor tok, tgt;
    fill_windows(corpus(), {o}, 16, tok, tgt);
    sum += m.loss(tok, tgt, false);
  }
  const EvalResult r = evaluate(m, corpus(), 16, 5, 2);  // batches of 2, 2, 1
  EXPECT_EQ(r.tokens, 5 * 16);
  EXPECT_NEAR(r.loss, sum / 5, 1e-12);
  EXPECT_NEAR(r.bpb, r.loss / std::log(2.0), 1e-12);
}

// A kill between the two renames of the fallback swap leaves checkpoint.old
// and no checkpoint; a kill while writing leaves a checkpoint.tmp.* folder.
TEST(TrainCheckpoint, RecoversFromInterruptedSwaps) {
  const std::string dir = fresh_dir("swap");
  fs::create_directories(dir);
  auto writer = [](const std::string& tag) {
    return [tag](const std::string& d) {
      write_file_atomic(d + "/payload", tag);
      write_file_atomic(d + "/" + kTrainerStateFile, "{}");
    };
  };
  commit_checkpoint(dir, writer("one"));
  commit_checkpoint(dir, writer("two"));  // the exchange path (or its fallback)
  EXPECT_EQ(read_file(dir + "/checkpoint/payload"), "two");
  // a writer that fails leaves the previous checkpoint and no temporary
  EXPECT_ERROR("disk full", commit_checkpoint(dir, [](const std::string& d) {
                 write_file_atomic(d + "/payload", "three");
                 throw Error("disk full");
               }));
  EXPECT_EQ(read_file(dir + "/checkpoint/payload"), "two");
  // killed mid-fallback: only checkpoint.old is complete
  fs::rename(dir + "/checkpoint", dir + "/checkpoint.old");
  fs::create_directories(dir + "/checkpoint.tmp.99999");
  write_file_atomic(dir + "/checkpoint.tmp.99999/payload", "partial");
  EXPECT_EQ(find_checkpoint(dir), dir + "/checkpoint");
  EXPECT_EQ(read_file(dir + "/checkpoint/payload"), "two");
  EXPECT_FALSE(fs::exists(dir + "/checkpoint.old"));
  EXPECT_FALSE(fs::exists(dir + "/checkpoint.tmp.99999"));
  // a checkpoint folder without trainer_state.json is not a checkpoint
  fs::remove(dir + "/checkpoint/" + kTrainerStateFile);
  EXPECT_EQ(find_checkpoint(dir), "");
  fs::remove_all(dir);
}

// Failures injected at each step of a commit (a file's write, flush or
// rename inside the writer; the folder flush; the exchange; each rename of
// the two-rename fallback) leave the previous checkpoint whole, found by
// find_checkpoint, and no temporary behind.
TEST(TrainCheckpoint, InjectedFailuresLeaveThePreviousCheckpoint) {
  const std::string dir = fresh_dir("faults");
  fs::create_directories(dir);
  auto writer = [](const std::string& tag) {
    return [tag](const std::string& d) {
      write_file_atomic(d + "/payload", tag);
      write_file_atomic(d + "/" + kTrainerStateFile, "{}");
    };
  };
  commit_checkpoint(dir, writer("good"));
  struct Case {
    const char* what;
    IoStep step;
    int skip;
    bool fallback;
    const char* needle;
  };
  const Case cases[] = {
      {"payload write", IoStep::Write, 0, false, "error while writing"},
      {"payload flush", IoStep::Flush, 0, false, "cannot flush"},
      {"payload rename", IoStep::Rename, 0, false, "cannot rename"},
      {"checkpoint file flush", IoStep::Flush, 2, false, "[checkpoint] cannot flush"},
      {"fallback: current -> old", IoStep::Rename, 2, true, "[checkpoint] cannot rename"},
      {"fallback: new -> current", IoStep::Rename, 3, true, "[checkpoint] cannot rename"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    clear_io_faults();
    force_rename_exchange_fallback(c.fallback);
    inject_io_fault(c.step, c.skip);
    const std::string e = mf::testing::error_of([&] { commit_checkpoint(dir, writer("bad")); });
    EXPECT_NE(e.find(c.needle), std::string::npos) << e;
    clear_io_faults();
    ASSERT_EQ(find_checkpoint(dir), dir + "/checkpoint");
    EXPECT_EQ(read_file(dir + "/checkpoint/payload"), "good");
    for (const auto& entry : fs::directory_iterator(dir))
      EXPECT_EQ(entry.path().filename().string().find("checkpoint."), std::string::npos) << entry.path();
    for (const auto& entry : fs::directory_iterator(dir + "/checkpoint"))
      EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos) << entry.path();
  }
  // The fallback forced on, no failure: the commit lands and leaves nothing else.
  force_rename_exchange_fallback(true);
  commit_checkpoint(dir, writer("fallback"));
  clear_io_faults();
  EXPECT_EQ(read_file(dir + "/checkpoint/payload"), "fallback");
  EXPECT_FALSE(fs::exists(dir + "/checkpoint.old"));
  fs::remove_all(dir);
}

TEST(TrainCheckpoint, LoadModelParametersChecksNamesAndShapes) {
  const std::string dir = fresh_dir("params");
  fs::create_directories(dir);
  BigramModel a(1), b(2);
  a.save(dir);
  load_model_parameters(b, dir + "/model.safetensors");
  EXPECT_EQ(b.weight().to_vector(), a.weight().to_vector());
  save_safetensors(dir + "/bad.safetensors", {{"bigram.weight", Tensor::zeros({256, 255})}});
  EXPECT_NE(error_of([&] { load_model_parameters(b, dir + "/bad.safetensors"); }).find("has shape [256, 255]"),
            std::string::npos);
  save_safetensors(dir + "/bad.safetensors", {{"other", Tensor::zeros({2})}});
  EXPECT_NE(error_of([&] { load_model_parameters(b, dir + "/bad.safetensors"); }).find("no tensor 'bigram.weight'"),
            std::string::npos);
  fs::remove_all(dir);
}
