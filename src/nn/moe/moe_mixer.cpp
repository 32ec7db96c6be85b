// Adapter from the MoE layer (moe.h) to the channel-mixer interface, with
// Hugging Face's option names (Mixtral: num_local_experts,
// num_experts_per_tok, router_aux_loss_coef; DeepSeek: n_routed_experts,
// n_shared_experts, moe_intermediate_size, routed_scaling_factor,
// norm_topk_prob, first_k_dense_replace). Checkpoint names, by param_names:
//   "mlp" (DeepSeek's):  mlp.gate.weight [E, C], mlp.gate_noise.weight [E, C] (noisy_topk),
//                        mlp.experts.N.{gate,up,down}_proj.weight, mlp.shared_experts.{gate,up,down}_proj.weight
//   "block_sparse_moe" (Mixtral's): block_sparse_moe.gate.weight, block_sparse_moe.experts.N.{w1,w3,w2}.weight
//                        (w1 = gate, w3 = up, w2 = down), block_sparse_moe.shared_experts.{w1,w3,w2}.weight
// Layers below first_k_dense_replace are DeepSeek's dense layers: the plain
// FFN of the expert kind, intermediate_size wide, under mlp.{gate,up,down}_proj.
// noisy_topk's noise is drawn in training mode only (set_training: the
// model's loss with gradients), element (t, e) the
// Philox normal of (model seed, stream of the noise weight = the layer, step).
#include "nn/moe/moe_mixer.h"

#include "core/error.h"
#include "core/rng.h"
#include "nn/ffn/ffn_mixer.h"
#include "nn/moe/moe.h"

namespace mf {

namespace {

struct MoeSavedState : MixerSaved {
  MoeSaved s;
  void tensors(std::vector<const Tensor*>& out) const override {
    for (const Tensor* t : {&s.router.logits, &s.router.noise_logits, &s.router.noise, &s.router.probs, &s.grouped_in,
                            &s.grouped_out, &s.shared.gate, &s.shared.up})
      if (t->defined()) out.push_back(t);
    for (const FfnSaved& f : s.experts)
      for (const Tensor* t : {&f.gate, &f.up})
        if (t->defined()) out.push_back(t);
  }
};

FfnKind expert_kind(const std::string& name) {
  return name == "swiglu" ? FfnKind::SwiGLU : name == "geglu" ? FfnKind::GeGLU : FfnKind::MLP;
}

class MoeMixer final : public ChannelMixer {
 public:
  MoeMixer(const MixerContext& ctx, ParamStore& store) : ChannelMixer("moe") {
    const nlohmann::json& o = ctx.options;
    const std::string pre = str_cat("[moe] layer ", ctx.layer, ": ");
    const std::int64_t local = o.at("num_local_experts"), routed = o.at("n_routed_experts");
    MF_CHECK(local == 0 || routed == 0 || local == routed, pre, "options 'num_local_experts' (", local,
             ") and 'n_routed_experts' (", routed, ") name the same number; give one");
    RouterOptions& r = p_.router;
    r.num_experts = routed > 0 ? routed : local > 0 ? local : 8;
    r.top_k = o.at("num_experts_per_tok");
    r.kind = parse_router_kind(o.at("router"), pre);
    r.norm_topk_prob = o.at("norm_topk_prob");
    r.routed_scaling_factor = o.at("routed_scaling_factor");
    r.capacity_factor = o.at("capacity_factor");
    r.aux_loss_coef = o.at("router_aux_loss_coef");
    r.z_loss_coef = o.at("router_z_loss_coef");
    r.validate(pre);
    const FfnKind kind = expert_kind(o.at("expert"));
    MF_CHECK(kind != FfnKind::SwiGLU || ctx.hidden_act == Activation::SiLU, pre,
             "option 'expert' \"swiglu\" needs hidden_act \"silu\" (use \"geglu\" or \"mlp\" experts otherwise)");
    MF_CHECK(kind != FfnKind::GeGLU || ctx.hidden_act != Activation::SiLU, pre,
             "option 'expert' \"geglu\" needs hidden_act \"gelu\" or \"gelu_pytorch_tanh\"");
    const bool mixtral = o.at("param_names") == "block_sparse_moe";
    const std::string base = mixtral ? "block_sparse_moe." : "mlp.";
    const std::int64_t c = ctx.hidden_size, e = r.num_experts;
    const std::int64_t width = o.at("moe_intermediate_size").get<std::int64_t>() > 0
                                   ? o.at("moe_intermediate_size").get<std::int64_t>()
                                   : ctx.intermediate_size;
    p_.gate = store.add(base + "gate.weight", {e, c}, ParamInit::Normal, true);
    if (r.kind == RouterKind::NoisyTopK)  // zeros (noise scale softplus(0) = ln 2 at the start); the init
                                            // also hands over the (seed, stream) the noise is drawn from
      p_.gate_noise = store.add_custom(
          base + "gate_noise.weight", {e, c},
          [this](Tensor& v, std::uint64_t seed, std::uint64_t stream) {
            v.fill(0.0f);
            noise_seed_ = seed;
            noise_stream_ = stream;
          },
          true);
    auto ffn = [&](const std::string& prefix, std::int64_t inter) {
      FfnParams f;
      f.kind = kind;
      f.act = ctx.hidden_act;
      f.chunk_size = ctx.ffn_chunk_size;
      auto linear = [&](const char* hf, const char* mx, std::int64_t rows, std::int64_t cols, Parameter** w,
                        Parameter** b) {
        const std::string name = prefix + (mixtral ? mx : hf);
        *w = store.add(name + ".weight", {rows, cols}, ParamInit::Normal, true);
        if (ctx.mlp_bias) *b = store.add(name + ".bias", {rows}, ParamInit::Zeros, false);
      };
      if (kind != FfnKind::MLP) linear("gate_proj", "w1", inter, c, &f.gate, &f.gate_bias);
      linear("up_proj", "w3", inter, c, &f.up, &f.up_bias);
      linear("down_proj", "w2", c, inter, &f.down, &f.down_bias);
      return f;
    };
    for (std::int64_t i = 0; i < e; ++i) p_.experts.push_back(ffn(str_cat(base, "experts.", i, "."), width));
    const std::int64_t shared = o.at("n_shared_experts");
    if (shared > 0) p_.shared = ffn(base + "shared_experts.", shared * width);
    moe_check_params(p_);
  }

  std::unique_ptr<MixerSaved> forward(const Tensor& y, const Tensor& x, bool for_backward) override {
    auto saved = std::make_unique<MoeSavedState>();
    Tensor noise;
    if (p_.router.kind == RouterKind::NoisyTopK && training_) {  // noise in training only
      noise = Tensor::empty({x.size(0), p_.router.num_experts});
      fill_normal(noise, noise_seed_, 0.0f, 1.0f,
                  (std::uint64_t{1} << 63) | (noise_stream_ << 32) | (static_cast<std::uint64_t>(step_) & 0xffffffffu));
    }
    moe_forward(y, saved->s, x, p_, noise);
    if (training_) record(saved->s.router);
    if (!for_backward) return nullptr;
    return saved;
  }

  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MixerSaved& saved) override {
    moe_backward(dx, dy, x, static_cast<const MoeSavedState&>(saved).s, p_);
  }

  void set_chunk_size(std::int64_t rows) override {
    MF_CHECK(rows >= 0, "[moe] ffn_chunk_size must be >= 0 but is ", rows);
    for (FfnParams& f : p_.experts) f.chunk_size = rows;
    if (p_.has_shared()) p_.shared.chunk_size = rows;
  }

  void begin_training_step(std::int64_t step) override { step_ = step; }
  void set_training(bool on) override { training_ = on; }
  double aux_loss() const override { return aux_loss_; }
  nlohmann::json aux_metrics() const override { return metrics_; }

 private:
  // The statistics of a training forward: losses, each expert's kept
  // assignments and the dropped ones as shares of all N * k assignments
  // (they sum to 1).
  void record(const RouterSaved& r) {
    aux_loss_ = r.balance_loss + r.z_loss;
    const double assignments = static_cast<double>(r.tokens * p_.router.top_k);
    std::vector<double> load;
    for (std::int64_t l : r.load) load.push_back(assignments > 0 ? static_cast<double>(l) / assignments : 0.0);
    metrics_ = {{"balance_loss", r.balance_loss},
                {"z_loss", r.z_loss},
                {"load", load},
                {"dropped_fraction", assignments > 0 ? static_cast<double>(r.dropped) / assignments : 0.0}};
  }

  MoeParams p_;
  std::int64_t step_ = 0;
  bool training_ = false;
  std::uint64_t noise_seed_ = 0, noise_stream_ = 0;
  double aux_loss_ = 0;
  nlohmann::json metrics_ = nlohmann::json::object();
};

std::vector<OptionSpec> moe_options() {
  constexpr std::int64_t kMaxExperts = 1 << 16, kMaxWidth = std::int64_t{1} << 20;
  return {
      int_option("num_local_experts", 0, 0, kMaxExperts,
                 "routed experts (Mixtral's name; 0: n_routed_experts, or 8 when both are 0)"),
      int_option("n_routed_experts", 0, 0, kMaxExperts, "routed experts (DeepSeek's name for num_local_experts)"),
      int_option("num_experts_per_tok", 2, 1, kMaxExperts, "experts per token (top-k)"),
      choice_option("router", "softmax_topk", {"softmax_topk", "switch", "noisy_topk", "deepseek"},
                    "softmax_topk (Mixtral), switch (top-1, Fedus et al.), noisy_topk (Shazeer et al. 2017), "
                    "deepseek (softmax top-k, scaling, shared experts)"),
      number_option("capacity_factor", 0.0, 0.0, 1e6,
                    "each expert takes at most ceil(f * k * tokens / experts) assignments (0: no limit); the "
                    "overflow skips the layer through the residual"),
      int_option("moe_intermediate_size", 0, 0, kMaxWidth, "each expert's width (0: intermediate_size)"),
      int_option("n_shared_experts", 0, 0, kMaxExperts,
                 "DeepSeek's always-on shared experts: one FFN n_shared_experts * moe_intermediate_size wide"),
      number_option("routed_scaling_factor", 1.0, 1e-9, 1e9, "routed gate weights are multiplied by it"),
      bool_option("norm_topk_prob", true,
                  "renormalize the chosen experts' probabilities to sum 1 (softmax_topk, deepseek with k > 1)"),
      number_option("router_aux_loss_coef", 0.0, 0.0, 1e6,
                    "alpha of the load-balancing loss alpha * E * sum_i f_i P_i (Mixtral's default 0.001)"),
      number_option("router_z_loss_coef", 0.0, 0.0, 1e6,
                    "beta of the router z-loss beta * mean (logsumexp logits)^2 (ST-MoE uses 0.001)"),
      choice_option("expert", "swiglu", {"swiglu", "geglu", "mlp"}, "the experts' FFN kind"),
      int_option("first_k_dense_replace", 0, 0, 1 << 16,
                 "layers below it use one dense FFN (intermediate_size wide) instead of experts (DeepSeek)"),
      choice_option("param_names", "mlp", {"mlp", "block_sparse_moe"},
                    "checkpoint names: DeepSeek's mlp.gate / mlp.experts.N.*_proj, or Mixtral's "
                    "block_sparse_moe.gate / experts.N.w1,w2,w3"),
  };
}

}  // namespace

ChannelMixerEntry moe_mixer_entry() {
  return {"moe",
          "sparse mixture of experts: softmax top-k (Mixtral), Switch with capacity, noisy top-k, DeepSeek shared + "
          "routed experts; load-balancing and z losses",
          moe_options(), [](const MixerContext& ctx, ParamStore& store) -> std::unique_ptr<ChannelMixer> {
            if (ctx.layer < ctx.options.at("first_k_dense_replace").get<std::int64_t>()) {
              const std::string kind = ctx.options.at("expert");
              const ChannelMixerEntry dense = kind == "swiglu"  ? swiglu_mixer_entry()
                                              : kind == "geglu" ? geglu_mixer_entry()
                                                                : mlp_mixer_entry();
              return dense.make(ctx, store);
            }
            return std::make_unique<MoeMixer>(ctx, store);
          }};
}

}  // namespace mf
