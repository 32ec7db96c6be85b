// `modformer bench gemm`: sgemm GFLOP/s of every backend in one run (see
// src/bench/gemm_bench.h). The hidden --child-openblas-only flag is the mode
// in which the benchmark re-executes itself under another OPENBLAS_CORETYPE.
#include <memory>

#include "bench/gemm_bench.h"
#include "cli/bench_registry.h"
#include "cli/command.h"  // MF_CLI_CONCAT, used by MF_REGISTER_BENCH

namespace {
std::function<int()> setup_gemm(CLI::App& app) {
  auto opt = std::make_shared<mf::bench::GemmBenchOptions>();
  auto child = std::make_shared<bool>(false);
  auto no_batched = std::make_shared<bool>(false);
  app.add_option("--sizes", opt->sizes, "Shapes: N (N x N x N) or MxNxK, space- or comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--reps", opt->reps, "Timed repetitions per cell (best is kept)")->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--json", opt->json_path, "Write one JSON record per measured cell to this file");
  app.add_option("--svg", opt->svg_path, "Write an SVG chart of GFLOP/s vs N (square sizes) to this file");
  app.add_flag("--no-batched", *no_batched, "Skip the batched section");
  app.add_flag("--child-openblas-only", *child, "internal: measure OpenBLAS only, machine-readable")->group("");
  return [opt, child, no_batched] {
    opt->batched = !*no_batched;
    if (*child) return mf::bench::run_gemm_bench_child(*opt);
    opt->self_exe = "/proc/self/exe";
    opt->child_args = {"bench", "gemm"};
    return mf::bench::run_gemm_bench(*opt);
  };
}
}  // namespace

MF_REGISTER_BENCH("gemm", "sgemm GFLOP/s of OpenBLAS (each core type), oneDNN and the reference, in one run",
                  setup_gemm);
