// Dev probe: runs one flash pass in a loop for perf (fwd|bwd L d causal iters).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include "core/rng.h"
#include "core/threads.h"
#include "nn/attention/attention.h"
using namespace mf;
int main(int argc, char** argv) {
  set_num_threads(argc > 6 ? atoi(argv[6]) : 1);
  const bool bwd = std::strcmp(argv[1], "bwd") == 0;
  const std::int64_t L = atoi(argv[2]), d = atoi(argv[3]), H = 1;
  AttentionOptions o;
  o.causal = atoi(argv[4]);
  if (getenv("MF_WL")) o.window_left = atoi(getenv("MF_WL"));
  const int iters = atoi(argv[5]);
  Tensor q = randn({1, H, L, d}, 1), k = randn({1, H, L, d}, 2), v = randn({1, H, L, d}, 3), dout = randn({1, H, L, d}, 4);
  AttentionOutput f = attention_forward(q, k, v, o);
  for (int i = 0; i < iters; ++i) {
    if (bwd) attention_backward(q, k, v, f.out, f.lse, dout, o);
    else f = attention_forward(q, k, v, o);
  }
  std::printf("done\n");
}
