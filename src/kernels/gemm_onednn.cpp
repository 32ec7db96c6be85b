// GEMM backend: oneDNN's dnnl_sgemm (row-major, 'N'/'T' flags). It JIT-compiles
// for the CPU it finds, ignoring OPENBLAS_CORETYPE, and runs on the OpenMP
// runtime the engine shares (Debian's libdnnl uses libgomp), so it follows
// omp_set_num_threads and goes single-threaded inside a parallel region.
#include "core/error.h"
#include "kernels/gemm_backends.h"

#ifdef MODFORMER_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

namespace mf::detail {

#ifdef MODFORMER_HAVE_ONEDNN
bool onednn_built_in() { return true; }

void gemm_onednn_unchecked(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                           const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                           std::int64_t ldc) {
  const char op_a = ta == Trans::N ? 'N' : 'T';
  const char op_b = tb == Trans::N ? 'N' : 'T';
  const dnnl_status_t st = dnnl_sgemm(op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  MF_CHECK(st == dnnl_success, "[gemm] oneDNN dnnl_sgemm failed with status ", static_cast<int>(st), " (m=", m,
           ", n=", n, ", k=", k, ", lda=", lda, ", ldb=", ldb, ", ldc=", ldc, ")");
}
#else
bool onednn_built_in() { return false; }

void gemm_onednn_unchecked(Trans, Trans, std::int64_t, std::int64_t, std::int64_t, float, const float*, std::int64_t,
                           const float*, std::int64_t, float, float*, std::int64_t) {
  fail("[gemm] the oneDNN backend is not built in (configure with libdnnl-dev installed and MODFORMER_WITH_ONEDNN=ON)");
}
#endif

}  // namespace mf::detail
