// `modformer compare` end to end on the tiny profile: every cell finishes
// (measured, or marked unsupported with its reason: nothing dropped), the
// tables and plots exist and parse, a second run skips every finished cell
// and gives the same numbers, and a cell killed mid-training resumes from its
// checkpoint to the numbers of an uninterrupted run. Plus the sequence task's
// refusals.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "compare/harness.h"
#include "core/atomic_file.h"
#include "model/transformer.h"
#include "../support/cli.h"
#include "../support/errors.h"
#include "../support/threads.h"
#include "../support/tiny_models.h"
#include "../support/train_runs.h"
#include "train/sequence_task.h"
#include "train/train_task.h"

namespace mf {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string small_corpus() {
  std::string s;
  for (int i = 0; s.size() < 30000; ++i)
    s += "the quick brown fox " + std::to_string(i % 97) + " jumps over the lazy dog; ";
  return s;
}

// One <svg> element, closed at the end, naming `series`.
bool svg_parses(const std::string& path, const std::string& series) {
  if (!fs::exists(path)) return false;
  const std::string s = read_file(path);
  const std::size_t open = s.find("<svg "), close = s.rfind("</svg>");
  return s.rfind("<?xml", 0) == 0 && open != std::string::npos && s.find("<svg ", open + 1) == std::string::npos &&
         close != std::string::npos && s.find_first_not_of(" \n", close + 6) == std::string::npos &&
         s.find(series) != std::string::npos;
}

TEST(CompareHarness, TinyProfileEveryCellFinishesTablesPlotsAndSkipsOnRerun) {
  testing::ScopedThreads one(1);  // tiny shapes: fork/join overhead would dominate
  const std::string dir = testing::fresh_temp_dir("compare_e2e");
  write_file_atomic(dir + "/corpus.txt", small_corpus());
  CompareOptions o;
  o.profile = "tiny";
  o.mixers = {"flash", "fnet"};
  o.out_dir = dir + "/out";
  o.lm_data = dir + "/corpus.txt";
  std::ostringstream log;
  o.log = &log;
  const json r = run_compare(o);
  // 6 training tasks x 2 mixers + extrapolation's 4 position variants of full_attention
  ASSERT_EQ(r["cells"].size(), 16u);
  std::map<std::string, std::string> status;
  for (const json& c : r["cells"]) {
    const std::string id = c["task"].get<std::string>() + "/" + c["mixer"].get<std::string>() + "/" +
                           c["position"].get<std::string>();
    status[id] = c["status"];
    EXPECT_NE(c["status"], "failed") << id << ": " << c.value("reason", std::string());
    if (c["status"] == "ok") {
      EXPECT_GT(c["params"].get<std::int64_t>(), 0);
      EXPECT_TRUE(c.contains("model_config") && c.contains("train_config") && c.contains("data")) << id;
      EXPECT_EQ(c["seed"], 1234);
      EXPECT_TRUE(fs::exists(c["run_dir"].get<std::string>() + "/run/checkpoint/trainer_state.json")) << id;
      // Each data file once: the data of a task is loaded once per run, not
      // once more per cell (the full profile's first run evaluated its k-th
      // cell on k copies of every test set).
      std::set<std::string> paths;
      for (const json& f : c["data"])
        EXPECT_TRUE(paths.insert(f["path"].get<std::string>()).second) << id << " lists " << f["path"] << " twice";
    }
  }
  EXPECT_EQ(status["char_lm/fnet/auto"], "unsupported");   // FNet is bidirectional only
  EXPECT_EQ(status["listops/fnet/auto"], "ok");
  EXPECT_EQ(status["listops/full_attention/auto"], "ok");
  EXPECT_EQ(status["mqar/full_attention/auto"], "ok");
  EXPECT_EQ(status["extrapolation/full_attention/alibi"], "ok");
  for (const json& c : r["cells"])
    if (c["task"] == "extrapolation" && c.value("position_used", "") == "rope") {
      const json& lengths = c["metrics"]["lengths"];
      EXPECT_TRUE(lengths.contains("yarn") && lengths.contains("dynamic") && lengths.contains("linear"));
      EXPECT_EQ(lengths["none"].size(), 2u);
    }
  // files
  const json saved = json::parse(read_file(o.out_dir + "/results.json"));
  EXPECT_EQ(saved["cells"], r["cells"]);
  EXPECT_TRUE(saved["speed"]["status"] == "ok");
  const std::string md = read_file(o.out_dir + "/results.md");
  for (const char* h : {"## Speed and memory vs length", "## Quality vs efficiency", "## char_lm", "## listops",
                        "## mqar", "## selective_copy", "## induction_heads", "## extrapolation",
                        "## Cells that did not produce a number", "cannot run causally"})
    EXPECT_NE(md.find(h), std::string::npos) << h;
  for (const char* f : {"quality_vs_speed.svg", "mqar.svg", "induction_heads.svg", "extrapolation.svg", "speed.svg",
                        "memory.svg"})
    EXPECT_TRUE(svg_parses(o.out_dir + "/" + f, "full_attention")) << f;
  EXPECT_TRUE(fs::exists(o.out_dir + "/data/listops/train.tsv"));
  EXPECT_TRUE(fs::exists(o.out_dir + "/data/mqar/test_pairs4.tsv"));

  // re-run: every cell skipped, the same results
  std::ostringstream again;
  o.log = &again;
  const json r2 = run_compare(o);
  EXPECT_EQ(r2["cells"], r["cells"]);
  std::size_t skipped = 0;
  for (std::size_t p = again.str().find("finished earlier, skipped"); p != std::string::npos;
       p = again.str().find("finished earlier, skipped", p + 1))
    ++skipped;
  EXPECT_EQ(skipped, 17u) << again.str();  // 16 cells and the speed section
  // a re-run with another budget does not pass the old numbers off as its own
  o.budget_steps = 5;
  EXPECT_ERROR("was measured with other settings", run_compare(o));
}

// A user's files in OUT/data/TASK/ are read instead of generated, and a time
// budget picks (and records) a step count per cell.
TEST(CompareHarness, ReadsTheUsersDataFilesAndHonoursATimeBudget) {
  testing::ScopedThreads one(1);
  const std::string out = testing::fresh_temp_dir("compare_user") + "/out";
  fs::create_directories(out + "/data/selective_copy");
  const SequenceData mine = SequenceData::parse("2 0 3 1 1\t- - - 2 3\n4 4 0 1 1\t- - - 4 4\n", "mine");
  mine.save(out + "/data/selective_copy/train.tsv");
  mine.save(out + "/data/selective_copy/test.tsv");
  CompareOptions o;
  o.profile = "tiny";
  o.tasks = {"selective_copy"};
  o.mixers = {"full_attention", "lsh_attention"};
  o.out_dir = out;
  o.budget_minutes = 0.002;  // 0.12 s of training
  std::ostringstream log;
  o.log = &log;
  const json r = run_compare(o);
  ASSERT_EQ(r["cells"].size(), 2u);
  EXPECT_EQ(r["cells"][0]["position_used"], "rope");
  EXPECT_EQ(r["cells"][1]["position_used"], "learned") << "LSH attention refuses RoPE: learned positions instead";
  EXPECT_EQ(r["cells"][1]["status"], "ok") << r["cells"][1].value("reason", std::string());
  const json& c = r["cells"][0];
  ASSERT_EQ(c["status"], "ok") << c.value("reason", std::string());
  EXPECT_EQ(c["data"][0]["fingerprint"], fingerprint_hex(mine.fingerprint()));
  EXPECT_GE(c["steps"].get<std::int64_t>(), 1);
  EXPECT_EQ(c["train_config"]["steps"], c["steps"]);
  EXPECT_EQ(c["metrics"]["by_length"][0]["scored"], 4);
}

// The full profile's first run failed every ListOps cell: the classifier's
// seq_len was the longest training expression, and one test expression was
// longer.
TEST(CompareHarness, ListOpsTestExpressionsLongerThanEveryTrainingOneFit) {
  testing::ScopedThreads one(1);
  const std::string out = testing::fresh_temp_dir("compare_listops_len") + "/out";
  fs::create_directories(out + "/data/listops");
  write_file_atomic(out + "/data/listops/train.tsv", "Source\tTarget\n[MAX 2 9 ]\t9\n[MIN 4 1 ]\t1\n");
  write_file_atomic(out + "/data/listops/test.tsv",
                    "Source\tTarget\n[SM 3 [MAX 2 9 ] 4 ]\t6\n[MED 1 2 3 ]\t2\n");
  CompareOptions o;
  o.profile = "tiny";
  o.tasks = {"listops"};
  o.mixers = {"full_attention"};
  o.out_dir = out;
  std::ostringstream log;
  o.log = &log;
  const json r = run_compare(o);
  ASSERT_EQ(r["cells"].size(), 1u);
  EXPECT_EQ(r["cells"][0]["status"], "ok") << r["cells"][0].value("reason", std::string());
}

TEST(CompareHarness, RefusesUnknownNamesAndContradictoryBudgets) {
  CompareOptions o;
  o.profile = "tiny";
  o.out_dir = testing::fresh_temp_dir("compare_bad");
  o.mixers = {"nosuch"};
  EXPECT_ERROR("unknown token mixer \"nosuch\"", run_compare(o));
  o.mixers = {};
  o.tasks = {"sorting"};
  EXPECT_ERROR("unknown task \"sorting\"", run_compare(o));
  o.tasks = {};
  o.profile = "huge";
  EXPECT_ERROR("unknown profile \"huge\"", run_compare(o));
  o.profile = "tiny";
  o.budget_steps = 3;
  o.budget_minutes = 1;
  EXPECT_ERROR("not both", run_compare(o));
  EXPECT_EQ(resolve_compare_mixers({"flash"}), std::vector<std::string>{"full_attention"});
}

TEST(CompareHarness, SequenceTaskRefusesTokensOutsideTheVocabulary) {
  ModelConfig c = testing::tiny_llama_config();
  c.vocab_size = 8;
  Transformer m(c, 1);
  const SequenceData big = SequenceData::parse("1 9\t9 -\n", "big.tsv");
  const SequenceData ok = SequenceData::parse("1 2\t3 -\n", "ok.tsv");
  TrainConfig tc = testing::small_train_config(testing::fresh_temp_dir("compare_seq"));
  tc.task = "sequence";
  EXPECT_ERROR("'big.tsv' holds token 9 but the model's vocab_size is 8", train(m, big, ok, tc));
  EXPECT_ERROR("'big.tsv' holds token 9", evaluate(m, big, 2));
  tc.task = "lm";
  EXPECT_ERROR("trains with task \"sequence\"", train(m, ok, ok, tc));
  tc.task = "sequence";
  tc.seq_len = 1;
  EXPECT_ERROR("longer than seq_len 1", train(m, ok, ok, tc));
}

// A language model whose logits are 1 for the input token and 0 elsewhere:
// it predicts "the next token is this one", so accuracy and loss are known.
class EchoModel : public LanguageModel {
 public:
  std::vector<Parameter*> parameters() override { return {}; }
  std::int64_t vocab_size() const override { return 5; }
  double loss(const Tensor&, const Tensor&, bool) override { return 0; }
  Tensor logits(const Tensor& tokens) override {
    const std::int64_t n = tokens.numel();
    Tensor z = Tensor::zeros({tokens.shape()[0], tokens.shape()[1], 5});
    for (std::int64_t i = 0; i < n; ++i) z.data<float>()[i * 5 + tokens.data<std::int32_t>()[i]] = 1;
    return z;
  }
  void save(const std::string&) const override {}
};

TEST(CompareHarness, SequenceAccuracyCountsScoredTargetsOnly) {
  EchoModel m;
  // example 0: position 0 asks 1 (echo 1: right), position 2 asks 2 (echo 3: wrong);
  // example 1 (shorter: padded in the batch): both right.
  const SequenceData d = SequenceData::parse("1 2 3\t1 - 2\n2 4\t2 4\n", "echo.tsv");
  for (std::int64_t batch : {1, 2}) {
    const SequenceEvalResult r = evaluate(m, d, batch);
    EXPECT_EQ(r.scored, 4);
    EXPECT_EQ(r.correct, 3);
    EXPECT_DOUBLE_EQ(r.accuracy, 0.75);
    EXPECT_DOUBLE_EQ(r.exact, 0.5);
    const double lse = std::log(std::exp(1.0) + 4.0);  // log-sum-exp of one 1 and four 0s
    EXPECT_NEAR(r.loss, (3 * (lse - 1) + lse) / 4, 1e-12);
  }
}

// A `modformer compare` process killed while a cell trains (after its first
// checkpoint) resumes that cell on the next run and ends with the numbers of
// an uninterrupted run.
TEST(CompareHarness, KilledCellResumesToTheUninterruptedNumbers) {
  const fs::path dir = testing::fresh_temp_dir("compare_kill");
  write_file_atomic((dir / "corpus.txt").string(), small_corpus());
  const std::string args = "--threads 1 compare --profile tiny --tasks char_lm --mixers full_attention "
                           "--budget-steps 300 --lm-data " + (dir / "corpus.txt").string() + " --out ";
  const testing::CliResult ref = testing::run_cli(args + (dir / "ref").string(), dir);
  ASSERT_EQ(ref.rc, 0) << ref.err;
  const json want = json::parse(read_file((dir / "ref/results.json").string()))["cells"][0]["metrics"];

  const std::string out = (dir / "killed").string();
  const std::string state = out + "/cells/char_lm__full_attention/run/checkpoint/trainer_state.json";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string cmd = std::string(MODFORMER_CLI_PATH) + " " + args + out + " >/dev/null 2>&1";
    execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  bool killed_mid_run = false;
  for (int i = 0; i < 6000; ++i) {  // up to 60 s
    if (fs::exists(state)) {
      kill(pid, SIGKILL);
      killed_mid_run = !fs::exists(out + "/cells/char_lm__full_attention/result.json");
      break;
    }
    int st = 0;
    if (waitpid(pid, &st, WNOHANG) == pid) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(killed_mid_run) << "the run ended before it could be killed mid-cell";
  const testing::CliResult resumed = testing::run_cli(args + out, dir);
  ASSERT_EQ(resumed.rc, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("[resumed from step"), std::string::npos) << resumed.err;
  const json got = json::parse(read_file(out + "/results.json"))["cells"][0];
  EXPECT_GT(got["resumed_from_step"].get<std::int64_t>(), 0);
  EXPECT_LT(got["resumed_from_step"].get<std::int64_t>(), 300);
  EXPECT_EQ(got["metrics"], want);
}

}  // namespace
}  // namespace mf
