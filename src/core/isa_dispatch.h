// Declaring and calling the per-instruction-set variants of a kernel (see
// core/isa.h and core/isa_target.h). In a non-ISA file:
//
//   MF_ISA_DECLARE(void softmax_forward(float* out, const float* inp, std::int64_t rows, std::int64_t n))
//   void softmax_forward(float* out, const float* inp, std::int64_t rows, std::int64_t n) {
//     MF_ISA_DISPATCH(softmax_forward, out, inp, rows, n);
//   }
//
// declares mf::isa_scalar::softmax_forward, mf::isa_avx2::... and
// mf::isa_avx512::..., and runs the one of active_isa() (an atomic load and a
// switch per call: kernels are called per tensor or per row, never per element).
#pragma once
#include "core/isa.h"

#define MF_ISA_DECLARE(...)        \
  namespace mf::isa_scalar {       \
  __VA_ARGS__;                     \
  }                                \
  namespace mf::isa_avx2 {         \
  __VA_ARGS__;                     \
  }                                \
  namespace mf::isa_avx512 {       \
  __VA_ARGS__;                     \
  }

// `return`s the variant's result; fn may be qualified (flash::forward).
#define MF_ISA_DISPATCH(fn, ...)                  \
  switch (::mf::active_isa()) {                   \
    case ::mf::Isa::Avx512:                       \
      return ::mf::isa_avx512::fn(__VA_ARGS__);   \
    case ::mf::Isa::Avx2:                         \
      return ::mf::isa_avx2::fn(__VA_ARGS__);     \
    case ::mf::Isa::Scalar:                       \
      break;                                      \
  }                                               \
  return ::mf::isa_scalar::fn(__VA_ARGS__)
