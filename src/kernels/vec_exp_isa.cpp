// The row kernels of kernels/vec_exp.h, once per instruction set.
#include "kernels/vec_exp.h"
#include "core/isa_target.h"
#include "kernels/simd.h"

namespace mf::MF_ISA_NS {

void exp_rows(float* y, const float* x, std::int64_t n) {
  simd::for_each_block(n,
                       [&](std::int64_t i, std::int64_t c) { simd::store(y + i, simd::exp(simd::load(x + i, c)), c); });
}

void exp_affine_row(float* row, std::int64_t n, float shift, float mul, float add) {
  const simd::Vec vs = simd::set1(shift), vm = simd::set1(mul), va = simd::set1(add);
  simd::for_each_block(n, [&](std::int64_t i, std::int64_t c) {
    simd::store(row + i, simd::fmadd(simd::exp(simd::load(row + i, c) - vs), vm, va), c);
  });
}

void exp_shift2_row(float* row, std::int64_t n, float s1, float s2) {
  const simd::Vec v1 = simd::set1(s1), v2 = simd::set1(s2);
  simd::for_each_block(n, [&](std::int64_t i, std::int64_t c) {
    simd::store(row + i, simd::exp((simd::load(row + i, c) - v1) - v2), c);
  });
}

}  // namespace mf::MF_ISA_NS
