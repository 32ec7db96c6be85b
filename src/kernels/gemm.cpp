// The GEMM front door: argument checks, the BLAS edge cases (m/n = 0,
// k = 0, alpha = 0), strided batches, and the backend choice (explicit,
// from MODFORMER_GEMM_BACKEND, or measured once per process).
#include "kernels/gemm.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "core/profile.h"
#include "core/threads.h"
#include "kernels/gemm_backends.h"

namespace mf {
namespace {

// Tuning constants; `modformer bench gemm` measures both (its "batched" section
// and its "auto" header line). A batch runs in parallel over its matrices (each
// product single-threaded) when one product has at most this many FLOPs
// (2*m*n*k): 2 * 128^3 ~ 4.2e6. A starting value: on the shared 2-core build
// machine the batched section was too noisy to confirm it; re-check on a quiet one.
constexpr double kBatchParallelMaxFlops = 4.2e6;
// Auto selection keeps OpenBLAS unless oneDNN's total time is this many times
// smaller; a margin, so that near-ties do not flip the choice between runs.
constexpr double kGemmSwitchMargin = 1.10;

// ---- argument checks -------------------------------------------------------

const char* trans_name(Trans t) { return t == Trans::N ? "N" : "T"; }

}  // namespace

namespace detail {
void check_gemm_args(const char* op, Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                     const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, const float* c,
                     std::int64_t ldc) {
  constexpr std::int64_t kMax = INT_MAX;  // 32-bit BLAS interfaces
  MF_CHECK(m >= 0, "[", op, "] m must be >= 0, got ", m);
  MF_CHECK(n >= 0, "[", op, "] n must be >= 0, got ", n);
  MF_CHECK(k >= 0, "[", op, "] k must be >= 0, got ", k);
  MF_CHECK(m <= kMax && n <= kMax && k <= kMax, "[", op, "] m, n, k must be <= 2^31-1, got m=", m, " n=", n,
           " k=", k);
  MF_CHECK(lda <= kMax && ldb <= kMax && ldc <= kMax, "[", op, "] lda, ldb, ldc must be <= 2^31-1, got lda=", lda,
           " ldb=", ldb, " ldc=", ldc);
  // Row-major storage: A is [m, k] (N) or [k, m] (T); lda >= its column count.
  const std::int64_t a_cols = ta == Trans::N ? k : m;
  const std::int64_t b_cols = tb == Trans::N ? n : k;
  MF_CHECK(lda >= std::max<std::int64_t>(1, a_cols), "[", op, "] lda = ", lda,
           " must be >= max(1, ", a_cols, ") (A is stored ", ta == Trans::N ? "[m, k]" : "[k, m]", " = [",
           ta == Trans::N ? m : k, ", ", a_cols, "] with ta = ", trans_name(ta), ")");
  MF_CHECK(ldb >= std::max<std::int64_t>(1, b_cols), "[", op, "] ldb = ", ldb,
           " must be >= max(1, ", b_cols, ") (B is stored ", tb == Trans::N ? "[k, n]" : "[n, k]", " = [",
           tb == Trans::N ? k : n, ", ", b_cols, "] with tb = ", trans_name(tb), ")");
  MF_CHECK(ldc >= std::max<std::int64_t>(1, n), "[", op, "] ldc = ", ldc, " must be >= max(1, n = ",
           n, ") (C is stored [m, n] = [", m, ", ", n, "])");
  const bool writes_c = m > 0 && n > 0;
  const bool reads_ab = writes_c && k > 0 && alpha != 0.0f;
  MF_CHECK(!writes_c || c != nullptr, "[", op, "] c is null but C is [", m, ", ", n, "]");
  MF_CHECK(!reads_ab || a != nullptr, "[", op, "] a is null but op(A) is [", m, ", ", k, "]");
  MF_CHECK(!reads_ab || b != nullptr, "[", op, "] b is null but op(B) is [", k, ", ", n, "]");
  (void)beta;
}
}  // namespace detail

namespace {

// C = beta * C without reading C when beta == 0 (BLAS semantics).
void scale_c(float beta, float* c, std::int64_t m, std::int64_t n, std::int64_t ldc) {
  if (beta == 1.0f) return;
  for (std::int64_t i = 0; i < m; ++i) {
    float* row = c + i * ldc;
    if (beta == 0.0f) {
      std::fill(row, row + n, 0.0f);
    } else {
      for (std::int64_t j = 0; j < n; ++j) row[j] *= beta;
    }
  }
}

// One validated product on a resolved backend (never Auto).
void run_one(GemmBackend be, Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
             const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
             std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (be == GemmBackend::Reference) {
    detail::gemm_reference_unchecked(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  if (k == 0 || alpha == 0.0f) {
    scale_c(beta, c, m, n, ldc);
    return;
  }
  if (be == GemmBackend::OneDNN) {
    detail::gemm_onednn_unchecked(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    detail::gemm_openblas_unchecked(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

// ---- backend choice ----------------------------------------------------------

struct Choice {
  GemmBackend backend = GemmBackend::Auto;
  std::string how;
};

// The backend in use once resolved (Auto: not yet). Every gemm call reads it;
// only the slow path (first use, set_gemm_backend) takes the mutex.
std::atomic<GemmBackend> g_active{GemmBackend::Auto};
std::mutex g_mu;
bool g_env_read = false;                           // guarded by g_mu
GemmBackend g_requested = GemmBackend::Auto;       // guarded by g_mu
std::string g_requested_how;                       // guarded by g_mu
std::once_flag g_measure_once;
Choice g_measured;  // written once inside g_measure_once

void check_available(GemmBackend be, const char* source) {
  MF_CHECK(gemm_backend_available(be), "[gemm] backend '", gemm_backend_name(be), "' (from ", source,
           ") is not available: modformer was built without oneDNN (install libdnnl-dev and configure with "
           "MODFORMER_WITH_ONEDNN=ON)");
}

// Times OpenBLAS and oneDNN on shapes the engine runs a lot: a square
// product, attention's Q K^T (k = head dim) and P V (n = head dim).
Choice measure_backends() {
  if (!detail::onednn_built_in()) return {GemmBackend::OpenBLAS, "openblas (oneDNN not built in)"};
  struct Shape3 {
    std::int64_t m, n, k;
    Trans tb;
  };
  const Shape3 shapes[] = {{512, 512, 512, Trans::N}, {1024, 1024, 64, Trans::T}, {1024, 64, 1024, Trans::N}};
  std::size_t na = 0, nb = 0, nc = 0;
  for (const auto& s : shapes) {
    na = std::max<std::size_t>(na, static_cast<std::size_t>(s.m * s.k));
    nb = std::max<std::size_t>(nb, static_cast<std::size_t>(s.k * s.n));
    nc = std::max<std::size_t>(nc, static_cast<std::size_t>(s.m * s.n));
  }
  std::vector<float> a(na), b(nb), c(nc);
  for (std::size_t i = 0; i < na; ++i) a[i] = static_cast<float>(static_cast<int>(i % 17) - 8) * 0.0625f;
  for (std::size_t i = 0; i < nb; ++i) b[i] = static_cast<float>(static_cast<int>(i % 13) - 6) * 0.0625f;
  const GemmBackend backends[2] = {GemmBackend::OpenBLAS, GemmBackend::OneDNN};
  double total[2] = {0.0, 0.0};
  for (const auto& s : shapes) {
    const std::int64_t ldb = s.tb == Trans::N ? s.n : s.k;
    double best[2] = {1e30, 1e30};
    for (int rep = 0; rep < 3; ++rep) {  // rep 0 warms up (JIT, page faults)
      for (int i = 0; i < 2; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        run_one(backends[i], Trans::N, s.tb, s.m, s.n, s.k, 1.0f, a.data(), s.k, b.data(), ldb, 0.0f, c.data(), s.n);
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (rep > 0) best[i] = std::min(best[i], dt);
      }
    }
    total[0] += best[0];
    total[1] += best[1];
  }
  const bool onednn = total[1] * kGemmSwitchMargin < total[0];
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s (measured with %d thread(s): openblas %.1f ms, onednn %.1f ms)",
                onednn ? "onednn" : "openblas", num_threads(), total[0] * 1e3, total[1] * 1e3);
  return {onednn ? GemmBackend::OneDNN : GemmBackend::OpenBLAS, buf};
}

Choice measure_once() {
  std::call_once(g_measure_once, [] { g_measured = measure_backends(); });
  return g_measured;
}

// Requires g_mu. Reads the environment variable (once; a bad value throws and
// is reported again on the next use), then resolves g_active.
GemmBackend resolve_locked() {
  if (!g_env_read) {
    const char* v = std::getenv("MODFORMER_GEMM_BACKEND");
    if (v != nullptr && *v != '\0') {
      const GemmBackend be = parse_gemm_backend(v, "MODFORMER_GEMM_BACKEND");
      if (be != GemmBackend::Auto) check_available(be, "MODFORMER_GEMM_BACKEND");
      g_requested = be;
      g_requested_how = "MODFORMER_GEMM_BACKEND";
    }
    g_env_read = true;
  }
  const GemmBackend be = g_requested != GemmBackend::Auto ? g_requested : measure_once().backend;
  g_active.store(be, std::memory_order_release);
  return be;
}

GemmBackend resolve(GemmBackend be) {
  if (be != GemmBackend::Auto) {
    check_available(be, "the caller");
    return be;
  }
  return gemm_backend();
}

}  // namespace

std::string gemm_backend_name(GemmBackend backend) {
  switch (backend) {
    case GemmBackend::Auto: return "auto";
    case GemmBackend::OpenBLAS: return "openblas";
    case GemmBackend::OneDNN: return "onednn";
    case GemmBackend::Reference: return "reference";
  }
  return "unknown";
}

GemmBackend parse_gemm_backend(const std::string& name, const char* what) {
  std::string s = name;
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  for (GemmBackend be : {GemmBackend::Auto, GemmBackend::OpenBLAS, GemmBackend::OneDNN, GemmBackend::Reference}) {
    if (s == gemm_backend_name(be)) return be;
  }
  fail("[gemm] ", what, " must be one of auto, openblas, onednn, reference; got '", name, "'");
}

bool gemm_backend_available(GemmBackend backend) {
  return backend != GemmBackend::OneDNN || detail::onednn_built_in();
}

void set_gemm_backend(GemmBackend backend) {
  if (backend != GemmBackend::Auto) check_available(backend, "set_gemm_backend");
  std::lock_guard<std::mutex> lock(g_mu);
  g_env_read = true;  // an explicit choice takes precedence over the environment
  g_requested = backend;
  g_requested_how = "set_gemm_backend";
  g_active.store(backend, std::memory_order_release);  // Auto: resolved (measured) at next use
}

GemmBackend gemm_backend() {
  const GemmBackend be = g_active.load(std::memory_order_acquire);
  if (be != GemmBackend::Auto) return be;
  std::lock_guard<std::mutex> lock(g_mu);
  return resolve_locked();
}

std::string gemm_backend_selection() {
  std::lock_guard<std::mutex> lock(g_mu);
  const GemmBackend be = resolve_locked();
  if (g_requested == GemmBackend::Auto) return g_measured.how;
  return gemm_backend_name(be) + " (" + g_requested_how + ")";
}

namespace detail {
void reset_gemm_backend_choice() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_env_read = false;
  g_requested = GemmBackend::Auto;
  g_requested_how.clear();
  g_active.store(GemmBackend::Auto, std::memory_order_release);
}
}  // namespace detail

void gemm_using(GemmBackend backend, Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                std::int64_t ldc) {
  detail::check_gemm_args("gemm", ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  const profile::Scope timer(profile::Category::Gemm);
  profile::add_gemm(ta == Trans::T, tb == Trans::T, m, n, k, 1);
  run_one(resolve(backend), ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void gemm(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  gemm_using(GemmBackend::Auto, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void gemm_batched_using(GemmBackend backend, Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k,
                        float alpha, const float* a, std::int64_t lda, std::int64_t stride_a, const float* b,
                        std::int64_t ldb, std::int64_t stride_b, float beta, float* c, std::int64_t ldc,
                        std::int64_t stride_c, std::int64_t count) {
  const char* op = "gemm_batched";
  MF_CHECK(count >= 0, "[", op, "] count must be >= 0, got ", count);
  detail::check_gemm_args(op, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  MF_CHECK(stride_a >= 0, "[", op, "] stride_a must be >= 0, got ", stride_a);
  MF_CHECK(stride_b >= 0, "[", op, "] stride_b must be >= 0, got ", stride_b);
  MF_CHECK(stride_c >= 0, "[", op, "] stride_c must be >= 0, got ", stride_c);
  if (count == 0 || m == 0 || n == 0) return;
  const std::int64_t c_extent = (m - 1) * ldc + n;
  MF_CHECK(count == 1 || stride_c >= c_extent, "[", op, "] stride_c = ", stride_c,
           " makes the C matrices overlap: each spans (m-1)*ldc + n = ", c_extent, " elements");
  const GemmBackend be = resolve(backend);
  const profile::Scope timer(profile::Category::Gemm);
  profile::add_gemm(ta == Trans::T, tb == Trans::T, m, n, k, count);
  // a or b may be null when they are not read (k == 0 or alpha == 0): no offsets on null.
  auto at = [](const float* p, std::int64_t off) { return p == nullptr ? p : p + off; };
  auto one = [&](std::int64_t i) {
    run_one(be, ta, tb, m, n, k, alpha, at(a, i * stride_a), lda, at(b, i * stride_b), ldb, beta, c + i * stride_c,
            ldc);
  };
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  const bool parallel = be != GemmBackend::Reference && count > 1 && num_threads() > 1 && !omp_in_parallel() &&
                        flops <= kBatchParallelMaxFlops;
  if (!parallel) {
    for (std::int64_t i = 0; i < count; ++i) one(i);
    return;
  }
  // Inside the region OpenBLAS and oneDNN run single-threaded (both check
  // omp_in_parallel). Exceptions cannot leave an OpenMP region: keep the first.
  std::exception_ptr error;
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < count; ++i) {
    try {
      one(i);
    } catch (...) {
#pragma omp critical(mf_gemm_batched_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

void gemm_batched(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                  std::int64_t lda, std::int64_t stride_a, const float* b, std::int64_t ldb, std::int64_t stride_b,
                  float beta, float* c, std::int64_t ldc, std::int64_t stride_c, std::int64_t count) {
  gemm_batched_using(GemmBackend::Auto, ta, tb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc,
                     stride_c, count);
}

}  // namespace mf
