// `modformer generate` end to end on a tiny byte-level checkpoint written by
// `modformer init`: streamed text equals the library's greedy generation, tokens/s
// on stderr, and clear non-zero exits for bad input.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/threads.h"
#include "kernels/gemm.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "train/data.h"
#include "../support/cli.h"
#include "../support/threads.h"
#include "../support/tiny_models.h"

using namespace mf;
using mf::testing::ScopedThreads;

namespace {

using RunResult = mf::testing::CliResult;

// One GEMM backend in the CLI and in this process: the same bits, and no
// backend measurement at each start.
RunResult run_cli(const std::string& args, const std::filesystem::path& dir) {
  return mf::testing::run_cli("--threads 1 " + args, dir, "MODFORMER_GEMM_BACKEND=openblas");
}

ModelConfig tiny_byte_config() {
  ModelConfig c = mf::testing::tiny_llama_config();
  c.max_position_embeddings = 48;
  c.initializer_range = 0.3;  // peaked enough that greedy output is not a single repeated byte
  validate_config(c, "tiny_byte_config");
  return c;
}

class CliGenerate : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("mf_cli_generate_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    model_ = (dir_ / "model").string();
    save_config((dir_ / "config.json").string(), tiny_byte_config());
    const RunResult r = run_cli("init --config " + (dir_ / "config.json").string() + " --out " + model_ + " --seed 5",
                                dir_);
    ASSERT_EQ(r.rc, 0) << r.err;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
  std::string model_;
};

}  // namespace

TEST_F(CliGenerate, StreamsTheLibraryGreedyTextAndReportsTokensPerSecond) {
  const RunResult r = run_cli("generate --model " + model_ + " --prompt 'Hello, ' --max-new-tokens 20 --temperature 0",
                              dir_);
  ASSERT_EQ(r.rc, 0) << r.err;
  struct BackendGuard {
    GemmBackend prev = gemm_backend();
    BackendGuard() { set_gemm_backend(GemmBackend::OpenBLAS); }
    ~BackendGuard() { set_gemm_backend(prev); }
  } backend;
  ScopedThreads one(1);
  auto model = load_checkpoint(model_);
  GenerateOptions g;
  g.max_new_tokens = 20;
  g.sampling.temperature = 0.0f;
  const GenerateResult lib = generate(*model, byte_encode("Hello, "), g);
  EXPECT_EQ(r.out, "Hello, " + byte_decode(lib.tokens) + "\n");  // prompt echoed, then the 20 bytes
  EXPECT_NE(r.err.find("prefill: 7 tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("decode: 19 tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tokens/s"), std::string::npos) << r.err;
}

TEST_F(CliGenerate, SeedDeterminesTheSample) {
  const std::string base = "generate --no-echo --model " + model_ + " --prompt abc --max-new-tokens 24 --top-k 50 --top-p 0.9 ";
  const RunResult a = run_cli(base + "--seed 1", dir_), b = run_cli(base + "--seed 1", dir_),
                  c = run_cli(base + "--seed 2", dir_);
  ASSERT_EQ(a.rc, 0) << a.err;
  EXPECT_EQ(a.out.size(), 25u);  // 24 raw bytes + newline
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
}

TEST_F(CliGenerate, BadInputExitsNonZeroWithAClearMessage) {
  struct Case {
    std::string args, message;
  };
  const std::string m = " --model " + model_;
  const Case cases[] = {
      {"generate --model " + (dir_ / "missing").string() + " --prompt hi", "is not a checkpoint folder"},
      {"generate" + m + " --prompt ''", "--prompt is empty"},
      {"generate" + m + " --prompt " + std::string(49, 'x'), "the prompt is 49 tokens (bytes) long but the model's context is 48"},
      {"generate" + m + " --prompt " + std::string(40, 'x') + " --max-new-tokens 10", "needs 49 positions but the context holds 48"},
      {"generate" + m + " --prompt hi --top-p 1.5", "--top-p"},
      {"generate" + m + " --prompt hi --top-p 0", "top_p must be in (0, 1]"},
      {"generate" + m + " --prompt hi --temperature -1", "--temperature"},
      {"generate" + m + " --prompt hi --max-new-tokens 0", "--max-new-tokens"},
      {"generate" + m + " --prompt hi --top-k -3", "--top-k"},
      {"generate --prompt hi", "--model is required"},
  };
  for (const Case& c : cases) {
    const RunResult r = run_cli(c.args, dir_);
    EXPECT_NE(r.rc, 0) << c.args;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\nstderr: " << r.err;
  }
  std::filesystem::remove(std::filesystem::path(model_) / "model.safetensors");
  const RunResult r = run_cli("generate" + m + " --prompt hi", dir_);
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("has no model.safetensors"), std::string::npos) << r.err;
}

// A training run folder is a model: `generate`, `forward` and `eval` take
// `train --out RUN` and use its newest checkpoint; a folder that is neither
// is refused by name.
TEST_F(CliGenerate, TrainingRunFolderIsAModel) {
  const std::string run = (dir_ / "run").string();
  RunResult r = run_cli("train --config " + (dir_ / "config.json").string() + " --out " + run +
                            " --steps 2 --batch-size 2 --seq-len 16 --eval-windows 2 --no-progress",
                        dir_);
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  r = run_cli("generate --model " + run + " --prompt abc --max-new-tokens 4 --seed 1", dir_);
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out.rfind("abc", 0), 0u) << r.out;
  r = run_cli("eval --model " + run + " --windows 2", dir_);
  EXPECT_EQ(r.rc, 0) << r.err;
  const std::string empty = (dir_ / "empty").string();
  std::filesystem::create_directories(empty);
  r = run_cli("generate --model " + empty + " --prompt abc", dir_);
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("holds neither config.json (a model folder) nor a training checkpoint"), std::string::npos)
      << r.err;
}

// --prompts FILE: one line per prompt, in order, each equal to generating that
// prompt alone (greedy and seeded sampling); escapes keep each result one line.
TEST_F(CliGenerate, PromptsFileGeneratesEveryLineLikeOneByOne) {
  const std::string file = (dir_ / "prompts.txt").string();
  {
    std::ofstream f(file, std::ios::binary);
    f << "Hello, \nab\r\nA much longer prompt\nz";  // ragged lengths, a CRLF line, no final newline
  }
  for (const std::string sampling : {"--temperature 0", "--top-k 40 --seed 3"}) {
    const RunResult batch =
        run_cli("generate --model " + model_ + " --prompts " + file + " --max-new-tokens 12 " + sampling, dir_);
    ASSERT_EQ(batch.rc, 0) << batch.err;
    EXPECT_NE(batch.err.find("batch of 4 prompts"), std::string::npos) << batch.err;
    EXPECT_NE(batch.err.find("decode: 44 tokens"), std::string::npos) << batch.err;
    std::string expected;
    for (const std::string prompt : {"Hello, ", "ab", "A much longer prompt", "z"}) {
      const RunResult one = run_cli("generate --no-echo --model " + model_ + " --prompt '" + prompt +
                                        "' --max-new-tokens 12 " + sampling,
                                    dir_);
      ASSERT_EQ(one.rc, 0) << one.err;
      std::string line = prompt;
      for (char c : one.out.substr(0, one.out.size() - 1))  // the bytes without the final newline
        line += c == '\n' ? std::string("\\n") : c == '\r' ? std::string("\\r") : c == '\\' ? std::string("\\\\")
                                                                                            : std::string(1, c);
      expected += line + "\n";
    }
    EXPECT_EQ(batch.out, expected) << sampling;
  }
}

TEST_F(CliGenerate, PromptsFileErrorsAreClear) {
  const std::string empty_line = (dir_ / "empty_line.txt").string(), empty = (dir_ / "empty.txt").string();
  std::ofstream(empty_line) << "ok\n\nmore\n";
  std::ofstream(empty) << "";
  struct Case {
    std::string args, message;
  };
  const std::string m = "generate --model " + model_;
  const Case cases[] = {
      {m + " --prompts " + empty_line, "line 2 is empty"},
      {m + " --prompts " + empty, "holds no prompt"},
      {m + " --prompts " + (dir_ / "missing.txt").string(), "cannot be opened"},
      {m + " --prompts " + empty_line + " --prompt hi", "give --prompt or --prompts, not both"},
      {m, "nothing to continue: give --prompt TEXT or --prompts FILE"},
  };
  for (const Case& c : cases) {
    const RunResult r = run_cli(c.args, dir_);
    EXPECT_NE(r.rc, 0) << c.args;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\nstderr: " << r.err;
  }
}
