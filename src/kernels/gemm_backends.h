// Internal to the GEMM: the argument checks shared by every entry point and
// the unchecked backend calls they guard. Not part of the public interface;
// callers use kernels/gemm.h.
#pragma once
#include <cstdint>

#include "kernels/gemm.h"

namespace mf::detail {

// Throws mf::Error "[<op>] ..." naming the offending argument.
void check_gemm_args(const char* op, Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                     const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, const float* c,
                     std::int64_t ldc);

// Unchecked backends. The reference handles every case itself (it is the
// specification); the BLAS ones expect m, n, k > 0 and alpha != 0 (the front
// door handles the rest so that all backends agree on the BLAS edge cases).
void gemm_reference_unchecked(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                              const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                              std::int64_t ldc);
void gemm_openblas_unchecked(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                             const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                             std::int64_t ldc);
bool onednn_built_in();
void gemm_onednn_unchecked(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                           const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                           std::int64_t ldc);

// Forgets set_gemm_backend and MODFORMER_GEMM_BACKEND so that the next use
// reads the environment again (the measurement itself is kept). For tests.
void reset_gemm_backend_choice();

}  // namespace mf::detail
