// Mixture of experts (src/nn/moe/): every router against its PyTorch rewrite
// (fixtures, noise injected), the grouped expert compute against the
// per-token twin, finite differences for x and every parameter (auxiliary
// losses included), capacity overflow, the auxiliary losses' values,
// determinism across thread counts, option errors, and the "moe" channel
// mixer in a model that trains.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/gemm.h"
#include "nn/moe/moe.h"
#include "testing/gradcheck.h"
#include "../support/errors.h"
#include "../support/fixtures.h"
#include "../support/mixer_checks.h"
#include "../support/threads.h"

namespace mf {
namespace {

using mf::testing::ScopedThreads;

// Owns a MoeParams' parameters.
struct MoeSetup {
  std::vector<std::unique_ptr<Parameter>> owned;
  MoeParams p;

  Parameter* make(const std::string& name, const Tensor& value) {
    owned.push_back(std::make_unique<Parameter>(name, value.contiguous().clone(), true));
    return owned.back().get();
  }
  Parameter* random(const std::string& name, const Shape& shape, float scale, std::uint64_t stream) {
    Tensor v = Tensor::empty(shape);
    fill_normal(v, 77, 0.0f, scale, stream);
    return make(name, v);
  }
  void zero_grads() {
    for (auto& q : owned) q->grad.fill(0.0f);
  }

  // Random parameters: E experts of `kind`, width i, optional shared experts.
  MoeSetup(RouterOptions r, std::int64_t c, std::int64_t i, FfnKind kind, std::int64_t shared = 0) {
    p.router = r;
    std::uint64_t stream = 0;
    p.gate = random("gate", {r.num_experts, c}, 0.5f, stream++);
    if (r.kind == RouterKind::NoisyTopK) p.gate_noise = random("gate_noise", {r.num_experts, c}, 0.3f, stream++);
    auto ffn = [&](const std::string& pre, std::int64_t width) {
      FfnParams f;
      f.kind = kind;
      f.act = kind == FfnKind::SwiGLU ? Activation::SiLU : Activation::GELU;
      if (kind != FfnKind::MLP) f.gate = random(pre + "gate", {width, c}, 0.4f, stream++);
      f.up = random(pre + "up", {width, c}, 0.4f, stream++);
      f.down = random(pre + "down", {c, width}, 0.4f, stream++);
      return f;
    };
    for (std::int64_t e = 0; e < r.num_experts; ++e) p.experts.push_back(ffn("e" + std::to_string(e) + "_", i));
    if (shared > 0) p.shared = ffn("shared_", shared * i);
  }

  // From a fixture (tools/fixtures/moe.py).
  explicit MoeSetup(const mf::testing::FixtureModule& f) {
    const RouterKind kinds[] = {RouterKind::SoftmaxTopK, RouterKind::Switch, RouterKind::NoisyTopK, RouterKind::DeepSeek};
    const FfnKind ffn_kinds[] = {FfnKind::SwiGLU, FfnKind::GeGLU, FfnKind::MLP};
    auto fopt = [&](const char* name) { return static_cast<double>(f.tensor(std::string("fopt_") + name).to_vector()[0]); };
    RouterOptions& r = p.router;
    r.kind = kinds[f.option("router")];
    r.num_experts = f.option("E");
    r.top_k = f.option("k");
    r.norm_topk_prob = f.option("norm") != 0;
    r.capacity_factor = fopt("capacity_factor");
    r.routed_scaling_factor = fopt("routed_scaling_factor");
    r.aux_loss_coef = fopt("aux_coef");
    r.z_loss_coef = fopt("z_coef");
    const FfnKind kind = ffn_kinds[f.option("expert")];
    p.gate = make("gate", f.tensor("gate"));
    if (f.file.tensors.count("gate_noise")) p.gate_noise = make("gate_noise", f.tensor("gate_noise"));
    auto ffn = [&](const std::string& pre) {
      FfnParams q;
      q.kind = kind;
      q.act = kind == FfnKind::SwiGLU ? Activation::SiLU : Activation::GELU;
      if (kind != FfnKind::MLP) q.gate = make(pre + "gate", f.tensor(pre + "gate"));
      q.up = make(pre + "up", f.tensor(pre + "up"));
      q.down = make(pre + "down", f.tensor(pre + "down"));
      return q;
    };
    for (std::int64_t e = 0; e < r.num_experts; ++e) p.experts.push_back(ffn("e" + std::to_string(e) + "_"));
    if (f.option("shared") > 0) p.shared = ffn("shared_");
  }
};

RouterOptions router(RouterKind kind, std::int64_t e, std::int64_t k, double capacity = 0, bool norm = true,
                     double scale = 1.0, double aux = 0.02, double z = 0.01) {
  RouterOptions r;
  r.kind = kind;
  r.num_experts = e;
  r.top_k = k;
  r.capacity_factor = capacity;
  r.norm_topk_prob = norm;
  r.routed_scaling_factor = scale;
  r.aux_loss_coef = aux;
  r.z_loss_coef = z;
  return r;
}

const std::vector<std::string> kMoeFixtures = {"moe_mixtral",          "moe_mixtral_plain_topk",
                                               "moe_switch_capacity",  "moe_noisy_topk",
                                               "moe_deepseek_shared",  "moe_deepseek_norm_capacity",
                                               "moe_topk_mlp_capacity"};

TEST(Moe, MatchesPyTorchFixtures) {
  ScopedThreads one(1);
  for (const std::string& name : kMoeFixtures) {
    SCOPED_TRACE(name);
    mf::testing::FixtureModule f(name);
    MoeSetup s(f);
    const Tensor& x = f.tensor("x");
    const std::int64_t n = x.size(0), c = x.size(1);
    const Tensor noise = f.file.tensors.count("noise") ? f.tensor("noise") : Tensor();
    Tensor y = Tensor::empty({n, c}), dx = Tensor::empty({n, c});
    MoeSaved saved;
    moe_forward(y, saved, x, s.p, noise);
    moe_backward(dx, f.tensor("dy"), x, saved, s.p);
    EXPECT_TRUE(mf::testing::close(y, f.tensor("y"), 2e-5, "y", 1.0));
    EXPECT_TRUE(mf::testing::close(dx, f.tensor("dx"), 2e-5, "dx", 1.0));
    for (const auto& q : s.owned)
      EXPECT_TRUE(mf::testing::close(q->grad, f.tensor("grad_" + q->name), 2e-5, "grad_" + q->name, 1.0));
    EXPECT_NEAR(saved.router.balance_loss, f.tensor("balance_loss").to_vector()[0], 1e-6);
    EXPECT_NEAR(saved.router.z_loss, f.tensor("z_loss").to_vector()[0], 1e-6);
    const std::vector<float> kept = f.tensor("kept").to(DType::F32).to_vector();
    for (std::size_t a = 0; a < kept.size(); ++a) EXPECT_EQ(saved.router.kept[a], kept[a] != 0) << "assignment " << a;
  }
}

TEST(Moe, FixtureListCoversEveryFile) { mf::testing::expect_fixture_list_covers("moe_", kMoeFixtures); }

struct Case {
  const char* name;
  RouterOptions r;
  FfnKind kind;
  std::int64_t shared;
};

std::vector<Case> cases() {
  return {{"softmax_topk", router(RouterKind::SoftmaxTopK, 4, 2), FfnKind::SwiGLU, 0},
          {"softmax_topk_plain_capacity", router(RouterKind::SoftmaxTopK, 5, 3, 0.8, false), FfnKind::GeGLU, 0},
          {"switch_capacity", router(RouterKind::Switch, 4, 1, 1.0), FfnKind::MLP, 0},
          {"noisy_topk", router(RouterKind::NoisyTopK, 6, 2, 0, true, 1.0, 0.01, 0.001), FfnKind::SwiGLU, 0},
          {"deepseek_shared", router(RouterKind::DeepSeek, 6, 2, 0, false, 2.5), FfnKind::SwiGLU, 2},
          {"deepseek_norm_capacity", router(RouterKind::DeepSeek, 4, 3, 1.0, true, 1.5), FfnKind::SwiGLU, 1}};
}

Tensor noise_for(const MoeParams& p, std::int64_t n) {
  return p.router.kind == RouterKind::NoisyTopK ? randn({n, p.router.num_experts}, 5) : Tensor();
}

// Grouped compute (one FFN call per expert) == the per-token twin, on odd
// token counts, one token, and a count where some experts get no token.
TEST(Moe, GroupedExpertsEqualPerTokenReference) {
  for (const Case& cs : cases())
    for (std::int64_t n : {1, 2, 37}) {
      SCOPED_TRACE(std::string(cs.name) + " n=" + std::to_string(n));
      const std::int64_t c = 24;
      MoeSetup s(cs.r, c, 20, cs.kind, cs.shared);
      const Tensor x = randn({n, c}, 11), dy = randn({n, c}, 12), noise = noise_for(s.p, n);
      Tensor y = Tensor::empty({n, c}), dx = Tensor::empty({n, c});
      Tensor y_ref = Tensor::empty({n, c}), dx_ref = Tensor::empty({n, c});
      MoeSaved saved, saved_ref;
      moe_forward(y, saved, x, s.p, noise);
      moe_backward(dx, dy, x, saved, s.p);
      std::vector<Tensor> grads;
      for (auto& q : s.owned) grads.push_back(q->grad.clone());
      s.zero_grads();
      reference::moe_forward(y_ref, saved_ref, x, s.p, noise);
      reference::moe_backward(dx_ref, dy, x, saved_ref, s.p);
      EXPECT_TRUE(mf::testing::close(y, y_ref, 1e-5, "y", 1.0));
      EXPECT_TRUE(mf::testing::close(dx, dx_ref, 1e-5, "dx", 1.0));
      for (std::size_t i = 0; i < grads.size(); ++i)
        EXPECT_TRUE(mf::testing::close(grads[i], s.owned[i]->grad, 1e-5, s.owned[i]->name, 1.0));
    }
}

// d(sum(y * w) + balance + z)/d(x and every parameter) by finite differences.
TEST(Moe, BackwardMatchesFiniteDifferences) {
  ScopedThreads one(1);
  for (const Case& cs : cases()) {
    SCOPED_TRACE(cs.name);
    const std::int64_t n = 9, c = 6;
    MoeSetup s(cs.r, c, 5, cs.kind, cs.shared);
    Tensor x = randn({n, c}, 21);
    const Tensor w = randn({n, c}, 22), noise = noise_for(s.p, n);
    Tensor y = Tensor::empty({n, c}), dx = Tensor::empty({n, c});
    MoeSaved saved;
    moe_forward(y, saved, x, s.p, noise);
    moe_backward(dx, w, x, saved, s.p);
    auto loss = [&] {
      MoeSaved local;
      Tensor out = Tensor::empty({n, c});
      moe_forward(out, local, x, s.p, noise);
      return mf::testing::weighted_sum(out, w) + local.router.balance_loss + local.router.z_loss;
    };
    std::vector<Tensor> inputs = {x}, analytic = {dx};
    for (auto& q : s.owned) {
      inputs.push_back(q->value);
      analytic.push_back(q->grad);
    }
    mf::testing::GradcheckOptions opt;
    opt.step = 1e-3;  // small: a step must not flip a top-k choice
    opt.atol = 2e-3;
    const auto r = mf::testing::gradcheck(loss, inputs, analytic, opt);
    EXPECT_TRUE(r.ok) << r.report;
  }
}

// Zero gate logits: every token picks experts 0..k-1 (ties go to the lower
// index), so f = (1, 1, 0, 0), P = 1/E: L_bal = alpha E (2 / E) = 2 alpha,
// L_z = beta (ln E)^2; capacity ceil(f k N / E) drops the rest.
TEST(Moe, AuxLossValuesAndCapacity) {
  const std::int64_t n = 10, c = 4;
  MoeSetup s(router(RouterKind::SoftmaxTopK, 4, 2, 1.0, true, 1.0, 0.1, 0.01), c, 3, FfnKind::SwiGLU);
  s.p.gate->value.fill(0.0f);
  const Tensor x = randn({n, c}, 3);
  Tensor y = Tensor::empty({n, c});
  MoeSaved saved;
  moe_forward(y, saved, x, s.p, Tensor());
  EXPECT_NEAR(saved.router.balance_loss, 2 * 0.1, 1e-6);
  EXPECT_NEAR(saved.router.z_loss, 0.01 * std::log(4.0) * std::log(4.0), 1e-6);
  const std::int64_t cap = 5;  // ceil(1.0 * 2 * 10 / 4)
  EXPECT_EQ(s.p.router.capacity(n), cap);
  EXPECT_EQ(saved.router.load[0], cap);
  EXPECT_EQ(saved.router.load[1], cap);
  EXPECT_EQ(saved.router.dropped, 2 * n - 2 * cap);
  // Tokens 5..9 lost both choices: their output is 0 (the residual carries them).
  for (std::int64_t t = 0; t < n; ++t) {
    double norm = 0;
    for (std::int64_t i = 0; i < c; ++i) norm += std::fabs(y.data<float>()[t * c + i]);
    if (t >= cap)
      EXPECT_EQ(norm, 0.0) << "token " << t;
    else
      EXPECT_GT(norm, 0.0) << "token " << t;
  }
}

// Switch's capacity: first choices are admitted in token order; the overflow
// tokens get no expert and no gradient through one.
TEST(Moe, SwitchCapacityOverflowSkipsTheLayer) {
  const std::int64_t n = 12, c = 4;
  MoeSetup s(router(RouterKind::Switch, 3, 1, 0.5), c, 3, FfnKind::SwiGLU);
  Tensor g = s.p.gate->value;
  g.fill(0.0f);
  g.data<float>()[1 * c + 0] = 5.0f;  // expert 1 wins for x[:, 0] > 0
  Tensor x = randn({n, c}, 4);
  for (std::int64_t t = 0; t < n; ++t) x.data<float>()[t * c] = 1.0f;
  Tensor y = Tensor::empty({n, c}), dx = Tensor::empty({n, c});
  MoeSaved saved;
  moe_forward(y, saved, x, s.p, Tensor());
  EXPECT_EQ(s.p.router.capacity(n), 2);  // ceil(0.5 * 12 / 3)
  EXPECT_EQ(saved.router.load[1], 2);
  EXPECT_EQ(saved.router.dropped, n - 2);
  EXPECT_EQ(saved.router.kept[0], 1);
  EXPECT_EQ(saved.router.kept[1], 1);
  EXPECT_EQ(saved.router.kept[2], 0);
  for (std::int64_t i = 2 * c; i < n * c; ++i) EXPECT_EQ(y.data<float>()[i], 0.0f);
  s.zero_grads();
  moe_backward(dx, randn({n, c}, 5), x, saved, s.p);
  for (std::int64_t e : {0, 2})
    for (float v : s.p.experts[static_cast<std::size_t>(e)].up->grad.to_vector()) EXPECT_EQ(v, 0.0f);
}

// Large enough for every parallel loop (router rows, gather, scatter) and
// multi-threaded GEMMs; noisy routing, capacity drops and shared experts.
// Run on oneDNN (else the reference GEMM): OpenBLAS's sgemm itself is not
// thread-count deterministic on some shapes (measured through linear_forward:
// m = 195 rows, k = 128, n = 32 differ by 1e-5 between 1 and 2 threads;
// m = 200 does not), and experts get row counts of every size.
TEST(Moe, SameBitsAcrossThreadCounts) {
  struct BackendGuard {
    GemmBackend prev = gemm_backend();
    BackendGuard() {
      set_gemm_backend(gemm_backend_available(GemmBackend::OneDNN) ? GemmBackend::OneDNN : GemmBackend::Reference);
    }
    ~BackendGuard() { set_gemm_backend(prev); }
  } guard;
  for (const RouterOptions& r : {router(RouterKind::NoisyTopK, 8, 2, 1.25), router(RouterKind::DeepSeek, 8, 3, 1.0, true, 1.5)}) {
    SCOPED_TRACE(router_kind_name(r.kind));
    const std::int64_t n = 520, c = 128;
    MoeSetup s(r, c, 32, FfnKind::SwiGLU, r.kind == RouterKind::DeepSeek ? 1 : 0);
    const Tensor x = randn({n, c}, 31), dy = randn({n, c}, 32), noise = noise_for(s.p, n);
    mf::testing::expect_same_bits_across_threads([&] {
      s.zero_grads();
      Tensor y = Tensor::empty({n, c}), dx = Tensor::empty({n, c});
      MoeSaved saved;
      moe_forward(y, saved, x, s.p, noise);
      moe_backward(dx, dy, x, saved, s.p);
      std::vector<Tensor> all = {y, dx};
      for (auto& q : s.owned) all.push_back(q->grad);
      return mf::testing::all_values(all);
    });
  }
}

TEST(Moe, BadOptionsAreRefusedByName) {
  EXPECT_ERROR("router \"switch\" routes each token to one expert", router(RouterKind::Switch, 4, 2).validate("[moe] "));
  EXPECT_ERROR("option 'num_experts_per_tok' must be in [1, 4]", router(RouterKind::SoftmaxTopK, 4, 5).validate(""));
  EXPECT_ERROR("option 'capacity_factor' must be >= 0", router(RouterKind::SoftmaxTopK, 4, 2, -1).validate(""));
  EXPECT_ERROR("unknown router \"topk\"", parse_router_kind("topk", "[moe] "));
  MoeSetup s(router(RouterKind::SoftmaxTopK, 4, 2), 8, 6, FfnKind::SwiGLU);
  Tensor y = Tensor::empty({3, 8});
  MoeSaved saved;
  EXPECT_ERROR("[moe] tensor 'x'", moe_forward(y, saved, randn({3, 7}, 1), s.p, Tensor()));
  s.p.experts.pop_back();
  EXPECT_ERROR("4 experts expected but 3 given", moe_forward(y, saved, randn({3, 8}, 1), s.p, Tensor()));
}

}  // namespace
}  // namespace mf
