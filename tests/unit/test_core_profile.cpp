// The scoped-timer profiler (core/profile.h) and `bench train --profile`:
// scopes count exclusive time (nested scopes never double count), nothing is
// recorded when off, on another thread or inside an OpenMP region; the GEMM
// wrapper counts exactly the FLOPs of the model's forward; the bar chart is
// well formed; and the bench's profile table sums to the step and lands in
// the JSON with every field.
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <vector>

#include "bench/train_bench.h"
#include "core/atomic_file.h"
#include "core/profile.h"
#include "core/svg_plot.h"
#include "kernels/gemm.h"
#include "model/transformer.h"
#include "../support/errors.h"
#include "../support/tiny_models.h"

using namespace mf;
namespace fs = std::filesystem;
using profile::Category;

namespace {

// Turns the profiler on (this thread records) with zero totals; off again at the end.
struct ProfilerOn {
  ProfilerOn() {
    profile::set_enabled(true);
    profile::reset();
  }
  ~ProfilerOn() {
    profile::set_enabled(false);
    profile::reset();
  }
};

const profile::CategoryTotals& totals(const profile::Snapshot& s, Category c) {
  return s.categories[static_cast<int>(c)];
}

void busy_for(double seconds) {  // a spin, so that a loaded machine still spends at least this much wall time
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
  }
}

}  // namespace

TEST(Profile, OffRecordsNothing) {
  profile::set_enabled(false);
  profile::reset();
  {
    const profile::Scope s(Category::Norm);
    busy_for(0.001);
  }
  std::vector<float> a(4, 1.0f), c(4, 0.0f);
  gemm(Trans::N, Trans::N, 2, 2, 2, 1.0f, a.data(), 2, a.data(), 2, 0.0f, c.data(), 2);
  const profile::Snapshot snap = profile::snapshot();
  EXPECT_EQ(snap.total_seconds(), 0.0);
  EXPECT_EQ(totals(snap, Category::Gemm).calls, 0);
  EXPECT_EQ(totals(snap, Category::Gemm).flops, 0.0);
}

TEST(Profile, NestedScopesCountExclusiveTime) {
  ProfilerOn on;
  const auto t0 = std::chrono::steady_clock::now();
  {
    const profile::Scope outer(Category::Loss);
    busy_for(0.004);
    {
      const profile::Scope inner(Category::Gemm);
      busy_for(0.006);
    }
    busy_for(0.002);
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const profile::Snapshot snap = profile::snapshot();
  const double loss = totals(snap, Category::Loss).seconds, gemm_s = totals(snap, Category::Gemm).seconds;
  EXPECT_GE(loss, 0.006);   // 4 + 2 ms outside the inner scope
  EXPECT_GE(gemm_s, 0.006);
  EXPECT_LE(loss + gemm_s, wall);  // never double counted
  EXPECT_EQ(totals(snap, Category::Loss).calls, 1);
  EXPECT_EQ(totals(snap, Category::Gemm).calls, 1);
  EXPECT_DOUBLE_EQ(snap.total_seconds(), loss + gemm_s);
}

TEST(Profile, OnlyTheRecordingThreadOutsideParallelRegionsRecords) {
  ProfilerOn on;
  std::thread other([] {
    const profile::Scope s(Category::Rope);
    busy_for(0.001);
  });
  other.join();
#pragma omp parallel num_threads(2)
  {
    const profile::Scope s(Category::Activation);
  }
  const profile::Snapshot snap = profile::snapshot();
  EXPECT_EQ(totals(snap, Category::Rope).calls, 0);
  EXPECT_EQ(totals(snap, Category::Activation).calls, 0);
}

TEST(Profile, GemmWrapperCountsFlopsAndTheLargestShape) {
  ProfilerOn on;
  std::vector<float> a(6 * 5, 0.5f), b(5 * 7, 0.25f), c(6 * 7 * 3, 0.0f);
  gemm(Trans::N, Trans::N, 6, 7, 5, 1.0f, a.data(), 5, b.data(), 7, 0.0f, c.data(), 7);
  gemm_batched(Trans::N, Trans::T, 2, 3, 4, 1.0f, a.data(), 4, 8, b.data(), 4, 0, 0.0f, c.data(), 3, 6, 3);
  const profile::Snapshot snap = profile::snapshot();
  EXPECT_EQ(totals(snap, Category::Gemm).calls, 2);
  EXPECT_DOUBLE_EQ(totals(snap, Category::Gemm).flops, 2.0 * 6 * 7 * 5 + 3 * 2.0 * 2 * 3 * 4);
  EXPECT_EQ(snap.largest_gemm.m, 6);
  EXPECT_EQ(snap.largest_gemm.n, 7);
  EXPECT_EQ(snap.largest_gemm.k, 5);
  ASSERT_EQ(snap.gemm_shapes.size(), 2u);
  const profile::GemmShapeTotals& batched = snap.gemm_shapes[1];
  EXPECT_TRUE(!batched.ta && batched.tb);
  EXPECT_EQ(batched.batch, 3);
  EXPECT_EQ(batched.calls, 1);
  EXPECT_DOUBLE_EQ(batched.flops, 3 * 2.0 * 2 * 3 * 4);
  EXPECT_LE(snap.gemm_shapes[0].seconds + batched.seconds, totals(snap, Category::Gemm).seconds * (1 + 1e-12));
  profile::Snapshot sum = snap;
  sum += snap;
  EXPECT_EQ(totals(sum, Category::Gemm).calls, 4);
  ASSERT_EQ(sum.gemm_shapes.size(), 2u);
  EXPECT_EQ(sum.gemm_shapes[1].calls, 2);
}

TEST(Profile, ForwardGemmFlopsAreTheModelsMatmulFlops) {
  // tiny llama: q, k, v, o, gate, up, down per layer and the LM head: 2 * N * (sum of in*out).
  const ModelConfig cfg = mf::testing::tiny_llama_config();
  const std::int64_t B = 2, L = 11, N = B * L, C = cfg.hidden_size, I = cfg.intermediate_size;
  const double per_layer = static_cast<double>(C * cfg.q_dim() + 2 * C * cfg.kv_dim() + cfg.q_dim() * C + 3 * C * I);
  const double expected = 2.0 * N * (cfg.num_hidden_layers * per_layer + static_cast<double>(C * cfg.vocab_size));
  Transformer model(cfg, 1);
  const Tensor tokens = mf::testing::random_tokens({B, L}, 2, cfg.vocab_size);
  const Tensor targets = mf::testing::random_tokens({B, L}, 3, cfg.vocab_size);
  ProfilerOn on;
  (void)model.loss(tokens, targets, false);
  const profile::Snapshot snap = profile::snapshot();
  EXPECT_DOUBLE_EQ(totals(snap, Category::Gemm).flops, expected);
  EXPECT_EQ(totals(snap, Category::AttentionForward).calls, cfg.num_hidden_layers);
  EXPECT_EQ(totals(snap, Category::AttentionBackward).calls, 0);
  EXPECT_GE(totals(snap, Category::Norm).calls, 2 * cfg.num_hidden_layers + 1);
  EXPECT_EQ(totals(snap, Category::Rope).calls, 2 * cfg.num_hidden_layers);
  EXPECT_EQ(totals(snap, Category::Loss).calls, 1);
  // The model FLOPs add the causal attention core: 4 * B * Hq * D * L(L+1)/2 per layer.
  const double attention = cfg.num_hidden_layers * 4.0 * B * cfg.num_attention_heads * cfg.head_dim * (L * (L + 1) / 2.0);
  EXPECT_DOUBLE_EQ(bench::model_forward_flops(cfg, B, L, expected), expected + attention);
}

TEST(Profile, CausalPairsWithAndWithoutAWindow) {
  EXPECT_DOUBLE_EQ(bench::causal_attention_pairs(1, 0), 1);
  EXPECT_DOUBLE_EQ(bench::causal_attention_pairs(5, 0), 15);
  EXPECT_DOUBLE_EQ(bench::causal_attention_pairs(5, 5), 15);
  EXPECT_DOUBLE_EQ(bench::causal_attention_pairs(5, 2), 1 + 2 + 2 + 2 + 2);
  EXPECT_DOUBLE_EQ(bench::causal_attention_pairs(5, 1), 5);
}

TEST(Profile, BarChartIsWellFormedAndNamesBadValues) {
  const std::string svg = svg_bar_chart({{"gemm", 12.5, "60%"}, {"a<b", 0, ""}, {"norm", 3, "15%"}},
                                        {"step profile", "ms per step"});
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("a&lt;b"), std::string::npos);
  EXPECT_NE(svg.find("60%"), std::string::npos);
  std::size_t rects = 0;
  for (std::size_t p = svg.find("<rect x="); p != std::string::npos; p = svg.find("<rect x=", p + 1)) ++rects;
  EXPECT_EQ(rects, 3u);
  EXPECT_ERROR("[svg_plot] bar 'copy' has value -1", svg_bar_chart({{"copy", -1, ""}}, {}));
  EXPECT_ERROR("[svg_plot] bar 'nan' has value nan", svg_bar_chart({{"nan", std::nan(""), ""}}, {}));
}

TEST(Profile, BenchTrainProfileTableSumsToTheStepAndIsInTheJson) {
  const fs::path dir = fs::temp_directory_path() / ("mf_profile_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  save_config((dir / "tiny.json").string(), mf::testing::tiny_llama_config());
  const std::string json_path = (dir / "bench.json").string(), svg_path = (dir / "profile.svg").string();
  const std::string cmd = std::string(MODFORMER_CLI_PATH) + " --threads 1 bench train --config " +
                          (dir / "tiny.json").string() +
                          " --batch-size 2 --seq-len 16 --warmup 1 --steps 2 --no-pytorch --no-checkpointing"
                          " --no-components --no-progress --profile --profile-svg " + svg_path + " --json " +
                          json_path + " > " + (dir / "stdout.txt").string() + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_file((dir / "stdout.txt").string());
  const std::string out = read_file((dir / "stdout.txt").string());
  EXPECT_NE(out.find("| category | ms/step |"), std::string::npos) << out;
  EXPECT_NE(out.find("fraction of that sgemm rate"), std::string::npos) << out;
  const nlohmann::json j = nlohmann::json::parse(read_file(json_path));
  const nlohmann::json& p = j.at("profile");
  const double step_s = p.at("step_s").get<double>();
  ASSERT_GT(step_s, 0);
  double sum = 0;
  std::set<std::string> names;
  for (const nlohmann::json& c : p.at("categories")) {
    names.insert(c.at("name").get<std::string>());
    EXPECT_GE(c.at("step_s").get<double>(), 0);
    EXPECT_TRUE(c.contains("fraction_of_step") && c.contains("calls_per_step") && c.contains("gflops") &&
                c.contains("forward_s"));
    sum += c.at("step_s").get<double>();
  }
  for (const char* name : {"gemm", "attention_forward", "attention_backward", "norm", "activation", "rope", "loss",
                           "embedding", "optimizer", "copy", "unattributed"})
    EXPECT_EQ(names.count(name), 1u) << name;
  // The categories (with the unattributed rest) are the step; the timed ones alone most of it.
  EXPECT_NEAR(sum, step_s, 1e-3 * step_s);
  EXPECT_LT(p.at("unattributed_s").get<double>(), 0.75 * step_s);
  for (const nlohmann::json& c : p.at("categories")) {
    if (c.at("name") == "gemm") {
      EXPECT_GT(c.at("gflops").get<double>(), 0);
    }
  }
  EXPECT_GT(p.at("sgemm").at("flops_per_s").get<double>(), 0);
  EXPECT_GT(p.at("sgemm").at("m").get<std::int64_t>(), 0);
  for (const char* phase : {"forward", "backward", "step"}) {
    EXPECT_GT(p.at("model_flops").at(phase).get<double>(), 0) << phase;
    EXPECT_GT(p.at("fraction_of_sgemm").at(phase).get<double>(), 0) << phase;
  }
  double shape_flops = 0;
  for (const nlohmann::json& g : p.at("gemm_shapes")) shape_flops += g.at("gflops").get<double>() * g.at("step_s").get<double>() * 1e9;
  EXPECT_NEAR(shape_flops, p.at("model_flops").at("step_gemm").get<double>(), 1e-6 * shape_flops);
  EXPECT_DOUBLE_EQ(p.at("model_flops").at("backward").get<double>(), 2 * p.at("model_flops").at("forward").get<double>());
  const std::string svg = read_file(svg_path);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("attention_backward"), std::string::npos);
  fs::remove_all(dir);
}
