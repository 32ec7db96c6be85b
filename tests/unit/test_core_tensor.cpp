// Tensor views, copies, conversions and the allocation counter.
#include <gtest/gtest.h>

#include "../support/errors.h"
#include "core/alloc.h"
#include "core/rng.h"
#include "core/tensor.h"

using namespace mf;

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::from_vector({2, 3}, {0, 1, 2, 3, 4, 5});
  Tensor tt = t.transpose(0, 1);
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.at({2, 1}), 5.0f);
  Tensor s = t.slice(1, 1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 2}));
  EXPECT_EQ(s.at({1, 0}), 4.0f);
  s.fill(-1);
  EXPECT_EQ(t.to_vector(), (std::vector<float>{0, -1, -1, 3, -1, -1}));
  EXPECT_EQ(tt.contiguous().to_vector(), (std::vector<float>{0, 3, -1, -1, -1, -1}));
  EXPECT_EQ(t.select(0, 1).to_vector(), (std::vector<float>{3, -1, -1}));
}

TEST(Tensor, ReshapeChecks) {
  Tensor t = Tensor::zeros({4, 6});
  EXPECT_EQ(t.reshape({-1, 3}).shape(), (Shape{8, 3}));
  EXPECT_ERROR("cannot reshape [4, 6] (24 elements) to [5, 5]", t.reshape({5, 5}));
  EXPECT_ERROR("tensor of shape [6, 4] is not contiguous", t.transpose(0, 1).reshape({24}));
  EXPECT_ERROR("range [2, 5) out of bounds for dimension 0 of size 4", t.slice(0, 2, 5));
  EXPECT_ERROR("negative dimension in shape [-1, 2]", Tensor::empty({-1, 2}));
  try {
    t.check_shape({4, 5}, "my_op", "weight");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[my_op] tensor 'weight' must have shape [4, 5] but has [4, 6]"),
              std::string::npos);
  }
}

TEST(Tensor, AlignedAndCounted) {
  const auto before = memory_stats().current_bytes;
  {
    Tensor t = Tensor::empty({1000});
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.raw_data()) % kAlignment, 0u);
    EXPECT_EQ(memory_stats().current_bytes - before, 4000);
    reset_peak_memory();
    { Tensor u = Tensor::empty({250}); }
    EXPECT_EQ(memory_stats().peak_bytes - before, 5000);
  }
  EXPECT_EQ(memory_stats().current_bytes, before);
}

TEST(Tensor, Bf16AndHalfRoundTrip) {
  Tensor t = Tensor::from_vector({6}, {0.0f, 1.0f, -2.5f, 3.140625f, 65504.0f, 1e-7f});
  Tensor b = t.to(DType::BF16).to(DType::F32);
  EXPECT_EQ(b.at({3}), 3.140625f);
  Tensor h = t.to(DType::F16).to(DType::F32);
  EXPECT_EQ(h.at({4}), 65504.0f);
  EXPECT_EQ(h.at({2}), -2.5f);
  EXPECT_NEAR(h.at({5}), 1e-7f, 6e-8f);  // subnormal half
  EXPECT_EQ(float_to_bf16(1.00390625f).bits, float_to_bf16(1.0f).bits);  // tie rounds to even
}

TEST(Rng, CounterBasedAndDeterministic) {
  // Philox4x32-10 known-answer test (Random123 kat_vectors: counter 0, key 0).
  const auto w = philox4x32(0, 0, 0);
  EXPECT_EQ(w[0], 0x6627e8d5u);
  EXPECT_EQ(w[1], 0xe169c58du);
  EXPECT_EQ(w[2], 0xbc57ac4cu);
  EXPECT_EQ(w[3], 0x9b00dbd8u);
  Tensor a = randn({1000}, 42), b = randn({1000}, 42), c = randn({1000}, 43);
  EXPECT_EQ(a.to_vector(), b.to_vector());
  EXPECT_NE(a.to_vector(), c.to_vector());
  double mean = 0, var = 0;
  for (float v : a.to_vector()) mean += v;
  mean /= 1000;
  for (float v : a.to_vector()) var += (v - mean) * (v - mean);
  EXPECT_NEAR(mean, 0.0, 0.1);
  EXPECT_NEAR(var / 1000, 1.0, 0.15);
}
