// `modformer mixer`: one token-mixer layer on .npy files, forward and
// optionally backward, so that any other implementation can be checked
// against ours; `--init` writes freshly initialized parameters. MIXER.json
// uses the model config's field names ({"token_mixer": NAME, "hidden_size":
// C, "num_attention_heads": H, ..., NAME: {its options}}); every parameter,
// including any random projection a mechanism draws, is read from
// P.safetensors under its checkpoint name relative to the layer
// ("self_attn.q_proj.weight"). `modformer mixers` lists them all.
#include <iostream>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/npy.h"
#include "core/safetensors.h"
#include "model/transformer.h"
#include "nn/mixer/mixer_registry.h"

namespace {

constexpr const char* kOp = "[mixer]";

struct MixerArgs {
  std::string config, params, x, out, padding_mask, dy, grads;
  bool causal = false, init = false;
  std::uint64_t seed = 0;
};

// The model config of a one-layer model around the mixer: MIXER.json's fields
// plus what a model needs and a lone mixer does not (vocabulary, FFN width),
// is_decoder from --causal.
mf::ModelConfig mixer_config(const std::string& path, bool causal) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(mf::read_file(path));
  } catch (const nlohmann::json::parse_error& e) {
    mf::fail(kOp, " ", path, ": invalid JSON: ", e.what());
  }
  MF_CHECK(j.is_object(), kOp, " ", path, ": must be a JSON object");
  MF_CHECK(j.contains("token_mixer") && j["token_mixer"].is_string(), kOp, " ", path,
           ": field 'token_mixer' (a string naming the mixer) is required; known: ", mf::token_mixer_names());
  const mf::TokenMixerEntry& e = mf::token_mixer_entry(j["token_mixer"].get<std::string>(), mf::str_cat(kOp, " ", path, ": "));
  const std::string why = e.limits.empty() ? std::string() : " (" + e.limits + ")";
  MF_CHECK(!causal || e.caps.causal, kOp, " mixer \"", e.name, "\" cannot run causally (--causal)", why);
  MF_CHECK(causal || e.caps.bidirectional, kOp, " mixer \"", e.name,
           "\" cannot run bidirectionally (give --causal)", why);
  // Model-level fields that would contradict a one-layer run are refused;
  // vocab_size and num_hidden_layers (a whole model config) are accepted and unused.
  for (const char* f : {"layer_types", "is_decoder", "num_labels"})
    MF_CHECK(!j.contains(f), kOp, " ", path, ": field '", f,
             "' describes a model, not one mixer layer (causality comes from --causal)");
  j["model_type"] = "modformer";
  j["vocab_size"] = 256;
  j["num_hidden_layers"] = 1;
  if (!j.contains("intermediate_size")) j["intermediate_size"] = 8;
  j["is_decoder"] = causal;
  if (!causal) j["num_labels"] = 2;
  return mf::config_from_json(j, path);
}

mf::Tensor load_f32(const std::string& path, const char* flag) {
  mf::Tensor t = mf::load_npy(path);
  MF_CHECK(t.dtype() == mf::DType::F32, kOp, " ", flag, " ", path, " must hold float32 but holds ",
           mf::dtype_name(t.dtype()));
  return t;
}

int run_mixer(const MixerArgs& a) {
  const mf::ModelConfig cfg = mixer_config(a.config, a.causal);
  const std::string name = cfg.layer_mixer(0);
  std::unique_ptr<mf::RopeTable> rope;
  if (cfg.uses_rope()) rope = std::make_unique<mf::RopeTable>(mf::rope_config(cfg), cfg.max_position_embeddings);
  mf::ParamList params(a.seed, cfg.initializer_range);
  const std::unique_ptr<mf::TokenMixer> mixer =
      mf::token_mixer_entry(name).make(mf::mixer_context(cfg, 0, name, rope.get()), params);

  if (a.init) {
    MF_CHECK(a.x.empty() && a.params.empty() && a.dy.empty(), kOp,
             " --init writes fresh parameters only (no --x, --params or --dy)");
    std::vector<std::pair<std::string, mf::Tensor>> out;
    for (const auto& p : params.all()) out.emplace_back(p->name, p->value);
    mf::save_safetensors(a.out, out, {{"format", "pt"}, {"producer", "modformer"}, {"mixer", name}});
    std::cout << "wrote " << out.size() << " parameter(s) of mixer \"" << name << "\" to " << a.out << "\n";
    return 0;
  }
  MF_CHECK(!a.x.empty(), kOp, " --x X.npy is required (or --init to write parameters)");
  if (!a.params.empty()) {
    const mf::SafetensorsContents st = mf::load_safetensors(a.params);
    for (const auto& p : params.all()) {
      const auto it = st.tensors.find(p->name);
      MF_CHECK(it != st.tensors.end(), kOp, " ", a.params, " has no tensor '", p->name, "' (mixer \"", name,
               "\" needs it with shape ", mf::shape_str(p->value.shape()), ")");
      MF_CHECK(it->second.dtype() == mf::DType::F32, kOp, " ", a.params, ": tensor '", p->name,
               "' must be float32 but is ", mf::dtype_name(it->second.dtype()));
      MF_CHECK(it->second.shape() == p->value.shape(), kOp, " ", a.params, ": tensor '", p->name, "' has shape ",
               mf::shape_str(it->second.shape()), " but mixer \"", name, "\" needs ", mf::shape_str(p->value.shape()));
      p->value.copy_from(it->second);
    }
    for (const auto& [tname, t] : st.tensors)
      MF_CHECK(params.find(tname) != nullptr, kOp, " ", a.params, ": unexpected tensor '", tname, "' (mixer \"",
               name, "\" has no such parameter)");
  } else {
    std::cerr << "no --params: using fresh parameters from --seed " << a.seed << "\n";
  }

  const mf::Tensor x = load_f32(a.x, "--x");
  MF_CHECK(x.dim() == 3 && x.size(2) == cfg.hidden_size && x.size(0) >= 1 && x.size(1) >= 1, kOp, " --x ", a.x,
           " must be [B, L, ", cfg.hidden_size, "] (hidden_size) but is ", mf::shape_str(x.shape()));
  const std::int64_t B = x.size(0), L = x.size(1), C = x.size(2);
  mf::MixerCall call;
  call.batch = B;
  call.seq_len = L;
  call.causal = a.causal;
  if (!a.padding_mask.empty()) {
    mf::Tensor m = mf::load_npy(a.padding_mask);
    MF_CHECK(m.dtype() == mf::DType::I32 || m.dtype() == mf::DType::I64, kOp, " --padding-mask ", a.padding_mask,
             " must hold int32 or int64 but holds ", mf::dtype_name(m.dtype()));
    MF_CHECK(m.shape() == mf::Shape({B, L}), kOp, " --padding-mask ", a.padding_mask, " must be [", B, ", ", L,
             "] but is ", mf::shape_str(m.shape()));
    call.key_padding_mask = m.dtype() == mf::DType::I32 ? m.contiguous() : m.to(mf::DType::I32);
  }
  const mf::Tensor xr = x.contiguous().reshape({B * L, C});
  mf::Tensor y = mf::Tensor::empty({B * L, C});
  const bool backward = !a.dy.empty();
  MF_CHECK(backward == !a.grads.empty(), kOp, " --dy and --grads go together");
  const std::unique_ptr<mf::MixerSaved> saved = mixer->forward(y, xr, call, backward);
  mf::Tensor dx;
  if (backward) {
    const mf::Tensor dy = load_f32(a.dy, "--dy");
    MF_CHECK(dy.shape() == x.shape(), kOp, " --dy ", a.dy, " must have x's shape ", mf::shape_str(x.shape()),
             " but is ", mf::shape_str(dy.shape()));
    dx = mf::Tensor::empty({B * L, C});
    mixer->backward(dx, dy.contiguous().reshape({B * L, C}), xr, *saved, call);
  }
  // Write only after everything succeeded.
  mf::save_npy(a.out, y.reshape({B, L, C}));
  if (backward) {
    std::vector<std::pair<std::string, mf::Tensor>> g{{"x", dx.reshape({B, L, C})}};
    for (const auto& p : params.all()) g.emplace_back(p->name, p->grad);
    mf::save_safetensors(a.grads, g, {{"format", "pt"}, {"producer", "modformer"}, {"mixer", name}});
  }
  return 0;
}

std::function<int()> setup_mixer(CLI::App& app) {
  auto a = std::make_shared<MixerArgs>();
  app.description(
      "One token-mixer layer on .npy files: x [B, L, C] float32 -> y [B, L, C]; with --dy, the gradient of x "
      "(name 'x') and of every parameter (its own name) in a safetensors file. --init writes fresh parameters. "
      "MIXER.json: {\"token_mixer\": NAME, \"hidden_size\": C, \"num_attention_heads\": H, "
      "\"num_key_value_heads\": Hkv, \"head_dim\": D, NAME: {options}} with the model config's field names "
      "(`modformer mixers` lists the mixers, their options and parameters).");
  app.add_option("--config", a->config, "MIXER.json")->required()->check(CLI::ExistingFile);
  app.add_option("--params", a->params, "Parameters .safetensors (names as --init writes them)")
      ->check(CLI::ExistingFile);
  app.add_option("--x", a->x, "Input .npy [B, L, C] float32")->check(CLI::ExistingFile);
  app.add_option("--out", a->out, "Output: y .npy, or with --init the parameters .safetensors")->required();
  app.add_flag("--causal", a->causal, "Causal (decoder) use; default bidirectional (encoder)");
  app.add_option("--padding-mask", a->padding_mask, "int32 .npy [B, L]: 0 marks a padding token")
      ->check(CLI::ExistingFile);
  app.add_option("--dy", a->dy, "Gradient of y .npy [B, L, C] (runs the backward)")->check(CLI::ExistingFile);
  app.add_option("--grads", a->grads, "Write the gradients .safetensors (with --dy)");
  app.add_flag("--init", a->init, "Write freshly initialized parameters to --out");
  app.add_option("--seed", a->seed, "Seed of the initialization (Philox)");
  return [a] { return run_mixer(*a); };
}

// "name [shape], ..." of a mixer built for a sample width (hidden 64, 4 query
// heads of 16, 2 KV heads, sliding_window 8), default options.
std::string sample_parameters(const mf::TokenMixerEntry& e) {
  mf::ModelConfig c;
  c.model_type = "modformer";
  c.hidden_size = 64;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.sliding_window = 8;
  c.position = mf::PositionKind::None;
  try {
    mf::ParamList params(0, c.initializer_range);
    e.make(mf::mixer_context(c, 0, e.name, nullptr), params);
    std::string s;
    for (const auto& p : params.all())
      s += (s.empty() ? "" : ", ") + p->name + " " + mf::shape_str(p->value.shape()) +
           (p->trainable ? "" : " (buffer: saved, never trained)");
    return s.empty() ? "none" : s;
  } catch (const mf::Error& err) {
    return std::string("(needs options to show: ") + err.what() + ")";
  }
}

std::function<int()> setup_mixers(CLI::App& app) {
  app.description("Every registered token mixer and channel mixer: capabilities, options (with types, ranges and "
                  "defaults) and one-line summaries.");
  return [] {
    std::cout << "token mixers (model config: \"token_mixer\" or \"layer_types\"; options in an object under the "
                 "mixer's name):\n";
    for (const auto& e : mf::token_mixer_registry()) {
      std::cout << "\n  " << e.name << ": " << e.summary << "\n    supports: " << mf::capabilities_text(e.caps)
                << "\n";
      if (!e.limits.empty()) std::cout << "    limits: " << e.limits << "\n";
      std::cout << "    parameters (hidden 64, 4 heads of 16, 2 KV heads): " << sample_parameters(e) << "\n";
      if (e.options.empty()) std::cout << "    options: none\n";
      for (const auto& o : e.options)
        std::cout << "    option " << o.name << ": " << mf::describe_option(o) << ". " << o.help << "\n";
    }
    std::cout << "\nchannel mixers (model config: \"ffn\"):\n";
    for (const auto& e : mf::channel_mixer_registry()) {
      std::cout << "\n  " << e.name << ": " << e.summary << "\n";
      for (const auto& o : e.options)
        std::cout << "    option " << o.name << ": " << mf::describe_option(o) << ". " << o.help << "\n";
    }
    return 0;
  };
}

}  // namespace

MF_REGISTER_COMMAND("mixer", "Run one token-mixer layer forward/backward on .npy files, or write its parameters",
                    setup_mixer);
MF_REGISTER_COMMAND("mixers", "List every registered token and channel mixer with its options and capabilities",
                    setup_mixers);
