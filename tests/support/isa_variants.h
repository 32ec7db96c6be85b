// Tests of the hand-vectorized kernels run every instruction-set variant the
// host supports (core/isa.h): on an AVX-512 machine scalar, AVX2 and AVX-512,
// on an AVX2 machine scalar and AVX2.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "core/isa.h"

namespace mf::testing {

// body() once per supported variant, with that variant active and named in
// the failure messages.
template <class F>
void for_each_isa(F&& body) {
  for (Isa isa : supported_isas()) {
    ScopedIsa scope(isa);
    SCOPED_TRACE("isa=" + isa_name(isa));
    body();
  }
}

// The sum depth (core/isa.h) of the active variant's kernels.
inline std::int64_t active_sum_depth(std::int64_t n) { return simd_sum_depth(n, isa_vector_floats(active_isa())); }

}  // namespace mf::testing
