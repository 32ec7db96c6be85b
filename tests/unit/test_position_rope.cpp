// RoPE: fast kernel vs the double-precision reference twin over both
// conventions x every scaling x awkward shapes, layouts and positions;
// backward vs finite differences; the convention permutation, the
// relative-position property, scaling formulas by hand; determinism; errors.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numbers>

#include "core/rng.h"
#include "core/threads.h"
#include "nn/position/rope.h"
#include "testing/gradcheck.h"
#include "../support/errors.h"
#include "../support/fixtures.h"

using namespace mf;

namespace {

constexpr double kU = std::numeric_limits<float>::epsilon() / 2;  // unit roundoff of float32

const RopeScaling kScalings[] = {RopeScaling::None, RopeScaling::Linear, RopeScaling::Ntk, RopeScaling::DynamicNtk,
                                 RopeScaling::Yarn};
const RopeConvention kConventions[] = {RopeConvention::RotateHalf, RopeConvention::Interleaved};

RopeConfig make_config(RopeConvention conv, RopeScaling s, std::int64_t rotary_dim) {
  RopeConfig c;
  c.rotary_dim = rotary_dim;
  c.convention = conv;
  c.scaling = s;
  if (s != RopeScaling::None) c.factor = 4.0;
  // Short pretraining length so that dynamic NTK kicks in at test lengths.
  if (s == RopeScaling::DynamicNtk || s == RopeScaling::Yarn) c.original_max_position_embeddings = 24;
  return c;
}

std::string name_of(const RopeConfig& c) {
  return str_cat(c.convention == RopeConvention::RotateHalf ? "rotate_half" : "interleaved", "/",
                 rope_scaling_name(c.scaling), "/R=", c.rotary_dim);
}

// Pair partner of dim d within a row (d < R), per convention.
std::int64_t partner(std::int64_t d, std::int64_t R, RopeConvention conv) {
  if (conv == RopeConvention::Interleaved) return d ^ 1;
  return d < R / 2 ? d + R / 2 : d - R / 2;
}

// Compares y with y_ref (both contiguous, rows of D consecutive floats), x
// being the (contiguous) input. Bound per rotated element: the table rounds
// af*cos and af*sin once each (u), the two products and the sum add three
// more roundings, and the reference rounds its double result once:
// |err| <= 5u * af * (|x_a| + |x_b|). Dims >= R must match exactly.
::testing::AssertionResult rope_close(const Tensor& y, const Tensor& y_ref, const Tensor& x, std::int64_t D,
                                      std::int64_t R, RopeConvention conv, double af) {
  const auto a = y.to_vector(), b = y_ref.to_vector(), in = x.contiguous().to_vector();
  if (a.size() != b.size() || a.size() != in.size()) return ::testing::AssertionFailure() << "size mismatch";
  for (std::size_t i = 0; i < a.size(); ++i) {
    const std::int64_t d = static_cast<std::int64_t>(i) % D;
    double bound = 0;
    if (d < R) {
      const std::size_t j = i - d + partner(d, R, conv);
      bound = 5 * kU * af * (std::fabs(in[i]) + std::fabs(in[j]));
    }
    if (!(std::fabs(static_cast<double>(a[i]) - b[i]) <= bound))
      return ::testing::AssertionFailure() << "element " << i << " (dim " << d << "): " << a[i] << " vs reference "
                                           << b[i] << ", bound " << bound;
  }
  return ::testing::AssertionSuccess();
}

bool bitwise_equal(const Tensor& a, const Tensor& b) { return a.shape() == b.shape() && a.to_vector() == b.to_vector(); }

Tensor int_tensor(const Shape& shape, const std::vector<std::int64_t>& v, DType dt = DType::I32) {
  Tensor t = Tensor::empty(shape, dt);
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::I32)
      t.data<std::int32_t>()[i] = static_cast<std::int32_t>(v[i]);
    else
      t.data<std::int64_t>()[i] = v[i];
  }
  return t;
}

}  // namespace

TEST(PositionRope, ConfigValidationNamesTheField) {
  RopeConfig c;
  c.rotary_dim = 64;
  EXPECT_NO_THROW(c.validate());
  c.scaling = RopeScaling::Linear;
  c.factor = 0.5;
  try {
    c.validate();
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "[rope] rope_scaling.factor must be >= 1, got 0.5");
  }
  auto message = [](const RopeConfig& cfg) -> std::string {
    try {
      cfg.validate();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  RopeConfig d;
  d.rotary_dim = 63;
  EXPECT_NE(message(d).find("rotary_dim must be a positive even number, got 63"), std::string::npos);
  d.rotary_dim = 64;
  d.theta = -1;
  EXPECT_NE(message(d).find("rope_theta"), std::string::npos);
  d.theta = 10000;
  d.scaling = RopeScaling::DynamicNtk;
  d.factor = 2;
  EXPECT_NE(message(d).find("rope_scaling.original_max_position_embeddings must be >= 1"), std::string::npos);
  d.scaling = RopeScaling::Yarn;
  d.original_max_position_embeddings = 2048;
  d.beta_fast = 0.5;
  EXPECT_NE(message(d).find("rope_scaling.beta_fast (0.5) must be >= rope_scaling.beta_slow (1)"), std::string::npos);
  d.beta_fast = 32;
  d.attention_factor = -1.0;
  EXPECT_NE(message(d).find("rope_scaling.attention_factor must be > 0"), std::string::npos);
  d.attention_factor = 1.5;
  EXPECT_EQ(message(d), "");
  d.scaling = RopeScaling::Linear;
  EXPECT_NE(message(d).find("attention_factor applies only to yarn"), std::string::npos);
  RopeConfig e;
  e.rotary_dim = 2;
  e.scaling = RopeScaling::Ntk;
  e.factor = 2;
  EXPECT_NE(message(e).find("rotary_dim must be >= 4 for ntk"), std::string::npos);
  e.rotary_dim = 8;
  e.scaling = RopeScaling::None;
  EXPECT_NE(message(e).find("rope_scaling.factor is 2 but rope_scaling.rope_type is default"), std::string::npos);
  EXPECT_EQ(parse_rope_scaling("dynamic"), RopeScaling::DynamicNtk);
  EXPECT_EQ(parse_rope_scaling("default"), RopeScaling::None);
  EXPECT_ERROR("rope_scaling.rope_type must be one of default, linear, ntk, dynamic, yarn; got 'llama3'", parse_rope_scaling("llama3"));
  // The table validates its config.
  EXPECT_ERROR("rope_scaling.factor must be >= 1, got 0.5", RopeTable(c, 8));
}

TEST(PositionRope, ScalingFormulasByHand) {
  const double theta = 10000;
  RopeConfig c = make_config(RopeConvention::RotateHalf, RopeScaling::None, 64);
  auto inv = rope_inv_freq(c, 0);
  ASSERT_EQ(inv.size(), 32u);
  EXPECT_DOUBLE_EQ(inv[0], 1.0);
  EXPECT_NEAR(inv[5], std::pow(theta, -10.0 / 64), 1e-15);
  c.scaling = RopeScaling::Linear;
  c.factor = 4;
  EXPECT_NEAR(rope_inv_freq(c, 0)[5], std::pow(theta, -10.0 / 64) / 4, 1e-15);
  c.scaling = RopeScaling::Ntk;
  EXPECT_NEAR(rope_effective_theta(c, 0), theta * std::pow(4.0, 64.0 / 62), 1e-6);
  // Dynamic NTK: base unchanged up to the pretraining length, then
  // theta * (factor * S / orig - (factor - 1))^(R / (R - 2)).
  c.scaling = RopeScaling::DynamicNtk;
  c.original_max_position_embeddings = 16;
  EXPECT_EQ(rope_effective_theta(c, 10), theta);
  EXPECT_EQ(rope_effective_theta(c, 16), theta);
  EXPECT_NEAR(rope_effective_theta(c, 40), theta * std::pow(4.0 * 40 / 16 - 3, 64.0 / 62), 1e-6);
  // YaRN, R = 64, theta = 1e4, orig = 2048, factor 4: correction dims
  // floor(64 ln(2048 / (32 * 2 pi)) / (2 ln 1e4)) = floor(8.06) = 8 and
  // ceil(64 ln(2048 / (2 pi)) / (2 ln 1e4)) = ceil(20.1) = 21.
  c.scaling = RopeScaling::Yarn;
  c.original_max_position_embeddings = 2048;
  const auto y = rope_inv_freq(c, 0);
  for (int i : {0, 8}) EXPECT_NEAR(y[i], inv[i], 1e-15) << i;              // extrapolation
  for (int i : {21, 31}) EXPECT_NEAR(y[i], inv[i] / 4, 1e-15) << i;        // interpolation
  const double r = (14.0 - 8) / (21 - 8);                                 // ramp in between
  EXPECT_NEAR(y[14], inv[14] / 4 * r + inv[14] * (1 - r), 1e-15);
  EXPECT_NEAR(rope_attention_factor(c), 0.1 * std::log(4.0) + 1, 1e-15);
  c.attention_factor = 1.25;
  EXPECT_EQ(rope_attention_factor(c), 1.25);
}

TEST(PositionRope, TableCachesAndRecomputesForDynamicNtk) {
  RopeConfig c = make_config(RopeConvention::RotateHalf, RopeScaling::DynamicNtk, 16);
  c.original_max_position_embeddings = 16;
  RopeTable t(c, 8);
  EXPECT_EQ(t.size(), 8);
  EXPECT_EQ(t.theta(), 10000.0);
  t.prepare(16);  // grows, same base
  EXPECT_EQ(t.size(), 16);
  EXPECT_EQ(t.theta(), 10000.0);
  const float c5 = t.cos_row(5)[3];
  t.prepare(40);  // beyond the pretraining length: new base, every row recomputed
  EXPECT_NEAR(t.theta(), rope_effective_theta(c, 40), 1e-9);
  EXPECT_GT(t.theta(), 10000.0);
  EXPECT_NE(t.cos_row(5)[3], c5);
  const auto inv = rope_inv_freq(c, 40);
  for (std::int64_t p : {0, 5, 39})
    for (std::int64_t i = 0; i < 8; ++i) {
      EXPECT_EQ(t.cos_row(p)[i], static_cast<float>(std::cos(p * inv[i])));
      EXPECT_EQ(t.sin_row(p)[i], static_cast<float>(std::sin(p * inv[i])));
    }
  t.prepare(10);  // back under the pretraining length: the original base again
  EXPECT_EQ(t.theta(), 10000.0);
  EXPECT_EQ(t.cos_row(5)[3], c5);
  // A static scaling never recomputes; it only grows.
  RopeTable s(make_config(RopeConvention::Interleaved, RopeScaling::Yarn, 16), 4);
  s.prepare(100);
  EXPECT_EQ(s.size(), 100);
  EXPECT_EQ(s.cos().shape(), (Shape{100, 8}));
  EXPECT_NEAR(s.cos_row(0)[0], rope_attention_factor(s.config()), 1e-6);
}

TEST(PositionRope, FastMatchesReferenceAllConventionsAndScalings) {
  struct Shape4 {
    std::int64_t B, H, L, D, R;
  };
  const Shape4 shapes[] = {{2, 3, 13, 8, 8}, {1, 2, 37, 64, 64}, {2, 2, 9, 80, 80}, {1, 3, 17, 128, 128},
                           {2, 2, 11, 80, 32}, {1, 1, 1, 64, 48}};
  const std::int64_t offsets[] = {0, 7, 3001};
  int cases = 0;
  for (RopeConvention conv : kConventions)
    for (RopeScaling sc : kScalings)
      for (const Shape4& s : shapes)
        for (std::int64_t off : offsets) {
          const RopeConfig cfg = make_config(conv, sc, s.R);
          SCOPED_TRACE(str_cat(name_of(cfg), " B=", s.B, " H=", s.H, " L=", s.L, " D=", s.D, " offset=", off));
          const Tensor x = randn({s.B, s.H, s.L, s.D}, 100 + cases);
          RopeArgs args;
          args.positions.offset = off;
          RopeTable table(cfg, 16);
          const double af = rope_attention_factor(cfg);
          const Tensor y = rope_forward(x, table, args);
          const Tensor y_ref = rope_forward_reference(x, cfg, args);
          EXPECT_TRUE(rope_close(y, y_ref, x, s.D, s.R, conv, af));
          // In place gives the same bits as out of place.
          Tensor xi = x.clone();
          rope_forward_inplace(xi, table, args);
          EXPECT_TRUE(bitwise_equal(xi, y));
          // Backward: rotation by -angle.
          const Tensor dx = rope_backward(x, table, args);
          EXPECT_TRUE(rope_close(dx, rope_backward_reference(x, cfg, args), x, s.D, s.R, conv, af));
          Tensor di = x.clone();
          rope_backward_inplace(di, table, args);
          EXPECT_TRUE(bitwise_equal(di, dx));
          ++cases;
        }
  EXPECT_EQ(cases, 2 * 5 * 6 * 3);
}

TEST(PositionRope, ReferenceIsTheRotationFromThePaper) {
  // One pair, one position, written out: R(m theta) [x0, x1] with theta = 1
  // for the first pair, so the angle is m radians.
  RopeConfig cfg = make_config(RopeConvention::Interleaved, RopeScaling::None, 4);
  RopeArgs args;
  args.positions.offset = 3;
  const Tensor x = Tensor::from_vector({1, 1, 1, 4}, {0.5f, -2.0f, 1.0f, 0.25f});
  const auto y = rope_forward_reference(x, cfg, args).to_vector();
  EXPECT_FLOAT_EQ(y[0], static_cast<float>(0.5 * std::cos(3.0) + 2.0 * std::sin(3.0)));
  EXPECT_FLOAT_EQ(y[1], static_cast<float>(-2.0 * std::cos(3.0) + 0.5 * std::sin(3.0)));
  const double a1 = 3.0 / 100.0;  // theta_1 = 10000^(-2/4)
  EXPECT_FLOAT_EQ(y[2], static_cast<float>(1.0 * std::cos(a1) - 0.25 * std::sin(a1)));
  EXPECT_FLOAT_EQ(y[3], static_cast<float>(0.25 * std::cos(a1) + 1.0 * std::sin(a1)));
}

TEST(PositionRope, LayoutsAndStridedViewsAgree) {
  const std::int64_t B = 2, H = 3, L = 11, D = 64;
  for (RopeConvention conv : kConventions) {
    const RopeConfig cfg = make_config(conv, RopeScaling::Yarn, 48);
    RopeTable table(cfg, 64);
    RopeArgs bhld;
    bhld.positions.offset = 5;
    const Tensor x = randn({B, H, L, D}, 7);
    const Tensor y = rope_forward(x, table, bhld);
    // [B, L, H, D] contiguous.
    const Tensor xl = x.permute({0, 2, 1, 3}).contiguous();
    RopeArgs blhd = bhld;
    blhd.layout = RopeLayout::BLHD;
    EXPECT_TRUE(bitwise_equal(rope_forward(xl, table, blhd), y.permute({0, 2, 1, 3}).contiguous()));
    // A [B, H, L, D] view of [B, L, H, D] storage, in place.
    Tensor xl2 = xl.clone();
    rope_forward_inplace(xl2.permute({0, 2, 1, 3}), table, bhld);
    EXPECT_TRUE(bitwise_equal(xl2, y.permute({0, 2, 1, 3}).contiguous()));
    // [B, L, H*D] as the K slice of a fused QKV projection [B, L, 3*H*D].
    Tensor qkv = randn({B, L, 3 * H * D}, 8);
    Tensor kslice = qkv.slice(2, H * D, 2 * H * D);
    kslice.copy_from(xl.reshape({B, L, H * D}));
    RopeArgs packed = bhld;
    packed.layout = RopeLayout::BL_HD;
    packed.num_heads = H;
    const Tensor before_q = qkv.slice(2, 0, H * D).clone();
    const Tensor k_in = kslice.clone();
    rope_forward_inplace(kslice, table, packed);
    EXPECT_TRUE(bitwise_equal(kslice.contiguous(), y.permute({0, 2, 1, 3}).contiguous().reshape({B, L, H * D})));
    EXPECT_TRUE(bitwise_equal(qkv.slice(2, 0, H * D).contiguous(), before_q));  // neighbours untouched
    // Reference in the packed layout agrees too.
    EXPECT_TRUE(rope_close(kslice.contiguous(), rope_forward_reference(k_in, cfg, packed), k_in, D, 48, conv,
                           rope_attention_factor(cfg)));
  }
}

TEST(PositionRope, ExplicitPositionsMatchOffsets) {
  const std::int64_t B = 2, H = 2, L = 9, D = 32;
  for (RopeConvention conv : kConventions) {
    const RopeConfig cfg = make_config(conv, RopeScaling::Linear, 32);
    RopeTable table(cfg, 8);
    const Tensor x = randn({B, H, L, D}, 11);
    RopeArgs off;
    off.positions.offset = 20;
    const Tensor y_off = rope_forward(x, table, off);
    // [L] ids equal to offset + l.
    std::vector<std::int64_t> ids1(L);
    for (int l = 0; l < L; ++l) ids1[l] = 20 + l;
    RopeArgs a1;
    a1.positions.ids = int_tensor({L}, ids1);
    EXPECT_TRUE(bitwise_equal(rope_forward(x, table, a1), y_off));
    // [B, L] ids: batch 0 at 20 + l, batch 1 scrambled; each row of batch 1
    // must equal the offset-rotated row of its own position.
    std::vector<std::int64_t> ids2(B * L);
    for (int l = 0; l < L; ++l) {
      ids2[l] = 20 + l;
      ids2[L + l] = 20 + (l * 4) % L;
    }
    RopeArgs a2;
    a2.positions.ids = int_tensor({B, L}, ids2);
    const Tensor y2 = rope_forward(x, table, a2);
    EXPECT_TRUE(bitwise_equal(y2.select(0, 0).contiguous(), y_off.select(0, 0).contiguous()));
    for (int l = 0; l < L; ++l) {
      RopeArgs one;
      one.positions.offset = 20 + (l * 4) % L;
      const Tensor row = rope_forward(x.slice(0, 1, 2).slice(2, l, l + 1), table, one);
      EXPECT_TRUE(bitwise_equal(y2.slice(0, 1, 2).slice(2, l, l + 1).contiguous(), row)) << l;
    }
    EXPECT_TRUE(rope_close(y2, rope_forward_reference(x, cfg, a2), x, D, 32, conv, 1.0));
  }
}

TEST(PositionRope, LinearScalingIsPositionInterpolation) {
  // Linear scaling by f at position f*m equals no scaling at position m.
  const std::int64_t L = 10, D = 16;
  RopeConfig lin = make_config(RopeConvention::RotateHalf, RopeScaling::Linear, D);
  lin.factor = 4;
  RopeConfig none = make_config(RopeConvention::RotateHalf, RopeScaling::None, D);
  std::vector<std::int64_t> m(L), fm(L);
  for (int l = 0; l < L; ++l) {
    m[l] = 3 * l;
    fm[l] = 12 * l;
  }
  RopeArgs am, afm;
  am.positions.ids = int_tensor({L}, m);
  afm.positions.ids = int_tensor({L}, fm);
  const Tensor x = randn({1, 1, L, D}, 5);
  RopeTable tl(lin, 0), tn(none, 0);
  const Tensor a = rope_forward(x, tl, afm), b = rope_forward(x, tn, am);
  EXPECT_TRUE(rope_close(a, b, x, D, D, RopeConvention::RotateHalf, 1.0));
}

TEST(PositionRope, InterleavedIsRotateHalfUpToAPermutation) {
  // Interleaved pair (2i, 2i+1) is rotate-half pair (i, i + R/2): with P
  // sending dim 2i -> i and 2i+1 -> i + R/2, interleaved(x) = P^-1 rotate_half(P x),
  // with bitwise equality (same table values, same arithmetic per pair).
  const std::int64_t B = 1, H = 2, L = 7, D = 80, R = 64;
  for (RopeScaling sc : kScalings) {
    const RopeConfig ci = make_config(RopeConvention::Interleaved, sc, R);
    const RopeConfig ch = make_config(RopeConvention::RotateHalf, sc, R);
    RopeTable ti(ci, 0), th(ch, 0);
    RopeArgs args;
    args.positions.offset = 30;  // > 24: dynamic NTK has kicked in
    const Tensor x = randn({B, H, L, D}, 3);
    const auto xv = x.to_vector();
    std::vector<float> px(xv.size());
    const std::int64_t rows = B * H * L;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t d = 0; d < D; ++d) {
        const std::int64_t pd = d >= R ? d : (d % 2 == 0 ? d / 2 : d / 2 + R / 2);
        px[r * D + pd] = xv[r * D + d];
      }
    const auto yi = rope_forward(x, ti, args).to_vector();
    const auto yh = rope_forward(Tensor::from_vector(x.shape(), px), th, args).to_vector();
    bool same = true;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t d = 0; d < D; ++d) {
        const std::int64_t pd = d >= R ? d : (d % 2 == 0 ? d / 2 : d / 2 + R / 2);
        same = same && yi[r * D + d] == yh[r * D + pd];
      }
    EXPECT_TRUE(same) << rope_scaling_name(sc);
    // ... and not the identity permutation: without P they differ.
    EXPECT_FALSE(bitwise_equal(rope_forward(x, ti, args), rope_forward(x, th, args)));
  }
}

TEST(PositionRope, DotProductDependsOnlyOnRelativePosition) {
  // <R_m q, R_n k> = <q, R_{n-m} k>: shifting both positions by s keeps it.
  const std::int64_t D = 64;
  for (RopeConvention conv : kConventions)
    for (RopeScaling sc : {RopeScaling::None, RopeScaling::Linear, RopeScaling::Ntk, RopeScaling::Yarn}) {
      const RopeConfig cfg = make_config(conv, sc, D);
      RopeTable table(cfg, 0);
      const Tensor q = randn({1, 1, 1, D}, 21), k = randn({1, 1, 1, D}, 22);
      auto dot_at = [&](std::int64_t m, std::int64_t n) {
        RopeArgs am, an;
        am.positions.offset = m;
        an.positions.offset = n;
        const auto a = rope_forward(q, table, am).to_vector(), b = rope_forward(k, table, an).to_vector();
        double s = 0;
        for (std::int64_t i = 0; i < D; ++i) s += static_cast<double>(a[i]) * b[i];
        return s;
      };
      // Each rotated element is off by <= 5u af (|a| + |b|) <= 10u af max|x|
      // and is at most 2 af max|x| in size, so a dot of D products is off by
      // <= D (10u af mq * 2 af mk + 2 af mq * 10u af mk) = 40 D u af^2 mq mk.
      double mq = 0, mk = 0;
      for (float v : q.to_vector()) mq = std::max(mq, static_cast<double>(std::fabs(v)));
      for (float v : k.to_vector()) mk = std::max(mk, static_cast<double>(std::fabs(v)));
      const double af = rope_attention_factor(cfg);
      const double tol = 40 * D * kU * af * af * mq * mk;
      for (auto [m, n] : {std::pair<std::int64_t, std::int64_t>{3, 10}, {10, 3}, {0, 0}, {5, 6}}) {
        const double base = dot_at(m, n);
        for (std::int64_t s : {1, 17, 1000, 10000})
          EXPECT_NEAR(dot_at(m + s, n + s), base, tol) << name_of(cfg) << " m=" << m << " n=" << n << " s=" << s;
      }
      // The property is not vacuous: moving only one side changes the dot.
      EXPECT_GT(std::fabs(dot_at(3, 10) - dot_at(3, 11)), 100 * tol) << name_of(cfg);
    }
}

TEST(PositionRope, BackwardMatchesFiniteDifferences) {
  const std::int64_t B = 2, H = 2, L = 5, D = 24;
  for (RopeConvention conv : kConventions)
    for (RopeScaling sc : kScalings) {
      const RopeConfig cfg = make_config(conv, sc, 16);  // partial: dims 16..23 pass through
      RopeTable table(cfg, 0);
      RopeArgs args;
      args.positions.offset = 22;  // 22 + 5 > 24: dynamic NTK active
      Tensor x = randn({B, H, L, D}, 31);
      const Tensor w = randn({B, H, L, D}, 32);
      auto loss = [&] { return mf::testing::weighted_sum(rope_forward(x, table, args), w); };
      const Tensor dx = rope_backward(w, table, args);
      const auto r = mf::testing::gradcheck(loss, {x}, {dx});
      EXPECT_TRUE(r.ok) << name_of(cfg) << "\n" << r.report;
      EXPECT_EQ(r.checked, 48);
    }
}

TEST(PositionRope, BackwardUndoesForwardUpToAttentionFactor) {
  const RopeConfig cfg = make_config(RopeConvention::RotateHalf, RopeScaling::Yarn, 64);
  RopeTable table(cfg, 0);
  RopeArgs args;
  args.positions.offset = 100;
  const Tensor x = randn({1, 2, 9, 64}, 41);
  const auto back = rope_backward(rope_forward(x, table, args), table, args).to_vector();
  const auto xv = x.to_vector();
  const double af2 = std::pow(rope_attention_factor(cfg), 2);
  for (std::size_t i = 0; i < xv.size(); ++i) EXPECT_NEAR(back[i], af2 * xv[i], 1e-5 * (1 + std::fabs(xv[i])));
}

TEST(PositionRope, DeterministicAcrossRunsAndThreadCounts) {
  const RopeConfig cfg = make_config(RopeConvention::Interleaved, RopeScaling::DynamicNtk, 128);
  const Tensor x = randn({4, 8, 67, 128}, 51);  // large enough for the parallel path
  RopeArgs args;
  args.positions.offset = 3;
  const int saved = num_threads();
  set_num_threads(1);
  RopeTable t1(cfg, 0);
  const Tensor y1 = rope_forward(x, t1, args);
  set_num_threads(2);
  RopeTable t2(cfg, 0);
  const Tensor y2 = rope_forward(x, t2, args);
  const Tensor y3 = rope_forward(x, t2, args);
  set_num_threads(saved);
  EXPECT_TRUE(bitwise_equal(y1, y2));
  EXPECT_TRUE(bitwise_equal(y2, y3));
}

TEST(PositionRope, EmptyAndBadInputs) {
  RopeTable table(make_config(RopeConvention::RotateHalf, RopeScaling::None, 32), 8);
  RopeArgs args;
  EXPECT_EQ(rope_forward(Tensor::zeros({2, 3, 0, 32}), table, args).shape(), (Shape{2, 3, 0, 32}));
  auto message = [&](const Tensor& x, const RopeArgs& a) -> std::string {
    try {
      rope_forward_inplace(x, table, a);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message(Tensor::zeros({1, 1, 4, 16}), args).find("rotary_dim 32 is larger than the head dim 16 of x"),
            std::string::npos);
  EXPECT_NE(message(Tensor::zeros({1, 4, 32}), args).find("x must have 4 dimensions [B, H, L, D]"),
            std::string::npos);
  EXPECT_NE(message(Tensor::zeros({1, 1, 4, 32}).to(DType::BF16), args).find("x must be float32"),
            std::string::npos);
  EXPECT_NE(message(Tensor::zeros({1, 1, 32, 4}).transpose(2, 3), args).find("contiguous last dimension"),
            std::string::npos);
  RopeArgs packed;
  packed.layout = RopeLayout::BL_HD;
  packed.num_heads = 5;
  EXPECT_NE(message(Tensor::zeros({1, 4, 64}), packed).find("num_heads must be >= 1 and divide"), std::string::npos);
  RopeArgs neg;
  neg.positions.offset = -1;
  EXPECT_NE(message(Tensor::zeros({1, 1, 4, 32}), neg).find("position_offset must be >= 0, got -1"),
            std::string::npos);
  RopeArgs ids;
  ids.positions.ids = int_tensor({2, 3}, {0, 1, 2, 3, -4, 5});
  EXPECT_NE(message(Tensor::zeros({2, 1, 3, 32}), ids).find("positions[1, 1] = -4 must be >= 0"), std::string::npos);
  EXPECT_NE(message(Tensor::zeros({2, 1, 4, 32}), ids).find("positions must have shape [4] or [2, 4] but has [2, 3]"),
            std::string::npos);
  ids.positions.offset = 2;
  EXPECT_NE(message(Tensor::zeros({2, 1, 3, 32}), ids).find("position_offset must be 0 when explicit positions"),
            std::string::npos);
  RopeArgs i64;
  i64.positions.ids = int_tensor({3}, {0, 1, 2}, DType::I64);
  EXPECT_NE(message(Tensor::zeros({1, 1, 3, 32}), i64).find("positions must be int32"), std::string::npos);
  // A non-contiguous last dim is fine out of place (packed first).
  const Tensor xt = randn({1, 1, 32, 4}, 1).transpose(2, 3);
  EXPECT_TRUE(bitwise_equal(rope_forward(xt, table, args), rope_forward(xt.contiguous(), table, args)));
}

namespace {
// The fixture's `config` tensor (see tools/fixtures/position.py).
RopeConfig config_from_fixture(const Tensor& t) {
  const auto v = t.to_vector();
  RopeConfig c;
  c.theta = v[0];
  c.rotary_dim = static_cast<std::int64_t>(v[1]);
  c.convention = v[2] == 0 ? RopeConvention::RotateHalf : RopeConvention::Interleaved;
  c.scaling = kScalings[static_cast<int>(v[3])];
  c.factor = v[4];
  c.original_max_position_embeddings = static_cast<std::int64_t>(v[5]);
  c.beta_fast = v[6];
  c.beta_slow = v[7];
  if (v[8] != 0) c.attention_factor = v[8];
  return c;
}
}  // namespace

TEST(PositionRope, MatchesPyTorchFixtures) {
  // Fixtures: HF-style rotate-half and RoFormer complex-multiplication RoPE
  // in float64 (tools/fixtures/position.py), outputs rounded once to float32.
  const char* names[] = {"position_rope_rotate_half_default",   "position_rope_rotate_half_linear_partial",
                         "position_rope_rotate_half_ntk",       "position_rope_rotate_half_dynamic",
                         "position_rope_rotate_half_dynamic_short", "position_rope_rotate_half_yarn",
                         "position_rope_rotate_half_yarn_options",  "position_rope_interleaved_default",
                         "position_rope_interleaved_linear",     "position_rope_interleaved_ntk",
                         "position_rope_interleaved_dynamic",    "position_rope_interleaved_yarn_partial"};
  for (const char* name : names) {
    SCOPED_TRACE(name);
    const auto f = mf::testing::load_fixture(name).tensors;
    const RopeConfig cfg = config_from_fixture(f.at("config"));
    const Tensor& x = f.at("x");
    const std::int64_t D = x.size(3), R = cfg.rotary_dim;
    RopeArgs args;
    const std::int64_t offset = static_cast<std::int64_t>(f.at("offset").to(DType::I64).data<std::int64_t>()[0]);
    if (offset >= 0)
      args.positions.offset = offset;
    else
      args.positions.ids = f.at("positions");
    const ResolvedPositions pos = resolve_positions(args.positions, x.size(0), x.size(2), "test");
    // Frequencies and attention factor (fixture values rounded once to float32).
    const auto inv = rope_inv_freq(cfg, pos.end);
    const auto inv_f = f.at("inv_freq").to_vector();
    ASSERT_EQ(inv.size(), inv_f.size());
    for (std::size_t i = 0; i < inv.size(); ++i) EXPECT_NEAR(inv[i], inv_f[i], 1.01 * kU * inv[i]) << i;
    const double af = rope_attention_factor(cfg);
    EXPECT_NEAR(af, f.at("attention_factor").to_vector()[0], 1.01 * kU * af);
    // Forward and backward, fast and reference.
    RopeTable table(cfg, 16);
    EXPECT_TRUE(rope_close(rope_forward(x, table, args), f.at("out"), x, D, R, cfg.convention, af));
    EXPECT_TRUE(rope_close(rope_forward_reference(x, cfg, args), f.at("out"), x, D, R, cfg.convention, af));
    const Tensor& w = f.at("grad_out");
    EXPECT_TRUE(rope_close(rope_backward(w, table, args), f.at("grad_x"), w, D, R, cfg.convention, af));
    EXPECT_TRUE(rope_close(rope_backward_reference(w, cfg, args), f.at("grad_x"), w, D, R, cfg.convention, af));
    // The dynamic fixtures: one beyond the pretraining length (new base), one within.
    if (std::string(name) == "position_rope_rotate_half_dynamic" ||
        std::string(name) == "position_rope_interleaved_dynamic") {
      EXPECT_GT(table.theta(), cfg.theta * 1.5);
    }
    if (std::string(name) == "position_rope_rotate_half_dynamic_short") {
      EXPECT_EQ(table.theta(), cfg.theta);
    }
  }
}
