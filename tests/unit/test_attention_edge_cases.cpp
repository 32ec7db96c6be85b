// Exact attention at its edges (issue 16): NaN and Inf inputs reach the rows
// that see them (flash == dense reference, forward and backward, on every SIMD
// path, tiled, few-row and split-KV kernels); window bounds up to INT64_MAX
// mean unbounded; tile sizes are a per-call setting that concurrent calls may
// choose independently; sequences longer than 2^24 are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "nn/attention/attention.h"
#include "nn/attention/flash_attention.h"
#include "../support/flash_knobs.h"

using namespace mf;
using mf::testing::flash_isas;
using mf::testing::ScopedFlashIsa;
using mf::testing::tiny_flash_tiles;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInfF = std::numeric_limits<float>::infinity();
constexpr std::int64_t kI64Max = std::numeric_limits<std::int64_t>::max();

// Flash and dense agree element by element on which values are NaN and which
// are +-Inf, and are close where both are finite.
void expect_same_non_finite(const char* what, const Tensor& flash, const Tensor& dense) {
  const auto f = flash.to_vector(), d = dense.to_vector();
  ASSERT_EQ(f.size(), d.size());
  for (std::size_t i = 0; i < f.size(); ++i) {
    ASSERT_EQ(std::isnan(f[i]), std::isnan(d[i])) << what << " element " << i << ": flash " << f[i] << " dense " << d[i];
    if (std::isnan(d[i])) continue;
    if (std::isinf(d[i])) {
      ASSERT_EQ(f[i], d[i]) << what << " element " << i;
      continue;
    }
    ASSERT_NEAR(f[i], d[i], 1e-4 * std::max(1.0f, std::fabs(d[i]))) << what << " element " << i;
  }
}

// Every element that is not finite in `dense` is not finite in `flash` (a NaN
// is never hidden), and elements finite in both are close.
void expect_non_finite_kept(const char* what, const Tensor& flash, const Tensor& dense) {
  const auto f = flash.to_vector(), d = dense.to_vector();
  std::size_t n_non_finite = 0;
  for (std::size_t i = 0; i < f.size(); ++i) {
    if (!std::isfinite(d[i])) {
      ++n_non_finite;
      ASSERT_FALSE(std::isfinite(f[i])) << what << " element " << i << ": dense " << d[i] << " but flash " << f[i];
    } else if (std::isfinite(f[i])) {
      ASSERT_NEAR(f[i], d[i], 1e-3 * std::max(1.0f, std::fabs(d[i]))) << what << " element " << i;
    }
  }
  EXPECT_GT(n_non_finite, 0u) << what << ": the case poisons nothing (a weak test)";
}

struct Poison {
  const char* name;
  char tensor;  // 'q', 'k' or 'v'
  std::int64_t row;  // the position poisoned (head 0 of batch entry 0), element 3
  float value;
};

}  // namespace

// A NaN or Inf in Q, K or V reaches the output of every row that sees it, as
// in the dense reference: the tiled (S^T) kernel, the few-row kernel and the
// split-KV (flash-decoding) path, on every SIMD path; causal and not.
TEST(AttentionEdgeCases, NonFiniteInputsReachTheirRowsForward) {
  ScopedFlashIsa restore;
  const std::vector<Poison> poisons{{"nan_q", 'q', 5, kNaN},   {"nan_k", 'k', 7, kNaN},    {"nan_v", 'v', 7, kNaN},
                                    {"inf_q", 'q', 5, kInfF},  {"neg_inf_q", 'q', 5, -kInfF}, {"inf_k", 'k', 7, kInfF},
                                    {"inf_v", 'v', 7, kInfF}};
  struct Path {
    const char* name;
    std::int64_t lq, lk;
    FlashTiles tiles;
  };
  FlashTiles split = tiny_flash_tiles(0);
  split.split_min_keys = 32;  // lq 2 (one tile), 70 keys: 5 chunks of 16 merged
  const std::vector<Path> paths{{"tiled", 37, 45, tiny_flash_tiles(0)},
                                {"few_row", 37, 45, tiny_flash_tiles(16)},
                                {"default_tiles", 37, 45, FlashTiles{}},
                                {"split_kv", 2, 70, split}};
  for (const Path& path : paths)
    for (const bool causal : {false, true})
      for (const Poison& poison : poisons) {
        // inf_v with causal: rows that do not see the key may still multiply its V by P = 0 (NaN, as
        // in PyTorch's math path); the dense reference skips P = 0. Only unmasked rows are compared.
        if (causal && poison.tensor == 'v') continue;
        Tensor q = randn({1, 4, path.lq, 16}, 1), k = randn({1, 2, path.lk, 16}, 2), v = randn({1, 2, path.lk, 16}, 3);
        Tensor& t = poison.tensor == 'q' ? q : poison.tensor == 'k' ? k : v;
        const std::int64_t row = std::min(poison.row, t.size(2) - 1);
        t.data<float>()[row * 16 + 3] = poison.value;
        AttentionOptions opt;
        opt.causal = causal;
        opt.flash_tiles = path.tiles;
        const auto d = attention_forward(q, k, v, opt, AttentionImpl::Dense);
        for (Isa isa : flash_isas()) {
          set_isa(isa);
          SCOPED_TRACE(std::string(isa_name(isa)) + " " + path.name + (causal ? " causal " : " ") + poison.name);
          const auto f = attention_forward(q, k, v, opt, AttentionImpl::Flash);
          expect_same_non_finite("out", f.out, d.out);
          expect_same_non_finite("lse", f.lse, d.lse);
          // The poisoned query row (or, for a NaN in K or V, the last row, which sees every key) is
          // not finite. (An infinite key element gives +-inf scores by the sign of q: -inf only masks.)
          if (poison.tensor == 'q' || std::isnan(poison.value)) {
            const std::int64_t checked = poison.tensor == 'q' ? row : path.lq - 1;
            EXPECT_FALSE(std::isfinite(f.out.data<float>()[checked * 16 + 3])) << "row " << checked;
          }
        }
      }
}

// The backward propagates NaN rather than hiding it: from a NaN query (the
// row's dq, and dk/dv of the keys it sees) and a NaN key.
TEST(AttentionEdgeCases, NonFiniteInputsReachTheGradients) {
  ScopedFlashIsa restore;
  for (Isa isa : flash_isas()) {
    set_isa(isa);
    for (const FlashTiles& tiles : {tiny_flash_tiles(0), FlashTiles{}})
      for (const bool causal : {false, true})
        for (const char which : {'q', 'k'}) {
          SCOPED_TRACE(std::string(isa_name(isa)) + (causal ? " causal " : " ") + which + " tile " +
                       std::to_string(tiles.bwd_rows));
          Tensor q = randn({1, 4, 37, 16}, 4), k = randn({1, 2, 45, 16}, 5), v = randn({1, 2, 45, 16}, 6),
                 dout = randn({1, 4, 37, 16}, 7);
          (which == 'q' ? q : k).data<float>()[20 * 16 + 3] = kNaN;
          AttentionOptions opt;
          opt.causal = causal;
          opt.flash_tiles = tiles;
          const auto ff = attention_forward(q, k, v, opt, AttentionImpl::Flash);
          const auto fd = attention_forward(q, k, v, opt, AttentionImpl::Dense);
          const auto gf = attention_backward(q, k, v, ff.out, ff.lse, dout, opt, AttentionImpl::Flash);
          const auto gd = attention_backward(q, k, v, fd.out, fd.lse, dout, opt, AttentionImpl::Dense);
          expect_non_finite_kept("dq", gf.dq, gd.dq);
          expect_non_finite_kept("dk", gf.dk, gd.dk);
          expect_non_finite_kept("dv", gf.dv, gd.dv);
          if (!causal) {  // every row sees every key: the same pattern exactly
            expect_same_non_finite("dq", gf.dq, gd.dq);
            expect_same_non_finite("dk", gf.dk, gd.dk);
            expect_same_non_finite("dv", gf.dv, gd.dv);
          }
        }
  }
}

// Window bounds up to INT64_MAX (and INT64_MAX - 1) are the same as unbounded:
// bit for bit, forward and backward, flash and dense, causal and not, also with
// more query rows than keys (negative positions) and ALiBi.
TEST(AttentionEdgeCases, HugeWindowBoundsMeanUnbounded) {
  for (const AttentionImpl impl : {AttentionImpl::Flash, AttentionImpl::Dense})
    for (const bool causal : {false, true})
      for (const std::int64_t lq : {37, 60}) {
        Tensor q = randn({1, 4, lq, 16}, 8), k = randn({1, 2, 45, 16}, 9), v = randn({1, 2, 45, 16}, 10),
               dout = randn({1, 4, lq, 16}, 11);
        AttentionOptions unbounded;
        unbounded.causal = causal;
        unbounded.alibi = true;
        unbounded.flash_tiles = tiny_flash_tiles(0);
        const auto ref = attention_forward(q, k, v, unbounded, impl);
        const auto gref = attention_backward(q, k, v, ref.out, ref.lse, dout, unbounded, impl);
        for (const std::int64_t bound : {kI64Max, kI64Max - 1, std::int64_t{60}})
          for (const int sides : {1, 2, 3}) {  // left, right, both
            SCOPED_TRACE(std::string(impl == AttentionImpl::Flash ? "flash" : "dense") + (causal ? " causal" : "") +
                         " lq " + std::to_string(lq) + " bound " + std::to_string(bound) + " sides " +
                         std::to_string(sides));
            AttentionOptions opt = unbounded;
            if (sides & 1) opt.window_left = bound;
            if (sides & 2) opt.window_right = bound;
            const auto got = attention_forward(q, k, v, opt, impl);
            const auto g = attention_backward(q, k, v, got.out, got.lse, dout, opt, impl);
            for (const auto& [a, b] : {std::pair{&got.out, &ref.out}, std::pair{&got.lse, &ref.lse},
                                       std::pair{&g.dq, &gref.dq}, std::pair{&g.dk, &gref.dk},
                                       std::pair{&g.dv, &gref.dv}})
              ASSERT_EQ(0, std::memcmp(a->data<float>(), b->data<float>(), a->numel() * sizeof(float)));
          }
      }
}

// Two threads calling attention at the same time with different tile sizes
// get the results each gets alone (the tiles change the rounding, so a shared
// setting read by the other call would show).
TEST(AttentionEdgeCases, ConcurrentCallsWithDifferentTiles) {
  Tensor q = randn({1, 4, 150, 32}, 12), k = randn({1, 2, 150, 32}, 13), v = randn({1, 2, 150, 32}, 14),
         dout = randn({1, 4, 150, 32}, 15);
  AttentionOptions a, b;
  a.causal = b.causal = true;
  a.flash_tiles = tiny_flash_tiles(0);
  b.flash_tiles = FlashTiles{};
  auto run = [&](const AttentionOptions& opt) {
    const auto f = attention_forward(q, k, v, opt);
    const auto g = attention_backward(q, k, v, f.out, f.lse, dout, opt);
    return std::vector<std::vector<float>>{f.out.to_vector(), f.lse.to_vector(), g.dq.to_vector(), g.dk.to_vector(),
                                           g.dv.to_vector()};
  };
  const auto alone_a = run(a), alone_b = run(b);
  ASSERT_NE(alone_a[0], alone_b[0]) << "the two tile settings round alike: the test could not see a mix-up";
  std::vector<bool> same_a(20, false), same_b(20, false);
  std::thread ta([&] {
    for (std::size_t r = 0; r < same_a.size(); ++r) same_a[r] = run(a) == alone_a;
  });
  std::thread tb([&] {
    for (std::size_t r = 0; r < same_b.size(); ++r) same_b[r] = run(b) == alone_b;
  });
  ta.join();
  tb.join();
  for (std::size_t r = 0; r < same_a.size(); ++r) {
    EXPECT_TRUE(same_a[r]) << "thread a, round " << r;
    EXPECT_TRUE(same_b[r]) << "thread b, round " << r;
  }
}

TEST(AttentionEdgeCases, BadTileSizesAreRefusedByName) {
  Tensor q = randn({1, 1, 4, 8}, 1), k = randn({1, 1, 4, 8}, 2);
  AttentionOptions opt;
  opt.flash_tiles.bwd_keys = 24;
  try {
    attention_forward(q, k, k, opt);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tile size bwd_keys must be a multiple of 16 in [16, 4096], got 24"),
              std::string::npos)
        << e.what();
  }
}

// Positions are float32 in the masks and ALiBi distances: a sequence longer
// than 2^24 is refused, naming the tensor (the key tensor is allocated, never
// touched; v is small because the length is checked first).
TEST(AttentionEdgeCases, SequencesLongerThan2To24AreRefused) {
  const std::int64_t too_long = kMaxAttentionLength + 1;
  Tensor q = randn({1, 1, 1, 8}, 1), k = Tensor::empty({1, 1, too_long, 8}), v = randn({1, 1, 1, 8}, 2);
  for (const AttentionImpl impl : {AttentionImpl::Flash, AttentionImpl::Dense}) {
    try {
      attention_forward(q, k, v, {}, impl);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("[attention] k (Lk) is 16777217 positions long but at most 16777216 = 2^24 "
                                           "are supported"),
                std::string::npos)
          << e.what();
    }
  }
}
