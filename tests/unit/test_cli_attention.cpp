// `modformer attention` end to end: the built CLI on .npy files written here,
// compared with the library call; bad shapes, missing files and inconsistent
// flags give a non-zero exit and a clear message.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "core/atomic_file.h"
#include "core/npy.h"
#include "core/rng.h"
#include "nn/attention/attention.h"

using namespace mf;
namespace fs = std::filesystem;

namespace {

class CliAttention : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mf_cli_attention_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string save(const std::string& name, const Tensor& t) const {
    save_npy(path(name), t);
    return path(name);
  }
  // Runs `modformer attention <args>`; returns the exit status, stderr in err_.
  int run(const std::string& args) {
    const std::string cmd =
        std::string(MODFORMER_CLI_PATH) + " attention " + args + " >" + path("stdout.txt") + " 2>" + path("stderr.txt");
    const int status = std::system(cmd.c_str());
    err_ = read_file(path("stderr.txt"));
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  std::string qkv() const {
    return " --impl dense --q " + path("q.npy") + " --k " + path("k.npy") + " --v " + path("v.npy") + " --out " +
           path("o.npy");
  }

  fs::path dir_;
  std::string err_;
};

void expect_same(const Tensor& a, const Tensor& b, const char* what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  EXPECT_EQ(a.to_vector(), b.to_vector()) << what;  // same kernel, same inputs: same bits
}

}  // namespace

TEST_F(CliAttention, ForwardBackwardMatchTheLibrary) {
  const Tensor q = randn({2, 4, 6, 16}, 1), k = randn({2, 2, 9, 16}, 2), v = randn({2, 2, 9, 16}, 3);
  const Tensor dout = randn({2, 4, 6, 16}, 4);
  save("q.npy", q), save("k.npy", k), save("v.npy", v), save("do.npy", dout);
  AttentionOptions o;
  o.causal = true;
  o.window_left = 3;
  o.global_tokens = {0, 5};
  o.alibi = true;
  o.scale = 0.3f;
  o.dropout_p = 0.1f;
  o.dropout_seed = 17;
  const auto f = attention_forward(q, k, v, o, AttentionImpl::Dense);
  const auto g = attention_backward(q, k, v, f.out, f.lse, dout, o, AttentionImpl::Dense);
  ASSERT_EQ(run(qkv() + " --causal --window-left 3 --global-tokens 0,5 --alibi --scale 0.3 --dropout 0.1 --seed 17" +
                " --lse " + path("l.npy") + " --dout " + path("do.npy") + " --dq " + path("dq.npy") + " --dk " +
                path("dk.npy") + " --dv " + path("dv.npy")),
            0)
      << err_;
  expect_same(load_npy(path("o.npy")), f.out, "out");
  expect_same(load_npy(path("l.npy")), f.lse, "lse");
  expect_same(load_npy(path("dq.npy")), g.dq, "dq");
  expect_same(load_npy(path("dk.npy")), g.dk, "dk");
  expect_same(load_npy(path("dv.npy")), g.dv, "dv");

  // Without --lse or --dout only O is written; the options change the result.
  fs::remove(path("l.npy"));
  ASSERT_EQ(run(qkv() + " --window-right 0"), 0) << err_;
  EXPECT_FALSE(fs::exists(path("l.npy")));
  AttentionOptions o2;
  o2.window_right = 0;
  expect_same(load_npy(path("o.npy")), attention_forward(q, k, v, o2, AttentionImpl::Dense).out, "out");
}

TEST_F(CliAttention, KeyPaddingMaskAndVarlen) {
  const Tensor q = randn({1, 2, 4, 8}, 1), k = randn({1, 2, 5, 8}, 2), v = randn({1, 2, 5, 8}, 3);
  save("q.npy", q), save("k.npy", k), save("v.npy", v);
  AttentionOptions o;
  o.key_padding_mask = Tensor::zeros({1, 5}, DType::I32);
  for (int j : {0, 2, 3}) o.key_padding_mask.data<std::int32_t>()[j] = 1;
  save("m.npy", o.key_padding_mask);
  ASSERT_EQ(run(qkv() + " --key-padding-mask " + path("m.npy")), 0) << err_;
  expect_same(load_npy(path("o.npy")), attention_forward(q, k, v, o, AttentionImpl::Dense).out, "out");

  const Tensor pq = randn({7, 4, 8}, 4), pk = randn({9, 2, 8}, 5), pv = randn({9, 2, 8}, 6);
  save("q.npy", pq), save("k.npy", pk), save("v.npy", pv);
  AttentionOptions c;
  c.causal = true;
  const auto f = attention_varlen_forward(pq, pk, pv, {{0, 3, 7}, {0, 5, 9}}, c, AttentionImpl::Dense);
  ASSERT_EQ(run(qkv() + " --causal --cu-seqlens-q 0,3,7 --cu-seqlens-k 0,5,9 --lse " + path("l.npy")), 0) << err_;
  expect_same(load_npy(path("o.npy")), f.out, "varlen out");
  expect_same(load_npy(path("l.npy")), f.lse, "varlen lse");
}

TEST_F(CliAttention, BadInputsFailWithClearMessages) {
  save("q.npy", randn({1, 4, 5, 8}, 1)), save("k.npy", randn({1, 2, 7, 8}, 2)), save("v.npy", randn({1, 2, 7, 8}, 3));
  save("do.npy", randn({1, 4, 5, 8}, 4));
  ASSERT_EQ(run(qkv()), 0) << err_;
  auto expect_fail = [&](const std::string& args, const std::string& needle) {
    fs::remove(path("o.npy"));
    EXPECT_NE(run(args), 0) << args;
    EXPECT_NE(err_.find(needle), std::string::npos) << "stderr: " << err_;
    EXPECT_FALSE(fs::exists(path("o.npy"))) << "a failed call must not write the output";
  };
  save("k.npy", randn({1, 2, 7}, 2));
  expect_fail(qkv(), "tensor 'k' must have 4 dimensions [B, Hkv, Lk, D] but has shape [1, 2, 7]");
  save("k.npy", randn({1, 3, 7, 8}, 2));
  save("v.npy", randn({1, 3, 7, 8}, 2));
  expect_fail(qkv(), "query heads (4) must be a multiple of key/value heads (3)");
  save("k.npy", randn({1, 2, 7, 8}, 2));
  save("v.npy", randn({1, 2, 6, 8}, 3));
  expect_fail(qkv(), "v must have shape [B, Hkv, Lk, Dv] = [1, 2, 7, 8] (k's first three dimensions) but has [1, 2, 6, 8]");
  save("v.npy", randn({1, 2, 7, 8}, 3));
  save("q.npy", Tensor::zeros({1, 4, 5, 8}, DType::I32));
  expect_fail(qkv(), "--q " + path("q.npy") + " must hold float32 but holds int32");
  save("q.npy", randn({1, 4, 5, 8}, 1));
  expect_fail(qkv() + " --dout " + path("do.npy") + " --dq " + path("dq.npy"), "--dout needs all of --dq, --dk and --dv");
  expect_fail(qkv() + " --dq " + path("dq.npy"), "--dq, --dk and --dv need --dout");
  save("do.npy", randn({1, 4, 5, 16}, 4));
  expect_fail(qkv() + " --dout " + path("do.npy") + " --dq " + path("a.npy") + " --dk " + path("b.npy") + " --dv " +
                  path("c.npy"),
              "dout must have shape [1, 4, 5, 8] (q's, with v's head dimension) but has [1, 4, 5, 16]");
  expect_fail(qkv() + " --global-tokens 3,7", "global token position 7 is out of range [0, 7)");
  expect_fail(qkv() + " --window-left -2", "--window-left: must be an integer >= 0, got '-2'");
  expect_fail(qkv() + " --scale 0", "--scale: must be a finite number > 0, got '0'");
  expect_fail(qkv() + " --dropout 1", "dropout_p must be in [0, 1), got 1");
  expect_fail(qkv() + " --impl sparse", "--impl");
  expect_fail(qkv() + " --cu-seqlens-q 0,5", "--cu-seqlens-q and --cu-seqlens-k go together");
  expect_fail(" --impl dense --q " + path("missing.npy") + " --k " + path("k.npy") + " --v " + path("v.npy") +
                  " --out " + path("o.npy"),
              "missing.npy");
  write_file_atomic(path("junk.npy"), "this is not a numpy file");
  expect_fail(" --impl dense --q " + path("junk.npy") + " --k " + path("k.npy") + " --v " + path("v.npy") + " --out " +
                  path("o.npy"),
              "junk.npy");
  expect_fail(" --impl dense --q " + path("q.npy") + " --k " + path("k.npy") + " --v " + path("v.npy"), "--out");
}
