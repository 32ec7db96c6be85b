// Cross-entropy: plain softmax CE and the fused, chunked LM head vs the
// double reference, PyTorch fixtures, finite differences and the memory bound.
#include <gtest/gtest.h>

#include <cmath>

#include "../support/fixtures.h"
#include "core/alloc.h"
#include "core/rng.h"
#include "nn/loss/lm_head_cross_entropy.h"
#include "nn/loss/softmax_cross_entropy.h"
#include "testing/gradcheck.h"

using namespace mf;

namespace {

Tensor make_targets(std::int64_t n, std::int64_t v, std::uint64_t seed, std::initializer_list<std::int64_t> ignored) {
  Tensor t = Tensor::empty({n}, DType::I32);
  Rng rng(seed);
  for (std::int64_t i = 0; i < n; ++i) t.data<std::int32_t>()[i] = static_cast<std::int32_t>(rng.below(v));
  for (auto i : ignored) t.data<std::int32_t>()[i] = -1;
  return t;
}

// max |a - b| / (atol + rtol |b|) over elements: <= 1 passes.
double rel_err(const Tensor& a, const Tensor& b, double atol, double rtol) {
  const auto va = a.to_vector(), vb = b.to_vector();
  double worst = 0;
  for (std::size_t i = 0; i < va.size(); ++i)
    worst = std::max(worst, std::fabs(static_cast<double>(va[i]) - vb[i]) / (atol + rtol * std::fabs(vb[i])));
  return worst;
}

}  // namespace

TEST(LossSoftmaxCE, MatchesTorch) {
  auto fx = mf::testing::load_fixture("loss_softmax_ce");
  const Tensor& logits = fx.tensors.at("logits");
  Tensor dlogits = Tensor::empty(logits.shape());
  const double loss = softmax_cross_entropy(logits, fx.tensors.at("targets"), &dlogits);
  EXPECT_NEAR(loss, fx.tensors.at("loss").at({0}), 2e-6 * std::fabs(loss));
  EXPECT_LE(rel_err(dlogits, fx.tensors.at("dlogits"), 1e-8, 1e-5), 1.0);
  // ignored rows get zero gradient
  for (std::int64_t j = 0; j < logits.size(1); ++j) EXPECT_EQ(dlogits.at({7, j}), 0.0f);
}

TEST(LossLmHeadCE, MatchesTorchAndReference) {
  auto fx = mf::testing::load_fixture("loss_lm_head_ce");
  const Tensor& h = fx.tensors.at("hidden");
  const Tensor& w = fx.tensors.at("weight");
  const Tensor& t = fx.tensors.at("targets");
  const double want = fx.tensors.at("loss").at({0});
  for (std::int64_t chunk : {1, 7, 16, 45, 256}) {
    Tensor dh = Tensor::full(h.shape(), 123.0f);  // overwritten
    Tensor dw = Tensor::full(w.shape(), 0.5f);    // accumulated
    const double loss = lm_head_cross_entropy_forward_backward(h, w, t, dh, dw, 1.0f, chunk);
    EXPECT_NEAR(loss, want, 1e-5 * want) << "chunk " << chunk;
    EXPECT_NEAR(lm_head_cross_entropy_forward(h, w, t, chunk), loss, 1e-12) << "chunk " << chunk;
    EXPECT_LE(rel_err(dh, fx.tensors.at("dhidden"), 1e-6, 1e-4), 1.0) << "chunk " << chunk;
    Tensor want_dw = fx.tensors.at("dweight").clone();
    for (std::int64_t i = 0; i < want_dw.numel(); ++i) want_dw.data<float>()[i] += 0.5f;
    EXPECT_LE(rel_err(dw, want_dw, 1e-6, 1e-4), 1.0) << "chunk " << chunk;
  }
  Tensor rdh = Tensor::zeros(h.shape()), rdw = Tensor::zeros(w.shape());
  const double rloss = reference::lm_head_cross_entropy(h, w, t, &rdh, &rdw);
  EXPECT_NEAR(rloss, want, 1e-6 * want);
  EXPECT_LE(rel_err(rdh, fx.tensors.at("dhidden"), 1e-8, 1e-5), 1.0);
  EXPECT_LE(rel_err(rdw, fx.tensors.at("dweight"), 1e-8, 1e-5), 1.0);
}

// Fused float32 vs the double reference on awkward shapes; the tolerance is
// derived from float32 rounding of the GEMMs (K = H or V terms) and of exp.
TEST(LossLmHeadCE, FusedEqualsReferenceAwkwardShapes) {
  struct Case { std::int64_t n, h, v, chunk; float scale, grad_loss; };
  for (const Case c : {Case{1, 1, 1, 256, 1, 1}, Case{3, 5, 2, 2, 1, 1}, Case{300, 33, 257, 256, 1, 0.25f},
                       Case{129, 64, 1000, 64, 4, 1}, Case{50, 16, 31, 7, 30, 2}}) {
    Tensor h = randn({c.n, c.h}, 1 + c.n);
    Tensor w = randn({c.v, c.h}, 2 + c.v);
    for (std::int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] *= c.scale / std::sqrt(float(c.h));
    Tensor t = make_targets(c.n, c.v, 3, {});
    if (c.n > 2) t.data<std::int32_t>()[1] = -5;
    Tensor dh = Tensor::empty(h.shape()), dw = Tensor::zeros(w.shape());
    Tensor rdh = Tensor::empty(h.shape()), rdw = Tensor::zeros(w.shape());
    const double loss = lm_head_cross_entropy_forward_backward(h, w, t, dh, dw, c.grad_loss, c.chunk);
    const double rloss = reference::lm_head_cross_entropy(h, w, t, &rdh, &rdw, c.grad_loss);
    // logits carry ~H ulps of error times their magnitude, the loss inherits it
    const double eps = 6e-8 * (c.h + 8) * std::max(1.0f, c.scale * 4);
    EXPECT_NEAR(loss, rloss, eps * std::max(1.0, std::fabs(rloss))) << c.n << "x" << c.h << "x" << c.v;
    // gradient entries are sums of V (dh) or N (dw) terms of size ~1/count
    const double gscale = std::fabs(c.grad_loss) / c.n;
    EXPECT_LE(rel_err(dh, rdh, 1e-5 * gscale * std::sqrt(double(c.v)), 1e-4 * std::max(1.0f, c.scale)), 1.0)
        << c.n << "x" << c.h << "x" << c.v;
    EXPECT_LE(rel_err(dw, rdw, 1e-5 * gscale * std::sqrt(double(c.n)), 1e-4 * std::max(1.0f, c.scale)), 1.0)
        << c.n << "x" << c.h << "x" << c.v;
  }
}

TEST(LossLmHeadCE, FiniteDifferences) {
  const std::int64_t n = 20, hd = 12, v = 40;
  Tensor h = randn({n, hd}, 11);
  Tensor w = randn({v, hd}, 12);
  for (std::int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] *= 0.4f;
  Tensor t = make_targets(n, v, 13, {2, 19});
  Tensor dh = Tensor::empty(h.shape()), dw = Tensor::zeros(w.shape());
  lm_head_cross_entropy_forward_backward(h, w, t, dh, dw, 1.0f, 6);
  auto loss = [&] { return reference::lm_head_cross_entropy(h, w, t, nullptr, nullptr); };
  mf::testing::GradcheckOptions opt;
  opt.step = 1e-2;
  opt.atol = 1e-5;
  opt.rtol = 1e-3;
  const auto r = mf::testing::gradcheck(loss, {h, w}, {dh, dw}, opt);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_GT(r.checked, 90);
  // ignored rows: zero gradient
  for (std::int64_t k = 0; k < hd; ++k) EXPECT_EQ(dh.at({19, k}), 0.0f);
}

TEST(LossSoftmaxCE, FiniteDifferencesAndLargeLogits) {
  Tensor z = randn({9, 13}, 21);
  Tensor t = make_targets(9, 13, 22, {4});
  Tensor dz = Tensor::empty(z.shape());
  softmax_cross_entropy(z, t, &dz, 2.0f);
  auto loss = [&] { return 2.0 * softmax_cross_entropy(z, t); };
  mf::testing::GradcheckOptions opt;
  opt.atol = 1e-5;
  opt.rtol = 1e-3;
  const auto r = mf::testing::gradcheck(loss, {z}, {dz}, opt);
  EXPECT_TRUE(r.ok) << r.report;
  // logits around 1e4 must stay finite: loss of row [1e4, 1e4 - 1] target 1 is log(1 + e).
  Tensor big = Tensor::from_vector({1, 2}, {1e4f, 1e4f - 1.0f});
  Tensor tb = Tensor::empty({1}, DType::I32);
  tb.data<std::int32_t>()[0] = 1;
  EXPECT_NEAR(softmax_cross_entropy(big, tb), std::log1p(std::exp(1.0)), 1e-6);
  // same through the fused head: hidden [1, 1] = 1, weight [2, 1]
  EXPECT_NEAR(lm_head_cross_entropy_forward(Tensor::full({1, 1}, 1.0f), big.reshape({2, 1}), tb),
              std::log1p(std::exp(1.0)), 1e-6);
}

// The fused head must never hold more than [chunk x V] logits: measured with
// the engine's allocation counter against what full logits would take.
TEST(LossLmHeadCE, ChunkBoundsMemory) {
  const std::int64_t n = 2048, hd = 32, v = 1000, chunk = 128;
  Tensor h = randn({n, hd}, 31), w = randn({v, hd}, 32);
  Tensor t = make_targets(n, v, 33, {});
  Tensor dh = Tensor::empty(h.shape()), dw = Tensor::zeros(w.shape());
  reset_peak_memory();
  const auto before = memory_stats();
  lm_head_cross_entropy_forward_backward(h, w, t, dh, dw, 1.0f, chunk);
  const std::int64_t extra = memory_stats().peak_bytes - before.current_bytes;
  const std::int64_t chunk_logits = chunk * v * 4, full_logits = n * v * 4;
  EXPECT_LE(extra, chunk_logits + 4096) << "full logits would be " << full_logits;
  EXPECT_GE(extra, chunk_logits);  // the counter does see the chunk
  EXPECT_EQ(memory_stats().current_bytes, before.current_bytes);
}

TEST(LossLmHeadCE, Deterministic) {
  Tensor h = randn({333, 48}, 41), w = randn({256, 48}, 42);
  Tensor t = make_targets(333, 256, 43, {0});
  Tensor dh1 = Tensor::empty(h.shape()), dw1 = Tensor::zeros(w.shape());
  Tensor dh2 = Tensor::empty(h.shape()), dw2 = Tensor::zeros(w.shape());
  const double l1 = lm_head_cross_entropy_forward_backward(h, w, t, dh1, dw1);
  const double l2 = lm_head_cross_entropy_forward_backward(h, w, t, dh2, dw2);
  EXPECT_EQ(l1, l2);
  EXPECT_EQ(dh1.to_vector(), dh2.to_vector());
  EXPECT_EQ(dw1.to_vector(), dw2.to_vector());
}

TEST(LossLmHeadCE, BadInputsNameTheProblem) {
  Tensor h = randn({4, 8}, 1), w = randn({10, 8}, 2);
  Tensor t = make_targets(4, 10, 3, {});
  auto expect_msg = [](auto fn, const std::string& part) {
    try {
      fn();
      ADD_FAILURE() << "no error; expected: " << part;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_msg([&] { lm_head_cross_entropy_forward(h, randn({10, 7}, 2), t); }, "weight has hidden size 7");
  expect_msg([&] { lm_head_cross_entropy_forward(h, w, t.to(DType::I64)); }, "targets must be int32");
  expect_msg([&] { lm_head_cross_entropy_forward(h, w, make_targets(5, 10, 3, {})); }, "tensor 'targets'");
  Tensor bad = t.clone();
  bad.data<std::int32_t>()[2] = 10;
  expect_msg([&] { lm_head_cross_entropy_forward(h, w, bad); }, "target 10 at row 2 is out of range");
  Tensor dh = Tensor::empty({4, 9}), dw = Tensor::zeros(w.shape());
  expect_msg([&] { lm_head_cross_entropy_forward_backward(h, w, t, dh, dw); }, "tensor 'dhidden'");
  expect_msg([&] { lm_head_cross_entropy_forward(h, w, t, 0); }, "chunk_rows must be >= 1");
  expect_msg([&] { softmax_cross_entropy(randn({4}, 1), t); }, "logits must be float32 [N, V]");
}

TEST(LossLmHeadCE, AllIgnoredGivesZero) {
  Tensor h = randn({3, 4}, 1), w = randn({5, 4}, 2);
  Tensor t = make_targets(3, 5, 3, {0, 1, 2});
  Tensor dh = Tensor::full(h.shape(), 9.0f), dw = Tensor::zeros(w.shape());
  EXPECT_EQ(lm_head_cross_entropy_forward_backward(h, w, t, dh, dw), 0.0);
  for (float x : dh.to_vector()) EXPECT_EQ(x, 0.0f);
  for (float x : dw.to_vector()) EXPECT_EQ(x, 0.0f);
}
