// Adapter from Transformer-XL relative attention (rel_attention.h) to the
// token-mixer interface. Checkpoint names (the reference's module names under
// self_attn): self_attn.qkv_net.weight [(H + 2*Hkv)*D, C] (rows q, k, v; the
// reference's [3*H*D, C] when num_key_value_heads = num_attention_heads),
// self_attn.r_net.weight
// [H*D, C], self_attn.r_w_bias [H, D] (u), self_attn.r_r_bias [H, D] (v),
// self_attn.o_net.weight [C, H*D]; all drawn N(0, initializer_range^2) as the
// reference's init_weight; u and v per layer (the reference's untie_r) and
// without weight decay.
//
// Memory: the segment memory (MixerCall::memory) holds the last mem_len
// inputs of this mixer, per batch row, as the reference's mems (the layer
// inputs; cat(mems, h) makes the keys and values); a forward reads it as a
// constant and then keeps the last mem_len rows of cat(memory, x). In a
// post-norm block (the reference's default) the mixer's input is the layer's
// input, as in the reference; in a pre-norm block it is the normalized layer
// input (the reference's pre_lnorm normalizes cat(mems, h) with the current
// norm weights instead; the two agree whenever the weights did not move).
// Generation keeps every position's keys and values (and the projected
// position rows P_d) up to the state's capacity, so a generated token sees
// the whole prompt and every earlier token, exactly as one causal forward
// over the whole sequence (a memory of mem_len >= the sequence).
#include "nn/transformer_xl/transformer_xl_mixer.h"

#include <cstring>

#include "core/error.h"
#include "nn/linear.h"
#include "nn/transformer_xl/rel_attention.h"

namespace mf {

namespace {

constexpr const char* kLimits =
    "Transformer-XL is a decoder: causal only (no bidirectional form); no key padding mask (a segment's memory "
    "would carry padding into the next one); its own relative sinusoids replace RoPE and ALiBi";

const MixerCapabilities kCaps{.causal = true, .bidirectional = false, .generation = true, .variable_length = true,
                              .padding = false, .segment_memory = true};

struct TxlSaved : MixerSaved {
  RelAttentionSaved s;
  void tensors(std::vector<const Tensor*>& out) const override {
    for (const Tensor* t : s.tensors()) out.push_back(t);
  }
};

// The segment memory of one layer: the last (up to) mem_len inputs per row.
struct TxlMemory : MixerState {
  std::int64_t batch = 0, capacity = 0;  // capacity = mem_len
  Tensor rows;                           // [B, M, C] with M <= mem_len; undefined when M = 0
  std::int64_t bytes() const override { return rows.defined() ? static_cast<std::int64_t>(rows.nbytes()) : 0; }
  void reset() override { rows = Tensor(); }
  std::int64_t length() const { return rows.defined() ? rows.size(1) : 0; }
  // Keep the last `capacity` rows of cat(rows, x) ([B*L, C]).
  void push(const Tensor& x, std::int64_t seq_len) {
    const std::int64_t m = length(), c = x.size(1), keep = std::min(capacity, m + seq_len);
    if (keep == 0) return;
    Tensor next = Tensor::empty({batch, keep, c});
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t t = 0; t < keep; ++t) {
        const std::int64_t src = m + seq_len - keep + t;  // index into cat(rows, x)
        const float* from = src < m ? rows.data<float>() + (b * m + src) * c
                                    : x.data<float>() + (b * seq_len + src - m) * c;
        std::memcpy(next.data<float>() + (b * keep + t) * c, from, static_cast<std::size_t>(c) * sizeof(float));
      }
    rows = std::move(next);
  }
};

// The generation state: keys and values of every position so far and the
// projected position rows P_d computed so far (the weights are fixed).
struct TxlGeneration : MixerState {
  std::int64_t batch = 0, capacity = 0, past = 0, pos_rows = 0;
  Tensor kv;   // [B, capacity, 2*H*D]
  Tensor pos;  // [capacity, H*D]
  std::int64_t bytes() const override { return static_cast<std::int64_t>(kv.nbytes() + pos.nbytes()); }
  void reset() override { past = 0; }
};

class TransformerXlMixer final : public TokenMixer {
 public:
  TransformerXlMixer(const MixerContext& ctx, ParamStore& store) : TokenMixer("transformer_xl", kCaps, kLimits) {
    const nlohmann::json& o = ctx.options;
    MF_CHECK(ctx.rope == nullptr && !ctx.alibi,
             "[transformer_xl] its relative sinusoids are the only positions it uses: set \"position\": \"none\" "
             "(RoPE and ALiBi are refused)");
    MF_CHECK(ctx.num_kv_heads >= 1 && ctx.num_heads % ctx.num_kv_heads == 0, "[transformer_xl] num_attention_heads (",
             ctx.num_heads, ") must be a multiple of num_key_value_heads (", ctx.num_kv_heads, ")");
    MF_CHECK(!ctx.attention_bias, "[transformer_xl] attention_bias is not supported: the reference's qkv_net, "
             "r_net and o_net have no bias");
    MF_CHECK(ctx.hidden_size % 2 == 0, "[transformer_xl] hidden_size (", ctx.hidden_size,
             ") must be even: the relative sinusoids are sin and cos halves");
    mem_len_ = o.at("mem_len").get<std::int64_t>();
    p_.num_heads = ctx.num_heads;
    p_.num_kv_heads = ctx.num_kv_heads;
    p_.head_dim = ctx.head_dim;
    p_.clamp_len = o.at("clamp_len").get<std::int64_t>();
    const std::int64_t c = ctx.hidden_size, hd = ctx.num_heads * ctx.head_dim, kd = ctx.num_kv_heads * ctx.head_dim;
    p_.qkv = store.add("self_attn.qkv_net.weight", {hd + 2 * kd, c}, ParamInit::Normal, true);
    p_.r = store.add("self_attn.r_net.weight", {hd, c}, ParamInit::Normal, true);
    p_.u = store.add("self_attn.r_w_bias", {ctx.num_heads, ctx.head_dim}, ParamInit::Normal, false);
    p_.v = store.add("self_attn.r_r_bias", {ctx.num_heads, ctx.head_dim}, ParamInit::Normal, false);
    p_.o = store.add("self_attn.o_net.weight", {c, hd}, ParamInit::Normal, true);
  }

  std::unique_ptr<MixerSaved> forward(const Tensor& y, const Tensor& x, const MixerCall& call,
                                      bool for_backward) override {
    check_call(call);
    if (call.state) {
      MF_CHECK(!for_backward, "[transformer_xl] a call with a generation state is forward only");
      generate(y, x, call);
      return nullptr;
    }
    TxlMemory* memory = nullptr;
    if (call.memory) {
      memory = dynamic_cast<TxlMemory*>(call.memory);
      MF_CHECK(memory != nullptr, "[transformer_xl] the segment memory was not made by this mixer");
      MF_CHECK(memory->batch == call.batch, "[transformer_xl] the segment memory holds ", memory->batch,
               " streams but the call has batch ", call.batch);
    }
    auto saved = for_backward ? std::make_unique<TxlSaved>() : nullptr;
    rel_attention_forward(y, saved ? &saved->s : nullptr, x, memory ? memory->rows : Tensor(), call.batch,
                          call.seq_len, p_);
    if (memory) memory->push(x, call.seq_len);
    return saved;
  }

  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MixerSaved& saved,
                const MixerCall& call) override {
    rel_attention_backward(dx, dy, x, static_cast<const TxlSaved&>(saved).s, call.batch, call.seq_len, p_);
  }

  std::unique_ptr<MixerState> new_state(const GenerationOptions& opt) const override {
    MF_CHECK(opt.batch >= 1 && opt.capacity >= 1, "[transformer_xl] a generation state needs batch >= 1 and "
             "capacity >= 1 but got ", opt.batch, " and ", opt.capacity);
    auto s = std::make_unique<TxlGeneration>();
    const std::int64_t hd = p_.num_heads * p_.head_dim, kd = p_.num_kv_heads * p_.head_dim;
    s->batch = opt.batch;
    s->capacity = opt.capacity;
    s->kv = Tensor::empty({opt.batch, opt.capacity, 2 * kd});
    s->pos = Tensor::empty({opt.capacity, hd});
    return s;
  }

  std::unique_ptr<MixerState> new_memory(std::int64_t batch) const override {
    MF_CHECK(batch >= 1, "[transformer_xl] a segment memory needs batch >= 1 but got ", batch);
    auto m = std::make_unique<TxlMemory>();
    m->batch = batch;
    m->capacity = mem_len_;
    return m;
  }

 private:
  // One generation call: the new positions' keys and values go into the
  // cache, P grows to the distances now needed, and the core attends over
  // every cached position (the earlier ones as its memory).
  void generate(const Tensor& y, const Tensor& x, const MixerCall& call) {
    auto* s = dynamic_cast<TxlGeneration*>(call.state);
    MF_CHECK(s != nullptr, "[transformer_xl] the generation state was not made by this mixer");
    MF_CHECK(call.past == s->past, "[transformer_xl] the call continues at position ", call.past,
             " but the generation state holds ", s->past, " positions");
    MF_CHECK(call.batch == s->batch, "[transformer_xl] the generation state was made for batch ", s->batch,
             " but the call has batch ", call.batch);
    const std::int64_t L = call.seq_len, B = call.batch, M = s->past, K = M + L;
    MF_CHECK(K <= s->capacity, "[transformer_xl] positions up to ", K - 1, " exceed the generation state's capacity ",
             s->capacity);
    rel_attention_check(x, Tensor(), B, L, p_);
    const std::int64_t c = x.size(1), hd = p_.num_heads * p_.head_dim, kd = p_.num_kv_heads * p_.head_dim;
    Tensor q = Tensor::empty({B * L, hd}), kv_new = Tensor::empty({B * L, 2 * kd});
    linear_forward(q, x, p_.qkv->value.slice(0, 0, hd), Tensor());
    linear_forward(kv_new, x, p_.qkv->value.slice(0, hd, hd + 2 * kd), Tensor());
    for (std::int64_t b = 0; b < B; ++b)
      std::memcpy(s->kv.data<float>() + (b * s->capacity + M) * 2 * kd, kv_new.data<float>() + b * L * 2 * kd,
                  static_cast<std::size_t>(L * 2 * kd) * sizeof(float));
    if (s->pos_rows < K) {
      const Tensor table = rel_position_table(s->pos_rows, K, c, p_.clamp_len);
      linear_forward(s->pos.slice(0, s->pos_rows, K), table, p_.r->value, Tensor());
      s->pos_rows = K;
    }
    Tensor attn = Tensor::empty({B * L, hd}), lse = Tensor::empty({B, p_.num_heads, L});
    RelAttentionCore core{q.data<float>(), s->kv.data<float>(), s->capacity * 2 * kd, s->pos.data<float>(),
                          p_.u->value.data<float>(), p_.v->value.data<float>(), B, L, M, p_.num_heads,
                          p_.num_kv_heads, p_.head_dim};
    rel_attention_core_forward(core, attn.data<float>(), lse.data<float>());
    linear_forward(y, attn, p_.o->value, Tensor());
    s->past = K;
  }

  RelAttentionParams p_;
  std::int64_t mem_len_ = 0;
};

}  // namespace

TokenMixerEntry transformer_xl_mixer_entry() {
  return {"transformer_xl",
          "Transformer-XL relative attention (Dai et al. 2019; kimiyoung/transformer-xl "
          "RelPartialLearnableMultiHeadAttn): scores (q + u).k_j + (q + v).W_R R_{i-j} with sinusoidal R, "
          "segment memory of mem_len earlier inputs per layer (stop-gradient)",
          kCaps,
          kLimits,
          {int_option("mem_len", 128, 0, std::int64_t{1} << 20,
                      "inputs of earlier segments kept per layer (training and evaluation walk consecutive segments "
                      "of each batch row's stream); 0: no memory"),
           int_option("clamp_len", 0, 0, std::int64_t{1} << 30,
                      "relative distances beyond it use the sinusoid of clamp_len; 0: no clamp")},
          [](const MixerContext& ctx, ParamStore& store) -> std::unique_ptr<TokenMixer> {
            return std::make_unique<TransformerXlMixer>(ctx, store);
          }};
}

}  // namespace mf
