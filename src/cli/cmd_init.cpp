// `modformer init --config CONFIG.json --out DIR [--seed S]`: writes a freshly
// initialized checkpoint (DIR/config.json + DIR/model.safetensors). Without
// --config, the built-in default Llama-style config.
#include <iostream>
#include <memory>

#include "cli/command.h"
#include "model/checkpoint.h"

namespace {

struct InitArgs {
  std::string config, out;
  std::uint64_t seed = 0;
};

int run_init(const InitArgs& a) {
  const mf::ModelConfig cfg = a.config.empty() ? mf::default_config() : mf::load_config(a.config);
  mf::Transformer model(cfg, a.seed);
  mf::save_checkpoint(a.out, model);
  std::cout << "wrote " << a.out << "/config.json and " << a.out << "/model.safetensors: model_type "
            << cfg.model_type << ", " << cfg.num_hidden_layers << " layers, hidden " << cfg.hidden_size << ", "
            << model.num_parameters() << " parameters, seed " << a.seed << "\n";
  return 0;
}

std::function<int()> setup_init(CLI::App& app) {
  auto a = std::make_shared<InitArgs>();
  app.add_option("--config", a->config, "Model config JSON (default: the built-in Llama-style config)")
      ->check(CLI::ExistingFile);
  app.add_option("--out", a->out, "Checkpoint folder to write (created if missing)")->required();
  app.add_option("--seed", a->seed, "Initialization seed (default 0)");
  return [a] { return run_init(*a); };
}

}  // namespace

MF_REGISTER_COMMAND("init", "Write a freshly initialized model checkpoint (config.json + model.safetensors)",
                    setup_init);
