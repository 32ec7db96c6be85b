// Dev probe: GFLOP/s of tile_gemm on L1/L2-resident tiles (thread CPU time).
#include <time.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "nn/attention/flash_tiles.h"
using namespace mf::flash;
double now() { timespec ts; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); return ts.tv_sec + 1e-9 * ts.tv_nsec; }
template <bool ACOL>
void run(long M, long N, long K, const char* name) {
  std::vector<float> a(4096 * 64, 0.01f), b(4096 * 64, 0.02f), c(4096 * 64, 0.f), rs(512, 1.f);
  const long lda = ACOL ? M : K;
  double best = 1e9;
  for (int rep = 0; rep < 5; ++rep) {
    double t0 = now();
    for (int it = 0; it < 2000; ++it) tile_gemm<IsaAvx512, ACOL>(M, N, K, a.data(), lda, b.data(), N, c.data(), N, TileMode::ScaleAdd, rs.data());
    best = std::min(best, now() - t0);
  }
  std::printf("%s M=%ld N=%ld K=%ld: %.1f GF/s\n", name, M, N, K, 2.0 * M * N * K * 2000 / best * 1e-9);
}
int main() {
  run<false>(64, 64, 64, "row");
  run<true>(64, 64, 64, "col");
  run<true>(64, 128, 64, "col");
  run<false>(64, 64, 128, "row");
  run<false>(60, 64, 64, "row");
  run<true>(60, 64, 64, "col");
  run<false>(96, 64, 64, "row");
  run<false>(120, 64, 64, "row");
  run<false>(64, 64, 256, "row");
}
