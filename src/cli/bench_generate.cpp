// `modformer bench generate`: prefill/decode tokens/s, decode GB/s and its
// fraction of the read bandwidth, per thread count and batch (see
// src/bench/generate_bench.h).
#include <memory>

#include "bench/generate_bench.h"
#include "cli/bench_registry.h"
#include "cli/command.h"  // MF_CLI_CONCAT, used by MF_REGISTER_BENCH

namespace {
std::function<int()> setup_generate(CLI::App& app) {
  auto o = std::make_shared<mf::bench::GenerateBenchOptions>();
  auto bandwidth_mib = std::make_shared<std::int64_t>(1024);
  auto no_baseline = std::make_shared<bool>(false);
  auto config = app.add_option("--config", o->config_path, "Model config JSON (default: the issue-15 Llama, 22.8M)");
  app.add_option("--model", o->model_dir, "Checkpoint folder instead of a config (random weights)")->excludes(config);
  app.add_option("--prompt-len", o->prompt_len, "Prompt tokens")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--new-tokens", o->new_tokens, "New tokens per sequence (>= 2)")
      ->capture_default_str()
      ->check(CLI::Range(std::int64_t{2}, std::int64_t{1} << 30));
  app.add_option("--threads", o->threads, "Thread counts (default: 1 and all cores)")
      ->delimiter(',')
      ->check(CLI::Range(1, 1024));
  app.add_option("--batch", o->batches, "Batch sizes: prompts decoded together (default 1; e.g. 1,4,16)")
      ->delimiter(',')
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{256}));
  app.add_flag("--no-baseline", *no_baseline, "Skip the GEMM-path baseline");
  app.add_option("--bandwidth-mib", *bandwidth_mib, "Read-bandwidth buffer (MiB; far above the last-level cache)")
      ->capture_default_str()
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 20));
  app.add_option("--json", o->json_path, "JSON report (default: OUT_DIR/generate.json)");
  app.add_option("--out-dir", o->out_dir, "Folder of generate.svg (tokens/s vs context) and the JSON")
      ->capture_default_str();
  return [o, bandwidth_mib, no_baseline] {
    o->bandwidth_bytes = *bandwidth_mib << 20;
    o->baseline = !*no_baseline;
    return mf::bench::run_generate_bench(*o);
  };
}
}  // namespace

MF_REGISTER_BENCH("generate", "Generation: prefill/decode tokens/s, decode GB/s vs read bandwidth, batch 1..16",
                  setup_generate);
