// Linear and embedding layers: fast vs reference, finite differences, the
// gradient contract (overwrite vs +=), determinism and bad input.
#include <gtest/gtest.h>

#include <cmath>

#include "../support/errors.h"
#include "core/rng.h"
#include "nn/embedding.h"
#include "nn/linear.h"
#include "testing/gradcheck.h"

using namespace mf;

namespace {

Tensor tokens_from(const Shape& shape, const std::vector<std::int32_t>& ids) {
  Tensor t = Tensor::empty(shape, DType::I32);
  std::copy(ids.begin(), ids.end(), t.data<std::int32_t>());
  return t;
}

}  // namespace

TEST(LinearLayer, MatchesReferenceOnAwkwardShapes) {
  for (auto [n, in, out] : {std::tuple{1, 1, 1}, {7, 13, 5}, {33, 64, 17}, {130, 9, 70}}) {
    for (bool with_bias : {false, true}) {
      Tensor x = randn({n, in}, 1), w = randn({out, in}, 2), b = with_bias ? randn({out}, 3) : Tensor();
      Tensor y = Tensor::empty({n, out}), yr = Tensor::empty({n, out});
      linear_forward(y, x, w, b);
      reference::linear_forward(yr, x, w, b);
      EXPECT_LT(max_abs_diff(y, yr), 1e-4f * std::sqrt(static_cast<float>(in))) << n << " " << in << " " << out;

      Tensor dy = randn({n, out}, 4);
      Tensor dx = Tensor::full({n, in}, 7.0f), dxr = Tensor::empty({n, in});
      Tensor dw = Tensor::full({out, in}, 0.5f), dwr = Tensor::full({out, in}, 0.5f);
      Tensor db = with_bias ? Tensor::full({out}, -1.0f) : Tensor(), dbr = with_bias ? Tensor::full({out}, -1.0f) : Tensor();
      linear_backward(dx, dw, db, dy, x, w);
      reference::linear_backward(dxr, dwr, dbr, dy, x, w);
      EXPECT_LT(max_abs_diff(dx, dxr), 1e-4f * std::sqrt(static_cast<float>(out)));
      EXPECT_LT(max_abs_diff(dw, dwr), 1e-4f * std::sqrt(static_cast<float>(n)));
      if (with_bias) {
        EXPECT_LT(max_abs_diff(db, dbr), 1e-4f * std::sqrt(static_cast<float>(n)));
      }
    }
  }
}

TEST(LinearLayer, BackwardMatchesFiniteDifferences) {
  const std::int64_t n = 6, in = 10, out = 7;
  Tensor x = randn({n, in}, 11), w = randn({out, in}, 12), b = randn({out}, 13), g = randn({n, out}, 14);
  auto loss = [&] {
    Tensor y = linear_forward(x, w, b);
    return mf::testing::weighted_sum(y, g);
  };
  Tensor dx = Tensor::empty({n, in}), dw = Tensor::zeros({out, in}), db = Tensor::zeros({out});
  linear_backward(dx, dw, db, g, x, w);
  const auto r = mf::testing::gradcheck(loss, {x, w, b}, {dx, dw, db});
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_GT(r.checked, 100);
}

TEST(LinearLayer, ParameterGradientsAccumulate) {
  Tensor x = randn({5, 4}, 1), w = randn({3, 4}, 2), b = randn({3}, 3), dy = randn({5, 3}, 4);
  Tensor dw = Tensor::zeros({3, 4}), db = Tensor::zeros({3});
  linear_backward(Tensor(), dw, db, dy, x, w);
  const Tensor dw1 = dw.clone(), db1 = db.clone();
  linear_backward(Tensor(), dw, db, dy, x, w);
  for (std::int64_t i = 0; i < dw.numel(); ++i) EXPECT_FLOAT_EQ(dw.to_vector()[i], 2 * dw1.to_vector()[i]);
  for (std::int64_t i = 0; i < db.numel(); ++i) EXPECT_FLOAT_EQ(db.to_vector()[i], 2 * db1.to_vector()[i]);
}

TEST(LinearLayer, RejectsBadShapes) {
  Tensor x = randn({5, 4}, 1), w = randn({3, 4}, 2);
  EXPECT_ERROR("in has 4 features but weight [3, 5] expects 5", linear_forward(x, randn({3, 5}, 2), Tensor()));
  EXPECT_ERROR("tensor 'bias' must have shape [3] but has [4]", linear_forward(x, w, randn({4}, 3)));
  EXPECT_ERROR("tensor 'in' must have 2 dimensions but has shape [5, 4, 1]", linear_forward(randn({5, 4, 1}, 1), w, Tensor()));
  EXPECT_ERROR("tensor 'in' must be contiguous", linear_forward(x.transpose(0, 1), randn({3, 5}, 2), Tensor()));
  try {
    linear_forward(Tensor::empty({5, 2}), x, w, Tensor());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[linear] tensor 'out' must have shape [5, 3]"), std::string::npos) << e.what();
  }
}

TEST(EmbeddingLayer, LooksUpRowsAndScattersGradients) {
  const std::int64_t v = 11, c = 70;  // c > one column block
  Tensor table = randn({v, c}, 5);
  Tensor tok = tokens_from({2, 3}, {3, 0, 3, 10, 3, 7});
  Tensor out = Tensor::empty({6, c});
  embedding_forward(out, tok, table);
  for (std::int64_t i = 0; i < 6; ++i)
    for (std::int64_t j = 0; j < c; ++j)
      ASSERT_EQ(out.at({i, j}), table.at({tok.data<std::int32_t>()[i], j}));
  Tensor dy = randn({6, c}, 6);
  Tensor dt = Tensor::full({v, c}, 1.0f);
  embedding_backward(dt, dy, tok);
  for (std::int64_t j = 0; j < c; ++j) {
    EXPECT_FLOAT_EQ(dt.at({3, j}), 1.0f + dy.at({0, j}) + dy.at({2, j}) + dy.at({4, j}));
    EXPECT_FLOAT_EQ(dt.at({10, j}), 1.0f + dy.at({3, j}));
    EXPECT_FLOAT_EQ(dt.at({1, j}), 1.0f);  // unused rows: untouched
  }
}

TEST(EmbeddingLayer, RejectsOutOfRangeIdsNamingThePosition) {
  Tensor table = randn({5, 8}, 5);
  Tensor out = Tensor::empty({6, 8});
  try {
    embedding_forward(out, tokens_from({2, 3}, {0, 1, 2, 3, 9, 4}), table);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 9 at position [1, 1] is out of range [0, 5)"), std::string::npos)
        << e.what();
  }
  EXPECT_ERROR("token id -1 at position [2] is out of range [0, 5)", embedding_forward(out, tokens_from({6}, {0, 1, -1, 3, 4, 4}), table));
  EXPECT_ERROR("tensor 'out' must have shape [5, 8] but has [6, 8]", embedding_forward(out, tokens_from({5}, {0, 1, 1, 3, 4}), table));  // out has 6 rows
}
