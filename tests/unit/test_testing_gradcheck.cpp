// The finite-difference checker itself: exact on low-degree polynomials
// (also where the float grid is coarse), catches wrong gradients, restores
// its inputs, and checks distinct elements.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "../support/errors.h"
#include "core/error.h"
#include "core/rng.h"
#include "testing/gradcheck.h"

using namespace mf;
namespace mt = mf::testing;

namespace {
// L(x) = sum_i w_i x_i^2 + c_i x_i^3 in double; dL/dx_i = 2 w_i x_i + 3 c_i x_i^2.
struct Cubic {
  std::vector<double> w, c;
  double operator()(const Tensor& x) const {
    const float* p = x.data<float>();
    double s = 0;
    for (std::size_t i = 0; i < w.size(); ++i) s += w[i] * p[i] * p[i] + c[i] * p[i] * p[i] * p[i];
    return s;
  }
  Tensor grad(const Tensor& x) const {
    std::vector<float> g(w.size());
    const float* p = x.data<float>();
    for (std::size_t i = 0; i < w.size(); ++i) g[i] = static_cast<float>(2 * w[i] * p[i] + 3 * c[i] * p[i] * p[i]);
    return Tensor::from_vector(x.shape(), g);
  }
};
}  // namespace

// Inputs near 1000 have a float spacing of 6e-5, so x + h with h = 1e-2 is
// not x + h: a checker that divides by the requested h instead of using the
// offsets it really applied is off by up to 3e-3 relative here.
TEST(TestingGradcheck, ExactForCubicsEvenOnACoarseFloatGrid) {
  const std::int64_t n = 40;
  Cubic f;
  std::vector<float> xv(n);
  for (std::int64_t i = 0; i < n; ++i) {
    f.w.push_back(rng_normal(5, 0, i));
    f.c.push_back(0.01 * rng_normal(5, 1, i));
    xv[i] = 1000.0f + 7.0f * rng_normal(5, 2, i);
  }
  Tensor x = Tensor::from_vector({n}, xv);
  const Tensor g = f.grad(x);
  mt::GradcheckOptions opt;
  opt.atol = 0;
  opt.rtol = 1e-6;  // float rounding of g (6e-8) + double rounding of L / h
  const auto r = mt::gradcheck([&] { return f(x); }, {x}, {g}, opt);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_EQ(r.checked, n);
  EXPECT_EQ(x.to_vector(), xv) << "inputs must be restored";
}

TEST(TestingGradcheck, CatchesAWrongGradient) {
  Cubic f{{1.0, 2.0, 3.0}, {0.0, 0.0, 0.0}};
  Tensor x = Tensor::from_vector({3}, {0.5f, -1.0f, 2.0f});
  Tensor g = f.grad(x);
  g.data<float>()[1] *= 1.1f;
  const auto r = mt::gradcheck([&] { return f(x); }, {x}, {g});
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.report.find("input 0 element 1"), std::string::npos) << r.report;
}

TEST(TestingGradcheck, SamplesDistinctElements) {
  const std::int64_t n = 60;
  Cubic f{std::vector<double>(n, 1.0), std::vector<double>(n, 0.0)};
  Tensor x = Tensor::from_vector({n}, std::vector<float>(n, 0.25f));
  mt::GradcheckOptions opt;
  opt.max_checks_per_input = 50;
  int evaluations = 0;
  const auto r = mt::gradcheck(
      [&] {
        ++evaluations;
        return f(x);
      },
      {x}, {f.grad(x)}, opt);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_EQ(r.checked, 50);
  EXPECT_EQ(evaluations, 4 * 50);
}

TEST(TestingGradcheck, RejectsAStepBelowTheFloatSpacing) {
  Cubic f{{1.0}, {0.0}};
  Tensor x = Tensor::from_vector({1}, {1e6f});  // spacing 0.0625
  mt::GradcheckOptions opt;
  opt.step = 1e-3;
  EXPECT_ERROR("step 0.001 is below the float spacing at input 0 element 0", mt::gradcheck([&] { return f(x); }, {x}, {f.grad(x)}, opt));
}
