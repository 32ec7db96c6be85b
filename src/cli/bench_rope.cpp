// `modformer bench rope`: RoPE forward (in place) on [B, H, L, D], both
// conventions, against a plain copy of the same bytes (the memory-bandwidth
// roof for a streaming kernel) and against the reference twin, in one run.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/bench_registry.h"
#include "cli/command.h"  // MF_CLI_CONCAT, which bench_registry.h uses without including
#include "core/rng.h"
#include "core/threads.h"
#include "nn/position/rope.h"

namespace {

struct RopeBenchOptions {
  std::int64_t B = 2, H = 16, L = 1024, D = 128;
  int reps = 20;
  std::string out;
};

template <typename F>
double best_seconds(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

int run_rope_bench(const RopeBenchOptions& o) {
  using namespace mf;
  const Tensor x = randn({o.B, o.H, o.L, o.D}, 1);
  Tensor y = Tensor::empty(x.shape());
  const double bytes = 2.0 * static_cast<double>(x.nbytes());  // read + write
  const double t_copy = best_seconds(o.reps, [&] {
    std::memcpy(y.data<float>(), x.data<float>(), x.nbytes());
  });
  nlohmann::json report = {{"benchmark", "rope"}, {"shape", {o.B, o.H, o.L, o.D}}, {"threads", num_threads()},
                           {"copy_s", t_copy}, {"copy_GBps", bytes / t_copy / 1e9}};
  std::cout << "rope forward, [B, H, L, D] = [" << o.B << ", " << o.H << ", " << o.L << ", " << o.D
            << "], threads " << num_threads() << "\n"
            << "  memcpy baseline          " << t_copy * 1e3 << " ms (" << bytes / t_copy / 1e9 << " GB/s)\n";
  for (RopeConvention conv : {RopeConvention::RotateHalf, RopeConvention::Interleaved}) {
    RopeConfig cfg;
    cfg.rotary_dim = o.D;
    cfg.convention = conv;
    RopeTable table(cfg, o.L);
    RopeArgs args;
    const char* name = conv == RopeConvention::RotateHalf ? "rotate_half" : "interleaved";
    // Rotating the same buffer again and again is fine: a rotation keeps norms.
    std::memcpy(y.data<float>(), x.data<float>(), x.nbytes());
    const double t_fast = best_seconds(o.reps, [&] { rope_forward_inplace(y, table, args); });
    const double t_ref = best_seconds(std::max(1, o.reps / 10), [&] { rope_forward_reference(x, cfg, args); });
    std::cout << "  " << name << " fast (in place)   " << t_fast * 1e3 << " ms (" << bytes / t_fast / 1e9
              << " GB/s, " << t_copy / t_fast << "x of memcpy)\n"
              << "  " << name << " reference         " << t_ref * 1e3 << " ms (fast is " << t_ref / t_fast
              << "x faster)\n";
    report[name] = {{"fast_s", t_fast}, {"reference_s", t_ref}, {"fast_over_memcpy", t_copy / t_fast},
                    {"speedup_vs_reference", t_ref / t_fast}};
  }
  if (!o.out.empty()) {
    std::ofstream(o.out) << report.dump(2) << "\n";
    std::cout << "wrote " << o.out << "\n";
  }
  return 0;
}

}  // namespace

MF_REGISTER_BENCH("rope", "RoPE forward vs memcpy bandwidth and vs the reference kernel", [](CLI::App& app) {
  auto o = std::make_shared<RopeBenchOptions>();
  app.add_option("--batch", o->B, "B")->check(CLI::PositiveNumber);
  app.add_option("--heads", o->H, "H")->check(CLI::PositiveNumber);
  app.add_option("--len", o->L, "L")->check(CLI::PositiveNumber);
  app.add_option("--head-dim", o->D, "D (even)")->check(CLI::PositiveNumber);
  app.add_option("--reps", o->reps, "repetitions (best time kept)")->check(CLI::PositiveNumber);
  app.add_option("--out", o->out, "write a JSON report here");
  return std::function<int()>([o] {
    if (o->D % 2 != 0) throw mf::Error(mf::str_cat("[bench rope] --head-dim must be even, got ", o->D));
    return run_rope_bench(*o);
  });
});
