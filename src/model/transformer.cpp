// The decoder LM: parameter table, forward (embeddings -> blocks -> final
// norm), LM head (fused chunked cross-entropy for the loss, a plain GEMM for
// logits) and the backward through all of it, with optional per-block
// gradient checkpointing (recompute in the backward).
#include "model/transformer.h"

#include <cstring>
#include <set>

#include "core/alloc.h"
#include "core/rng.h"
#include "model/checkpoint.h"
#include "nn/embedding.h"
#include "nn/linear.h"
#include "nn/loss/lm_head_cross_entropy.h"
#include "nn/position/learned_position.h"
#include "nn/position/sinusoidal.h"

namespace mf {

namespace {

constexpr const char* kOp = "[model]";

std::string layer_prefix(std::int64_t i) { return "model.layers." + std::to_string(i) + "."; }

// Norm slot names by placement (see transformer.h).
struct NormNames {
  const char *attn_in, *attn_out, *attn_post, *ffn_in, *ffn_out, *ffn_post;  // null: absent
};
NormNames norm_names(NormPlacement p) {
  switch (p) {
    case NormPlacement::Pre:
      return {"input_layernorm", nullptr, nullptr, "post_attention_layernorm", nullptr, nullptr};
    case NormPlacement::Sandwich:
      return {"input_layernorm", "post_attention_layernorm", nullptr, "pre_feedforward_layernorm",
              "post_feedforward_layernorm", nullptr};
    case NormPlacement::Post:
      return {nullptr, nullptr, "post_attention_layernorm", nullptr, nullptr, "post_feedforward_layernorm"};
  }
  return {};
}

RopeConfig rope_config(const ModelConfig& c) {
  RopeConfig r;
  r.theta = c.rope_theta;
  r.rotary_dim = c.head_dim;
  r.convention = c.position == PositionKind::RoPEInterleaved ? RopeConvention::Interleaved : RopeConvention::RotateHalf;
  const RopeScalingConfig& s = c.rope_scaling;
  switch (s.type) {
    case RopeScalingType::None: r.scaling = RopeScaling::None; break;
    case RopeScalingType::Linear: r.scaling = RopeScaling::Linear; break;
    case RopeScalingType::NTK: r.scaling = RopeScaling::Ntk; break;
    case RopeScalingType::Dynamic: r.scaling = RopeScaling::DynamicNtk; break;
    case RopeScalingType::YaRN: r.scaling = RopeScaling::Yarn; break;
  }
  r.factor = s.factor;
  r.original_max_position_embeddings =
      s.original_max_position_embeddings > 0 ? s.original_max_position_embeddings : c.max_position_embeddings;
  r.beta_fast = s.beta_fast;
  r.beta_slow = s.beta_slow;
  if (s.attention_factor > 0) r.attention_factor = s.attention_factor;
  r.validate();
  return r;
}

}  // namespace

std::vector<ParamSpec> transformer_parameter_specs(const ModelConfig& c) {
  std::vector<ParamSpec> out;
  const std::int64_t C = c.hidden_size, I = c.intermediate_size;
  auto norm = [&](const std::string& base) {
    out.push_back({base + ".weight", {C}, ParamInit::Ones, false});
    if (c.norm == NormKind::LayerNorm) out.push_back({base + ".bias", {C}, ParamInit::Zeros, false});
  };
  auto linear = [&](const std::string& base, std::int64_t o, std::int64_t i, bool bias) {
    out.push_back({base + ".weight", {o, i}, ParamInit::Normal, true});
    if (bias) out.push_back({base + ".bias", {o}, ParamInit::Zeros, false});
  };
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, C}, ParamInit::Normal, false});
  if (c.position == PositionKind::Learned)
    out.push_back({"model.embed_positions.weight", {c.max_position_embeddings, C}, ParamInit::Normal, false});
  const NormNames nn = norm_names(c.norm_placement);
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l);
    if (nn.attn_in) norm(p + nn.attn_in);
    linear(p + "self_attn.q_proj", c.q_dim(), C, c.attention_bias);
    linear(p + "self_attn.k_proj", c.kv_dim(), C, c.attention_bias);
    linear(p + "self_attn.v_proj", c.kv_dim(), C, c.attention_bias);
    linear(p + "self_attn.o_proj", C, c.q_dim(), c.attention_bias);
    if (nn.attn_out) norm(p + nn.attn_out);
    if (nn.attn_post) norm(p + nn.attn_post);
    if (nn.ffn_in) norm(p + nn.ffn_in);
    if (c.ffn != FfnKind::MLP) linear(p + "mlp.gate_proj", I, C, c.mlp_bias);
    linear(p + "mlp.up_proj", I, C, c.mlp_bias);
    linear(p + "mlp.down_proj", C, I, c.mlp_bias);
    if (nn.ffn_out) norm(p + nn.ffn_out);
    if (nn.ffn_post) norm(p + nn.ffn_post);
  }
  if (c.norm_placement != NormPlacement::Post) norm("model.norm");
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, C}, ParamInit::Normal, true});
  return out;
}

Transformer::Transformer(const ModelConfig& cfg, std::uint64_t seed) : cfg_(cfg) {
  validate_config(cfg_, "model config");
  const std::vector<ParamSpec> specs = transformer_parameter_specs(cfg_);
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const ParamSpec& s = specs[i];
    Tensor v = Tensor::empty(s.shape);
    switch (s.init) {
      case ParamInit::Normal: fill_normal(v, seed, 0.0f, static_cast<float>(cfg_.initializer_range), i); break;
      case ParamInit::Ones: v.fill(1.0f); break;
      case ParamInit::Zeros: v.fill(0.0f); break;
    }
    params_.push_back(std::make_unique<Parameter>(s.name, std::move(v), s.weight_decay));
  }
  if (cfg_.uses_rope()) rope_ = std::make_unique<RopeTable>(rope_config(cfg_), cfg_.max_position_embeddings);
  if (cfg_.position == PositionKind::Sinusoidal)
    sinusoidal_ = sinusoidal_table(cfg_.max_position_embeddings, cfg_.hidden_size);
  build_layers();
}

Parameter* Transformer::find_parameter(const std::string& name) {
  for (auto& p : params_)
    if (p->name == name) return p.get();
  return nullptr;
}

Parameter* Transformer::param(const std::string& name) {
  Parameter* p = find_parameter(name);
  MF_CHECK(p != nullptr, kOp, " internal: parameter '", name, "' does not exist");
  return p;
}

std::vector<Parameter*> Transformer::parameters() {
  std::vector<Parameter*> out;
  for (auto& p : params_) out.push_back(p.get());
  return out;
}

std::vector<const Parameter*> Transformer::parameters() const {
  std::vector<const Parameter*> out;
  for (const auto& p : params_) out.push_back(p.get());
  return out;
}

std::int64_t Transformer::num_parameters() const {
  std::int64_t n = 0;
  for (const auto& p : params_) n += p->value.numel();
  return n;
}

void Transformer::build_layers() {
  const NormNames nn = norm_names(cfg_.norm_placement);
  auto norm = [&](const std::string& base) {
    NormParams n;
    n.kind = cfg_.norm;
    n.eps = static_cast<float>(cfg_.norm_eps());
    n.weight = param(base + ".weight");
    if (cfg_.norm == NormKind::LayerNorm) n.bias = param(base + ".bias");
    return n;
  };
  auto maybe_norm = [&](const std::string& prefix, const char* name) {
    return name ? norm(prefix + name) : NormParams{};
  };
  auto maybe = [&](bool on, const std::string& name) { return on ? param(name) : nullptr; };
  layers_.clear();
  for (std::int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l);
    Layer layer;
    BlockParams& b = layer.p;
    b.attn_norms = {maybe_norm(p, nn.attn_in), maybe_norm(p, nn.attn_out), maybe_norm(p, nn.attn_post)};
    b.ffn_norms = {maybe_norm(p, nn.ffn_in), maybe_norm(p, nn.ffn_out), maybe_norm(p, nn.ffn_post)};
    SelfAttentionParams& a = b.attn;
    a.num_heads = cfg_.num_attention_heads;
    a.num_kv_heads = cfg_.num_key_value_heads;
    a.head_dim = cfg_.head_dim;
    for (auto [slot, bias, name] : {std::tuple{&a.q, &a.q_bias, "q_proj"}, std::tuple{&a.k, &a.k_bias, "k_proj"},
                                    std::tuple{&a.v, &a.v_bias, "v_proj"}, std::tuple{&a.o, &a.o_bias, "o_proj"}}) {
      *slot = param(p + "self_attn." + name + ".weight");
      *bias = maybe(cfg_.attention_bias, p + "self_attn." + name + ".bias");
    }
    a.rope = rope_.get();
    a.alibi = cfg_.position == PositionKind::ALiBi;
    a.sliding_window = cfg_.sliding_window;
    a.impl = cfg_.attention_impl;
    FfnParams& f = b.ffn;
    f.kind = cfg_.ffn;
    f.act = cfg_.hidden_act;
    f.chunk_size = cfg_.ffn_chunk_size;
    if (cfg_.ffn != FfnKind::MLP) {
      f.gate = param(p + "mlp.gate_proj.weight");
      f.gate_bias = maybe(cfg_.mlp_bias, p + "mlp.gate_proj.bias");
    }
    f.up = param(p + "mlp.up_proj.weight");
    f.up_bias = maybe(cfg_.mlp_bias, p + "mlp.up_proj.bias");
    f.down = param(p + "mlp.down_proj.weight");
    f.down_bias = maybe(cfg_.mlp_bias, p + "mlp.down_proj.bias");
    ffn_check_params(f);
    layers_.push_back(layer);
  }
  final_norm_ = cfg_.norm_placement != NormPlacement::Post ? norm("model.norm") : NormParams{};
}

void Transformer::set_attention_impl(AttentionImpl impl) {
  cfg_.attention_impl = impl;
  for (auto& l : layers_) l.p.attn.impl = impl;
}

void Transformer::set_ffn_chunk_size(std::int64_t rows) {
  MF_CHECK(rows >= 0, kOp, " ffn_chunk_size must be >= 0 but is ", rows);
  cfg_.ffn_chunk_size = rows;
  for (auto& l : layers_) l.p.ffn.chunk_size = rows;
}

const Tensor& Transformer::lm_head_weight() const {
  for (const auto& p : params_)
    if (p->name == (cfg_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight")) return p->value;
  fail(kOp, " internal: no LM head weight");
}

Parameter* Transformer::lm_head_param() {
  return param(cfg_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
}

Tensor Transformer::prepare_tokens(const Tensor& tokens, const char* what) const {
  MF_CHECK(tokens.defined() && tokens.dim() == 2, kOp, " ", what, " must be a [B, L] tensor but has shape ",
           tokens.defined() ? shape_str(tokens.shape()) : std::string("(undefined)"));
  MF_CHECK(tokens.size(0) >= 1 && tokens.size(1) >= 1, kOp, " ", what, " must not be empty (shape ",
           shape_str(tokens.shape()), ")");
  check_token_ids(tokens, cfg_.vocab_size, kOp);
  return tokens.dtype() == DType::I32 ? tokens.contiguous() : tokens.to(DType::I32);
}

Tensor Transformer::forward_hidden(const Tensor& tokens_in, ForwardState* st, KvCacheHook* cache) {
  const Tensor tokens = prepare_tokens(tokens_in, "tokens");
  const std::int64_t B = tokens.size(0), L = tokens.size(1), C = cfg_.hidden_size, N = B * L;
  const std::int64_t past = cache ? cache->past_length() : 0;
  MF_CHECK(past >= 0, kOp, " the KV cache reports a negative past length ", past);
  if (cfg_.position == PositionKind::Learned || cfg_.position == PositionKind::Sinusoidal)
    MF_CHECK(past + L <= cfg_.max_position_embeddings, kOp, " sequence positions up to ", past + L - 1,
             " exceed max_position_embeddings ", cfg_.max_position_embeddings, " of the ",
             position_kind_name(cfg_.position), " position table");

  Tensor x = Tensor::empty({N, C});
  embedding_forward(x, tokens, param("model.embed_tokens.weight")->value);
  PositionIds pos;
  pos.offset = past;
  if (cfg_.position == PositionKind::Learned)
    learned_position_forward_inplace(x.reshape({B, L, C}), *param("model.embed_positions.weight"), pos);
  else if (cfg_.position == PositionKind::Sinusoidal)
    sinusoidal_forward_inplace(x.reshape({B, L, C}), sinusoidal_, pos);

  if (st) {
    *st = ForwardState{};
    st->batch = B;
    st->seq_len = L;
    st->tokens = tokens;
    st->blocks.resize(layers_.size());
    st->inputs.push_back(x);
  }
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const AttentionCall call{B, L, static_cast<std::int64_t>(i), cache, past};
    BlockSaved local;
    const bool keep = st != nullptr && !cfg_.gradient_checkpointing;
    x = block_forward(keep ? st->blocks[i] : local, x, layers_[i].p, call);
    if (st) st->inputs.push_back(x);
  }
  if (final_norm_.weight == nullptr) {
    if (st) st->hidden = x;
    return x;
  }
  Tensor h = Tensor::empty({N, C});
  NormSaved stats;
  norm_forward(h, stats, x, final_norm_);
  if (st) {
    st->hidden = h;
    st->final_stats = stats;
  }
  return h;
}

void Transformer::backward_hidden(ForwardState& st, const Tensor& dhidden) {
  const std::int64_t B = st.batch, L = st.seq_len, C = cfg_.hidden_size, N = B * L;
  Tensor dx = dhidden;
  if (final_norm_.weight != nullptr) {
    dx = Tensor::empty({N, C});
    norm_backward(dx, dhidden, st.inputs.back(), st.final_stats, final_norm_);
  }
  for (std::size_t k = layers_.size(); k-- > 0;) {
    const AttentionCall call{B, L, static_cast<std::int64_t>(k), nullptr};
    if (cfg_.gradient_checkpointing) {
      BlockSaved recomputed;  // the same forward again: the same bits
      block_forward(recomputed, st.inputs[k], layers_[k].p, call);
      dx = block_backward(dx, st.inputs[k], recomputed, layers_[k].p, call);
    } else {
      dx = block_backward(dx, st.inputs[k], st.blocks[k], layers_[k].p, call);
      st.blocks[k].clear();
    }
    st.inputs[k + 1] = Tensor();
  }
  PositionIds pos;
  if (cfg_.position == PositionKind::Learned)
    learned_position_backward(dx.reshape({B, L, C}), *param("model.embed_positions.weight"), pos);
  embedding_backward(param("model.embed_tokens.weight")->grad, dx, st.tokens);
}

double Transformer::loss(const Tensor& tokens, const Tensor& targets_in, bool compute_grads) {
  MF_CHECK(targets_in.defined() && targets_in.shape() == tokens.shape(), kOp, " targets must have the shape of tokens ",
           shape_str(tokens.shape()), " but have ",
           targets_in.defined() ? shape_str(targets_in.shape()) : std::string("(undefined)"));
  MF_CHECK(targets_in.dtype() == DType::I32 || targets_in.dtype() == DType::I64, kOp,
           " targets must be int32 or int64 but are ", dtype_name(targets_in.dtype()));
  const Tensor targets = (targets_in.dtype() == DType::I32 ? targets_in.contiguous() : targets_in.to(DType::I32))
                             .reshape({targets_in.numel()});
  {
    const std::int32_t* t = targets.data<std::int32_t>();
    const std::int64_t L = tokens.size(1);
    for (std::int64_t i = 0; i < targets.numel(); ++i)
      MF_CHECK(t[i] < cfg_.vocab_size, kOp, " target id ", t[i], " at position [", i / L, ", ", i % L,
               "] is out of range [0, ", cfg_.vocab_size, ") (negative targets are ignored)");
  }
  if (!compute_grads) {
    const Tensor h = forward_hidden(tokens, nullptr, nullptr);
    return lm_head_cross_entropy_forward(h, lm_head_weight(), targets);
  }
  ForwardState st;
  forward_hidden(tokens, &st, nullptr);
  {
    std::set<const void*> seen;
    std::int64_t bytes = 0;
    for (const auto& b : st.blocks) bytes += block_saved_bytes(b, seen);
    for (const Tensor* t : {&st.hidden, &st.final_stats.mean, &st.final_stats.rstd})
      if (t->defined() && seen.insert(t->raw_data()).second) bytes += static_cast<std::int64_t>(t->nbytes());
    for (const auto& t : st.inputs)
      if (seen.insert(t.raw_data()).second) bytes += static_cast<std::int64_t>(t.nbytes());
    last_saved_bytes_ = bytes;
  }
  Tensor dhidden = Tensor::empty(st.hidden.shape());
  Tensor dw = lm_head_param()->grad;
  const double loss = lm_head_cross_entropy_forward_backward(st.hidden, lm_head_weight(), targets, dhidden, dw);
  backward_hidden(st, dhidden);
  return loss;
}

Tensor Transformer::logits(const Tensor& tokens) { return logits(tokens, nullptr); }

Tensor Transformer::logits(const Tensor& tokens, KvCacheHook* cache) {
  const Tensor h = forward_hidden(tokens, nullptr, cache);
  const std::int64_t B = tokens.size(0), L = tokens.size(1);
  Tensor out = Tensor::empty({B * L, cfg_.vocab_size});
  linear_forward(out, h, lm_head_weight(), Tensor());
  return out.reshape({B, L, cfg_.vocab_size});
}

void Transformer::save(const std::string& dir) const { save_checkpoint(dir, *this); }

}  // namespace mf
