// Dev probe: decode (1 query, Hq=32) CPU time per call, 1 thread; K+V GB/s.
#include <time.h>
#include <cstdio>
#include <cstdlib>
#include "core/rng.h"
#include "core/threads.h"
#include "nn/attention/attention.h"
using namespace mf;
double cpu_now() { timespec ts; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); return ts.tv_sec + 1e-9 * ts.tv_nsec; }
int main(int argc, char** argv) {
  set_num_threads(1);
  const std::int64_t L = atoi(argv[1]), hkv = atoi(argv[2]), d = 128, hq = 32;
  Tensor q = randn({1, hq, 1, d}, 1), k = randn({1, hkv, L, d}, 2), v = randn({1, hkv, L, d}, 3);
  AttentionOptions o; o.causal = true;
  double best = 1e30;
  const int reps = argc > 3 ? atoi(argv[3]) : 5;
  for (int r = 0; r < reps; ++r) { double t0 = cpu_now(); attention_forward(q, k, v, o); best = std::min(best, cpu_now() - t0); }
  std::printf("L=%ld hkv=%ld: %.2f ms, %.1f GB/s\n", (long)L, (long)hkv, best * 1e3, 2.0 * hkv * L * d * 4 / best * 1e-9);
}
