// Flash attention kernels: the tile micro-kernel vs a plain loop; flash ==
// a float64 naive loop on a grid of every option and awkward shape (every
// SIMD path compiled in, default and tiny tiles), forward and backward, with
// the flash-attention repo's rule (error <= 2x that of a float32 naive loop,
// plus a floor); PyTorch fixtures element by element; finite differences;
// determinism and the thread-count contract; the split-KV decode path; O(L d)
// memory at 32k.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/alloc.h"
#include "core/isa.h"
#include "core/isa_dispatch.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "core/threads.h"
#include "nn/attention/attention.h"
#include "nn/attention/attention_problem.h"
#include "nn/attention/flash_attention.h"
#include "testing/gradcheck.h"
#include "../support/attention_spec.h"
#include "../support/fixtures.h"
#include "../support/flash_knobs.h"
#include "../support/threads.h"

using namespace mf;
using mf::testing::flash_isas;
using mf::testing::ScopedFlashIsa;
using mf::testing::tiny_flash_tiles;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

}  // namespace

// ------------------------------------------------------------ micro-kernel


MF_ISA_DECLARE(void check_flash_tile_gemm(std::uint64_t seed))
MF_ISA_DECLARE(void check_flash_exp2())

// The micro-kernel and exp2 of every instruction set the host supports
// (flash_tiles_checks_isa.cpp).
TEST(FlashTiles, MicroKernelMatchesPlainLoop) {
  isa_scalar::check_flash_tile_gemm(1);
  if (isa_supported(Isa::Avx2)) isa_avx2::check_flash_tile_gemm(2);
  if (isa_supported(Isa::Avx512)) isa_avx512::check_flash_tile_gemm(3);
}

TEST(FlashTiles, Exp2IsAccurateAndZeroBelowRange) {
  isa_scalar::check_flash_exp2();
  if (isa_supported(Isa::Avx2)) isa_avx2::check_flash_exp2();
  if (isa_supported(Isa::Avx512)) isa_avx512::check_flash_exp2();
}

namespace {

// ------------------------------------------------------------ naive reference

struct Spec : mf::testing::AttentionSpec {
  float qmul = 1.0f;  // logits scale-up (x30 cases)
};

// The semantics of attention.h per element, in precision T, materializing
// each row's scores: T = double is the reference, T = float the baseline
// whose error sets the tolerance.
template <typename T>
struct Naive {
  std::vector<T> out, lse, dq, dk, dv;
  // Magnitudes of the terms that cancel in dS = P (dP - D_i): sum_j |P_ij| (|dP_ij| + |D_i|) |scale k_j|
  // (and likewise with q_i for dK). Rounding of dP and D_i, dot products of length d, is amplified by these.
  std::vector<T> dq_mag, dk_mag;
};

template <typename T>
Naive<T> naive(const Spec& s, const std::vector<float>& qf, const std::vector<float>& kf, const std::vector<float>& vf,
               const std::vector<float>& dof) {
  const AttentionOptions& o = s.opt;
  const T scale = o.scale > 0 ? static_cast<T>(o.scale) : static_cast<T>(1.0 / std::sqrt(static_cast<double>(s.d)));
  const std::vector<float> slopes = o.alibi ? alibi_slopes(s.hq) : std::vector<float>{};
  Naive<T> r;
  r.out.assign(qf.size(), T(0));
  r.dq.assign(qf.size(), T(0));
  r.dk.assign(kf.size(), T(0));
  r.dv.assign(kf.size(), T(0));
  r.dq_mag.assign(qf.size(), T(0));
  r.dk_mag.assign(kf.size(), T(0));
  r.lse.assign(static_cast<std::size_t>(s.hq * s.total_q()), static_cast<T>(-kInf));
  const std::int64_t D = s.d;
  s.for_each_query_row([&](const Spec::Row& row) {
    const auto [b, h, g, i, ip, lk] = row;
    std::vector<T> sc(lk, static_cast<T>(-kInf)), p(lk, T(0)), keep(lk, T(0));
    T mx = static_cast<T>(-kInf);
    const float* qi = &qf[s.q_at(b, h, i)];
    for (std::int64_t j = 0; j < lk; ++j) {
      if (!s.visible(b, ip, j)) continue;
      T dot = 0;
      for (std::int64_t x = 0; x < D; ++x) dot += static_cast<T>(qi[x]) * static_cast<T>(kf[s.k_at(b, g, j) + x]);
      sc[j] = scale * dot - (o.alibi ? static_cast<T>(slopes[h]) * static_cast<T>(std::abs(ip - j)) : T(0));
      mx = std::max(mx, sc[j]);
    }
    if (mx == static_cast<T>(-kInf)) return;
    T sum = 0;
    for (std::int64_t j = 0; j < lk; ++j) sum += std::exp(sc[j] - mx);
    const T lse = mx + std::log(sum);
    r.lse[s.lse_at(b, h, i)] = lse;
    T* oi = &r.out[s.q_at(b, h, i)];
    for (std::int64_t j = 0; j < lk; ++j) {
      p[j] = std::exp(sc[j] - lse);
      keep[j] = T(1);
      if (o.dropout_p > 0)
        keep[j] = rng_uniform(o.dropout_seed, static_cast<std::uint64_t>(b * s.hq + h),
                              static_cast<std::uint64_t>(i * lk + j)) >= o.dropout_p
                      ? T(1) / (T(1) - static_cast<T>(o.dropout_p))
                      : T(0);
      for (std::int64_t x = 0; x < D; ++x) oi[x] += p[j] * keep[j] * static_cast<T>(vf[s.k_at(b, g, j) + x]);
    }
    // Backward: dV += Z^T dO, dP = dO V^T, dS = P (keep dP - Di), dQ = scale dS K, dK = scale dS^T Q.
    const float* doi = &dof[s.q_at(b, h, i)];
    T di = 0;
    for (std::int64_t x = 0; x < D; ++x) di += static_cast<T>(doi[x]) * oi[x];
    for (std::int64_t j = 0; j < lk; ++j) {
      if (p[j] == T(0)) continue;
      T dp = 0;
      for (std::int64_t x = 0; x < D; ++x) dp += static_cast<T>(doi[x]) * static_cast<T>(vf[s.k_at(b, g, j) + x]);
      const T ds = p[j] * (keep[j] * dp - di) * scale;
      const T ds_mag = p[j] * (std::abs(keep[j] * dp) + std::abs(di)) * scale;
      for (std::int64_t x = 0; x < D; ++x) {
        r.dv[s.k_at(b, g, j) + x] += p[j] * keep[j] * static_cast<T>(doi[x]);
        r.dq[s.q_at(b, h, i) + x] += ds * static_cast<T>(kf[s.k_at(b, g, j) + x]);
        r.dk[s.k_at(b, g, j) + x] += ds * static_cast<T>(qi[x]);
        r.dq_mag[s.q_at(b, h, i) + x] += ds_mag * std::abs(static_cast<T>(kf[s.k_at(b, g, j) + x]));
        r.dk_mag[s.k_at(b, g, j) + x] += ds_mag * std::abs(static_cast<T>(qi[x]));
      }
    }
  });
  return r;
}

AttentionOutput run_fwd(const Spec& s, const Tensor& q, const Tensor& k, const Tensor& v,
                        AttentionImpl impl = AttentionImpl::Flash) {
  return mf::testing::run_attention_forward(s, q, k, v, impl);
}
AttentionGrads run_bwd(const Spec& s, const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOutput& f,
                       const Tensor& dout, AttentionImpl impl = AttentionImpl::Flash) {
  return mf::testing::run_attention_backward(s, q, k, v, f, dout, impl);
}

struct Inputs {
  Tensor q, k, v, dout;
};
Inputs make_inputs(const Spec& s, std::uint64_t seed) {
  Inputs in{randn(s.q_shape(), seed), randn(s.k_shape(), seed + 1), randn(s.k_shape(), seed + 2),
            randn(s.q_shape(), seed + 3)};
  if (s.qmul != 1.0f) {
    float* p = in.q.data<float>();
    for (std::int64_t i = 0; i < in.q.numel(); ++i) p[i] *= s.qmul;
  }
  return in;
}

double max_err(const std::vector<float>& got, const std::vector<double>& ref) {
  double e = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    if (std::isinf(ref[i])) {
      if (got[i] != ref[i]) return kInf;
      continue;
    }
    e = std::max(e, std::fabs(static_cast<double>(got[i]) - ref[i]));
  }
  return e;
}
template <typename T>
double max_err_t(const std::vector<T>& got, const std::vector<double>& ref) {
  std::vector<float> f(got.begin(), got.end());
  return max_err(f, ref);
}
double max_abs_finite(const std::vector<double>& v) {
  double m = 0;
  for (double x : v)
    if (std::isfinite(x)) m = std::max(m, std::fabs(x));
  return m;
}

// flash error vs the float64 loop <= 2 x the float32 loop's error + a floor
// of 4 float32 ulps (2^-22) of the largest magnitude (the float32 loop can
// be exact by luck on tiny cases). For dQ and dK the floor also covers the
// cancellation in dS = P (dP - D_i): flash computes D_i = rowsum(dO * O)
// while the loop's dP uses V, so where the two nearly cancel (a row that sees
// one key: O = v, dS ~ 0) each side's rounding, u sqrt(d) relative for a
// length-d dot product, survives at the scale of `cancel_mag`.
void expect_close(const char* what, const std::vector<float>& got, const std::vector<double>& ref,
                  double baseline_err, double cancel_mag = 0.0, std::int64_t d = 0) {
  const double tol = 2.0 * baseline_err + std::ldexp(1.0, -22) * std::max(1.0, max_abs_finite(ref)) +
                     std::ldexp(1.0, -23) * std::sqrt(static_cast<double>(d)) * cancel_mag;
  const double err = max_err(got, ref);
  EXPECT_LE(err, tol) << what << ": flash error " << err << " vs float32-loop error " << baseline_err;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!std::isinf(ref[i])) {
      ASSERT_TRUE(std::isfinite(got[i])) << what << " element " << i << " not finite";
    }
}

void check_spec(const Spec& s, std::uint64_t seed, bool backward = true) {
  const Inputs in = make_inputs(s, seed);
  const auto qv = in.q.to_vector(), kv = in.k.to_vector(), vv = in.v.to_vector(), dov = in.dout.to_vector();
  const Naive<double> ref = naive<double>(s, qv, kv, vv, dov);
  const Naive<float> base = naive<float>(s, qv, kv, vv, dov);
  const auto f = run_fwd(s, in.q, in.k, in.v);
  expect_close("out", f.out.to_vector(), ref.out, max_err_t(base.out, ref.out));
  expect_close("lse", f.lse.to_vector(), ref.lse, max_err_t(base.lse, ref.lse));
  const auto lse = f.lse.to_vector();
  for (std::size_t i = 0; i < lse.size(); ++i)
    if (std::isinf(ref.lse[i])) {
      ASSERT_EQ(lse[i], -std::numeric_limits<float>::infinity()) << "lse " << i;
    }
  if (!backward) return;
  // The backward reads our float32 out/lse (as in training); the float32 loop's error covers that rounding.
  const auto g = run_bwd(s, in.q, in.k, in.v, f, in.dout);
  expect_close("dq", g.dq.to_vector(), ref.dq, max_err_t(base.dq, ref.dq), max_abs_finite(ref.dq_mag), s.d);
  expect_close("dk", g.dk.to_vector(), ref.dk, max_err_t(base.dk, ref.dk), max_abs_finite(ref.dk_mag), s.d);
  expect_close("dv", g.dv.to_vector(), ref.dv, max_err_t(base.dv, ref.dv));
}

// Every option, on lengths that cross tiles (with 16-wide test tiles) and
// are not multiples of them.
std::vector<Spec> option_grid() {
  Spec base;
  base.lq = {37, 37};
  base.lk = {45, 45};
  mf::testing::SpecGrid<Spec> g(base);
  g.add("plain_gqa2", [](Spec&) {});
  g.add("mha_d24", [](Spec& s) {
    s.hkv = 4;
    s.d = 24;
  });
  g.add("mqa_d80", [](Spec& s) {
    s.hkv = 1;
    s.d = 80;
  });
  g.add("causal", [](Spec& s) { s.opt.causal = true; });
  g.add("causal_lq_gt_lk_empty_rows", [](Spec& s) {
    s.lq = {50, 50};
    s.lk = {21, 21};
    s.opt.causal = true;
  });
  g.add("lq_gt_lk", [](Spec& s) {
    s.lq = {40, 40};
    s.lk = {19, 19};
  });
  g.add("window_2_1", [](Spec& s) {
    s.opt.window_left = 2;
    s.opt.window_right = 1;
  });
  g.add("window_0_0", [](Spec& s) {
    s.opt.window_left = 0;
    s.opt.window_right = 0;
  });
  g.add("window_left_only_20", [](Spec& s) { s.opt.window_left = 20; });
  g.add("window_right_only_3", [](Spec& s) { s.opt.window_right = 3; });
  g.add("causal_left17", [](Spec& s) {
    s.opt.causal = true;
    s.opt.window_left = 17;
  });
  g.add("window_9_4_alibi_padding_gqa4", [](Spec& s) {  // a narrow window's one-tile reach, element masks
    s.hq = 8;
    s.hkv = 2;
    s.opt.window_left = 9;
    s.opt.window_right = 4;
    s.opt.alibi = true;
    for (int b = 0; b < 2; ++b)
      for (int j = 0; j < 45; ++j) s.mask.push_back((j * 5 + b) % 7 == 0 ? 0 : 1);
  });
  g.add("causal_left250_long", [](Spec& s) {  // reach over 256 keys: grid-aligned key tiles
    s.lq = {300, 300};
    s.lk = {310, 310};
    s.opt.causal = true;
    s.opt.window_left = 250;
  });
  g.add("globals_window", [](Spec& s) {
    s.opt.window_left = 3;
    s.opt.window_right = 1;
    s.opt.global_tokens = {0, 20, 44};
  });
  g.add("globals_causal_window", [](Spec& s) {
    s.opt.causal = true;
    s.opt.window_left = 2;
    s.opt.global_tokens = {5, 30};
  });
  g.add("alibi_pow2_h8_causal", [](Spec& s) {
    s.hq = 8;
    s.hkv = 2;
    s.opt.alibi = true;
    s.opt.causal = true;
  });
  g.add("alibi_h6", [](Spec& s) {
    s.hq = 6;
    s.hkv = 3;
    s.opt.alibi = true;
  });
  g.add("scale", [](Spec& s) { s.opt.scale = 0.7f; });
  g.add("key_padding", [](Spec& s) {
    for (int b = 0; b < 2; ++b)
      for (int j = 0; j < 45; ++j) s.mask.push_back((j * 7 + b * 3) % 5 == 0 ? 0 : 1);
    for (int j = 16; j < 32; ++j) s.mask[j] = 0;  // a whole 16-key tile padded in entry 0
  });
  g.add("padding_empty_rows", [](Spec& s) {
    s.opt.window_left = 0;
    s.opt.window_right = 0;
    for (int b = 0; b < 2; ++b)
      for (int j = 0; j < 45; ++j) s.mask.push_back(b == 1 || j % 3 != 0 ? 1 : 0);
  });
  g.add("all_padded", [](Spec& s) { s.mask.assign(90, 0); });
  g.add("dropout", [](Spec& s) {
    s.opt.dropout_p = 0.3f;
    s.opt.dropout_seed = 42;
  });
  g.add("logits_x30_causal", [](Spec& s) {
    s.qmul = 30.0f;
    s.opt.causal = true;
  });
  // Default tiles (192 stacked rows, GQA 2: 96 positions): the last forward tile holds
  // 1 row x 2 heads <= small_rows, so only it takes the few-row kernel.
  g.add("logits_x30_last_tile_few_rows", [](Spec& s) {
    s.lq = {97, 97};
    s.lk = {100, 100};
    s.qmul = 30.0f;
    s.opt.causal = true;
  });
  g.add("everything", [](Spec& s) {
    s.hq = 8;
    s.hkv = 2;
    s.d = 16;
    s.opt.causal = true;
    s.opt.window_left = 5;
    s.opt.window_right = 0;
    s.opt.global_tokens = {1, 33};
    s.opt.alibi = true;
    s.opt.scale = 0.4f;
    s.opt.dropout_p = 0.25f;
    s.opt.dropout_seed = 7;
    for (int b = 0; b < 2; ++b)
      for (int j = 0; j < 45; ++j) s.mask.push_back(j % 11 == 4 ? 0 : 1);
  });
  g.add("varlen", [](Spec& s) {
    s.varlen = true;
    s.lq = {3, 40, 1, 17};
    s.lk = {5, 40, 33, 0};
  });
  g.add("varlen_causal_alibi_window_dropout", [](Spec& s) {
    s.varlen = true;
    s.hq = 6;
    s.hkv = 2;
    s.lq = {20, 2, 33};
    s.lk = {36, 0, 33};
    s.opt.causal = true;
    s.opt.alibi = true;
    s.opt.window_left = 9;
    s.opt.dropout_p = 0.2f;
    s.opt.dropout_seed = 3;
  });
  return g.specs();
}


struct TileConfig {
  std::string name;
  FlashTiles tiles;
};
std::vector<TileConfig> tile_configs(const FlashTiles& defaults) {
  return {{"tiles=16", tiny_flash_tiles(0)}, {"tiles=16,few-row", tiny_flash_tiles(16)}, {"tiles=default", defaults}};
}

}  // namespace

TEST(FlashAttention, MatchesFloat64LoopOnOptionGrid) {
  ScopedFlashIsa knobs;
  for (Isa isa : flash_isas()) {
    set_isa(isa);
    for (const TileConfig& tc : tile_configs(FlashTiles{})) {
      for (Spec s : option_grid()) {
        s.opt.flash_tiles = tc.tiles;
        SCOPED_TRACE(s.name + " isa=" + isa_name(isa) + " " + tc.name);
        check_spec(s, 100);
      }
    }
  }
}

// GQA ratios 1..8, head dims 8..256, odd lengths, with the default tiles.
TEST(FlashAttention, AwkwardShapesAndHeadDims) {
  struct Shape5 {
    std::int64_t hq, hkv, d, lq, lk;
    bool causal;
  };
  const std::vector<Shape5> shapes{{1, 1, 8, 1, 1, false},      {3, 1, 24, 65, 130, true},  {5, 5, 40, 129, 63, false},
                                   {7, 1, 56, 70, 70, true},     {8, 1, 64, 67, 200, false}, {6, 2, 128, 100, 100, true},
                                   {2, 2, 256, 33, 150, false},  {4, 4, 256, 90, 90, true},  {8, 4, 136, 17, 31, false}};
  for (const auto& sh : shapes) {
    Spec s;
    s.name = "hq" + std::to_string(sh.hq) + "_hkv" + std::to_string(sh.hkv) + "_d" + std::to_string(sh.d) + "_lq" +
             std::to_string(sh.lq) + "_lk" + std::to_string(sh.lk);
    s.hq = sh.hq;
    s.hkv = sh.hkv;
    s.d = sh.d;
    s.lq = {sh.lq};
    s.lk = {sh.lk};
    s.opt.causal = sh.causal;
    SCOPED_TRACE(s.name);
    check_spec(s, 7);
  }
}

// The float32 four-point gradcheck through the front door (its default tolerances).
TEST(FlashAttention, GradcheckFiniteDifferences) {
  const std::vector<std::string> picked{"plain_gqa2", "causal_lq_gt_lk_empty_rows", "globals_causal_window",
                                        "alibi_h6", "key_padding", "dropout", "everything",
                                        "varlen_causal_alibi_window_dropout"};
  std::size_t found = 0;
  for (Spec s : option_grid()) {
    if (std::find(picked.begin(), picked.end(), s.name) == picked.end()) continue;
    ++found;
    s.opt.flash_tiles = tiny_flash_tiles();
    SCOPED_TRACE(s.name);
    const Inputs in = make_inputs(s, 11);
    const auto f = run_fwd(s, in.q, in.k, in.v);
    const auto g = run_bwd(s, in.q, in.k, in.v, f, in.dout);
    auto loss = [&] { return mf::testing::weighted_sum(run_fwd(s, in.q, in.k, in.v).out, in.dout); };
    mf::testing::GradcheckOptions opt;
    opt.max_checks_per_input = 16;
    const auto r = mf::testing::gradcheck(loss, {in.q, in.k, in.v}, {g.dq, g.dk, g.dv}, opt);
    EXPECT_TRUE(r.ok) << r.report;
  }
  EXPECT_EQ(found, picked.size()) << "a picked spec name is not in option_grid()";
}

TEST(FlashAttention, EqualsDenseReference) {
  for (const Spec& s : option_grid()) {
    SCOPED_TRACE(s.name);
    const Inputs in = make_inputs(s, 5);
    const auto ff = run_fwd(s, in.q, in.k, in.v, AttentionImpl::Flash);
    const auto fd = run_fwd(s, in.q, in.k, in.v, AttentionImpl::Dense);
    const double scale = std::max(1.0f, s.qmul);
    EXPECT_LE(max_abs_diff(ff.out, fd.out), 2e-5 * scale);
    const auto lf = ff.lse.to_vector(), ld = fd.lse.to_vector();
    for (std::size_t i = 0; i < lf.size(); ++i) {
      if (std::isinf(ld[i])) {
        ASSERT_EQ(lf[i], ld[i]);
      } else {
        ASSERT_NEAR(lf[i], ld[i], 2e-5 * std::max(1.0f, std::fabs(ld[i])));
      }
    }
    const auto gf = run_bwd(s, in.q, in.k, in.v, fd, in.dout, AttentionImpl::Flash);
    const auto gd = run_bwd(s, in.q, in.k, in.v, fd, in.dout, AttentionImpl::Dense);
    EXPECT_LE(max_abs_diff(gf.dq, gd.dq), 5e-5 * scale);
    EXPECT_LE(max_abs_diff(gf.dk, gd.dk), 5e-5 * scale);
    EXPECT_LE(max_abs_diff(gf.dv, gd.dv), 5e-5 * scale);
  }
}

TEST(FlashAttention, EmptyRowsAreZeroWithMinusInfLseAndZeroGrads) {
  Spec s;
  s.lq = {20};
  s.lk = {30};
  s.mask.assign(30, 0);
  const Inputs in = make_inputs(s, 1);
  const auto f = run_fwd(s, in.q, in.k, in.v);
  for (float x : f.out.to_vector()) ASSERT_EQ(x, 0.0f);
  for (float x : f.lse.to_vector()) ASSERT_EQ(x, -std::numeric_limits<float>::infinity());
  const auto g = run_bwd(s, in.q, in.k, in.v, f, in.dout);
  for (const Tensor* t : {&g.dq, &g.dk, &g.dv})
    for (float x : t->to_vector()) ASSERT_EQ(x, 0.0f);
}

// Same inputs, same thread count: the same bits, run after run (the backward's
// dQ chunks and the forward's dynamic schedule must not leak into the result).
TEST(FlashAttention, DeterministicRunToRun) {
  Spec s;
  s.hq = 8;
  s.hkv = 2;
  s.d = 64;
  s.lq = {300};
  s.lk = {300};
  s.opt.causal = true;
  s.opt.dropout_p = 0.1f;
  s.opt.dropout_seed = 9;
  const Inputs in = make_inputs(s, 3);
  std::vector<std::vector<float>> first;
  for (int run = 0; run < 4; ++run) {
    const auto f = run_fwd(s, in.q, in.k, in.v);
    const auto g = run_bwd(s, in.q, in.k, in.v, f, in.dout);
    std::vector<std::vector<float>> now{f.out.to_vector(), f.lse.to_vector(), g.dq.to_vector(), g.dk.to_vector(),
                                        g.dv.to_vector()};
    if (run == 0) {
      first = now;
      continue;
    }
    for (std::size_t t = 0; t < now.size(); ++t)
      ASSERT_EQ(0, std::memcmp(now[t].data(), first[t].data(), now[t].size() * sizeof(float))) << "tensor " << t;
  }
}

// 1 vs 2 threads (flash_attention.cpp states the contract): the forward's out
// and lse, and the backward's dK and dV, are the same bits; dQ may differ by
// rounding where a (batch, KV head) pair's key tiles are cut between threads
// (one pair here: it always is), so it is held to a float32 tolerance.
TEST(FlashAttention, ThreadCountIndependence) {
  for (const bool split : {false, true}) {
    Spec s;
    s.hq = 4;
    s.hkv = 1;
    s.d = 64;
    s.lq = {split ? 1 : 300};
    s.lk = {split ? 5000 : 300};
    s.opt.causal = true;
    s.opt.alibi = true;
    SCOPED_TRACE(split ? "split-KV forward" : "tiled");
    const Inputs in = make_inputs(s, 31);
    auto run = [&](int threads) {
      mf::testing::ScopedThreads scope(threads);
      const auto f = run_fwd(s, in.q, in.k, in.v);
      const auto g = run_bwd(s, in.q, in.k, in.v, f, in.dout);
      return std::vector<std::vector<float>>{f.out.to_vector(), f.lse.to_vector(), g.dk.to_vector(),
                                             g.dv.to_vector(), g.dq.to_vector()};
    };
    const auto one = run(1), two = run(2);
    const char* names[] = {"out", "lse", "dk", "dv"};
    for (std::size_t t = 0; t < 4; ++t)
      EXPECT_TRUE(mf::testing::same_bits(one[t], two[t])) << names[t] << ": 1 vs 2 threads, different bits";
    double dq_err = 0, dq_max = 0;
    for (std::size_t i = 0; i < one[4].size(); ++i) {
      dq_err = std::max(dq_err, static_cast<double>(std::fabs(one[4][i] - two[4][i])));
      dq_max = std::max(dq_max, static_cast<double>(std::fabs(one[4][i])));
    }
    EXPECT_LE(dq_err, 1e-5 * dq_max) << "dq: 1 vs 2 threads";
  }
}

// The split-KV path (few rows, many keys) equals the one-pass path, for GQA,
// ALiBi, causal + left window, key padding and a ragged last chunk.
TEST(FlashAttention, SplitKvDecodePathEqualsNormalPath) {
  ScopedFlashIsa knobs;
  for (const std::int64_t lq : {1, 3}) {
    Spec s;
    s.hq = 8;
    s.hkv = 2;
    s.d = 64;
    s.lq = {lq, lq};
    s.lk = {5000, 5000};
    s.opt.causal = true;
    s.opt.alibi = true;
    s.opt.window_left = 4000;
    for (int b = 0; b < 2; ++b)
      for (int j = 0; j < 5000; ++j) s.mask.push_back(j % 97 == 13 ? 0 : 1);
    SCOPED_TRACE("lq=" + std::to_string(lq));
    const Inputs in = make_inputs(s, 21);
    s.opt.flash_tiles.split_chunk = 1024;
    s.opt.flash_tiles.split_min_keys = 2048;
    ASSERT_EQ(flash_forward_key_splits(s.opt.flash_tiles, s.hq / s.hkv, lq, 5000), 5);  // the path taken
    const auto split = run_fwd(s, in.q, in.k, in.v);
    Spec whole_spec = s;
    whole_spec.opt.flash_tiles.split_min_keys = 1 << 30;
    ASSERT_EQ(flash_forward_key_splits(whole_spec.opt.flash_tiles, s.hq / s.hkv, lq, 5000), 0);
    const auto whole = run_fwd(whole_spec, in.q, in.k, in.v);
    EXPECT_LE(max_abs_diff(split.out, whole.out), 2e-6);
    EXPECT_LE(max_abs_diff(split.lse, whole.lse), 2e-5);
    check_spec(s, 21, /*backward=*/false);  // the split path against the float64 loop
  }
}

// A 32k-token single head: forward + backward hold O(L d) extra memory (the
// score matrix alone would be 4 GiB). Causal + a 256-key window keeps it fast.
TEST(FlashAttention, LongSequenceMemoryIsLinear) {
  const std::int64_t L = 32768, d = 64;
  Tensor q = randn({1, 1, L, d}, 1), k = randn({1, 1, L, d}, 2), v = randn({1, 1, L, d}, 3), dout = randn({1, 1, L, d}, 4);
  AttentionOptions opt;
  opt.causal = true;
  opt.window_left = 256;
  const std::int64_t before = memory_stats().current_bytes;
  reset_peak_memory();
  const auto f = attention_forward(q, k, v, opt);
  const auto g = attention_backward(q, k, v, f.out, f.lse, dout, opt);
  const std::int64_t extra = memory_stats().peak_bytes - before;
  const std::int64_t tensor_bytes = L * d * 4;  // one [L, d] tensor
  // out + lse + dq + dk + dv are 4 [L, d] tensors and change; the kernels add at most 4 more.
  EXPECT_LE(extra, 8 * tensor_bytes) << "peak extra bytes " << extra;
  EXPECT_LT(extra, std::int64_t{64} << 20);
  for (float x : std::vector<float>{f.out.at({0, 0, L - 1, 0}), g.dq.at({0, 0, L - 1, 0})}) EXPECT_TRUE(std::isfinite(x));
}

// ------------------------------------------------------------ PyTorch fixtures

namespace {

std::vector<std::int64_t> ints(const Tensor& t) {
  const Tensor c = t.to(DType::I64).contiguous();
  const std::int64_t* p = c.data<std::int64_t>();
  return std::vector<std::int64_t>(p, p + c.numel());
}

// The fixture's problem as a Spec (for the float32-loop baseline) and its tensors.
Spec spec_from_fixture(const std::string& name, const SafetensorsContents& fx) {
  const auto& t = fx.tensors;
  Spec s;
  s.name = name;
  const Tensor& q = t.at("q");
  const Tensor& k = t.at("k");
  s.varlen = t.count("cu_seqlens_q") != 0;
  s.opt.causal = ints(t.at("causal"))[0] != 0;
  s.opt.window_left = ints(t.at("window_left"))[0];
  s.opt.window_right = ints(t.at("window_right"))[0];
  s.opt.alibi = ints(t.at("alibi"))[0] != 0;
  s.opt.scale = t.at("scale").to_vector()[0];
  s.opt.global_tokens = ints(t.at("global_tokens"));
  if (s.varlen) {
    s.hq = q.size(1);
    s.hkv = k.size(1);
    s.d = q.size(2);
    const auto cq = ints(t.at("cu_seqlens_q")), ck = ints(t.at("cu_seqlens_k"));
    s.lq.clear();
    s.lk.clear();
    for (std::size_t b = 0; b + 1 < cq.size(); ++b) {
      s.lq.push_back(cq[b + 1] - cq[b]);
      s.lk.push_back(ck[b + 1] - ck[b]);
    }
  } else {
    s.hq = q.size(1);
    s.hkv = k.size(1);
    s.d = q.size(3);
    s.lq.assign(static_cast<std::size_t>(q.size(0)), q.size(2));
    s.lk.assign(static_cast<std::size_t>(q.size(0)), k.size(2));
    if (t.count("key_padding_mask")) {
      const auto m = ints(t.at("key_padding_mask"));
      s.mask.assign(m.begin(), m.end());
    }
  }
  return s;
}

// Per-element rule for the fixtures: every element i, in its row of row_len
// values (lse: 1), must satisfy
//   |flash_i - ref_i| <= 2 |float32 loop_i - ref_i| + c u (|ref_i| + row scale)
// with u = 2^-24 and row scale = max |ref| over the row (and, for dQ and dK,
// the magnitude of the terms that cancel in dS, `mag`, times sqrt(d); for lse,
// at least 1: lse = m + ln l may cancel to near 0 from terms of order 1), so a
// small element is held to its own scale, not to the largest one. c = 48: the
// worst element of every fixture, SIMD path and tile setting needs c < 17.2
// (a dV row whose terms cancel; out, lse, dQ, dK need c < 5), printed with
// MF_ATTENTION_BOUND_REPORT=1.
constexpr double kElementBoundC = 48.0;
void expect_close_per_element(const char* what, const std::vector<float>& got, const std::vector<double>& ref,
                              const std::vector<float>& base, std::int64_t row_len, double min_row_scale = 0.0,
                              const std::vector<float>* mag = nullptr, std::int64_t d = 0) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  const double u = std::ldexp(1.0, -24);
  std::size_t worst = 0;
  double worst_ratio = 0;
  for (std::size_t row0 = 0; row0 < ref.size(); row0 += static_cast<std::size_t>(row_len)) {
    const std::size_t row1 = std::min(ref.size(), row0 + static_cast<std::size_t>(row_len));
    double row_scale = min_row_scale;
    for (std::size_t i = row0; i < row1; ++i) {
      if (std::isfinite(ref[i])) row_scale = std::max(row_scale, std::fabs(ref[i]));
      if (mag != nullptr) row_scale = std::max(row_scale, std::sqrt(static_cast<double>(d)) * (*mag)[i]);
    }
    for (std::size_t i = row0; i < row1; ++i) {
      if (std::isinf(ref[i])) {
        ASSERT_EQ(got[i], ref[i]) << what << " element " << i;
        continue;
      }
      const double err = std::fabs(static_cast<double>(got[i]) - ref[i]);
      const double base_err = std::fabs(static_cast<double>(base[i]) - ref[i]);
      const double bound = 2.0 * base_err + kElementBoundC * u * (std::fabs(ref[i]) + row_scale);
      ASSERT_TRUE(std::isfinite(got[i])) << what << " element " << i << " not finite";
      const double ratio = (err - 2.0 * base_err) / (u * (std::fabs(ref[i]) + row_scale) + 1e-300);
      if (ratio > worst_ratio) {
        worst_ratio = ratio;
        worst = i;
      }
      EXPECT_LE(err, bound) << what << " element " << i << ": ref " << ref[i] << ", flash " << got[i]
                            << ", float32 loop " << base[i] << ", row scale " << row_scale;
      if (err > bound) return;  // one report per tensor
    }
  }
  if (std::getenv("MF_ATTENTION_BOUND_REPORT") != nullptr)
    std::printf("%s: worst c needed %.2f at element %zu\n", what, worst_ratio, worst);
}

std::vector<double> doubles(const Tensor& t) {
  const auto f = t.to_vector();
  return {f.begin(), f.end()};
}

}  // namespace

// flash (every SIMD path, default and tiny tiles) == PyTorch float64 fixtures,
// element by element (expect_close_per_element).
TEST(FlashAttention, MatchesPyTorchFixtures) {
  ScopedFlashIsa knobs;
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(MODFORMER_FIXTURES_DIR)) {
    const std::string f = e.path().filename().string();
    if (f.rfind("attention_", 0) == 0 && e.path().extension() == ".safetensors") names.push_back(e.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  ASSERT_GE(names.size(), 20u);
  for (const std::string& name : names) {
    const auto fx = mf::testing::load_fixture(name);
    Spec s = spec_from_fixture(name, fx);
    const auto& t = fx.tensors;
    const Tensor &q = t.at("q"), &k = t.at("k"), &v = t.at("v"), &dout = t.at("dout");
    const auto base = naive<float>(s, q.to_vector(), k.to_vector(), v.to_vector(), dout.to_vector());
    const auto ref_out = doubles(t.at("out")), ref_lse = doubles(t.at("lse"));
    const auto ref_dq = doubles(t.at("dq")), ref_dk = doubles(t.at("dk")), ref_dv = doubles(t.at("dv"));
    for (Isa isa : flash_isas()) {
      set_isa(isa);
      for (const TileConfig& tc : tile_configs(FlashTiles{})) {
        s.opt.flash_tiles = tc.tiles;
        SCOPED_TRACE(name + " isa=" + isa_name(isa) + " " + tc.name);
        const auto f = run_fwd(s, q, k, v);
        expect_close_per_element("out", f.out.to_vector(), ref_out, base.out, s.d);
        expect_close_per_element("lse", f.lse.to_vector(), ref_lse, base.lse, 1, 1.0);
        const auto g = run_bwd(s, q, k, v, f, dout);
        expect_close_per_element("dq", g.dq.to_vector(), ref_dq, base.dq, s.d, 0.0, &base.dq_mag, s.d);
        expect_close_per_element("dk", g.dk.to_vector(), ref_dk, base.dk, s.d, 0.0, &base.dk_mag, s.d);
        expect_close_per_element("dv", g.dv.to_vector(), ref_dv, base.dv, s.d);
      }
    }
  }
}
