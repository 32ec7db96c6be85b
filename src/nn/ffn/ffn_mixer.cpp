// Adapter from the FFN front door (ffn.h) to the channel-mixer interface.
#include "nn/ffn/ffn_mixer.h"

#include "core/error.h"

namespace mf {

namespace {

struct FfnSavedState : MixerSaved {
  FfnSaved s;
  void tensors(std::vector<const Tensor*>& out) const override {
    out.push_back(&s.gate);
    out.push_back(&s.up);
  }
};

class FfnMixer final : public ChannelMixer {
 public:
  FfnMixer(const std::string& name, FfnKind kind, const MixerContext& ctx, ParamStore& store) : ChannelMixer(name) {
    const std::int64_t c = ctx.hidden_size, i = ctx.intermediate_size;
    p_.kind = kind;
    p_.act = ctx.hidden_act;
    p_.chunk_size = ctx.ffn_chunk_size;
    auto linear = [&](const char* proj, std::int64_t rows, std::int64_t cols, Parameter** w, Parameter** b) {
      const std::string base = std::string("mlp.") + proj;
      *w = store.add(base + ".weight", {rows, cols}, ParamInit::Normal, true);
      if (ctx.mlp_bias) *b = store.add(base + ".bias", {rows}, ParamInit::Zeros, false);
    };
    if (kind != FfnKind::MLP) linear("gate_proj", i, c, &p_.gate, &p_.gate_bias);
    linear("up_proj", i, c, &p_.up, &p_.up_bias);
    linear("down_proj", c, i, &p_.down, &p_.down_bias);
    ffn_check_params(p_);
  }

  std::unique_ptr<MixerSaved> forward(const Tensor& y, const Tensor& x, bool for_backward) override {
    auto saved = std::make_unique<FfnSavedState>();
    ffn_forward(y, saved->s, x, p_);
    if (!for_backward) return nullptr;
    return saved;
  }

  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MixerSaved& saved) override {
    ffn_backward(dx, dy, x, static_cast<const FfnSavedState&>(saved).s, p_);
  }

  void set_chunk_size(std::int64_t rows) override {
    MF_CHECK(rows >= 0, "[", name(), "] ffn_chunk_size must be >= 0 but is ", rows);
    p_.chunk_size = rows;
  }

 private:
  FfnParams p_;
};

ChannelMixerEntry entry(const char* name, FfnKind kind, const char* summary) {
  return {name, summary, {}, [name, kind](const MixerContext& ctx, ParamStore& store) -> std::unique_ptr<ChannelMixer> {
            return std::make_unique<FfnMixer>(name, kind, ctx, store);
          }};
}

}  // namespace

ChannelMixerEntry swiglu_mixer_entry() {
  return entry("swiglu", FfnKind::SwiGLU, "SiLU(x Wg^T) * (x Wu^T), then Wd (Shazeer 2020; Llama)");
}
ChannelMixerEntry geglu_mixer_entry() {
  return entry("geglu", FfnKind::GeGLU, "GELU(x Wg^T) * (x Wu^T), then Wd (Shazeer 2020; Gemma)");
}
ChannelMixerEntry mlp_mixer_entry() {
  return entry("mlp", FfnKind::MLP, "act(x Wu^T) Wd^T with hidden_act (Vaswani et al. 2017; GPT-2, BERT)");
}

}  // namespace mf
