// `modformer bench attention` end to end on tiny sizes: every section writes
// its records (JSON array) and the SVG, the numbers are finite and positive,
// the run's sgemm peak bounds each row's sgemm, and bad options are named.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "../support/cli.h"

namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& tag) {
  const fs::path d = fs::temp_directory_path() / ("mf_bench_attention_" + std::to_string(::getpid()) + "_" + tag);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

bool positive(const nlohmann::json& r, const char* field) {
  return r.contains(field) && r.at(field).is_number() && std::isfinite(r.at(field).get<double>()) &&
         r.at(field).get<double>() > 0.0;
}

}  // namespace

TEST(BenchAttention, CliRunsEverySectionAndWritesRecords) {
  const fs::path dir = fresh_dir("run");
  const fs::path json = dir / "bench.json", svg = dir / "bench.svg";
  const auto r = mf::testing::run_cli(
      "--threads 2 bench attention --lengths 128 --dims 64 --sections main,decode,window --reps 1 "
      "--decode-lengths 512 --window-len 512 --no-coretype-child --json " + json.string() + " --svg " + svg.string(),
      dir);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("sgemm peak:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("decode: 1 query"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("window: L = 512"), std::string::npos) << r.out;
  ASSERT_TRUE(fs::exists(svg));
  std::ifstream f(json);
  std::stringstream ss;
  ss << f.rdbuf();
  const nlohmann::json records = nlohmann::json::parse(ss.str());  // throws (fails) on invalid JSON
  ASSERT_TRUE(records.is_array());
  std::map<std::string, int> count;
  for (const auto& rec : records) {
    const std::string section = rec.at("section");
    ++count[section];
    if (section == "main") {
      for (const char* k : {"flash_fwd_s", "flash_bwd_s", "flash_fwd_gflops", "sgemm_best_gflops", "sgemm_peak_gflops",
                            "fwd_frac_sgemm_peak", "unfused_s", "dense_fwd_s"})
        EXPECT_TRUE(positive(rec, k)) << k << " in " << rec.dump();
      // The peak is the best sgemm rate of the run, the rows' own products included.
      EXPECT_GE(rec.at("sgemm_peak_gflops").get<double>(), rec.at("sgemm_best_gflops").get<double>());
    } else if (section == "decode") {
      for (const char* k : {"seconds", "kv_bytes_per_s", "read_bandwidth_bytes_per_s"})
        EXPECT_TRUE(positive(rec, k)) << k << " in " << rec.dump();
    } else if (section == "window") {
      for (const char* k : {"seconds", "bwd_seconds", "time_over_density_x_full", "bwd_time_over_density_x_full"})
        EXPECT_TRUE(positive(rec, k)) << k << " in " << rec.dump();
    }
  }
  EXPECT_EQ(count["main"], 2);    // L 128, d 64, causal and not
  EXPECT_EQ(count["decode"], 2);  // 32/32 and 32/8 heads
  EXPECT_EQ(count["window"], 4);  // windows 128, 512, 2048 and none
  fs::remove_all(dir);
}

TEST(BenchAttention, BadOptionsAreNamed) {
  const fs::path dir = fresh_dir("bad");
  const struct {
    const char* args;
    const char* message;
  } cases[] = {
      {"--sections main,bogus", "unknown section 'bogus'"},
      {"--lengths 8", "lengths must be in [16, 65536], got 8"},
      {"--dims 12", "head dims must be multiples of 8 in [8, 256], got 12"},
      {"--window-len 5 --sections window", "--window-len must be in [16, 65536], got 5"},
      {"--decode-lengths 4 --sections decode", "decode lengths must be in [16, 1048576], got 4"},
  };
  for (const auto& c : cases) {
    const auto r = mf::testing::run_cli(std::string("bench attention --no-coretype-child ") + c.args, dir);
    EXPECT_NE(r.rc, 0) << c.args;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << ": " << r.err;
  }
  fs::remove_all(dir);
}
