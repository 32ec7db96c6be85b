// `modformer bench kv_cache`: decode tokens/s of a model whose KV cache hands
// the attention views of its storage (read in place) against the same cache
// returning packed copies (the copy a front door without stride support would
// make each step), at several context lengths, in one run; plus prefill tokens/s.
// The roof: a decode step must stream every weight matrix and the cached K/V
// once from memory, so it is compared with the time of one streaming read of
// those bytes, measured in the same run.
#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "cli/bench_registry.h"
#include "cli/command.h"  // MF_CLI_CONCAT, which bench_registry.h uses without including
#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "model/config.h"
#include "model/transformer.h"

namespace {

struct KvBenchOptions {
  std::string config;  // empty: the built-in default config
  std::vector<std::int64_t> contexts = {256, 1024, 4096};
  std::int64_t steps = 32;  // decode steps timed per context
  int reps = 3;             // best of
  std::string impl = "flash";
  std::int64_t window = -1;  // >= 0: override the config's sliding_window
  std::string out;
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

mf::Tensor random_tokens(std::int64_t n, std::int64_t vocab, std::uint64_t seed) {
  mf::Tensor t = mf::Tensor::empty({1, n}, mf::DType::I32);
  mf::Rng rng(seed);
  for (std::int64_t i = 0; i < n; ++i) t.data<std::int32_t>()[i] = static_cast<std::int32_t>(rng.below(vocab));
  return t;
}

// Seconds for one streaming read of `floats` floats (best of reps), over a
// buffer of that size written once beforehand.
double stream_read_seconds(std::int64_t floats, int reps) {
  std::vector<float> buf(static_cast<std::size_t>(floats), 1.0f);
  double best = 1e30;
  volatile float sink = 0;
  for (int r = 0; r < reps + 1; ++r) {
    const double t0 = now_s();
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (std::int64_t i = 0; i < floats; ++i) s += buf[static_cast<std::size_t>(i)];
    sink = sink + s;
    if (r > 0) best = std::min(best, now_s() - t0);  // the first pass warms the pages
  }
  return best;
}

struct Timing {
  double prefill_s = 1e30, decode_s = 1e30;
};

// Prefills ctx - steps tokens, then decodes `steps` tokens one at a time
// (ending at position ctx - 1); best of reps for each phase.
Timing time_context(mf::Transformer& m, std::int64_t ctx, std::int64_t steps, int reps, bool copy_out) {
  mf::GenerationOptions o;
  o.capacity = ctx;
  o.copy_out = copy_out;
  const std::unique_ptr<mf::GenerationState> cache = m.new_generation_state(o);
  const mf::Tensor prompt = random_tokens(ctx - steps, m.vocab_size(), 1);
  const mf::Tensor step = random_tokens(1, m.vocab_size(), 2);
  Timing t;
  for (int r = 0; r < reps; ++r) {
    cache->reset();
    double t0 = now_s();
    m.logits(prompt, cache.get());
    t.prefill_s = std::min(t.prefill_s, now_s() - t0);
    t0 = now_s();
    for (std::int64_t s = 0; s < steps; ++s) m.logits(step, cache.get());
    t.decode_s = std::min(t.decode_s, now_s() - t0);
  }
  return t;
}

int run_kv_bench(const KvBenchOptions& o) {
  using namespace mf;
  ModelConfig cfg = o.config.empty() ? default_config() : load_config(o.config);
  MF_CHECK(o.impl == "flash" || o.impl == "dense", "[bench kv_cache] --impl must be flash or dense, got '", o.impl,
           "'");
  cfg.attention_impl = o.impl == "flash" ? AttentionImpl::Flash : AttentionImpl::Dense;
  if (o.window > 0) cfg.model_type = "modformer";  // HF Llama has no sliding window
  if (o.window >= 0) cfg.sliding_window = o.window;
  validate_config(cfg, "bench kv_cache");
  for (auto c : o.contexts) {
    MF_CHECK(c > o.steps, "[bench kv_cache] context ", c, " must exceed --steps ", o.steps);
    MF_CHECK(c <= cfg.max_position_embeddings || cfg.uses_rope() || cfg.position == PositionKind::ALiBi ||
                 cfg.position == PositionKind::None,
             "[bench kv_cache] context ", c, " exceeds the position table (max_position_embeddings ",
             cfg.max_position_embeddings, ")");
  }
  Transformer m(cfg, 1);
  // Bytes a decode step must read: every parameter but the embedding table
  // (one row), plus the cached K/V that the new token attends to.
  std::int64_t weight_floats = 0;
  for (const Parameter* p : m.parameters())
    if (p->name != "model.embed_tokens.weight" || cfg.tie_word_embeddings) weight_floats += p->value.numel();
  std::cout << "kv_cache decode: " << cfg.num_hidden_layers << " layers, hidden " << cfg.hidden_size << ", heads "
            << cfg.num_attention_heads << "/" << cfg.num_key_value_heads << " x " << cfg.head_dim << ", window "
            << cfg.sliding_window << ", attention " << o.impl << ", threads " << num_threads() << ", " << o.steps
            << " decode steps per context, best of " << o.reps << "\n";
  nlohmann::json report = {{"benchmark", "kv_cache"}, {"threads", num_threads()}, {"impl", o.impl},
                           {"steps", o.steps},        {"config", config_to_json(cfg)}, {"rows", nlohmann::json::array()}};
  for (auto ctx : o.contexts) {
    const Timing copy = time_context(m, ctx, o.steps, o.reps, true);
    const Timing view = time_context(m, ctx, o.steps, o.reps, false);
    const double tps_copy = o.steps / copy.decode_s, tps_view = o.steps / view.decode_s;
    const double prefill_tps = (ctx - o.steps) / view.prefill_s;
    const std::int64_t seen = cfg.sliding_window > 0 ? std::min(ctx, cfg.sliding_window) : ctx;
    const std::int64_t kv_floats = seen * cfg.num_hidden_layers * 2 * cfg.kv_dim();
    const double roof_tps = 1.0 / stream_read_seconds(weight_floats + kv_floats, o.reps);
    std::cout << "  context " << ctx << ": decode " << tps_view << " tokens/s with views, " << tps_copy
              << " with copies (views " << tps_view / tps_copy << "x); prefill of " << ctx - o.steps << " tokens "
              << prefill_tps << " tokens/s; streaming roof " << roof_tps << " tokens/s (views at "
              << 100.0 * tps_view / roof_tps << "% of it)\n";
    report["rows"].push_back({{"context", ctx},
                              {"decode_tokens_per_s_views", tps_view},
                              {"decode_tokens_per_s_copies", tps_copy},
                              {"views_over_copies", tps_view / tps_copy},
                              {"prefill_tokens", ctx - o.steps},
                              {"prefill_tokens_per_s", prefill_tps},
                              {"bytes_read_per_step", 4 * (weight_floats + kv_floats)},
                              {"streaming_roof_tokens_per_s", roof_tps},
                              {"views_over_roof", tps_view / roof_tps}});
  }
  if (!o.out.empty()) {
    std::ofstream(o.out) << report.dump(2) << "\n";
    std::cout << "wrote " << o.out << "\n";
  }
  return 0;
}

}  // namespace

MF_REGISTER_BENCH("kv_cache", "Decode tokens/s with KV-cache views vs per-step copies, and prefill tokens/s",
                  [](CLI::App& app) {
                    auto o = std::make_shared<KvBenchOptions>();
                    app.add_option("--config", o->config, "Model config JSON (default: the built-in config)");
                    app.add_option("--contexts", o->contexts, "Context lengths (positions) to decode at, e.g. 256,1024")
                        ->delimiter(',')
                        ->capture_default_str();
                    app.add_option("--steps", o->steps, "Decode steps timed per context")
                        ->capture_default_str()
                        ->check(CLI::PositiveNumber);
                    app.add_option("--reps", o->reps, "Repetitions (best time kept)")
                        ->capture_default_str()
                        ->check(CLI::PositiveNumber);
                    app.add_option("--impl", o->impl, "Attention implementation: flash or dense")->capture_default_str();
                    app.add_option("--window", o->window, "Override the config's sliding_window (0: none)")
                        ->check(CLI::NonNegativeNumber);
                    app.add_option("--out", o->out, "Write a JSON report here");
                    return std::function<int()>([o] { return run_kv_bench(*o); });
                  });
