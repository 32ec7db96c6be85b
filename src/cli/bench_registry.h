// `modformer bench <name>`: each benchmark is src/cli/bench_<name>.cpp and
// registers itself here (heavy lifting may live in src/bench/).
#pragma once
#include <CLI/CLI.hpp>

#include "cli/command.h"
#include <functional>
#include <string>
#include <vector>

namespace mf::cli {

struct Benchmark {
  std::string name;
  std::string summary;
  std::function<std::function<int()>(CLI::App& sub)> setup;
};

std::vector<Benchmark>& bench_registry();

struct BenchRegistrar {
  explicit BenchRegistrar(Benchmark b) { bench_registry().push_back(std::move(b)); }
};

}  // namespace mf::cli

#define MF_REGISTER_BENCH(name, summary, setup) \
  static ::mf::cli::BenchRegistrar MF_CLI_CONCAT(mf_bench_, __LINE__){::mf::cli::Benchmark{name, summary, setup}}
