// Attention with a value head dim Dv different from the query/key head dim D
// (DeepSeek MLA: 192 vs 128): flash == the dense reference, forward and
// backward, batched and varlen, causal, GQA, windows, key padding, L = 1 against
// many keys (the split-KV path), strided K/V views, every SIMD path, default and
// 16-wide tiles; the dense reference vs a float64 loop and finite differences;
// refusals of mismatched shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "nn/attention/attention.h"
#include "testing/gradcheck.h"
#include "../support/close.h"
#include "../support/errors.h"
#include "../support/flash_knobs.h"

using namespace mf;
using mf::testing::close;

namespace {

struct Case {
  std::string name;
  std::int64_t b, hq, hkv, lq, lk, d, dv;
  bool causal = false, varlen = false, padding = false;
  std::int64_t window = -1;
};

std::vector<Case> cases() {
  return {
      {"causal gqa awkward", 2, 4, 2, 37, 37, 24, 16, true},
      {"wider value", 1, 3, 1, 19, 19, 16, 40, true},
      {"bidirectional padding", 2, 2, 2, 21, 21, 32, 8, false, false, true},
      {"varlen causal", 3, 4, 1, 0, 0, 24, 16, true, true},
      {"window", 1, 2, 1, 45, 45, 16, 24, true, false, false, 7},
      {"decode many keys", 2, 4, 2, 1, 300, 24, 16, true},
      {"prefix continuation", 1, 4, 4, 5, 50, 48, 32, true},
      {"mla shape", 1, 2, 2, 17, 17, 192, 128, true},
      {"length one", 1, 2, 1, 1, 1, 16, 8, true},
  };
}

struct ValueDimProblem {
  Tensor q, k, v, dout, mask;
  VarlenSeqlens seqs;
  AttentionOptions opt;
};

ValueDimProblem make(const Case& c, std::uint64_t seed) {
  ValueDimProblem r;
  r.opt.causal = c.causal;
  r.opt.window_left = c.window;
  if (c.varlen) {
    const std::vector<std::int64_t> lens{7, 1, 26};
    r.seqs.cu_seqlens_q = {0};
    for (auto l : lens) r.seqs.cu_seqlens_q.push_back(r.seqs.cu_seqlens_q.back() + l);
    r.seqs.cu_seqlens_k = r.seqs.cu_seqlens_q;
    const std::int64_t total = r.seqs.cu_seqlens_q.back();
    r.q = randn({total, c.hq, c.d}, seed, 0);
    r.k = randn({total, c.hkv, c.d}, seed, 1);
    r.v = randn({total, c.hkv, c.dv}, seed, 2);
    r.dout = randn({total, c.hq, c.dv}, seed, 3);
    return r;
  }
  r.q = randn({c.b, c.hq, c.lq, c.d}, seed, 0);
  r.k = randn({c.b, c.hkv, c.lk, c.d}, seed, 1);
  r.v = randn({c.b, c.hkv, c.lk, c.dv}, seed, 2);
  r.dout = randn({c.b, c.hq, c.lq, c.dv}, seed, 3);
  if (c.padding) {
    r.opt.key_padding_mask = Tensor::empty({c.b, c.lk}, DType::I32);
    for (std::int64_t i = 0; i < c.b * c.lk; ++i)
      r.opt.key_padding_mask.data<std::int32_t>()[i] = (i % c.lk) % 5 == 3 || i % c.lk >= c.lk - 2 ? 0 : 1;
  }
  return r;
}

AttentionOutput fwd(const Case& c, const ValueDimProblem& r, AttentionImpl impl, const Tensor& k, const Tensor& v) {
  return c.varlen ? attention_varlen_forward(r.q, k, v, r.seqs, r.opt, impl) : attention_forward(r.q, k, v, r.opt, impl);
}
AttentionGrads bwd(const Case& c, const ValueDimProblem& r, const AttentionOutput& o, AttentionImpl impl) {
  return c.varlen ? attention_varlen_backward(r.q, r.k, r.v, o.out, o.lse, r.dout, r.seqs, r.opt, impl)
                  : attention_backward(r.q, r.k, r.v, o.out, o.lse, r.dout, r.opt, impl);
}

struct DenseResult {
  AttentionOutput out;
  AttentionGrads grads;
};

DenseResult dense_of(const Case& c) {
  const ValueDimProblem r = make(c, 11);
  DenseResult d;
  d.out = fwd(c, r, AttentionImpl::Dense, r.k, r.v);
  d.grads = bwd(c, r, d.out, AttentionImpl::Dense);
  return d;
}

void expect_flash_equals_dense(const Case& c, const DenseResult& d, const FlashTiles& tiles) {
  ValueDimProblem r = make(c, 11);
  r.opt.flash_tiles = tiles;
  const AttentionOutput f = fwd(c, r, AttentionImpl::Flash, r.k, r.v);
  Shape out_shape = r.q.shape();
  out_shape.back() = c.dv;
  ASSERT_EQ(f.out.shape(), out_shape);
  EXPECT_TRUE(close(f.out, d.out.out, 2e-5, "out"));
  EXPECT_TRUE(close(f.lse, d.out.lse, 2e-5, "lse"));
  const AttentionGrads gf = bwd(c, r, d.out, AttentionImpl::Flash);  // from the dense forward's out and lse
  EXPECT_TRUE(close(gf.dq, d.grads.dq, 5e-5, "dq", 1.0));
  EXPECT_TRUE(close(gf.dk, d.grads.dk, 5e-5, "dk", 1.0));
  EXPECT_TRUE(close(gf.dv, d.grads.dv, 5e-5, "dv", 1.0));
  EXPECT_EQ(gf.dv.shape(), r.v.shape());
}

}  // namespace

TEST(AttentionValueDim, FlashEqualsDenseOnEverySimdPathAndTiling) {
  mf::testing::ScopedFlashIsa restore;
  std::vector<DenseResult> dense;
  for (const Case& c : cases()) dense.push_back(dense_of(c));
  const std::vector<Isa> isas = mf::testing::flash_isas();
  for (Isa isa : isas) {
    set_isa(isa);
    for (std::size_t ci = 0; ci < cases().size(); ++ci) {
      const Case c = cases()[ci];
      if (isa != isas.front() && c.hq * c.lq * c.lk * (c.d + c.dv) > 40000) continue;  // large shapes: the fastest path only
      FlashTiles split = mf::testing::tiny_flash_tiles(16);  // the split-KV path for few rows against many keys
      split.split_chunk = 64;
      split.split_min_keys = 128;
      for (const FlashTiles& tiles : {FlashTiles{}, mf::testing::tiny_flash_tiles(0), mf::testing::tiny_flash_tiles(16), split}) {
        SCOPED_TRACE(c.name + " isa " + std::to_string(static_cast<int>(isa)) + " small_rows " +
                     std::to_string(tiles.small_rows));
        expect_flash_equals_dense(c, dense[ci], tiles);
      }
    }
  }
}

// The dense reference with Dv != D against a float64 loop written here.
TEST(AttentionValueDim, DenseMatchesFloat64Loop) {
  const Case c{"gqa causal", 2, 4, 2, 6, 9, 8, 16, true};
  const ValueDimProblem r = make(c, 3);
  const AttentionOutput o = attention_forward(r.q, r.k, r.v, r.opt, AttentionImpl::Dense);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  std::vector<float> want(static_cast<std::size_t>(c.b * c.hq * c.lq * c.dv));
  for (std::int64_t b = 0; b < c.b; ++b)
    for (std::int64_t h = 0; h < c.hq; ++h)
      for (std::int64_t i = 0; i < c.lq; ++i) {
        const std::int64_t g = h / (c.hq / c.hkv), ip = i + c.lk - c.lq;
        std::vector<double> s(static_cast<std::size_t>(ip + 1));
        double mx = -1e300, sum = 0;
        for (std::int64_t j = 0; j <= ip; ++j) {
          double dot = 0;
          for (std::int64_t x = 0; x < c.d; ++x)
            dot += double(r.q.data<float>()[((b * c.hq + h) * c.lq + i) * c.d + x]) *
                   r.k.data<float>()[((b * c.hkv + g) * c.lk + j) * c.d + x];
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        for (double& v : s) sum += (v = std::exp(v - mx));
        for (std::int64_t x = 0; x < c.dv; ++x) {
          double acc = 0;
          for (std::int64_t j = 0; j <= ip; ++j) acc += s[j] / sum * r.v.data<float>()[((b * c.hkv + g) * c.lk + j) * c.dv + x];
          want[((b * c.hq + h) * c.lq + i) * c.dv + x] = static_cast<float>(acc);
        }
      }
  EXPECT_TRUE(close(o.out, Tensor::from_vector(o.out.shape(), want), 1e-6, "out"));
}

TEST(AttentionValueDim, GradientsMatchFiniteDifferences) {
  for (AttentionImpl impl : {AttentionImpl::Dense, AttentionImpl::Flash}) {
    const Case c{"gqa causal", 1, 2, 1, 5, 7, 8, 16, true};
    ValueDimProblem r = make(c, 5);
    const Tensor w = randn({c.b, c.hq, c.lq, c.dv}, 9);
    auto loss = [&] { return mf::testing::weighted_sum(attention_forward(r.q, r.k, r.v, r.opt, impl).out, w); };
    const AttentionOutput o = attention_forward(r.q, r.k, r.v, r.opt, impl);
    const AttentionGrads g = attention_backward(r.q, r.k, r.v, o.out, o.lse, w, r.opt, impl);
    mf::testing::GradcheckOptions opt;
    opt.atol = 5e-4;
    opt.rtol = 5e-3;
    const auto res = mf::testing::gradcheck(loss, {r.q, r.k, r.v}, {g.dq, g.dk, g.dv}, opt);
    EXPECT_TRUE(res.ok) << res.report;
  }
}

// K and V as strided views of one preallocated cache each (different strides):
// read in place, same result as packed copies.
TEST(AttentionValueDim, StridedKeyValueViews) {
  const Case c{"views", 2, 4, 2, 3, 20, 24, 16, true};
  const ValueDimProblem r = make(c, 7);
  Tensor kbuf = Tensor::zeros({c.b, c.hkv, 32, c.d}), vbuf = Tensor::zeros({c.b, c.hkv, 40, c.dv});
  Tensor kview = kbuf.slice(2, 0, c.lk), vview = vbuf.slice(2, 0, c.lk);
  kview.copy_from(r.k);
  vview.copy_from(r.v);
  for (AttentionImpl impl : {AttentionImpl::Dense, AttentionImpl::Flash}) {
    const AttentionOutput packed = fwd(c, r, impl, r.k, r.v), viewed = fwd(c, r, impl, kview, vview);
    EXPECT_EQ(packed.out.to_vector(), viewed.out.to_vector());
  }
}

TEST(AttentionValueDim, MismatchedShapesAreRefusedByName) {
  const Tensor q = randn({1, 2, 4, 16}, 1), k = randn({1, 1, 5, 16}, 2);
  AttentionOptions opt;
  EXPECT_ERROR("v must have shape [B, Hkv, Lk, Dv]", attention_forward(q, k, randn({1, 1, 6, 8}, 3), opt));
  EXPECT_ERROR("value head dimension Dv must be a multiple of 8", attention_forward(q, k, randn({1, 1, 5, 12}, 3), opt));
  const Tensor v = randn({1, 1, 5, 8}, 3);
  const AttentionOutput o = attention_forward(q, k, v, opt);
  EXPECT_EQ(o.out.shape(), (Shape{1, 2, 4, 8}));
  EXPECT_ERROR("dout must have shape [1, 2, 4, 8]", attention_backward(q, k, v, o.out, o.lse, randn({1, 2, 4, 16}, 4), opt));
  EXPECT_ERROR("v must have shape [total_k, Hkv, Dv]",
               attention_varlen_forward(randn({4, 2, 16}, 1), randn({5, 1, 16}, 2), randn({5, 2, 8}, 3),
                                        VarlenSeqlens{{0, 4}, {0, 5}}, opt));
}
