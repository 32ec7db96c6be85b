// Block-sparse attention (src/nn/attention/block_sparse.h, src/nn/sparse/):
// the layout builders against their element rules written out here; the
// flash kernels with a layout against the dense reference (every SIMD path,
// tiny and default tiles, GQA, per-head maps, awkward lengths, batch > 1,
// varlen, L = 1 decode rows) and against a naive loop with the element mask;
// Longformer through a layout equals the plain window + global path; BigBird's
// random blocks follow the seed; finite differences; PyTorch fixtures; bad
// input; the mixer in a tiny model (trains, generation equals the full forward).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/npy.h"
#include "core/rng.h"
#include "model/transformer.h"
#include "nn/attention/attention.h"
#include "nn/mixer/mixer_registry.h"
#include "nn/sparse/block_layout.h"
#include "nn/sparse/sparse_attention_mixer.h"
#include "testing/gradcheck.h"
#include "../support/cli.h"
#include "../support/close.h"
#include "../support/errors.h"
#include "../support/fixtures.h"
#include "../support/flash_knobs.h"
#include "../support/generation.h"
#include "../support/parameters.h"
#include "../support/periodic_lm.h"
#include "../support/threads.h"
#include "../support/tiny_models.h"

namespace mf {
namespace {

using i64 = std::int64_t;
using mf::testing::close;
using mf::testing::ScopedThreads;

// The patterns' element rules, written per element (block_layout.h).
bool strided_rule(i64 i, i64 j, i64 l, bool causal) {
  if (causal && j > i) return false;
  return std::abs(i - j) < l || ((i - j) % l + l) % l == 0;
}
bool fixed_rule(i64 i, i64 j, i64 l, i64 c, bool causal) {
  if (causal && j > i) return false;
  return i / l == j / l || j % l >= l - c;
}
bool longformer_rule(i64 i, i64 j, i64 w, const std::vector<i64>& globals, bool causal) {
  if (causal && j > i) return false;
  auto g = [&](i64 x) { return std::find(globals.begin(), globals.end(), x) != globals.end(); };
  return std::abs(i - j) <= w || g(i) || g(j);
}

// The layout holds exactly the tiles that contain a pair allowed by `rule`
// (over whole blocks: positions [0, blocks x block), which keeps causal maps
// prefix-consistent); element_exact: its element mask, with the call's causal
// mask, equals `rule` on [0, len).
template <class Rule>
void expect_exact_layout(const BlockLayout& l, i64 len, bool causal, bool element_exact, Rule rule) {
  const i64 span = l.row_blocks * l.block;
  const Tensor m = layout_element_mask(l, span, span);
  std::vector<int> tile_has(static_cast<std::size_t>(l.row_blocks * l.col_blocks), 0);
  for (i64 i = 0; i < span; ++i)
    for (i64 j = 0; j < span; ++j) {
      const bool want = rule(i, j);
      if (element_exact && i < len && j < len) {
        const bool got = m.data<std::int32_t>()[i * span + j] != 0 && (!causal || j <= i);
        ASSERT_EQ(got, want) << "pair (" << i << ", " << j << ")";
      }
      if (want) tile_has[(i / l.block) * l.col_blocks + j / l.block] = 1;
    }
  for (i64 r = 0; r < l.row_blocks; ++r)
    for (i64 c = 0; c < l.col_blocks; ++c)
      EXPECT_EQ(l.at(0, r, c), tile_has[r * l.col_blocks + c] != 0) << "tile (" << r << ", " << c << ")";
}

TEST(SparseLayout, BuildersAreExactAtElementLevel) {
  for (bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "bidirectional");
    for (i64 l : {1, 5, 16, 24, 40})
      expect_exact_layout(strided_layout(83, 16, l, causal), 83, causal, true,
                          [&](i64 i, i64 j) { return strided_rule(i, j, l, causal); });
    for (auto [l, c] : {std::pair<i64, i64>{32, 8}, {20, 3}, {7, 0}, {48, 48}})
      expect_exact_layout(fixed_layout(90, 16, l, c, causal), 90, causal, true,
                          [&](i64 i, i64 j) { return fixed_rule(i, j, l, c, causal); });
    // Longformer: the layout holds the tiles; the window and global masks come from the kernel.
    const std::vector<i64> globals{0, 37};
    for (i64 w : {0, 5, 20})
      expect_exact_layout(longformer_layout(70, 16, w, causal ? -1 : w, globals, causal), 70, causal, false,
                          [&](i64 i, i64 j) { return longformer_rule(i, j, w, globals, causal); });
  }
}

TEST(SparseLayout, CausalBuildersArePrefixConsistent) {
  const std::vector<BlockLayout> small = {strided_layout(64, 16, 24, true), fixed_layout(64, 16, 32, 8, true),
                                          bigbird_layout(64, 16, 1, 1, 2, 3, 9, true),
                                          longformer_layout(64, 16, 20, -1, {0}, true)};
  const std::vector<BlockLayout> big = {strided_layout(200, 16, 24, true), fixed_layout(200, 16, 32, 8, true),
                                        bigbird_layout(200, 16, 1, 1, 2, 3, 9, true),
                                        longformer_layout(200, 16, 20, -1, {0}, true)};
  for (std::size_t x = 0; x < small.size(); ++x)
    for (i64 h = 0; h < small[x].heads; ++h)
      for (i64 r = 0; r < small[x].row_blocks; ++r)
        for (i64 c = 0; c < small[x].col_blocks; ++c) EXPECT_EQ(small[x].at(h, r, c), big[x].at(h, r, c)) << x;
}

TEST(SparseLayout, BigBirdRandomBlocksFollowTheSeed) {
  const BlockLayout a = bigbird_layout(512, 16, 1, 1, 3, 4, 7, false);
  const BlockLayout b = bigbird_layout(512, 16, 1, 1, 3, 4, 7, false);
  const BlockLayout c = bigbird_layout(512, 16, 1, 1, 3, 4, 8, false);
  EXPECT_EQ(a.present, b.present);
  EXPECT_NE(a.present, c.present);
  // Per row: window (3) + global column (1) + 3 random blocks; global row 0 sees all; heads differ.
  for (i64 h = 0; h < 4; ++h)
    for (i64 r = 2; r < a.row_blocks - 1; ++r) {
      int n = 0;
      for (i64 col = 0; col < a.col_blocks; ++col) n += a.at(h, r, col);
      EXPECT_EQ(n, 3 + 1 + 3) << "head " << h << " row " << r;
    }
  bool heads_differ = false;
  for (i64 r = 0; r < a.row_blocks; ++r)
    for (i64 col = 0; col < a.col_blocks; ++col) heads_differ = heads_differ || a.at(0, r, col) != a.at(1, r, col);
  EXPECT_TRUE(heads_differ);
  // Causal: random blocks only before the row.
  const BlockLayout cz = bigbird_layout(512, 16, 1, 1, 3, 1, 7, true);
  for (i64 r = 0; r < cz.row_blocks; ++r)
    for (i64 col = r + 1; col < cz.col_blocks; ++col) EXPECT_FALSE(cz.at(0, r, col));
}

// A random user map: density ~0.4, per head or shared, one empty block row.
std::shared_ptr<BlockLayout> random_layout(i64 len, i64 block, i64 heads, std::uint64_t seed) {
  auto l = std::make_shared<BlockLayout>();
  l->block = block;
  l->heads = heads;
  l->row_blocks = l->col_blocks = layout_blocks(len, block);
  for (i64 x = 0; x < heads * l->row_blocks * l->col_blocks; ++x)
    l->present.push_back(rng_uniform(seed, 0, static_cast<std::uint64_t>(x)) < 0.4f);
  for (i64 c = 0; c < l->col_blocks; ++c) l->present[static_cast<std::size_t>(1 * l->col_blocks + c)] = 0;
  return l;
}

struct Case {
  std::string name;
  std::shared_ptr<const BlockLayout> layout;
  bool causal = false;
  i64 window = -1;  // Longformer: |i - j| <= window (with globals)
  std::vector<i64> globals;
};

Case make_case(std::string name, std::shared_ptr<const BlockLayout> layout, bool causal, i64 window = -1,
               std::vector<i64> globals = {}) {
  Case c;
  c.name = std::move(name);
  c.layout = std::move(layout);
  c.causal = causal;
  c.window = window;
  c.globals = std::move(globals);
  return c;
}

std::vector<Case> cases(i64 len, i64 hq) {
  std::vector<Case> v;
  for (bool causal : {true, false}) {
    const std::string tag = causal ? " causal" : " bidirectional";
    v.push_back(make_case("strided" + tag, std::make_shared<BlockLayout>(strided_layout(len, 16, 24, causal)), causal));
    v.push_back(make_case("strided l=5" + tag, std::make_shared<BlockLayout>(strided_layout(len, 32, 5, causal)), causal));
    v.push_back(make_case("fixed" + tag, std::make_shared<BlockLayout>(fixed_layout(len, 16, 20, 3, causal)), causal));
    v.push_back(make_case("bigbird shared" + tag, std::make_shared<BlockLayout>(bigbird_layout(len, 16, 1, 1, 1, 1, 3, causal)),
                 causal));
    v.push_back(make_case("bigbird per head" + tag,
                 std::make_shared<BlockLayout>(bigbird_layout(len, 16, 0, 1, 1, hq, 3, causal)), causal));
    v.push_back(make_case("longformer" + tag,
                          std::make_shared<BlockLayout>(longformer_layout(len, 16, 9, causal ? -1 : 9, {0, len / 2}, causal)),
                          causal, 9, {0, len / 2}));
    v.push_back(make_case("user per head" + tag, random_layout(len, 16, hq, 5), causal));
    v.push_back(make_case("user shared" + tag, random_layout(len, 16, 1, 6), causal));
  }
  return v;
}

AttentionOptions options_of(const Case& c) {
  AttentionOptions o;
  o.causal = c.causal;
  o.block_layout = c.layout;
  if (c.window >= 0) {
    o.window_left = c.window;
    o.window_right = c.causal ? -1 : c.window;
    o.global_tokens = c.globals;
  }
  return o;
}

// The dense reference with the layout, forward and backward.
struct DenseResult {
  AttentionOutput fwd;
  AttentionGrads grads;
};
DenseResult dense_with_layout(const Case& c, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout) {
  const AttentionOptions o = options_of(c);
  DenseResult r;
  r.fwd = attention_forward(q, k, v, o, AttentionImpl::Dense);
  r.grads = attention_backward(q, k, v, r.fwd.out, r.fwd.lse, dout, o, AttentionImpl::Dense);
  return r;
}

// Flash with the layout vs the dense reference, forward and backward.
void expect_flash_matches(const DenseResult& want, const Case& c, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& dout, const FlashTiles& tiles) {
  AttentionOptions o = options_of(c);
  o.flash_tiles = tiles;
  const AttentionOutput got = attention_forward(q, k, v, o, AttentionImpl::Flash);
  EXPECT_TRUE(close(got.out, want.fwd.out, 2e-5, "out", 1.0));
  const auto gl = got.lse.to_vector(), wl = want.fwd.lse.to_vector();
  for (std::size_t x = 0; x < gl.size(); ++x)
    ASSERT_TRUE(gl[x] == wl[x] || std::fabs(gl[x] - wl[x]) <= 2e-5f * std::max(1.0f, std::fabs(wl[x])))
        << "lse " << x << ": " << gl[x] << " vs " << wl[x];
  const AttentionGrads gg = attention_backward(q, k, v, got.out, got.lse, dout, o, AttentionImpl::Flash);
  EXPECT_TRUE(close(gg.dq, want.grads.dq, 5e-5, "dq", 1.0));
  EXPECT_TRUE(close(gg.dk, want.grads.dk, 5e-5, "dk", 1.0));
  EXPECT_TRUE(close(gg.dv, want.grads.dv, 5e-5, "dv", 1.0));
}

TEST(SparseAttention, FlashMatchesDenseForEveryPattern) {
  mf::testing::ScopedFlashIsa keep;
  const i64 len = 83, hq = 4, hkv = 2, d = 16;  // 83: not a multiple of any tile; GQA 2:1; batch 2
  const Tensor q = randn({2, hq, len, d}, 1), k = randn({2, hkv, len, d}, 2), v = randn({2, hkv, len, d}, 3);
  const Tensor dout = randn({2, hq, len, d}, 4);
  for (const Case& c : cases(len, hq)) {
    const DenseResult want = dense_with_layout(c, q, k, v, dout);
    for (Isa isa : mf::testing::flash_isas()) {
      set_isa(isa);
      for (const FlashTiles& t : {FlashTiles{}, mf::testing::tiny_flash_tiles(0), mf::testing::tiny_flash_tiles(16)}) {
        SCOPED_TRACE(isa_name(isa) + " " + c.name + " fwd_rows " + std::to_string(t.fwd_rows) + " small " +
                     std::to_string(t.small_rows));
        expect_flash_matches(want, c, q, k, v, dout, t);
      }
    }
  }
}

// Decode rows (Lq = 1 at any position, the split-KV path) and Lq < Lk with Lk - Lq a block multiple.
TEST(SparseAttention, FlashMatchesDenseForDecodeRowsAndOffsetQueries) {
  const i64 hq = 4, hkv = 1, d = 16;
  for (i64 lk : {37, 150}) {
    for (i64 lq : {i64{1}, lk - 32}) {
      const Tensor q = randn({1, hq, lq, d}, 11), k = randn({1, hkv, lk, d}, 12), v = randn({1, hkv, lk, d}, 13);
      const Tensor dout = randn({1, hq, lq, d}, 14);
      for (const Case& c : cases(lk, hq)) {
        if (!c.causal) continue;
        const DenseResult want = dense_with_layout(c, q, k, v, dout);
        FlashTiles split = mf::testing::tiny_flash_tiles(16);
        split.split_min_keys = 32;  // the split-KV path for one query tile
        for (const FlashTiles& t : {FlashTiles{}, split}) {
          SCOPED_TRACE(c.name + " lq " + std::to_string(lq) + " lk " + std::to_string(lk));
          expect_flash_matches(want, c, q, k, v, dout, t);
        }
      }
    }
  }
}

TEST(SparseAttention, VarlenMatchesDense) {
  const i64 hq = 2, hkv = 2, d = 8;
  const VarlenSeqlens s{{0, 40, 40, 123}, {0, 40, 40, 123}};
  const Tensor q = randn({123, hq, d}, 21), k = randn({123, hkv, d}, 22), v = randn({123, hkv, d}, 23);
  const Tensor dout = randn({123, hq, d}, 24);
  for (const Case& c : cases(83, hq)) {
    SCOPED_TRACE(c.name);
    const AttentionOptions o = options_of(c);
    const AttentionOutput want = attention_varlen_forward(q, k, v, s, o, AttentionImpl::Dense);
    const AttentionOutput got = attention_varlen_forward(q, k, v, s, o, AttentionImpl::Flash);
    EXPECT_TRUE(close(got.out, want.out, 2e-5, "out", 1.0));
    const AttentionGrads gw = attention_varlen_backward(q, k, v, want.out, want.lse, dout, s, o, AttentionImpl::Dense);
    const AttentionGrads gg = attention_varlen_backward(q, k, v, got.out, got.lse, dout, s, o, AttentionImpl::Flash);
    EXPECT_TRUE(close(gg.dq, gw.dq, 5e-5, "dq", 1.0));
    EXPECT_TRUE(close(gg.dk, gw.dk, 5e-5, "dk", 1.0));
  }
}

// Flash with a layout vs a naive loop over the element mask written out here (no layout code).
TEST(SparseAttention, FlashMatchesNaiveElementMask) {
  const i64 len = 70, d = 8;
  const Tensor q = randn({1, 1, len, d}, 31), k = randn({1, 1, len, d}, 32), v = randn({1, 1, len, d}, 33);
  struct Named {
    const char* name;
    BlockLayout layout;
    std::function<bool(i64, i64)> rule;
  };
  const Named list[] = {
      {"strided", strided_layout(len, 16, 12, true), [](i64 i, i64 j) { return strided_rule(i, j, 12, true); }},
      {"fixed", fixed_layout(len, 16, 24, 4, false), [](i64 i, i64 j) { return fixed_rule(i, j, 24, 4, false); }}};
  for (const Named& n : list) {
    SCOPED_TRACE(n.name);
    AttentionOptions o;
    o.causal = n.layout.rule.kind == SparseElementRule::Kind::Strided;
    o.block_layout = std::make_shared<BlockLayout>(n.layout);
    const Tensor out = attention_forward(q, k, v, o).out;
    Tensor want = Tensor::zeros({1, 1, len, d});
    for (i64 i = 0; i < len; ++i) {
      std::vector<double> s(len, -INFINITY);
      double mx = -INFINITY;
      for (i64 j = 0; j < len; ++j)
        if (n.rule(i, j)) {
          double dot = 0;
          for (i64 x = 0; x < d; ++x) dot += double(q.data<float>()[i * d + x]) * k.data<float>()[j * d + x];
          s[j] = dot / std::sqrt(double(d));
          mx = std::max(mx, s[j]);
        }
      double tot = 0;
      for (i64 j = 0; j < len; ++j) tot += std::isinf(s[j]) ? 0.0 : std::exp(s[j] - mx);
      for (i64 j = 0; j < len; ++j)
        if (!std::isinf(s[j]))
          for (i64 x = 0; x < d; ++x)
            want.data<float>()[i * d + x] += static_cast<float>(std::exp(s[j] - mx) / tot * v.data<float>()[j * d + x]);
    }
    EXPECT_TRUE(close(out, want, 2e-5, "out", 1.0));
  }
}

TEST(SparseAttention, LongformerLayoutEqualsWindowGlobalPath) {
  const i64 len = 256, hq = 4, hkv = 2, d = 16;
  const Tensor q = randn({2, hq, len, d}, 41), k = randn({2, hkv, len, d}, 42), v = randn({2, hkv, len, d}, 43);
  const Tensor dout = randn({2, hq, len, d}, 44);
  for (bool causal : {true, false}) {
    AttentionOptions plain;
    plain.causal = causal;
    plain.window_left = 20;
    plain.window_right = causal ? -1 : 20;
    plain.global_tokens = {0, 77};
    AttentionOptions sparse = plain;
    sparse.block_layout = std::make_shared<BlockLayout>(longformer_layout(len, 16, 20, plain.window_right, {0, 77}, causal));
    EXPECT_LT(sparse.block_layout->density(), 0.6);
    const AttentionOutput a = attention_forward(q, k, v, plain), b = attention_forward(q, k, v, sparse);
    EXPECT_TRUE(close(b.out, a.out, 1e-5, "out", 1.0));
    EXPECT_TRUE(close(b.lse, a.lse, 1e-5, "lse", 1.0));
    const AttentionGrads ga = attention_backward(q, k, v, a.out, a.lse, dout, plain);
    const AttentionGrads gb = attention_backward(q, k, v, b.out, b.lse, dout, sparse);
    EXPECT_TRUE(close(gb.dq, ga.dq, 2e-5, "dq", 1.0));
    EXPECT_TRUE(close(gb.dk, ga.dk, 2e-5, "dk", 1.0));
    EXPECT_TRUE(close(gb.dv, ga.dv, 2e-5, "dv", 1.0));
  }
}

// A block row that sees nothing: O = 0, LSE = -inf, no gradient through it.
TEST(SparseAttention, EmptyRowsFollowTheKernelRule) {
  const i64 len = 48, d = 8;
  auto l = std::make_shared<BlockLayout>(strided_layout(len, 16, 4, false));
  for (i64 c = 0; c < l->col_blocks; ++c) l->present[static_cast<std::size_t>(1 * l->col_blocks + c)] = 0;
  AttentionOptions o;
  o.block_layout = l;
  const Tensor q = randn({1, 2, len, d}, 51), k = randn({1, 1, len, d}, 52), v = randn({1, 1, len, d}, 53);
  const AttentionOutput a = attention_forward(q, k, v, o);
  for (i64 h = 0; h < 2; ++h)
    for (i64 i = 16; i < 32; ++i) {
      EXPECT_EQ(a.lse.data<float>()[h * len + i], -std::numeric_limits<float>::infinity());
      for (i64 x = 0; x < d; ++x) EXPECT_EQ(a.out.data<float>()[(h * len + i) * d + x], 0.0f);
    }
  const AttentionGrads g = attention_backward(q, k, v, a.out, a.lse, randn({1, 2, len, d}, 54), o);
  for (i64 h = 0; h < 2; ++h)
    for (i64 i = 16; i < 32; ++i)
      for (i64 x = 0; x < d; ++x) EXPECT_EQ(g.dq.data<float>()[(h * len + i) * d + x], 0.0f);
}

TEST(SparseAttention, ThreadCountIndependence) {
  const i64 len = 300, hq = 4, hkv = 2, d = 32;
  const Tensor q = randn({1, hq, len, d}, 61), k = randn({1, hkv, len, d}, 62), v = randn({1, hkv, len, d}, 63);
  AttentionOptions o;
  o.causal = true;
  o.block_layout = std::make_shared<BlockLayout>(bigbird_layout(len, 32, 1, 1, 2, hq, 4, true));
  AttentionOutput a, b;
  AttentionGrads ga, gb;
  const Tensor dout = randn({1, hq, len, d}, 64);
  {
    ScopedThreads one(1);
    a = attention_forward(q, k, v, o);
    ga = attention_backward(q, k, v, a.out, a.lse, dout, o);
  }
  {
    ScopedThreads two(2);
    b = attention_forward(q, k, v, o);
    gb = attention_backward(q, k, v, b.out, b.lse, dout, o);
  }
  EXPECT_EQ(a.out.to_vector(), b.out.to_vector());
  EXPECT_EQ(a.lse.to_vector(), b.lse.to_vector());
  EXPECT_EQ(ga.dk.to_vector(), gb.dk.to_vector());
  EXPECT_EQ(ga.dv.to_vector(), gb.dv.to_vector());
}

TEST(SparseAttention, GradientsMatchFiniteDifferences) {
  ScopedThreads one(1);
  const i64 len = 37, hq = 2, hkv = 1, d = 8;
  for (const Case& c : {make_case("strided", std::make_shared<BlockLayout>(strided_layout(len, 16, 5, true)), true),
                        make_case("fixed", std::make_shared<BlockLayout>(fixed_layout(len, 16, 12, 2, false)), false),
                        make_case("bigbird heads", std::make_shared<BlockLayout>(bigbird_layout(len, 16, 0, 1, 1, hq, 2, false)),
                             false)}) {
    SCOPED_TRACE(c.name);
    const AttentionOptions o = options_of(c);
    Tensor q = randn({1, hq, len, d}, 71), k = randn({1, hkv, len, d}, 72), v = randn({1, hkv, len, d}, 73);
    const Tensor w = randn({1, hq, len, d}, 74);
    auto loss = [&] { return mf::testing::weighted_sum(attention_forward(q, k, v, o).out, w); };
    const AttentionOutput a = attention_forward(q, k, v, o);
    const AttentionGrads g = attention_backward(q, k, v, a.out, a.lse, w, o);
    const auto r = mf::testing::gradcheck(loss, {q, k, v}, {g.dq, g.dk, g.dv});
    EXPECT_TRUE(r.ok) << r.report;
  }
}

const std::vector<std::string> kFixtures = {"sparse_fixed_bidirectional", "sparse_fixed_causal",
                                            "sparse_longformer_causal", "sparse_random_heads",
                                            "sparse_strided_bidirectional", "sparse_strided_causal"};

TEST(SparseAttention, MatchesPyTorchFixtures) {
  for (const std::string& name : kFixtures) {
    SCOPED_TRACE(name);
    const auto f = mf::testing::load_fixture(name);
    auto t = [&](const char* key) { return f.tensors.at(key).to(DType::F32).contiguous(); };
    auto opt = [&](const char* key) { return mf::testing::fixture_option(f, key); };
    const i64 block = opt("block"), len = t("q").size(2), rule = opt("rule");
    const bool causal = opt("causal") != 0;
    AttentionOptions o;
    o.causal = causal;
    BlockLayout built;
    if (rule == 1) built = strided_layout(len, block, opt("period"), causal);
    if (rule == 2) built = fixed_layout(len, block, opt("period"), opt("summary"), causal);
    std::vector<i64> globals;
    const Tensor gt = f.tensors.at("global_tokens").to(DType::I64);
    for (i64 x = 0; x < gt.numel(); ++x) globals.push_back(gt.data<std::int64_t>()[x]);
    if (opt("window") >= 0) {
      built = longformer_layout(len, block, opt("window"), opt("window"), globals, causal);
      o.window_left = o.window_right = opt("window");
      o.global_tokens = globals;
    }
    const BlockLayout stored = layout_from_tensor(f.tensors.at("layout"), block, "fixture layout");
    if (rule != 0 || opt("window") >= 0) {
      EXPECT_EQ(built.present, stored.present) << "the builder's tiles vs the fixture's";
      o.block_layout = std::make_shared<BlockLayout>(built);
    } else {
      o.block_layout = std::make_shared<BlockLayout>(stored);
    }
    const AttentionOutput a = attention_forward(t("q"), t("k"), t("v"), o);
    EXPECT_TRUE(close(a.out, t("out"), 1e-5, "out", 1.0));
    const auto gl = a.lse.to_vector(), wl = t("lse").to_vector();
    for (std::size_t x = 0; x < gl.size(); ++x)
      ASSERT_TRUE(gl[x] == wl[x] || std::fabs(gl[x] - wl[x]) <= 1e-5f * std::max(1.0f, std::fabs(wl[x]))) << x;
    const AttentionGrads g = attention_backward(t("q"), t("k"), t("v"), a.out, a.lse, t("dout"), o);
    EXPECT_TRUE(close(g.dq, t("dq"), 2e-5, "dq", 1.0));
    EXPECT_TRUE(close(g.dk, t("dk"), 2e-5, "dk", 1.0));
    EXPECT_TRUE(close(g.dv, t("dv"), 2e-5, "dv", 1.0));
  }
}

TEST(SparseAttention, FixtureListCoversEveryFile) { mf::testing::expect_fixture_list_covers("sparse_", kFixtures); }

TEST(SparseAttention, RejectsBadInput) {
  const Tensor q = randn({1, 2, 40, 8}, 81), k = randn({1, 1, 40, 8}, 82);
  auto run = [&](std::shared_ptr<BlockLayout> l, const Tensor& qq) {
    AttentionOptions o;
    o.block_layout = std::move(l);
    attention_forward(qq, k, k, o);
  };
  auto base = [] { return std::make_shared<BlockLayout>(strided_layout(40, 16, 4, false)); };
  {
    auto l = base();
    l->block = 24;
    EXPECT_ERROR("block must be a multiple of 16", run(l, q));
  }
  {
    auto l = base();
    l->present.pop_back();
    EXPECT_ERROR("present has", run(l, q));
  }
  EXPECT_ERROR("need 3 x 3", run(std::make_shared<BlockLayout>(strided_layout(20, 16, 4, false)), q));
  EXPECT_ERROR("head maps but q has 2 heads",
               run(std::make_shared<BlockLayout>(bigbird_layout(40, 16, 1, 1, 1, 3, 1, false)), q));
  EXPECT_ERROR("Lk - Lq must be a multiple", run(base(), randn({1, 2, 30, 8}, 83)));
  EXPECT_ERROR("Lq <= Lk", run(base(), randn({1, 2, 50, 8}, 84)));
  EXPECT_ERROR("option 'stride' must be in", strided_layout(40, 16, 0, true));
  EXPECT_ERROR("option 'block' must be a multiple of 16", fixed_layout(40, 8, 4, 1, true));
  EXPECT_ERROR("option 'c' must be in", fixed_layout(40, 16, 4, 5, true));
  EXPECT_ERROR("global token 50 is outside", longformer_layout(40, 16, 4, 4, {50}, true));
  EXPECT_ERROR("must hold integers", layout_from_tensor(randn({3, 3}, 1), 16, "map"));
  EXPECT_ERROR("must have shape [R, C] or [H, R, C]", layout_from_tensor(Tensor::zeros({3}, DType::I32), 16, "map"));
  EXPECT_ERROR("must be square", layout_from_tensor(Tensor::zeros({3, 4}, DType::I32), 16, "map"));
  // .npy maps: bool files load; a float file is refused by name.
  const std::string dir = ::testing::TempDir();
  {
    std::ofstream f(dir + "/bool_map.npy", std::ios::binary);
    std::string header = "{'descr': '|b1', 'fortran_order': False, 'shape': (2, 2), }";
    header += std::string(128 - 10 - header.size() - 1, ' ') + "\n";
    f << std::string("\x93NUMPY\x01\x00", 8) << static_cast<char>(header.size() & 0xff)
      << static_cast<char>(header.size() >> 8) << header << std::string("\x01\x00\x00\x01", 4);
  }
  const BlockLayout from_bool = layout_from_npy(dir + "/bool_map.npy", 16);
  EXPECT_EQ(from_bool.present, (std::vector<std::uint8_t>{1, 0, 0, 1}));
  save_npy(dir + "/float_map.npy", randn({2, 2}, 3));
  EXPECT_ERROR("float_map.npy' must hold integers", layout_from_npy(dir + "/float_map.npy", 16));
  // Mixer options.
  const TokenMixerEntry& e = token_mixer_entry("sparse_attention", "");
  MixerContext ctx;
  ctx.hidden_size = 16;
  ctx.num_heads = 2;
  ctx.num_kv_heads = 1;
  ctx.head_dim = 8;
  ctx.max_position_embeddings = 64;
  auto make = [&](nlohmann::json given) {
    mf::testing::OwnedParameters owner;
    mf::testing::RandomParamStore store(owner, 0.1f);
    ctx.options = parse_options(e.options, given, "", "sparse_attention");
    e.make(ctx, store);
  };
  EXPECT_ERROR("option 'block' must be a multiple of 16", make({{"block", 40}}));
  EXPECT_ERROR("option 'c' (9) must be at most 'stride' (8)", make({{"pattern", "fixed"}, {"stride", 8}, {"c", 9}}));
  EXPECT_ERROR("needs option 'layout_file'", make({{"pattern", "npy"}}));
  EXPECT_ERROR("sparse_attention.pattern", make({{"pattern", "dense"}}));
}

// Every option of the exact kernel on top of a per-head layout (GQA): ALiBi, key padding, dropout.
TEST(SparseAttention, FlashMatchesDenseWithEveryKernelOption) {
  const i64 len = 83, hq = 4, hkv = 2, d = 16;
  const Tensor q = randn({2, hq, len, d}, 91), k = randn({2, hkv, len, d}, 92), v = randn({2, hkv, len, d}, 93);
  const Tensor dout = randn({2, hq, len, d}, 94);
  for (bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "bidirectional");
    Case c = make_case("bigbird per head", std::make_shared<BlockLayout>(bigbird_layout(len, 16, 1, 1, 1, hq, 5, causal)),
                       causal);
    AttentionOptions o = options_of(c);
    o.alibi = true;
    o.dropout_p = 0.2f;
    o.dropout_seed = 7;
    o.key_padding_mask = Tensor::empty({2, len}, DType::I32);
    for (i64 x = 0; x < 2 * len; ++x) o.key_padding_mask.data<std::int32_t>()[x] = 1;
    for (i64 j : {3, 40, 82}) o.key_padding_mask.data<std::int32_t>()[len + j] = 0;
    const AttentionOutput want = attention_forward(q, k, v, o, AttentionImpl::Dense);
    const AttentionOutput got = attention_forward(q, k, v, o, AttentionImpl::Flash);
    EXPECT_TRUE(close(got.out, want.out, 2e-5, "out", 1.0));
    const AttentionGrads gw = attention_backward(q, k, v, want.out, want.lse, dout, o, AttentionImpl::Dense);
    const AttentionGrads gg = attention_backward(q, k, v, got.out, got.lse, dout, o, AttentionImpl::Flash);
    EXPECT_TRUE(close(gg.dq, gw.dq, 5e-5, "dq", 1.0));
    EXPECT_TRUE(close(gg.dk, gw.dk, 5e-5, "dk", 1.0));
    EXPECT_TRUE(close(gg.dv, gw.dv, 5e-5, "dv", 1.0));
  }
}

// `modformer attention --layout L.npy --layout-block 16` equals the library call with that layout.
TEST(SparseAttention, CliLayoutMatchesTheLibrary) {
  const std::string dir = ::testing::TempDir() + "/mf_sparse_cli_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const Tensor q = randn({1, 2, 50, 16}, 95), k = randn({1, 1, 50, 16}, 96), v = randn({1, 1, 50, 16}, 97);
  const auto layout = random_layout(50, 16, 2, 8);  // per head
  Tensor map = Tensor::empty({2, layout->row_blocks, layout->col_blocks}, DType::I32);
  for (i64 x = 0; x < map.numel(); ++x) map.data<std::int32_t>()[x] = layout->present[static_cast<std::size_t>(x)];
  for (const auto& [name, t] : {std::pair{"q", q}, std::pair{"k", k}, std::pair{"v", v}, std::pair{"map", map}})
    save_npy(dir + "/" + name + ".npy", t);
  const auto r = mf::testing::run_cli("attention --q " + dir + "/q.npy --k " + dir + "/k.npy --v " + dir +
                                          "/v.npy --out " + dir + "/o.npy --causal --layout " + dir +
                                          "/map.npy --layout-block 16",
                                      dir);
  ASSERT_EQ(r.rc, 0) << r.err;
  AttentionOptions o;
  o.causal = true;
  o.block_layout = layout;
  EXPECT_EQ(load_npy(dir + "/o.npy").to_vector(), attention_forward(q, k, v, o).out.to_vector());
  const auto bad = mf::testing::run_cli("attention --q " + dir + "/q.npy --k " + dir + "/k.npy --v " + dir +
                                            "/v.npy --out " + dir + "/o.npy --layout " + dir + "/map.npy --layout-block 8",
                                        dir);
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("'block' must be a multiple of 16"), std::string::npos) << bad.err;
  std::filesystem::remove_all(dir);
}

// `modformer bench sparse` smoke run: every row of the table and the JSON report.
TEST(SparseAttention, BenchSmoke) {
  const std::string dir = ::testing::TempDir() + "/mf_sparse_bench_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const auto r = mf::testing::run_cli("--threads 1 bench sparse --lengths 128 --densities 2,4 --heads 1 --head-dim 16 "
                                      "--block 16 --reps 1 --patterns strided,fixed,bigbird,longformer --json " +
                                          dir + "/s.json",
                                      dir);
  ASSERT_EQ(r.rc, 0) << r.err;
  for (const char* row : {"dense, 16-row tiles", "random 1/2", "random 1/4", "strided", "fixed", "bigbird", "longformer"})
    EXPECT_NE(r.out.find(row), std::string::npos) << row << "\n" << r.out;
  std::ifstream f(dir + "/s.json");
  const nlohmann::json j = nlohmann::json::parse(f);
  EXPECT_EQ(j.at("rows").size(), 8u);
  const auto bad = mf::testing::run_cli("bench sparse --patterns dense", dir);
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("unknown pattern 'dense'"), std::string::npos) << bad.err;
  std::filesystem::remove_all(dir);
}

// Tiny causal LMs with sparse_attention layers: each pattern trains (the loss
// falls) and generation (prefill, then steps) equals the full forward.
TEST(SparseAttentionMixer, TinyLmTrainsAndGeneratesLikeTheFullForward) {
  ScopedThreads one(1);
  ModelConfig cfg = mf::testing::tiny_modformer_config(AttentionImpl::Flash);
  cfg.initializer_range = 0.05;
  const nlohmann::json patterns[] = {
      {{"pattern", "strided"}, {"block", 16}, {"stride", 3}},
      {{"pattern", "fixed"}, {"block", 16}, {"stride", 8}, {"c", 2}},
      {{"pattern", "bigbird"}, {"block", 16}, {"window_blocks", 0}, {"random_blocks", 1}},
      {{"pattern", "longformer"}, {"block", 16}, {"window", 5}, {"global_tokens", 2}}};
  for (const nlohmann::json& opts : patterns) {
    SCOPED_TRACE(opts.dump());
    nlohmann::json j = config_to_json(cfg);
    j["token_mixer"] = "sparse_attention";
    j["sparse_attention"] = opts;
    Transformer m(config_from_json(j, "test.json"), 3);
    EXPECT_EQ(m.token_mixer(0).name(), "sparse_attention");
    const auto [tokens, targets] = mf::testing::periodic_lm_batch(2, 40);
    const auto [first, last] = mf::testing::sgd_losses(m, tokens, targets, 60, 0.5f);
    EXPECT_LT(last, 0.6 * first) << "first " << first << " last " << last;  // full attention: 3.06 -> 1.62
    const Tensor tok = mf::testing::random_tokens({2, 50}, 7, cfg.vocab_size);
    mf::testing::expect_generation_equals_full_forward(m, tok, 16, 1e-4f);
  }
}

// The mixer's layout for a call equals the builder's, and the mixer differs from full attention.
TEST(SparseAttentionMixer, LayoutFollowsOptions) {
  const TokenMixerEntry& e = token_mixer_entry("sparse_attention", "");
  const nlohmann::json o = parse_options(e.options, {{"pattern", "fixed"}, {"block", 32}, {"stride", 64}, {"c", 4}}, "", "x");
  const auto l = sparse_attention_layout(o, 300, true, 4);
  EXPECT_EQ(l->present, fixed_layout(300, 32, 64, 4, true).present);
  EXPECT_EQ(l->rule.kind, SparseElementRule::Kind::Fixed);
}

}  // namespace
}  // namespace mf
