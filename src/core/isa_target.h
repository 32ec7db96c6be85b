// The head of an instruction-set translation unit (a file named *_isa.cpp).
// CMake compiles every *_isa.cpp three times, with MF_ISA_LEVEL 0 (scalar),
// 1 (AVX2 + FMA) and 2 (AVX-512), into the namespaces mf::isa_scalar,
// mf::isa_avx2 and mf::isa_avx512 (MF_ISA_NS); core/isa_dispatch.h calls the
// variant of active_isa(). The instruction set is switched on by
// `#pragma GCC target` *after* the standard and shared headers, so the code of
// those headers keeps the build's baseline and only code defined below it uses
// the wider instructions: nothing a CPU without them could reach by accident
// (no inline function or template shared with other translation units is
// compiled for AVX-512 here).
//
// Rules for an *_isa.cpp file:
// - include every non-ISA header first, then this one, then the ISA headers
//   (kernels/simd.h, nn/attention/flash_simd.h, ...);
// - define everything inside `namespace mf::MF_ISA_NS` (or give it internal
//   linkage);
// - no namespace-scope object with a dynamic initializer (it would run at
//   start-up on every CPU).
// No include guard: one inclusion per translation unit.
#if !defined(MF_ISA_LEVEL)
#error "core/isa_target.h belongs in an *_isa.cpp file, which CMake compiles with MF_ISA_LEVEL=0,1,2"
#endif
#if defined(MF_ISA_NS)
#error "core/isa_target.h included twice"
#endif

// Standard headers that ISA code may use, included before the target switch
// (a later #include of them is then a no-op).
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/isa.h"
#include "core/threads.h"
#include "kernels/vec_exp.h"

#if MF_ISA_LEVEL == 2
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512cd,avx2,fma,f16c,bmi,bmi2")
#define MF_ISA_NS isa_avx512
#elif MF_ISA_LEVEL == 1
#pragma GCC target("avx2,fma,f16c,bmi,bmi2")
#define MF_ISA_NS isa_avx2
#elif MF_ISA_LEVEL == 0
#define MF_ISA_NS isa_scalar
#else
#error "MF_ISA_LEVEL must be 0, 1 or 2"
#endif
