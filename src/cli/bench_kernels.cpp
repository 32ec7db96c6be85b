// `modformer bench kernels`: the row kernels (softmax, norms, activations),
// forward and backward, on one [rows, n] shape, each timed against a plain
// copy of the same bytes (the bandwidth roof of a streaming kernel) and
// against its reference twin, in one run.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/bench_registry.h"
#include "core/rng.h"
#include "core/threads.h"
#include "kernels/activations.h"
#include "kernels/layernorm.h"
#include "kernels/rmsnorm.h"
#include "kernels/softmax.h"

namespace {

struct KernelBenchOptions {
  std::int64_t rows = 2048, n = 1024;
  int reps = 20;
  std::string only;
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

struct Case {
  const char* name;
  int tensors;  // [rows, n] tensors read or written (the least traffic the kernel needs)
  std::function<void()> fast, reference;
};

int run_kernel_bench(const KernelBenchOptions& o) {
  using namespace mf;
  const std::int64_t rows = o.rows, n = o.n, count = rows * n;
  const Tensor x = randn({rows, n}, 1), x2 = randn({rows, n}, 2), dy = randn({rows, n}, 3);
  const Tensor w = randn({n}, 4), b = randn({n}, 5);
  Tensor y = Tensor::empty({rows, n}), y2 = Tensor::empty({rows, n});
  Tensor mean = Tensor::empty({rows}), rstd = Tensor::empty({rows}), dw = Tensor::zeros({n}), db = Tensor::zeros({n});
  const float* X = x.data<float>();
  const float* X2 = x2.data<float>();
  const float* DY = dy.data<float>();
  const float* W = w.data<float>();
  const float* B = b.data<float>();
  float* Y = y.data<float>();
  float* Y2 = y2.data<float>();
  float* M = mean.data<float>();
  float* R = rstd.data<float>();
  float* DW = dw.data<float>();
  float* DB = db.data<float>();
  // Saved state for the backward kernels.
  Tensor prob = softmax_forward(x);
  const float* P = prob.data<float>();
  Tensor ln_mean = Tensor::empty({rows}), ln_rstd = Tensor::empty({rows}), rms_rstd = Tensor::empty({rows});
  layernorm_forward(Y, ln_mean.data<float>(), ln_rstd.data<float>(), X, W, B, rows, n, 1e-5f);
  rmsnorm_forward(Y, rms_rstd.data<float>(), X, W, rows, n, 1e-6f);
  const float* LM = ln_mean.data<float>();
  const float* LR = ln_rstd.data<float>();
  const float* RR = rms_rstd.data<float>();
  const GeluApprox T = GeluApprox::Tanh, E = GeluApprox::Erf;

  const std::vector<Case> cases = {
      {"softmax_forward", 2, [&] { softmax_forward(Y, X, rows, n); },
       [&] { reference::softmax_forward(Y, X, rows, n); }},
      {"softmax_backward", 3, [&] { softmax_backward(Y, DY, P, rows, n); },
       [&] { reference::softmax_backward(Y, DY, P, rows, n); }},
      {"log_softmax_forward", 2, [&] { log_softmax_forward(Y, X, rows, n); },
       [&] { reference::log_softmax_forward(Y, X, rows, n); }},
      {"layernorm_forward", 2, [&] { layernorm_forward(Y, M, R, X, W, B, rows, n, 1e-5f); },
       [&] { reference::layernorm_forward(Y, M, R, X, W, B, rows, n, 1e-5f); }},
      {"layernorm_backward", 3, [&] { layernorm_backward(Y, DW, DB, DY, X, W, LM, LR, rows, n); },
       [&] { reference::layernorm_backward(Y, DW, DB, DY, X, W, LM, LR, rows, n); }},
      {"rmsnorm_forward", 2, [&] { rmsnorm_forward(Y, R, X, W, rows, n, 1e-6f); },
       [&] { reference::rmsnorm_forward(Y, R, X, W, rows, n, 1e-6f); }},
      {"rmsnorm_backward", 3, [&] { rmsnorm_backward(Y, DW, DY, X, W, RR, rows, n); },
       [&] { reference::rmsnorm_backward(Y, DW, DY, X, W, RR, rows, n); }},
      {"gelu_tanh_forward", 2, [&] { gelu_forward(Y, X, count, T); },
       [&] { reference::gelu_forward(Y, X, count, T); }},
      {"gelu_tanh_backward", 3, [&] { gelu_backward(Y, DY, X, count, T); },
       [&] { reference::gelu_backward(Y, DY, X, count, T); }},
      {"gelu_erf_forward", 2, [&] { gelu_forward(Y, X, count, E); }, [&] { reference::gelu_forward(Y, X, count, E); }},
      {"gelu_erf_backward", 3, [&] { gelu_backward(Y, DY, X, count, E); },
       [&] { reference::gelu_backward(Y, DY, X, count, E); }},
      {"silu_forward", 2, [&] { silu_forward(Y, X, count); }, [&] { reference::silu_forward(Y, X, count); }},
      {"silu_backward", 3, [&] { silu_backward(Y, DY, X, count); },
       [&] { reference::silu_backward(Y, DY, X, count); }},
      {"swiglu_forward", 3, [&] { swiglu_forward(Y, X, X2, count); },
       [&] { reference::swiglu_forward(Y, X, X2, count); }},
      {"swiglu_backward", 5, [&] { swiglu_backward(Y, Y2, DY, X, X2, count); },
       [&] { reference::swiglu_backward(Y, Y2, DY, X, X2, count); }},
  };

  const double tensor_bytes = static_cast<double>(count) * sizeof(float);
  const double t_copy = best_seconds(o.reps, [&] { std::memcpy(Y, X, static_cast<std::size_t>(tensor_bytes)); });
  const double copy_GBps = 2 * tensor_bytes / t_copy / 1e9;
  nlohmann::json report = {{"benchmark", "kernels"},      {"rows", rows},          {"n", n},
                           {"threads", num_threads()},    {"reps", o.reps},        {"memcpy_s", t_copy},
                           {"memcpy_GBps", copy_GBps},    {"results", nlohmann::json::array()}};
  std::cout << "row kernels on [rows, n] = [" << rows << ", " << n << "], threads " << num_threads()
            << ", best of " << o.reps << "\n"
            << "  memcpy baseline: " << std::fixed << std::setprecision(3) << t_copy * 1e3 << " ms ("
            << std::setprecision(1) << copy_GBps << " GB/s)\n"
            << "  kernel                 fast ms    GB/s   of memcpy   reference ms   fast/ref speedup\n";
  for (const Case& c : cases) {
    if (!o.only.empty() && std::string(c.name).find(o.only) == std::string::npos) continue;
    const double t_fast = best_seconds(o.reps, c.fast);
    const double t_ref = best_seconds(std::max(1, o.reps / 5), c.reference);
    const double gbps = c.tensors * tensor_bytes / t_fast / 1e9;
    std::cout << "  " << std::left << std::setw(22) << c.name << std::right << std::setprecision(3) << std::setw(8)
              << t_fast * 1e3 << std::setprecision(1) << std::setw(8) << gbps << std::setw(11) << gbps / copy_GBps
              << std::setprecision(3) << std::setw(15) << t_ref * 1e3 << std::setprecision(1) << std::setw(14)
              << t_ref / t_fast << "x\n";
    report["results"].push_back({{"kernel", c.name},
                                 {"fast_s", t_fast},
                                 {"reference_s", t_ref},
                                 {"GBps", gbps},
                                 {"fraction_of_memcpy", gbps / copy_GBps},
                                 {"speedup_vs_reference", t_ref / t_fast}});
  }
  if (!o.out.empty()) {
    std::ofstream(o.out) << report.dump(2) << "\n";
    std::cout << "wrote " << o.out << "\n";
  }
  return 0;
}

}  // namespace

MF_REGISTER_BENCH("kernels", "Softmax, norms and activations (fwd/bwd) vs memcpy bandwidth and vs their references",
                  [](CLI::App& app) {
                    auto o = std::make_shared<KernelBenchOptions>();
                    app.add_option("--rows", o->rows, "rows (leading dimensions flattened)")
                        ->check(CLI::PositiveNumber);
                    app.add_option("--n", o->n, "row length (the normalized / softmax dimension)")
                        ->check(CLI::PositiveNumber);
                    app.add_option("--reps", o->reps, "repetitions (best time kept)")->check(CLI::PositiveNumber);
                    app.add_option("--only", o->only, "only kernels whose name contains this");
                    app.add_option("--out", o->out, "write a JSON report here");
                    return std::function<int()>([o] { return run_kernel_bench(*o); });
                  });
