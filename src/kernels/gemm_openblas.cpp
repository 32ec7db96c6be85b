// GEMM backend: OpenBLAS cblas_sgemm (row-major). Its speed depends on the
// core type OpenBLAS picked at load time (OPENBLAS_CORETYPE; Haswell on an
// AVX-512 machine runs at about half speed). 32-bit BLAS ints: the front door
// limits every dimension to 2^31 - 1.
#include <cblas.h>

#include "kernels/gemm_backends.h"

namespace mf::detail {

void gemm_openblas_unchecked(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                             const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                             std::int64_t ldc) {
  auto op = [](Trans t) { return t == Trans::N ? CblasNoTrans : CblasTrans; };
  cblas_sgemm(CblasRowMajor, op(ta), op(tb), static_cast<blasint>(m), static_cast<blasint>(n),
              static_cast<blasint>(k), alpha, a, static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
              static_cast<blasint>(ldc));
}

}  // namespace mf::detail
