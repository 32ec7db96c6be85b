// Activation kernels (GELU tanh/erf, SiLU, SwiGLU, GeGLU): fast vs reference
// under derived error bounds on awkward sizes and extreme inputs; backward vs
// finite differences; determinism; front-door errors; PyTorch fixtures.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "../support/isa_variants.h"
#include "../support/bounds.h"
#include "../support/errors.h"
#include "../support/fixtures.h"
#include "../support/threads.h"
#include "core/error.h"
#include "core/threads.h"
#include "kernels/activations.h"
#include "kernels/rows.h"
#include "testing/gradcheck.h"

using namespace mf;
namespace mt = mf::testing;
using mt::kU;
using mt::random_normal;
using mt::within_bounds;

namespace {

enum class Act { Silu, GeluTanh, GeluErf };
const char* act_name(Act a) { return a == Act::Silu ? "silu" : a == Act::GeluTanh ? "gelu_tanh" : "gelu_erf"; }
GeluApprox approx_of(Act a) { return a == Act::GeluTanh ? GeluApprox::Tanh : GeluApprox::Erf; }

// Error of the fast kernel's activation value (e_y) and derivative (e_g) at
// x, excluding the final multiplications by dout/up and the reference's own
// rounding; in units of u = 2^-24, derived from the kernel's operations:
//  sigmoid from e = exp(-|v|) (2u), d = 1/(1+e) (<= 4u), s = d or e d (<= 7u),
//  s(1-s) = e d^2 (<= 12u).
//  silu: y = x s: 8u|y|; y' = s + x s(1-s) (one fma): 7u|s| + 12u|x ds| + u|y'|.
//  gelu_tanh: v = 2u(x) in float (float constants, x^2, fma, *x) is off by
//   <= 6u|v|, which moves s by s(1-s) 6u|v| and s(1-s) by |1-2s| 6u|v|;
//   dv/dx another 4u: y = x s: (8 + 6|v|(1-s)) u|y|;
//   y' = s + x s(1-s) v': (7 + 6|v|(1-s)) u|s| + (17 + 6|v|) u|x ds v'| + u|y'|.
//  gelu_erf: tail = Phi(-|x|) = t E(t) exp(-x^2/2) / 2: t (2.5u), the fitted
//   E and Horner (5u, incl. the 2.7e-8 fit), exp and its a^2 correction (3u),
//   two products (2u): 13u relative; Phi = tail or 1 - tail (+u Phi);
//   y = x Phi: 13u|x| tail + 2u|y|; y' = Phi + x phi(x): 13u tail + u Phi +
//   5u|x phi| + u|y'|.
struct ExactAct {
  double y, grad, ey, eg;
};
double sigmoid(double v) { return v >= 0 ? 1 / (1 + std::exp(-v)) : std::exp(v) / (1 + std::exp(v)); }
ExactAct exact(Act a, double x) {
  ExactAct r{};
  if (a == Act::Silu) {
    const double s = sigmoid(x), ds = s * sigmoid(-x);
    r.y = x * s;
    r.grad = s + x * ds;
    r.ey = 8 * kU * std::fabs(r.y);
    r.eg = kU * (7 * s + 12 * std::fabs(x * ds) + std::fabs(r.grad));
  } else if (a == Act::GeluTanh) {
    const double c0 = 2 * 0.7978845608028654, c1 = c0 * 0.044715;
    const double v = x * (c0 + c1 * x * x), dv = c0 + 3 * c1 * x * x;
    const double s = sigmoid(v), ds = s * sigmoid(-v);
    r.y = x * s;
    r.grad = s + x * ds * dv;
    r.ey = kU * std::fabs(r.y) * (8 + 6 * std::fabs(v) * sigmoid(-v));
    r.eg = kU * (s * (7 + 6 * std::fabs(v) * sigmoid(-v)) + std::fabs(x * ds * dv) * (17 + 6 * std::fabs(v)) +
                 std::fabs(r.grad));
  } else {
    const double tail = 0.5 * std::erfc(std::fabs(x) / std::sqrt(2.0));
    const double phi_cdf = x < 0 ? tail : 1 - tail;
    const double pdf = std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI);
    r.y = x * phi_cdf;
    r.grad = phi_cdf + x * pdf;
    r.ey = kU * (13 * std::fabs(x) * tail + 2 * std::fabs(r.y));
    r.eg = kU * (13 * tail + phi_cdf + 5 * std::fabs(x * pdf) + std::fabs(r.grad));
  }
  return r;
}

// Inputs: N(0, 3^2) plus the extremes (saturation, clamps, underflow, zero).
std::vector<float> inputs(std::int64_t count, std::uint64_t seed) {
  std::vector<float> x = random_normal(count, seed, 3.0f);
  const float special[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-4f, -0.75f, -1.278f, 5.5f, -5.5f, -9.0f, -10.5f, -14.0f,
                           -19.9f, -20.5f, -30.0f, 30.0f, -88.0f, 100.0f, -1e4f, 1e4f, -2e4f, 1e5f, -1e5f, -3e38f};
  for (std::size_t i = 0; i < std::size(special) && i < x.size(); ++i) x[(i * 7919) % x.size()] = special[i];
  return x;
}

void run_fast(Act a, bool backward, float* out, const float* dout, const float* x, std::int64_t count) {
  if (a == Act::Silu) return backward ? silu_backward(out, dout, x, count) : silu_forward(out, x, count);
  return backward ? gelu_backward(out, dout, x, count, approx_of(a)) : gelu_forward(out, x, count, approx_of(a));
}
void run_ref(Act a, bool backward, float* out, const float* dout, const float* x, std::int64_t count) {
  if (a == Act::Silu)
    return backward ? reference::silu_backward(out, dout, x, count) : reference::silu_forward(out, x, count);
  return backward ? reference::gelu_backward(out, dout, x, count, approx_of(a))
                  : reference::gelu_forward(out, x, count, approx_of(a));
}

void check_activation(Act a, std::int64_t count, const std::string& what) {
  const std::vector<float> x = inputs(count, 501), dy = random_normal(count, 502);
  std::vector<float> y(count), y_ref(count), dx(count), dx_ref(count);
  run_fast(a, false, y.data(), nullptr, x.data(), count);
  run_ref(a, false, y_ref.data(), nullptr, x.data(), count);
  run_fast(a, true, dx.data(), dy.data(), x.data(), count);
  run_ref(a, true, dx_ref.data(), dy.data(), x.data(), count);
  std::vector<double> by(count), bdx(count);
  for (std::int64_t i = 0; i < count; ++i) {
    const ExactAct e = exact(a, x[i]);
    by[i] = e.ey + kU * std::fabs(y_ref[i]);
    bdx[i] = std::fabs(dy[i]) * e.eg + 2 * kU * std::fabs(dx_ref[i]);
  }
  const std::string name = str_cat(act_name(a), " ", what);
  EXPECT_TRUE(within_bounds(y, mt::to_double(y_ref), by, name + " forward"));
  EXPECT_TRUE(within_bounds(dx, mt::to_double(dx_ref), bdx, name + " backward"));
  for (std::int64_t i = 0; i < count; ++i) {
    ASSERT_FALSE(std::isnan(y[i]) || std::isnan(dx[i])) << name << " x = " << x[i];
  }
}

// Gated: out = act(gate) up; dgate = dout up act'(gate); dup = dout act(gate).
void check_gated(Act a, std::int64_t count, const std::string& what) {
  const std::vector<float> g = inputs(count, 601), up = random_normal(count, 602, 2.0f),
                           dy = random_normal(count, 603);
  std::vector<float> out(count), out_ref(count), dg(count), dg_ref(count), du(count), du_ref(count);
  if (a == Act::Silu) {
    swiglu_forward(out.data(), g.data(), up.data(), count);
    reference::swiglu_forward(out_ref.data(), g.data(), up.data(), count);
    swiglu_backward(dg.data(), du.data(), dy.data(), g.data(), up.data(), count);
    reference::swiglu_backward(dg_ref.data(), du_ref.data(), dy.data(), g.data(), up.data(), count);
  } else {
    geglu_forward(out.data(), g.data(), up.data(), count, approx_of(a));
    reference::geglu_forward(out_ref.data(), g.data(), up.data(), count, approx_of(a));
    geglu_backward(dg.data(), du.data(), dy.data(), g.data(), up.data(), count, approx_of(a));
    reference::geglu_backward(dg_ref.data(), du_ref.data(), dy.data(), g.data(), up.data(), count, approx_of(a));
  }
  std::vector<double> bo(count), bg(count), bu(count);
  for (std::int64_t i = 0; i < count; ++i) {
    const ExactAct e = exact(a, g[i]);
    bo[i] = std::fabs(up[i]) * e.ey + 2 * kU * std::fabs(out_ref[i]);
    bg[i] = std::fabs(double{dy[i]} * up[i]) * e.eg + 3 * kU * std::fabs(dg_ref[i]);
    bu[i] = std::fabs(dy[i]) * e.ey + 2 * kU * std::fabs(du_ref[i]);
  }
  const std::string name = str_cat(a == Act::Silu ? "swiglu" : "geglu_", a == Act::Silu ? "" : act_name(a), " ", what);
  EXPECT_TRUE(within_bounds(out, mt::to_double(out_ref), bo, name + " out"));
  EXPECT_TRUE(within_bounds(dg, mt::to_double(dg_ref), bg, name + " dgate"));
  EXPECT_TRUE(within_bounds(du, mt::to_double(du_ref), bu, name + " dup"));
}

const Act kActs[] = {Act::Silu, Act::GeluTanh, Act::GeluErf};

}  // namespace

TEST(KernelsActivations, FastMatchesReferenceOnAwkwardSizes) {
  // rows x n for the awkward n, plus sizes that span several parallel chunks.
  std::vector<std::int64_t> counts;
  for (std::int64_t n : {1, 3, 7, 15, 16, 17, 64, 1000, 4097})
    for (std::int64_t rows : {1, 3, 17, 33}) counts.push_back(rows * n);
  counts.push_back(3 * kernels::kElementwiseChunk + 5);
  mf::testing::for_each_isa([&] {
    for (Act a : kActs)
      for (std::int64_t c : counts) {
        check_activation(a, c, str_cat("count ", c));
        check_gated(a, c, str_cat("count ", c));
      }
  });
}

TEST(KernelsActivations, ExtremeInputsSaturateCleanly) {
  const std::vector<float> x = {-1e5f, -3e38f, 1e5f, 3e38f, -60.0f, 60.0f};
  std::vector<float> y(x.size()), dx(x.size());
  const std::vector<float> ones(x.size(), 1.0f);
  for (Isa isa : supported_isas()) {
    ScopedIsa scope(isa);
    for (Act a : kActs) {
    run_fast(a, false, y.data(), nullptr, x.data(), 6);
    run_fast(a, true, dx.data(), ones.data(), x.data(), 6);
    EXPECT_EQ(y[0], 0.0f) << act_name(a);
    EXPECT_EQ(y[1], 0.0f) << act_name(a);
    EXPECT_EQ(y[2], 1e5f) << act_name(a);
    EXPECT_EQ(y[3], 3e38f) << act_name(a);
    EXPECT_EQ(dx[0], 0.0f) << act_name(a);
    EXPECT_EQ(dx[1], 0.0f) << act_name(a);
    EXPECT_EQ(dx[2], 1.0f) << act_name(a);
    EXPECT_EQ(dx[3], 1.0f) << act_name(a);
    EXPECT_EQ(y[5], 60.0f) << act_name(a);
    }
  }
}

TEST(KernelsActivations, BackwardMatchesFiniteDifferences) {
  const std::int64_t n = 37;
  Tensor x = Tensor::from_vector({n}, random_normal(n, 701, 2.0f));
  Tensor up = Tensor::from_vector({n}, random_normal(n, 702));
  const Tensor w = Tensor::from_vector({n}, random_normal(n, 703));
  for (GeluApprox ap : {GeluApprox::Tanh, GeluApprox::Erf}) {
    const auto r = mt::gradcheck([&] { return mt::weighted_sum(gelu_forward(x, ap), w); }, {x},
                                 {gelu_backward(w, x, ap)});
    EXPECT_TRUE(r.ok) << "gelu " << static_cast<int>(ap) << "\n" << r.report;
    const auto gg = geglu_backward(w, x, up, ap);
    const auto r2 = mt::gradcheck([&] { return mt::weighted_sum(geglu_forward(x, up, ap), w); }, {x, up},
                                  {gg.dgate, gg.dup});
    EXPECT_TRUE(r2.ok) << "geglu " << static_cast<int>(ap) << "\n" << r2.report;
  }
  const auto r = mt::gradcheck([&] { return mt::weighted_sum(silu_forward(x), w); }, {x}, {silu_backward(w, x)});
  EXPECT_TRUE(r.ok) << "silu\n" << r.report;
  const auto sg = swiglu_backward(w, x, up);
  const auto r2 =
      mt::gradcheck([&] { return mt::weighted_sum(swiglu_forward(x, up), w); }, {x, up}, {sg.dgate, sg.dup});
  EXPECT_TRUE(r2.ok) << "swiglu\n" << r2.report;
}

TEST(KernelsActivations, DeterministicAcrossRunsAndThreads) {
  const std::int64_t count = 5 * kernels::kElementwiseChunk + 3;
  const std::vector<float> x = inputs(count, 801), up = random_normal(count, 802), dy = random_normal(count, 803);
  mt::expect_same_bits_across_threads([&] {
    std::vector<float> all, a(count), b(count);
    for (Act act : kActs) {
      run_fast(act, false, a.data(), nullptr, x.data(), count);
      all.insert(all.end(), a.begin(), a.end());
      run_fast(act, true, a.data(), dy.data(), x.data(), count);
      all.insert(all.end(), a.begin(), a.end());
    }
    swiglu_backward(a.data(), b.data(), dy.data(), x.data(), up.data(), count);
    all.insert(all.end(), a.begin(), a.end());
    geglu_backward(a.data(), b.data(), dy.data(), x.data(), up.data(), count, GeluApprox::Erf);
    all.insert(all.end(), b.begin(), b.end());
    return all;
  });
}

TEST(KernelsActivations, TensorFrontDoors) {
  const Tensor x = Tensor::from_vector({2, 3}, {-1, 0, 1, 2, -2, 0.5f});
  const Tensor y = gelu_forward(x.transpose(0, 1), GeluApprox::Erf);  // non-contiguous input is copied
  EXPECT_EQ(y.shape(), (Shape{3, 2}));
  EXPECT_NEAR(y.at({1, 1}), -2 * 0.5 * std::erfc(2 / std::sqrt(2.0)), 1e-7);
  EXPECT_EQ(silu_forward(Tensor::full({}, 0.0f)).shape(), Shape{});  // 0-d works element-wise
  const auto g = swiglu_backward(x, x, x);
  EXPECT_EQ(g.dgate.shape(), x.shape());
  EXPECT_EQ(g.dup.shape(), x.shape());
  const auto has = [](const std::string& msg, const std::string& part) {
    return msg.find(part) != std::string::npos ? ::testing::AssertionSuccess()
                                               : ::testing::AssertionFailure() << "'" << msg << "' lacks '" << part << "'";
  };
  EXPECT_TRUE(has(mt::error_of([&] { geglu_forward(x, Tensor::zeros({3, 2}), GeluApprox::Tanh); }),
                  "[geglu_forward] tensor 'up' must have shape [2, 3] but has [3, 2]"));
  EXPECT_TRUE(has(mt::error_of([&] { gelu_forward(x, static_cast<GeluApprox>(7)); }),
                  "[gelu_forward] unknown GELU approximation 7"));
  EXPECT_TRUE(has(mt::error_of([&] { silu_backward(x, Tensor::zeros({2, 3}, DType::I64)); }),
                  "[silu_backward] tensor 'x' must be float32 but is int64"));
  EXPECT_TRUE(has(mt::error_of([&] { swiglu_backward(Tensor(), x, x); }), "[swiglu_backward] tensor 'dout' is undefined"));
}

// PyTorch 1.13 fixtures (float64 math, stored as float32): F.gelu (both
// approximations), F.silu, silu(g) * u and gelu(g) * u with their gradients
// for a fixed upstream gradient. Bounds: the fast-vs-reference ones, whose
// reference-rounding terms cover the fixtures' rounding.
TEST(KernelsActivations, MatchesPyTorchFixtures) {
  for (Act a : kActs) {
    const auto f = mt::load_fixture(str_cat("kernels_", act_name(a)));
    const Tensor &x = f.tensors.at("x"), &dout = f.tensors.at("dout");
    const std::vector<float> want_y = f.tensors.at("out").to_vector(), want_dx = f.tensors.at("dx").to_vector();
    const std::vector<float> xv = x.to_vector(), dy = dout.to_vector();
    const bool silu = a == Act::Silu;
    const std::vector<float> y = (silu ? silu_forward(x) : gelu_forward(x, approx_of(a))).to_vector();
    const std::vector<float> dx = (silu ? silu_backward(dout, x) : gelu_backward(dout, x, approx_of(a))).to_vector();
    std::vector<double> by(xv.size()), bdx(xv.size());
    for (std::size_t i = 0; i < xv.size(); ++i) {
      const ExactAct e = exact(a, xv[i]);
      by[i] = e.ey + kU * std::fabs(want_y[i]);
      bdx[i] = std::fabs(dy[i]) * e.eg + 2 * kU * std::fabs(want_dx[i]);
    }
    EXPECT_TRUE(within_bounds(y, mt::to_double(want_y), by, str_cat(act_name(a), " out")));
    EXPECT_TRUE(within_bounds(dx, mt::to_double(want_dx), bdx, str_cat(act_name(a), " dx")));
  }
  for (const char* name : {"kernels_swiglu", "kernels_geglu_erf"}) {
    const bool swi = std::string(name) == "kernels_swiglu";
    const Act a = swi ? Act::Silu : Act::GeluErf;
    const auto f = mt::load_fixture(name);
    const Tensor &gate = f.tensors.at("gate"), &up = f.tensors.at("up"), &dout = f.tensors.at("dout");
    const Tensor out = swi ? swiglu_forward(gate, up) : geglu_forward(gate, up, GeluApprox::Erf);
    const GatedGrads gr = swi ? swiglu_backward(dout, gate, up) : geglu_backward(dout, gate, up, GeluApprox::Erf);
    const std::vector<float> gv = gate.to_vector(), uv = up.to_vector(), dy = dout.to_vector();
    const std::vector<float> wo = f.tensors.at("out").to_vector(), wg = f.tensors.at("dgate").to_vector(),
                             wu = f.tensors.at("dup").to_vector();
    std::vector<double> bo(gv.size()), bg(gv.size()), bu(gv.size());
    for (std::size_t i = 0; i < gv.size(); ++i) {
      const ExactAct e = exact(a, gv[i]);
      bo[i] = std::fabs(uv[i]) * e.ey + 2 * kU * std::fabs(wo[i]);
      bg[i] = std::fabs(double{dy[i]} * uv[i]) * e.eg + 3 * kU * std::fabs(wg[i]);
      bu[i] = std::fabs(dy[i]) * e.ey + 2 * kU * std::fabs(wu[i]);
    }
    EXPECT_TRUE(within_bounds(out.to_vector(), mt::to_double(wo), bo, str_cat(name, " out")));
    EXPECT_TRUE(within_bounds(gr.dgate.to_vector(), mt::to_double(wg), bg, str_cat(name, " dgate")));
    EXPECT_TRUE(within_bounds(gr.dup.to_vector(), mt::to_double(wu), bu, str_cat(name, " dup")));
  }
}
