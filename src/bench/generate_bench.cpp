// Generation benchmark: see generate_bench.h. Decode bytes per step = every
// parameter tensor once (an embedding table only one row per sequence, unless
// it is tied to the LM head), plus each sequence's cached keys and values of
// every attention layer at that step's context (min(context, window) rows for
// sliding layers) or the whole state of a recurrent layer. GB/s = those bytes
// over the measured decode time; the fraction is against the read bandwidth
// measured at the same thread count (bench attention's measurement).
#include "bench/generate_bench.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "bench/attention_bench.h"
#include "core/error.h"
#include "core/json_report.h"
#include "core/rng.h"
#include "core/svg_plot.h"
#include "core/threads.h"
#include "kernels/gemm.h"
#include "kernels/gemv.h"
#include "model/checkpoint.h"
#include "model/generate.h"

namespace mf::bench {

namespace {

constexpr const char* kOp = "[bench generate]";

struct Measured {
  int threads = 0;
  std::int64_t batch = 0;
  std::string path;  // "gemv" or "gemm" (the baseline)
  double prefill_tps = 0, decode_tps = 0, step_ms = 0;
  double bytes_per_step = 0, gbs = 0, bandwidth_fraction = 0, growth = 0;
  std::vector<double> context, tokens_per_s;  // per bin of decode steps
};

// Bytes of parameters one decode step of `rows` sequences reads.
double weight_bytes_per_step(Transformer& m, std::int64_t rows) {
  const ModelConfig& c = m.config();
  double bytes = 0;
  for (const Parameter* p : m.parameters()) {
    const bool table = p->name.find("embed") != std::string::npos;
    const bool is_head = table && c.tie_word_embeddings && p->name.find("position") == std::string::npos;
    bytes += table && !is_head ? 4.0 * rows * p->value.size(1) : 4.0 * p->value.numel();
  }
  return bytes;
}

// Bytes of one sequence's generation state read by a step at `context` positions.
double state_bytes_per_step(const Transformer& m, GenerationState& state, std::int64_t context) {
  const ModelConfig& c = m.config();
  double bytes = 0;
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string& name = m.token_mixer(l).name();
    if (name == "full_attention" || name == "sliding_attention") {
      const std::int64_t keys =
          name == "sliding_attention" ? std::min(context, c.sliding_window) : context;
      bytes += 2.0 * 4.0 * static_cast<double>(c.num_key_value_heads * c.head_dim * keys);
    } else {
      bytes += static_cast<double>(state.layer(l)->bytes());
    }
  }
  return bytes;
}

Measured measure(Transformer& m, const std::vector<std::vector<std::int32_t>>& prompts, std::int64_t batch,
                 const GenerateBenchOptions& o, GenerationState& probe) {
  GenerateOptions g;
  g.max_new_tokens = o.new_tokens;
  g.sampling.temperature = 0.0f;
  {  // warm-up: page in the weights, wake the thread team
    GenerateOptions w = g;
    w.max_new_tokens = 3;
    generate(m, std::vector<std::int32_t>(prompts[0].begin(), prompts[0].begin() + std::min<std::int64_t>(8, o.prompt_len)), w);
  }
  Measured r;
  r.batch = batch;
  double prefill_s = 0, decode_s = 0, prompt_tokens = 0, decode_tokens = 0;
  std::vector<double> steps;
  if (batch == 1) {
    const GenerateResult g1 = generate(m, prompts[0], g);
    prefill_s = g1.prefill_seconds;
    prompt_tokens = static_cast<double>(g1.prompt_tokens);
    decode_s = g1.decode_seconds;
    decode_tokens = static_cast<double>(g1.tokens.size() - 1);
    steps = g1.decode_step_seconds;
  } else {
    const std::vector<std::vector<std::int32_t>> some(prompts.begin(), prompts.begin() + batch);
    const BatchGenerateResult gb = generate_batch(m, some, g);
    prefill_s = gb.prefill_seconds;
    prompt_tokens = static_cast<double>(gb.prompt_tokens);
    decode_s = gb.decode_seconds;
    decode_tokens = static_cast<double>(gb.decode_tokens);
    steps = gb.decode_step_seconds;
  }
  r.prefill_tps = prompt_tokens / prefill_s;
  r.decode_tps = decode_tokens / decode_s;
  const auto n_steps = static_cast<std::int64_t>(steps.size());
  r.step_ms = 1e3 * decode_s / static_cast<double>(n_steps);
  double bytes = 0;
  const double weights = weight_bytes_per_step(m, batch);
  for (std::int64_t s = 1; s <= n_steps; ++s)  // step s attends over prompt_len + s positions
    bytes += weights + static_cast<double>(batch) * state_bytes_per_step(m, probe, o.prompt_len + s);
  r.bytes_per_step = bytes / static_cast<double>(n_steps);
  r.gbs = bytes / decode_s * 1e-9;
  const std::int64_t bins = std::min<std::int64_t>(16, n_steps);
  for (std::int64_t b = 0; b < bins; ++b) {
    const std::int64_t s0 = n_steps * b / bins, s1 = n_steps * (b + 1) / bins;
    double t = 0;
    for (std::int64_t s = s0; s < s1; ++s) t += steps[static_cast<std::size_t>(s)];
    r.context.push_back(static_cast<double>(o.prompt_len) + 0.5 * static_cast<double>(s0 + s1 + 1));
    r.tokens_per_s.push_back(static_cast<double>(batch) * static_cast<double>(s1 - s0) / t);
  }
  r.growth = r.tokens_per_s.front() / r.tokens_per_s.back();  // time per step, last bin / first bin
  return r;
}

}  // namespace

ModelConfig generate_bench_default_config() {
  return config_from_string(R"({"model_type": "llama", "vocab_size": 256, "hidden_size": 512,
                               "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8,
                               "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 4096})",
                            "bench generate default config");
}

int run_generate_bench(const GenerateBenchOptions& o) {
  MF_CHECK(o.config_path.empty() || o.model_dir.empty(), kOp, " give --config or --model, not both");
  MF_CHECK(o.prompt_len >= 1, kOp, " --prompt-len must be >= 1, got ", o.prompt_len);
  MF_CHECK(o.new_tokens >= 2, kOp, " --new-tokens must be >= 2 (one decode step at least), got ", o.new_tokens);
  MF_CHECK(!o.batches.empty(), kOp, " --batch needs at least one batch size");
  for (std::int64_t b : o.batches) MF_CHECK(b >= 1 && b <= 256, kOp, " --batch sizes must be in [1, 256], got ", b);
  std::unique_ptr<Transformer> model;
  if (!o.model_dir.empty())
    model = load_checkpoint(o.model_dir);
  else
    model = std::make_unique<Transformer>(o.config_path.empty() ? generate_bench_default_config()
                                                                : load_config(o.config_path),
                                          1);
  Transformer& m = *model;
  const ModelConfig& cfg = m.config();
  MF_CHECK(cfg.is_decoder, kOp, " the model is an encoder classifier (is_decoder false): it does not generate");
  const std::int64_t needed = o.prompt_len + o.new_tokens - 1;
  MF_CHECK(needed <= cfg.max_position_embeddings, kOp, " --prompt-len ", o.prompt_len, " + --new-tokens ",
           o.new_tokens, " - 1 = ", needed, " positions exceed the model's max_position_embeddings ",
           cfg.max_position_embeddings);
  std::vector<int> threads = o.threads;
  if (threads.empty()) {
    threads.push_back(1);
    const int all = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    if (all > 1) threads.push_back(all);
  }
  const std::int64_t max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  std::vector<std::vector<std::int32_t>> prompts;
  Rng rng(7);
  for (std::int64_t i = 0; i < max_batch; ++i) {
    std::vector<std::int32_t> p(static_cast<std::size_t>(o.prompt_len));
    for (auto& t : p) t = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(cfg.vocab_size)));
    prompts.push_back(std::move(p));
  }
  GenerationOptions probe_opt;
  probe_opt.capacity = needed;
  const std::unique_ptr<GenerationState> probe = m.new_generation_state(probe_opt);

  const int prev_threads = num_threads();
  const std::int64_t prev_rows = gemv_max_rows();
  gemm_backend();
  std::printf("bench generate: %lld parameters (%.1f MB of float32 weights read per decode step), hidden %lld, "
              "%lld layers, prompt %lld, %lld new tokens, greedy; load average %.2f\n",
              static_cast<long long>(m.num_parameters()), weight_bytes_per_step(m, 1) * 1e-6,
              static_cast<long long>(cfg.hidden_size), static_cast<long long>(cfg.num_hidden_layers),
              static_cast<long long>(o.prompt_len), static_cast<long long>(o.new_tokens), load_average_1min());
  std::printf("%7s %5s %5s %11s %11s %9s %8s %6s %7s\n", "threads", "batch", "path", "prefill t/s", "decode t/s",
              "ms/step", "GB/s", "%bw", "growth");
  nlohmann::json rows = nlohmann::json::array();
  std::vector<PlotSeries> plot;
  std::vector<std::string> paths{"gemv"};
  if (o.baseline) paths.push_back("gemm");
  try {
    for (int t : threads) {
      set_num_threads(t);
      const double bandwidth = read_bandwidth_bytes_per_s(5, o.bandwidth_bytes);
      std::printf("-- %d thread(s): measured read bandwidth %.1f GB/s (%lld MiB buffer)\n", t, bandwidth * 1e-9,
                  static_cast<long long>(o.bandwidth_bytes >> 20));
      for (const std::string& path : paths) {
        set_gemv_max_rows(path == "gemv" ? kGemvMaxRows : 0);
        for (std::int64_t b : o.batches) {
          Measured r = measure(m, prompts, b, o, *probe);
          r.threads = t;
          r.path = path;
          r.bandwidth_fraction = r.gbs * 1e9 / bandwidth;
          std::printf("%7d %5lld %5s %11.1f %11.1f %9.3f %8.2f %5.1f%% %7.3f\n", t, static_cast<long long>(b),
                      path.c_str(), r.prefill_tps, r.decode_tps, r.step_ms, r.gbs, 100 * r.bandwidth_fraction,
                      r.growth);
          std::fflush(stdout);
          rows.push_back({{"threads", t}, {"batch", b}, {"path", path}, {"prefill_tokens_per_s", r.prefill_tps},
                          {"decode_tokens_per_s", r.decode_tps}, {"decode_ms_per_step", r.step_ms},
                          {"decode_bytes_per_step", r.bytes_per_step}, {"decode_gb_per_s", r.gbs},
                          {"read_bandwidth_gb_per_s", bandwidth * 1e-9},
                          {"fraction_of_read_bandwidth", r.bandwidth_fraction},
                          {"growth_last_over_first_step_time", r.growth}, {"context", r.context},
                          {"decode_tokens_per_s_at_context", r.tokens_per_s}});
          plot.push_back({path + ", " + std::to_string(t) + " thr, batch " + std::to_string(b), r.context,
                          r.tokens_per_s});
        }
      }
    }
  } catch (...) {
    set_num_threads(prev_threads);
    set_gemv_max_rows(prev_rows);
    throw;
  }
  set_num_threads(prev_threads);
  set_gemv_max_rows(prev_rows);
  std::printf("growth: time per decode step in the last 1/16 of the steps over the first (1.0: flat in context)\n");

  std::filesystem::create_directories(o.out_dir);
  PlotOptions po;
  po.title = "decode tokens/s vs context (" + std::to_string(m.num_parameters()) + " parameters)";
  po.x_label = "context (positions attended)";
  po.y_label = "decode tokens/s (all rows)";
  po.log_y = true;
  const std::string svg = o.out_dir + "/generate.svg";
  write_svg_line_chart(svg, plot, po);
  const std::string json_path = o.json_path.empty() ? o.out_dir + "/generate.json" : o.json_path;
  nlohmann::json report = {{"benchmark", "generate"},
                           {"environment", run_environment_json()},
                           {"gemm_backend", gemm_backend_name(gemm_backend())},
                           {"parameters", m.num_parameters()},
                           {"weight_bytes_per_step_batch1", weight_bytes_per_step(m, 1)},
                           {"prompt_len", o.prompt_len},
                           {"new_tokens", o.new_tokens},
                           {"rows", rows}};
  write_json_file(json_path, report);
  std::printf("wrote %s, %s\n", json_path.c_str(), svg.c_str());
  return 0;
}

}  // namespace mf::bench
