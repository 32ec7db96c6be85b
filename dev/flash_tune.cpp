// Dev probe: forward/backward GFLOP/s (process CPU time, 1 thread) for several
// tile configurations, interleaved over rounds (min kept) so that a loaded
// machine affects all alike. usage: flash_tune L d causal rounds fr,fk,br,bk ...
#include <time.h>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>
#include "core/rng.h"
#include "core/threads.h"
#include "nn/attention/attention.h"
#include "nn/attention/flash_attention.h"
using namespace mf;
double cpu_now() { timespec ts; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); return ts.tv_sec + 1e-9 * ts.tv_nsec; }
int main(int argc, char** argv) {
  set_num_threads(1);
  const std::int64_t L = atoi(argv[1]), d = atoi(argv[2]), H = 1;
  AttentionOptions o; o.causal = atoi(argv[3]);
  if (getenv("MF_WL")) o.window_left = atoi(getenv("MF_WL"));
  const int rounds = atoi(argv[4]);
  std::vector<FlashTiles> cfgs;
  for (int a = 5; a < argc; ++a) {
    FlashTiles t;
    long fr, fk, br, bk;
    std::sscanf(argv[a], "%ld,%ld,%ld,%ld", &fr, &fk, &br, &bk);
    t.fwd_rows = fr; t.fwd_keys = fk; t.bwd_rows = br; t.bwd_keys = bk;
    cfgs.push_back(t);
  }
  Tensor q = randn({1, H, L, d}, 1), k = randn({1, H, L, d}, 2), v = randn({1, H, L, d}, 3), dout = randn({1, H, L, d}, 4);
  AttentionOutput f = attention_forward(q, k, v, o);
  double pairs = 0;
  for (std::int64_t i = 0; i < L; ++i) pairs += o.causal ? (o.window_left >= 0 ? std::min<std::int64_t>(i, o.window_left) + 1 : i + 1) : L;
  const double fl = 4.0 * d * H * pairs;
  std::vector<double> tf(cfgs.size(), 1e30), tb(cfgs.size(), 1e30);
  for (int r = 0; r < rounds; ++r)
    for (size_t c = 0; c < cfgs.size(); ++c) {
      o.flash_tiles = cfgs[c];
      double t0 = cpu_now();
      f = attention_forward(q, k, v, o);
      tf[c] = std::min(tf[c], cpu_now() - t0);
      t0 = cpu_now();
      attention_backward(q, k, v, f.out, f.lse, dout, o);
      tb[c] = std::min(tb[c], cpu_now() - t0);
    }
  for (size_t c = 0; c < cfgs.size(); ++c)
    std::printf("L=%ld d=%ld c=%d fwd %ldx%ld: %6.1f GF/s | bwd %ldx%ld: %6.1f GF/s (bwd/fwd %.2f)\n", (long)L, (long)d, o.causal,
                (long)cfgs[c].fwd_rows, (long)cfgs[c].fwd_keys, fl / tf[c] * 1e-9, (long)cfgs[c].bwd_rows, (long)cfgs[c].bwd_keys,
                2.5 * fl / tb[c] * 1e-9, tb[c] / tf[c]);
}
