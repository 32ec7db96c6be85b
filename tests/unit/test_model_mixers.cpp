// Blocks from mixers, through the model: layer_types and options parsed
// strictly (errors name the field and the mixer), configs round-trip, mixed
// full/sliding layers generate exactly like their full forward, encoder
// classifiers ignore padding and learn a small task, and `modformer mixer`
// round-trips its own --init output and names a missing parameter.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "core/atomic_file.h"
#include "core/rng.h"
#include "core/npy.h"
#include "core/safetensors.h"
#include "model/transformer.h"
#include "nn/mixer/mixer_registry.h"
#include "train/classify_data.h"
#include "train/trainer.h"
#include "../support/cli.h"
#include "../support/errors.h"
#include "../support/generation.h"
#include "../support/threads.h"
#include "../support/tiny_models.h"
#include "../support/train_runs.h"

using namespace mf;
namespace fs = std::filesystem;
namespace mt = mf::testing;

namespace {

nlohmann::json tiny_json() {
  return {{"model_type", "modformer"}, {"vocab_size", 23},         {"hidden_size", 16},
          {"intermediate_size", 24},   {"num_hidden_layers", 3},   {"num_attention_heads", 2},
          {"num_key_value_heads", 1},  {"head_dim", 8},            {"max_position_embeddings", 64}};
}

void expect_error(const std::function<void()>& f, const std::string& needle) {
  const std::string e = mt::error_of(f);
  EXPECT_NE(e.find(needle), std::string::npos) << "error: " << e << "\nexpected to contain: " << needle;
}

ModelConfig parse(const nlohmann::json& j) { return config_from_json(j, "test.json"); }

void expect_config_error(const nlohmann::json& j, const std::string& needle) {
  expect_error([&] { parse(j); }, needle);
}

std::string temp_dir(const std::string& tag) {
  const fs::path d = fs::temp_directory_path() / ("mf_mixers_" + std::to_string(::getpid()) + "_" + tag);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

}  // namespace

TEST(ModelMixers, LayerTypesAndOptionsAreParsedStrictly) {
  nlohmann::json j = tiny_json();
  j["sliding_window"] = 4;
  j["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention"};
  const ModelConfig c = parse(j);
  EXPECT_EQ(c.layer_mixer(0), "sliding_attention");
  EXPECT_EQ(c.layer_mixer(1), "full_attention");
  // Round trip through the saved JSON.
  EXPECT_EQ(config_to_string(config_from_string(config_to_string(c), "saved")), config_to_string(c));

  nlohmann::json bad = j;
  bad["layer_types"] = {"sliding_attention", "full_attention"};
  expect_config_error(bad, "field 'layer_types': has 2 entries but num_hidden_layers is 3");
  bad["layer_types"] = {"sliding_attention", "nonesuch", "full_attention"};
  expect_config_error(bad, "field 'layer_types[1]': unknown token mixer \"nonesuch\" (known: \"full_attention\"");
  bad = tiny_json();
  bad["layer_types"] = {"sliding_attention", "full_attention", "full_attention"};
  expect_config_error(bad, "field 'layer_types[0]': mixer \"sliding_attention\" needs the model's sliding_window");
  bad = tiny_json();
  bad["token_mixer"] = "flash";
  expect_config_error(bad, "field 'token_mixer': unknown token mixer \"flash\"");
  bad = tiny_json();
  bad["swiglu"] = {{"k", 3}};
  expect_config_error(bad, "field 'swiglu.k': unknown option (this mixer has no options)");
  bad = tiny_json();
  bad["geglu"] = nlohmann::json::object();
  expect_config_error(bad, "field 'geglu': options for mixer \"geglu\", which no layer uses");
  bad = tiny_json();
  bad["model_type"] = "llama";
  bad["layer_types"] = {"full_attention", "full_attention", "full_attention"};
  EXPECT_NO_THROW(parse(bad));
  bad["sliding_window"] = 2;
  bad["layer_types"] = {"full_attention", "sliding_attention", "full_attention"};
  expect_config_error(bad, "model_type \"llama\" requires");
}

// A config that asks a mixer for what it cannot do names the mixer and why.
TEST(ModelMixers, ImpossibleUsesNameTheMixer) {
  nlohmann::json j = tiny_json();
  j["token_mixer"] = "fnet";
  expect_config_error(j, "field 'token_mixer': mixer \"fnet\" cannot run causally, but is_decoder is true (FNet's");
  j["token_mixer"] = "linformer";
  expect_config_error(j, "mixer \"linformer\" cannot run causally");
  nlohmann::json e = tiny_json();
  e["is_decoder"] = false;
  e["num_labels"] = 2;
  e["layer_types"] = {"fnet", "linformer", "full_attention"};
  e["linformer"] = {{"k", 100}};
  expect_error([&] { Transformer m(parse(e), 1); }, "[linformer] option 'k' (100) exceeds the sequence length n = 64");
  e["linformer"] = {{"k", 8}, {"sharing", "rowwise"}};
  expect_config_error(e, "field 'linformer.sharing': unknown value \"rowwise\"");
  e["linformer"] = {{"k", 8}, {"projection", "conv"}, {"max_len", 60}};
  expect_error([&] { Transformer m(parse(e), 1); }, "[linformer]");
  e["linformer"] = {{"k", 8}, {"sharing", "layerwise"}};
  e["layer_types"] = {"linformer", "fnet", "linformer"};
  Transformer m(parse(e), 1);  // one projection for both Linformer layers
  EXPECT_NE(m.find_parameter("model.linformer.E"), nullptr);
  EXPECT_EQ(m.find_parameter("model.layers.0.self_attn.E"), nullptr);
  // Linformer refuses sequences longer than its n.
  expect_error([&] { m.class_logits(mt::random_tokens({1, 65}, 1, 23), Tensor()); },
               "[linformer] sequence length 65 exceeds max_len (n) = 64");
}

TEST(ModelMixers, EncoderFieldsAreChecked) {
  nlohmann::json j = tiny_json();
  j["is_decoder"] = false;
  expect_config_error(j, "field 'num_labels': an encoder (is_decoder false) is a sequence classifier");
  j["num_labels"] = 4;
  j["classifier_pooling"] = "max";
  expect_config_error(j, "field 'classifier_pooling': unknown value \"max\"");
  j["classifier_pooling"] = "first";
  const ModelConfig c = parse(j);
  EXPECT_EQ(config_to_string(config_from_string(config_to_string(c), "saved")), config_to_string(c));
  nlohmann::json d = tiny_json();
  d["num_labels"] = 3;
  expect_config_error(d, "field 'num_labels': is for encoder classifiers");
  // An encoder has no LM head and does not generate; a decoder has no class logits.
  Transformer enc(c, 1);
  EXPECT_EQ(enc.find_parameter("lm_head.weight"), nullptr);
  EXPECT_NE(enc.find_parameter("classifier.weight"), nullptr);
  expect_error([&] { enc.logits(mt::random_tokens({1, 4}, 1, 23)); }, "has no token logits");
  expect_error([&] { enc.new_generation_state(); }, "does not generate");
  Transformer dec(parse(tiny_json()), 1);
  expect_error([&] { dec.class_logits(mt::random_tokens({1, 4}, 1, 23), Tensor()); },
                   "needs an encoder classifier");
}

// Gemma-3 style alternation: each layer's cache follows its own mixer (a
// rolling window of W slots or a full cache), and prefill + steps equal the
// full forward.
TEST(ModelMixers, MixedLayerTypesGenerateLikeTheFullForward) {
  mt::ScopedThreads one(1);
  nlohmann::json j = tiny_json();
  j["sliding_window"] = 3;
  j["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention"};
  Transformer m(parse(j), 5);
  const Tensor tok = mt::random_tokens({2, 20}, 7, 23);
  const auto state = mf::testing::expect_generation_equals_full_forward(m, tok, 7, 1e-4f);
  // Sliding layers hold 2W rows, the full layer its whole capacity (64).
  EXPECT_EQ(state->bytes(), (2 * (2 * 3) + 64) * 2 * 8 * 2 * 4);
}

// Padding tokens change nothing in an attention encoder: a sequence padded
// with junk (mask 0) gets the class logits of the unpadded sequence.
TEST(ModelMixers, EncoderIgnoresPadding) {
  mt::ScopedThreads one(1);
  for (const char* pooling : {"mean", "first"}) {
    nlohmann::json j = tiny_json();
    j["is_decoder"] = false;
    j["num_labels"] = 3;
    j["classifier_pooling"] = pooling;
    j["position"] = "learned";
    Transformer m(parse(j), 9);
    const Tensor tok = mt::random_tokens({1, 6}, 3, 23);
    const Tensor alone = m.class_logits(tok, Tensor());
    Tensor padded = mt::random_tokens({2, 10}, 4, 23);  // row 0: tok then 4 junk tokens
    Tensor mask = Tensor::zeros({2, 10}, DType::I32);
    for (std::int64_t i = 0; i < 6; ++i) padded.data<std::int32_t>()[i] = tok.data<std::int32_t>()[i];
    for (std::int64_t i = 0; i < 6; ++i) mask.data<std::int32_t>()[i] = 1;
    for (std::int64_t i = 0; i < 10; ++i) mask.data<std::int32_t>()[10 + i] = 1;
    const Tensor both = m.class_logits(padded, mask);
    EXPECT_LE(max_abs_diff(both.slice(0, 0, 1).contiguous(), alone), 1e-5f) << pooling;
    // Negative control: without the mask the junk changes the answer.
    EXPECT_GT(max_abs_diff(m.class_logits(padded, Tensor()).slice(0, 0, 1).contiguous(), alone), 1e-3f) << pooling;
    Tensor all_pad = Tensor::zeros({2, 10}, DType::I32);
    expect_error([&] { m.class_logits(padded, all_pad); }, "sequence 0 of the batch is all padding");
  }
}

// An encoder classifier (attention layers; then FNet + Linformer layers; mean pooling) learns "more a's
// or b's?" on texts of 6..15 bytes (per-batch padding) within seconds.
TEST(ModelMixers, EncoderClassifierLearnsASmallTask) {
  mt::ScopedThreads two(2);
  auto tsv = [](int n, std::uint64_t seed) {
    Rng rng(seed);
    std::string s = "Source\tTarget\n";
    for (int i = 0; i < n; ++i) {
      const int len = 6 + static_cast<int>(rng.next_u32() % 10);
      std::string text;
      int a = 0, b = 0;
      for (int k = 0; k < len; ++k) {
        const std::uint32_t r = rng.next_u32() % 3;
        text += r == 0 ? 'a' : r == 1 ? 'b' : 'c';
        a += r == 0;
        b += r == 1;
      }
      if (a == b) {
        text += 'a';
        ++a;
      }
      s += text + "\t" + (a > b ? "1" : "0") + "\n";
    }
    return s;
  };
  const ClassifyData train_data = ClassifyData::parse(tsv(512, 1), "train.tsv");
  const ClassifyData val_data = ClassifyData::parse(tsv(200, 2), "val.tsv");
  nlohmann::json j = tiny_json();
  j["vocab_size"] = 256;
  j["hidden_size"] = 32;
  j["head_dim"] = 16;
  j["num_hidden_layers"] = 2;
  j["is_decoder"] = false;
  j["num_labels"] = 2;
  nlohmann::json mixed = j;  // the new mixers in one model
  mixed["layer_types"] = {"fnet", "linformer"};
  mixed["linformer"] = {{"k", 16}};
  for (const nlohmann::json& config : {j, mixed}) {
  Transformer m(parse(config), 3);
  const std::string dir = temp_dir("learn");
  TrainConfig cfg = mt::small_train_config(dir);
  cfg.task = "classify";
  cfg.steps = 120;
  cfg.batch_size = 16;
  cfg.grad_accum = 1;
  cfg.seq_len = 64;
  cfg.lr = 3e-3;
  cfg.min_lr = 3e-4;
  cfg.warmup_steps = 10;
  cfg.eval_interval = 0;
  cfg.checkpoint_interval = 0;
  cfg.log_interval = 40;
  const ClassifyTrainResult r = train(m, train_data, val_data, cfg);
  EXPECT_GE(r.val.accuracy, 0.8) << config.dump() << ": val accuracy " << r.val.accuracy << " (chance 0.5), loss "
                                  << r.val.loss;
  fs::remove_all(dir);
  }
}

TEST(ModelMixers, MixerCliRoundTripsItsInitOutput) {
  const std::string dir = temp_dir("cli");
  nlohmann::json j = {{"token_mixer", "full_attention"}, {"hidden_size", 16}, {"num_attention_heads", 2},
                      {"num_key_value_heads", 1},        {"head_dim", 8},     {"position", "none"}};
  write_file_atomic(dir + "/mixer.json", j.dump());
  save_npy(dir + "/x.npy", randn({2, 5, 16}, 1));
  save_npy(dir + "/dy.npy", randn({2, 5, 16}, 2));
  // One GEMM backend for every process: each would otherwise pick its own by
  // timing, and y1 == y2 below compares bits across processes.
  auto run = [&](const std::string& args) {
    return mt::run_cli("mixer --config " + dir + "/mixer.json " + args, dir, "MODFORMER_GEMM_BACKEND=openblas");
  };
  ASSERT_EQ(run("--init --seed 4 --out " + dir + "/p.safetensors").rc, 0);
  const SafetensorsContents p = load_safetensors(dir + "/p.safetensors");
  EXPECT_EQ(p.tensors.size(), 4u);
  EXPECT_EQ(p.tensors.at("self_attn.k_proj.weight").shape(), Shape({8, 16}));
  // --params of its own --init == the same seed without --params.
  ASSERT_EQ(run("--params " + dir + "/p.safetensors --x " + dir + "/x.npy --out " + dir + "/y1.npy --dy " + dir +
                "/dy.npy --grads " + dir + "/g.safetensors")
                .rc,
            0);
  ASSERT_EQ(run("--seed 4 --x " + dir + "/x.npy --out " + dir + "/y2.npy").rc, 0);
  EXPECT_EQ(max_abs_diff(load_npy(dir + "/y1.npy"), load_npy(dir + "/y2.npy")), 0.0f);
  const SafetensorsContents g = load_safetensors(dir + "/g.safetensors");
  EXPECT_EQ(g.tensors.at("x").shape(), Shape({2, 5, 16}));
  EXPECT_EQ(g.tensors.at("self_attn.o_proj.weight").shape(), Shape({16, 16}));
  // A missing or misshapen parameter is named.
  std::vector<std::pair<std::string, Tensor>> partial;
  for (const auto& [n, t] : p.tensors)
    if (n != "self_attn.v_proj.weight") partial.emplace_back(n, t);
  save_safetensors(dir + "/partial.safetensors", partial);
  auto r = run("--params " + dir + "/partial.safetensors --x " + dir + "/x.npy --out " + dir + "/y3.npy");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("has no tensor 'self_attn.v_proj.weight'"), std::string::npos) << r.err;
  partial.emplace_back("self_attn.v_proj.weight", Tensor::zeros({16, 8}));
  save_safetensors(dir + "/bad.safetensors", partial);
  r = run("--params " + dir + "/bad.safetensors --x " + dir + "/x.npy --out " + dir + "/y3.npy");
  EXPECT_NE(r.err.find("tensor 'self_attn.v_proj.weight' has shape [16, 8] but mixer \"full_attention\" needs [8, 16]"),
            std::string::npos)
      << r.err;
  nlohmann::json f = {{"token_mixer", "fnet"}, {"hidden_size", 16}, {"num_attention_heads", 2}};
  write_file_atomic(dir + "/fnet.json", f.dump());
  r = mt::run_cli("mixer --config " + dir + "/fnet.json --causal --x " + dir + "/x.npy --out " + dir + "/y3.npy", dir);
  EXPECT_NE(r.err.find("mixer \"fnet\" cannot run causally (--causal)"), std::string::npos) << r.err;
  ASSERT_EQ(mt::run_cli("mixer --config " + dir + "/fnet.json --init --out " + dir + "/f.safetensors", dir).rc, 0);
  EXPECT_TRUE(load_safetensors(dir + "/f.safetensors").tensors.empty());  // no parameters: an empty file
  r = run("--x " + dir + "/dy.npy --out " + dir + "/y3.npy --padding-mask " + dir + "/x.npy");
  EXPECT_NE(r.err.find("--padding-mask"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir + "/y3.npy"));
  fs::remove_all(dir);
}

// `bench mixers --causal` end to end at toy sizes: every causal mixer gets
// time and memory rows, every generating mixer decode rows per context, and
// the three pictures are written.
TEST(ModelMixers, BenchMixersCausalWritesDecodeRows) {
  const std::string dir = temp_dir("bench");
  const auto r = mt::run_cli("--threads 1 bench mixers --causal --lengths 32,64 --reps 1 --hidden 32 --heads 2 "
                             "--decode-contexts 8,16 --decode-steps 2 --out-dir " + dir,
                             dir);
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  const nlohmann::json j = nlohmann::json::parse(read_file(dir + "/mixers.json"));
  std::size_t causal = 0, generating = 0;
  for (const auto& e : token_mixer_registry()) {
    causal += e.caps.causal;
    generating += e.caps.causal && e.caps.generation;
  }
  ASSERT_EQ(j.at("mixers").size(), causal);
  ASSERT_EQ(j.at("decode").size(), generating);
  for (const auto& d : j.at("decode")) {
    ASSERT_EQ(d.at("rows").size(), 2u) << d.dump();
    for (const auto& row : d.at("rows")) EXPECT_GT(row.at("seconds_per_token").get<double>(), 0.0) << d.dump();
  }
  for (const char* svg : {"/speed.svg", "/memory.svg", "/decode.svg"})
    EXPECT_TRUE(std::filesystem::exists(dir + svg)) << svg;
  std::filesystem::remove_all(dir);
}

// Hybrids (as Jamba mixes Mamba and attention): Mamba, retention and
// attention layers in one decoder train, and generation carries each layer's
// own state (conv + SSM state, retention state, KV cache) exactly like the
// full forward. (PyTorch: the model_hybrid_mamba_retention_attention fixture.)
TEST(ModelMixers, HybridMambaRetentionAttentionTrainsAndGenerates) {
  mt::ScopedThreads one(1);
  nlohmann::json j = tiny_json();
  j["position"] = "none";
  j["layer_types"] = {"mamba", "retention", "full_attention"};
  j["mamba"] = {{"state_size", 4}};
  j["retention"] = {{"form", "recurrent"}};  // the generation normalizer in training too: exact agreement
  j["initializer_range"] = 0.05;
  Transformer m(parse(j), 5);
  const Tensor tok = mt::random_tokens({2, 17}, 7, 23);
  const Tensor in = tok.slice(1, 0, 16).contiguous(), tgt = tok.slice(1, 1, 17).contiguous();
  const double first = m.loss(in, tgt, false);
  for (int step = 0; step < 40; ++step) {
    for (Parameter* p : m.parameters()) p->grad.fill(0.0f);
    m.loss(in, tgt, true);
    for (Parameter* p : m.parameters())
      for (std::int64_t k = 0; k < p->value.numel(); ++k) p->value.data<float>()[k] -= 0.3f * p->grad.data<float>()[k];
  }
  const double last = m.loss(in, tgt, false);
  EXPECT_LT(last, 0.6 * first) << "first " << first << " last " << last;
  mt::expect_generation_equals_full_forward(m, in, 5, 1e-4f);
}
