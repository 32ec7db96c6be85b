// Training the real Transformer: bit-identical resume after a simulated kill
// through the library, and the `train` / `eval` commands end to end.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/threads.h"
#include "kernels/gemm.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "train/trainer.h"
#include "../support/errors.h"
#include "../support/tiny_models.h"

using namespace mf;
namespace fs = std::filesystem;

namespace {

ModelConfig tiny_llama() {
  ModelConfig c = mf::testing::tiny_llama_config();
  c.intermediate_size = 64;
  return c;
}

// Forwards to a model and throws at the k-th gradient call (a "kill").
class KillAt : public LanguageModel {
 public:
  KillAt(LanguageModel& m, std::int64_t k) : m_(m), k_(k) {}
  std::vector<Parameter*> parameters() override { return m_.parameters(); }
  std::int64_t vocab_size() const override { return m_.vocab_size(); }
  double loss(const Tensor& t, const Tensor& y, bool g) override {
    if (g && ++calls_ == k_) throw std::runtime_error("simulated kill");
    return m_.loss(t, y, g);
  }
  Tensor logits(const Tensor& t) override { return m_.logits(t); }
  void save(const std::string& dir) const override { m_.save(dir); }

 private:
  LanguageModel& m_;
  std::int64_t k_, calls_ = 0;
};

std::string temp_dir(const std::string& tag) {
  const fs::path d = fs::temp_directory_path() / ("mf_train_cli_" + std::to_string(::getpid()) + "_" + tag);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

std::string text_corpus() {
  std::string s;
  for (int i = 0; s.size() < 40000; ++i)
    s += "Entry " + std::to_string(i % 97) + ": a word, defined by other words (see also " +
         std::to_string(i * 31 % 89) + ").\n";
  return s;
}

TrainConfig tiny_run(const std::string& out) {
  TrainConfig c;
  c.steps = 6;
  c.batch_size = 2;
  c.seq_len = 16;
  c.grad_accum = 2;
  c.lr = 3e-3;
  c.min_lr = 3e-4;
  c.warmup_steps = 2;
  c.log_interval = 1;
  c.eval_interval = 3;
  c.eval_windows = 4;
  c.checkpoint_interval = 2;
  c.val_fraction = 0.05;
  c.out_dir = out;
  c.progress = false;
  return c;
}

}  // namespace

TEST(TrainTransformer, ResumeAfterKillIsBitIdentical) {
  const std::string dir = temp_dir("lib");
  const TextCorpus corpus = TextCorpus::from_text(text_corpus(), 0.05, "entries");
  Transformer a(tiny_llama(), 3);
  const TrainResult ra = train(a, corpus, tiny_run(dir + "/a"));

  Transformer b(tiny_llama(), 3);
  KillAt killed(b, 2 * 4 + 1);  // first micro-batch of step 5, after the step-4 checkpoint
  EXPECT_EQ(mf::testing::exception_message_of([&] { train(killed, corpus, tiny_run(dir + "/b")); }), "simulated kill");
  Transformer c(tiny_llama(), 999);  // other init: the checkpoint must restore everything
  const TrainResult rc = train(c, corpus, tiny_run(dir + "/b"), true);
  EXPECT_EQ(rc.start_step, 4);
  EXPECT_EQ(rc.train_loss, ra.train_loss);
  EXPECT_EQ(rc.val.loss, ra.val.loss);
  const auto pa = a.parameters(), pc = c.parameters();
  ASSERT_EQ(pa.size(), pc.size());
  for (std::size_t i = 0; i < pa.size(); ++i) EXPECT_EQ(pa[i]->value.to_vector(), pc[i]->value.to_vector()) << pa[i]->name;
  EXPECT_LT(ra.val.loss, std::log(256.0));  // it did learn something in 6 steps
  fs::remove_all(dir);
}

TEST(TrainCli, TrainResumeAndEval) {
  const std::string dir = temp_dir("cli");
  write_file_atomic(dir + "/corpus.txt", text_corpus());
  save_config(dir + "/model.json", tiny_llama());
  const std::string cli = "MODFORMER_GEMM_BACKEND=" + gemm_backend_name(gemm_backend()) + " " +
                          std::string(MODFORMER_CLI_PATH) + " --threads " + std::to_string(num_threads());
  const std::string out = dir + "/run";
  const std::string common = " --config " + dir + "/model.json --data " + dir + "/corpus.txt --out " + out +
                             " --batch-size 2 --seq-len 16 --warmup 1 --log-interval 1 --eval-interval 2"
                             " --eval-windows 0 --checkpoint-interval 2 --val-fraction 0.05 --no-progress";
  ASSERT_EQ(std::system((cli + " train" + common + " --steps 4 > " + dir + "/train.txt 2>&1").c_str()), 0)
      << read_file(dir + "/train.txt");
  const std::string train_out = read_file(dir + "/train.txt");
  EXPECT_NE(train_out.find("step 4: validation loss"), std::string::npos) << train_out;
  std::ifstream m(out + "/metrics.jsonl");
  std::string line, last;
  int lines = 0;
  while (std::getline(m, line)) ++lines, last = line;
  EXPECT_EQ(lines, 4);
  const auto j = nlohmann::json::parse(last);
  for (const char* key : {"step", "train_loss", "val_loss", "val_bpb", "tokens_per_s", "lr"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_TRUE(fs::exists(out + "/loss.svg"));
  EXPECT_TRUE(fs::exists(out + "/checkpoint/config.json"));

  // eval on the run folder uses the run's corpus, split and sequence length:
  // the whole validation split, as the run's final evaluation did
  ASSERT_EQ(std::system((cli + " eval --model " + out + " > " + dir + "/eval.txt 2>&1").c_str()), 0)
      << read_file(dir + "/eval.txt");
  const std::string eval_out = read_file(dir + "/eval.txt");
  char want[64];
  std::snprintf(want, sizeof want, "%g bits/byte", j["val_bpb"].get<double>());
  EXPECT_NE(eval_out.find(want), std::string::npos) << eval_out << " vs " << want;

  // an existing run is not overwritten; --resume extends it
  EXPECT_NE(std::system((cli + " train" + common + " --steps 4 > " + dir + "/again.txt 2>&1").c_str()), 0);
  EXPECT_NE(read_file(dir + "/again.txt").find("already holds a checkpoint"), std::string::npos);
  ASSERT_EQ(std::system((cli + " train" + common + " --steps 6 --resume > " + dir + "/resume.txt 2>&1").c_str()), 0)
      << read_file(dir + "/resume.txt");
  EXPECT_NE(read_file(dir + "/resume.txt").find("resumed from"), std::string::npos);
  EXPECT_NE(read_file(dir + "/resume.txt").find("step 6:"), std::string::npos);

  // a missing corpus is named
  EXPECT_NE(std::system((cli + " train --out " + dir + "/x --data " + dir + "/none.txt --steps 1 > " + dir +
                         "/missing.txt 2>&1")
                            .c_str()),
            0);
  EXPECT_NE(read_file(dir + "/missing.txt").find("cannot read corpus '" + dir + "/none.txt'"), std::string::npos)
      << read_file(dir + "/missing.txt");
  fs::remove_all(dir);
}
