// Thread counts in tests: a scope that runs on a set number of OpenMP
// threads (tests on tiny shapes use one: fork/join overhead would dominate),
// and the determinism check of the parallel kernels.
#pragma once
#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "core/threads.h"
#include "bounds.h"

namespace mf::testing {

struct ScopedThreads {
  int prev = num_threads();
  explicit ScopedThreads(int n) { set_num_threads(n); }
  ~ScopedThreads() { set_num_threads(prev); }
  ScopedThreads(const ScopedThreads&) = delete;
  ScopedThreads& operator=(const ScopedThreads&) = delete;
};

// run() computes every output of the kernels under test on inputs large
// enough to go parallel: twice on 2 threads and once on 1, it must give the
// same bits each time (no schedule or thread count may leak into a result).
inline void expect_same_bits_across_threads(const std::function<std::vector<float>()>& run) {
  std::vector<float> a, b, c;
  {
    ScopedThreads two(2);
    a = run();
    b = run();
  }
  {
    ScopedThreads one(1);
    c = run();
  }
  EXPECT_TRUE(same_bits(a, b)) << "same threads, different bits";
  EXPECT_TRUE(same_bits(a, c)) << "1 vs 2 threads, different bits";
}

}  // namespace mf::testing
