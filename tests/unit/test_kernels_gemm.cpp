// GEMM: every backend vs the float64 reference on random and awkward shapes,
// all transposes, padded leading dimensions, alpha/beta edge cases, strided
// batches; argument errors; backend override; matmul on tensors.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/threads.h"
#include "kernels/gemm.h"
#include "kernels/gemm_backends.h"
#include "kernels/matmul.h"

using namespace mf;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kUnitRoundoff = 0x1p-24;  // float32

std::vector<GemmBackend> fast_backends() {
  std::vector<GemmBackend> v{GemmBackend::OpenBLAS};
  if (gemm_backend_available(GemmBackend::OneDNN)) v.push_back(GemmBackend::OneDNN);
  return v;
}

std::vector<float> random_vec(std::size_t n, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = rng.normal();
  return v;
}

// A stored row-major matrix [rows, cols] with leading dimension ld >= cols.
struct Stored {
  std::int64_t rows, cols, ld;
  std::vector<float> v;
};
Stored make_stored(std::int64_t rows, std::int64_t cols, std::int64_t pad, std::uint64_t seed) {
  const std::int64_t ld = std::max<std::int64_t>(1, cols + pad);
  return {rows, cols, ld, random_vec(static_cast<std::size_t>(std::max<std::int64_t>(1, rows * ld)), seed)};
}

struct Case {
  Trans ta = Trans::N, tb = Trans::N;
  std::int64_t m = 1, n = 1, k = 1;
  float alpha = 1.0f, beta = 0.0f;
  std::int64_t pad_a = 0, pad_b = 0, pad_c = 0;
};

std::string describe(const Case& c) {
  return str_cat("ta=", c.ta == Trans::N ? "N" : "T", " tb=", c.tb == Trans::N ? "N" : "T", " m=", c.m, " n=", c.n,
                 " k=", c.k, " alpha=", c.alpha, " beta=", c.beta, " pads=", c.pad_a, ",", c.pad_b, ",", c.pad_c);
}

// Runs `backend` on the case and checks it against the float64 reference with
// the classical error bound of a length-k dot product: |error| <= gamma *
// (|alpha| sum_p |a_ip||b_pj| + |beta||c_ij|), gamma = (k + 4) u: k roundings
// along the dot product (k-1 additions, one product; FMA only tightens this),
// one each for alpha*, beta*, the final addition, and the reference's own
// rounding to float. Also checks that C's padding is untouched and that
// beta == 0 ignores NaN in C. Returns the number of elements out of bounds.
int run_case(GemmBackend backend, const Case& c, std::uint64_t seed, bool expect_pass = true) {
  const Stored a = make_stored(c.ta == Trans::N ? c.m : c.k, c.ta == Trans::N ? c.k : c.m, c.pad_a, seed);
  const Stored b = make_stored(c.tb == Trans::N ? c.k : c.n, c.tb == Trans::N ? c.n : c.k, c.pad_b, seed + 1);
  Stored c0 = make_stored(c.m, c.n, c.pad_c, seed + 2);
  const float sentinel = 12345.0f;
  for (std::int64_t i = 0; i < c.m; ++i) {
    for (std::int64_t j = 0; j < c0.ld; ++j) {
      float& x = c0.v[static_cast<std::size_t>(i * c0.ld + j)];
      if (j >= c.n) x = sentinel;
      else if (c.beta == 0.0f) x = kNaN;  // must not propagate
    }
  }
  std::vector<float> got = c0.v, want = c0.v;
  gemm_using(backend, c.ta, c.tb, c.m, c.n, c.k, c.alpha, a.v.data(), a.ld, b.v.data(), b.ld, c.beta, got.data(),
             c0.ld);
  reference::gemm(c.ta, c.tb, c.m, c.n, c.k, c.alpha, a.v.data(), a.ld, b.v.data(), b.ld, c.beta, want.data(), c0.ld);
  auto a_at = [&](std::int64_t i, std::int64_t p) {
    return c.ta == Trans::N ? a.v[static_cast<std::size_t>(i * a.ld + p)] : a.v[static_cast<std::size_t>(p * a.ld + i)];
  };
  auto b_at = [&](std::int64_t p, std::int64_t j) {
    return c.tb == Trans::N ? b.v[static_cast<std::size_t>(p * b.ld + j)] : b.v[static_cast<std::size_t>(j * b.ld + p)];
  };
  const double gamma = static_cast<double>(c.k + 4) * kUnitRoundoff;
  int bad = 0;
  for (std::int64_t i = 0; i < c.m; ++i) {
    for (std::int64_t j = 0; j < c0.ld; ++j) {
      const std::size_t idx = static_cast<std::size_t>(i * c0.ld + j);
      if (j >= c.n) {
        EXPECT_EQ(got[idx], sentinel) << "padding of C written at (" << i << ", " << j << ") " << describe(c);
        continue;
      }
      double mag = 0;
      for (std::int64_t p = 0; p < c.k; ++p) mag += std::fabs(static_cast<double>(a_at(i, p)) * b_at(p, j));
      mag *= std::fabs(c.alpha);
      if (c.beta != 0.0f) mag += std::fabs(static_cast<double>(c.beta) * c0.v[idx]);
      const double bound = gamma * mag + 1e-37;  // + the smallest normals, for all-zero rows
      const double err = std::fabs(static_cast<double>(got[idx]) - want[idx]);
      if (!(err <= bound)) {
        ++bad;
        if (expect_pass && bad <= 3)
          ADD_FAILURE() << gemm_backend_name(backend) << " " << describe(c) << " at (" << i << ", " << j
                        << "): got " << got[idx] << ", want " << want[idx] << ", error " << err << " > bound "
                        << bound;
      }
    }
  }
  return bad;
}

// Sets a backend for one test and restores the automatic choice afterwards.
struct BackendGuard {
  explicit BackendGuard(GemmBackend be) { set_gemm_backend(be); }
  ~BackendGuard() { detail::reset_gemm_backend_choice(); }
};

}  // namespace

TEST(Gemm, ReferenceOnAHandExample) {
  // A = [[1, 2, 3], [4, 5, 6]], B = [[1, 0], [0, 1], [1, 1]] -> A B = [[4, 5], [10, 11]].
  const std::vector<float> a{1, 2, 3, 4, 5, 6}, b{1, 0, 0, 1, 1, 1};
  std::vector<float> c{1, 1, 1, 1};
  reference::gemm(Trans::N, Trans::N, 2, 2, 3, 2.0f, a.data(), 3, b.data(), 2, -1.0f, c.data(), 2);
  EXPECT_EQ(c, (std::vector<float>{7, 9, 19, 21}));
  // The same product through transposed storage: A^T stored [3, 2], B^T stored [2, 3].
  const std::vector<float> at{1, 4, 2, 5, 3, 6}, bt{1, 0, 1, 0, 1, 1};
  reference::gemm(Trans::T, Trans::T, 2, 2, 3, 1.0f, at.data(), 2, bt.data(), 3, 0.0f, c.data(), 2);
  EXPECT_EQ(c, (std::vector<float>{4, 5, 10, 11}));
}

TEST(Gemm, EveryBackendMatchesReferenceOnAwkwardShapes) {
  const std::int64_t dims[] = {0, 1, 7, 33, 257};
  std::uint64_t seed = 1;
  for (GemmBackend be : fast_backends()) {
    for (Trans ta : {Trans::N, Trans::T}) {
      for (Trans tb : {Trans::N, Trans::T}) {
        for (std::int64_t m : dims) {
          for (std::int64_t n : dims) {
            for (std::int64_t k : dims) {
              if (m * n * k > 257 * 33 * 33) continue;  // keep the float64 reference cheap
              Case c;
              c.ta = ta, c.tb = tb, c.m = m, c.n = n, c.k = k;
              run_case(be, c, seed += 3);
            }
          }
        }
      }
    }
  }
}

TEST(Gemm, LargeSquareAndAttentionShapes) {
  for (GemmBackend be : fast_backends()) {
    run_case(be, Case{Trans::N, Trans::N, 257, 257, 257}, 11);
    run_case(be, Case{Trans::N, Trans::T, 300, 260, 64}, 12);   // Q K^T
    run_case(be, Case{Trans::N, Trans::N, 64, 80, 700}, 13);    // P V
    run_case(be, Case{Trans::T, Trans::N, 96, 64, 300}, 14);    // weight gradient X^T dY
  }
}

TEST(Gemm, AlphaBetaAndLeadingDimensions) {
  const float alphas[] = {1.0f, -0.5f, 0.0f, 3.0f};
  const float betas[] = {0.0f, 1.0f, 0.25f, -2.0f};
  std::uint64_t seed = 100;
  for (GemmBackend be : fast_backends()) {
    for (float alpha : alphas) {
      for (float beta : betas) {
        for (Trans ta : {Trans::N, Trans::T}) {
          for (Trans tb : {Trans::N, Trans::T}) {
            run_case(be, Case{ta, tb, 33, 7, 57, alpha, beta, 3, 5, 2}, seed += 3);
            run_case(be, Case{ta, tb, 1, 65, 1, alpha, beta, 1, 0, 7}, seed += 3);
          }
        }
      }
    }
  }
}

TEST(Gemm, AlphaZeroAndEmptyKDoNotReadAOrB) {
  const std::vector<float> nan_a(64, kNaN), nan_b(64, kNaN);
  for (GemmBackend be : {GemmBackend::OpenBLAS, GemmBackend::OneDNN, GemmBackend::Reference}) {
    if (!gemm_backend_available(be)) continue;
    std::vector<float> c{1, 2, 3, 4};
    gemm_using(be, Trans::N, Trans::N, 2, 2, 4, 0.0f, nan_a.data(), 4, nan_b.data(), 2, 0.5f, c.data(), 2);
    EXPECT_EQ(c, (std::vector<float>{0.5f, 1, 1.5f, 2})) << gemm_backend_name(be);
    std::vector<float> d{kNaN, kNaN, 5, 6};
    gemm_using(be, Trans::N, Trans::N, 2, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 0.0f, d.data(), 2);
    EXPECT_EQ(d, (std::vector<float>{0, 0, 0, 0})) << gemm_backend_name(be);
    gemm_using(be, Trans::N, Trans::N, 0, 2, 3, 1.0f, nullptr, 3, nullptr, 2, 0.0f, nullptr, 2);  // nothing to do
  }
}

TEST(Gemm, ToleranceCanFail) {
  // The bound is tight enough to catch a wrong transpose of a square B, and
  // a 1-ulp-scale perturbation is not hidden by it for k = 1.
  const std::int64_t n = 16;
  const std::vector<float> a = random_vec(n * n, 5), b = random_vec(n * n, 6);
  std::vector<float> good(n * n), wrong(n * n);
  reference::gemm(Trans::N, Trans::N, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, good.data(), n);
  gemm_using(GemmBackend::OpenBLAS, Trans::N, Trans::T, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, wrong.data(), n);
  int differ = 0;
  for (std::int64_t i = 0; i < n * n; ++i) {
    double mag = 0;
    for (std::int64_t p = 0; p < n; ++p) mag += std::fabs(static_cast<double>(a[i / n * n + p]) * b[p * n + i % n]);
    differ += std::fabs(static_cast<double>(wrong[i]) - good[i]) > (n + 4) * kUnitRoundoff * mag;
  }
  EXPECT_GT(differ, n * n / 2);
}

TEST(Gemm, DeterministicForFixedThreads) {
  const std::int64_t m = 123, n = 77, k = 301;
  const auto a = random_vec(m * k, 1), b = random_vec(k * n, 2);
  for (GemmBackend be : fast_backends()) {
    std::vector<float> c1(m * n), c2(m * n);
    gemm_using(be, Trans::N, Trans::N, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c1.data(), n);
    gemm_using(be, Trans::N, Trans::N, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c2.data(), n);
    EXPECT_EQ(0, std::memcmp(c1.data(), c2.data(), c1.size() * sizeof(float))) << gemm_backend_name(be);
  }
}

TEST(Gemm, BatchedWithStridesMatchesPerMatrixReference) {
  struct B {
    std::int64_t m, n, k, count;
    Trans ta, tb;
    bool broadcast_b;
  };
  // Small products take the parallel-over-batch path, large ones the loop.
  const B cases[] = {{16, 16, 16, 9, Trans::N, Trans::N, false},
                     {5, 33, 7, 4, Trans::T, Trans::N, true},
                     {64, 48, 80, 3, Trans::N, Trans::T, false},
                     {200, 190, 180, 2, Trans::T, Trans::T, true},
                     {3, 4, 5, 1, Trans::N, Trans::N, false},
                     {3, 4, 5, 0, Trans::N, Trans::N, false}};
  for (GemmBackend be : {GemmBackend::OpenBLAS, GemmBackend::OneDNN, GemmBackend::Reference}) {
    if (!gemm_backend_available(be)) continue;
    for (const auto& cs : cases) {
      const std::int64_t lda = (cs.ta == Trans::N ? cs.k : cs.m) + 2, ldb = (cs.tb == Trans::N ? cs.n : cs.k) + 1;
      const std::int64_t ldc = cs.n + 3;
      const std::int64_t sa = (cs.ta == Trans::N ? cs.m : cs.k) * lda + 5;
      const std::int64_t sb = cs.broadcast_b ? 0 : (cs.tb == Trans::N ? cs.k : cs.n) * ldb + 1;
      const std::int64_t sc = cs.m * ldc + 4;
      const std::int64_t count = std::max<std::int64_t>(cs.count, 1);
      const auto a = random_vec(static_cast<std::size_t>(sa * count), 21);
      const auto b = random_vec(static_cast<std::size_t>(std::max(sb, (cs.tb == Trans::N ? cs.k : cs.n) * ldb) * count), 22);
      auto c = random_vec(static_cast<std::size_t>(sc * count), 23);
      auto want = c;
      gemm_batched_using(be, cs.ta, cs.tb, cs.m, cs.n, cs.k, 0.75f, a.data(), lda, sa, b.data(), ldb, sb, 0.5f,
                         c.data(), ldc, sc, cs.count);
      for (std::int64_t i = 0; i < cs.count; ++i)
        reference::gemm(cs.ta, cs.tb, cs.m, cs.n, cs.k, 0.75f, a.data() + i * sa, lda, b.data() + i * sb, ldb, 0.5f,
                        want.data() + i * sc, ldc);
      // Elements outside the C matrices (padding, gaps) must be untouched: compare everything.
      double max_err = 0;
      for (std::size_t i = 0; i < c.size(); ++i) max_err = std::max(max_err, static_cast<double>(std::fabs(c[i] - want[i])));
      // |a b| terms ~ sqrt(k) for N(0,1) data; a loose-but-derived cap: (k+4) u * (k * 16 + |beta c| 8).
      const double cap = (cs.k + 4) * kUnitRoundoff * (16.0 * static_cast<double>(cs.k) + 8.0);
      EXPECT_LE(max_err, cap) << gemm_backend_name(be) << " m=" << cs.m << " n=" << cs.n << " k=" << cs.k
                              << " count=" << cs.count;
    }
  }
}

TEST(Gemm, BatchedIsDeterministicAcrossCalls) {
  const std::int64_t m = 24, n = 24, k = 24, count = 32;
  const auto a = random_vec(m * k * count, 31), b = random_vec(k * n * count, 32);
  for (GemmBackend be : fast_backends()) {
    std::vector<float> c1(m * n * count), c2(m * n * count);
    for (auto* c : {&c1, &c2})
      gemm_batched_using(be, Trans::N, Trans::N, m, n, k, 1.0f, a.data(), k, m * k, b.data(), n, k * n, 0.0f,
                         c->data(), n, m * n, count);
    EXPECT_EQ(0, std::memcmp(c1.data(), c2.data(), c1.size() * sizeof(float))) << gemm_backend_name(be);
  }
}

namespace {
void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}
}  // namespace

TEST(Gemm, ArgumentErrorsNameTheArgument) {
  std::vector<float> a(100), b(100), c(100);
  const float* pa = a.data();
  const float* pb = b.data();
  float* pc = c.data();
  expect_error([&] { gemm(Trans::N, Trans::N, -1, 2, 2, 1, pa, 2, pb, 2, 0, pc, 2); }, "[gemm] m must be >= 0, got -1");
  expect_error([&] { gemm(Trans::N, Trans::N, 2, -3, 2, 1, pa, 2, pb, 2, 0, pc, 2); }, "n must be >= 0, got -3");
  expect_error([&] { gemm(Trans::N, Trans::N, 2, 2, -4, 1, pa, 2, pb, 2, 0, pc, 2); }, "k must be >= 0, got -4");
  expect_error([&] { gemm(Trans::N, Trans::N, 3, 4, 5, 1, pa, 4, pb, 4, 0, pc, 4); }, "lda = 4 must be >= max(1, 5)");
  expect_error([&] { gemm(Trans::T, Trans::N, 3, 4, 5, 1, pa, 2, pb, 4, 0, pc, 4); }, "lda = 2 must be >= max(1, 3)");
  expect_error([&] { gemm(Trans::N, Trans::N, 3, 4, 5, 1, pa, 5, pb, 3, 0, pc, 4); }, "ldb = 3 must be >= max(1, 4)");
  expect_error([&] { gemm(Trans::N, Trans::T, 3, 4, 5, 1, pa, 5, pb, 4, 0, pc, 4); }, "ldb = 4 must be >= max(1, 5)");
  expect_error([&] { gemm(Trans::N, Trans::N, 3, 4, 5, 1, pa, 5, pb, 4, 0, pc, 3); }, "ldc = 3 must be >= max(1, n = 4)");
  expect_error([&] { gemm(Trans::N, Trans::N, 3, 4, 0, 1, pa, 0, pb, 4, 0, pc, 4); }, "lda = 0 must be >= max(1, 0)");
  expect_error([&] { gemm(Trans::N, Trans::N, 3, 4, 5, 1, nullptr, 5, pb, 4, 0, pc, 4); }, "a is null");
  expect_error([&] { gemm(Trans::N, Trans::N, 3, 4, 5, 1, pa, 5, nullptr, 4, 0, pc, 4); }, "b is null");
  expect_error([&] { gemm(Trans::N, Trans::N, 3, 4, 5, 1, pa, 5, pb, 4, 0, nullptr, 4); }, "c is null");
  expect_error([&] { gemm(Trans::N, Trans::N, 3'000'000'000LL, 1, 1, 1, pa, 1, pb, 1, 0, pc, 1); }, "2^31-1");
  expect_error([&] { reference::gemm(Trans::N, Trans::N, 3, 4, 5, 1, pa, 4, pb, 4, 0, pc, 4); },
               "[reference::gemm] lda = 4");
  auto batched = [&](std::int64_t sa, std::int64_t sb, std::int64_t sc, std::int64_t count) {
    gemm_batched(Trans::N, Trans::N, 2, 3, 4, 1, pa, 4, sa, pb, 3, sb, 0, pc, 3, sc, count);
  };
  expect_error([&] { batched(8, 12, 6, -1); }, "[gemm_batched] count must be >= 0, got -1");
  expect_error([&] { batched(-8, 12, 6, 2); }, "stride_a must be >= 0, got -8");
  expect_error([&] { batched(8, -1, 6, 2); }, "stride_b must be >= 0");
  expect_error([&] { batched(8, 12, 5, 2); }, "stride_c = 5 makes the C matrices overlap: each spans (m-1)*ldc + n = 6");
  batched(8, 12, 0, 1);  // one matrix: stride_c is never used
}

TEST(Gemm, BackendOverrideAndEnvironment) {
  {
    BackendGuard guard(GemmBackend::Reference);
    EXPECT_EQ(gemm_backend(), GemmBackend::Reference);
    EXPECT_EQ(gemm_backend_selection(), "reference (set_gemm_backend)");
    run_case(GemmBackend::Auto, Case{Trans::N, Trans::T, 9, 10, 11}, 77);
  }
  EXPECT_EQ(parse_gemm_backend("OneDNN"), GemmBackend::OneDNN);
  EXPECT_EQ(parse_gemm_backend("openblas"), GemmBackend::OpenBLAS);
  expect_error([] { parse_gemm_backend("mkl"); }, "must be one of auto, openblas, onednn, reference; got 'mkl'");

  const char* old = std::getenv("MODFORMER_GEMM_BACKEND");
  const std::string saved = old ? old : "";
  ::setenv("MODFORMER_GEMM_BACKEND", "reference", 1);
  detail::reset_gemm_backend_choice();
  EXPECT_EQ(gemm_backend(), GemmBackend::Reference);
  EXPECT_EQ(gemm_backend_selection(), "reference (MODFORMER_GEMM_BACKEND)");
  ::setenv("MODFORMER_GEMM_BACKEND", "fastest", 1);
  detail::reset_gemm_backend_choice();
  expect_error([] { gemm_backend(); }, "[gemm] MODFORMER_GEMM_BACKEND must be one of");
  expect_error([] { gemm_backend(); }, "got 'fastest'");  // reported again, not forgotten
  set_gemm_backend(GemmBackend::OpenBLAS);  // an explicit choice wins over the environment
  EXPECT_EQ(gemm_backend(), GemmBackend::OpenBLAS);
  if (old) ::setenv("MODFORMER_GEMM_BACKEND", saved.c_str(), 1);
  else ::unsetenv("MODFORMER_GEMM_BACKEND");
  detail::reset_gemm_backend_choice();
  const GemmBackend chosen = gemm_backend();
  EXPECT_TRUE(chosen == GemmBackend::OpenBLAS || chosen == GemmBackend::OneDNN || old != nullptr);
  EXPECT_NE(gemm_backend_selection().find(gemm_backend_name(chosen)), std::string::npos);
}

TEST(Gemm, ConcurrentFirstUseIsSafe) {
  detail::reset_gemm_backend_choice();
  std::vector<GemmBackend> seen(4, GemmBackend::Auto);
#pragma omp parallel for num_threads(4)
  for (int i = 0; i < 4; ++i) seen[static_cast<std::size_t>(i)] = gemm_backend();
  for (auto be : seen) EXPECT_EQ(be, seen[0]);
  EXPECT_NE(seen[0], GemmBackend::Auto);
}

// ---- matmul ------------------------------------------------------------------

namespace {
// Reference for matmul: per-matrix reference::gemm on contiguous copies.
Tensor matmul_ref(const Tensor& a, const Tensor& b, Trans ta, Trans tb) {
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  const bool batched = a.dim() == 3 || b.dim() == 3;
  const std::int64_t count = batched ? (a.dim() == 3 ? a.size(0) : b.size(0)) : 1;
  const std::int64_t m = ta == Trans::N ? a.size(-2) : a.size(-1), k = ta == Trans::N ? a.size(-1) : a.size(-2);
  const std::int64_t n = tb == Trans::N ? b.size(-1) : b.size(-2);
  Tensor c = batched ? Tensor::zeros({count, m, n}) : Tensor::zeros({m, n});
  for (std::int64_t i = 0; i < count; ++i) {
    const float* pa = ac.data<float>() + (a.dim() == 3 ? i * m * k : 0);
    const float* pb = bc.data<float>() + (b.dim() == 3 ? i * k * n : 0);
    reference::gemm(ta, tb, m, n, k, 1.0f, pa, std::max<std::int64_t>(1, ac.size(-1)), pb,
                    std::max<std::int64_t>(1, bc.size(-1)), 0.0f, c.data<float>() + i * m * n, std::max<std::int64_t>(1, n));
  }
  return c;
}

void expect_close(const Tensor& got, const Tensor& want, std::int64_t k) {
  ASSERT_EQ(got.shape(), want.shape());
  // N(0,1) inputs: sum |a||b| <= k * max|a| max|b|; with max|x| < 6 for these sizes: 36 k.
  EXPECT_LE(max_abs_diff(got, want), (k + 4) * kUnitRoundoff * 36.0 * static_cast<double>(k) + 1e-30);
}
}  // namespace

TEST(Matmul, TwoDAllTransposesAndViews) {
  const Tensor a = randn({7, 5}, 1), b = randn({5, 9}, 2);
  expect_close(matmul(a, b), matmul_ref(a, b, Trans::N, Trans::N), 5);
  const Tensor at = randn({5, 7}, 3), bt = randn({9, 5}, 4);
  expect_close(matmul(at, bt, Trans::T, Trans::T), matmul_ref(at, bt, Trans::T, Trans::T), 5);
  // A transposed view is read in place (stride 1 on the row axis).
  const Tensor view = at.transpose(0, 1);  // [7, 5]
  expect_close(matmul(view, b), matmul_ref(view, b, Trans::N, Trans::N), 5);
  expect_close(matmul(view, bt, Trans::N, Trans::T), matmul_ref(view, bt, Trans::N, Trans::T), 5);
  // A column slice has padded rows; a strided slice needs a copy.
  const Tensor wide = randn({7, 12}, 5);
  const Tensor padded = wide.slice(1, 2, 7);  // [7, 5], row stride 12
  expect_close(matmul(padded, b), matmul_ref(padded, b, Trans::N, Trans::N), 5);
  const Tensor big = randn({10, 9}, 6);
  const Tensor rows = big.permute({1, 0}).slice(1, 0, 5);  // [9, 5] with strides [1, 9]
  expect_close(matmul(a, rows, Trans::N, Trans::T), matmul_ref(a, rows, Trans::N, Trans::T), 5);
  EXPECT_EQ(matmul(Tensor::zeros({3, 0}), Tensor::zeros({0, 4})).to_vector(), std::vector<float>(12, 0.0f));
}

TEST(Matmul, BatchedAndBroadcast) {
  const Tensor a = randn({3, 6, 8}, 7), b = randn({3, 8, 5}, 8), w = randn({8, 5}, 9);
  expect_close(matmul(a, b), matmul_ref(a, b, Trans::N, Trans::N), 8);
  expect_close(matmul(a, w), matmul_ref(a, w, Trans::N, Trans::N), 8);
  const Tensor q = randn({4, 10, 16}, 10), kk = randn({4, 12, 16}, 11);
  expect_close(matmul(q, kk, Trans::N, Trans::T), matmul_ref(q, kk, Trans::N, Trans::T), 16);
  const Tensor x = randn({6, 8}, 12);
  expect_close(matmul(x, b.slice(2, 0, 5)), matmul_ref(x, b, Trans::N, Trans::N), 8);
  // A batch of transposed views: [3, 8, 6] seen as [3, 6, 8].
  const Tensor at = randn({3, 8, 6}, 13).transpose(1, 2);
  expect_close(matmul(at, b), matmul_ref(at, b, Trans::N, Trans::N), 8);
  EXPECT_EQ(matmul(a, b).shape(), (Shape{3, 6, 5}));
}

TEST(Matmul, ShapeErrorsNameOpAndShapes) {
  expect_error([] { matmul(Tensor::zeros({2, 3}), Tensor::zeros({4, 5})); },
               "[matmul] inner dimensions differ (3 vs 4) for a [2, 3] (N) and b [4, 5] (N)");
  expect_error([] { matmul(Tensor::zeros({2, 3}), Tensor::zeros({2, 5}), Trans::N, Trans::T); },
               "inner dimensions differ (3 vs 5) for a [2, 3] (N) and b [2, 5] (T)");
  expect_error([] { matmul(Tensor::zeros({2, 2, 3}), Tensor::zeros({3, 3, 5})); },
               "[matmul] batch sizes differ (2 vs 3)");
  expect_error([] { matmul(Tensor::zeros({3}), Tensor::zeros({3, 5})); }, "[matmul] operands must be 2-D or 3-D");
  expect_error([] { matmul(Tensor(), Tensor::zeros({3, 5})); }, "[matmul] tensor 'a' is undefined");
  expect_error([] { matmul(Tensor::zeros({2, 3}, DType::I32), Tensor::zeros({3, 5})); }, "matmul");
}
