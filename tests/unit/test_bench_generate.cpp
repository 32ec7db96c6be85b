// `modformer bench generate` end to end on a tiny config: a row per thread
// count, path and batch with finite positive rates, the JSON and SVG written,
// and bad options named.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "model/config.h"
#include "../support/cli.h"
#include "../support/tiny_models.h"

namespace fs = std::filesystem;

TEST(BenchGenerate, CliRunsATinyConfigAndWritesRecords) {
  const fs::path dir = fs::temp_directory_path() / ("mf_bench_generate_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path config = dir / "config.json";
  mf::save_config(config.string(), mf::testing::tiny_llama_config());
  const auto r = mf::testing::run_cli("bench generate --config " + config.string() +
                                          " --prompt-len 9 --new-tokens 6 --threads 1,2 --batch 1,3 "
                                          "--bandwidth-mib 8 --out-dir " + (dir / "out").string(),
                                      dir, "MODFORMER_GEMM_BACKEND=openblas");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("measured read bandwidth"), std::string::npos) << r.out;
  ASSERT_TRUE(fs::exists(dir / "out" / "generate.svg"));
  std::ifstream f(dir / "out" / "generate.json");
  std::stringstream ss;
  ss << f.rdbuf();
  const nlohmann::json report = nlohmann::json::parse(ss.str());
  ASSERT_EQ(report.at("rows").size(), 8u);  // 2 thread counts x 2 paths x 2 batches
  for (const auto& row : report.at("rows")) {
    for (const char* k : {"prefill_tokens_per_s", "decode_tokens_per_s", "decode_gb_per_s",
                          "fraction_of_read_bandwidth", "decode_bytes_per_step", "growth_last_over_first_step_time"}) {
      ASSERT_TRUE(row.at(k).is_number()) << k;
      const double v = row.at(k).get<double>();
      EXPECT_TRUE(std::isfinite(v) && v > 0) << k << " in " << row.dump();
    }
    EXPECT_EQ(row.at("context").size(), 5u);  // one bin per decode step (5 of them)
  }
  const auto bad = mf::testing::run_cli("bench generate --config " + config.string() + " --prompt-len 60 --new-tokens 10",
                                        dir);
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("69 positions exceed the model's max_position_embeddings 64"), std::string::npos) << bad.err;
  fs::remove_all(dir);
}
