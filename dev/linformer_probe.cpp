// Dev probe (not part of the build): time of the Linformer sublayer (default:
// linear projection, headwise E/F; n = 8192, k = 128) vs the same sublayer
// with exact non-causal flash attention, forward and forward+backward,
// interleaved per length.
// Build: see dev/build_probes.sh.
// Run: build/linformer_probe [threads] [reps] [cpu|wall] [linear|conv|mean|max] [none|headwise|kv]
// ("cpu": process CPU time instead of wall time, robust to a loaded machine
// with 1 thread; with more, it also counts OpenMP spin-waiting).
#include <time.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "core/rng.h"
#include "core/threads.h"
#include "kernels/gemm.h"
#include "nn/attention/attention.h"
#include "nn/linear.h"
#include "nn/linformer/linformer.h"

using namespace mf;

namespace {

bool use_cpu_time = false;

double now() {
  if (use_cpu_time) {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

Parameter param(const char* name, const Shape& shape, std::uint64_t seed, float scale) {
  Tensor v = randn(shape, seed);
  float* p = v.data<float>();
  for (std::int64_t i = 0; i < v.numel(); ++i) p[i] *= scale;
  return Parameter(name, v, true);
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2, reps = argc > 2 ? std::atoi(argv[2]) : 5;
  use_cpu_time = argc > 3 && std::strcmp(argv[3], "cpu") == 0;
  set_num_threads(threads);
  const std::int64_t C = 256, H = 4, D = 64, K = 128, NMAX = 8192;
  const std::string proj = argc > 4 ? argv[4] : "linear", share = argc > 5 ? argv[5] : "headwise";
  LinformerParams p;
  p.num_heads = H, p.num_kv_heads = H, p.head_dim = D, p.max_len = NMAX, p.proj_len = K;
  p.projection = proj == "conv"   ? LinformerProjection::Conv
                 : proj == "mean" ? LinformerProjection::Mean
                 : proj == "max"  ? LinformerProjection::Max
                                  : LinformerProjection::Linear;
  p.sharing = share == "none" ? LinformerSharing::None
              : share == "kv" ? LinformerSharing::KeyValue
                              : LinformerSharing::Headwise;
  std::vector<Parameter> ef;
  ef.reserve(2);
  for (const auto& [role, shape] : linformer_projection_shapes(p))
    ef.push_back(param(role.c_str(), shape, role == "e" ? 5 : 6, 1.0f / std::sqrt(float(shape.back()))));
  Parameter wq = param("q", {H * D, C}, 1, 0.06f), wk = param("k", {H * D, C}, 2, 0.06f),
            wv = param("v", {H * D, C}, 3, 0.06f), wo = param("o", {C, H * D}, 4, 0.06f);
  p.q = &wq, p.k = &wk, p.v = &wv, p.o = &wo;
  if (!ef.empty()) p.e = &ef[0];
  if (ef.size() > 1) p.f = &ef[1];
  std::printf("linformer %s/%s ", proj.c_str(), share.c_str());
  std::printf("C=%ld heads=%ld D=%ld k=%ld B=1 threads=%d gemm=%s reps=%d clock=%s (best of, interleaved)\n", (long)C,
              (long)H, (long)D, (long)K, threads, gemm_backend_name(gemm_backend()).c_str(), reps,
              use_cpu_time ? "process cpu" : "wall");
  std::printf("%6s %12s %12s %12s %12s %9s %9s\n", "L", "lin_fwd_ms", "lin_fb_ms", "flash_fwd_ms", "flash_fb_ms",
              "fwd_x", "fb_x");
  std::vector<double> prev(4, 0);
  for (std::int64_t L = 512; L <= NMAX; L *= 2) {
    const Tensor x = randn({L, C}, 7), dy = randn({L, C}, 8);
    Tensor y = Tensor::empty({L, C}), dx = Tensor::empty({L, C});
    LinformerSaved s;
    VarlenSeqlens seqs{{0, L}, {0, L}};
    AttentionOutput a;
    Tensor q, k, v;
    auto flash_fwd = [&] {
      q = linear_forward(x, wq.value, Tensor()).reshape({L, H, D});
      k = linear_forward(x, wk.value, Tensor()).reshape({L, H, D});
      v = linear_forward(x, wv.value, Tensor()).reshape({L, H, D});
      a = attention_varlen_forward(q, k, v, seqs, AttentionOptions{});
      linear_forward(y, a.out.reshape({L, H * D}), wo.value, Tensor());
    };
    auto flash_bwd = [&] {
      Tensor dout = Tensor::empty({L, H * D});
      linear_backward(dout, wo.grad, Tensor(), dy, a.out.reshape({L, H * D}), wo.value);
      const AttentionGrads g =
          attention_varlen_backward(q, k, v, a.out, a.lse, dout.reshape({L, H, D}), seqs, AttentionOptions{});
      linear_backward(dx, wq.grad, Tensor(), g.dq.reshape({L, H * D}), x, wq.value);
      linear_backward(dx, wk.grad, Tensor(), g.dk.reshape({L, H * D}), x, wk.value, true);
      linear_backward(dx, wv.grad, Tensor(), g.dv.reshape({L, H * D}), x, wv.value, true);
    };
    const std::function<void()> runs[4] = {
        [&] { linformer_forward(y, s, x, 1, L, Tensor(), p); },
        [&] {
          linformer_forward(y, s, x, 1, L, Tensor(), p);
          linformer_backward(dx, dy, x, s, 1, L, Tensor(), p);
        },
        flash_fwd,
        [&] {
          flash_fwd();
          flash_bwd();
        }};
    std::vector<double> best(4, 1e30);
    for (auto& r : runs) r();  // warm up
    for (int rep = 0; rep < reps; ++rep)
      for (int i = 0; i < 4; ++i) {
        const double t0 = now();
        runs[i]();
        best[i] = std::min(best[i], now() - t0);
      }
    std::printf("%6ld %12.2f %12.2f %12.2f %12.2f %9.2f %9.2f", (long)L, 1e3 * best[0], 1e3 * best[1], 1e3 * best[2],
                1e3 * best[3], best[2] / best[0], best[3] / best[1]);
    if (prev[0] > 0)
      std::printf("   growth lin fwd %.2f f+b %.2f | flash fwd %.2f f+b %.2f", best[0] / prev[0], best[1] / prev[1],
                  best[2] / prev[2], best[3] / prev[3]);
    std::printf("\n");
    prev = best;
  }
}
