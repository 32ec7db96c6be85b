// `modformer demo` (the README's main job) end to end, shortened: it trains,
// reports bits per byte and samples; run again from the same folder it puts
// its run in the next free runs/demo-N instead of refusing, and an explicit
// --out that already holds a run is refused with a clear message.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "../support/cli.h"

namespace fs = std::filesystem;

TEST(CliDemo, RerunsIntoTheNextFreeFolderAndRefusesAnExplicitUsedOne) {
  const fs::path dir = fs::temp_directory_path() / ("mf_cli_demo_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string prefix = "cd " + dir.string() + " && MODFORMER_GEMM_BACKEND=openblas";
  const std::string args = "--threads 2 demo --steps 2 --sample-tokens 5";

  const auto first = mf::testing::run_cli(args, dir, prefix);
  ASSERT_EQ(first.rc, 0) << first.err;
  EXPECT_NE(first.out.find("bits per byte"), std::string::npos) << first.out;
  EXPECT_NE(first.out.find("runs/demo/loss.svg"), std::string::npos) << first.out;
  EXPECT_NE(first.out.find("decode"), std::string::npos) << first.out;
  EXPECT_TRUE(fs::exists(dir / "runs/demo/checkpoint"));

  const auto second = mf::testing::run_cli(args, dir, prefix);
  ASSERT_EQ(second.rc, 0) << second.err;
  EXPECT_NE(second.out.find("runs/demo-2/loss.svg"), std::string::npos) << second.out;
  EXPECT_TRUE(fs::exists(dir / "runs/demo-2/checkpoint"));
  EXPECT_TRUE(fs::exists(dir / "runs/demo/checkpoint"));  // the first run is kept

  const auto used = mf::testing::run_cli(args + " --out runs/demo", dir, prefix);
  EXPECT_NE(used.rc, 0);
  EXPECT_NE(used.err.find("'runs/demo' already holds a training run"), std::string::npos) << used.err;
  fs::remove_all(dir);
}
