// Adapter from Reformer LSH attention (lsh_attention.h) to the token-mixer
// interface. Checkpoint names: self_attn.qk_proj.weight [H*D, C] (shared
// query/key), self_attn.v_proj.weight, self_attn.o_proj.weight (.bias each with
// attention_bias), and the buffer self_attn.lsh_rotations [H, D, n_hashes,
// n_buckets/2] (HF's layout: a rotation per head and round), drawn N(0, 1)
// from the seed through Philox, saved in the checkpoint and never trained.
// Positions come from the model's absolute embeddings (as HF's Reformer):
// RoPE and ALiBi are refused. num_key_value_heads is not used: the shared
// query/key projection has one key per query head (an LSH layer may sit in a
// GQA model beside attention layers).
#include "nn/reformer/lsh_attention_mixer.h"

#include <tuple>

#include "core/error.h"
#include "core/rng.h"
#include "nn/reformer/lsh_attention.h"

namespace mf {

namespace {

const MixerCapabilities kCaps{.causal = true, .bidirectional = true, .generation = true, .variable_length = true,
                              .padding = true};

struct LshSavedState : MixerSaved {
  LshAttentionSaved s;
  void tensors(std::vector<const Tensor*>& out) const override {
    for (const Tensor* t : s.tensors()) out.push_back(t);
  }
};

struct LshState : MixerState {
  LshCache cache;
  explicit LshState(LshCache c) : cache(std::move(c)) {}
  std::int64_t bytes() const override { return cache.bytes(); }
  void reset() override { cache.length = 0; }
};

class LshAttentionMixer final : public TokenMixer {
 public:
  LshAttentionMixer(const MixerContext& ctx, ParamStore& store)
      : TokenMixer("lsh_attention", kCaps), max_positions_(ctx.max_position_embeddings) {
    const nlohmann::json& o = ctx.options;
    p_.num_heads = ctx.num_heads;
    p_.head_dim = ctx.head_dim;
    p_.opt.n_hashes = o.at("n_hashes").get<std::int64_t>();
    p_.opt.n_buckets = o.at("n_buckets").get<std::int64_t>();
    p_.opt.chunk_length = o.at("chunk_length").get<std::int64_t>();
    lsh_check_options(p_.opt);
    MF_CHECK(ctx.rope == nullptr && !ctx.alibi, "[lsh_attention] RoPE and ALiBi are not supported (shared QK with "
             "hashed keys; HF's Reformer uses absolute positions): use position \"learned\" or \"sinusoidal\"");
    const std::int64_t c = ctx.hidden_size, hd = ctx.num_heads * ctx.head_dim;
    for (auto [slot, bias, name, rows, cols] :
         {std::tuple{&p_.qk, &p_.qk_bias, "qk_proj", hd, c}, std::tuple{&p_.v, &p_.v_bias, "v_proj", hd, c},
          std::tuple{&p_.o, &p_.o_bias, "o_proj", c, hd}}) {
      const std::string base = std::string("self_attn.") + name;
      *slot = store.add(base + ".weight", {rows, cols}, ParamInit::Normal, true);
      if (ctx.attention_bias) *bias = store.add(base + ".bias", {rows}, ParamInit::Zeros, false);
    }
    p_.rotations = store.add_buffer("self_attn.lsh_rotations",
                                    {ctx.num_heads, ctx.head_dim, p_.opt.n_hashes, p_.opt.n_buckets / 2},
                                    [](Tensor& v, std::uint64_t seed, std::uint64_t stream) {
                                      fill_normal(v, seed, 0.0f, 1.0f, stream);
                                    });
  }

  std::unique_ptr<MixerSaved> forward(const Tensor& y, const Tensor& x, const MixerCall& call,
                                      bool for_backward) override {
    check_call(call);
    LshAttentionParams p = p_;
    p.opt.causal = call.causal;
    if (call.state != nullptr) {
      MF_CHECK(call.causal, "[lsh_attention] generation is causal: a call with a state must be causal");
      MF_CHECK(!call.key_padding_mask.defined(), "[lsh_attention] generation takes no key padding mask");
      LshCache& cache = static_cast<LshState*>(call.state)->cache;
      MF_CHECK(call.past == cache.length, "[lsh_attention] generation state holds ", cache.length,
               " positions but the call continues at position ", call.past);
      lsh_attention_generate(y, x, call.batch, call.seq_len, cache, p);
      return nullptr;
    }
    auto saved = std::make_unique<LshSavedState>();
    lsh_attention_forward(y, saved->s, x, call.batch, call.seq_len, call.key_padding_mask, p);
    if (!for_backward) return nullptr;
    return saved;
  }

  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MixerSaved& saved,
                const MixerCall& call) override {
    LshAttentionParams p = p_;
    p.opt.causal = call.causal;
    lsh_attention_backward(dx, dy, x, static_cast<const LshSavedState&>(saved).s, call.batch, call.seq_len,
                           call.key_padding_mask, p);
  }

  std::unique_ptr<MixerState> new_state(const GenerationOptions& opt) const override {
    MF_CHECK(opt.capacity >= 0 && opt.batch >= 1, "[lsh_attention] generation needs batch >= 1 and capacity >= 0 "
             "(0: max_position_embeddings), got batch ", opt.batch, " and capacity ", opt.capacity);
    const std::int64_t capacity = opt.capacity > 0 ? opt.capacity : max_positions_;
    return std::make_unique<LshState>(LshCache(opt.batch, capacity, p_.num_heads, p_.head_dim, p_.opt));
  }

 private:
  LshAttentionParams p_;
  std::int64_t max_positions_;
};

}  // namespace

TokenMixerEntry lsh_attention_mixer_entry() {
  return {"lsh_attention",
          "Reformer LSH attention (Kitaev et al. 2020, as HF's LSHSelfAttention): shared QK with normalized keys, "
          "angular hashing per round, sort by (bucket, position), chunks attend to themselves and the previous "
          "chunk, no self-attention unless alone, rounds combined by lse: O(L c)",
          kCaps,
          "",
          {int_option("n_hashes", 2, 1, 16, "hashing rounds (each with its own random rotation)"),
           int_option("n_buckets", 32, 2, std::int64_t{1} << 16, "buckets per round (even: argmax over [xR ; -xR])"),
           int_option("chunk_length", 64, 1, std::int64_t{1} << 16,
                      "sorted slots per chunk; a chunk attends to itself and the previous chunk (sequences are "
                      "padded to a multiple internally)")},
          [](const MixerContext& ctx, ParamStore& store) -> std::unique_ptr<TokenMixer> {
            return std::make_unique<LshAttentionMixer>(ctx, store);
          }};
}

}  // namespace mf
