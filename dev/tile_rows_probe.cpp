// Dev probe: forward time for several forward tile heights (stacked query rows,
// keys per tile as default) on the shapes that matter (long and short, causal
// or not, d 64 and 128, GQA prefill, the default training batch),
// interleaved over rounds (best kept), as a ratio to the first height.
// usage: tile_rows_probe rounds rows1 rows2 ...   e.g. tile_rows_probe 8 64 128 192
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/rng.h"
#include "nn/attention/attention.h"
#include "nn/attention/flash_attention.h"

using namespace mf;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s rounds rows1 [rows2 ...]\n", argv[0]);
    return 2;
  }
  const int rounds = std::atoi(argv[1]);
  std::vector<long> rows;
  for (int i = 2; i < argc; ++i) rows.push_back(std::atol(argv[i]));
  struct Case {
    const char* name;
    long b, hq, hkv, l, d;
    bool causal;
  };
  const Case cases[] = {{"L1024 d64 causal", 1, 16, 16, 1024, 64, true},
                        {"L1024 d128", 1, 16, 16, 1024, 128, false},
                        {"L4096 d128 causal", 1, 4, 4, 4096, 128, true},
                        {"L4096 d64 causal", 1, 4, 4, 4096, 64, true},
                        {"train B16 6/2 L256 d32 causal", 16, 6, 2, 256, 32, true},
                        {"GQA 32/8 L2048 d128 causal", 1, 32, 8, 2048, 128, true}};
  for (const Case& c : cases) {
    const Tensor q = randn({c.b, c.hq, c.l, c.d}, 1), k = randn({c.b, c.hkv, c.l, c.d}, 2),
                 v = randn({c.b, c.hkv, c.l, c.d}, 3);
    AttentionOptions o;
    o.causal = c.causal;
    std::vector<double> best(rows.size(), 1e30);
    for (int r = 0; r < rounds; ++r)
      for (std::size_t i = 0; i < rows.size(); ++i) {
        FlashTiles t;
        t.fwd_rows = rows[i];
        o.flash_tiles = t;
        const auto t0 = std::chrono::steady_clock::now();
        attention_forward(q, k, v, o);
        best[i] = std::min(best[i], std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
    std::printf("%-30s", c.name);
    for (std::size_t i = 0; i < rows.size(); ++i)
      std::printf("  rows %ld: %8.2f ms (%.2f)", rows[i], best[i] * 1e3, best[i] / best[0]);
    std::printf("\n");
  }
}
