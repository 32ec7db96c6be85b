// Softmax / log-softmax kernels: fast vs reference under derived error
// bounds on awkward shapes, large logits and masked (-inf) rows; backward vs
// finite differences; determinism; front-door errors; PyTorch fixtures.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/softmax.h"
#include "../support/bounds.h"
#include "../support/isa_variants.h"
#include "../support/fixtures.h"
#include "../support/threads.h"
#include "testing/gradcheck.h"

using namespace mf;
namespace mt = mf::testing;
using mf::testing::kU;
using mf::testing::random_normal;
using mf::testing::within_bounds;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
const std::vector<std::int64_t> kAwkwardN = {1, 3, 7, 15, 16, 17, 64, 1000, 4097};
const std::vector<std::int64_t> kAwkwardRows = {1, 2, 3, 5, 8, 13, 16, 17, 32, 33};

// Error bounds of the fast kernels, in units of u = 2^-24, one row at a time.
// D = mf::testing::active_sum_depth(n) bounds the relative error of the kernel's float sum
// of non-negative terms; the exp is < 1 ulp (2u); every "+ |ref|" term is the
// reference's own rounding to float.

// softmax: p_i (1 + d) with d from x_i - m (|x_i - m| u through exp), exp
// (2u), the sum (D u plus the p-weighted mean of its terms' errors,
// (A + 2) u with A = sum_j p_j |x_j - m|), 1/s (u), the product (u), ref (u).
std::vector<double> softmax_forward_bound(const std::vector<float>& x, const std::vector<float>& y,
                                          std::int64_t rows, std::int64_t n) {
  std::vector<double> b(x.size());
  const double D = static_cast<double>(mf::testing::active_sum_depth(n));
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = &x[r * n];
    const float* yr = &y[r * n];
    double m = -INFINITY, A = 0;
    for (std::int64_t j = 0; j < n; ++j) m = std::max(m, double{xr[j]});
    for (std::int64_t j = 0; j < n; ++j)
      if (xr[j] != kNegInf) A += yr[j] * std::fabs(xr[j] - m);
    for (std::int64_t j = 0; j < n; ++j)
      b[r * n + j] = xr[j] == kNegInf ? 0.0 : kU * yr[j] * (std::fabs(xr[j] - m) + A + D + 7);
  }
  return b;
}

// softmax backward: dot = sum_j dy_j y_j has error (D + 1) u S, S = sum_j |dy_j y_j|
// (products, then the sum); dy_i - dot and the product by y_i round once each.
std::vector<double> softmax_backward_bound(const std::vector<float>& dy, const std::vector<float>& y,
                                           const std::vector<float>& ref, std::int64_t rows, std::int64_t n) {
  std::vector<double> b(y.size());
  const double D = static_cast<double>(mf::testing::active_sum_depth(n));
  for (std::int64_t r = 0; r < rows; ++r) {
    double dot = 0, S = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      dot += double{dy[r * n + j]} * y[r * n + j];
      S += std::fabs(double{dy[r * n + j]} * y[r * n + j]);
    }
    for (std::int64_t j = 0; j < n; ++j) {
      const std::int64_t i = r * n + j;
      b[i] = kU * (std::fabs(y[i]) * ((D + 1) * S + std::fabs(dy[i] - dot)) + 2 * std::fabs(ref[i]));
    }
  }
  return b;
}

// log-softmax: (x_i - m) rounds (u |x_i - m|); log(s) inherits s's relative
// error (D + A + 4) u as an absolute error, plus logf's 2u |log s|; the final
// subtraction and the reference round (u |y_i| each).
std::vector<double> log_softmax_forward_bound(const std::vector<float>& x, const std::vector<float>& y,
                                              std::int64_t rows, std::int64_t n) {
  std::vector<double> b(x.size());
  const double D = static_cast<double>(mf::testing::active_sum_depth(n));
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = &x[r * n];
    double m = -INFINITY, A = 0, s = 0;
    for (std::int64_t j = 0; j < n; ++j) m = std::max(m, double{xr[j]});
    for (std::int64_t j = 0; j < n; ++j) s += std::exp(xr[j] - m);
    for (std::int64_t j = 0; j < n; ++j)
      if (xr[j] != kNegInf) A += std::exp(xr[j] - m) / s * std::fabs(xr[j] - m);
    for (std::int64_t j = 0; j < n; ++j) {
      const std::int64_t i = r * n + j;
      b[i] = xr[j] == kNegInf ? 0.0 : kU * (std::fabs(xr[j] - m) + D + A + 4 + 2 * std::log(s) + 2 * std::fabs(y[i]));
    }
  }
  return b;
}

// log-softmax backward: s = sum_j dy_j has error D u sum_j |dy_j|; exp(y_i) 2u;
// the fused multiply-subtract and the reference round once each.
std::vector<double> log_softmax_backward_bound(const std::vector<float>& dy, const std::vector<float>& y,
                                               const std::vector<float>& ref, std::int64_t rows, std::int64_t n) {
  std::vector<double> b(y.size());
  const double D = static_cast<double>(mf::testing::active_sum_depth(n));
  for (std::int64_t r = 0; r < rows; ++r) {
    double s = 0, sa = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      s += dy[r * n + j];
      sa += std::fabs(dy[r * n + j]);
    }
    for (std::int64_t j = 0; j < n; ++j) {
      const std::int64_t i = r * n + j;
      b[i] = kU * (std::exp(double{y[i]}) * (D * sa + 2 * std::fabs(s)) + 2 * std::fabs(ref[i]));
    }
  }
  return b;
}

// Runs all four kernels, fast and reference, on x [rows, n] and checks the bounds.
void check_all(const std::vector<float>& x, std::int64_t rows, std::int64_t n, const std::string& what) {
  mf::testing::for_each_isa([&] {
    const std::size_t size = x.size();
    const std::vector<float> dy = random_normal(rows * n, 77, 1.0f, 3);
    std::vector<float> fast(size), ref(size), dfast(size), dref(size);

    // softmax
    softmax_forward(fast.data(), x.data(), rows, n);
    reference::softmax_forward(ref.data(), x.data(), rows, n);
    EXPECT_TRUE(within_bounds(fast, mt::to_double(ref), softmax_forward_bound(x, ref, rows, n),
                              "softmax_forward " + what));
    // Both backward kernels get the same y (the reference's) so only their own error is measured.
    softmax_backward(dfast.data(), dy.data(), ref.data(), rows, n);
    reference::softmax_backward(dref.data(), dy.data(), ref.data(), rows, n);
    EXPECT_TRUE(within_bounds(dfast, mt::to_double(dref), softmax_backward_bound(dy, ref, dref, rows, n),
                              "softmax_backward " + what));

    // log-softmax
    log_softmax_forward(fast.data(), x.data(), rows, n);
    reference::log_softmax_forward(ref.data(), x.data(), rows, n);
    EXPECT_TRUE(within_bounds(fast, mt::to_double(ref), log_softmax_forward_bound(x, ref, rows, n),
                              "log_softmax_forward " + what));
    log_softmax_backward(dfast.data(), dy.data(), ref.data(), rows, n);
    reference::log_softmax_backward(dref.data(), dy.data(), ref.data(), rows, n);
    EXPECT_TRUE(within_bounds(dfast, mt::to_double(dref), log_softmax_backward_bound(dy, ref, dref, rows, n),
                              "log_softmax_backward " + what));
  });
}

std::string shape_name(std::int64_t rows, std::int64_t n) {
  return str_cat("[", rows, ", ", n, "]");
}

}  // namespace

TEST(KernelsSoftmax, FastMatchesReferenceOnAwkwardShapes) {
  for (std::int64_t n : kAwkwardN)
    for (std::int64_t rows : kAwkwardRows) check_all(random_normal(rows * n, 11, 3.0f), rows, n, shape_name(rows, n));
}

TEST(KernelsSoftmax, LargeLogits) {
  for (std::int64_t n : {7, 64, 1000}) {
    std::vector<float> x = random_normal(5 * n, 12, 30.0f);  // logits * 30: max subtraction is essential
    x[3] = 1e4f;                                             // one dominant logit
    check_all(x, 5, n, "x*30 " + shape_name(5, n));
    std::vector<float> out(x.size());
    softmax_forward(out.data(), x.data(), 5, n);
    for (float v : out) ASSERT_TRUE(std::isfinite(v));
  }
}

TEST(KernelsSoftmax, MaskedRowsGiveZerosNotNaN) {
  const std::int64_t rows = 6, n = 37;
  std::vector<float> x = random_normal(rows * n, 13, 2.0f);
  for (std::int64_t j = 0; j < n; ++j) x[1 * n + j] = kNegInf;  // fully masked rows 1 and 4
  for (std::int64_t j = 0; j < n; ++j) x[4 * n + j] = kNegInf;
  for (std::int64_t j = 0; j < n; j += 3) x[2 * n + j] = kNegInf;  // partly masked row
  check_all(x, rows, n, "masked");

  std::vector<float> y(x.size()), ly(x.size()), dx(x.size());
  const std::vector<float> dy = random_normal(rows * n, 14);
  softmax_forward(y.data(), x.data(), rows, n);
  log_softmax_forward(ly.data(), x.data(), rows, n);
  softmax_backward(dx.data(), dy.data(), y.data(), rows, n);
  for (std::int64_t j = 0; j < n; ++j) {
    EXPECT_EQ(y[1 * n + j], 0.0f);
    EXPECT_EQ(y[4 * n + j], 0.0f);
    EXPECT_EQ(ly[1 * n + j], kNegInf);
    EXPECT_EQ(dx[1 * n + j], 0.0f);  // no gradient flows into a fully masked row
    if (j % 3 == 0) {
      EXPECT_EQ(y[2 * n + j], 0.0f);
    }
  }
  double sum = 0;
  for (std::int64_t j = 0; j < n; ++j) sum += y[2 * n + j];
  EXPECT_NEAR(sum, 1.0, 1e-6);
  // A single-element row is exactly 1.
  float one = 0, in = -3.5f;
  softmax_forward(&one, &in, 1, 1);
  EXPECT_EQ(one, 1.0f);
}

TEST(KernelsSoftmax, InPlace) {
  const std::int64_t rows = 4, n = 33;
  std::vector<float> x = random_normal(rows * n, 15), y(x.size());
  softmax_forward(y.data(), x.data(), rows, n);
  softmax_forward(x.data(), x.data(), rows, n);
  EXPECT_TRUE(mt::same_bits(x, y));
}

TEST(KernelsSoftmax, BackwardMatchesFiniteDifferences) {
  for (auto [rows, n] : {std::pair<std::int64_t, std::int64_t>{3, 7}, {2, 17}, {1, 64}}) {
    Tensor x = Tensor::from_vector({rows, n}, random_normal(rows * n, 21, 2.0f));
    const Tensor w = Tensor::from_vector({rows, n}, random_normal(rows * n, 22));
    for (bool log : {false, true}) {
      auto fwd = [&] { return log ? log_softmax_forward(x) : softmax_forward(x); };
      const Tensor y = fwd();
      const Tensor dx = log ? log_softmax_backward(w, y) : softmax_backward(w, y);
      const auto r = mt::gradcheck([&] { return mt::weighted_sum(fwd(), w); }, {x}, {dx});
      EXPECT_TRUE(r.ok) << (log ? "log_softmax " : "softmax ") << shape_name(rows, n) << "\n" << r.report;
    }
  }
}

TEST(KernelsSoftmax, DeterministicAcrossRunsAndThreads) {
  const std::int64_t rows = 64, n = 1000;  // large enough to run in parallel
  const std::vector<float> x = random_normal(rows * n, 31, 4.0f), dy = random_normal(rows * n, 32);
  mt::expect_same_bits_across_threads([&] {
    std::vector<float> y(x.size()), dx(x.size()), ly(x.size()), ldx(x.size());
    softmax_forward(y.data(), x.data(), rows, n);
    softmax_backward(dx.data(), dy.data(), y.data(), rows, n);
    log_softmax_forward(ly.data(), x.data(), rows, n);
    log_softmax_backward(ldx.data(), dy.data(), ly.data(), rows, n);
    y.insert(y.end(), dx.begin(), dx.end());
    y.insert(y.end(), ly.begin(), ly.end());
    y.insert(y.end(), ldx.begin(), ldx.end());
    return y;
  });
}

TEST(KernelsSoftmax, TensorFrontDoor) {
  // Leading dimensions are flattened; non-contiguous inputs are copied.
  Tensor x = Tensor::from_vector({2, 3, 5}, random_normal(30, 41));
  const Tensor y = softmax_forward(x);
  std::vector<float> want(30);
  softmax_forward(want.data(), x.to_vector().data(), 6, 5);
  EXPECT_EQ(y.shape(), x.shape());
  EXPECT_TRUE(mt::same_bits(y.to_vector(), want));
  const Tensor xt = x.transpose(1, 2);  // [2, 5, 3], not contiguous
  const Tensor yt = softmax_forward(xt);
  std::vector<float> want_t(30);
  softmax_forward(want_t.data(), xt.contiguous().to_vector().data(), 10, 3);
  EXPECT_TRUE(mt::same_bits(yt.to_vector(), want_t));
  EXPECT_EQ(softmax_backward(y, y).shape(), x.shape());
  EXPECT_EQ(log_softmax_backward(y, log_softmax_forward(x)).shape(), x.shape());
}

TEST(KernelsSoftmax, FrontDoorErrorsNameOpAndTensor) {
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const Tensor x = Tensor::zeros({2, 3});
  EXPECT_NE(message([&] { softmax_forward(Tensor::zeros({2, 3}, DType::I32)); })
                .find("[softmax_forward] tensor 'x' must be float32 but is int32"),
            std::string::npos);
  EXPECT_NE(message([&] { softmax_forward(Tensor()); }).find("[softmax_forward] tensor 'x' is undefined"),
            std::string::npos);
  EXPECT_NE(message([&] { log_softmax_forward(Tensor::zeros({})); })
                .find("[log_softmax_forward] tensor 'x' must have at least 1 dimension"),
            std::string::npos);
  EXPECT_NE(message([&] { softmax_backward(Tensor::zeros({3, 2}), x); })
                .find("[softmax_backward] tensor 'dout' must have shape [2, 3] but has [3, 2]"),
            std::string::npos);
  EXPECT_NE(message([&] { log_softmax_backward(x, Tensor::zeros({2, 3}, DType::BF16)); })
                .find("[log_softmax_backward] tensor 'out' must be float32"),
            std::string::npos);
}

// PyTorch 1.13 (float64, rounded to float32): torch.softmax / log_softmax and
// their gradients for a fixed upstream gradient (tools/fixtures/kernels.py).
// Bounds: the fast-vs-reference bounds, whose "+ |ref|" terms cover the
// fixture's rounding.
TEST(KernelsSoftmax, MatchesPyTorchFixture) {
  const auto f = mt::load_fixture("kernels_softmax");
  const Tensor& x = f.tensors.at("x");
  const std::int64_t rows = x.size(0), n = x.size(1);
  const std::vector<float> xv = x.to_vector(), dy = f.tensors.at("dout").to_vector();
  const std::vector<float> y = softmax_forward(x).to_vector();
  const std::vector<float> want_y = f.tensors.at("softmax_out").to_vector();
  EXPECT_TRUE(within_bounds(y, mt::to_double(want_y), softmax_forward_bound(xv, want_y, rows, n), "softmax"));
  const std::vector<float> want_dx = f.tensors.at("softmax_dx").to_vector();
  const std::vector<float> dx = softmax_backward(f.tensors.at("dout"), softmax_forward(x)).to_vector();
  // The fast y differs from torch's within the forward bound; dx = y (dy - dot) carries it.
  std::vector<double> bdx = softmax_backward_bound(dy, want_y, want_dx, rows, n);
  const std::vector<double> by = softmax_forward_bound(xv, want_y, rows, n);
  for (std::int64_t r = 0; r < rows; ++r) {
    double dot = 0, dot_err = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      dot += double{dy[r * n + j]} * want_y[r * n + j];
      dot_err += std::fabs(dy[r * n + j]) * by[r * n + j];
    }
    for (std::int64_t j = 0; j < n; ++j) {
      const std::int64_t i = r * n + j;
      bdx[i] += by[i] * std::fabs(dy[i] - dot) + std::fabs(want_y[i]) * dot_err;
    }
  }
  EXPECT_TRUE(within_bounds(dx, mt::to_double(want_dx), bdx, "softmax dx"));

  const std::vector<float> ly = log_softmax_forward(x).to_vector();
  const std::vector<float> want_ly = f.tensors.at("log_softmax_out").to_vector();
  EXPECT_TRUE(
      within_bounds(ly, mt::to_double(want_ly), log_softmax_forward_bound(xv, want_ly, rows, n), "log_softmax"));
  const std::vector<float> want_ldx = f.tensors.at("log_softmax_dx").to_vector();
  const std::vector<float> ldx = log_softmax_backward(f.tensors.at("dout"), log_softmax_forward(x)).to_vector();
  // exp(y) carries y's absolute error as a relative one.
  std::vector<double> bldx = log_softmax_backward_bound(dy, want_ly, want_ldx, rows, n);
  const std::vector<double> bly = log_softmax_forward_bound(xv, want_ly, rows, n);
  for (std::int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (std::int64_t j = 0; j < n; ++j) s += dy[r * n + j];
    for (std::int64_t j = 0; j < n; ++j)
      bldx[r * n + j] += std::exp(double{want_ly[r * n + j]}) * bly[r * n + j] * std::fabs(s);
  }
  EXPECT_TRUE(within_bounds(ldx, mt::to_double(want_ldx), bldx, "log_softmax dx"));
}
