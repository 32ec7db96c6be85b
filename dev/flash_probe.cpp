// Dev probe (not part of the build): single-thread CPU-time GFLOP/s of the flash
// kernels and sgemm, robust to a loaded machine (thread CPU time, not wall time).
// g++ -O3 -march=native -std=c++20 -fopenmp -Isrc dev/flash_probe.cpp build/libmodformer_lib.a -lopenblas ...
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <functional>

#include "bench/gemm_bench.h"
#include "core/rng.h"
#include "core/threads.h"
#include "kernels/gemm.h"
#include "nn/attention/attention.h"

using namespace mf;
double cpu_now() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
double best(int reps, const std::function<void()>& f) {
  f();
  double b = 1e30;
  for (int r = 0; r < reps; ++r) {
    double t0 = cpu_now();
    f();
    b = std::min(b, cpu_now() - t0);
  }
  return b;
}
int main(int argc, char** argv) {
  set_num_threads(1);
  const std::int64_t L = argc > 1 ? atoi(argv[1]) : 2048, d = argc > 2 ? atoi(argv[2]) : 64;
  const int causal = argc > 3 ? atoi(argv[3]) : 0;
  const std::int64_t H = 1;
  Tensor q = randn({1, H, L, d}, 1), k = randn({1, H, L, d}, 2), v = randn({1, H, L, d}, 3), dout = randn({1, H, L, d}, 4);
  AttentionOptions o;
  o.causal = causal;
  AttentionOutput f;
  const double pairs = causal ? L * (L + 1) / 2.0 : double(L) * L;
  const double fl = 4.0 * d * H * pairs;
  double tf = best(3, [&] { f = attention_forward(q, k, v, o); });
  double tb = best(3, [&] { attention_backward(q, k, v, f.out, f.lse, dout, o); });
  std::vector<float> a(L * L), c(L * L);
  double tg1 = best(3, [&] { gemm(Trans::N, Trans::T, L, L, d, 1.f, q.data<float>(), d, k.data<float>(), d, 0.f, c.data(), L); });
  double tg2 = best(3, [&] { gemm(Trans::N, Trans::N, L, d, L, 1.f, a.data(), L, v.data<float>(), d, 0.f, c.data(), d); });
  const double gs = 4.0 * d * L * L / (tg1 + tg2) * 1e-9;
  std::printf("L=%ld d=%ld causal=%d: fwd %.1f GF/s  bwd %.1f GF/s  (bwd/fwd %.2f)  sgemm(%s) %.1f GF/s  fwd/sgemm %.2f f+b/sgemm %.2f\n",
              (long)L, (long)d, causal, fl / tf * 1e-9, 2.5 * fl / tb * 1e-9, tb / tf, gemm_backend_name(gemm_backend()).c_str(), gs,
              fl / tf * 1e-9 / gs, 3.5 * fl / (tf + tb) * 1e-9 / gs);
}
