// `modformer bench`: a parent command whose subcommands are the registered benchmarks.
#include <algorithm>

#include "cli/bench_registry.h"
#include "cli/command.h"

namespace mf::cli {
std::vector<Benchmark>& bench_registry() {
  static std::vector<Benchmark> benches;
  return benches;
}
}  // namespace mf::cli

namespace {
std::function<int()> setup_bench(CLI::App& app) {
  auto& benches = mf::cli::bench_registry();
  std::sort(benches.begin(), benches.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  app.require_subcommand(1);
  auto chosen = std::make_shared<std::function<int()>>();
  for (auto& b : benches) {
    CLI::App* sub = app.add_subcommand(b.name, b.summary);
    auto act = b.setup(*sub);
    sub->callback([chosen, act] { *chosen = act; });
  }
  return [chosen] { return *chosen ? (*chosen)() : 0; };
}
}  // namespace

MF_REGISTER_COMMAND("bench", "Run a benchmark (gemm, attention, ...) and write JSON + SVG reports", setup_bench);
