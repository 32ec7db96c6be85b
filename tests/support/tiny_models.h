// Tiny whole-model configs and token inputs for tests that build a
// Transformer: small enough for finite differences and end-to-end CLI runs,
// yet with every part a real model has (several layers, GQA, RoPE).
#pragma once
#include <cstdint>

#include "core/rng.h"
#include "core/tensor.h"
#include "model/config.h"

namespace mf::testing {

// model_type llama (RoPE, GQA 4:2, RMSNorm pre-norm, SwiGLU) over bytes: 2
// layers, hidden 32, 4 query heads of dim 8, 64 positions. Tests change the
// fields they are about.
inline ModelConfig tiny_llama_config() {
  ModelConfig c;
  c.vocab_size = 256;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  // Far from rms_norm_eps (1e-6), so that a norm reading the other one's eps
  // fails the comparisons with PyTorch.
  c.layer_norm_eps = 1e-2;
  return c;
}

// The base of the model-kind tests: tiny_llama_config() as a "modformer"
// model over 23 tokens, with weights large enough (0.2) that the logits
// depend visibly on every layer.
inline ModelConfig tiny_modformer_config(AttentionImpl impl) {
  ModelConfig c = tiny_llama_config();
  c.model_type = "modformer";
  c.vocab_size = 23;
  c.intermediate_size = 40;
  c.attention_impl = impl;
  c.initializer_range = 0.2;
  c.rms_norm_eps = 1e-5;
  return c;
}

// The GPT-2-like variant of a config: post-norm LayerNorm, GELU MLP,
// learned positions, biases and tied embeddings.
inline void use_post_norm_gelu_learned(ModelConfig& c) {
  c.norm = NormKind::LayerNorm;
  c.norm_placement = NormPlacement::Post;
  c.ffn = FfnKind::MLP;
  c.hidden_act = Activation::GELU;
  c.position = PositionKind::Learned;
  c.attention_bias = c.mlp_bias = true;
  c.tie_word_embeddings = true;
}

// Token ids drawn uniformly from [0, vocab), as int32.
inline Tensor random_tokens(const Shape& shape, std::uint64_t seed, std::int64_t vocab) {
  Tensor t = Tensor::empty(shape, DType::I32);
  Rng rng(seed);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<std::int32_t>()[i] = static_cast<std::int32_t>(rng.below(vocab));
  return t;
}

}  // namespace mf::testing
