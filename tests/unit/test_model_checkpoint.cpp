// Checkpoint folders: round trip, Hugging Face LlamaForCausalLM names and
// shapes, BF16/F16 storage, validation errors that name the tensor, and the
// `init` / `forward` commands end to end.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/npy.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/threads.h"
#include "kernels/gemm.h"
#include "model/checkpoint.h"
#include "../support/errors.h"
#include "../support/tiny_models.h"

using namespace mf;
using mf::testing::error_of;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("mf_ckpt_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

ModelConfig small_llama() {
  ModelConfig c = mf::testing::tiny_llama_config();
  c.vocab_size = 50;
  c.attention_impl = AttentionImpl::Dense;
  return c;
}

Tensor tokens_2x6() {
  Tensor t = Tensor::empty({2, 6}, DType::I32);
  for (int i = 0; i < 12; ++i) t.data<std::int32_t>()[i] = (i * 7 + 3) % 50;
  return t;
}

}  // namespace

TEST(ModelCheckpoint, RoundTripIsExact) {
  const fs::path dir = temp_dir("roundtrip");
  ModelConfig cfg = small_llama();
  cfg.tie_word_embeddings = true;
  Transformer a(cfg, 17);
  a.save(dir.string());
  auto b = load_checkpoint(dir.string());
  EXPECT_EQ(config_to_json(b->config()), config_to_json(cfg));
  ASSERT_EQ(a.parameters().size(), b->parameters().size());
  for (std::size_t i = 0; i < a.parameters().size(); ++i) {
    EXPECT_EQ(a.parameters()[i]->name, b->parameters()[i]->name);
    EXPECT_EQ(max_abs_diff(a.parameters()[i]->value, b->parameters()[i]->value), 0.0f);
  }
  EXPECT_EQ(max_abs_diff(a.logits(tokens_2x6()), b->logits(tokens_2x6())), 0.0f);
  fs::remove_all(dir);
}

TEST(ModelCheckpoint, LlamaUsesHuggingFaceNamesAndShapes) {
  const fs::path dir = temp_dir("hfnames");
  Transformer m(small_llama(), 1);
  m.save(dir.string());
  const SafetensorsContents st = load_safetensors((dir / "model.safetensors").string());
  std::map<std::string, Shape> expected = {{"model.embed_tokens.weight", {50, 32}},
                                           {"model.norm.weight", {32}},
                                           {"lm_head.weight", {50, 32}}};
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    expected[p + "input_layernorm.weight"] = {32};
    expected[p + "post_attention_layernorm.weight"] = {32};
    expected[p + "self_attn.q_proj.weight"] = {32, 32};  // [out, in]
    expected[p + "self_attn.k_proj.weight"] = {16, 32};  // 2 KV heads x 8
    expected[p + "self_attn.v_proj.weight"] = {16, 32};
    expected[p + "self_attn.o_proj.weight"] = {32, 32};
    expected[p + "mlp.gate_proj.weight"] = {48, 32};
    expected[p + "mlp.up_proj.weight"] = {48, 32};
    expected[p + "mlp.down_proj.weight"] = {32, 48};
  }
  std::map<std::string, Shape> got;
  for (const auto& [name, t] : st.tensors) {
    got[name] = t.shape();
    EXPECT_EQ(t.dtype(), DType::F32) << name;
  }
  EXPECT_EQ(got, expected);
  EXPECT_EQ(st.metadata.at("format"), "pt");  // what transformers' safetensors loader checks
  const auto cfg = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  EXPECT_EQ(cfg["architectures"][0], "LlamaForCausalLM");
  for (const char* f : {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta",
                        "max_position_embeddings", "tie_word_embeddings", "hidden_act"})
    EXPECT_TRUE(cfg.contains(f)) << f;
  EXPECT_EQ(cfg["hidden_act"], "silu");
  // Tied: no lm_head.weight, as Hugging Face writes tied checkpoints.
  ModelConfig tied = small_llama();
  tied.tie_word_embeddings = true;
  Transformer t(tied, 1);
  for (const Parameter* p : t.parameters()) EXPECT_NE(p->name, "lm_head.weight");
  fs::remove_all(dir);
}

TEST(ModelCheckpoint, LoadsBf16AndF16Storage) {
  Transformer m(small_llama(), 3);
  for (DType dt : {DType::BF16, DType::F16}) {
    std::map<std::string, Tensor> tensors;
    for (const Parameter* p : m.parameters()) tensors[p->name] = p->value.to(dt);
    Transformer n(small_llama(), 99);
    load_weights(n, tensors, "half.safetensors");
    for (const Parameter* p : n.parameters()) {
      const Tensor expect = tensors.at(p->name).to(DType::F32);
      EXPECT_EQ(max_abs_diff(p->value, expect), 0.0f) << p->name;
    }
  }
}

TEST(ModelCheckpoint, RejectsMismatchesNamingTheTensor) {
  Transformer m(small_llama(), 3);
  auto all = [&] {
    std::map<std::string, Tensor> t;
    for (const Parameter* p : m.parameters()) t[p->name] = p->value;
    return t;
  };
  auto t1 = all();
  t1.erase("model.layers.1.mlp.up_proj.weight");
  t1["model.layers.1.mlp.up.weight"] = Tensor::zeros({48, 32});
  std::string e = error_of([&] { load_weights(m, t1, "x.safetensors"); });
  EXPECT_NE(e.find("missing 1 tensor(s): 'model.layers.1.mlp.up_proj.weight'"), std::string::npos) << e;
  EXPECT_NE(e.find("unexpected 1 tensor(s): 'model.layers.1.mlp.up.weight'"), std::string::npos) << e;

  auto t2 = all();
  t2["model.layers.0.self_attn.k_proj.weight"] = Tensor::zeros({32, 32});
  e = error_of([&] { load_weights(m, t2, "x.safetensors"); });
  EXPECT_NE(e.find("'model.layers.0.self_attn.k_proj.weight' has shape [32, 32] but the config needs [16, 32]"),
            std::string::npos)
      << e;

  auto t3 = all();
  t3["model.norm.weight"] = Tensor::zeros({32}, DType::I32);
  e = error_of([&] { load_weights(m, t3, "x.safetensors"); });
  EXPECT_NE(e.find("'model.norm.weight' has dtype int32"), std::string::npos) << e;

  ModelConfig tied = small_llama();
  tied.tie_word_embeddings = true;
  Transformer t(tied, 1);
  e = error_of([&] { load_weights(t, all(), "x.safetensors"); });
  EXPECT_NE(e.find("unexpected 1 tensor(s): 'lm_head.weight'"), std::string::npos) << e;
  EXPECT_NE(e.find("tie_word_embeddings is true"), std::string::npos) << e;

  e = error_of([&] { load_checkpoint("/nonexistent/ckpt"); });
  EXPECT_NE(e.find("/nonexistent/ckpt"), std::string::npos) << e;
}

TEST(ModelCheckpoint, InitAndForwardCommands) {
  const fs::path dir = temp_dir("cli");
  // Same GEMM backend and thread count as this process, so the bits must match.
  const std::string cli = "MODFORMER_GEMM_BACKEND=" + gemm_backend_name(gemm_backend()) + " " +
                          std::string(MODFORMER_CLI_PATH) + " --threads " + std::to_string(num_threads());
  ModelConfig cfg = small_llama();
  cfg.model_type = "modformer";
  cfg.norm = NormKind::LayerNorm;
  cfg.position = PositionKind::ALiBi;
  save_config((dir / "cfg.json").string(), cfg);
  const std::string ck = (dir / "ck").string();
  ASSERT_EQ(std::system((cli + " init --config " + (dir / "cfg.json").string() + " --out " + ck +
                         " --seed 7 > /dev/null").c_str()),
            0);
  Tensor tok64 = tokens_2x6().to(DType::I64);
  save_npy((dir / "tok.npy").string(), tok64);
  ASSERT_EQ(std::system((cli + " forward --model " + ck + " --tokens " + (dir / "tok.npy").string() + " --out " +
                         (dir / "logits.npy").string() + " > /dev/null")
                            .c_str()),
            0);
  const Tensor logits = load_npy((dir / "logits.npy").string());
  Transformer same(cfg, 7);  // init is deterministic in the seed
  EXPECT_EQ(max_abs_diff(logits, same.logits(tokens_2x6())), 0.0f);
  ASSERT_EQ(logits.shape(), (Shape{2, 6, 50}));

  Tensor bad = tokens_2x6();
  bad.data<std::int32_t>()[9] = 50;
  save_npy((dir / "bad.npy").string(), bad);
  const std::string err = (dir / "err.txt").string();
  EXPECT_NE(std::system((cli + " forward --model " + ck + " --tokens " + (dir / "bad.npy").string() + " --out " +
                         (dir / "x.npy").string() + " 2> " + err)
                            .c_str()),
            0);
  std::ifstream f(err);
  const std::string msg((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_NE(msg.find("token id 50 at position [1, 3] is out of range [0, 50)"), std::string::npos) << msg;
  fs::remove_all(dir);
}
