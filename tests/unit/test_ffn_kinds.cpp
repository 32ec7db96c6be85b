// Feed-forward networks: every kind and activation against finite
// differences, chunked == unchunked (values and gradients), the chunked
// path's smaller activation memory, and parameter checks.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <span>

#include "core/alloc.h"
#include "core/rng.h"
#include "core/threads.h"
#include "nn/ffn/ffn.h"
#include "testing/gradcheck.h"
#include "../support/errors.h"
#include "../support/parameters.h"
#include "../support/threads.h"

using namespace mf;
using mf::testing::ScopedThreads;

namespace {

struct FfnFixture : mf::testing::OwnedParameters {
  FfnParams p;

  FfnFixture(FfnKind kind, Activation act, bool bias, std::int64_t c, std::int64_t i, std::uint64_t param_seed) {
    seed = param_seed;
    p.kind = kind;
    p.act = act;
    const float ws = 1.0f / std::sqrt(static_cast<float>(c));
    if (kind != FfnKind::MLP) p.gate = make("gate", {i, c}, 0.0f, ws);
    p.up = make("up", {i, c}, 0.0f, ws);
    p.down = make("down", {c, i}, 0.0f, 1.0f / std::sqrt(static_cast<float>(i)));
    if (bias) {
      if (kind != FfnKind::MLP) p.gate_bias = make("gate_bias", {i}, 0.0f, 0.3f);
      p.up_bias = make("up_bias", {i}, 0.0f, 0.3f);
      p.down_bias = make("down_bias", {c}, 0.0f, 0.3f);
    }
  }
  void zero_grads() {
    for (auto& q : owned) q->grad.fill(0.0f);
  }
};

struct Case {
  FfnKind kind;
  Activation act;
  bool bias;
};

}  // namespace

class FfnKinds : public ::testing::TestWithParam<Case> {};

TEST_P(FfnKinds, BackwardMatchesFiniteDifferences) {
  ScopedThreads one(1);
  const Case k = GetParam();
  const std::int64_t n = 5, c = 12, i = 20;
  FfnFixture f(k.kind, k.act, k.bias, c, i, 7);
  Tensor x = randn({n, c}, 8), w = randn({n, c}, 9);
  auto loss = [&] {
    Tensor y = Tensor::empty({n, c});
    FfnSaved s;
    ffn_forward(y, s, x, f.p);
    return mf::testing::weighted_sum(y, w);
  };
  Tensor y = Tensor::empty({n, c}), dx = Tensor::full({n, c}, 5.0f);
  FfnSaved s;
  ffn_forward(y, s, x, f.p);
  ffn_backward(dx, w, x, s, f.p);
  std::vector<Tensor> in = f.values(), g = f.grads();
  in.push_back(x);
  g.push_back(dx);
  mf::testing::GradcheckOptions opt;
  opt.atol = 5e-4;
  opt.rtol = 5e-3;
  const auto r = mf::testing::gradcheck(loss, in, g, opt);
  EXPECT_TRUE(r.ok) << r.report;
}

TEST_P(FfnKinds, ChunkedEqualsUnchunked) {
  const Case k = GetParam();
  const std::int64_t n = 23, c = 16, i = 40;
  FfnFixture f(k.kind, k.act, k.bias, c, i, 3);
  Tensor x = randn({n, c}, 4), dy = randn({n, c}, 5);
  auto run = [&](std::int64_t chunk, std::vector<Tensor>& grads) {
    f.p.chunk_size = chunk;
    f.zero_grads();
    Tensor y = Tensor::empty({n, c}), dx = Tensor::empty({n, c});
    FfnSaved s;
    ffn_forward(y, s, x, f.p);
    EXPECT_EQ(s.up.defined(), chunk == 0 || chunk >= n);  // chunked keeps nothing
    ffn_backward(dx, dy, x, s, f.p);
    grads = {y, dx};
    for (const Tensor& g : f.grads()) grads.push_back(g.clone());
  };
  std::vector<Tensor> ref;
  run(0, ref);
  for (std::int64_t chunk : {1, 4, 22, 23, 100}) {
    std::vector<Tensor> got;
    run(chunk, got);
    ASSERT_EQ(got.size(), ref.size());
    for (std::size_t t = 0; t < ref.size(); ++t) {
      // Rows are computed independently; only GEMM blocking over different
      // row counts and the order of the chunked weight-gradient sums differ,
      // i.e. float32 reassociation: a few ulps of the value scale.
      float scale = 0;
      for (float v : ref[t].to_vector()) scale = std::max(scale, std::fabs(v));
      EXPECT_LE(max_abs_diff(got[t], ref[t]), 1e-5f * scale) << "chunk " << chunk << " tensor " << t;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, FfnKinds,
                         ::testing::Values(Case{FfnKind::SwiGLU, Activation::SiLU, false},
                                           Case{FfnKind::SwiGLU, Activation::SiLU, true},
                                           Case{FfnKind::GeGLU, Activation::GELU, false},
                                           Case{FfnKind::GeGLU, Activation::GELUTanh, true},
                                           Case{FfnKind::MLP, Activation::GELU, true},
                                           Case{FfnKind::MLP, Activation::GELUTanh, false},
                                           Case{FfnKind::MLP, Activation::SiLU, false}));

TEST(FfnChunking, BoundsActivationMemory) {
  const std::int64_t n = 512, c = 32, i = 256;
  FfnFixture f(FfnKind::SwiGLU, Activation::SiLU, false, c, i, 1);
  Tensor x = randn({n, c}, 2), dy = randn({n, c}, 3);
  auto peak_of = [&](std::int64_t chunk) {
    f.p.chunk_size = chunk;
    Tensor y = Tensor::empty({n, c}), dx = Tensor::empty({n, c});
    const std::int64_t before = memory_stats().current_bytes;
    reset_peak_memory();
    FfnSaved s;
    ffn_forward(y, s, x, f.p);
    const std::int64_t kept = memory_stats().current_bytes - before;
    ffn_backward(dx, dy, x, s, f.p);
    return std::pair{kept, memory_stats().peak_bytes - before};
  };
  const auto [kept_full, peak_full] = peak_of(0);
  const auto [kept_chunk, peak_chunk] = peak_of(32);
  // Unchunked keeps gate and up pre-activations, [N, I] each.
  EXPECT_EQ(kept_full, 2 * n * i * 4);
  EXPECT_EQ(kept_chunk, 0);
  // The peak holds a few [N, I] tensors unchunked, a few [32, I] chunked.
  EXPECT_GT(peak_full, 4 * n * i * 4);
  EXPECT_LT(peak_chunk, peak_full / 8);
}

TEST(FfnParamsCheck, NamesTheBadParameter) {
  FfnFixture f(FfnKind::SwiGLU, Activation::SiLU, false, 8, 16, 1);
  Tensor x = randn({3, 8}, 2), y = Tensor::empty({3, 8});
  FfnSaved s;
  f.p.act = Activation::GELU;
  EXPECT_ERROR("SwiGLU needs the SiLU activation", ffn_forward(y, s, x, f.p));
  f.p.act = Activation::SiLU;
  Parameter wrong("model.layers.0.mlp.down_proj.weight", Tensor::zeros({8, 15}), true);
  f.p.down = &wrong;
  try {
    ffn_forward(y, s, x, f.p);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.down_proj.weight"), std::string::npos) << e.what();
  }
  FfnFixture g(FfnKind::SwiGLU, Activation::SiLU, false, 8, 16, 1);
  g.p.gate = nullptr;
  EXPECT_ERROR("the gate parameter is missing", ffn_forward(y, s, x, g.p));
}
