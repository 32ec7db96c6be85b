// One GEMM interface for the engine: row-major C = alpha * op(A) op(B) + beta * C,
// optionally over strided batches. The backend (OpenBLAS, oneDNN, or the
// plain reference) is chosen by measurement at first use unless set.
#pragma once
#include <cstdint>
#include <string>

namespace mf {

enum class Trans : std::uint8_t { N, T };
enum class GemmBackend : std::uint8_t { Auto, OpenBLAS, OneDNN, Reference };

// op(A): [m, k] (A is [m, k] with lda if N, [k, m] if T); op(B): [k, n]; C: [m, n] with ldc.
// BLAS semantics: beta == 0 means C is not read (NaN there does not propagate);
// alpha == 0 or k == 0 means A and B are not read (C = beta * C).
// Checks: m, n, k >= 0; lda >= columns of A as stored (k if N, m if T), ldb
// likewise (n if N, k if T), ldc >= n; pointers non-null when read or written.
void gemm(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc);

// `count` products; matrix i uses a + i*stride_a, b + i*stride_b, c + i*stride_c.
// Strides are >= 0 (0 broadcasts A or B); the C matrices must not overlap
// (stride_c >= (m-1)*ldc + n when count > 1). Small products run in parallel
// over the batch with single-threaded BLAS, large ones one after another.
void gemm_batched(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                  std::int64_t lda, std::int64_t stride_a, const float* b, std::int64_t ldb, std::int64_t stride_b,
                  float beta, float* c, std::int64_t ldc, std::int64_t stride_c, std::int64_t count);

// Backend choice, in order of precedence: set_gemm_backend (Auto: measure and
// pick), else MODFORMER_GEMM_BACKEND=auto|openblas|onednn|reference, else
// measure. Measuring times OpenBLAS and oneDNN once per process on a few
// representative shapes (~0.1-0.2 s) and keeps OpenBLAS unless oneDNN is
// clearly faster (see kGemmSwitchMargin in gemm.cpp), so that the choice (and
// hence the bits) rarely flips between runs. Thread-safe.
void set_gemm_backend(GemmBackend backend);
GemmBackend gemm_backend();                  // the backend in use (resolved)
std::string gemm_backend_name(GemmBackend backend);  // "openblas", "onednn", "reference", "auto"
// Parses a name as above (case-insensitive); throws mf::Error listing the valid names.
GemmBackend parse_gemm_backend(const std::string& name, const char* what = "backend");
bool gemm_backend_available(GemmBackend backend);  // OneDNN: only when built with it
// How the backend in use was chosen: "onednn (measured with 2 thread(s): openblas 41.2 ms, onednn 20.3 ms)".
std::string gemm_backend_selection();

// The same front door (argument checks), run on a named backend regardless of
// the global choice (Auto: the global choice). For benchmarks and tests.
void gemm_using(GemmBackend backend, Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k,
                float alpha, const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta,
                float* c, std::int64_t ldc);
void gemm_batched_using(GemmBackend backend, Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k,
                        float alpha, const float* a, std::int64_t lda, std::int64_t stride_a, const float* b,
                        std::int64_t ldb, std::int64_t stride_b, float beta, float* c, std::int64_t ldc,
                        std::int64_t stride_c, std::int64_t count);

namespace reference {
// Plain triple loop with double accumulation; the specification.
void gemm(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc);
}  // namespace reference

}  // namespace mf
