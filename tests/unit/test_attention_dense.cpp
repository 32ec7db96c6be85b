// Dense reference attention: against an independent naive double-precision
// loop (forward, and backward by float64 finite differences), the float32
// four-point gradcheck through the front door, ALiBi slopes, dropout,
// determinism and every bad input at the front door.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "core/threads.h"
#include "nn/attention/attention.h"
#include "nn/attention/attention_problem.h"
#include "testing/gradcheck.h"
#include "../support/attention_spec.h"

using namespace mf;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

using Spec = mf::testing::AttentionSpec;

// ALiBi slopes written independently from the paper's code: geometric with
// start = ratio = 2^(-8/n) for a power of two, else interleaved.
std::vector<double> paper_slopes(std::int64_t n) {
  auto pow2 = [](std::int64_t m) {
    std::vector<double> s;
    const double start = std::pow(2.0, -8.0 / static_cast<double>(m));
    for (std::int64_t i = 0; i < m; ++i) s.push_back(start * std::pow(start, static_cast<double>(i)));
    return s;
  };
  const double l = std::log2(static_cast<double>(n));
  if (l == std::floor(l)) return pow2(n);
  const std::int64_t closest = std::int64_t{1} << static_cast<int>(std::floor(l));
  std::vector<double> s = pow2(closest);
  const std::vector<double> more = paper_slopes(2 * closest);
  for (std::size_t i = 0; static_cast<std::int64_t>(s.size()) < n; i += 2) s.push_back(more[i]);
  return s;
}

// The semantics of attention.h, written out per element in double.
struct Naive {
  std::vector<double> out, lse;
};
Naive naive_forward(const Spec& s, const std::vector<double>& q, const std::vector<double>& k,
                    const std::vector<double>& v) {
  const AttentionOptions& o = s.opt;
  const double scale = o.scale > 0 ? o.scale : 1.0 / std::sqrt(static_cast<double>(s.d));
  const std::vector<double> slopes = o.alibi ? paper_slopes(s.hq) : std::vector<double>{};
  Naive r;
  r.out.assign(q.size(), 0.0);
  r.lse.assign(static_cast<std::size_t>(s.hq * s.total_q()), -kInf);
  s.for_each_query_row([&](const Spec::Row& row) {
    const auto [b, h, g, i, ip, lk] = row;
    std::vector<double> sc(lk, -kInf);
    double mx = -kInf;
    for (std::int64_t j = 0; j < lk; ++j) {
      if (!s.visible(b, ip, j)) continue;
      double dotv = 0;
      for (std::int64_t x = 0; x < s.d; ++x) dotv += q[s.q_at(b, h, i) + x] * k[s.k_at(b, g, j) + x];
      sc[j] = scale * dotv - (o.alibi ? slopes[h] * std::fabs(static_cast<double>(ip - j)) : 0.0);
      mx = std::max(mx, sc[j]);
    }
    if (mx == -kInf) return;  // no visible key: O = 0, LSE = -inf
    double sum = 0;
    for (std::int64_t j = 0; j < lk; ++j) sum += std::exp(sc[j] - mx);
    const double lse = mx + std::log(sum);
    r.lse[s.lse_at(b, h, i)] = lse;
    for (std::int64_t j = 0; j < lk; ++j) {
      double pj = std::exp(sc[j] - lse);
      if (o.dropout_p > 0) {
        const bool keep = rng_uniform(o.dropout_seed, b * s.hq + h, i * lk + j) >= o.dropout_p;
        pj = keep ? pj / (1.0 - o.dropout_p) : 0.0;
      }
      for (std::int64_t x = 0; x < s.d; ++x) r.out[s.q_at(b, h, i) + x] += pj * v[s.k_at(b, g, j) + x];
    }
  });
  return r;
}

std::vector<double> to_double(const Tensor& t) {
  const auto f = t.to_vector();
  return {f.begin(), f.end()};
}

AttentionOutput run_fwd(const Spec& s, const Tensor& q, const Tensor& k, const Tensor& v) {
  return mf::testing::run_attention_forward(s, q, k, v, AttentionImpl::Dense);
}
AttentionGrads run_bwd(const Spec& s, const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOutput& f,
                       const Tensor& dout) {
  return mf::testing::run_attention_backward(s, q, k, v, f, dout, AttentionImpl::Dense);
}

double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double x : a) m = std::max(m, std::fabs(x));
  return m;
}

// The grid of option combinations (small shapes) that every check runs on.
std::vector<Spec> option_grid() {
  mf::testing::SpecGrid<Spec> g;
  g.add("plain_gqa2", [](Spec&) {});
  g.add("mha", [](Spec& s) { s.hkv = 4; });
  g.add("mqa", [](Spec& s) { s.hkv = 1; });
  g.add("causal", [](Spec& s) { s.opt.causal = true; });
  g.add("causal_lq_gt_lk_empty_rows", [](Spec& s) {
    s.lq = {7, 7};
    s.lk = {5, 5};
    s.opt.causal = true;
  });
  g.add("window_2_1", [](Spec& s) {
    s.opt.window_left = 2;
    s.opt.window_right = 1;
  });
  g.add("window_0_0", [](Spec& s) {
    s.opt.window_left = 0;
    s.opt.window_right = 0;
  });
  g.add("causal_left3", [](Spec& s) {
    s.opt.causal = true;
    s.opt.window_left = 3;
  });
  g.add("globals_window", [](Spec& s) {
    s.opt.window_left = 1;
    s.opt.window_right = 1;
    s.opt.global_tokens = {0, 4};
  });
  g.add("alibi_causal_h6", [](Spec& s) {
    s.hq = 6;
    s.hkv = 3;
    s.opt.alibi = true;
    s.opt.causal = true;
  });
  g.add("scale", [](Spec& s) { s.opt.scale = 0.7f; });
  g.add("key_padding", [](Spec& s) { s.mask = {1, 1, 0, 1, 1, 0, 1, /*b1*/ 0, 1, 1, 1, 0, 0, 0}; });
  g.add("padding_empty_row", [](Spec& s) {
    s.opt.window_left = 0;
    s.opt.window_right = 0;
    s.mask = {1, 1, 1, 0, 1, 1, 1, /*b1*/ 1, 1, 1, 1, 1, 0, 1};
  });
  g.add("dropout", [](Spec& s) {
    s.opt.dropout_p = 0.3f;
    s.opt.dropout_seed = 42;
  });
  g.add("everything", [](Spec& s) {
    s.hq = 8;
    s.hkv = 2;
    s.d = 16;
    s.opt.causal = true;
    s.opt.window_left = 2;
    s.opt.window_right = 0;
    s.opt.global_tokens = {1};
    s.opt.alibi = true;
    s.opt.scale = 0.4f;
    s.opt.dropout_p = 0.25f;
    s.opt.dropout_seed = 7;
    s.mask = {1, 1, 1, 1, 0, 1, 1, /*b1*/ 1, 0, 1, 1, 1, 1, 1};
  });
  g.add("varlen", [](Spec& s) {
    s.varlen = true;
    s.lq = {3, 6, 1};
    s.lk = {5, 6, 4};
  });
  g.add("varlen_causal_alibi_dropout_empty_seq", [](Spec& s) {
    s.varlen = true;
    s.lq = {4, 2, 3};
    s.lk = {6, 0, 3};
    s.opt.causal = true;
    s.opt.alibi = true;
    s.opt.dropout_p = 0.2f;
    s.opt.dropout_seed = 3;
  });
  return g.specs();
}

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

}  // namespace

TEST(AttentionAlibi, SlopesFollowThePaper) {
  auto s8 = alibi_slopes(8);
  ASSERT_EQ(s8.size(), 8u);
  for (int h = 1; h <= 8; ++h) EXPECT_FLOAT_EQ(s8[h - 1], std::exp2(-static_cast<float>(h)));
  auto s16 = alibi_slopes(16);
  EXPECT_FLOAT_EQ(s16[0], std::exp2(-0.5f));  // the survey's table says otherwise
  for (int h = 1; h <= 16; ++h) EXPECT_FLOAT_EQ(s16[h - 1], std::exp2(-0.5f * h));
  auto s12 = alibi_slopes(12);
  ASSERT_EQ(s12.size(), 12u);
  for (int h = 0; h < 8; ++h) EXPECT_FLOAT_EQ(s12[h], s8[h]);
  for (int x = 0; x < 4; ++x) EXPECT_FLOAT_EQ(s12[8 + x], s16[2 * x]);
  EXPECT_EQ(alibi_slopes(6), (std::vector<float>{std::exp2(-2.0f), std::exp2(-4.0f), std::exp2(-6.0f),
                                                 std::exp2(-8.0f), std::exp2(-1.0f), std::exp2(-3.0f)}));
  EXPECT_EQ(alibi_slopes(1), (std::vector<float>{std::exp2(-8.0f)}));
  for (std::int64_t n : {2, 3, 5, 7, 20, 24, 32, 48, 64, 96}) {
    const auto mine = alibi_slopes(n);
    const auto ref = paper_slopes(n);
    ASSERT_EQ(mine.size(), ref.size());
    for (std::size_t i = 0; i < ref.size(); ++i) EXPECT_FLOAT_EQ(mine[i], static_cast<float>(ref[i])) << n << " " << i;
  }
  expect_error([] { alibi_slopes(0); }, "[alibi] the number of heads must be >= 1");
}

// Forward vs the naive double loop; backward vs central differences of the
// naive double loop. The dense kernel accumulates in double and rounds P,
// O, LSE and the gradients to float32 once each; its backward also reads the
// float32-rounded O and LSE. A relative error of a few float32 ulps (2^-24 ~
// 6e-8) of the largest magnitude involved is expected: 2e-6 leaves a margin of
// ~30 ulps, and a wrong mask, scale, bias or dropout factor is off by >1e-2.
TEST(AttentionDense, MatchesNaiveLoopForwardAndBackward) {
  for (const Spec& s : option_grid()) {
    SCOPED_TRACE(s.name);
    Tensor q = randn(s.q_shape(), 1), k = randn(s.k_shape(), 2), v = randn(s.k_shape(), 3);
    Tensor dout = randn(s.q_shape(), 4);
    const auto f = run_fwd(s, q, k, v);
    auto qd = to_double(q), kd = to_double(k), vd = to_double(v);
    const Naive n = naive_forward(s, qd, kd, vd);
    const auto out = to_double(f.out), lse = to_double(f.lse);
    const double otol = 2e-6 * std::max(1.0, max_abs(n.out));
    for (std::size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], n.out[i], otol) << "out " << i;
    int empty_rows = 0;
    for (std::size_t i = 0; i < lse.size(); ++i) {
      if (n.lse[i] == -kInf) {
        ASSERT_EQ(lse[i], -kInf) << "lse " << i;
        ++empty_rows;
      } else {
        ASSERT_NEAR(lse[i], n.lse[i], 2e-6 * std::max(1.0, std::fabs(n.lse[i]))) << "lse " << i;
      }
    }
    if (s.name.find("empty") != std::string::npos) {
      EXPECT_GT(empty_rows, 0);
    }

    const auto g = run_bwd(s, q, k, v, f, dout);
    const auto wd = to_double(dout);
    auto loss = [&] {
      const Naive r = naive_forward(s, qd, kd, vd);
      double l = 0;
      for (std::size_t i = 0; i < r.out.size(); ++i) l += r.out[i] * wd[i];
      return l;
    };
    const std::vector<std::pair<std::vector<double>*, const Tensor*>> inputs{{&qd, &g.dq}, {&kd, &g.dk}, {&vd, &g.dv}};
    const char* names[] = {"dq", "dk", "dv"};
    for (int t = 0; t < 3; ++t) {
      std::vector<double>& x = *inputs[t].first;
      const auto an = to_double(*inputs[t].second);
      std::vector<double> num(x.size());
      for (std::size_t e = 0; e < x.size(); ++e) {
        const double orig = x[e], h = 1e-6;
        x[e] = orig + h;
        const double lp = loss();
        x[e] = orig - h;
        const double lm = loss();
        x[e] = orig;
        num[e] = (lp - lm) / (2 * h);
      }
      // Central differences in double: truncation ~h^2, rounding ~1e-16/h.
      const double tol = 2e-6 * std::max(1.0, max_abs(num)) + 1e-8;
      for (std::size_t e = 0; e < x.size(); ++e) ASSERT_NEAR(an[e], num[e], tol) << names[t] << " element " << e;
    }
  }
}

// The float32 four-point gradcheck through the public front door, for every
// option combination (the gradcheck's own default tolerances).
TEST(AttentionDense, GradcheckEveryOptionCombination) {
  for (const Spec& s : option_grid()) {
    SCOPED_TRACE(s.name);
    Tensor q = randn(s.q_shape(), 11), k = randn(s.k_shape(), 12), v = randn(s.k_shape(), 13);
    Tensor w = randn(s.q_shape(), 14);
    const auto f = run_fwd(s, q, k, v);
    const auto g = run_bwd(s, q, k, v, f, w);
    auto loss = [&] { return mf::testing::weighted_sum(run_fwd(s, q, k, v).out, w); };
    mf::testing::GradcheckOptions go;
    go.max_checks_per_input = 32;
    const auto r = mf::testing::gradcheck(loss, {q, k, v}, {g.dq, g.dk, g.dv}, go);
    EXPECT_TRUE(r.ok) << r.report;
    EXPECT_EQ(r.checked, 96);
  }
}

TEST(AttentionDense, EmptyRowsGiveZeroOutputMinusInfLseAndZeroGrads) {
  Spec s;
  s.lq = {3};
  s.lk = {4};
  s.mask = {0, 0, 0, 0};  // nothing visible at all
  Tensor q = randn(s.q_shape(), 1), k = randn(s.k_shape(), 2), v = randn(s.k_shape(), 3);
  const auto f = run_fwd(s, q, k, v);
  for (float x : f.out.to_vector()) EXPECT_EQ(x, 0.0f);
  for (float x : f.lse.to_vector()) EXPECT_EQ(x, -std::numeric_limits<float>::infinity());
  const auto g = run_bwd(s, q, k, v, f, randn(s.q_shape(), 4));
  for (const Tensor* t : {&g.dq, &g.dk, &g.dv})
    for (float x : t->to_vector()) EXPECT_EQ(x, 0.0f);
}

// Logits scaled by 30: the LSE-based softmax must not overflow.
TEST(AttentionDense, LargeLogitsStayFinite) {
  Spec s;
  s.opt.causal = true;
  Tensor q = randn(s.q_shape(), 1), k = randn(s.k_shape(), 2), v = randn(s.k_shape(), 3);
  for (auto& x : std::vector<Tensor*>{&q}) {
    float* p = x->data<float>();
    for (std::int64_t i = 0; i < x->numel(); ++i) p[i] *= 30.0f * std::sqrt(8.0f);
  }
  const auto f = run_fwd(s, q, k, v);
  const Naive n = naive_forward(s, to_double(q), to_double(k), to_double(v));
  const auto out = to_double(f.out);
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], n.out[i], 2e-6 * max_abs(n.out));
  const auto g = run_bwd(s, q, k, v, f, randn(s.q_shape(), 4));
  for (const Tensor* t : {&g.dq, &g.dk, &g.dv})
    for (float x : t->to_vector()) ASSERT_TRUE(std::isfinite(x));
}

// The keep decision is the contract's Philox draw, the keep fraction is 1 - p
// and kept values are scaled by 1/(1 - p). With q = 0 every visible key has
// P = 1/Lk, and with V = identity O[i, j] = Z[i, j] = M[i, j] / ((1 - p) Lk).
TEST(AttentionDense, DropoutMaskFractionAndScaling) {
  const std::int64_t B = 1, H = 4, L = 64, D = 64;
  const float p = 0.3f;
  Tensor q = Tensor::zeros({B, H, L, D}), k = randn({B, H, L, D}, 2), v = Tensor::zeros({B, H, L, D});
  for (std::int64_t h = 0; h < H; ++h)
    for (std::int64_t j = 0; j < L; ++j) v.data<float>()[(h * L + j) * D + j] = 1.0f;
  AttentionOptions o;
  o.dropout_p = p;
  o.dropout_seed = 99;
  const auto f = attention_forward(q, k, v, o, AttentionImpl::Dense);
  const auto out = f.out.to_vector();
  std::int64_t kept = 0;
  for (std::int64_t h = 0; h < H; ++h)
    for (std::int64_t i = 0; i < L; ++i)
      for (std::int64_t j = 0; j < L; ++j) {
        const float x = out[(h * L + i) * D + j];
        const bool keep = rng_uniform(99, h, i * L + j) >= p;
        ASSERT_EQ(x != 0.0f, keep) << h << " " << i << " " << j;
        if (keep) {
          ASSERT_NEAR(x, 1.0 / ((1.0 - p) * L), 1e-7);
          ++kept;
        }
      }
  // 16384 Bernoulli(0.7) draws: standard deviation 0.0036; 0.02 is 5.5 sigma.
  EXPECT_NEAR(static_cast<double>(kept) / (H * L * L), 1.0 - p, 0.02);
  // Another seed draws another mask; the same seed the same one.
  o.dropout_seed = 100;
  EXPECT_NE(attention_forward(q, k, v, o, AttentionImpl::Dense).out.to_vector(), out);
  o.dropout_seed = 99;
  EXPECT_EQ(attention_forward(q, k, v, o, AttentionImpl::Dense).out.to_vector(), out);
}

TEST(AttentionDense, DropoutToZeroEqualsNoDropout) {
  Spec s;
  Tensor q = randn(s.q_shape(), 1), k = randn(s.k_shape(), 2), v = randn(s.k_shape(), 3);
  Tensor dout = randn(s.q_shape(), 4);
  const auto f0 = run_fwd(s, q, k, v);
  const auto g0 = run_bwd(s, q, k, v, f0, dout);
  s.opt.dropout_p = 1e-7f;  // a uniform of 24 bits is below 1e-7 only when it is 0: nothing dropped here
  s.opt.dropout_seed = 5;
  const auto f1 = run_fwd(s, q, k, v);
  const auto g1 = run_bwd(s, q, k, v, f1, dout);
  EXPECT_LT(max_abs_diff(f0.out, f1.out), 1e-6f);
  EXPECT_EQ(f0.lse.to_vector(), f1.lse.to_vector());  // LSE is taken before dropout
  EXPECT_LT(max_abs_diff(g0.dq, g1.dq), 1e-6f);
  EXPECT_LT(max_abs_diff(g0.dk, g1.dk), 1e-6f);
  EXPECT_LT(max_abs_diff(g0.dv, g1.dv), 1e-6f);
}

TEST(AttentionDense, DeterministicAcrossRunsAndThreadCounts) {
  const int before = num_threads();
  // Large enough for the kernels to go parallel (small calls run on one thread).
  Spec s;
  s.hq = 8;
  s.hkv = 2;
  s.d = 64;
  s.lq = {48, 48};
  s.lk = {64, 64};
  s.opt.causal = true;
  s.opt.window_left = 20;
  s.opt.global_tokens = {3};
  s.opt.alibi = true;
  s.opt.dropout_p = 0.2f;
  s.opt.dropout_seed = 1;
  Tensor q = randn(s.q_shape(), 1), k = randn(s.k_shape(), 2), v = randn(s.k_shape(), 3);
  Tensor dout = randn(s.q_shape(), 4);
  std::vector<std::vector<float>> results;
  for (int threads : {1, 2, 2, 3}) {
    set_num_threads(threads);
    const auto f = run_fwd(s, q, k, v);
    const auto g = run_bwd(s, q, k, v, f, dout);
    std::vector<float> all;
    for (const Tensor* t : {&f.out, &f.lse, &g.dq, &g.dk, &g.dv}) {
      const auto x = t->to_vector();
      all.insert(all.end(), x.begin(), x.end());
    }
    results.push_back(all);
  }
  set_num_threads(before);
  for (std::size_t r = 1; r < results.size(); ++r)
    EXPECT_EQ(std::memcmp(results[r].data(), results[0].data(), results[0].size() * sizeof(float)), 0);
}

TEST(AttentionDense, NonContiguousInputsGiveTheSameResult) {
  Spec s;
  Tensor q = randn(s.q_shape(), 1), k = randn(s.k_shape(), 2), v = randn(s.k_shape(), 3);
  // [B, L, H, D] storage viewed as [B, H, L, D].
  auto strided = [](const Tensor& t) {
    Tensor u = t.transpose(1, 2).contiguous().transpose(1, 2);
    EXPECT_FALSE(u.is_contiguous());
    return u;
  };
  const auto a = run_fwd(s, q, k, v);
  const auto b = run_fwd(s, strided(q), strided(k), strided(v));
  EXPECT_EQ(a.out.to_vector(), b.out.to_vector());
  EXPECT_EQ(a.lse.to_vector(), b.lse.to_vector());
  Tensor dout = randn(s.q_shape(), 4);
  const auto ga = run_bwd(s, q, k, v, a, dout);
  const auto gb = attention_backward(strided(q), strided(k), strided(v), strided(a.out), a.lse, strided(dout),
                                     s.options(), AttentionImpl::Dense);
  EXPECT_EQ(ga.dq.to_vector(), gb.dq.to_vector());
  EXPECT_EQ(ga.dk.to_vector(), gb.dk.to_vector());
  EXPECT_EQ(ga.dv.to_vector(), gb.dv.to_vector());
}

TEST(AttentionDense, BadInputsAreRejectedWithClearMessages) {
  const auto D = AttentionImpl::Dense;
  Tensor q = randn({2, 4, 5, 8}, 1), k = randn({2, 2, 7, 8}, 2), v = randn({2, 2, 7, 8}, 3);
  AttentionOptions o;
  auto fwd = [&](const Tensor& a, const Tensor& b, const Tensor& c, const AttentionOptions& oo) {
    return [=] { attention_forward(a, b, c, oo, D); };
  };
  expect_error(fwd(Tensor(), k, v, o), "tensor 'q' is undefined");
  expect_error(fwd(q.to(DType::BF16), k, v, o), "tensor 'q' must be float32 but is bfloat16");
  expect_error(fwd(q, k, Tensor::zeros({2, 2, 7, 8}, DType::I32), o), "tensor 'v' must be float32");
  expect_error(fwd(q.reshape({8, 5, 8}), k, v, o), "tensor 'q' must have 4 dimensions [B, Hq, Lq, D]");
  expect_error(fwd(q, randn({3, 2, 7, 8}, 2), v, o), "k has batch size 3 but q has 2");
  expect_error(fwd(q, randn({2, 2, 7, 16}, 2), v, o), "k has head dimension 16 but q has 8");
  expect_error(fwd(q, k, randn({2, 2, 6, 8}, 3), o), "v must have shape [B, Hkv, Lk, Dv] = [2, 2, 7, 8] (k's first three dimensions) but has [2, 2, 6, 8]");
  expect_error(fwd(q, randn({2, 3, 7, 8}, 2), randn({2, 3, 7, 8}, 3), o),
               "query heads (4) must be a multiple of key/value heads (3)");
  expect_error(fwd(randn({2, 0, 5, 8}, 1), k, v, o), "q must have at least one head");
  for (std::int64_t d : {4, 12, 264}) {
    expect_error(fwd(randn({1, 1, 3, d}, 1), randn({1, 1, 3, d}, 2), randn({1, 1, 3, d}, 3), o),
                 "head dimension D must be a multiple of 8 in [8, 256], got " + std::to_string(d));
  }
  auto with = [&](const std::function<void(AttentionOptions&)>& f) {
    AttentionOptions x;
    f(x);
    return x;
  };
  expect_error(fwd(q, k, v, with([](auto& x) { x.window_left = -2; })), "window_left must be >= 0, or -1");
  expect_error(fwd(q, k, v, with([](auto& x) { x.window_right = -5; })), "window_right must be >= 0, or -1");
  expect_error(fwd(q, k, v, with([](auto& x) { x.global_tokens = {0, 7}; })),
               "global token position 7 is out of range [0, 7)");
  expect_error(fwd(q, k, v, with([](auto& x) { x.global_tokens = {-1}; })), "global token position -1");
  expect_error(fwd(q, k, v, with([](auto& x) { x.scale = -1.0f; })), "scale must be finite and > 0");
  expect_error(fwd(q, k, v, with([](auto& x) { x.scale = std::numeric_limits<float>::quiet_NaN(); })),
               "scale must be finite and > 0");
  expect_error(fwd(q, k, v, with([](auto& x) { x.scale = std::numeric_limits<float>::infinity(); })),
               "scale must be finite and > 0");
  expect_error(fwd(q, k, v, with([](auto& x) { x.dropout_p = 1.0f; })), "dropout_p must be in [0, 1), got 1");
  expect_error(fwd(q, k, v, with([](auto& x) { x.dropout_p = -0.1f; })), "dropout_p must be in [0, 1)");
  expect_error(fwd(q, k, v, with([](auto& x) { x.key_padding_mask = Tensor::zeros({2, 7}); })),
               "key_padding_mask must be int32 but is float32");
  expect_error(fwd(q, k, v, with([](auto& x) { x.key_padding_mask = Tensor::zeros({2, 5}, DType::I32); })),
               "key_padding_mask must have shape [B, Lk] = [2, 7] but has [2, 5]");

  // Backward: out, lse, dout shapes.
  const auto f = attention_forward(q, k, v, o, D);
  expect_error([&] { attention_backward(q, k, v, f.out.slice(2, 0, 4), f.lse, q, o, D); },
               "out must have shape [2, 4, 5, 8] (q's, with v's head dimension) but has [2, 4, 4, 8]");
  expect_error([&] { attention_backward(q, k, v, f.out, f.lse.slice(2, 0, 4), q, o, D); },
               "lse must have shape [B, Hq, Lq] = [2, 4, 5] but has [2, 4, 4]");
  expect_error([&] { attention_backward(q, k, v, f.out, f.out, q, o, D); }, "tensor 'lse' must have 3 dimensions");
  expect_error([&] { attention_backward(q, k, v, f.out, f.lse, randn({2, 4, 5, 16}, 1), o, D); },
               "dout must have shape [2, 4, 5, 8] (q's, with v's head dimension)");
  expect_error([&] { attention_backward(q, k, v, f.out, f.lse.to(DType::BF16), q, o, D); },
               "tensor 'lse' must be float32");

  // Varlen.
  Tensor vq = randn({9, 4, 8}, 1), vk = randn({12, 2, 8}, 2), vv = randn({12, 2, 8}, 3);
  auto vfwd = [&](const VarlenSeqlens& s, const AttentionOptions& oo) {
    return [=] { attention_varlen_forward(vq, vk, vv, s, oo, D); };
  };
  VarlenSeqlens good{{0, 4, 9}, {0, 5, 12}};
  EXPECT_NO_THROW(vfwd(good, o)());
  expect_error(vfwd({{0}, {0}}, o), "cu_seqlens_q must have B + 1 >= 2 entries, got 1");
  expect_error(vfwd({{0, 4, 9}, {0, 12}}, o), "cu_seqlens_k has 2 entries but cu_seqlens_q has 3");
  expect_error(vfwd({{1, 4, 9}, {0, 5, 12}}, o), "cu_seqlens_q[0] must be 0, got 1");
  expect_error(vfwd({{0, 6, 4, 9}, {0, 5, 5, 12}}, o), "cu_seqlens_q must be non-decreasing but cu_seqlens_q[2] = 4");
  expect_error(vfwd({{0, 4, 8}, {0, 5, 12}}, o), "cu_seqlens_q ends at 8 but q has 9 rows");
  expect_error(vfwd({{0, 4, 9}, {0, 5, 13}}, o), "cu_seqlens_k ends at 13 but k has 12 rows");
  expect_error(vfwd(good, with([](auto& x) { x.key_padding_mask = Tensor::zeros({2, 7}, DType::I32); })),
               "key_padding_mask is not allowed with variable-length batches");
  expect_error(vfwd(good, with([](auto& x) { x.global_tokens = {7}; })),
               "global token position 7 is out of range [0, 7)");
  expect_error([&] { attention_varlen_forward(q, k, v, good, o, D); }, "tensor 'q' must have 3 dimensions");
  const auto vf = attention_varlen_forward(vq, vk, vv, good, o, D);
  EXPECT_EQ(vf.lse.shape(), (Shape{4, 9}));
  expect_error([&] { attention_varlen_backward(vq, vk, vv, vf.out, vf.lse.reshape({9, 4}), vq, good, o, D); },
               "lse must have shape [Hq, total_q] = [4, 9] but has [9, 4]");
}
