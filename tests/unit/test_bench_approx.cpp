// `modformer bench approx` end to end at toy sizes: every Performer and LSH
// row is there with a finite error; Performer's error falls from 8 to 256
// features (the estimator's variance shrinks as 1/m); with --model the Q/K/V
// come from a checkpoint's layer 0; bad options are refused by name.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "core/atomic_file.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "../support/cli.h"
#include "../support/tiny_models.h"

namespace fs = std::filesystem;
namespace mt = mf::testing;

namespace {

std::string temp_dir(const std::string& tag) {
  const fs::path d = fs::temp_directory_path() / ("mf_bench_approx_" + std::to_string(::getpid()) + "_" + tag);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

}  // namespace

TEST(BenchApprox, RandomQkvRowsAndErrorFallsWithFeatures) {
  const std::string dir = temp_dir("random");
  const auto r = mt::run_cli("--threads 1 bench approx --length 64 --heads 2 --head-dim 16 --features 8,256 "
                             "--rounds 1,4 --buckets 4 --chunk 16 --qk-scale 0.25 --reps 1 --out-dir " + dir,
                             dir);
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  const nlohmann::json j = nlohmann::json::parse(mf::read_file(dir + "/approx.json"));
  ASSERT_EQ(j.at("performer").size(), 2u);
  ASSERT_EQ(j.at("lsh").size(), 2u);
  for (const char* k : {"performer", "lsh"})
    for (const auto& row : j.at(k)) {
      EXPECT_TRUE(std::isfinite(row.at("relative_error").get<double>())) << row.dump();
      EXPECT_GT(row.at("seconds").get<double>(), 0.0) << row.dump();
    }
  EXPECT_LT(j["performer"][1]["relative_error"].get<double>(), 0.5 * j["performer"][0]["relative_error"].get<double>());
  EXPECT_TRUE(fs::exists(dir + "/approx.svg"));
  fs::remove_all(dir);
}

TEST(BenchApprox, ModelQkvAndBadOptions) {
  const std::string dir = temp_dir("model");
  mf::ModelConfig c = mt::tiny_llama_config();  // byte vocabulary, RoPE, GQA 4:2, 64 positions
  mf::save_config(dir + "/config.json", c);
  ASSERT_EQ(mt::run_cli("init --config " + dir + "/config.json --out " + dir + "/m --seed 3", dir).rc, 0);
  auto r = mt::run_cli("--threads 1 bench approx --model " + dir + "/m --length 48 --features 16 --rounds 1 --buckets 4 "
                       "--chunk 8 --causal --reps 1 --out-dir " + dir + "/out",
                       dir);
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("layer 0 of"), std::string::npos) << r.out;
  const nlohmann::json j = nlohmann::json::parse(mf::read_file(dir + "/out/approx.json"));
  EXPECT_EQ(j.at("heads").get<int>(), 4);
  EXPECT_EQ(j.at("head_dim").get<int>(), 8);
  r = mt::run_cli("bench approx --model " + dir + "/m --length 100 --reps 1 --out-dir " + dir + "/out", dir);
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("exceeds the model's max_position_embeddings"), std::string::npos) << r.err;
  r = mt::run_cli("bench approx --buckets 3 --out-dir " + dir + "/out", dir);
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("--buckets must be even"), std::string::npos) << r.err;
  fs::remove_all(dir);
}
