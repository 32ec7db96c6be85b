// Adapter from multi-scale retention (retention.h) to the token-mixer
// interface. Checkpoint names (torchscale's): retention.{q,k,v,g}_proj.weight
// and retention.out_proj.weight (.bias each with attention_bias; torchscale
// has none). Initialization as torchscale's reset_parameters: Xavier uniform
// with gain 2^-2.5 (q, k, v, g) and 2^-1 (out_proj); biases zero. The form:
// "auto" = parallel when L <= chunk_size, else chunkwise; a call with a
// generation state always runs the recurrent form (prefill of any length
// computed blockwise, then steps), so a generated sequence equals a "form":
// "recurrent" forward exactly, and the parallel/chunkwise forward up to the
// group norm's eps (see retention.h).
#include "nn/retnet/retention_mixer.h"

#include <cmath>
#include <tuple>

#include "core/error.h"
#include "core/rng.h"
#include "nn/retnet/retention.h"

namespace mf {

namespace {

constexpr const char* kLimits =
    "retention decays over positions and its normalizers count every position, so a padded token cannot be "
    "skipped: no key padding mask; causal only (no bidirectional form)";

const MixerCapabilities kCaps{.causal = true, .bidirectional = false, .generation = true, .variable_length = true,
                              .padding = false};

struct RetentionSavedState : MixerSaved {
  RetentionSaved s;
  void tensors(std::vector<const Tensor*>& out) const override {
    for (const Tensor* t : s.tensors()) out.push_back(t);
  }
};

struct RetentionMixerState : MixerState {
  RetentionState s;
  std::int64_t bytes() const override { return static_cast<std::int64_t>(s.kv.nbytes()); }
  void reset() override {
    s.kv.fill(0.0f);
    s.past = 0;
  }
};

ParamInitFn xavier_uniform(double gain, std::int64_t fan_out, std::int64_t fan_in) {
  const auto bound = static_cast<float>(gain * std::sqrt(6.0 / static_cast<double>(fan_in + fan_out)));
  return [bound](Tensor& v, std::uint64_t seed, std::uint64_t stream) { fill_uniform(v, seed, -bound, bound, stream); };
}

class RetentionMixer final : public TokenMixer {
 public:
  RetentionMixer(const MixerContext& ctx, ParamStore& store) : TokenMixer("retention", kCaps, kLimits) {
    const nlohmann::json& o = ctx.options;
    const std::int64_t c = ctx.hidden_size, heads = ctx.num_heads, factor = o.at("value_factor").get<std::int64_t>();
    MF_CHECK(heads >= 1 && c % heads == 0, "[retention] hidden_size (", c, ") must be divisible by ",
             "num_attention_heads (", heads, "): the key dim per head is hidden / heads");
    MF_CHECK((c / heads) % 2 == 0, "[retention] the key dim per head, hidden_size / num_attention_heads = ",
             c / heads, ", must be even (the rotation turns pairs of channels)");
    p_.num_heads = heads;
    p_.key_dim = c / heads;
    p_.value_dim = factor * c / heads;
    p_.chunk_size = o.at("chunk_size").get<std::int64_t>();
    p_.eps = o.at("group_norm_eps").get<float>();
    const std::string form = o.at("form");
    form_ = form == "parallel" ? Form::Parallel : form == "chunkwise" ? Form::Chunkwise
            : form == "recurrent" ? Form::Recurrent : Form::Auto;
    const std::int64_t vd = factor * c;
    for (auto [slot, bias, proj, rows, cols, gain] :
         {std::tuple{&p_.q, &p_.q_bias, "q_proj", c, c, std::exp2(-2.5)},
          std::tuple{&p_.k, &p_.k_bias, "k_proj", c, c, std::exp2(-2.5)},
          std::tuple{&p_.v, &p_.v_bias, "v_proj", vd, c, std::exp2(-2.5)},
          std::tuple{&p_.g, &p_.g_bias, "g_proj", vd, c, std::exp2(-2.5)},
          std::tuple{&p_.o, &p_.o_bias, "out_proj", c, vd, 0.5}}) {
      const std::string base = std::string("retention.") + proj;
      *slot = store.add_custom(base + ".weight", {rows, cols}, xavier_uniform(gain, rows, cols), true);
      if (ctx.attention_bias) *bias = store.add(base + ".bias", {rows}, ParamInit::Zeros, false);
    }
  }

  std::unique_ptr<MixerSaved> forward(const Tensor& y, const Tensor& x, const MixerCall& call,
                                      bool for_backward) override {
    check_call(call);
    if (call.state) {
      auto* state = dynamic_cast<RetentionMixerState*>(call.state);
      MF_CHECK(state != nullptr, "[retention] the generation state was not made by this mixer");
      MF_CHECK(call.past == state->s.past, "[retention] the call continues at position ", call.past,
               " but the generation state holds ", state->s.past, " positions");
      MF_CHECK(!for_backward, "[retention] a call with a generation state is forward only");
      retention_forward(y, nullptr, x, call.batch, call.seq_len, RetentionForm::Recurrent, &state->s, p_);
      return nullptr;
    }
    auto saved = for_backward ? std::make_unique<RetentionSavedState>() : nullptr;
    retention_forward(y, saved ? &saved->s : nullptr, x, call.batch, call.seq_len, form_for(call.seq_len), nullptr,
                      p_);
    return saved;
  }

  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MixerSaved& saved,
                const MixerCall& call) override {
    retention_backward(dx, dy, x, static_cast<const RetentionSavedState&>(saved).s, call.batch, call.seq_len, p_);
  }

  std::unique_ptr<MixerState> new_state(const GenerationOptions& opt) const override {
    auto state = std::make_unique<RetentionMixerState>();
    state->s = retention_new_state(opt.batch, p_);
    return state;
  }

 private:
  enum class Form { Auto, Parallel, Chunkwise, Recurrent };

  RetentionForm form_for(std::int64_t seq_len) const {
    switch (form_) {
      case Form::Parallel: return RetentionForm::Parallel;
      case Form::Chunkwise: return RetentionForm::Chunkwise;
      case Form::Recurrent: return RetentionForm::Recurrent;
      case Form::Auto: break;
    }
    return seq_len <= p_.chunk_size ? RetentionForm::Parallel : RetentionForm::Chunkwise;
  }

  RetentionParams p_;
  Form form_ = Form::Auto;
};

}  // namespace

TokenMixerEntry retention_mixer_entry() {
  return {"retention",
          "multi-scale retention (RetNet, Sun et al. 2023; torchscale's MultiScaleRetention): per-head decay "
          "gamma_h = 1 - 2^(-5-h), theta-shift rotation, parallel / chunkwise / recurrent forms, group norm and "
          "swish gate; O(1) state per generated token",
          kCaps,
          kLimits,
          {int_option("value_factor", 2, 1, 16, "value and gate width = value_factor * hidden (torchscale's)"),
           int_option("chunk_size", 128, 1, std::int64_t{1} << 16,
                      "the chunkwise form's chunk (and every form's block size)"),
           choice_option("form", "auto", {"auto", "parallel", "chunkwise", "recurrent"},
                         "training forward: auto = parallel when L <= chunk_size, else chunkwise; recurrent = "
                         "the generation form's normalizer (generation always uses it)"),
           number_option("group_norm_eps", 1e-6, 0.0, 1.0,
                         "eps of the per-head RMS group norm (forms agree exactly only as eps -> 0)")},
          [](const MixerContext& ctx, ParamStore& store) -> std::unique_ptr<TokenMixer> {
            return std::make_unique<RetentionMixer>(ctx, store);
          }};
}

}  // namespace mf
