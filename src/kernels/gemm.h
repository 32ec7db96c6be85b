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
void gemm(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc);

// `count` products; matrix i uses a + i*stride_a, b + i*stride_b, c + i*stride_c.
void gemm_batched(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                  std::int64_t lda, std::int64_t stride_a, const float* b, std::int64_t ldb, std::int64_t stride_b,
                  float beta, float* c, std::int64_t ldc, std::int64_t stride_c, std::int64_t count);

void set_gemm_backend(GemmBackend backend);  // Auto: measure and pick
GemmBackend gemm_backend();                  // the backend in use (resolved)
std::string gemm_backend_name(GemmBackend backend);

namespace reference {
// Plain triple loop with double accumulation; the specification.
void gemm(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc);
}  // namespace reference

}  // namespace mf
