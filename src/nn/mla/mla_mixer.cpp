// Adapter from Multi-head Latent Attention (mla.h) to the token-mixer
// interface. Options carry Hugging Face's DeepseekV2Config names; 0 derives a
// size from the model's head_dim D, rounded up to a multiple of 8 (the
// kernels' unit): qk_nope_head_dim = D, qk_rope_head_dim = D / 2, v_head_dim =
// D, kv_lora_rank = 4 D (DeepSeek-V2's proportions 128 / 64 / 128 / 512);
// q_lora_rank 0 is HF's null (a plain q_proj). Heads: the
// model's num_attention_heads (num_key_value_heads is not used: every head
// has its own k_nope and v from the shared latent). Checkpoint names are HF's:
// self_attn.{q_a_proj, q_a_layernorm, q_b_proj | q_proj, kv_a_proj_with_mqa,
// kv_a_layernorm, kv_b_proj, o_proj}.weight (and .bias of q_a_proj,
// kv_a_proj_with_mqa and o_proj with attention_bias, as HF). The decoupled RoPE
// is part of the mechanism: the mixer rotates its rope parts with a table of
// rotary_dim qk_rope_head_dim built from the model's rope config (theta,
// scaling, YaRN mscale / mscale_all_dim), or theta 10000 without scaling when
// the model's position is not RoPE.
#include "nn/mla/mla_mixer.h"

#include <algorithm>
#include <memory>

#include "core/error.h"
#include "nn/mla/mla.h"

namespace mf {

namespace {

constexpr const char* kLimits = "";

const MixerCapabilities kCaps{.causal = true, .bidirectional = true, .generation = true, .variable_length = true,
                              .padding = true};

struct MlaSavedState : MixerSaved {
  MlaSaved s;
  void tensors(std::vector<const Tensor*>& out) const override {
    for (const Tensor* t : s.tensors()) out.push_back(t);
  }
};

struct MlaState : MixerState {
  MlaCache cache;
  std::int64_t bytes() const override { return static_cast<std::int64_t>(cache.rows.nbytes()); }
  void reset() override { cache.past = 0; }
};

std::int64_t derived(const nlohmann::json& o, const char* name, std::int64_t fallback) {
  const std::int64_t v = o.at(name).get<std::int64_t>();
  return v > 0 ? v : std::max<std::int64_t>(8, (fallback + 7) / 8 * 8);
}

class MlaMixer final : public TokenMixer {
 public:
  MlaMixer(const MixerContext& ctx, ParamStore& store) : TokenMixer("mla", kCaps, kLimits) {
    const nlohmann::json& o = ctx.options;
    const std::int64_t c = ctx.hidden_size, d = ctx.head_dim, h = ctx.num_heads;
    p_.num_heads = h;
    p_.q_lora_rank = o.at("q_lora_rank").get<std::int64_t>();
    p_.qk_nope_head_dim = derived(o, "qk_nope_head_dim", d);
    p_.qk_rope_head_dim = derived(o, "qk_rope_head_dim", d / 2);
    p_.v_head_dim = derived(o, "v_head_dim", d);
    p_.kv_lora_rank = derived(o, "kv_lora_rank", 4 * d);
    const std::string decode = o.at("decode");
    form_ = decode == "absorbed" ? MlaDecodeForm::Absorbed : decode == "naive" ? MlaDecodeForm::Naive
                                                                                : MlaDecodeForm::Auto;
    MF_CHECK(h >= 1, "[mla] num_attention_heads must be >= 1, got ", h);
    MF_CHECK(p_.qk_rope_head_dim >= 2 && p_.qk_rope_head_dim % 2 == 0, "[mla] option 'qk_rope_head_dim' must be even "
             "and >= 2 (RoPE turns pairs), got ", p_.qk_rope_head_dim);
    const std::int64_t dq = p_.q_head_dim();
    MF_CHECK(dq % 8 == 0 && dq <= 256, "[mla] qk_nope_head_dim + qk_rope_head_dim = ", p_.qk_nope_head_dim, " + ",
             p_.qk_rope_head_dim, " = ", dq, " must be a multiple of 8 and at most 256 (the attention kernels' query/key "
             "head dim)");
    MF_CHECK(p_.v_head_dim % 8 == 0 && p_.v_head_dim <= 256, "[mla] option 'v_head_dim' must be a multiple of 8 and "
             "at most 256 (the attention kernels' value head dim), got ", p_.v_head_dim);
    p_.rms_norm_eps = static_cast<float>(ctx.rms_norm_eps);
    p_.impl = ctx.attention_impl;
    RopeConfig rc;
    if (ctx.rope != nullptr) rc = ctx.rope->config();
    rc.rotary_dim = p_.qk_rope_head_dim;
    rc.convention = RopeConvention::Interleaved;
    rc.validate();
    rope_ = std::make_unique<RopeTable>(rc, ctx.max_position_embeddings);
    p_.rope = rope_.get();
    p_.softmax_scale = mla_softmax_scale(dq, &rc);
    max_positions_ = ctx.max_position_embeddings;

    const std::int64_t r = p_.kv_lora_rank, rq = p_.q_lora_rank;
    auto matrix = [&](const char* name, std::int64_t rows, std::int64_t cols) {
      return store.add(std::string("self_attn.") + name + ".weight", {rows, cols}, ParamInit::Normal, true);
    };
    auto bias = [&](const char* name, std::int64_t rows) -> Parameter* {
      return ctx.attention_bias ? store.add(std::string("self_attn.") + name + ".bias", {rows}, ParamInit::Zeros, false)
                                : nullptr;
    };
    if (rq > 0) {
      p_.q_a_proj = matrix("q_a_proj", rq, c);
      p_.q_a_bias = bias("q_a_proj", rq);
      p_.q_a_layernorm = store.add("self_attn.q_a_layernorm.weight", {rq}, ParamInit::Ones, false);
      p_.q_b_proj = matrix("q_b_proj", h * dq, rq);
    } else {
      p_.q_proj = matrix("q_proj", h * dq, c);
    }
    p_.kv_a_proj_with_mqa = matrix("kv_a_proj_with_mqa", r + p_.qk_rope_head_dim, c);
    p_.kv_a_bias = bias("kv_a_proj_with_mqa", r + p_.qk_rope_head_dim);
    p_.kv_a_layernorm = store.add("self_attn.kv_a_layernorm.weight", {r}, ParamInit::Ones, false);
    p_.kv_b_proj = matrix("kv_b_proj", h * (p_.qk_nope_head_dim + p_.v_head_dim), r);
    p_.o_proj = matrix("o_proj", c, h * p_.v_head_dim);
    p_.o_bias = bias("o_proj", c);
  }

  std::unique_ptr<MixerSaved> forward(const Tensor& y, const Tensor& x, const MixerCall& call,
                                      bool for_backward) override {
    check_call(call);
    if (call.state != nullptr) {
      auto* state = dynamic_cast<MlaState*>(call.state);
      MF_CHECK(state != nullptr, "[mla] the generation state was not made by this mixer");
      MF_CHECK(call.past == state->cache.past, "[mla] the call continues at position ", call.past,
               " but the latent cache holds ", state->cache.past, " positions");
      MF_CHECK(!for_backward, "[mla] a call with a generation state is forward only");
      MF_CHECK(call.causal, "[mla] generation is causal");
      MF_CHECK(!call.key_padding_mask.defined(), "[mla] a key padding mask is not supported with the latent cache");
      mla_forward_cached(y, x, call.batch, call.seq_len, state->cache, form_, p_);
      return nullptr;
    }
    auto saved = std::make_unique<MlaSavedState>();
    mla_forward(y, saved->s, x, call.batch, call.seq_len, call.causal, call.key_padding_mask, p_);
    if (!for_backward) return nullptr;
    return saved;
  }

  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MixerSaved& saved,
                const MixerCall& call) override {
    mla_backward(dx, dy, x, static_cast<const MlaSavedState&>(saved).s, call.batch, call.seq_len, call.causal,
                 call.key_padding_mask, p_);
  }

  std::unique_ptr<MixerState> new_state(const GenerationOptions& opt) const override {
    MF_CHECK(opt.capacity >= 0, "[mla] capacity must be >= 0 (0: max_position_embeddings), got ", opt.capacity);
    MF_CHECK(opt.batch >= 1, "[mla] the generation batch must be >= 1, got ", opt.batch);
    auto state = std::make_unique<MlaState>();
    const std::int64_t capacity = opt.capacity > 0 ? opt.capacity : max_positions_;
    state->cache.rows = Tensor::zeros({opt.batch, capacity, p_.latent_dim()});
    return state;
  }

  void set_attention_impl(AttentionImpl impl) override { p_.impl = impl; }

 private:
  MlaParams p_;
  std::unique_ptr<RopeTable> rope_;
  MlaDecodeForm form_ = MlaDecodeForm::Auto;
  std::int64_t max_positions_ = 0;
};

}  // namespace

TokenMixerEntry mla_mixer_entry() {
  return {"mla",
          "DeepSeek-V2 Multi-head Latent Attention: K and V up-projected from a shared low-rank latent c_KV, "
          "decoupled RoPE key shared by the heads; flash kernels with value dim != query dim; the cache holds only "
          "c_KV and the rope key (absorbed decode)",
          kCaps,
          kLimits,
          {int_option("q_lora_rank", 0, 0, std::int64_t{1} << 16,
                      "rank of the query compression (q_a_proj, q_a_layernorm, q_b_proj); 0: a plain q_proj "
                      "(HF null)"),
           int_option("kv_lora_rank", 0, 0, std::int64_t{1} << 16, "rank r of the latent c_KV; 0: 4 head_dim"),
           int_option("qk_nope_head_dim", 0, 0, 256, "query/key dims per head without RoPE; 0: head_dim (rounded up to a multiple of 8)"),
           int_option("qk_rope_head_dim", 0, 0, 256, "query/key dims per head with RoPE (the shared rope key); 0: "
                      "head_dim / 2 (rounded up to a multiple of 8)"),
           int_option("v_head_dim", 0, 0, 256, "value dims per head; 0: head_dim (rounded up to a multiple of 8)"),
           choice_option("decode", "auto", {"auto", "absorbed", "naive"},
                         "generation calls: absorbed (W_UK into the query, W_UV after the latent output), naive "
                         "(K, V up-projected for every cached position, flash kernels); auto: absorbed for calls of "
                         "at most 16 new tokens")},
          [](const MixerContext& ctx, ParamStore& store) -> std::unique_ptr<TokenMixer> {
            return std::make_unique<MlaMixer>(ctx, store);
          }};
}

}  // namespace mf
