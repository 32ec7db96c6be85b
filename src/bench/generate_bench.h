// `modformer bench generate`: prefill and decode tokens/s of a whole model
// (default: the issue-15 Llama, hidden 512, 8 layers, 8/2 heads, SwiGLU 1408,
// byte vocabulary, 22.8M parameters), per thread count and batch size, for
// the GEMV decode path and, as the baseline measured in the same run, the
// GEMM path (set_gemv_max_rows(0)); decode bytes read per step (every weight
// matrix once + each row's KV cache) over time, against the memory read
// bandwidth measured at the same thread count; per-step cost vs context
// length (growth). JSON + SVG (tokens/s vs context).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace mf::bench {

struct GenerateBenchOptions {
  std::string config_path;  // a config.json, or
  std::string model_dir;    // a checkpoint folder; neither: generate_bench_default_config()
  std::int64_t prompt_len = 256;
  std::int64_t new_tokens = 256;
  std::vector<int> threads;  // empty: 1 and all cores
  std::vector<std::int64_t> batches{1};
  bool baseline = true;                        // also measure the GEMM path
  std::int64_t bandwidth_bytes = std::int64_t{1} << 30;  // read-bandwidth buffer
  std::string json_path;                       // empty: out_dir/generate.json
  std::string out_dir = "bench_generate";      // generate.svg (+ the JSON)
};

// The issue-15 model: Llama, hidden 512, 8 layers, 8 query heads of 64 / 2 KV
// heads, SwiGLU 1408, vocab 256, 4096 positions, untied head.
ModelConfig generate_bench_default_config();

// Prints the table to stdout; returns the exit code. Errors name the option.
int run_generate_bench(const GenerateBenchOptions& options);

}  // namespace mf::bench
