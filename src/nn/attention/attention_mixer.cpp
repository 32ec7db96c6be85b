// Adapter from the self-attention sublayer (self_attention.h) and the KV
// cache (kv_cache.h) to the token-mixer interface.
#include "nn/attention/attention_mixer.h"

#include <tuple>
#include <vector>

#include "core/error.h"
#include "nn/attention/kv_cache.h"
#include "nn/attention/self_attention.h"

namespace mf {

namespace {

struct AttentionSaved : MixerSaved {
  SelfAttentionSaved s;
  void tensors(std::vector<const Tensor*>& out) const override {
    for (const Tensor* t : {&s.q, &s.k, &s.v, &s.out, &s.lse}) out.push_back(t);
  }
};

struct AttentionState : MixerState {
  KvCache cache;
  explicit AttentionState(KvCache c) : cache(std::move(c)) {}
  std::int64_t bytes() const override { return cache.bytes(); }
  void reset() override { cache.reset(); }
};

const MixerCapabilities kCaps{.causal = true, .bidirectional = true, .generation = true, .variable_length = true,
                              .padding = true, .position_ids = true};

class AttentionMixer final : public TokenMixer {
 public:
  AttentionMixer(const std::string& name, const MixerContext& ctx, ParamStore& store, std::int64_t window,
                 std::function<void(AttentionOptions&, std::int64_t)> adjust_options = {})
      : TokenMixer(name, kCaps), max_positions_(ctx.max_position_embeddings) {
    p_.adjust_options = std::move(adjust_options);
    p_.num_heads = ctx.num_heads;
    p_.num_kv_heads = ctx.num_kv_heads;
    p_.head_dim = ctx.head_dim;
    add_attention_projections(store, ctx, {&p_.q, &p_.k, &p_.v, &p_.o, &p_.q_bias, &p_.k_bias, &p_.v_bias, &p_.o_bias});
    p_.rope = ctx.rope;
    p_.alibi = ctx.alibi;
    p_.sliding_window = window;
    p_.impl = ctx.attention_impl;
  }

  std::unique_ptr<MixerSaved> forward(const Tensor& y, const Tensor& x, const MixerCall& call,
                                      bool for_backward) override {
    check_call(call);
    auto* state = static_cast<AttentionState*>(call.state);
    const AttentionCall ac{call.batch, call.seq_len, 0, state ? &state->cache : nullptr, call.past, call.causal,
                           call.key_padding_mask, call.position_ids};
    auto saved = std::make_unique<AttentionSaved>();
    self_attention_forward(y, saved->s, x, p_, ac);
    if (!for_backward) return nullptr;
    return saved;
  }

  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MixerSaved& saved,
                const MixerCall& call) override {
    const AttentionCall ac{call.batch, call.seq_len, 0, nullptr, 0, call.causal, call.key_padding_mask,
                           call.position_ids};
    self_attention_backward(dx, dy, x, static_cast<const AttentionSaved&>(saved).s, p_, ac);
  }

  // Batched decode: the projections of all rows share each weight read.
  void forward_rows(const Tensor& y, const Tensor& x, const MixerCall& call) override {
    check_call(call);
    std::vector<KvCacheHook*> caches(static_cast<std::size_t>(call.batch));
    for (std::int64_t i = 0; i < call.batch; ++i) {
      auto* state = static_cast<AttentionState*>(call.row_states[i]);
      MF_CHECK(state != nullptr, "[", name(), "] batched decode: row ", i, " has no generation state");
      caches[static_cast<std::size_t>(i)] = &state->cache;
    }
    self_attention_forward_rows(y, x, p_, caches, call.row_past);
  }

  std::unique_ptr<MixerState> new_state(const GenerationOptions& opt) const override {
    MF_CHECK(opt.capacity >= 0, "[", name(), "] capacity must be >= 0 (0: max_position_embeddings), got ",
             opt.capacity);
    const std::int64_t capacity = opt.capacity > 0 ? opt.capacity : max_positions_;
    return std::make_unique<AttentionState>(
        KvCache(1, opt.batch, p_.num_kv_heads, p_.head_dim, p_.sliding_window, capacity, opt.copy_out));
  }

  void set_attention_impl(AttentionImpl impl) override { p_.impl = impl; }

 private:
  SelfAttentionParams p_;
  std::int64_t max_positions_;
};

}  // namespace

void add_attention_projections(ParamStore& store, const MixerContext& ctx, const AttentionProjectionSlots& slots) {
  const std::int64_t c = ctx.hidden_size, qd = ctx.num_heads * ctx.head_dim, kd = ctx.num_kv_heads * ctx.head_dim;
  for (auto [slot, bias, proj, rows, cols] :
       {std::tuple{slots.q, slots.q_bias, "q_proj", qd, c}, std::tuple{slots.k, slots.k_bias, "k_proj", kd, c},
        std::tuple{slots.v, slots.v_bias, "v_proj", kd, c}, std::tuple{slots.o, slots.o_bias, "o_proj", c, qd}}) {
    const std::string base = std::string("self_attn.") + proj;
    *slot = store.add(base + ".weight", {rows, cols}, ParamInit::Normal, true);
    if (ctx.attention_bias) *bias = store.add(base + ".bias", {rows}, ParamInit::Zeros, false);
  }
}

std::unique_ptr<TokenMixer> make_attention_mixer(
    const std::string& name, const MixerContext& ctx, ParamStore& store,
    std::function<void(AttentionOptions&, std::int64_t key_len)> adjust_options) {
  return std::make_unique<AttentionMixer>(name, ctx, store, 0, std::move(adjust_options));
}

TokenMixerEntry full_attention_mixer_entry() {
  return {"full_attention",
          "exact softmax attention (flash or dense kernels), MHA/GQA/MQA, RoPE or ALiBi, KV cache",
          kCaps,
          "",
          {},
          [](const MixerContext& ctx, ParamStore& store) -> std::unique_ptr<TokenMixer> {
            return std::make_unique<AttentionMixer>("full_attention", ctx, store, 0);
          }};
}

TokenMixerEntry sliding_attention_mixer_entry() {
  return {"sliding_attention",
          "exact attention over a sliding window of the model's sliding_window positions (causal: the W - 1 before; "
          "bidirectional: W - 1 each side); rolling KV cache of W slots",
          kCaps,
          "",
          {},
          [](const MixerContext& ctx, ParamStore& store) -> std::unique_ptr<TokenMixer> {
            MF_CHECK(ctx.sliding_window > 0, "[sliding_attention] layer ", ctx.layer,
                     " needs the model's sliding_window (> 0) but it is not set");
            return std::make_unique<AttentionMixer>("sliding_attention", ctx, store, ctx.sliding_window);
          }};
}

}  // namespace mf
