// The transformer: parameters (through the mixers' registrations), forward
// (embeddings -> blocks -> final norm), the heads (LM head through the fused
// chunked cross-entropy, or a pooled classifier), generation states, and the
// backward through all of it, with optional per-block gradient checkpointing.
#include "model/transformer.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "core/alloc.h"
#include "model/checkpoint.h"
#include "nn/embedding.h"
#include "nn/linear.h"
#include "nn/loss/lm_head_cross_entropy.h"
#include "nn/loss/softmax_cross_entropy.h"
#include "nn/block/reversible_block.h"
#include "nn/mixer/mixer_registry.h"
#include "nn/position/learned_position.h"
#include "nn/position/sinusoidal.h"

namespace mf {

namespace {

constexpr const char* kOp = "[model]";

// Checkpoint names that differ by model_type: Hugging Face's Mamba calls its
// parts backbone.* and its one block norm "norm".
struct ModelNames {
  std::string embed, layers, final_norm;
  bool mamba = false;
  std::string layer_prefix(std::int64_t i) const { return layers + std::to_string(i) + "."; }
};
ModelNames model_names(const ModelConfig& c) {
  if (c.model_type == "mamba") return {"backbone.embeddings.weight", "backbone.layers.", "backbone.norm_f", true};
  return {"model.embed_tokens.weight", "model.layers.", "model.norm", false};
}

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

// Training mode on the channel mixers for one loss with gradients (see
// ChannelMixer::set_training), off again however the scope ends.
class TrainingScope {
 public:
  TrainingScope(std::vector<ChannelMixer*> mixers, bool on) : mixers_(std::move(mixers)), on_(on) {
    for (ChannelMixer* m : mixers_) m->set_training(on_);
  }
  ~TrainingScope() {
    for (ChannelMixer* m : mixers_) m->set_training(false);
  }
  TrainingScope(const TrainingScope&) = delete;
  TrainingScope& operator=(const TrainingScope&) = delete;

 private:
  std::vector<ChannelMixer*> mixers_;
  bool on_;
};

}  // namespace

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
  r.mscale = s.mscale;
  r.mscale_all_dim = s.mscale_all_dim;
  r.validate();
  return r;
}

MixerContext mixer_context(const ModelConfig& c, std::int64_t layer, const std::string& mixer, RopeTable* rope) {
  MixerContext ctx;
  ctx.layer = layer;
  ctx.hidden_size = c.hidden_size;
  ctx.num_heads = c.num_attention_heads;
  ctx.num_kv_heads = c.num_key_value_heads;
  ctx.head_dim = c.head_dim;
  ctx.intermediate_size = c.intermediate_size;
  ctx.max_position_embeddings = c.max_position_embeddings;
  ctx.sliding_window = c.sliding_window;
  ctx.attention_bias = c.attention_bias;
  ctx.mlp_bias = c.mlp_bias;
  ctx.hidden_act = c.hidden_act;
  ctx.ffn_chunk_size = c.ffn_chunk_size;
  ctx.attention_impl = c.attention_impl;
  ctx.rope = rope;
  ctx.alibi = c.position == PositionKind::ALiBi;
  ctx.initializer_range = c.initializer_range;
  ctx.rms_norm_eps = c.rms_norm_eps;
  ctx.options = c.options_of(mixer);
  return ctx;
}

Transformer::Transformer(const ModelConfig& cfg, std::uint64_t seed)
    : cfg_(cfg), params_(seed, cfg.initializer_range) {
  validate_config(cfg_, "model config");
  if (cfg_.uses_rope()) rope_ = std::make_unique<RopeTable>(rope_config(cfg_), cfg_.max_position_embeddings);
  if (cfg_.position == PositionKind::Sinusoidal)
    sinusoidal_ = sinusoidal_table(cfg_.max_position_embeddings, cfg_.hidden_size);
  build();
}

// Creates every parameter in checkpoint order (the order fixes each one's
// Philox stream) and the layers' mixers.
void Transformer::build() {
  const std::int64_t C = cfg_.hidden_size;
  auto norm = [&](const std::string& base, bool global) {
    NormParams n;
    n.kind = cfg_.norm;
    n.eps = static_cast<float>(cfg_.norm_eps());
    n.weight = global ? params_.add_global(base + ".weight", {C}, ParamInit::Ones, false)
                      : params_.add(base + ".weight", {C}, ParamInit::Ones, false);
    if (cfg_.norm == NormKind::LayerNorm)
      n.bias = global ? params_.add_global(base + ".bias", {C}, ParamInit::Zeros, false)
                      : params_.add(base + ".bias", {C}, ParamInit::Zeros, false);
    return n;
  };
  auto maybe_norm = [&](const char* name) { return name ? norm(name, false) : NormParams{}; };

  const ModelNames names = model_names(cfg_);
  embed_ = params_.add_global(names.embed, {cfg_.vocab_size, C}, ParamInit::Normal, false);
  if (cfg_.position == PositionKind::Learned)
    params_.add_global("model.embed_positions.weight", {cfg_.max_position_embeddings, C}, ParamInit::Normal, false);

  NormNames nn = norm_names(cfg_.norm_placement);
  if (names.mamba) nn.attn_in = "norm";
  const std::string ffn_name = ffn_kind_name(cfg_.ffn);
  layers_.clear();
  aux_layers_ = 0;
  for (std::int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    params_.set_prefix(names.layer_prefix(l));
    Layer layer;
    const std::string mixer = cfg_.layer_mixer(l);
    layer.p.token_norms.in = maybe_norm(nn.attn_in);
    layer.token =
        token_mixer_entry(mixer, str_cat(kOp, " layer ", l, ": ")).make(mixer_context(cfg_, l, mixer, rope_.get()), params_);
    layer.p.token_norms.out = maybe_norm(nn.attn_out);
    layer.p.token_norms.post = maybe_norm(nn.attn_post);
    if (cfg_.ffn != FfnKind::None) {  // else a block of the token sublayer alone
      layer.p.channel_norms.in = maybe_norm(nn.ffn_in);
      layer.channel = channel_mixer_entry(ffn_name, str_cat(kOp, " layer ", l, ": "))
                          .make(mixer_context(cfg_, l, ffn_name, rope_.get()), params_);
      layer.p.channel_norms.out = maybe_norm(nn.ffn_out);
      layer.p.channel_norms.post = maybe_norm(nn.ffn_post);
    }
    layer.p.token = layer.token.get();
    layer.p.channel = layer.channel.get();
    if (!cfg_.mixture_of_depths.is_null()) {
      const ModOptions mod = mod_options_from_json(cfg_.mixture_of_depths);
      if (mod_routes_layer(mod, l)) {
        layer.mod = std::make_unique<ModParams>(mod_make_params(mod, C, params_));
        aux_layers_ += mod.predictor ? 1 : 0;
      }
    }
    if (cfg_.reversible) check_reversible(layer.p, static_cast<std::int64_t>(layers_.size()));
    layers_.push_back(std::move(layer));
  }
  params_.set_prefix("");
  final_norm_ = cfg_.norm_placement != NormPlacement::Post ? norm(names.final_norm, true) : NormParams{};
  if (!cfg_.is_decoder) {
    params_.add_global("classifier.weight", {cfg_.num_labels, C}, ParamInit::Normal, true);
    params_.add_global("classifier.bias", {cfg_.num_labels}, ParamInit::Zeros, false);
  } else if (!cfg_.tie_word_embeddings) {
    params_.add_global("lm_head.weight", {cfg_.vocab_size, C}, ParamInit::Normal, true);
  }
}

Parameter* Transformer::find_parameter(const std::string& name) { return params_.find(name); }

Parameter* Transformer::param(const std::string& name) {
  Parameter* p = params_.find(name);
  MF_CHECK(p != nullptr, kOp, " internal: parameter '", name, "' does not exist");
  return p;
}

std::vector<Parameter*> Transformer::parameters() {
  std::vector<Parameter*> out;
  for (const auto& p : params_.all()) out.push_back(p.get());
  return out;
}

std::vector<const Parameter*> Transformer::parameters() const {
  std::vector<const Parameter*> out;
  for (const auto& p : params_.all()) out.push_back(p.get());
  return out;
}

std::int64_t Transformer::num_parameters() const {
  std::int64_t n = 0;
  for (const auto& p : params_.all()) n += p->value.numel();
  return n;
}

void Transformer::set_attention_impl(AttentionImpl impl) {
  cfg_.attention_impl = impl;
  for (auto& l : layers_) l.token->set_attention_impl(impl);
}

void Transformer::set_gradient_checkpointing(bool on) {
  MF_CHECK(!(on && cfg_.reversible), kOp, " gradient checkpointing: this model's blocks are reversible, which already "
           "recompute every block in the backward and keep no block inputs");
  cfg_.gradient_checkpointing = on;
}

void Transformer::begin_training_step(std::int64_t step) {
  for (auto& l : layers_) {
    l.token->begin_training_step(step);
    if (l.channel) l.channel->begin_training_step(step);
  }
}

std::vector<ChannelMixer*> Transformer::channel_mixers() {
  std::vector<ChannelMixer*> out;
  for (auto& l : layers_)
    if (l.channel) out.push_back(l.channel.get());
  return out;
}

bool Transformer::has_aux_loss() const { return aux_layers_ > 0 || !aux_metrics().empty(); }

double Transformer::aux_loss() const {
  double sum = last_aux_loss_;  // Mixture-of-Depths predictors
  for (const auto& l : layers_) sum += l.token->aux_loss() + (l.channel ? l.channel->aux_loss() : 0.0);
  return sum;
}

nlohmann::json Transformer::aux_metrics() const {
  nlohmann::json out = nlohmann::json::object();
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const nlohmann::json t = layers_[i].token->aux_metrics();
    if (!t.empty()) out[str_cat("layers.", i, ".", layers_[i].token->name())] = t;
    const nlohmann::json c = layers_[i].channel ? layers_[i].channel->aux_metrics() : nlohmann::json::object();
    if (!c.empty()) out[str_cat("layers.", i, ".", layers_[i].channel->name())] = c;
  }
  if (aux_layers_ > 0)
    out["mixture_of_depths"] = {{"predictor_loss", last_aux_loss_}, {"predictor_accuracy", last_predictor_accuracy_}};
  return out;
}

void Transformer::set_ffn_chunk_size(std::int64_t rows) {
  MF_CHECK(rows >= 0, kOp, " ffn_chunk_size must be >= 0 but is ", rows);
  cfg_.ffn_chunk_size = rows;
  for (auto& l : layers_)
    if (l.channel) l.channel->set_chunk_size(rows);
}

const Tensor& Transformer::lm_head_weight() const {
  MF_CHECK(cfg_.is_decoder, kOp, " an encoder classifier (is_decoder false) has no LM head");
  return cfg_.tie_word_embeddings ? embed_->value : params_.find("lm_head.weight")->value;
}

Parameter* Transformer::lm_head_param() {
  return cfg_.tie_word_embeddings ? embed_ : param("lm_head.weight");
}

Tensor Transformer::prepare_tokens(const Tensor& tokens, const char* what) const {
  MF_CHECK(tokens.defined() && tokens.dim() == 2, kOp, " ", what, " must be a [B, L] tensor but has shape ",
           tokens.defined() ? shape_str(tokens.shape()) : std::string("(undefined)"));
  MF_CHECK(tokens.size(0) >= 1 && tokens.size(1) >= 1, kOp, " ", what, " must not be empty (shape ",
           shape_str(tokens.shape()), ")");
  check_token_ids(tokens, cfg_.vocab_size, kOp);
  return tokens.dtype() == DType::I32 ? tokens.contiguous() : tokens.to(DType::I32);
}

Tensor Transformer::prepare_mask(const Tensor& mask_in, const Tensor& tokens) const {
  if (!mask_in.defined()) return Tensor();
  MF_CHECK(mask_in.shape() == tokens.shape(), kOp, " the padding mask must have the shape of tokens ",
           shape_str(tokens.shape()), " but has ", shape_str(mask_in.shape()));
  MF_CHECK(mask_in.dtype() == DType::I32 || mask_in.dtype() == DType::I64, kOp,
           " the padding mask must be int32 or int64 but is ", dtype_name(mask_in.dtype()));
  Tensor mask = mask_in.dtype() == DType::I32 ? mask_in.contiguous() : mask_in.to(DType::I32);
  const std::int64_t B = mask.size(0), L = mask.size(1);
  const std::int32_t* m = mask.data<std::int32_t>();
  bool padded = false;
  for (std::int64_t b = 0; b < B; ++b) {
    std::int64_t real = 0;
    for (std::int64_t i = 0; i < L; ++i) real += m[b * L + i] != 0;
    MF_CHECK(real > 0, kOp, " sequence ", b, " of the batch is all padding (its mask row has no nonzero entry)");
    padded = padded || real < L;
  }
  return padded ? mask : Tensor();  // nothing padded: the mixers take their unmasked path
}

MixerCall Transformer::mixer_call(std::int64_t batch, std::int64_t seq_len, const Tensor& mask) const {
  MixerCall call;
  call.batch = batch;
  call.seq_len = seq_len;
  call.causal = cfg_.is_decoder;
  call.key_padding_mask = mask;
  return call;
}

std::unique_ptr<GenerationState> Transformer::new_generation_state(const GenerationOptions& opt) const {
  MF_CHECK(cfg_.is_decoder, kOp, " an encoder classifier (is_decoder false) does not generate");
  MF_CHECK(opt.batch >= 1, kOp, " generation batch must be >= 1, got ", opt.batch);
  MF_CHECK(opt.capacity >= 0, kOp, " capacity must be >= 0 (0: max_position_embeddings), got ", opt.capacity);
  const std::int64_t capacity = opt.capacity > 0 ? opt.capacity : cfg_.max_position_embeddings;
  const bool table = cfg_.position == PositionKind::Learned || cfg_.position == PositionKind::Sinusoidal;
  MF_CHECK(!table || capacity <= cfg_.max_position_embeddings, kOp, " capacity ", capacity, " exceeds the ",
           position_kind_name(cfg_.position), " position table of max_position_embeddings ",
           cfg_.max_position_embeddings, " positions");
  GenerationOptions o = opt;
  o.capacity = capacity;
  std::vector<std::unique_ptr<MixerState>> states;
  for (const auto& l : layers_) states.push_back(l.mod ? mod_new_state(l.p, *l.mod, o) : l.token->new_state(o));
  return std::make_unique<GenerationState>(std::move(states), opt.batch, capacity);
}

std::unique_ptr<SegmentMemory> Transformer::new_segment_memory(std::int64_t batch) {
  MF_CHECK(batch >= 1, kOp, " segment memory batch must be >= 1, got ", batch);
  std::vector<std::unique_ptr<MixerState>> layers;
  bool any = false;
  for (const auto& l : layers_) {
    layers.push_back(l.token->new_memory(batch));
    any = any || layers.back() != nullptr;
  }
  if (!any) return nullptr;
  return std::make_unique<SegmentMemory>(std::move(layers), batch);
}

Tensor Transformer::layer_forward(std::size_t i, const Tensor& x, BlockSaved& saved, ModSaved& routed,
                                  const MixerCall& call, bool keep, bool training) {
  const Layer& layer = layers_[i];
  if (!layer.mod) return block_forward(saved, x, layer.p, call, keep);
  Tensor out = mod_forward(routed, x, layer.p, *layer.mod, call, training);
  last_aux_loss_ += routed.aux_loss;
  last_predictor_accuracy_ += routed.predictor_accuracy;
  return out;
}

Tensor Transformer::forward_hidden(const Tensor& tokens, const Tensor& mask, ForwardState* st,
                                   GenerationState* state, SegmentMemory* memory) {
  const std::int64_t B = tokens.size(0), L = tokens.size(1), C = cfg_.hidden_size, N = B * L;
  const std::int64_t past = state ? state->past_length() : 0;
  if (state) {
    MF_CHECK(B == state->batch(), kOp, " the generation state was made for batch ", state->batch(),
             " but the tokens have batch ", B);
    state->check_room(L);
  }
  if (memory) {
    MF_CHECK(B == memory->batch(), kOp, " the segment memory was made for batch ", memory->batch(),
             " but the tokens have batch ", B);
    MF_CHECK(state == nullptr, kOp, " a call takes a generation state or a segment memory, not both");
    MF_CHECK(!cfg_.reversible && !(st && cfg_.gradient_checkpointing), kOp,
             " a segment memory cannot be used with reversible blocks or gradient checkpointing (their backward "
             "re-runs forwards, which would read a memory that has moved on)");
  }
  if (cfg_.position == PositionKind::Learned || cfg_.position == PositionKind::Sinusoidal)
    MF_CHECK(past + L <= cfg_.max_position_embeddings, kOp, " sequence positions up to ", past + L - 1,
             " exceed max_position_embeddings ", cfg_.max_position_embeddings, " of the ",
             position_kind_name(cfg_.position), " position table");

  Tensor x = Tensor::empty({N, C});
  embedding_forward(x, tokens, embed_->value);
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
    st->mask = mask;
    st->blocks.resize(layers_.size());
    st->routed.resize(layers_.size());
    st->inputs.push_back(x);
  }
  MixerCall call = mixer_call(B, L, mask);
  call.past = past;
  if (cfg_.reversible) {
    // Two streams from the embeddings; training keeps only the last block's outputs.
    Tensor x1 = x, x2 = x;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      call.state = state ? state->layer(static_cast<std::int64_t>(i)) : nullptr;
      Tensor y1, y2;
      reversible_block_forward(y1, y2, x1, x2, layers_[i].p, call);
      x1 = std::move(y1);
      x2 = std::move(y2);
    }
    x = Tensor::empty({N, C});
    const float *a = x1.data<float>(), *b = x2.data<float>();
    float* m = x.data<float>();
    for (std::int64_t k = 0; k < N * C; ++k) m[k] = 0.5f * (a[k] + b[k]);
    if (st) {
      st->inputs = {x};  // the final norm's input
      st->reversible_out = {x1, x2};
    }
  }
  if (st) last_aux_loss_ = last_predictor_accuracy_ = 0;
  for (std::size_t i = 0; i < layers_.size() && !cfg_.reversible; ++i) {
    call.state = state ? state->layer(static_cast<std::int64_t>(i)) : nullptr;
    call.memory = memory ? memory->layer(static_cast<std::int64_t>(i)) : nullptr;
    BlockSaved local;
    ModSaved local_routed;
    const bool keep = st != nullptr && !cfg_.gradient_checkpointing;
    x = layer_forward(i, x, keep ? st->blocks[i] : local, keep ? st->routed[i] : local_routed, call, keep,
                      st != nullptr);
    if (st) st->inputs.push_back(x);
  }
  if (st && aux_layers_ > 0) last_predictor_accuracy_ /= static_cast<double>(aux_layers_);
  if (state) state->advance(L);
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
  const MixerCall call = mixer_call(B, L, st.mask);
  if (cfg_.reversible) {
    // d(mean)/d(each stream) = 1/2; then down the blocks, reconstructing.
    Tensor dy1 = Tensor::empty({N, C});
    const float* g = dx.data<float>();
    float* h = dy1.data<float>();
    for (std::int64_t k = 0; k < N * C; ++k) h[k] = 0.5f * g[k];
    Tensor dy2 = dy1, y1 = st.reversible_out[0], y2 = st.reversible_out[1];
    st.reversible_out.clear();
    st.inputs.clear();
    for (std::size_t k = layers_.size(); k-- > 0;) {
      Tensor x1, x2, dx1, dx2;
      reversible_block_backward(x1, x2, dx1, dx2, y1, y2, dy1, dy2, layers_[k].p, call);
      y1 = std::move(x1);
      y2 = std::move(x2);
      dy1 = std::move(dx1);
      dy2 = std::move(dx2);
    }
    dx = Tensor::empty({N, C});  // both streams started as the embeddings
    const float *a = dy1.data<float>(), *b = dy2.data<float>();
    float* d = dx.data<float>();
    for (std::int64_t k = 0; k < N * C; ++k) d[k] = a[k] + b[k];
  }
  for (std::size_t k = layers_.size(); k-- > 0 && !cfg_.reversible;) {
    const Layer& layer = layers_[k];
    if (cfg_.gradient_checkpointing) {
      BlockSaved recomputed;  // the same forward again: the same bits
      ModSaved recomputed_routed;
      if (layer.mod) {
        mod_forward(recomputed_routed, st.inputs[k], layer.p, *layer.mod, call, true);
        dx = mod_backward(dx, st.inputs[k], recomputed_routed, layer.p, *layer.mod, call);
      } else {
        block_forward(recomputed, st.inputs[k], layer.p, call, true);
        dx = block_backward(dx, st.inputs[k], recomputed, layer.p, call);
      }
    } else if (layer.mod) {
      dx = mod_backward(dx, st.inputs[k], st.routed[k], layer.p, *layer.mod, call);
      st.routed[k].clear();
    } else {
      dx = block_backward(dx, st.inputs[k], st.blocks[k], layer.p, call);
      st.blocks[k].clear();
    }
    st.inputs[k + 1] = Tensor();
  }
  PositionIds pos;
  if (cfg_.position == PositionKind::Learned)
    learned_position_backward(dx.reshape({B, L, C}), *param("model.embed_positions.weight"), pos);
  embedding_backward(embed_->grad, dx, st.tokens);
}

void Transformer::record_saved_bytes(const ForwardState& st) {
  std::set<const void*> seen;
  std::int64_t bytes = 0;
  for (const auto& b : st.blocks) bytes += block_saved_bytes(b, seen);
  for (const auto& r : st.routed) bytes += mod_saved_bytes(r, seen);
  for (const Tensor* t : {&st.hidden, &st.final_stats.mean, &st.final_stats.rstd})
    if (t->defined() && seen.insert(t->raw_data()).second) bytes += static_cast<std::int64_t>(t->nbytes());
  for (const auto& t : st.inputs)
    if (seen.insert(t.raw_data()).second) bytes += static_cast<std::int64_t>(t.nbytes());
  for (const auto& t : st.reversible_out)
    if (seen.insert(t.raw_data()).second) bytes += static_cast<std::int64_t>(t.nbytes());
  last_saved_bytes_ = bytes;
}

double Transformer::loss(const Tensor& tokens, const Tensor& targets, bool compute_grads) {
  return loss(tokens, targets, compute_grads, nullptr);
}

double Transformer::loss(const Tensor& tokens, const Tensor& targets_in, bool compute_grads, SegmentMemory* memory) {
  MF_CHECK(cfg_.is_decoder, kOp,
           " loss() is the language-model loss of a decoder; this is an encoder classifier (use classify_loss)");
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
    const Tensor h = forward_hidden(prepare_tokens(tokens, "tokens"), Tensor(), nullptr, nullptr, memory);
    return lm_head_cross_entropy_forward(h, lm_head_weight(), targets);
  }
  ForwardState st;
  const TrainingScope training(channel_mixers(), true);
  forward_hidden(prepare_tokens(tokens, "tokens"), Tensor(), &st, nullptr, memory);
  record_saved_bytes(st);
  Tensor dhidden = Tensor::empty(st.hidden.shape());
  Tensor dw = lm_head_param()->grad;
  const double loss = lm_head_cross_entropy_forward_backward(st.hidden, lm_head_weight(), targets, dhidden, dw);
  backward_hidden(st, dhidden);
  return loss;
}

Tensor Transformer::logits(const Tensor& tokens) { return logits(tokens, nullptr); }

Tensor Transformer::segment_logits(const Tensor& tokens, SegmentMemory* memory) {
  return logits_of(tokens, nullptr, memory);
}

Tensor Transformer::logits(const Tensor& tokens, GenerationState* state) { return logits_of(tokens, state, nullptr); }

Tensor Transformer::logits_of(const Tensor& tokens, GenerationState* state, SegmentMemory* memory) {
  MF_CHECK(cfg_.is_decoder, kOp, " an encoder classifier (is_decoder false) has no token logits (use class_logits)");
  const Tensor h = forward_hidden(prepare_tokens(tokens, "tokens"), Tensor(), nullptr, state, memory);
  const std::int64_t B = tokens.size(0), L = tokens.size(1);
  Tensor out = Tensor::empty({B * L, cfg_.vocab_size});
  linear_forward(out, h, lm_head_weight(), Tensor());
  return out.reshape({B, L, cfg_.vocab_size});
}

Tensor Transformer::logits_rows(std::span<const std::int32_t> tokens, std::span<GenerationState* const> states) {
  MF_CHECK(cfg_.is_decoder, kOp, " an encoder classifier (is_decoder false) has no token logits (use class_logits)");
  const auto n = static_cast<std::int64_t>(tokens.size());
  const std::int64_t C = cfg_.hidden_size, V = cfg_.vocab_size;
  MF_CHECK(n >= 1, kOp, " batched decode needs at least one row");
  MF_CHECK(states.size() == tokens.size(), kOp, " batched decode: ", n, " tokens but ", states.size(), " states");
  std::set<const GenerationState*> distinct;
  for (std::int64_t i = 0; i < n; ++i) {
    const GenerationState* st = states[static_cast<std::size_t>(i)];
    MF_CHECK(st != nullptr, kOp, " batched decode: row ", i, " has no generation state");
    MF_CHECK(st->batch() == 1, kOp, " batched decode: the state of row ", i, " was made for batch ", st->batch(),
             " (each row needs a batch-1 state of its own)");
    MF_CHECK(distinct.insert(st).second, kOp, " batched decode: row ", i, " shares its state with an earlier row");
    st->check_room(1, "a batched decode step");
    MF_CHECK(tokens[static_cast<std::size_t>(i)] >= 0 && tokens[static_cast<std::size_t>(i)] < V, kOp, " token id ",
             tokens[static_cast<std::size_t>(i)], " of row ", i, " is out of range [0, ", V, ")");
  }
  Tensor out = Tensor::empty({n, V});
  const bool routed = std::any_of(layers_.begin(), layers_.end(), [](const Layer& l) { return l.mod != nullptr; });
  if (cfg_.reversible || routed) {  // two streams per block, or Mixture-of-Depths routing: rows one after another
    for (std::int64_t i = 0; i < n; ++i) {
      Tensor tok = Tensor::empty({1, 1}, DType::I32);
      *tok.data<std::int32_t>() = tokens[static_cast<std::size_t>(i)];
      const Tensor row = logits(tok, states[static_cast<std::size_t>(i)]).contiguous();
      std::copy(row.data<float>(), row.data<float>() + V, out.data<float>() + i * V);
    }
    return out;
  }
  std::vector<std::int64_t> past(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) past[static_cast<std::size_t>(i)] = states[static_cast<std::size_t>(i)]->past_length();
  if (cfg_.position == PositionKind::Learned || cfg_.position == PositionKind::Sinusoidal)
    for (std::int64_t i = 0; i < n; ++i)
      MF_CHECK(past[static_cast<std::size_t>(i)] < cfg_.max_position_embeddings, kOp, " row ", i, " position ",
               past[static_cast<std::size_t>(i)], " exceeds max_position_embeddings ", cfg_.max_position_embeddings,
               " of the ", position_kind_name(cfg_.position), " position table");

  Tensor ids = Tensor::empty({n, 1}, DType::I32);
  std::copy(tokens.begin(), tokens.end(), ids.data<std::int32_t>());
  Tensor x = Tensor::empty({n, C});
  embedding_forward(x, ids, embed_->value);
  for (std::int64_t i = 0; i < n; ++i) {  // absolute positions: each row at its own
    PositionIds pos;
    pos.offset = past[static_cast<std::size_t>(i)];
    const Tensor row = x.slice(0, i, i + 1).reshape({1, 1, C});
    if (cfg_.position == PositionKind::Learned)
      learned_position_forward_inplace(row, *param("model.embed_positions.weight"), pos);
    else if (cfg_.position == PositionKind::Sinusoidal)
      sinusoidal_forward_inplace(row, sinusoidal_, pos);
  }
  MixerCall call = mixer_call(n, 1, Tensor());
  std::vector<MixerState*> layer_states(static_cast<std::size_t>(n));
  call.row_states = layer_states.data();
  call.row_past = past.data();
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    for (std::int64_t i = 0; i < n; ++i)
      layer_states[static_cast<std::size_t>(i)] = states[static_cast<std::size_t>(i)]->layer(static_cast<std::int64_t>(l));
    BlockSaved local;
    x = block_forward(local, x, layers_[l].p, call, false);
  }
  for (GenerationState* st : states) st->advance(1);
  Tensor h = x;
  if (final_norm_.weight != nullptr) {
    h = Tensor::empty({n, C});
    NormSaved stats;
    norm_forward(h, stats, x, final_norm_);
  }
  linear_forward(out, h, lm_head_weight(), Tensor());
  return out;
}

// pooled [B, C]: the first token's hidden state, or the mean over the
// sequence's real tokens (all L when mask is undefined).
Tensor Transformer::pool(const Tensor& hidden, const Tensor& mask, std::int64_t B, std::int64_t L) const {
  const std::int64_t C = cfg_.hidden_size;
  Tensor pooled = Tensor::zeros({B, C});
  const float* h = hidden.data<float>();
  float* out = pooled.data<float>();
  const std::int32_t* m = mask.defined() ? mask.data<std::int32_t>() : nullptr;
  for (std::int64_t b = 0; b < B; ++b) {
    float* o = out + b * C;
    if (cfg_.classifier_pooling == "first") {
      std::memcpy(o, h + b * L * C, static_cast<std::size_t>(C) * sizeof(float));
      continue;
    }
    std::int64_t count = 0;
    for (std::int64_t i = 0; i < L; ++i) {
      if (m && m[b * L + i] == 0) continue;
      ++count;
      const float* row = h + (b * L + i) * C;
      for (std::int64_t c = 0; c < C; ++c) o[c] += row[c];
    }
    const float inv = 1.0f / static_cast<float>(count);
    for (std::int64_t c = 0; c < C; ++c) o[c] *= inv;
  }
  return pooled;
}

Tensor Transformer::class_logits(const Tensor& tokens_in, const Tensor& mask_in) {
  MF_CHECK(!cfg_.is_decoder, kOp, " class_logits() needs an encoder classifier (is_decoder false, num_labels)");
  const Tensor tokens = prepare_tokens(tokens_in, "tokens");
  const Tensor mask = prepare_mask(mask_in, tokens);
  const std::int64_t B = tokens.size(0), L = tokens.size(1);
  const Tensor h = forward_hidden(tokens, mask, nullptr, nullptr);
  Tensor out = Tensor::empty({B, cfg_.num_labels});
  linear_forward(out, pool(h, mask, B, L), param("classifier.weight")->value, param("classifier.bias")->value);
  return out;
}

double Transformer::classify_loss(const Tensor& tokens_in, const Tensor& mask_in, const Tensor& labels_in,
                                  bool compute_grads) {
  MF_CHECK(!cfg_.is_decoder, kOp, " classify_loss() needs an encoder classifier (is_decoder false, num_labels)");
  const Tensor tokens = prepare_tokens(tokens_in, "tokens");
  const std::int64_t B = tokens.size(0), L = tokens.size(1), C = cfg_.hidden_size, K = cfg_.num_labels;
  MF_CHECK(labels_in.defined() && labels_in.dim() == 1 && labels_in.size(0) == B, kOp, " labels must be [", B,
           "] but have shape ", labels_in.defined() ? shape_str(labels_in.shape()) : std::string("(undefined)"));
  MF_CHECK(labels_in.dtype() == DType::I32 || labels_in.dtype() == DType::I64, kOp,
           " labels must be int32 or int64 but are ", dtype_name(labels_in.dtype()));
  const Tensor labels = labels_in.dtype() == DType::I32 ? labels_in.contiguous() : labels_in.to(DType::I32);
  const std::int32_t* y = labels.data<std::int32_t>();
  for (std::int64_t b = 0; b < B; ++b)
    MF_CHECK(y[b] >= 0 && y[b] < K, kOp, " label ", y[b], " of sequence ", b, " is out of range [0, ", K, ")");
  const Tensor mask = prepare_mask(mask_in, tokens);

  ForwardState st;
  const TrainingScope training(channel_mixers(), compute_grads);
  const Tensor h = forward_hidden(tokens, mask, compute_grads ? &st : nullptr, nullptr);
  if (compute_grads) record_saved_bytes(st);
  const Tensor pooled = pool(h, mask, B, L);
  Parameter* w = param("classifier.weight");
  Parameter* bias = param("classifier.bias");
  Tensor logits = Tensor::empty({B, K});
  linear_forward(logits, pooled, w->value, bias->value);
  Tensor dlogits = Tensor::empty({B, K});
  const double loss = softmax_cross_entropy(logits, labels, compute_grads ? &dlogits : nullptr);
  if (!compute_grads) return loss;
  Tensor dpooled = Tensor::empty({B, C});
  linear_backward(dpooled, w->grad, bias->grad, dlogits, pooled, w->value);
  // Pooling backward: the first row, or every real row / count.
  Tensor dhidden = Tensor::zeros({B * L, C});
  const std::int32_t* m = mask.defined() ? mask.data<std::int32_t>() : nullptr;
  for (std::int64_t b = 0; b < B; ++b) {
    const float* g = dpooled.data<float>() + b * C;
    if (cfg_.classifier_pooling == "first") {
      std::memcpy(dhidden.data<float>() + b * L * C, g, static_cast<std::size_t>(C) * sizeof(float));
      continue;
    }
    std::int64_t count = 0;
    for (std::int64_t i = 0; i < L; ++i) count += !m || m[b * L + i] != 0;
    const float inv = 1.0f / static_cast<float>(count);
    for (std::int64_t i = 0; i < L; ++i) {
      if (m && m[b * L + i] == 0) continue;
      float* row = dhidden.data<float>() + (b * L + i) * C;
      for (std::int64_t c = 0; c < C; ++c) row[c] = g[c] * inv;
    }
  }
  backward_hidden(st, dhidden);
  return loss;
}

void Transformer::save(const std::string& dir) const { save_checkpoint(dir, *this); }

}  // namespace mf
