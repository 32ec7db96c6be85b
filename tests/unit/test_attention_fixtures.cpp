// Exact attention vs the PyTorch fixtures of tools/fixtures/attention.py (float64
// math rounded once to float32): out, lse, dq, dk, dv for every masking and head
// layout. check_attention_fixture takes the implementation, so every kernel
// (dense, flash) is held to the same files.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "nn/attention/attention.h"
#include "../support/fixtures.h"

using namespace mf;

namespace {

const std::vector<std::string> kAttentionFixtures = {
    "attention_mha",
    "attention_gqa2",
    "attention_gqa4_lq_lt_lk",
    "attention_mqa_d64",
    "attention_len37",
    "attention_causal_bottom_right",
    "attention_causal_lq_gt_lk_empty_rows",
    "attention_window_l2_r1",
    "attention_window_l0_r0",
    "attention_window_l0_r3",
    "attention_window_l4_r0_lq_lt_lk",
    "attention_causal_window_l4",
    "attention_global_window",
    "attention_global_causal_window",
    "attention_alibi_h8_causal",
    "attention_alibi_h6",
    "attention_alibi_h12",
    "attention_scale",
    "attention_logits_x30",
    "attention_key_padding",
    "attention_empty_row",
    "attention_varlen",
    "attention_varlen_causal_alibi_window",
};

float scalar(const SafetensorsContents& f, const std::string& name) {
  return f.tensors.at(name).to(DType::F32).to_vector().at(0);
}

std::vector<std::int64_t> int_list(const SafetensorsContents& f, const std::string& name) {
  const Tensor t = f.tensors.at(name).to(DType::I64);
  const std::int64_t* p = t.data<std::int64_t>();
  return {p, p + t.numel()};
}

// Tolerance. The fixture is exact math rounded once (2^-24 relative). The
// dense kernel rounds P, O, LSE and the gradients once each and accumulates in
// double; its backward (like flash's) recomputes P = exp(S - LSE) from the
// float32 LSE, whose rounding (|LSE| 2^-24 absolute) becomes a relative error
// of P of the same size, and reads the float32-rounded O in D = rowsum(dO o O).
// So each tensor may be off by a few units of 2^-24 (1 + max|LSE|) times its
// largest magnitude; 16 units leaves headroom for summation order (flash) and
// still catches any semantic error (>= 1e-3 relative).
void check_attention_fixture(const std::string& name, AttentionImpl impl) {
  SCOPED_TRACE(name);
  const SafetensorsContents f = mf::testing::load_fixture(name);
  const auto& t = f.tensors;
  AttentionOptions o;
  o.causal = scalar(f, "causal") != 0;
  o.window_left = static_cast<std::int64_t>(scalar(f, "window_left"));
  o.window_right = static_cast<std::int64_t>(scalar(f, "window_right"));
  o.alibi = scalar(f, "alibi") != 0;
  o.scale = scalar(f, "scale");
  o.global_tokens = int_list(f, "global_tokens");
  if (t.count("key_padding_mask")) o.key_padding_mask = t.at("key_padding_mask");
  const Tensor &q = t.at("q"), &k = t.at("k"), &v = t.at("v"), &dout = t.at("dout");
  const bool varlen = t.count("cu_seqlens_q") != 0;
  VarlenSeqlens seqs;
  if (varlen) seqs = {int_list(f, "cu_seqlens_q"), int_list(f, "cu_seqlens_k")};

  const AttentionOutput fw = varlen ? attention_varlen_forward(q, k, v, seqs, o, impl) : attention_forward(q, k, v, o, impl);
  const AttentionGrads g = varlen ? attention_varlen_backward(q, k, v, fw.out, fw.lse, dout, seqs, o, impl)
                                  : attention_backward(q, k, v, fw.out, fw.lse, dout, o, impl);

  const std::vector<float> lse_ref = t.at("lse").to_vector(), lse = fw.lse.to_vector();
  ASSERT_EQ(fw.lse.shape(), t.at("lse").shape());
  double max_lse = 0;
  for (float x : lse_ref)
    if (std::isfinite(x)) max_lse = std::max(max_lse, std::fabs(static_cast<double>(x)));
  const double ulp = std::ldexp(1.0, -24);
  for (std::size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(lse_ref[i])) {
      ASSERT_EQ(lse[i], lse_ref[i]) << "lse " << i << " (a row with no visible key)";
    } else {
      ASSERT_NEAR(lse[i], lse_ref[i], 4 * ulp * std::max(1.0f, std::fabs(lse_ref[i]))) << "lse " << i;
    }
  }
  const double rel = 16 * ulp * (1.0 + max_lse);
  const std::pair<const char*, const Tensor*> outs[] = {{"out", &fw.out}, {"dq", &g.dq}, {"dk", &g.dk}, {"dv", &g.dv}};
  for (const auto& [tname, got] : outs) {
    const Tensor& ref = t.at(tname);
    ASSERT_EQ(got->shape(), ref.shape()) << tname;
    const auto a = got->to_vector(), r = ref.to_vector();
    double mag = 0, err = 0;
    for (float x : r) mag = std::max(mag, std::fabs(static_cast<double>(x)));
    std::size_t worst = 0;
    for (std::size_t i = 0; i < r.size(); ++i) {
      ASSERT_TRUE(std::isfinite(a[i])) << tname << " " << i;
      const double e = std::fabs(static_cast<double>(a[i]) - r[i]);
      if (e > err) err = e, worst = i;
    }
    EXPECT_LE(err, rel * mag) << tname << ": worst element " << worst << " got " << a[worst] << " want " << r[worst]
                              << " (max |ref| " << mag << ")";
  }
}

}  // namespace

TEST(AttentionFixtures, DenseMatchesPyTorch) {
  for (const auto& name : kAttentionFixtures) check_attention_fixture(name, AttentionImpl::Dense);
}

// Every attention_* fixture written by tools/fixtures/attention.py is checked.
TEST(AttentionFixtures, ListCoversEveryFixtureFile) {
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(MODFORMER_FIXTURES_DIR)) {
    const std::string stem = e.path().stem().string();
    if (stem.rfind("attention_", 0) != 0 || e.path().extension() != ".safetensors") continue;
    ++files;
    EXPECT_NE(std::find(kAttentionFixtures.begin(), kAttentionFixtures.end(), stem), kAttentionFixtures.end())
        << stem << " is not in kAttentionFixtures";
  }
  EXPECT_EQ(files, static_cast<int>(kAttentionFixtures.size()));
}
