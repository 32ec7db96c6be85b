// Adapter from the Mamba mixer (mamba.h) to the token-mixer interface, with
// Hugging Face MambaMixer's checkpoint names relative to the layer:
// mixer.in_proj.weight [2 Di, C] (.bias with use_bias), mixer.conv1d.weight
// [Di, 1, K], mixer.conv1d.bias [Di] (use_conv_bias), mixer.x_proj.weight
// [R + 2N, Di], mixer.dt_proj.weight [Di, R], mixer.dt_proj.bias [Di],
// mixer.A_log [Di, N], mixer.D [Di], mixer.out_proj.weight [C, Di] (.bias with
// use_bias). Initialization as the reference (mamba_simple.Mamba /
// MambaPreTrainedModel._init_weights): A_log = log(1..N) per channel, D = 1,
// dt_proj.weight U(+-R^-0.5 * time_step_scale) (or that constant), dt_proj.bias
// = softplus^-1(dt) with dt = max(exp(U[ln dt_min, ln dt_max]), dt_floor);
// conv1d weight and bias U(+-1/sqrt(K)) (PyTorch's Conv1d default); in_proj,
// x_proj, out_proj N(0, initializer_range^2) and their biases 0. No weight
// decay on A_log, D and the biases. One deviation: HF's
// rescale_prenorm_residual (out_proj / sqrt(num_layers)) is not applied: a
// mixer does not know the layer count.
#include "nn/mamba/mamba_mixer.h"

#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "nn/mamba/mamba.h"

namespace mf {

namespace {

constexpr const char* kLimits =
    "Mamba is a causal recurrence (a causal depthwise conv and a selective scan from the first token on): decoder "
    "only, no bidirectional form; no key padding mask, because the conv and the scan state carry every earlier "
    "token, padding included, into all later ones (there is no per-key weight to zero)";

const MixerCapabilities kCaps{.causal = true, .bidirectional = false, .generation = true, .variable_length = true,
                              .padding = false};

struct MambaSavedState : MixerSaved {
  MambaSaved s;
  void tensors(std::vector<const Tensor*>& out) const override {
    for (const Tensor* t : s.tensors()) out.push_back(t);
  }
};

struct MambaGenerationState : MixerState {
  MambaCache cache;
  explicit MambaGenerationState(MambaCache c) : cache(std::move(c)) {}
  std::int64_t bytes() const override {
    return static_cast<std::int64_t>(cache.conv.nbytes() + cache.ssm.nbytes());
  }
  void reset() override {
    cache.conv.fill(0.0f);
    cache.ssm.fill(0.0f);
  }
};

class MambaMixer final : public TokenMixer {
 public:
  MambaMixer(const MixerContext& ctx, ParamStore& store) : TokenMixer("mamba", kCaps, kLimits) {
    const nlohmann::json& o = ctx.options;
    const std::int64_t c = ctx.hidden_size;
    p_.hidden = c;
    p_.inner = o.at("expand").get<std::int64_t>() * c;
    p_.state_size = o.at("state_size").get<std::int64_t>();
    p_.conv_kernel = o.at("conv_kernel").get<std::int64_t>();
    const std::int64_t rank = o.at("time_step_rank").get<std::int64_t>();
    p_.dt_rank = rank > 0 ? rank : (c + 15) / 16;
    p_.chunk_len = o.at("chunk_len").get<std::int64_t>();
    const double dt_min = o.at("time_step_min").get<double>(), dt_max = o.at("time_step_max").get<double>();
    const double dt_floor = o.at("time_step_floor").get<double>(), dt_scale = o.at("time_step_scale").get<double>();
    MF_CHECK(dt_min <= dt_max, "[mamba] option 'time_step_min' (", dt_min, ") exceeds 'time_step_max' (", dt_max,
             ")");
    const bool use_bias = o.at("use_bias").get<bool>(), conv_bias = o.at("use_conv_bias").get<bool>();
    const bool constant_dt = o.at("time_step_init_scheme").get<std::string>() == "constant";
    const std::int64_t di = p_.inner, n = p_.state_size, k = p_.conv_kernel, r = p_.dt_rank;

    p_.in_proj = store.add("mixer.in_proj.weight", {2 * di, c}, ParamInit::Normal, true);
    if (use_bias) p_.in_proj_bias = store.add("mixer.in_proj.bias", {2 * di}, ParamInit::Zeros, false);
    const float conv_bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(k)));
    const ParamInitFn conv_init = [conv_bound](Tensor& v, std::uint64_t seed, std::uint64_t stream) {
      fill_uniform(v, seed, -conv_bound, conv_bound, stream);
    };
    p_.conv_weight = store.add_custom("mixer.conv1d.weight", {di, 1, k}, conv_init, true);
    if (conv_bias) p_.conv_bias = store.add_custom("mixer.conv1d.bias", {di}, conv_init, false);
    p_.x_proj = store.add("mixer.x_proj.weight", {r + 2 * n, di}, ParamInit::Normal, true);
    const float dt_std = static_cast<float>(dt_scale / std::sqrt(static_cast<double>(r)));
    p_.dt_proj = store.add_custom(
        "mixer.dt_proj.weight", {di, r},
        [dt_std, constant_dt](Tensor& v, std::uint64_t seed, std::uint64_t stream) {
          if (constant_dt)
            v.fill(dt_std);
          else
            fill_uniform(v, seed, -dt_std, dt_std, stream);
        },
        true);
    p_.dt_bias = store.add_custom(
        "mixer.dt_proj.bias", {di},
        [dt_min, dt_max, dt_floor](Tensor& v, std::uint64_t seed, std::uint64_t stream) {
          float* out = v.data<float>();
          for (std::int64_t i = 0; i < v.numel(); ++i) {
            const double u = rng_uniform(seed, stream, static_cast<std::uint64_t>(i));
            double dt = std::exp(u * (std::log(dt_max) - std::log(dt_min)) + std::log(dt_min));
            dt = std::max(dt, dt_floor);
            out[i] = static_cast<float>(dt + std::log(-std::expm1(-dt)));  // softplus(out) = dt
          }
        },
        false);
    p_.a_log = store.add_custom(
        "mixer.A_log", {di, n},
        [](Tensor& v, std::uint64_t, std::uint64_t) {
          const std::int64_t cols = v.size(1);
          float* out = v.data<float>();
          for (std::int64_t i = 0; i < v.numel(); ++i) out[i] = static_cast<float>(std::log(double(i % cols + 1)));
        },
        false);
    p_.d_skip = store.add_custom(
        "mixer.D", {di}, [](Tensor& v, std::uint64_t, std::uint64_t) { v.fill(1.0f); }, false);
    p_.out_proj = store.add("mixer.out_proj.weight", {c, di}, ParamInit::Normal, true);
    if (use_bias) p_.out_proj_bias = store.add("mixer.out_proj.bias", {c}, ParamInit::Zeros, false);
  }

  std::unique_ptr<MixerSaved> forward(const Tensor& y, const Tensor& x, const MixerCall& call,
                                      bool for_backward) override {
    check_call(call);
    auto* state = static_cast<MambaGenerationState*>(call.state);
    MF_CHECK(!(state && for_backward), "[mamba] a forward that continues a generation state is inference only");
    if (!for_backward) {
      mamba_forward(y, nullptr, x, call.batch, call.seq_len, p_, state ? &state->cache : nullptr);
      return nullptr;
    }
    auto saved = std::make_unique<MambaSavedState>();
    mamba_forward(y, &saved->s, x, call.batch, call.seq_len, p_, nullptr);
    return saved;
  }

  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MixerSaved& saved,
                const MixerCall& call) override {
    mamba_backward(dx, dy, x, static_cast<const MambaSavedState&>(saved).s, call.batch, call.seq_len, p_);
  }

  std::unique_ptr<MixerState> new_state(const GenerationOptions& opt) const override {
    // The state has a fixed size: the capacity (context length) does not matter.
    return std::make_unique<MambaGenerationState>(mamba_new_cache(p_, opt.batch));
  }

 private:
  MambaParams p_;
};

}  // namespace

TokenMixerEntry mamba_mixer_entry() {
  return {"mamba",
          "Mamba (Gu & Dao 2023): in_proj to x and gate z, causal depthwise conv + SiLU, input-dependent (Delta, B, "
          "C), selective scan s_t = exp(Delta A) s_{t-1} + Delta B x_t, y = C s + D x, gated by SiLU(z); O(L), "
          "constant-size generation state",
          kCaps,
          kLimits,
          {int_option("state_size", 16, 1, 1024, "N, the SSM state per channel"),
           int_option("expand", 2, 1, 64, "inner width Di = expand x hidden_size"),
           int_option("conv_kernel", 4, 1, 64, "K, the causal depthwise conv's width"),
           int_option("time_step_rank", 0, 0, std::int64_t{1} << 20, "R, the rank of Delta's projection; 0: "
                      "ceil(hidden_size / 16)"),
           bool_option("use_bias", false, "biases on in_proj and out_proj"),
           bool_option("use_conv_bias", true, "a bias on the conv"),
           number_option("time_step_min", 0.001, 1e-12, 1e6, "init: smallest initial Delta"),
           number_option("time_step_max", 0.1, 1e-12, 1e6, "init: largest initial Delta"),
           number_option("time_step_floor", 1e-4, 0.0, 1e6, "init: initial Delta clamped to at least this"),
           number_option("time_step_scale", 1.0, 0.0, 1e6, "init: dt_proj.weight bound R^-0.5 x this"),
           choice_option("time_step_init_scheme", "random", {"random", "constant"},
                         "init of dt_proj.weight: uniform in +-bound, or the bound"),
           int_option("chunk_len", 64, 1, std::int64_t{1} << 20,
                      "scan steps between the states kept for the backward (memory/speed only, never the math)")},
          [](const MixerContext& ctx, ParamStore& store) -> std::unique_ptr<TokenMixer> {
            return std::make_unique<MambaMixer>(ctx, store);
          }};
}

}  // namespace mf
