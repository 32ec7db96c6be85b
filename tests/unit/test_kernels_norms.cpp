// LayerNorm and RMSNorm kernels: fast vs reference under derived error
// bounds on awkward shapes (also with a large common offset), parameter
// gradients accumulate, backward vs finite differences, determinism,
// front-door errors, PyTorch fixtures.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../support/bounds.h"
#include "../support/isa_variants.h"
#include "../support/errors.h"
#include "../support/fixtures.h"
#include "../support/threads.h"
#include "core/error.h"
#include "core/threads.h"
#include "kernels/layernorm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rows.h"
#include "testing/gradcheck.h"

using namespace mf;
namespace mt = mf::testing;
using mt::kU;
using mt::random_normal;
using mt::within_bounds;

namespace {

const std::vector<std::int64_t> kAwkwardN = {1, 3, 7, 15, 16, 17, 64, 1000, 4097};
const std::vector<std::int64_t> kAwkwardRows = {1, 2, 3, 5, 8, 13, 16, 17, 32, 33};

std::string shape_name(std::int64_t rows, std::int64_t n) { return str_cat("[", rows, ", ", n, "]"); }

// Rounding depth of a parameter gradient: each fixed row part adds up to
// ceil(rows / P) terms, then P - 1 adds combine the parts and one adds the
// total to the existing gradient (kernels/rows.h).
double param_grad_depth(std::int64_t rows) {
  const std::int64_t parts = std::min(rows, kernels::kParamGradParts);
  return static_cast<double>((rows + parts - 1) / parts + parts);
}

struct Bounds {
  std::vector<double> out, mean, rstd, dx, dw, db;
};

// ---- LayerNorm bounds (u = 2^-24; D = mf::testing::active_sum_depth(n)) -------------------
// Forward: the mean's error dm = u (D mean|x| + 2|m|) (sum, then * 1/n);
// the variance's relative error (D + 5) u (x - m rounds, squares, sum, * 1/n),
// so rstd's is ((D + 5)/2 + 3) u (plus eps, sqrt, divide); xhat then has
// dm * s + |xhat| ((D + 5)/2 + 5) u; * w and + b round once each, and the
// reference rounds its output once.
// Backward (given the same float mean/rstd): xhat 2u, dnorm = dy w u;
// a = mean(dnorm) err_a = u ((D + 1) mean|dnorm| + 2|a|); b = mean(dnorm xhat)
// err_b = u ((D + 4) mean|dnorm xhat| + 2|b|); then
// dx = s (dnorm - a - xhat b) with one rounding per operation.
Bounds layernorm_bounds(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& b,
                        const std::vector<float>& dy, const std::vector<float>& mean_f,
                        const std::vector<float>& rstd_f, const std::vector<float>& out_ref,
                        const std::vector<float>& dx_ref, const std::vector<float>& dw_ref,
                        const std::vector<float>& db_ref, std::int64_t rows, std::int64_t n) {
  Bounds B;
  B.out.resize(x.size());
  B.dx.resize(x.size());
  const double D = static_cast<double>(mf::testing::active_sum_depth(n));
  std::vector<double> sum_dy_xhat(n, 0.0), sum_dy(n, 0.0);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = &x[r * n];
    double m = 0, sabs = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      m += xr[j];
      sabs += std::fabs(xr[j]);
    }
    m /= n;
    sabs /= n;
    const double s = rstd_f[r];
    const double dm = kU * (D * sabs + 2 * std::fabs(m));
    B.mean.push_back(dm + kU * std::fabs(m));
    B.rstd.push_back(kU * s * ((D + 5) / 2 + 4));
    // backward terms, with the saved float mean/rstd
    const double mf_ = mean_f[r];
    double a = 0, bb = 0, abs_dnorm = 0, abs_dnx = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      const double xhat = (xr[j] - mf_) * s, dnorm = double{dy[r * n + j]} * w[j];
      a += dnorm;
      bb += dnorm * xhat;
      abs_dnorm += std::fabs(dnorm);
      abs_dnx += std::fabs(dnorm * xhat);
      sum_dy_xhat[j] += std::fabs(dy[r * n + j] * xhat);
      sum_dy[j] += std::fabs(dy[r * n + j]);
    }
    a /= n, bb /= n, abs_dnorm /= n, abs_dnx /= n;
    const double err_a = kU * ((D + 1) * abs_dnorm + 2 * std::fabs(a));
    const double err_b = kU * ((D + 4) * abs_dnx + 2 * std::fabs(bb));
    for (std::int64_t j = 0; j < n; ++j) {
      const std::int64_t i = r * n + j;
      const double xhat_exact = (xr[j] - m) * s;
      B.out[i] = std::fabs(w[j]) * (dm * s + kU * std::fabs(xhat_exact) * ((D + 5) / 2 + 6)) +
                 2 * kU * std::fabs(out_ref[i]);
      const double xhat = (xr[j] - mf_) * s, dnorm = double{dy[i]} * w[j];
      const double t = dnorm - a - xhat * bb;
      B.dx[i] = s * (kU * std::fabs(dnorm) + err_a + kU * std::fabs(dnorm - a) + 2 * kU * std::fabs(xhat * bb) +
                     std::fabs(xhat) * err_b + kU * std::fabs(t)) +
                2 * kU * std::fabs(dx_ref[i]);
    }
  }
  const double P = param_grad_depth(rows);
  for (std::int64_t j = 0; j < n; ++j) {
    B.dw.push_back(kU * ((P + 2) * sum_dy_xhat[j] + 2 * std::fabs(dw_ref[j])));
    B.db.push_back(kU * (P * sum_dy[j] + 2 * std::fabs(db_ref[j])));
  }
  return B;
}

// ---- RMSNorm bounds -----------------------------------------------------------
// Forward: mean(x^2) has relative error (D + 3) u (square, sum, * 1/n), rstd
// ((D + 3)/2 + 3) u; out = x s w two more roundings, the reference one.
// Backward: xhat = x s (u), dnorm (u), b = mean(dnorm xhat) err_b =
// u ((D + 3) mean|dnorm xhat| + 2|b|); dx = s (dnorm - xhat b).
Bounds rmsnorm_bounds(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& dy,
                      const std::vector<float>& rstd_f, const std::vector<float>& out_ref,
                      const std::vector<float>& dx_ref, const std::vector<float>& dw_ref, std::int64_t rows,
                      std::int64_t n) {
  Bounds B;
  B.out.resize(x.size());
  B.dx.resize(x.size());
  const double D = static_cast<double>(mf::testing::active_sum_depth(n));
  std::vector<double> sum_dy_xhat(n, 0.0);
  for (std::int64_t r = 0; r < rows; ++r) {
    const double s = rstd_f[r];
    B.rstd.push_back(kU * s * ((D + 3) / 2 + 4));
    double bb = 0, abs_dnx = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      const std::int64_t i = r * n + j;
      const double xhat = x[i] * s, dnorm = double{dy[i]} * w[j];
      bb += dnorm * xhat;
      abs_dnx += std::fabs(dnorm * xhat);
      sum_dy_xhat[j] += std::fabs(dy[i] * xhat);
    }
    bb /= n, abs_dnx /= n;
    const double err_b = kU * ((D + 3) * abs_dnx + 2 * std::fabs(bb));
    for (std::int64_t j = 0; j < n; ++j) {
      const std::int64_t i = r * n + j;
      B.out[i] = kU * std::fabs(out_ref[i]) * ((D + 3) / 2 + 6);
      const double xhat = x[i] * s, dnorm = double{dy[i]} * w[j];
      const double t = dnorm - xhat * bb;
      B.dx[i] = s * (std::fabs(xhat) * err_b + 2 * kU * std::fabs(xhat * bb) + kU * std::fabs(dnorm) +
                     kU * std::fabs(t)) +
                2 * kU * std::fabs(dx_ref[i]);
    }
  }
  const double P = param_grad_depth(rows);
  for (std::int64_t j = 0; j < n; ++j) B.dw.push_back(kU * ((P + 1) * sum_dy_xhat[j] + 2 * std::fabs(dw_ref[j])));
  return B;
}

void check_layernorm(std::int64_t rows, std::int64_t n, float offset, bool affine, const std::string& what) {
  const std::vector<float> x0 = random_normal(rows * n, 101, 2.0f);
  std::vector<float> x(x0);
  for (float& v : x) v += offset;
  std::vector<float> w = random_normal(n, 102), b = random_normal(n, 103);
  if (!affine) std::fill(w.begin(), w.end(), 1.0f), std::fill(b.begin(), b.end(), 0.0f);
  const float* wp = affine ? w.data() : nullptr;
  const float* bp = affine ? b.data() : nullptr;
  const std::vector<float> dy = random_normal(rows * n, 104);
  const float eps = 1e-5f;
  std::vector<float> out(x.size()), out_ref(x.size()), mean(rows), mean_ref(rows), rstd(rows), rstd_ref(rows);
  layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), wp, bp, rows, n, eps);
  reference::layernorm_forward(out_ref.data(), mean_ref.data(), rstd_ref.data(), x.data(), wp, bp, rows, n, eps);
  // Parameter gradients start non-zero: they must accumulate.
  const std::vector<float> dw0 = random_normal(n, 105), db0 = random_normal(n, 106);
  std::vector<float> dx(x.size()), dx_ref(x.size()), dw(dw0), dw_ref(dw0), db(db0), db_ref(db0);
  // Both backward kernels get the reference's mean/rstd.
  layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), wp, mean_ref.data(), rstd_ref.data(),
                     rows, n);
  reference::layernorm_backward(dx_ref.data(), dw_ref.data(), db_ref.data(), dy.data(), x.data(), wp,
                                mean_ref.data(), rstd_ref.data(), rows, n);
  const Bounds B =
      layernorm_bounds(x, w, b, dy, mean_ref, rstd_ref, out_ref, dx_ref, dw_ref, db_ref, rows, n);
  EXPECT_TRUE(within_bounds(out, mt::to_double(out_ref), B.out, "layernorm out " + what));
  EXPECT_TRUE(within_bounds(mean, mt::to_double(mean_ref), B.mean, "layernorm mean " + what));
  EXPECT_TRUE(within_bounds(rstd, mt::to_double(rstd_ref), B.rstd, "layernorm rstd " + what));
  EXPECT_TRUE(within_bounds(dx, mt::to_double(dx_ref), B.dx, "layernorm dx " + what));
  EXPECT_TRUE(within_bounds(dw, mt::to_double(dw_ref), B.dw, "layernorm dweight " + what));
  EXPECT_TRUE(within_bounds(db, mt::to_double(db_ref), B.db, "layernorm dbias " + what));
  // Without parameter gradients (another code path; GCC's default
  // -ffp-contract=fast may fuse it differently, so bounds, not bits).
  std::vector<float> dx2(x.size());
  layernorm_backward(dx2.data(), nullptr, nullptr, dy.data(), x.data(), wp, mean_ref.data(), rstd_ref.data(), rows,
                     n);
  EXPECT_TRUE(within_bounds(dx2, mt::to_double(dx_ref), B.dx, "layernorm dx, no param grads " + what));
}

void check_rmsnorm(std::int64_t rows, std::int64_t n, bool affine, const std::string& what) {
  const std::vector<float> x = random_normal(rows * n, 201, 2.0f);
  std::vector<float> w = random_normal(n, 202);
  if (!affine) std::fill(w.begin(), w.end(), 1.0f);
  const float* wp = affine ? w.data() : nullptr;
  const std::vector<float> dy = random_normal(rows * n, 204);
  const float eps = 1e-6f;
  std::vector<float> out(x.size()), out_ref(x.size()), rstd(rows), rstd_ref(rows);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), wp, rows, n, eps);
  reference::rmsnorm_forward(out_ref.data(), rstd_ref.data(), x.data(), wp, rows, n, eps);
  const std::vector<float> dw0 = random_normal(n, 205);
  std::vector<float> dx(x.size()), dx_ref(x.size()), dw(dw0), dw_ref(dw0);
  rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), wp, rstd_ref.data(), rows, n);
  reference::rmsnorm_backward(dx_ref.data(), dw_ref.data(), dy.data(), x.data(), wp, rstd_ref.data(), rows, n);
  const Bounds B = rmsnorm_bounds(x, w, dy, rstd_ref, out_ref, dx_ref, dw_ref, rows, n);
  EXPECT_TRUE(within_bounds(out, mt::to_double(out_ref), B.out, "rmsnorm out " + what));
  EXPECT_TRUE(within_bounds(rstd, mt::to_double(rstd_ref), B.rstd, "rmsnorm rstd " + what));
  EXPECT_TRUE(within_bounds(dx, mt::to_double(dx_ref), B.dx, "rmsnorm dx " + what));
  EXPECT_TRUE(within_bounds(dw, mt::to_double(dw_ref), B.dw, "rmsnorm dweight " + what));
  std::vector<float> dx2(x.size());
  rmsnorm_backward(dx2.data(), nullptr, dy.data(), x.data(), wp, rstd_ref.data(), rows, n);
  EXPECT_TRUE(within_bounds(dx2, mt::to_double(dx_ref), B.dx, "rmsnorm dx, no param grads " + what));
}

}  // namespace

TEST(KernelsLayerNorm, FastMatchesReferenceOnAwkwardShapes) {
  for (std::int64_t n : kAwkwardN)
    for (std::int64_t rows : kAwkwardRows)
      mf::testing::for_each_isa([&] { check_layernorm(rows, n, 0.0f, true, shape_name(rows, n)); });
}

TEST(KernelsLayerNorm, LargeOffsetAndNoAffine) {
  // mean >> std: the two-pass variance must not cancel.
  for (std::int64_t n : {17, 1000}) {
    mf::testing::for_each_isa([&] {
      check_layernorm(9, n, 300.0f, true, "offset 300 " + shape_name(9, n));
      check_layernorm(9, n, 0.0f, false, "no affine " + shape_name(9, n));
    });
  }
}

TEST(KernelsRmsNorm, FastMatchesReferenceOnAwkwardShapes) {
  for (std::int64_t n : kAwkwardN)
    for (std::int64_t rows : kAwkwardRows)
      mf::testing::for_each_isa([&] { check_rmsnorm(rows, n, true, shape_name(rows, n)); });
  mf::testing::for_each_isa([&] { check_rmsnorm(9, 100, false, "no weight [9, 100]"); });
}

TEST(KernelsLayerNorm, BackwardMatchesFiniteDifferences) {
  for (auto [rows, n] : {std::pair<std::int64_t, std::int64_t>{3, 7}, {2, 33}}) {
    Tensor x = Tensor::from_vector({rows, n}, random_normal(rows * n, 111, 1.5f));
    Tensor w = Tensor::from_vector({n}, random_normal(n, 112));
    Tensor b = Tensor::from_vector({n}, random_normal(n, 113));
    const Tensor wt = Tensor::from_vector({rows, n}, random_normal(rows * n, 114));
    const auto fwd = layernorm_forward(x, w, b, 1e-5f);
    Tensor dw = Tensor::zeros({n}), db = Tensor::zeros({n});
    const Tensor dx = layernorm_backward(wt, x, w, fwd.mean, fwd.rstd, dw, db);
    const auto r = mt::gradcheck([&] { return mt::weighted_sum(layernorm_forward(x, w, b, 1e-5f).out, wt); },
                                 {x, w, b}, {dx, dw, db});
    EXPECT_TRUE(r.ok) << shape_name(rows, n) << "\n" << r.report;
  }
}

TEST(KernelsRmsNorm, BackwardMatchesFiniteDifferences) {
  for (auto [rows, n] : {std::pair<std::int64_t, std::int64_t>{3, 7}, {2, 33}}) {
    Tensor x = Tensor::from_vector({rows, n}, random_normal(rows * n, 211, 1.5f));
    Tensor w = Tensor::from_vector({n}, random_normal(n, 212));
    const Tensor wt = Tensor::from_vector({rows, n}, random_normal(rows * n, 214));
    const auto fwd = rmsnorm_forward(x, w, 1e-6f);
    Tensor dw = Tensor::zeros({n});
    const Tensor dx = rmsnorm_backward(wt, x, w, fwd.rstd, dw);
    const auto r = mt::gradcheck([&] { return mt::weighted_sum(rmsnorm_forward(x, w, 1e-6f).out, wt); }, {x, w},
                                 {dx, dw});
    EXPECT_TRUE(r.ok) << shape_name(rows, n) << "\n" << r.report;
  }
}

TEST(KernelsNorms, DeterministicAcrossRunsAndThreads) {
  const std::int64_t rows = 67, n = 1000;  // parallel, and rows not a multiple of the parts
  const std::vector<float> x = random_normal(rows * n, 301, 2.0f), dy = random_normal(rows * n, 302);
  const std::vector<float> w = random_normal(n, 303), b = random_normal(n, 304);
  mt::expect_same_bits_across_threads([&] {
    std::vector<float> out(x.size()), mean(rows), rstd(rows), dx(x.size()), dw(n, 0.5f), db(n, 0.25f);
    layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, n, 1e-5f);
    layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(), rstd.data(),
                       rows, n);
    std::vector<float> all = out;
    for (const auto* v : {&mean, &rstd, &dx, &dw, &db}) all.insert(all.end(), v->begin(), v->end());
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), rows, n, 1e-6f);
    rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), rows, n);
    for (const auto* v : {&out, &rstd, &dx, &dw}) all.insert(all.end(), v->begin(), v->end());
    return all;
  });
}

TEST(KernelsNorms, TensorFrontDoorsFlattenLeadingDims) {
  const Tensor x = Tensor::from_vector({2, 3, 8}, random_normal(48, 401));
  const Tensor w = Tensor::from_vector({8}, random_normal(8, 402));
  const auto ln = layernorm_forward(x, w, Tensor(), 1e-5f);
  EXPECT_EQ(ln.out.shape(), x.shape());
  EXPECT_EQ(ln.mean.shape(), (Shape{2, 3}));
  EXPECT_EQ(ln.rstd.shape(), (Shape{2, 3}));
  std::vector<float> want(48);
  layernorm_forward(want.data(), nullptr, nullptr, x.to_vector().data(), w.to_vector().data(), nullptr, 6, 8, 1e-5f);
  EXPECT_TRUE(mt::same_bits(ln.out.to_vector(), want));
  const Tensor dx = layernorm_backward(x, x, w, ln.mean, ln.rstd, Tensor(), Tensor());
  EXPECT_EQ(dx.shape(), x.shape());
  const auto rn = rmsnorm_forward(x.transpose(0, 1), w, 1e-6f);  // not contiguous: copied
  EXPECT_EQ(rn.out.shape(), (Shape{3, 2, 8}));
  EXPECT_EQ(rn.rstd.shape(), (Shape{3, 2}));
  Tensor dw = Tensor::zeros({8});
  EXPECT_EQ(rmsnorm_backward(rn.out, x.transpose(0, 1), w, rn.rstd, dw).shape(), (Shape{3, 2, 8}));
}

TEST(KernelsNorms, FrontDoorErrorsNameOpAndTensor) {
  const Tensor x = Tensor::zeros({4, 8});
  const auto has = [](const std::string& msg, const std::string& part) {
    return msg.find(part) != std::string::npos ? ::testing::AssertionSuccess()
                                               : ::testing::AssertionFailure() << "'" << msg << "' lacks '" << part << "'";
  };
  EXPECT_TRUE(has(mt::error_of([&] { rmsnorm_forward(x, Tensor::zeros({8, 1}), 1e-6f); }),
                  "[rmsnorm_forward] tensor 'weight' must have 1 dimension but has 2"));
  EXPECT_TRUE(has(mt::error_of([&] { layernorm_forward(x, Tensor::zeros({8}), Tensor::zeros({7}), 1e-5f); }),
                  "[layernorm_forward] tensor 'bias' must have shape [8] but has [7]"));
  EXPECT_TRUE(has(mt::error_of([&] { layernorm_forward(x, Tensor(), Tensor(), -1.0f); }),
                  "[layernorm_forward] eps must be finite and >= 0"));
  EXPECT_TRUE(has(mt::error_of([&] { rmsnorm_forward(Tensor::zeros({4, 0}), Tensor(), 1e-6f); }),
                  "[rmsnorm_forward] tensor 'x' must have a non-empty last dimension"));
  EXPECT_TRUE(has(mt::error_of([&] { layernorm_forward(Tensor::zeros({4, 8}, DType::F16), Tensor(), Tensor(), 1e-5f); }),
                  "[layernorm_forward] tensor 'x' must be float32 but is float16"));
  const auto ln = layernorm_forward(x, Tensor(), Tensor(), 1e-5f);
  EXPECT_TRUE(has(mt::error_of([&] { layernorm_backward(x, x, Tensor(), Tensor::zeros({8}), ln.rstd, Tensor(), Tensor()); }),
                  "[layernorm_backward] tensor 'mean' must have shape [4] but has [8]"));
  EXPECT_TRUE(has(mt::error_of([&] { layernorm_backward(x, x, Tensor(), ln.mean, ln.rstd, Tensor::zeros({9}), Tensor()); }),
                  "[layernorm_backward] tensor 'dweight' must have shape [8] but has [9]"));
  EXPECT_TRUE(has(mt::error_of([&] { rmsnorm_backward(Tensor::zeros({4, 7}), x, Tensor(), ln.rstd, Tensor()); }),
                  "[rmsnorm_backward] tensor 'dout' must have shape [4, 8] but has [4, 7]"));
  EXPECT_TRUE(has(mt::error_of([&] { rmsnorm_backward(x, x, Tensor(), ln.rstd, Tensor::zeros({16}).slice(0, 0, 16).reshape({2, 8})); }),
                  "[rmsnorm_backward] tensor 'dweight' must have 1 dimension but has 2"));
}

// PyTorch 1.13 fixtures (float64 math, stored as float32): torch.layer_norm
// with its gradients; RMSNorm written out as x * rsqrt(mean(x^2) + eps) * w.
// Bounds: the fast-vs-reference ones; for the backward, which here gets the
// fixture's float mean/rstd, plus the effect of rounding those: xhat moves by
// dxh = s u |m| + u |xhat|, which reaches dx as s (dxh |b| + |xhat| mean(|dnorm| dxh)).
TEST(KernelsLayerNorm, MatchesPyTorchFixture) {
  const auto f = mt::load_fixture("kernels_layernorm");
  const Tensor &x = f.tensors.at("x"), &w = f.tensors.at("weight"), &b = f.tensors.at("bias"),
               &dout = f.tensors.at("dout");
  const float eps = f.tensors.at("eps").to_vector().at(0);
  const std::int64_t rows = x.size(0), n = x.size(1);
  const auto fwd = layernorm_forward(x, w, b, eps);
  Tensor dw = Tensor::zeros({n}), db = Tensor::zeros({n});
  const Tensor dx = layernorm_backward(dout, x, w, f.tensors.at("mean"), f.tensors.at("rstd"), dw, db);
  const auto v = [&](const char* name) { return f.tensors.at(name).to_vector(); };
  const std::vector<float> xv = x.to_vector(), wv = w.to_vector(), dyv = dout.to_vector();
  Bounds B = layernorm_bounds(xv, wv, b.to_vector(), dyv, v("mean"), v("rstd"), v("out"), v("dx"), v("dweight"),
                              v("dbias"), rows, n);
  const std::vector<float> mean = v("mean"), rstd = v("rstd");
  for (std::int64_t r = 0; r < rows; ++r) {
    const double s = rstd[r];
    double bb = 0, spread = 0;
    std::vector<double> dxh(n);
    for (std::int64_t j = 0; j < n; ++j) {
      const double xhat = (xv[r * n + j] - double{mean[r]}) * s, dnorm = double{dyv[r * n + j]} * wv[j];
      dxh[j] = s * kU * std::fabs(mean[r]) + kU * std::fabs(xhat);
      bb += dnorm * xhat / n;
      spread += std::fabs(dnorm) * dxh[j] / n;
    }
    for (std::int64_t j = 0; j < n; ++j) {
      const double xhat = (xv[r * n + j] - double{mean[r]}) * s;
      B.dx[r * n + j] += s * (dxh[j] * std::fabs(bb) + std::fabs(xhat) * spread);
      B.dw[j] += std::fabs(dyv[r * n + j]) * dxh[j];
    }
  }
  EXPECT_TRUE(within_bounds(fwd.out.to_vector(), mt::to_double(v("out")), B.out, "layernorm out"));
  EXPECT_TRUE(within_bounds(fwd.mean.to_vector(), mt::to_double(v("mean")), B.mean, "layernorm mean"));
  EXPECT_TRUE(within_bounds(fwd.rstd.to_vector(), mt::to_double(v("rstd")), B.rstd, "layernorm rstd"));
  EXPECT_TRUE(within_bounds(dx.to_vector(), mt::to_double(v("dx")), B.dx, "layernorm dx"));
  EXPECT_TRUE(within_bounds(dw.to_vector(), mt::to_double(v("dweight")), B.dw, "layernorm dweight"));
  EXPECT_TRUE(within_bounds(db.to_vector(), mt::to_double(v("dbias")), B.db, "layernorm dbias"));
}

TEST(KernelsRmsNorm, MatchesPyTorchFixture) {
  const auto f = mt::load_fixture("kernels_rmsnorm");
  const Tensor &x = f.tensors.at("x"), &w = f.tensors.at("weight"), &dout = f.tensors.at("dout");
  const float eps = f.tensors.at("eps").to_vector().at(0);
  const std::int64_t rows = x.size(0), n = x.size(1);
  const auto fwd = rmsnorm_forward(x, w, eps);
  Tensor dw = Tensor::zeros({n});
  const Tensor dx = rmsnorm_backward(dout, x, w, f.tensors.at("rstd"), dw);
  const auto v = [&](const char* name) { return f.tensors.at(name).to_vector(); };
  const std::vector<float> xv = x.to_vector(), wv = w.to_vector(), dyv = dout.to_vector(), rstd = v("rstd");
  Bounds B = rmsnorm_bounds(xv, wv, dyv, rstd, v("out"), v("dx"), v("dweight"), rows, n);
  for (std::int64_t r = 0; r < rows; ++r) {
    const double s = rstd[r];
    double bb = 0, spread = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      const double xhat = xv[r * n + j] * s;
      bb += double{dyv[r * n + j]} * wv[j] * xhat / n;
      spread += std::fabs(double{dyv[r * n + j]} * wv[j]) * kU * std::fabs(xhat) / n;
    }
    for (std::int64_t j = 0; j < n; ++j) {
      const double xhat = xv[r * n + j] * s;
      B.dx[r * n + j] += s * (kU * std::fabs(xhat) * std::fabs(bb) + std::fabs(xhat) * spread);
      B.dw[j] += std::fabs(dyv[r * n + j]) * kU * std::fabs(xhat);
    }
  }
  EXPECT_TRUE(within_bounds(fwd.out.to_vector(), mt::to_double(v("out")), B.out, "rmsnorm out"));
  EXPECT_TRUE(within_bounds(fwd.rstd.to_vector(), mt::to_double(v("rstd")), B.rstd, "rmsnorm rstd"));
  EXPECT_TRUE(within_bounds(dx.to_vector(), mt::to_double(v("dx")), B.dx, "rmsnorm dx"));
  EXPECT_TRUE(within_bounds(dw.to_vector(), mt::to_double(v("dweight")), B.dw, "rmsnorm dweight"));
}
