// JSON model configs: HF names, defaults, round trip, and rejection of bad
// input with a message that names the field.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "../support/errors.h"
#include "model/config.h"

using namespace mf;
using json = nlohmann::json;

namespace {

json tiny_llama() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0", "bos_token_id": 1, "eos_token_id": [2, 3], "pad_token_id": null,
    "use_cache": true, "pretraining_tp": 1, "attention_dropout": 0.0,
    "vocab_size": 300, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 500000,
    "max_position_embeddings": 128, "tie_word_embeddings": true, "hidden_act": "silu",
    "rope_scaling": {"rope_type": "linear", "factor": 2.0}
  })");
}

// Expects config_from_json(j) to throw an error that mentions `field` and `part`.
void expect_rejected(const json& j, const std::string& field, const std::string& part = "") {
  try {
    config_from_json(j, "test.json");
    FAIL() << "accepted: " << j.dump();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("field '" + field + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("test.json"), std::string::npos) << msg;
    if (!part.empty()) {
      EXPECT_NE(msg.find(part), std::string::npos) << msg;
    }
  }
}

json with(json j, const std::string& key, const json& value) {
  j[key] = value;
  return j;
}

}  // namespace

TEST(ModelConfig, ParsesHuggingFaceLlamaConfig) {
  const ModelConfig c = config_from_json(tiny_llama());
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 300);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 16);  // hidden / heads
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::Linear);
  EXPECT_EQ(c.rope_scaling.factor, 2.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.norm, NormKind::RMSNorm);
  EXPECT_EQ(c.ffn, FfnKind::SwiGLU);
  EXPECT_EQ(c.position, PositionKind::RoPE);
  EXPECT_EQ(c.attention_impl, AttentionImpl::Flash);
}

TEST(ModelConfig, DependentDefaults) {
  json j = tiny_llama();
  j.erase("num_key_value_heads");
  j.erase("hidden_act");
  EXPECT_EQ(config_from_json(j).num_key_value_heads, 4);  // = heads (MHA)
  json m = {{"model_type", "modformer"}, {"vocab_size", 10}, {"hidden_size", 32}, {"intermediate_size", 64},
            {"num_hidden_layers", 1}, {"num_attention_heads", 2}, {"ffn", "mlp"}, {"head_dim", 8}};
  const ModelConfig c = config_from_json(m);
  EXPECT_EQ(c.hidden_act, Activation::GELU);  // non-gated FFNs default to GELU
  EXPECT_EQ(c.head_dim, 8);                   // explicit head_dim may differ from hidden / heads
  EXPECT_EQ(c.q_dim(), 16);
}

TEST(ModelConfig, RoundTripsEveryField) {
  ModelConfig c;
  c.model_type = "modformer";
  c.vocab_size = 97;
  c.hidden_size = 48;
  c.intermediate_size = 100;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 3;
  c.head_dim = 16;
  c.layer_norm_eps = 1e-4;
  c.norm = NormKind::LayerNorm;
  c.norm_placement = NormPlacement::Sandwich;
  c.ffn = FfnKind::GeGLU;
  c.hidden_act = Activation::GELUTanh;
  c.ffn_chunk_size = 7;
  c.position = PositionKind::RoPEInterleaved;
  c.rope_scaling.type = RopeScalingType::YaRN;
  c.rope_scaling.factor = 4;
  c.rope_scaling.original_max_position_embeddings = 64;
  c.rope_scaling.beta_fast = 16;
  c.max_position_embeddings = 256;
  c.sliding_window = 33;
  c.attention_bias = true;
  c.mlp_bias = true;
  c.attention_impl = AttentionImpl::Dense;
  c.gradient_checkpointing = true;
  c.initializer_range = 0.05;
  c.tie_word_embeddings = true;
  const ModelConfig d = config_from_string(config_to_string(c));
  EXPECT_EQ(config_to_json(d), config_to_json(c));
  EXPECT_EQ(d.rope_scaling.beta_fast, 16);
  EXPECT_EQ(d.ffn_chunk_size, 7);
  EXPECT_EQ(d.sliding_window, 33);
}

TEST(ModelConfig, DefaultIsValidLlama) {
  const ModelConfig c = default_config();
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 256);
  EXPECT_LT(c.num_key_value_heads, c.num_attention_heads);  // GQA
  EXPECT_EQ(c.q_dim(), c.hidden_size);
  const ModelConfig d = config_from_string(config_to_string(c));
  EXPECT_EQ(config_to_json(d), config_to_json(c));
}

TEST(ModelConfig, RejectsUnknownFieldsAndWrongTypes) {
  expect_rejected(with(tiny_llama(), "hiden_size", 64), "hiden_size", "unknown field");
  expect_rejected(with(tiny_llama(), "hidden_size", "64"), "hidden_size", "must be an integer");
  expect_rejected(with(tiny_llama(), "hidden_size", 64.5), "hidden_size", "must be an integer");
  expect_rejected(with(tiny_llama(), "tie_word_embeddings", 1), "tie_word_embeddings", "true or false");
  expect_rejected(with(tiny_llama(), "rope_theta", "big"), "rope_theta", "must be a number");
  expect_rejected(with(tiny_llama(), "norm", "batchnorm"), "norm", "unknown value \"batchnorm\"");
  expect_rejected(with(tiny_llama(), "attention_impl", "sparse"), "attention_impl");
  expect_rejected(with(tiny_llama(), "model_type", "gpt2"), "model_type");
  expect_rejected(with(tiny_llama(), "rope_scaling", json{{"type", "linear"}, {"factor", 2}, {"extra", 1}}),
                  "rope_scaling.extra", "unknown field");
  expect_rejected(with(tiny_llama(), "rope_scaling", json{{"type", "llama3"}, {"factor", 2}}), "rope_scaling.type",
                  "llama3");
  expect_rejected(with(tiny_llama(), "rope_scaling", json{{"factor", 2}}), "rope_scaling.type", "missing");
  expect_rejected(with(tiny_llama(), "eos_token_id", "x"), "eos_token_id");
  json missing = tiny_llama();
  missing.erase("vocab_size");
  expect_rejected(missing, "vocab_size", "missing");
  EXPECT_ERROR("bad.json: invalid JSON", config_from_string("{\"vocab_size\": 3,", "bad.json"));
  EXPECT_ERROR("bad.json: must be a JSON object but is array", config_from_string("[1, 2]", "bad.json"));
}

TEST(ModelConfig, RejectsOutOfRangeValues) {
  expect_rejected(with(tiny_llama(), "vocab_size", 0), "vocab_size", "must be in");
  expect_rejected(with(tiny_llama(), "vocab_size", 1LL << 40), "vocab_size", "must be in");
  expect_rejected(with(tiny_llama(), "num_hidden_layers", -1), "num_hidden_layers");
  expect_rejected(with(tiny_llama(), "rms_norm_eps", 0.0), "rms_norm_eps");
  expect_rejected(with(tiny_llama(), "rope_theta", 0.5), "rope_theta");
  expect_rejected(with(tiny_llama(), "ffn_chunk_size", -3), "ffn_chunk_size");
  expect_rejected(with(tiny_llama(), "initializer_range", 0), "initializer_range");
  expect_rejected(with(tiny_llama(), "max_position_embeddings", 0), "max_position_embeddings");
  expect_rejected(with(tiny_llama(), "rope_scaling", json{{"type", "linear"}, {"factor", 0.5}}),
                  "rope_scaling.factor");
  expect_rejected(with(tiny_llama(), "rope_scaling",
                       json{{"type", "yarn"}, {"factor", 4}, {"beta_fast", 1}, {"beta_slow", 2}}),
                  "rope_scaling.beta_fast");
  expect_rejected(with(tiny_llama(), "pretraining_tp", 2), "pretraining_tp");
  expect_rejected(with(tiny_llama(), "attention_dropout", 0.1), "attention_dropout");
}

TEST(ModelConfig, RejectsImpossibleCombinations) {
  expect_rejected(with(tiny_llama(), "num_attention_heads", 3), "num_attention_heads", "does not divide hidden_size");
  expect_rejected(with(tiny_llama(), "num_key_value_heads", 3), "num_key_value_heads", "does not divide");
  expect_rejected(with(tiny_llama(), "num_key_value_heads", 8), "num_key_value_heads", "must be in");
  json hd = with(tiny_llama(), "head_dim", 12);
  expect_rejected(hd, "head_dim", "multiple of 8");
  expect_rejected(with(tiny_llama(), "hidden_act", "gelu"), "hidden_act", "swiglu");
  // llama with non-llama switches.
  expect_rejected(with(tiny_llama(), "norm", "layernorm"), "norm", "model_type \"llama\"");
  expect_rejected(with(tiny_llama(), "norm_placement", "post"), "norm_placement", "model_type \"llama\"");
  expect_rejected(with(tiny_llama(), "ffn", "mlp"), "ffn");
  expect_rejected(with(tiny_llama(), "position", "alibi"), "position", "model_type \"llama\"");
  expect_rejected(with(tiny_llama(), "sliding_window", 16), "sliding_window", "model_type \"llama\"");
  expect_rejected(with(tiny_llama(), "rope_scaling", json{{"type", "ntk"}, {"factor", 2}}), "rope_scaling.type",
                  "modformer");
  // The same switches are fine for model_type "modformer" (with a matching activation)...
  json m = with(with(with(tiny_llama(), "model_type", "modformer"), "ffn", "mlp"), "hidden_act", "gelu");
  m.erase("rope_scaling");
  EXPECT_NO_THROW(config_from_json(with(with(m, "norm", "layernorm"), "norm_placement", "post")));
  EXPECT_NO_THROW(config_from_json(with(m, "sliding_window", 16)));
  // ...but RoPE scaling with a non-RoPE position is not, nor GeGLU with SiLU.
  expect_rejected(with(with(m, "position", "alibi"), "rope_scaling", json{{"type", "linear"}, {"factor", 2}}),
                  "rope_scaling", "alibi");
  expect_rejected(with(with(m, "ffn", "geglu"), "hidden_act", "silu"), "hidden_act", "geglu");
}
