// FNet token mixing (src/nn/fnet): DFT path == FFT path == the float64
// reference on awkward shapes (primes, 1, 1000, Bluestein lengths), the
// backward vs finite differences and as the adjoint, PyTorch fixtures
// (torch.fft), determinism, and the front door's errors.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "nn/fnet/fnet.h"
#include "../support/bounds.h"
#include "../support/errors.h"
#include "../support/fixtures.h"
#include "../support/threads.h"
#include "testing/gradcheck.h"

using namespace mf;
namespace mt = mf::testing;

namespace {

constexpr FnetPath kPaths[] = {FnetPath::Dft, FnetPath::Fft};

Tensor run_fnet(const Tensor& x, std::int64_t batch, std::int64_t seq_len, FnetPath path) {
  Tensor y = Tensor::empty(x.shape());
  fnet_forward(y, x, batch, seq_len, path);
  return y;
}

// Tolerance per batch element, relative to ||x_b||_F (the size of a typical
// |y| element: each y is a sum of L C terms x * (+-1 at most)). The FFT's
// float error grows like log2(L C) (plus a few steps for the packing and the
// Bluestein chirps), the GEMM path's like the sum lengths L + C; the cos/sin
// tables add a rounding each. The factors (4, 1) are ~10x the observed
// worst errors and far below any semantic mistake (which is O(1)).
double tolerance(FnetPath path, std::int64_t L, std::int64_t C, double norm) {
  const double lg = std::log2(static_cast<double>(L)) + std::log2(static_cast<double>(C));
  const double u = mt::kU;
  return path == FnetPath::Fft ? 4 * u * (2 * lg + 8) * norm : u * static_cast<double>(L + C + 16) * norm;
}

// |got - want| within tolerance(path) per batch element; want in double.
void expect_close(const std::vector<float>& got, const std::vector<double>& want, const std::vector<float>& x,
                  std::int64_t B, std::int64_t L, std::int64_t C, FnetPath path, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (std::int64_t b = 0; b < B; ++b) {
    double norm = 0;
    for (std::int64_t i = b * L * C; i < (b + 1) * L * C; ++i) norm += double{x[i]} * x[i];
    norm = std::sqrt(norm);
    const double tol = tolerance(path, L, C, norm);
    double worst = 0;
    std::int64_t wi = 0;
    for (std::int64_t i = b * L * C; i < (b + 1) * L * C; ++i) {
      const double e = std::fabs(got[i] - want[i]);
      if (!(e <= worst)) worst = e, wi = i;
    }
    EXPECT_LE(worst, tol) << what << " " << fnet_path_name(path) << " B=" << B << " L=" << L << " C=" << C
                          << " batch " << b << ": element " << wi << " got " << got[wi] << " want " << want[wi];
  }
}

}  // namespace

TEST(Fnet, PathsMatchReferenceOnAwkwardShapes) {
  const std::vector<std::int64_t> sizes = {1, 2, 3, 7, 37, 64, 100, 128};
  std::uint64_t seed = 1;
  for (std::int64_t L : sizes)
    for (std::int64_t C : sizes) {
      const std::int64_t B = 1 + static_cast<std::int64_t>(seed % 3);
      const Tensor x = randn({B, L, C}, seed++);
      const std::vector<double> want = reference::fnet_forward(x, B, L);
      for (FnetPath p : kPaths) expect_close(run_fnet(x, B, L, p).to_vector(), want, x.to_vector(), B, L, C, p, "y");
    }
}

TEST(Fnet, PathsMatchReferenceAtLength1000) {
  // 1000 = 2^3 5^3 (mixed radix); 1009 is prime (Bluestein); 37 a direct odd radix.
  const std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {{1000, 7}, {3, 1000}, {1009, 37}, {37, 1009}};
  std::uint64_t seed = 100;
  for (auto [L, C] : shapes) {
    const std::int64_t B = 2;
    const Tensor x = randn({B * L, C}, seed++);  // the [B*L, C] form
    const std::vector<double> want = reference::fnet_forward(x, B, L);
    for (FnetPath p : kPaths) expect_close(run_fnet(x, B, L, p).to_vector(), want, x.to_vector(), B, L, C, p, "y");
  }
}

TEST(Fnet, DftPathEqualsFftPathAtLargeSize) {
  const std::int64_t B = 1, L = 1000, C = 1000;
  const Tensor x = randn({B, L, C}, 7);
  const std::vector<float> dft = run_fnet(x, B, L, FnetPath::Dft).to_vector();
  const std::vector<float> fft = run_fnet(x, B, L, FnetPath::Fft).to_vector();
  // Both against each other: the sum of the two tolerances.
  std::vector<double> fft_d(fft.begin(), fft.end());
  double norm = 0;
  for (float v : x.to_vector()) norm += double{v} * v;
  norm = std::sqrt(norm);
  double worst = 0;
  for (std::size_t i = 0; i < dft.size(); ++i) worst = std::max(worst, std::fabs(dft[i] - fft_d[i]));
  EXPECT_LE(worst, tolerance(FnetPath::Dft, L, C, norm) + tolerance(FnetPath::Fft, L, C, norm));
  EXPECT_GT(worst, 0.0);  // two different computations: not the same code run twice
}

TEST(Fnet, BackwardMatchesFiniteDifferences) {
  for (FnetPath p : kPaths) {
    SCOPED_TRACE(fnet_path_name(p));
    const std::int64_t B = 2, L = 7, C = 10;
    Tensor x = randn({B, L, C}, 11);
    const Tensor w = randn({B, L, C}, 12);
    Tensor dx = Tensor::empty({B, L, C});
    fnet_backward(dx, w, B, L, p);
    const auto r = mt::gradcheck([&] { return mt::weighted_sum(run_fnet(x, B, L, p), w); }, {x}, {dx});
    EXPECT_TRUE(r.ok) << r.report;
    EXPECT_GT(r.checked, 0);
  }
}

// <F x, w> = <x, F^T w> with F^T = backward, in double, on shapes where a
// transposition mistake (L <-> C, or a sign of the sine term) would show.
TEST(Fnet, BackwardIsTheAdjoint) {
  for (FnetPath p : kPaths)
    for (auto [L, C] : std::vector<std::pair<std::int64_t, std::int64_t>>{{5, 12}, {37, 8}, {64, 100}}) {
      const std::int64_t B = 2;
      const Tensor x = randn({B, L, C}, 21), w = randn({B, L, C}, 22);
      Tensor dx = Tensor::empty({B, L, C});
      fnet_backward(dx, w, B, L, p);
      const std::vector<float> fx = run_fnet(x, B, L, p).to_vector(), xv = x.to_vector(), wv = w.to_vector(),
                               dxv = dx.to_vector();
      double lhs = 0, rhs = 0, scale = 0;
      for (std::size_t i = 0; i < xv.size(); ++i) {
        lhs += double{fx[i]} * wv[i];
        rhs += double{xv[i]} * dxv[i];
        scale += std::fabs(double{fx[i]} * wv[i]);
      }
      EXPECT_NEAR(lhs, rhs, 1e-5 * scale) << fnet_path_name(p) << " L=" << L << " C=" << C;
    }
}

TEST(Fnet, MatchesTorchFixtures) {
  for (const char* name : {"fnet_b2_l16_c32", "fnet_b1_l37_c20", "fnet_b3_l7_c100", "fnet_b1_l128_c1"}) {
    SCOPED_TRACE(name);
    const SafetensorsContents f = mt::load_fixture(name);
    const Tensor &x = f.tensors.at("x"), &dout = f.tensors.at("dout");
    const std::int64_t B = x.size(0), L = x.size(1), C = x.size(2);
    const std::vector<float> out = f.tensors.at("out").to_vector(), dx_want = f.tensors.at("dx").to_vector(),
                             survey = f.tensors.at("survey_out").to_vector();
    for (FnetPath p : kPaths) {
      expect_close(run_fnet(x, B, L, p).to_vector(), mt::to_double(out), x.to_vector(), B, L, C, p, "out");
      Tensor dx = Tensor::empty(x.shape());
      fnet_backward(dx, dout, B, L, p);
      expect_close(dx.to_vector(), mt::to_double(dx_want), dout.to_vector(), B, L, C, p, "dx");
    }
    // The survey's variant (real part between the FFTs) is a different
    // function: the fixture tells the two apart (except for C = 1, where the
    // hidden transform is the identity and both agree).
    double diff = 0, size = 0;
    for (std::size_t i = 0; i < out.size(); ++i) {
      diff = std::max(diff, double{std::fabs(out[i] - survey[i])});
      size = std::max(size, double{std::fabs(out[i])});
    }
    if (C > 1) {
      EXPECT_GT(diff, 0.1 * size);
    }
  }
}

TEST(Fnet, AutoPicksByLengthAndMatchesThePathItNames) {
  EXPECT_EQ(fnet_auto_path(16, 64), FnetPath::Dft);
  EXPECT_EQ(fnet_auto_path(16, 128), FnetPath::Dft);
  EXPECT_EQ(fnet_auto_path(128, 64), FnetPath::Fft);
  EXPECT_EQ(fnet_auto_path(127, 128), FnetPath::Dft);
  EXPECT_EQ(fnet_auto_path(16, 256), FnetPath::Fft);
  EXPECT_EQ(fnet_auto_path(8192, 256), FnetPath::Fft);
  EXPECT_EQ(fnet_auto_path(16, 1 << 16), FnetPath::Fft);  // beyond the table: the hidden DFT alone is too dear
  EXPECT_STREQ(fnet_path_name(FnetPath::Auto), "auto");
  EXPECT_STREQ(fnet_path_name(FnetPath::Dft), "dft");
  EXPECT_STREQ(fnet_path_name(FnetPath::Fft), "fft");
  for (auto [L, C] : std::vector<std::pair<std::int64_t, std::int64_t>>{{16, 64}, {512, 64}}) {
    const Tensor x = randn({1, L, C}, 31);
    const FnetPath chosen = fnet_auto_path(L, C);
    EXPECT_NE(chosen, FnetPath::Auto);
    EXPECT_TRUE(mt::same_bits(run_fnet(x, 1, L, FnetPath::Auto).to_vector(), run_fnet(x, 1, L, chosen).to_vector()));
  }
}

// The FFT's block width depends on the thread count (fft_task_width); each
// column's arithmetic must not. At L = 64, C = 512 the hidden stage runs
// blocks of 16 columns on 2 threads and 32 on one.
TEST(Fnet, FftPathIsDeterministicAcrossThreads) {
  for (auto [B, L, C] : std::vector<std::array<std::int64_t, 3>>{{2, 200, 96}, {1, 64, 512}}) {
    const Tensor x = randn({B, L, C}, 41);
    mt::expect_same_bits_across_threads([&] { return run_fnet(x, B, L, FnetPath::Fft).to_vector(); });
  }
}

TEST(Fnet, BadInputIsRefusedByName) {
  const Tensor x = randn({2, 3, 4}, 1);
  const Tensor y = Tensor::empty({2, 3, 4});
  auto err = [](auto f) { return mt::error_of(f); };
  EXPECT_NE(err([&] { fnet_forward(y, randn({24}, 1), 2, 3); }).find("[fnet] x must have 2 dimensions"),
            std::string::npos);
  EXPECT_NE(err([&] { fnet_forward(y, randn({1, 2, 3, 4}, 1), 2, 3); }).find("but has 4"), std::string::npos);
  EXPECT_NE(err([&] { fnet_forward(y, x.to(DType::BF16), 2, 3); }).find("[fnet] x must be float32 but is bfloat16"),
            std::string::npos);
  EXPECT_NE(err([&] { fnet_forward(Tensor::zeros({2, 3, 4}, DType::I32), x, 2, 3); }).find("y must be float32"),
            std::string::npos);
  EXPECT_NE(err([&] { fnet_forward(y, x.reshape({6, 4}), 2, 4); }).find("has 6 rows but batch * seq_len = 2 * 4 = 8"),
            std::string::npos);
  EXPECT_NE(err([&] { fnet_forward(y, x, 3, 2); }).find("[fnet] x has shape [2, 3, 4] but batch = 3 and seq_len = 2"),
            std::string::npos);
  EXPECT_NE(err([&] { fnet_forward(Tensor::empty({2, 3, 5}), x, 2, 3); }).find("[fnet] y must have the shape of x"),
            std::string::npos);
  EXPECT_NE(err([&] { fnet_forward(Tensor::empty({2, 4, 3}).transpose(1, 2), x, 2, 3); })
                .find("[fnet] y must be contiguous"),
            std::string::npos);
  EXPECT_NE(err([&] { fnet_forward(y, x, 0, 3); }).find("batch and seq_len must be >= 1"), std::string::npos);
  EXPECT_NE(err([&] { fnet_forward(x, x, 2, 3); }).find("[fnet] y must not overlap x"), std::string::npos);
  EXPECT_NE(err([&] { fnet_forward(y, Tensor(), 2, 3); }).find("[fnet] x is undefined"), std::string::npos);
  EXPECT_NE(err([&] { fnet_backward(y, x.reshape({4, 6}), 2, 3); }).find("[fnet_backward] dy has 4 rows"),
            std::string::npos);
  // A non-contiguous input is accepted (copied); its result equals the packed one.
  const Tensor xt = randn({2, 4, 3}, 2).transpose(1, 2);
  EXPECT_TRUE(mt::same_bits(run_fnet(xt, 2, 3, FnetPath::Fft).to_vector(),
                            run_fnet(xt.contiguous(), 2, 3, FnetPath::Fft).to_vector()));
}
