// `modformer demo`: the main job on built-in defaults. Prints the build
// info, runs one exact-attention call with the flash and dense kernels
// (agreement and speed), trains the default Llama-style model on the default
// corpus (dict-gcide) for a few minutes, reports validation bits per byte and
// generates a sample with the KV cache.
#include <chrono>
#include <filesystem>
#include <iostream>

#include "cli/command.h"
#include "cli/info.h"
#include "core/rng.h"
#include "model/config.h"
#include "model/generate.h"
#include "model/transformer.h"
#include "nn/attention/attention.h"
#include "train/data.h"
#include "train/trainer.h"

namespace {

struct DemoArgs {
  std::string out;  // empty: the first of runs/demo, runs/demo-2, ... that holds no run
  std::int64_t steps = 400;  // 2 min 15 s on 2 quiet cores, validation 2.50 bits/byte (measured)
  std::int64_t sample_tokens = 300;
  std::string prompt = "The meaning of ";
  bool skip_train = false;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void attention_demo() {
  // GQA (8 query heads over 2 KV heads), causal, 2048 tokens, head dim 64.
  const mf::Tensor q = mf::randn({1, 8, 2048, 64}, 1), k = mf::randn({1, 2, 2048, 64}, 2),
                   v = mf::randn({1, 2, 2048, 64}, 3);
  mf::AttentionOptions opt;
  opt.causal = true;
  auto t0 = std::chrono::steady_clock::now();
  const mf::AttentionOutput flash = mf::attention_forward(q, k, v, opt, mf::AttentionImpl::Flash);
  const double t_flash = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  const mf::AttentionOutput dense = mf::attention_forward(q, k, v, opt, mf::AttentionImpl::Dense);
  const double t_dense = seconds_since(t0);
  std::cout << "\n== attention: q [1, 8, 2048, 64], k/v [1, 2, 2048, 64] (GQA 8/2), causal\n"
            << "flash " << t_flash * 1e3 << " ms, dense reference " << t_dense * 1e3 << " ms ("
            << t_dense / t_flash << "x); max |flash - dense| = " << mf::max_abs_diff(flash.out, dense.out)
            << " (output), " << mf::max_abs_diff(flash.lse, dense.lse) << " (log-sum-exp)\n";
}

int run_demo(const DemoArgs& a) {
  mf::cli::print_build_info(std::cout);
  attention_demo();
  if (a.skip_train) return 0;

  namespace fs = std::filesystem;
  std::string out = a.out;
  if (out.empty())  // running the demo again keeps the earlier runs
    for (int n = 1; out.empty() || fs::exists(fs::path(out) / "checkpoint"); ++n)
      out = n == 1 ? "runs/demo" : "runs/demo-" + std::to_string(n);
  mf::TrainConfig tc = mf::default_train_config();
  tc.steps = a.steps;
  tc.out_dir = out;
  mf::validate(tc);
  fs::create_directories(out);
  MF_CHECK(!fs::exists(fs::path(out) / "checkpoint"), "[demo] '", out,
           "' already holds a training run; remove it or pass another --out DIR");
  const mf::ModelConfig cfg = mf::default_config();
  mf::Transformer model(cfg, tc.seed);
  const mf::TextCorpus corpus = mf::TextCorpus::load(tc.data_path, tc.val_fraction);
  std::cout << "\n== training the default model (" << model.num_parameters() << " parameters: " << cfg.num_hidden_layers
            << " layers, hidden " << cfg.hidden_size << ", " << cfg.num_attention_heads << "/"
            << cfg.num_key_value_heads << " heads, RoPE, RMSNorm, SwiGLU, flash attention) on " << corpus.source
            << " for " << tc.steps << " steps\n"
            << std::flush;
  const mf::TrainResult r = mf::train(model, corpus, tc);
  std::cout << "validation: " << r.val.loss << " nats/byte = " << r.val.bpb << " bits per byte (" << r.val.tokens
            << " bytes); training " << static_cast<std::int64_t>(r.tokens_per_s) << " tokens/s\n"
            << "curve: " << out << "/loss.svg, metrics: " << out << "/metrics.jsonl, checkpoint: " << out
            << "/checkpoint\n";

  mf::GenerateOptions g;
  g.max_new_tokens = a.sample_tokens;
  g.sampling.temperature = 0.8f;
  g.sampling.top_k = 40;
  g.seed = 7;
  std::cout << "\n== sample (temperature 0.8, top-k 40)\n" << a.prompt << std::flush;
  const mf::GenerateResult gen = mf::generate(model, mf::byte_encode(a.prompt), g, [](std::int32_t t) {
    const char c = static_cast<char>(t);
    std::cout.write(&c, 1);
    std::cout.flush();
  });
  std::cout << "\n\nprefill " << static_cast<std::int64_t>(gen.prefill_tokens_per_s()) << " tokens/s, decode "
            << static_cast<std::int64_t>(gen.decode_tokens_per_s()) << " tokens/s\n";
  return 0;
}

std::function<int()> setup_demo(CLI::App& app) {
  auto a = std::make_shared<DemoArgs>();
  app.add_option("--out", a->out,
                 "Folder of the demo training run (must not hold one already; default: the first of runs/demo, "
                 "runs/demo-2, ... that holds none)");
  app.add_option("--steps", a->steps, "Training steps (the full default run, `modformer train`, takes 1600)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  app.add_option("--sample-tokens", a->sample_tokens, "Bytes to generate at the end")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}));
  app.add_option("--prompt", a->prompt, "Prompt of the sample");
  app.add_flag("--skip-train", a->skip_train, "Only the build info and the attention demo");
  return [a] { return run_demo(*a); };
}

}  // namespace

MF_REGISTER_COMMAND("demo",
                    "The main job: build info, flash vs dense attention, train the default model, sample from it",
                    setup_demo);
