// bench gemm: shape parsing, the in-process GFLOP/s helper, and one tiny run
// of the CLI (including the OPENBLAS_CORETYPE child processes) checked
// through its JSON records. Checks structure only, never speed.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "../support/errors.h"
#include "bench/gemm_bench.h"
#include "core/atomic_file.h"
#include "core/cpu_features.h"
#include "core/error.h"

using namespace mf;

TEST(BenchGemm, ParsesShapes) {
  const auto s = bench::parse_gemm_shapes({"512", "4096x64x128"});
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].m, 512);
  EXPECT_TRUE(s[0].square());
  EXPECT_EQ(s[1].m, 4096);
  EXPECT_EQ(s[1].n, 64);
  EXPECT_EQ(s[1].k, 128);
  EXPECT_EQ(s[1].label(), "4096x64x128");
  for (const char* bad : {"", "0", "12x", "4x4", "1x2x3x4", "abc", "-5", "100000"}) {
    try {
      bench::parse_gemm_shapes({bad});
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("size '") + bad + "'"), std::string::npos) << e.what();
    }
  }
}

TEST(BenchGemm, MeasuresPositiveGflops) {
  EXPECT_GT(bench::measure_sgemm_gflops(32, 16, 8, GemmBackend::OpenBLAS, 1), 0.0);
  EXPECT_GT(bench::measure_sgemm_gflops(8, 8, 8, GemmBackend::Reference, 1, Trans::T, Trans::T), 0.0);
  EXPECT_ERROR("m, n, k must be positive, got 0x8x8", bench::measure_sgemm_gflops(0, 8, 8));
}

TEST(BenchGemm, CliRunWritesOneRecordPerCell) {
  const std::string json = ::testing::TempDir() + "mf_bench_gemm_test.json";
  const std::string cmd = std::string(MODFORMER_CLI_PATH) + " --threads 1 bench gemm --reps 1 --no-batched --sizes 16,8x4x2 --json " +
                          json + " > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const auto records = nlohmann::json::parse(read_file(json));
  std::remove(json.c_str());
  std::set<std::string> columns;
  int reference = 0;
  for (const auto& r : records) {
    EXPECT_EQ(r.at("bench"), "gemm");
    EXPECT_GT(r.at("gflops").get<double>(), 0.0);
    EXPECT_LE(r.at("ratio_to_best").get<double>(), 1.0);
    EXPECT_EQ(r.at("threads"), 1);
    columns.insert(r.at("column").get<std::string>());
    reference += r.at("backend") == "reference";
  }
  EXPECT_EQ(reference, 1);  // only on the smallest shape
  // OpenBLAS under both core types when the CPU has them (one in a child process).
  if (cpu_features().avx512f) {
    EXPECT_TRUE(columns.count("openblas[SkylakeX]")) << records.dump();
  }
  if (cpu_features().avx2) {
    EXPECT_TRUE(columns.count("openblas[Haswell]")) << records.dump();
  }
  if (gemm_backend_available(GemmBackend::OneDNN)) {
    EXPECT_TRUE(columns.count("onednn"));
  }
  const std::size_t expected_cells = 2 * (columns.size() - 1) + 1;  // every column per shape, reference once
  EXPECT_EQ(records.size(), expected_cells);
}
