// The GEMM specification: a plain triple loop with double accumulation,
// C = alpha * op(A) op(B) + beta * C, row-major. BLAS edge cases are explicit:
// beta == 0 never reads C, alpha == 0 never reads A or B.
#include "kernels/gemm_backends.h"

namespace mf {
namespace detail {

void gemm_reference_unchecked(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                              const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                              std::int64_t ldc) {
  auto a_at = [&](std::int64_t i, std::int64_t p) { return ta == Trans::N ? a[i * lda + p] : a[p * lda + i]; };
  auto b_at = [&](std::int64_t p, std::int64_t j) { return tb == Trans::N ? b[p * ldb + j] : b[j * ldb + p]; };
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      if (alpha != 0.0f) {
        for (std::int64_t p = 0; p < k; ++p) acc += static_cast<double>(a_at(i, p)) * static_cast<double>(b_at(p, j));
      }
      double r = static_cast<double>(alpha) * acc;
      if (beta != 0.0f) r += static_cast<double>(beta) * static_cast<double>(c[i * ldc + j]);
      c[i * ldc + j] = static_cast<float>(r);
    }
  }
}

}  // namespace detail

namespace reference {
void gemm(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  detail::check_gemm_args("reference::gemm", ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  detail::gemm_reference_unchecked(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
}  // namespace reference

}  // namespace mf
