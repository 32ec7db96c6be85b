// Adapter from the multi-level attention sublayer (multilevel_attention.h) to
// the token-mixer interface. Checkpoint names are the attention mixer's:
// self_attn.{q,k,v,o}_proj.weight (.bias with attention_bias); the levels add
// no parameters. RoPE (the model's) rotates q and k before the pooling; ALiBi
// is refused; a key padding mask leaves padding out of every level (not with
// a generation state).
#include "nn/multilevel/multilevel_mixer.h"

#include "core/error.h"
#include "nn/attention/attention_mixer.h"

namespace mf {

namespace {

constexpr const char* kLimits = "generation is causal only and takes no key padding mask";

const MixerCapabilities kCaps{.causal = true, .bidirectional = true, .generation = true, .variable_length = true,
                              .padding = true};

// "8, 64" -> {8, 64}: integers >= 0 separated by commas.
std::vector<std::int64_t> parse_list(const std::string& text, const char* option) {
  std::vector<std::int64_t> out;
  if (text.find_first_not_of(' ') == std::string::npos) return out;  // "": no levels (refused by the geometry check)
  std::size_t at = 0;
  while (true) {
    while (at < text.size() && text[at] == ' ') ++at;
    std::size_t end = at;
    while (end < text.size() && text[end] >= '0' && text[end] <= '9') ++end;
    MF_CHECK(end > at && end - at <= 9, "[multilevel_attention] option '", option,
             "' must be a comma-separated list of non-negative integers (e.g. \"8,64\") but is \"", text, "\"");
    out.push_back(std::stoll(text.substr(at, end - at)));
    at = end;
    while (at < text.size() && text[at] == ' ') ++at;
    if (at == text.size()) break;
    MF_CHECK(text[at] == ',', "[multilevel_attention] option '", option,
             "' must be a comma-separated list of non-negative integers (e.g. \"8,64\") but is \"", text, "\"");
    ++at;
  }
  return out;
}

struct MultilevelSavedState : MixerSaved {
  MultilevelSaved s;
  void tensors(std::vector<const Tensor*>& out) const override {
    for (const Tensor* t : s.tensors()) out.push_back(t);
  }
};

struct MultilevelMixerState : MixerState {
  MultilevelState s;
  std::int64_t bytes() const override { return s.bytes(); }
  void reset() override { s.reset(); }
};

class MultilevelMixer final : public TokenMixer {
 public:
  MultilevelMixer(const MixerContext& ctx, ParamStore& store)
      : TokenMixer("multilevel_attention", kCaps, kLimits), max_positions_(ctx.max_position_embeddings) {
    MF_CHECK(!ctx.alibi, "[multilevel_attention] ALiBi is not supported (a pooled block has no single distance); "
                         "use RoPE or absolute positions");
    p_.geometry = multilevel_geometry_from_options(ctx.options);
    p_.num_heads = ctx.num_heads;
    p_.num_kv_heads = ctx.num_kv_heads;
    p_.head_dim = ctx.head_dim;
    add_attention_projections(store, ctx, {&p_.q, &p_.k, &p_.v, &p_.o, &p_.q_bias, &p_.k_bias, &p_.v_bias, &p_.o_bias});
    p_.rope = ctx.rope;
  }

  std::unique_ptr<MixerSaved> forward(const Tensor& y, const Tensor& x, const MixerCall& call,
                                      bool for_backward) override {
    check_call(call);
    auto* state = static_cast<MultilevelMixerState*>(call.state);
    if (state)
      MF_CHECK(call.past == state->s.past, "[multilevel_attention] the call continues at position ", call.past,
               " but the generation state holds ", state->s.past, " positions");
    auto saved = std::make_unique<MultilevelSavedState>();
    multilevel_forward(y, for_backward ? &saved->s : nullptr, x, call.batch, call.seq_len, call.causal,
                       state ? &state->s : nullptr, p_, call.key_padding_mask);
    if (!for_backward) return nullptr;
    return saved;
  }

  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MixerSaved& saved,
                const MixerCall& call) override {
    multilevel_backward(dx, dy, x, static_cast<const MultilevelSavedState&>(saved).s, call.batch, call.seq_len,
                        call.causal, p_, call.key_padding_mask);
  }

  std::unique_ptr<MixerState> new_state(const GenerationOptions& opt) const override {
    MF_CHECK(opt.capacity >= 0, "[multilevel_attention] capacity must be >= 0 (0: max_position_embeddings), got ",
             opt.capacity);
    auto st = std::make_unique<MultilevelMixerState>();
    st->s = multilevel_new_state(p_.geometry, opt.batch, p_.num_kv_heads, p_.head_dim,
                                 opt.capacity > 0 ? opt.capacity : max_positions_);
    return st;
  }

 private:
  MultilevelParams p_;
  std::int64_t max_positions_;
};

}  // namespace

MultilevelGeometry multilevel_geometry_from_options(const nlohmann::json& o) {
  MultilevelGeometry g;
  g.window = o.at("window").get<std::int64_t>();
  g.pool_sizes = parse_list(o.at("pool_sizes").get<std::string>(), "pool_sizes");
  g.level_windows = parse_list(o.at("level_windows").get<std::string>(), "level_windows");
  g.count_bias = o.at("count_bias").get<bool>();
  multilevel_check_geometry(g);
  return g;
}

TokenMixerEntry multilevel_attention_mixer_entry() {
  return {"multilevel_attention",
          "multi-level attention (the survey's MLA; not DeepSeek's): a window of w_0 tokens at full resolution plus "
          "mean-pooled blocks of p_1 < p_2 < ... tokens farther back (w_l blocks per level), one softmax, log(count) "
          "on pooled scores; O(L (w_0 + sum w_l)); ring-buffer generation state",
          kCaps,
          kLimits,
          {int_option("window", 64, 1, std::int64_t{1} << 24,
                      "w_0: positions seen at full resolution (the query and the w_0 - 1 before it; bidirectional: "
                      "and after), extended to the boundary of a p_1-block"),
           choice_option("pool_sizes", "8,64", {},
                         "p_1,p_2,...: positions per pooled block at each level, p_1 >= 2, each a multiple of the "
                         "previous"),
           choice_option("level_windows", "8,16", {},
                         "w_1,w_2,...: blocks seen at each pooled level (extended to the next level's block "
                         "boundary); the last may be 0 = every remaining block (then O(L^2 / p_n))"),
           bool_option("count_bias", true,
                       "add log(count) to a pooled block's score, so it weighs as its tokens would")},
          [](const MixerContext& ctx, ParamStore& store) -> std::unique_ptr<TokenMixer> {
            return std::make_unique<MultilevelMixer>(ctx, store);
          }};
}

}  // namespace mf
