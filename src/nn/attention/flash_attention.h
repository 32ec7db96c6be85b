// Knobs of the flash attention kernels (flash_attention.cpp): the tile
// sizes, a per-call setting (AttentionOptions::flash_tiles) that the
// benchmark's tuning rows sweep. The kernels themselves are declared in
// attention_problem.h.
#pragma once
#include <cstdint>
#include <string>

namespace mf {

// Which SIMD path runs is the process-wide instruction set (core/isa.h);
// tests exercise every one the host supports.

// Tile sizes (one table). Defaults chosen on the 2-core Cascade Lake
// development machine, in interleaved rounds: forward 192 rows x 64 keys
// (each K/V tile serves more rows) took 0.90-0.97x the time of 64 x 64 over
// three runs of `dev/tile_rows_probe 8 64 192` (L 1024-4096, d 64 and 128,
// causal or not, the default training batch; 0.94-1.04x for GQA 32/8), and
// 0.91-0.94x in `modformer bench attention --sections tune --reps 10`
// (L 4096); backward 64 x 64 is within noise of 32 x 64 there. The register
// blocking per ISA is in flash_tiles.h. Narrow sliding windows shrink the
// tiles (flash_attention.cpp).
struct FlashTiles {
  std::int64_t fwd_rows = 192;     // stacked query rows (GQA heads x positions) per forward tile
  std::int64_t fwd_keys = 64;      // keys per forward tile
  std::int64_t bwd_rows = 64;      // query rows per backward step
  std::int64_t bwd_keys = 64;      // keys per backward work item (each owns their dK, dV rows)
  std::int64_t small_rows = 8;     // tiles with at most this many stacked rows take the few-row (decode) kernel
  std::int64_t split_chunk = 1024; // keys per split of the decode path (flash-decoding)
  std::int64_t split_min_keys = 2048;  // the decode path is taken from this many keys on
};
// Throws mf::Error naming the bad field: the row/key tiles and split_chunk must be
// multiples of 16 in [16, 4096], small_rows in [0, fwd_rows], split_min_keys >= 1.
void check_flash_tiles(const FlashTiles& tiles);

}  // namespace mf
