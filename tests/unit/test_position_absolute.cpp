// Absolute position embeddings: sinusoidal (Vaswani et al.) table and add,
// learned [max_positions, hidden] parameter forward/backward; fast vs
// reference, finite differences, determinism, errors.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/rng.h"
#include "core/threads.h"
#include "nn/position/learned_position.h"
#include "nn/position/sinusoidal.h"
#include "testing/gradcheck.h"
#include "../support/errors.h"
#include "../support/fixtures.h"

using namespace mf;
using mf::testing::error_of;

namespace {
constexpr double kU = std::numeric_limits<float>::epsilon() / 2;

Tensor ids_tensor(const Shape& shape, const std::vector<std::int32_t>& v) {
  Tensor t = Tensor::empty(shape, DType::I32);
  std::copy(v.begin(), v.end(), t.data<std::int32_t>());
  return t;
}
}  // namespace

TEST(PositionSinusoidal, TableIsVaswaniFormula) {
  for (std::int64_t hidden : {8, 7, 64}) {
    const Tensor t = sinusoidal_table(50, hidden);
    ASSERT_EQ(t.shape(), (Shape{50, hidden}));
    for (std::int64_t pos : {0, 1, 13, 49})
      for (std::int64_t j = 0; j < hidden; ++j) {
        const std::int64_t i = j / 2;
        const double angle = pos / std::pow(10000.0, 2.0 * i / hidden);
        const double want = j % 2 == 0 ? std::sin(angle) : std::cos(angle);
        EXPECT_NEAR(t.at({pos, j}), want, kU * 1.001) << "hidden " << hidden << " pos " << pos << " j " << j;
      }
    EXPECT_EQ(t.at({0, 0}), 0.0f);
    EXPECT_EQ(t.at({0, 1}), 1.0f);
  }
  EXPECT_NE(error_of([] { sinusoidal_table(4, 0); }).find("hidden size must be >= 1"), std::string::npos);
  EXPECT_NE(error_of([] { sinusoidal_table(4, 8, 1.0); }).find("base must be a finite number > 1"),
            std::string::npos);
}

TEST(PositionSinusoidal, FastMatchesReference) {
  const Tensor table = sinusoidal_table(64, 36);
  for (std::int64_t off : {0, 5, 40}) {
    const Tensor x = randn({3, 17, 36}, 60 + off);
    PositionIds pos;
    pos.offset = off;
    const Tensor y = sinusoidal_forward(x, table, pos);
    const Tensor r = sinusoidal_forward_reference(x, pos);
    // fast: fl(x + fl(pe)); reference: fl(x + pe): |diff| <= u |pe| + u |y| <= u (1 + |y|) (+ slack).
    const auto a = y.to_vector(), b = r.to_vector();
    for (std::size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 2 * kU * (1 + std::fabs(b[i]))) << i;
    Tensor xi = x.clone();
    sinusoidal_forward_inplace(xi, table, pos);
    EXPECT_EQ(xi.to_vector(), a);
  }
  // Explicit [B, L] ids and a strided x (a slice of a wider tensor).
  const Tensor wide = randn({2, 3, 50}, 70);
  const Tensor x = wide.slice(2, 7, 43);
  PositionIds pos;
  pos.ids = ids_tensor({2, 3}, {0, 63, 2, 9, 9, 1});
  const auto a = sinusoidal_forward(x, table, pos).to_vector(), b = sinusoidal_forward_reference(x, pos).to_vector();
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 2 * kU * (1 + std::fabs(b[i]))) << i;
  PositionIds far;
  far.offset = 60;
  EXPECT_NE(error_of([&] { sinusoidal_forward(randn({1, 5, 36}, 1), table, far); })
                .find("[sinusoidal] position 64 >= table rows 64"),
            std::string::npos);
  EXPECT_NE(error_of([&] { sinusoidal_forward(randn({1, 5, 35}, 1), table, {}); })
                .find("x has hidden size 35 but table rows has 36"),
            std::string::npos);
}

TEST(PositionLearned, InitForwardAndError) {
  Parameter w = learned_position_init("model.embed_positions.weight", 4096, 16, 7);
  EXPECT_FALSE(w.weight_decay);
  EXPECT_EQ(w.value.shape(), (Shape{4096, 16}));
  EXPECT_EQ(w.grad.shape(), (Shape{4096, 16}));
  double ss = 0;
  for (float v : w.value.to_vector()) ss += v * v;
  EXPECT_NEAR(std::sqrt(ss / w.value.numel()), 0.02, 0.002);
  const Tensor x = randn({2, 9, 16}, 8);
  PositionIds pos;
  pos.offset = 4000;
  // The add is one float addition per element on both sides: bitwise equal.
  EXPECT_EQ(learned_position_forward(x, w, pos).to_vector(),
            learned_position_forward_reference(x, w.value, pos).to_vector());
  pos.offset = 4095;
  try {
    learned_position_forward(randn({1, 6, 16}, 1), w, pos);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "[learned_position] position 4100 >= max_position_embeddings 4096");
  }
  PositionIds ids;
  ids.ids = ids_tensor({3}, {0, 4100, 1});
  EXPECT_EQ(error_of([&] { learned_position_forward(randn({1, 3, 16}, 1), w, ids); }),
            "[learned_position] position 4100 >= max_position_embeddings 4096");
}

TEST(PositionLearned, BackwardAccumulatesDeterministically) {
  const std::int64_t P = 12, H = 130, B = 3, L = 5;  // H > one 64-column block, not a multiple
  Parameter w = learned_position_init("pos", P, H, 9);
  PositionIds pos;
  pos.ids = ids_tensor({B, L}, {0, 1, 2, 3, 4, 4, 4, 0, 11, 3, 7, 0, 0, 0, 1});  // repeated rows
  const Tensor dy = randn({B, L, H}, 10);
  learned_position_backward(dy, w, pos);
  const Tensor once = w.grad.clone();
  const auto ref = learned_position_backward_reference(dy, w.value, pos).to_vector();
  const auto got = once.to_vector();
  // A row hit k times sums k floats in order: |err| <= (k - 1) u sum|dy| <= 4 u * 5 * max|dy|.
  for (std::size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], ref[i], 4 * kU * 5 * 5) << i;
  // Untouched rows stay zero; the second call accumulates (+=).
  for (std::int64_t j = 0; j < H; ++j) EXPECT_EQ(once.at({5, j}), 0.0f);
  learned_position_backward(dy, w, pos);
  const auto twice = w.grad.to_vector();
  // (A row hit k times now sums 2k floats one by one, so only close to 2x.)
  for (std::size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(twice[i], 2 * got[i], 4 * kU * 10 * 5) << i;
  for (std::int64_t j = 0; j < H; ++j) EXPECT_EQ(w.grad.at({11, j}), 2 * once.at({11, j}));  // hit once: exact
  // Same bits with 1 and 2 threads and on a big enough call for the parallel path.
  const Tensor big = randn({8, 64, H}, 11);
  PositionIds off;
  off.offset = 0;
  Parameter w2 = learned_position_init("pos", 64, H, 9);
  const int saved = num_threads();
  set_num_threads(1);
  learned_position_backward(big, w2, off);
  const auto g1 = w2.grad.to_vector();
  w2.grad.fill(0);
  set_num_threads(2);
  learned_position_backward(big, w2, off);
  set_num_threads(saved);
  EXPECT_EQ(w2.grad.to_vector(), g1);
}

TEST(PositionLearned, BackwardMatchesFiniteDifferences) {
  const std::int64_t P = 10, H = 6, B = 2, L = 4;
  Parameter w = learned_position_init("pos", P, H, 12, 0.5f);
  Tensor x = randn({B, L, H}, 13);
  const Tensor dy = randn({B, L, H}, 14);
  PositionIds pos;
  pos.ids = ids_tensor({B, L}, {3, 4, 5, 3, 0, 0, 9, 1});
  auto loss = [&] { return mf::testing::weighted_sum(learned_position_forward(x, w, pos), dy); };
  learned_position_backward(dy, w, pos);
  // dx = dy (identity); dW from the backward.
  const auto r = mf::testing::gradcheck(loss, {x, w.value}, {dy, w.grad});
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_EQ(r.checked, 48 + 48);
}

TEST(PositionLearned, BadInputs) {
  Parameter w = learned_position_init("pos", 8, 4, 1);
  EXPECT_NE(error_of([&] { learned_position_forward(randn({2, 4}, 1), w, {}); })
                .find("x must have 3 dimensions [B, L, hidden]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { learned_position_forward(randn({1, 2, 5}, 1), w, {}); })
                .find("x has hidden size 5 but max_position_embeddings has 4"),
            std::string::npos);
  PositionIds neg;
  neg.offset = -3;
  EXPECT_NE(error_of([&] { learned_position_backward(randn({1, 2, 4}, 1), w, neg); })
                .find("[learned_position] position_offset must be >= 0, got -3"),
            std::string::npos);
  Tensor dy16 = randn({1, 2, 4}, 1).to(DType::BF16);
  EXPECT_NE(error_of([&] { learned_position_backward(dy16, w, {}); }).find("dy must be float32"), std::string::npos);
  // Empty sequences are fine.
  EXPECT_EQ(learned_position_forward(Tensor::zeros({2, 0, 4}), w, {}).shape(), (Shape{2, 0, 4}));
}

TEST(PositionSinusoidal, MatchesPyTorchFixture) {
  const auto f = mf::testing::load_fixture("position_sinusoidal").tensors;
  const Tensor& x = f.at("x");
  PositionIds pos;
  pos.offset = f.at("offset").to(DType::I64).data<std::int64_t>()[0];
  const Tensor table = sinusoidal_table(pos.offset + x.size(1), x.size(2));
  const auto a = sinusoidal_forward(x, table, pos).to_vector(), b = f.at("out").to_vector();
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 2 * kU * (1 + std::fabs(b[i]))) << i;
}

TEST(PositionLearned, MatchesPyTorchFixture) {
  // torch.nn.Embedding added to x, gradients by autograd (float64).
  const auto f = mf::testing::load_fixture("position_learned").tensors;
  Parameter w("pos", f.at("weight").clone(), false);
  PositionIds pos;
  pos.ids = f.at("positions");
  const Tensor& x = f.at("x");
  const auto y = learned_position_forward(x, w, pos).to_vector(), y_ref = f.at("out").to_vector();
  for (std::size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], y_ref[i], kU * std::fabs(y_ref[i])) << i;
  learned_position_backward(f.at("grad_out"), w, pos);
  // A row hit k <= B*L times sums k floats: |err| <= k u sum|dy| (+ the fixture's own rounding).
  const std::int64_t k = x.size(0) * x.size(1);
  double max_dy = 0;
  for (float v : f.at("grad_out").to_vector()) max_dy = std::max(max_dy, static_cast<double>(std::fabs(v)));
  const auto g = w.grad.to_vector(), g_ref = f.at("grad_weight").to_vector();
  for (std::size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g[i], g_ref[i], (k + 1) * kU * k * max_dy) << i;
  // dx = dy: the fixture's grad_x is grad_out itself.
  EXPECT_EQ(f.at("grad_x").to_vector(), f.at("grad_out").to_vector());
}
