// Dispatch of the vec_exp row kernels (vec_exp_isa.cpp) to the active instruction set.
#include "kernels/vec_exp.h"

#include "core/isa_dispatch.h"

MF_ISA_DECLARE(void exp_rows(float* y, const float* x, std::int64_t n))
MF_ISA_DECLARE(void exp_affine_row(float* row, std::int64_t n, float shift, float mul, float add))
MF_ISA_DECLARE(void exp_shift2_row(float* row, std::int64_t n, float s1, float s2))

namespace mf {

void exp_rows(float* y, const float* x, std::int64_t n) { MF_ISA_DISPATCH(exp_rows, y, x, n); }
void exp_affine_row(float* row, std::int64_t n, float shift, float mul, float add) {
  MF_ISA_DISPATCH(exp_affine_row, row, n, shift, mul, add);
}
void exp_shift2_row(float* row, std::int64_t n, float s1, float s2) { MF_ISA_DISPATCH(exp_shift2_row, row, n, s1, s2); }

}  // namespace mf
