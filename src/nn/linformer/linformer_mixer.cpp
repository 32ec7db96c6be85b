// Adapter from the Linformer sublayer (linformer.h) to the token-mixer
// interface. Checkpoint names: self_attn.{q,k,v,o}_proj.weight (.bias with
// attention_bias), the projections self_attn.E and self_attn.F (one E = F
// for sharing "kv"; sharing "layerwise": one model-level model.linformer.E
// for every layer). E and F are drawn N(0, 1/k) as in the paper (E = delta A,
// A ~ N(0, 1/k)); convolution kernels N(0, 1/(D s)) (fan-in).
#include "nn/linformer/linformer_mixer.h"

#include <cmath>
#include <tuple>

#include "core/error.h"
#include "core/rng.h"
#include "nn/linformer/linformer.h"

namespace mf {

namespace {

constexpr const char* kLimits =
    "Linformer projects keys and values along the whole sequence, so every output sees every position: encoder "
    "only, no causal form and no generation; sequences may not exceed max_len";

const MixerCapabilities kCaps{.causal = false, .bidirectional = true, .generation = false, .variable_length = true,
                              .padding = true};

struct LinformerSavedState : MixerSaved {
  LinformerSaved s;
  void tensors(std::vector<const Tensor*>& out) const override {
    for (const Tensor* t : s.tensors()) out.push_back(t);
  }
};

class LinformerMixer final : public TokenMixer {
 public:
  LinformerMixer(const MixerContext& ctx, ParamStore& store) : TokenMixer("linformer", kCaps, kLimits) {
    const nlohmann::json& o = ctx.options;
    p_.num_heads = ctx.num_heads;
    p_.num_kv_heads = ctx.num_kv_heads;
    p_.head_dim = ctx.head_dim;
    const std::int64_t max_len = o.at("max_len").get<std::int64_t>();
    p_.max_len = max_len > 0 ? max_len : ctx.max_position_embeddings;
    p_.proj_len = o.at("k").get<std::int64_t>();
    MF_CHECK(p_.proj_len <= p_.max_len, "[linformer] option 'k' (", p_.proj_len, ") exceeds the sequence length n = ",
             p_.max_len, " (option 'max_len', or max_position_embeddings when 0)");
    const std::string proj = o.at("projection"), sharing = o.at("sharing");
    p_.projection = proj == "linear" ? LinformerProjection::Linear
                    : proj == "conv" ? LinformerProjection::Conv
                    : proj == "mean" ? LinformerProjection::Mean
                                     : LinformerProjection::Max;
    p_.sharing = sharing == "none"       ? LinformerSharing::None
                 : sharing == "headwise" ? LinformerSharing::Headwise
                 : sharing == "kv"       ? LinformerSharing::KeyValue
                                         : LinformerSharing::Layerwise;
    const std::int64_t c = ctx.hidden_size, qd = ctx.num_heads * ctx.head_dim, kd = ctx.num_kv_heads * ctx.head_dim;
    for (auto [slot, bias, name, rows, cols] :
         {std::tuple{&p_.q, &p_.q_bias, "q_proj", qd, c}, std::tuple{&p_.k, &p_.k_bias, "k_proj", kd, c},
          std::tuple{&p_.v, &p_.v_bias, "v_proj", kd, c}, std::tuple{&p_.o, &p_.o_bias, "o_proj", c, qd}}) {
      const std::string base = std::string("self_attn.") + name;
      *slot = store.add(base + ".weight", {rows, cols}, ParamInit::Normal, true);
      if (ctx.attention_bias) *bias = store.add(base + ".bias", {rows}, ParamInit::Zeros, false);
    }
    const bool conv = p_.projection == LinformerProjection::Conv;
    const double fan_in = conv ? static_cast<double>(p_.head_dim * (p_.max_len / p_.proj_len))
                               : static_cast<double>(p_.proj_len);
    const auto std_dev = static_cast<float>(1.0 / std::sqrt(fan_in));
    const ParamInitFn init = [std_dev](Tensor& v, std::uint64_t seed, std::uint64_t stream) {
      fill_normal(v, seed, 0.0f, std_dev, stream);
    };
    for (const auto& [role, shape] : linformer_projection_shapes(p_)) {
      Parameter* param = nullptr;
      if (p_.sharing == LinformerSharing::Layerwise) {
        param = store.shared("model.linformer.E", shape, init, true);
      } else {
        param = store.add_custom(role == "e" ? "self_attn.E" : "self_attn.F", shape, init, true);
      }
      (role == "e" ? p_.e : p_.f) = param;
    }
  }

  std::unique_ptr<MixerSaved> forward(const Tensor& y, const Tensor& x, const MixerCall& call,
                                      bool for_backward) override {
    check_call(call);
    auto saved = std::make_unique<LinformerSavedState>();
    linformer_forward(y, saved->s, x, call.batch, call.seq_len, call.key_padding_mask, p_);
    if (!for_backward) return nullptr;
    return saved;
  }

  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MixerSaved& saved,
                const MixerCall& call) override {
    linformer_backward(dx, dy, x, static_cast<const LinformerSavedState&>(saved).s, call.batch, call.seq_len,
                       call.key_padding_mask, p_);
  }

 private:
  LinformerParams p_;
};

}  // namespace

TokenMixerEntry linformer_mixer_entry() {
  return {"linformer",
          "Linformer (Wang et al. 2020): keys and values projected along the sequence from n to k rows (learnable "
          "E/F, strided convolution, mean or max pooling), then exact attention over the k rows: O(n k)",
          kCaps,
          kLimits,
          {int_option("k", 128, 1, std::int64_t{1} << 20, "projected length k"),
           int_option("max_len", 0, 0, std::int64_t{1} << 24,
                      "n, the longest sequence (E and F have n columns; shorter calls use the first L); 0: "
                      "max_position_embeddings"),
           choice_option("sharing", "headwise", {"none", "headwise", "kv", "layerwise"},
                         "none: E, F per KV head; headwise: one E and one F for all heads; kv: one E = F; "
                         "layerwise: one E for every layer"),
           choice_option("projection", "linear", {"linear", "conv", "mean", "max"},
                         "linear: learnable E, F [k, n]; conv: strided conv, kernel = stride = n/k; mean, max: "
                         "pooling with kernel = stride = n/k (no parameters)")},
          [](const MixerContext& ctx, ParamStore& store) -> std::unique_ptr<TokenMixer> {
            return std::make_unique<LinformerMixer>(ctx, store);
          }};
}

}  // namespace mf
