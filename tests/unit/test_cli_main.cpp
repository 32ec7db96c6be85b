// The `modformer` front door: unknown subcommands and flags, bad thread
// counts (--threads and MODFORMER_THREADS), `info`, `--version`, and a smoke
// run at toy sizes of every `bench` subcommand that has no test file of its
// own (approx, attention, gemm and train are run end to end by
// test_bench_*.cpp); each with its exit code and the message it prints.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <regex>
#include <set>
#include <string>

#include "../support/cli.h"

namespace fs = std::filesystem;
using mf::testing::run_cli;

namespace {

fs::path fresh_dir(const std::string& tag) {
  const fs::path dir = fs::temp_directory_path() / ("mf_cli_main_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// CLI11's exit codes for the parse errors the tests provoke.
constexpr int kRequiredError = 106, kExtrasError = 109, kValidationError = 105;

}  // namespace

TEST(CliMain, UnknownSubcommandIsNamedWithTheKnownOnes) {
  const fs::path dir = fresh_dir("subcommand");
  auto r = run_cli("frobnicate", dir);
  EXPECT_EQ(r.rc, kRequiredError);
  EXPECT_TRUE(contains(r.err, "error: unknown subcommand 'frobnicate'; known: ")) << r.err;
  EXPECT_TRUE(contains(r.err, "bench, ") && contains(r.err, ", demo, ")) << r.err;  // sorted; other commands may sit between
  EXPECT_TRUE(r.out.empty()) << r.out;

  r = run_cli("bench nosuch", dir);
  EXPECT_EQ(r.rc, kRequiredError);
  EXPECT_TRUE(contains(r.err, "error: unknown subcommand 'nosuch' of 'bench'; known: approx, attention, gemm")) << r.err;

  r = run_cli("", dir);  // no subcommand at all: CLI11's own message
  EXPECT_EQ(r.rc, kRequiredError);
  EXPECT_TRUE(contains(r.err, "A subcommand is required")) << r.err;
  fs::remove_all(dir);
}

TEST(CliMain, UnknownFlagIsNamed) {
  const fs::path dir = fresh_dir("flag");
  for (const char* args : {"--frob info", "info --frob", "bench rope --frob"}) {
    const auto r = run_cli(args, dir);
    EXPECT_EQ(r.rc, kExtrasError) << args;
    EXPECT_TRUE(contains(r.err, "The following argument was not expected: --frob")) << args << ": " << r.err;
  }
  fs::remove_all(dir);
}

TEST(CliMain, ThreadCountsOutOfRangeAreRefused) {
  const fs::path dir = fresh_dir("threads");
  for (const std::string value : {"0", "-3", "1025", "99999999999999999999", "abc"}) {
    const auto r = run_cli("--threads " + value + " info", dir);
    EXPECT_EQ(r.rc, kValidationError) << value;
    EXPECT_TRUE(contains(r.err, "--threads: Value " + value + " not in range 1 to 1024")) << value << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << value << ": " << r.out;
  }
  const auto r = run_cli("--threads 3 info", dir);
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "threads:      3\n")) << r.out;
  fs::remove_all(dir);
}

TEST(CliMain, ThreadsFromTheEnvironmentAreCheckedAndTheFlagWins) {
  const fs::path dir = fresh_dir("env");
  for (const std::string value : {"abc", "0", "2x", "-1", "5000"}) {
    const auto r = run_cli("info", dir, "MODFORMER_THREADS=" + value);
    EXPECT_EQ(r.rc, 1) << value;
    EXPECT_TRUE(contains(r.err, "error: [threads] MODFORMER_THREADS must be an integer in [1, 1024], got '" + value + "'"))
        << value << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << value << ": " << r.out;
  }
  auto r = run_cli("info", dir, "MODFORMER_THREADS=2");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "threads:      2\n")) << r.out;
  r = run_cli("--threads 1 info", dir, "MODFORMER_THREADS=abc");  // the flag wins; the variable is not read
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "threads:      1\n")) << r.out;
  fs::remove_all(dir);
}

TEST(CliMain, InfoAndVersion) {
  const fs::path dir = fresh_dir("info");
  auto r = run_cli("--version", dir);
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, std::string("modformer ") + MODFORMER_VERSION + "\n");
  r = run_cli("info", dir, "MODFORMER_THREADS=1");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  for (const char* line : {"build type:", "compiler:", "cpu features: avx2=", "blas:", "gemm backend:", "threads:      1"})
    EXPECT_TRUE(contains(r.out, line)) << line << " missing from:\n" << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex("^modformer \\d+\\.\\d+\\.\\d+\n"))) << r.out;
  fs::remove_all(dir);
}

// The benchmarks `bench --help` lists are exactly those this file and
// test_bench_*.cpp run, so a new benchmark without a smoke run fails here.
TEST(CliMain, EveryBenchmarkHasASmokeRun) {
  const fs::path dir = fresh_dir("bench_list");
  const auto r = run_cli("bench --help", dir);
  EXPECT_EQ(r.rc, 0) << r.err;
  std::set<std::string> listed;
  const std::regex row("\n  ([a-z_]+) {2,}\\S");
  for (auto it = std::sregex_iterator(r.out.begin(), r.out.end(), row); it != std::sregex_iterator(); ++it)
    listed.insert((*it)[1]);
  const std::set<std::string> covered = {"approx", "attention", "gemm", "generate", "train",  // test_bench_*.cpp
                                         "kernels", "kv_cache", "mixers", "rope",             // below
                                         "sparse"};  // test_sparse_attention.cpp
  EXPECT_EQ(listed, covered) << r.out;
  fs::remove_all(dir);
}

TEST(CliMain, BenchKernelsSmoke) {
  const fs::path dir = fresh_dir("bench_kernels");
  auto r = run_cli("--threads 1 bench kernels --rows 4 --n 32 --reps 1 --out " + (dir / "k.json").string() + " --md " +
                       (dir / "k.md").string(),
                   dir);
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "| softmax_forward |")) << r.out;
  EXPECT_TRUE(fs::file_size(dir / "k.json") > 0);
  EXPECT_TRUE(fs::file_size(dir / "k.md") > 0);
  r = run_cli("bench kernels --rows 0", dir);
  EXPECT_EQ(r.rc, kValidationError);
  EXPECT_TRUE(contains(r.err, "--rows: Value 0 not in range")) << r.err;
  fs::remove_all(dir);
}

TEST(CliMain, BenchKvCacheSmoke) {
  const fs::path dir = fresh_dir("bench_kv");
  auto r = run_cli("--threads 1 bench kv_cache --contexts 16 --steps 2 --reps 1 --out " + (dir / "kv.json").string(), dir);
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "context 16: decode")) << r.out;
  EXPECT_TRUE(fs::file_size(dir / "kv.json") > 0);
  r = run_cli("--threads 1 bench kv_cache --contexts 16 --steps 2 --impl sparse", dir);
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(contains(r.err, "error: [bench kv_cache] --impl must be flash or dense, got 'sparse'")) << r.err;
  r = run_cli("--threads 1 bench kv_cache --contexts 2 --steps 2", dir);
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(contains(r.err, "error: [bench kv_cache] context 2 must exceed --steps 2")) << r.err;
  fs::remove_all(dir);
}

TEST(CliMain, BenchMixersSmoke) {
  const fs::path dir = fresh_dir("bench_mixers");
  auto r = run_cli("--threads 1 bench mixers --causal --lengths 128 --hidden 16 --heads 2 --batch 1 --reps 1 "
                   "--decode-contexts 8 --decode-steps 2 --out-dir " + (dir / "out").string(),
                   dir);
  EXPECT_EQ(r.rc, 0) << r.err;
  for (const char* file : {"mixers.json", "speed.svg", "memory.svg", "decode.svg"})
    EXPECT_TRUE(fs::exists(dir / "out" / file)) << file;
  r = run_cli("--threads 1 bench mixers --lengths 128 --hidden 16 --heads 3 --out-dir " + (dir / "bad").string(), dir);
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(contains(r.err, "error: [bench mixers] --heads 3 must divide --hidden 16")) << r.err;
  r = run_cli("--threads 1 bench mixers --lengths 16 --hidden 16 --heads 2 --out-dir " + (dir / "bad").string(), dir);
  EXPECT_EQ(r.rc, 1);  // Linformer's default k = 128 needs 128 positions
  EXPECT_TRUE(contains(r.err, "error: [linformer] option 'k' (128) exceeds the sequence length n = 16")) << r.err;
  fs::remove_all(dir);
}

TEST(CliMain, BenchRopeSmoke) {
  const fs::path dir = fresh_dir("bench_rope");
  auto r = run_cli("--threads 1 bench rope --batch 1 --heads 1 --len 16 --head-dim 8 --reps 1 --out " +
                       (dir / "rope.json").string(),
                   dir);
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "rotate_half fast")) << r.out;
  EXPECT_TRUE(fs::file_size(dir / "rope.json") > 0);
  r = run_cli("bench rope --head-dim 7 --len 4", dir);
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(contains(r.err, "error: [bench rope] --head-dim must be even, got 7")) << r.err;
  fs::remove_all(dir);
}
