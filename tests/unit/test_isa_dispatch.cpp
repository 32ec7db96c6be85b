// Runtime instruction-set dispatch (core/isa.h): what is detected and chosen,
// MODFORMER_ISA capping the choice (through the CLI, which reads it once per
// process), and refusals that name the problem. The kernels' own variant
// tests are in their files (tests/support/isa_variants.h).
#include <gtest/gtest.h>

#include <string>

#include "core/cpu_features.h"
#include "core/isa.h"
#include "kernels/softmax.h"
#include "../support/cli.h"
#include "../support/errors.h"
#include "../support/isa_variants.h"
#include "../support/train_runs.h"

using namespace mf;

TEST(IsaDispatch, DetectionAgreesWithTheCpuFeatures) {
  const CpuFeatures& f = cpu_features();
  EXPECT_TRUE(isa_supported(Isa::Scalar));
  if (isa_supported(Isa::Avx2)) {
    EXPECT_TRUE(f.avx2 && f.fma);
  }
  if (isa_supported(Isa::Avx512)) {
    EXPECT_TRUE(f.avx512f && f.avx512bw && f.avx512vl);
    EXPECT_TRUE(isa_supported(Isa::Avx2));
  }
  const auto all = supported_isas();
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.front(), detected_isa());
  EXPECT_EQ(all.back(), Isa::Scalar);
}

TEST(IsaDispatch, SetIsaSwitchesTheKernelsAndScopesRestore) {
  const Isa before = active_isa();
  const float x[3] = {1.0f, 2.0f, 3.0f};
  for (Isa isa : supported_isas()) {
    ScopedIsa scope(isa);
    EXPECT_EQ(active_isa(), isa);
    float y[3];
    softmax_forward(y, x, 1, 3);
    EXPECT_NEAR(y[0] + y[1] + y[2], 1.0f, 1e-6f) << isa_name(isa);
  }
  EXPECT_EQ(active_isa(), before);
  if (!isa_supported(Isa::Avx512)) {
    EXPECT_NE(mf::testing::error_of([] { set_isa(Isa::Avx512); }).find("avx512 is not supported by this CPU"),
              std::string::npos);
  }
}

TEST(IsaDispatch, NamesRoundTripAndUnknownNamesAreRefused) {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) EXPECT_EQ(parse_isa(isa_name(isa)), isa);
  EXPECT_NE(mf::testing::error_of([] { parse_isa("sse9"); }).find("unknown instruction set \"sse9\""),
            std::string::npos);
}

// MODFORMER_ISA caps the choice; `info` prints what was detected and chosen.
TEST(IsaDispatch, EnvironmentCapsTheChoiceAndInfoSaysSo) {
  const auto dir = mf::testing::fresh_temp_dir("isa_env");
  const std::string detected = isa_name(detected_isa());
  const auto plain = mf::testing::run_cli("info", dir, "env -u MODFORMER_ISA");
  ASSERT_EQ(plain.rc, 0) << plain.err;
  EXPECT_NE(plain.out.find("kernels isa:  " + detected + " (detected " + detected + "; MODFORMER_ISA unset"),
            std::string::npos)
      << plain.out;
  const auto scalar = mf::testing::run_cli("info", dir, "MODFORMER_ISA=scalar");
  ASSERT_EQ(scalar.rc, 0) << scalar.err;
  EXPECT_NE(scalar.out.find("kernels isa:  scalar (detected " + detected + "; MODFORMER_ISA=scalar caps it"),
            std::string::npos)
      << scalar.out;
  const auto bad = mf::testing::run_cli("info", dir, "MODFORMER_ISA=avx1024");
  EXPECT_EQ(bad.rc, 1);
  EXPECT_NE(bad.err.find("MODFORMER_ISA=\"avx1024\" is not an instruction set (known: scalar, avx2, avx512)"),
            std::string::npos)
      << bad.err;
}
