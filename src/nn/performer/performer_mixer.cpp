// Adapter from the Performer sublayer (performer.h) to the token-mixer
// interface. Checkpoint names: self_attn.{q,k,v,o}_proj.weight (.bias with
// attention_bias) and the buffer self_attn.performer_projection [m, d] (one W
// for every head of the layer, as performer-pytorch's FastAttention), saved
// in the checkpoint and never trained. W is drawn from (seed, the buffer's
// stream) at construction; begin_training_step(step) redraws it at every step
// that is a positive multiple of feature_redraw_interval, from the W in use
// (performer_redraw_projection), so a run resumed from a checkpoint redraws
// exactly as the uninterrupted run; a forward (evaluation, generation) never
// redraws.
#include "nn/performer/performer_mixer.h"

#include <tuple>

#include "core/error.h"
#include "nn/performer/performer.h"

namespace mf {

namespace {

const MixerCapabilities kCaps{.causal = true, .bidirectional = true, .generation = true, .variable_length = true,
                              .padding = true};

struct PerformerSavedState : MixerSaved {
  PerformerSaved s;
  void tensors(std::vector<const Tensor*>& out) const override {
    for (const Tensor* t : s.tensors()) out.push_back(t);
  }
};

struct PerformerMixerState : MixerState {
  PerformerState s;
  explicit PerformerMixerState(PerformerState state) : s(std::move(state)) {}
  std::int64_t bytes() const override { return s.bytes(); }
  void reset() override { s.reset(); }
};

class PerformerMixer final : public TokenMixer {
 public:
  PerformerMixer(const MixerContext& ctx, ParamStore& store) : TokenMixer("performer", kCaps) {
    const nlohmann::json& o = ctx.options;
    p_.num_heads = ctx.num_heads;
    p_.num_kv_heads = ctx.num_kv_heads;
    p_.head_dim = ctx.head_dim;
    p_.rope = ctx.rope;
    MF_CHECK(!ctx.alibi, "[performer] ALiBi is not supported (the random features have no pairwise bias); use RoPE "
                         "or absolute positions");
    MF_CHECK(ctx.num_heads >= 1 && ctx.num_kv_heads >= 1 && ctx.num_heads % ctx.num_kv_heads == 0, "[performer] ",
             "num_attention_heads (", ctx.num_heads, ") must be a positive multiple of num_key_value_heads (",
             ctx.num_kv_heads, ")");
    p_.options.kernel = o.at("kernel").get<std::string>() == "relu" ? PerformerKernel::Relu : PerformerKernel::Softmax;
    p_.options.kernel_epsilon = o.at("kernel_epsilon").get<double>();
    p_.options.chunk_size = o.at("chunk_size").get<std::int64_t>();
    scaling_ = o.at("projection_scaling").get<std::string>() == "sqrt_d" ? PerformerScaling::SqrtD
                                                                         : PerformerScaling::Chi;
    redraw_interval_ = o.at("feature_redraw_interval").get<std::int64_t>();
    const std::int64_t m = o.at("nb_features").get<std::int64_t>();
    const std::int64_t c = ctx.hidden_size, qd = ctx.num_heads * ctx.head_dim, kd = ctx.num_kv_heads * ctx.head_dim;
    for (auto [slot, bias, name, rows, cols] :
         {std::tuple{&p_.q, &p_.q_bias, "q_proj", qd, c}, std::tuple{&p_.k, &p_.k_bias, "k_proj", kd, c},
          std::tuple{&p_.v, &p_.v_bias, "v_proj", kd, c}, std::tuple{&p_.o, &p_.o_bias, "o_proj", c, qd}}) {
      const std::string base = std::string("self_attn.") + name;
      *slot = store.add(base + ".weight", {rows, cols}, ParamInit::Normal, true);
      if (ctx.attention_bias) *bias = store.add(base + ".bias", {rows}, ParamInit::Zeros, false);
    }
    p_.projection = store.add_buffer(
        "self_attn.performer_projection", {m, ctx.head_dim},
        [scaling = scaling_](Tensor& w, std::uint64_t seed, std::uint64_t stream) {
          performer_draw_projection(w, seed, stream, 0, scaling);
        });
  }

  std::unique_ptr<MixerSaved> forward(const Tensor& y, const Tensor& x, const MixerCall& call,
                                      bool for_backward) override {
    check_call(call);
    PerformerState* state = nullptr;
    if (call.state) {
      state = &static_cast<PerformerMixerState*>(call.state)->s;
      MF_CHECK(call.causal, "[performer] a generation state needs a causal call");
      MF_CHECK(!call.key_padding_mask.defined(), "[performer] a key padding mask is not supported in generation");
      MF_CHECK(state->past == call.past, "[performer] the generation state holds ", state->past,
               " positions but the call starts at position ", call.past);
      MF_CHECK(!for_backward, "[performer] a forward that continues a generation keeps nothing for a backward");
    }
    auto saved = for_backward ? std::make_unique<PerformerSavedState>() : nullptr;
    performer_forward(y, saved ? &saved->s : nullptr, x, call.batch, call.seq_len, call.causal,
                      call.key_padding_mask, p_, state);
    return saved;
  }

  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MixerSaved& saved,
                const MixerCall& call) override {
    performer_backward(dx, dy, x, static_cast<const PerformerSavedState&>(saved).s, call.batch, call.seq_len,
                       call.causal, call.key_padding_mask, p_);
  }

  std::unique_ptr<MixerState> new_state(const GenerationOptions& opt) const override {
    MF_CHECK(opt.batch >= 1, "[performer] generation batch must be >= 1, got ", opt.batch);
    return std::make_unique<PerformerMixerState>(
        PerformerState(opt.batch, p_.num_kv_heads, p_.projection->value.size(0), p_.head_dim));
  }

  void begin_training_step(std::int64_t step) override {
    if (redraw_interval_ <= 0 || step <= 0 || step % redraw_interval_ != 0 || step == last_redraw_step_) return;
    performer_redraw_projection(p_.projection->value, static_cast<std::uint64_t>(step / redraw_interval_), scaling_);
    last_redraw_step_ = step;  // a step begun twice redraws once
  }

 private:
  PerformerParams p_;
  PerformerScaling scaling_ = PerformerScaling::Chi;
  std::int64_t redraw_interval_ = 0;
  std::int64_t last_redraw_step_ = -1;
};

}  // namespace

TokenMixerEntry performer_mixer_entry() {
  return {"performer",
          "Performer (Choromanski et al. 2021): FAVOR+ positive (or ReLU) random features, linear-time attention; "
          "causal by a chunked prefix scan with a causal stabilizer; recurrent generation state",
          kCaps,
          "",
          {int_option("nb_features", 256, 1, 1 << 16, "m, the number of random features (rows of W)"),
           choice_option("kernel", "softmax", {"softmax", "relu"},
                         "softmax: positive features exp(w.x' - |x'|^2/2) (FAVOR+); relu: relu(w.x') + kernel_epsilon"),
           choice_option("projection_scaling", "chi", {"chi", "sqrt_d"},
                         "row norms of W: chi-distributed (as Gaussian rows) or all sqrt(d)"),
           int_option("feature_redraw_interval", 1000, 0, std::int64_t{1} << 40,
                      "redraw W every this many training steps (0: never)"),
           number_option("kernel_epsilon", 1e-3, 0.0, 1.0, "relu kernel: added to every feature"),
           int_option("chunk_size", 64, 1, 1 << 16, "causal scan: rows per chunk")},
          [](const MixerContext& ctx, ParamStore& store) -> std::unique_ptr<TokenMixer> {
            return std::make_unique<PerformerMixer>(ctx, store);
          }};
}

}  // namespace mf
