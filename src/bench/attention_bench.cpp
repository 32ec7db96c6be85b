// The exact-attention benchmark (see attention_bench.h). Every figure that is
// compared is measured in this run: sgemm at the shapes of attention's two
// products (QK^T: L x L x d, PV: L x d x L) for each GEMM backend, and the
// memory bandwidth for the decode rows. FLOPs count only unmasked work:
// forward 4 d x (visible pairs) per head, backward 2.5x that.
#include "bench/attention_bench.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>

#include "bench/gemm_bench.h"
#include "core/alloc.h"
#include "core/cpu_features.h"
#include "core/error.h"
#include "core/isa.h"
#include "core/json_report.h"
#include "core/progress.h"
#include "core/rng.h"
#include "core/svg_plot.h"
#include "core/threads.h"
#include "kernels/gemm.h"
#include "kernels/softmax.h"
#include "nn/attention/attention.h"
#include "nn/attention/flash_attention.h"

namespace mf::bench {
namespace {

using Clock = std::chrono::steady_clock;
using i64 = std::int64_t;


double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The best time of each of several calls, measured in interleaved rounds
// (call 1, call 2, ..., then again) after one warmup round, so that a drift in
// clock speed or a noisy neighbour affects every compared call alike.
// `before` runs untimed before each call.
std::vector<double> best_times_interleaved(int reps, const std::vector<std::function<void()>>& fns,
                                           const std::function<void()>& before = {}) {
  for (const auto& f : fns) {
    if (before) before();
    f();
  }
  std::vector<double> best(fns.size(), 1e30);
  for (int r = 0; r < reps; ++r)
    for (std::size_t i = 0; i < fns.size(); ++i) {
      if (before) before();
      const auto t0 = Clock::now();
      fns[i]();
      best[i] = std::min(best[i], seconds_since(t0));
    }
  return best;
}

// Best wall time of fn over reps runs after one warmup (`before` runs untimed before each).
double best_time(int reps, const std::function<void()>& fn, const std::function<void()>& before = {}) {
  return best_times_interleaved(reps, {fn}, before)[0];
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string core_env() {
  const char* v = std::getenv("OPENBLAS_CORETYPE");
  return v && *v ? v : "unset";
}

// OpenBLAS sgemm under another core type: the gemm benchmark's child mode
// (`bench gemm --child-openblas-only`) re-executed with OPENBLAS_CORETYPE set.
struct ChildSgemm {
  std::string core;
  std::vector<double> gflops;
};
ChildSgemm child_sgemm(const std::string& self_exe, const std::string& coretype,
                       const std::vector<std::array<i64, 3>>& shapes, int reps) {
  ChildSgemm r;
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink(self_exe, ec);
  const std::string path = ec ? self_exe : exe.string();
  std::string cmd = "OPENBLAS_CORETYPE=" + coretype + " MODFORMER_THREADS=" + std::to_string(num_threads()) + " '" +
                    path + "' bench gemm --child-openblas-only --reps " + std::to_string(reps) + " --sizes";
  for (const auto& s : shapes) cmd += str_cat(" ", s[0], "x", s[1], "x", s[2]);
  FILE* f = ::popen(cmd.c_str(), "r");
  MF_CHECK(f != nullptr, "[bench attention] cannot run '", cmd, "'");
  std::string out;
  char buf[4096];
  for (std::size_t got; (got = std::fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, got);
  const int status = ::pclose(f);
  MF_CHECK(status == 0, "[bench attention] the OPENBLAS_CORETYPE=", coretype, " sgemm child failed (status ", status,
           "); output: ", out);
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string tag, kind;
    ls >> tag >> kind;
    if (tag != "MFGEMM") continue;
    if (kind == "core") ls >> r.core;
    if (kind == "row") {
      i64 m = 0, n = 0, k = 0;
      double g = 0;
      ls >> m >> n >> k >> g;
      r.gflops.push_back(g);
    }
  }
  MF_CHECK(!r.core.empty() && r.gflops.size() == shapes.size(), "[bench attention] cannot parse the sgemm child's "
                                                                 "output: ", out);
  return r;
}

// The unfused baseline, one head at a time: S = Q K^T / sqrt(d) (gemm),
// P = softmax(S) (the softmax kernel, rows in parallel, causal columns
// zeroed), O = P V (gemm).
void unfused_attention(i64 heads, i64 L, i64 d, bool causal, const float* q, const float* k, const float* v,
                       float* o, float* s) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (i64 h = 0; h < heads; ++h) {
    const float* qh = q + h * L * d;
    const float* kh = k + h * L * d;
    const float* vh = v + h * L * d;
    gemm(Trans::N, Trans::T, L, L, d, scale, qh, d, kh, d, 0.0f, s, L);
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < L; ++i) {
      float* row = s + i * L;
      const i64 n = causal ? i + 1 : L;
      softmax_forward(row, row, 1, n);
      for (i64 j = n; j < L; ++j) row[j] = 0.0f;
    }
    gemm(Trans::N, Trans::N, L, d, L, 1.0f, s, L, vh, d, 0.0f, o + h * L * d, d);
  }
}

// Memory read bandwidth: all threads sum disjoint parts of a buffer far larger than the caches.
double measure_read_bandwidth(int reps, i64 n = i64{1} << 28) {  // default: 1 GiB of floats
  Tensor buf = Tensor::empty({n});
  float* p = buf.data<float>();
#pragma omp parallel for schedule(static)
  for (i64 i = 0; i < n; ++i) p[i] = 1.0f;
  volatile float sink = 0;
  const double t = best_time(reps, [&] {
    float total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
    for (i64 blk = 0; blk < n / 4096; ++blk) {
      const float* x = p + blk * 4096;
      float acc = 0;
#pragma omp simd reduction(+ : acc)
      for (i64 j = 0; j < 4096; ++j) acc += x[j];
      total += acc;
    }
    sink = total;
  });
  (void)sink;
  return static_cast<double>(n) * 4.0 / t;
}

// Evicts the last-level cache (decode rows read a cold KV cache, as in generation).
void flush_caches(std::vector<float>& scratch) {
  float s = 0;
#pragma omp parallel for schedule(static) reduction(+ : s)
  for (i64 i = 0; i < static_cast<i64>(scratch.size()); i += 16) {
    scratch[i] += 1.0f;
    s += scratch[i];
  }
  volatile float sink = s;
  (void)sink;
}

i64 heads_for(i64 L) { return std::max<i64>(2, 16384 / L); }

// Visible (query, key) pairs of an L x L self-attention: causal with a left window w (< 0: none), or full.
double visible_pairs(i64 L, bool causal, i64 w) {
  if (!causal) return static_cast<double>(L) * static_cast<double>(L);
  double n = 0;
  for (i64 i = 0; i < L; ++i) n += static_cast<double>(w < 0 ? i + 1 : std::min(i, w) + 1);
  return n;
}

struct SgemmPair {  // best GFLOP/s over backends of the two products (QK^T and PV) together
  double gflops = 0;
  std::string backend;
  std::map<std::string, double> by_backend;
};

}  // namespace

double read_bandwidth_bytes_per_s(int reps, std::int64_t bytes) {
  MF_CHECK(reps >= 1 && bytes >= (std::int64_t{1} << 20), "[bench] read bandwidth needs reps >= 1 and a buffer of at "
           "least 1 MiB, got ", reps, " reps and ", bytes, " bytes");
  return measure_read_bandwidth(reps, bytes / (4 * 4096) * 4096);
}

AttentionBenchOptions quick_attention_bench_options() {
  AttentionBenchOptions o;
  o.lengths = {1024, 4096};
  o.reps = 2;
  o.dense_max_len = 1024;
  o.decode_lengths = {4096, 16384};
  o.window_len = 4096;
  return o;
}

int run_attention_bench(const AttentionBenchOptions& opt) {
  MF_CHECK(opt.reps >= 1 && opt.reps <= 100, "[bench attention] --reps must be in [1, 100], got ", opt.reps);
  for (i64 L : opt.lengths) MF_CHECK(L >= 16 && L <= 65536, "[bench attention] lengths must be in [16, 65536], got ", L);
  for (i64 L : opt.decode_lengths)
    MF_CHECK(L >= 16 && L <= (i64{1} << 20), "[bench attention] decode lengths must be in [16, 1048576], got ", L);
  MF_CHECK(opt.window_len >= 16 && opt.window_len <= 65536, "[bench attention] --window-len must be in [16, 65536], got ",
           opt.window_len);
  for (i64 d : opt.dims)
    MF_CHECK(d >= 8 && d <= 256 && d % 8 == 0, "[bench attention] head dims must be multiples of 8 in [8, 256], got ", d);
  auto has = [&](const char* s) { return std::find(opt.sections.begin(), opt.sections.end(), s) != opt.sections.end(); };
  for (const auto& s : opt.sections)
    MF_CHECK(s == "main" || s == "decode" || s == "window" || s == "tune", "[bench attention] unknown section '", s,
             "' (main, decode, window, tune)");
  const auto& cpu = cpu_features();
  const bool onednn = gemm_backend_available(GemmBackend::OneDNN);
  const bool child = !opt.self_exe.empty() && cpu.avx512f && blas_core_name() != "SkylakeX";
  const FlashTiles tiles;  // the defaults, which every row but the tuning ones uses

  std::cout << "modformer bench attention: exact attention, fp32, B = 1, Hq = Hkv = max(2, 16384 / L) heads\n"
            << "  (decode: Hq = 32), best of " << opt.reps << " after 1 warmup; FLOPs count unmasked work only:\n"
            << "  forward 4 d (visible pairs) per head, backward 2.5x that; %sgemm = GFLOP/s / best sgemm GFLOP/s\n"
            << "  over backends at the same shapes (L x L x d and L x d x L, combined) in this run;\n"
            << "  each cell's flash forward, backward, unfused baseline and sgemm calls are timed in interleaved rounds\n"
            << "cpu:       " << cpu.model_name << " (avx512f " << (cpu.avx512f ? "yes" : "no") << ")\n"
            << "threads:   " << num_threads() << "\n"
            << "openblas:  core " << blas_core_name() << " in this process (OPENBLAS_CORETYPE=" << core_env() << ")"
            << (child ? "; also OPENBLAS_CORETYPE=SkylakeX in a child process" : "") << "\n"
            << "onednn:    " << (onednn ? "built in" : "not built in") << "\n"
            << "gemm:      " << gemm_backend_selection() << " (the unfused baseline uses it)\n"
            << "flash:     " << isa_name(active_isa()) << " kernels; tiles fwd " << tiles.fwd_rows << " rows x "
            << tiles.fwd_keys << " keys, bwd " << tiles.bwd_rows << " rows x " << tiles.bwd_keys
            << " keys, split-KV chunk " << tiles.split_chunk << " from " << tiles.split_min_keys << " keys\n"
            << "reproduce: modformer --threads " << num_threads() << " bench attention --reps " << opt.reps
            << " --lengths";
  for (i64 L : opt.lengths) std::cout << " " << L;
  std::cout << " --dims";
  for (i64 d : opt.dims) std::cout << " " << d;
  std::cout << " --sections";
  for (const auto& s : opt.sections) std::cout << " " << s;
  std::cout << "\n\n" << std::flush;

  const nlohmann::json env = run_environment_json();
  nlohmann::json records = nlohmann::json::array();
  auto record = [&](nlohmann::json j) {
    nlohmann::json r = env;
    r.update(j);
    records.push_back(r);
  };

  i64 cells = 0;
  if (has("main")) cells += static_cast<i64>(opt.dims.size() * opt.lengths.size() * 3);
  if (has("decode")) cells += static_cast<i64>(opt.decode_lengths.size()) + 1;
  if (has("window")) cells += 5;
  if (has("tune")) cells += static_cast<i64>(opt.dims.size()) * 9;  // 6 forward and 3 backward tile shapes per d
  ProgressBar::Options popt;
  popt.unit = "cell";
  ProgressBar progress("bench attention", cells, popt);

  std::vector<PlotSeries> plot;
  auto series = [&](const std::string& name) -> PlotSeries& {
    for (auto& s : plot)
      if (s.name == name) return s;
    plot.push_back({name, {}, {}});
    return plot.back();
  };

  // ------------------------------------------------------------ main table
  struct MainRow {
    i64 d, L, heads;
    bool causal;
    double t_fwd, t_bwd, t_unfused, t_dense_fwd, gf_fwd, gf_fb, sgemm, peak_bytes;
    std::string sgemm_backend;
  };
  std::vector<MainRow> main_rows;
  // The machine's GEMM ceiling: the best sgemm rate seen in this run, over the square 2048^3
  // product (measured before and after the rows, as clock speed drifts on shared machines) and
  // every product of the rows' own shapes.
  double sgemm_peak = 0;
  std::vector<GemmBackend> peak_backends{GemmBackend::OpenBLAS};
  if (onednn) peak_backends.push_back(GemmBackend::OneDNN);
  auto measure_square_peak = [&] {
    for (double g : measure_sgemm_gflops_each(2048, 2048, 2048, peak_backends, opt.reps))
      sgemm_peak = std::max(sgemm_peak, g);
  };
  if (has("main")) {
    measure_square_peak();
    for (i64 d : opt.dims)
      for (i64 L : opt.lengths) {
        const i64 H = heads_for(L);
        // sgemm at this (L, d): each backend, the two products' combined GFLOP/s,
        // on the attention's own operands, interleaved with the flash and unfused calls.
        std::vector<std::pair<std::string, GemmBackend>> backends{{"openblas[" + blas_core_name() + "]", GemmBackend::OpenBLAS}};
        if (onednn) backends.push_back({"onednn", GemmBackend::OneDNN});
        SgemmPair sg;
        auto consider = [&](const std::string& name, double g1, double g2) {
          const double g = 2.0 / (1.0 / g1 + 1.0 / g2);
          sg.by_backend[name] = g;
          sgemm_peak = std::max({sgemm_peak, g1, g2});
          if (g > sg.gflops) {
            sg.gflops = g;
            sg.backend = name;
          }
        };
        const double gemm_flops = 2.0 * static_cast<double>(L) * static_cast<double>(L) * static_cast<double>(d);
        if (child) {
          const auto r = child_sgemm(opt.self_exe, "SkylakeX", {{L, L, d}, {L, d, L}}, opt.reps);
          consider("openblas[" + r.core + "]", r.gflops[0], r.gflops[1]);
        }
        progress.advance(1, str_cat("sgemm L=", L, " d=", d));
        for (bool causal : {false, true}) {
          Tensor q = randn({1, H, L, d}, 1), k = randn({1, H, L, d}, 2), v = randn({1, H, L, d}, 3),
                 dout = randn({1, H, L, d}, 4);
          AttentionOptions ao;
          ao.causal = causal;
          MainRow row{d, L, H, causal, 0, 0, 0, 0, 0, 0, 0, 0, ""};
          AttentionOutput f = attention_forward(q, k, v, ao);
          const bool unfused = L <= opt.unfused_max_len;
          Tensor o = Tensor::empty({1, H, L, d}), s = Tensor::empty({L, L});
          std::vector<std::function<void()>> calls{
              [&] { f = attention_forward(q, k, v, ao); },
              [&] { attention_backward(q, k, v, f.out, f.lse, dout, ao); }};
          if (unfused)
            calls.push_back([&] {
              unfused_attention(H, L, d, causal, q.data<float>(), k.data<float>(), v.data<float>(), o.data<float>(),
                                s.data<float>());
            });
          if (!causal)  // sgemm once per (L, d): QK^T and PV of head 0 on each backend
            for (const auto& be : backends) {
              calls.push_back([&, be] {
                gemm_using(be.second, Trans::N, Trans::T, L, L, d, 1.0f, q.data<float>(), d, k.data<float>(), d, 0.0f,
                           s.data<float>(), L);
              });
              calls.push_back([&, be] {
                gemm_using(be.second, Trans::N, Trans::N, L, d, L, 1.0f, s.data<float>(), L, v.data<float>(), d, 0.0f,
                           o.data<float>(), d);
              });
            }
          const std::vector<double> t = best_times_interleaved(opt.reps, calls);
          row.t_fwd = t[0];
          row.t_bwd = t[1];
          if (unfused) row.t_unfused = t[2];
          if (!causal)
            for (std::size_t i = 0; i < backends.size(); ++i) {
              const std::size_t at = (unfused ? 3 : 2) + 2 * i;
              consider(backends[i].first, gemm_flops / t[at] * 1e-9, gemm_flops / t[at + 1] * 1e-9);
            }
          row.sgemm = sg.gflops;
          row.sgemm_backend = sg.backend;
          {
            f = AttentionOutput{};
            const i64 before = memory_stats().current_bytes;
            reset_peak_memory();
            f = attention_forward(q, k, v, ao);
            attention_backward(q, k, v, f.out, f.lse, dout, ao);
            row.peak_bytes = static_cast<double>(memory_stats().peak_bytes - before);
          }
          const double pairs = visible_pairs(L, causal, -1);
          const double fwd_flops = 4.0 * static_cast<double>(d * H) * pairs;
          row.gf_fwd = fwd_flops / row.t_fwd * 1e-9;
          row.gf_fb = 3.5 * fwd_flops / (row.t_fwd + row.t_bwd) * 1e-9;
          if (L <= opt.dense_max_len)
            row.t_dense_fwd = best_time(1, [&] { attention_forward(q, k, v, ao, AttentionImpl::Dense); });
          main_rows.push_back(row);
          progress.advance(1, str_cat("L=", L, " d=", d, causal ? " causal" : ""));
          record({{"bench", "attention"}, {"section", "main"}, {"d", d}, {"L", L}, {"heads", H}, {"causal", causal},
                  {"flash_fwd_s", row.t_fwd}, {"flash_bwd_s", row.t_bwd}, {"flash_fwd_gflops", row.gf_fwd},
                  {"flash_fwd_bwd_gflops", row.gf_fb}, {"sgemm_best_gflops", sg.gflops},
                  {"sgemm_best_backend", sg.backend}, {"sgemm_by_backend", sg.by_backend},
                  {"fwd_frac_sgemm", row.gf_fwd / sg.gflops},
                  {"fwd_bwd_frac_sgemm", row.gf_fb / sg.gflops},  // + peak fields, set after the section
                  {"bwd_over_fwd", row.t_bwd / row.t_fwd},
                  {"unfused_s", row.t_unfused > 0 ? nlohmann::json(row.t_unfused) : nlohmann::json()},
                  {"unfused_over_flash_fwd", row.t_unfused > 0 ? nlohmann::json(row.t_unfused / row.t_fwd) : nlohmann::json()},
                  {"dense_fwd_s", row.t_dense_fwd > 0 ? nlohmann::json(row.t_dense_fwd) : nlohmann::json()},
                  {"peak_extra_bytes_fwd_bwd", row.peak_bytes},
                  {"peak_extra_bytes_per_token", row.peak_bytes / static_cast<double>(L)}});
          if (!causal) {
            const std::string sfx = str_cat(" d=", d);
            series("flash fwd" + sfx).x.push_back(static_cast<double>(L));
            series("flash fwd" + sfx).y.push_back(row.t_fwd / static_cast<double>(H) * 1e3);
            series("flash fwd+bwd" + sfx).x.push_back(static_cast<double>(L));
            series("flash fwd+bwd" + sfx).y.push_back((row.t_fwd + row.t_bwd) / static_cast<double>(H) * 1e3);
            if (row.t_unfused > 0) {
              series("unfused fwd" + sfx).x.push_back(static_cast<double>(L));
              series("unfused fwd" + sfx).y.push_back(row.t_unfused / static_cast<double>(H) * 1e3);
            }
            if (row.t_dense_fwd > 0) {
              series("dense fwd" + sfx).x.push_back(static_cast<double>(L));
              series("dense fwd" + sfx).y.push_back(row.t_dense_fwd / static_cast<double>(H) * 1e3);
            }
          }
        }
      }
    measure_square_peak();
    for (auto& r : records)
      if (r.value("section", "") == "main") {
        r["sgemm_peak_gflops"] = sgemm_peak;
        r["fwd_frac_sgemm_peak"] = r["flash_fwd_gflops"].get<double>() / sgemm_peak;
        r["fwd_bwd_frac_sgemm_peak"] = r["flash_fwd_bwd_gflops"].get<double>() / sgemm_peak;
      }
  }

  // ------------------------------------------------------------ decode
  struct DecodeRow {
    i64 L, hkv;
    double t, gbs;
  };
  std::vector<DecodeRow> decode_rows;
  double bandwidth = 0;
  if (has("decode")) {
    bandwidth = measure_read_bandwidth(std::max(opt.reps, 5));
    progress.advance(1, "bandwidth");
    std::vector<float> scratch(static_cast<std::size_t>(64) << 20, 0.0f);  // 256 MiB, evicts L3
    const i64 hq = 32, d = 128;
    for (i64 L : opt.decode_lengths) {
      // 32/32 and 32/8 heads timed in interleaved rounds (their ratio is a target).
      const std::array<i64, 2> hkvs{32, 8};
      std::vector<Tensor> ks, vs;
      for (i64 hkv : hkvs) {
        ks.push_back(randn({1, hkv, L, d}, 6));
        vs.push_back(randn({1, hkv, L, d}, 7));
      }
      const Tensor q = randn({1, hq, 1, d}, 5);
      AttentionOptions ao;
      ao.causal = true;
      const std::vector<double> times = best_times_interleaved(
          opt.reps,
          {[&] { attention_forward(q, ks[0], vs[0], ao); }, [&] { attention_forward(q, ks[1], vs[1], ao); }},
          [&] { flush_caches(scratch); });
      for (std::size_t c = 0; c < hkvs.size(); ++c) {
        const i64 hkv = hkvs[c];
        const double t = times[c];
        const double bytes = 2.0 * static_cast<double>(hkv * L * d) * 4.0;
        decode_rows.push_back({L, hkv, t, bytes / t});
        record({{"bench", "attention"}, {"section", "decode"}, {"L", L}, {"hq", hq}, {"hkv", hkv}, {"d", d},
                {"seconds", t}, {"kv_bytes", bytes}, {"kv_bytes_per_s", bytes / t},
                {"read_bandwidth_bytes_per_s", bandwidth}, {"frac_bandwidth", bytes / t / bandwidth}});
      }
      progress.advance(1, str_cat("decode L=", L));
    }
  }

  // ------------------------------------------------------------ window
  struct WindowRow {
    i64 w;
    double t, density, ratio, t_bwd, ratio_bwd;
  };
  std::vector<WindowRow> window_rows;
  double t_full_window = 0, t_full_window_bwd = 0;
  if (has("window")) {
    const i64 L = opt.window_len, d = 64, H = 2;
    Tensor q = randn({1, H, L, d}, 8), k = randn({1, H, L, d}, 9), v = randn({1, H, L, d}, 10),
           dout = randn({1, H, L, d}, 11);
    // The full call and every window, forward and backward, timed in interleaved rounds: the
    // ratios compare like with like.
    const std::array<i64, 4> windows{128, 512, 2048, -1};
    std::vector<AttentionOptions> opts{AttentionOptions{}};
    for (i64 w : windows) {
      AttentionOptions ao;
      ao.causal = true;
      ao.window_left = w;
      opts.push_back(ao);
    }
    std::vector<AttentionOutput> fwd;
    for (const auto& ao : opts) fwd.push_back(attention_forward(q, k, v, ao));
    std::vector<std::function<void()>> calls;
    for (const auto& ao : opts) calls.push_back([&] { attention_forward(q, k, v, ao); });
    for (std::size_t c = 0; c < opts.size(); ++c)
      calls.push_back([&, c] { attention_backward(q, k, v, fwd[c].out, fwd[c].lse, dout, opts[c]); });
    const std::vector<double> times = best_times_interleaved(opt.reps, calls);
    const std::size_t nb = opts.size();  // backward times follow the forward ones
    t_full_window = times[0];
    t_full_window_bwd = times[nb];
    progress.advance(1, "window full");
    for (std::size_t c = 0; c < windows.size(); ++c) {
      const i64 w = windows[c];
      const double t = times[c + 1], tb = times[nb + c + 1];
      const double density = visible_pairs(L, true, w) / (static_cast<double>(L) * static_cast<double>(L));
      window_rows.push_back(
          {w, t, density, t / (density * t_full_window), tb, tb / (density * t_full_window_bwd)});
      record({{"bench", "attention"}, {"section", "window"}, {"L", L}, {"d", d}, {"heads", H}, {"causal", true},
              {"window_left", w}, {"seconds", t}, {"full_seconds", t_full_window}, {"density", density},
              {"time_over_density_x_full", t / (density * t_full_window)}, {"bwd_seconds", tb},
              {"bwd_full_seconds", t_full_window_bwd},
              {"bwd_time_over_density_x_full", tb / (density * t_full_window_bwd)}});
      progress.advance(1, str_cat("window ", w));
    }
  }

  // ------------------------------------------------------------ tune
  struct TuneRow {
    std::string what;
    i64 d, rows, keys;
    double t;
  };
  std::vector<TuneRow> tune_rows;
  if (has("tune")) {
    const FlashTiles defaults;
    const i64 L = 4096, H = 4;
    for (i64 d : opt.dims) {
      Tensor q = randn({1, H, L, d}, 1), k = randn({1, H, L, d}, 2), v = randn({1, H, L, d}, 3),
             dout = randn({1, H, L, d}, 4);
      // Every tile shape of a pass timed in interleaved rounds (tiles set inside each call).
      using Shapes = std::vector<std::pair<i64, i64>>;
      auto tune = [&](const char* pass, const Shapes& shapes, i64 FlashTiles::*rows_of, i64 FlashTiles::*keys_of,
                      const std::function<void(const AttentionOptions&)>& call) {
        std::vector<std::function<void()>> calls;
        for (auto [rows, keys] : shapes) {
          AttentionOptions ao;
          ao.flash_tiles = defaults;
          ao.flash_tiles.*rows_of = rows;
          ao.flash_tiles.*keys_of = keys;
          calls.push_back([&call, ao] { call(ao); });
        }
        const std::vector<double> times = best_times_interleaved(opt.reps, calls);
        for (std::size_t i = 0; i < shapes.size(); ++i)
          tune_rows.push_back({pass, d, shapes[i].first, shapes[i].second, times[i]});
        progress.advance(static_cast<i64>(shapes.size()), str_cat("tune ", pass, " d=", d));
      };
      tune("fwd", Shapes{{64, 64}, {128, 64}, {192, 64}, {256, 64}, {192, 32}, {192, 128}}, &FlashTiles::fwd_rows,
           &FlashTiles::fwd_keys, [&](const AttentionOptions& ao) { attention_forward(q, k, v, ao); });
      const AttentionOutput f = attention_forward(q, k, v, {});
      tune("bwd", Shapes{{64, 32}, {64, 64}, {32, 64}}, &FlashTiles::bwd_rows, &FlashTiles::bwd_keys,
           [&](const AttentionOptions& ao) { attention_backward(q, k, v, f.out, f.lse, dout, ao); });
    }
  }
  progress.finish();

  // ------------------------------------------------------------ report
  if (!main_rows.empty()) {
    std::printf("sgemm peak: %.1f GFLOP/s (best sgemm rate of this run: 2048^3 before and after the rows, and the "
                "rows' own products); %%pk = fraction of it\n",
                sgemm_peak);
    std::printf("%4s %6s %3s %6s | %9s %7s %5s %5s | %9s %7s %5s | %7s | %9s %7s | %9s | %8s %-18s | %8s %7s\n", "d", "L",
                "H", "causal", "fwd ms", "GF/s", "%sg", "%pk", "f+b ms", "GF/s", "%sg", "bwd/fwd", "unfus ms", "unf/fl",
                "dense ms", "sgemm", "(best backend)", "peak MiB", "KiB/tok");
    for (const auto& r : main_rows) {
      std::printf("%4" PRId64 " %6" PRId64 " %3" PRId64 " %6s | %9.2f %7.1f %4.0f%% %4.0f%% | %9.2f %7.1f %4.0f%% | %7.2f | %9s %7s | %9s | %8.1f %-18s | %8.1f %7.2f\n",
                  r.d, r.L, r.heads, r.causal ? "yes" : "no", r.t_fwd * 1e3, r.gf_fwd, 100 * r.gf_fwd / r.sgemm,
                  100 * r.gf_fwd / sgemm_peak, (r.t_fwd + r.t_bwd) * 1e3, r.gf_fb, 100 * r.gf_fb / r.sgemm, r.t_bwd / r.t_fwd,
                  r.t_unfused > 0 ? fmt("%.2f", r.t_unfused * 1e3).c_str() : "-",
                  r.t_unfused > 0 ? fmt("%.2fx", r.t_unfused / r.t_fwd).c_str() : "-",
                  r.t_dense_fwd > 0 ? fmt("%.1f", r.t_dense_fwd * 1e3).c_str() : "-", r.sgemm,
                  ("(" + r.sgemm_backend + ")").c_str(), r.peak_bytes / 1048576.0,
                  r.peak_bytes / 1024.0 / static_cast<double>(r.L));
    }
    // Causal efficiency relative to non-causal (same d, L).
    std::printf("\ncausal efficiency (causal GF/s / non-causal GF/s, forward):");
    for (const auto& r : main_rows)
      if (r.causal)
        for (const auto& n : main_rows)
          if (!n.causal && n.d == r.d && n.L == r.L) std::printf(" d%" PRId64 "/L%" PRId64 " %.2f", r.d, r.L, r.gf_fwd / n.gf_fwd);
    std::printf("\n");
  }
  if (!decode_rows.empty()) {
    std::printf("\ndecode: 1 query, Hq = 32, d = 128, causal; KV read once per call (L3 flushed before each run);\n"
                "measured read bandwidth %.1f GB/s (%d threads summing 1 GiB)\n",
                bandwidth * 1e-9, num_threads());
    std::printf("%7s %5s %10s %10s %8s %13s\n", "L", "Hkv", "ms", "GB/s", "%bw", "t(32/8)/t(32/32)");
    for (const auto& r : decode_rows) {
      std::string ratio = "";
      if (r.hkv == 8)
        for (const auto& o : decode_rows)
          if (o.L == r.L && o.hkv == 32) ratio = fmt("%.3f", r.t / o.t);
      std::printf("%7" PRId64 " %5" PRId64 " %10.3f %10.1f %7.0f%% %13s\n", r.L, r.hkv, r.t * 1e3, r.gbs * 1e-9,
                  100 * r.gbs / bandwidth, ratio.c_str());
    }
  }
  if (!window_rows.empty()) {
    std::printf("\nwindow: L = %" PRId64 ", d = 64, 2 heads, causal + left window; full = non-causal, forward %.2f ms, "
                "backward %.2f ms;\nratio = time / (density x full time), density = visible pairs / L^2\n",
                opt.window_len, t_full_window * 1e3, t_full_window_bwd * 1e3);
    std::printf("%8s %9s %10s %7s %10s %7s\n", "window", "density", "fwd ms", "ratio", "bwd ms", "ratio");
    for (const auto& r : window_rows)
      std::printf("%8s %9.4f %10.2f %7.2f %10.2f %7.2f\n", r.w < 0 ? "none" : std::to_string(r.w).c_str(), r.density,
                  r.t * 1e3, r.ratio, r.t_bwd * 1e3, r.ratio_bwd);
  }
  if (!tune_rows.empty()) {
    std::printf("\ntune: L = 4096, 4 heads, non-causal; tile sizes (rows x keys) -> ms\n");
    for (const auto& r : tune_rows) {
      std::printf("%s d=%" PRId64 " %4" PRId64 " x %4" PRId64 " %9.2f ms\n", r.what.c_str(), r.d, r.rows, r.keys,
                  r.t * 1e3);
      record({{"bench", "attention"}, {"section", "tune"}, {"pass", r.what}, {"d", r.d}, {"rows", r.rows},
              {"keys", r.keys}, {"seconds", r.t}});
    }
  }
  std::fflush(stdout);

  if (!opt.json_path.empty()) {
    write_json_file(opt.json_path, records);
    std::cout << "wrote " << opt.json_path << "\n";
  }
  if (!opt.svg_path.empty() && !plot.empty()) {
    PlotOptions po;
    po.title = str_cat("exact attention per head, non-causal, ", num_threads(), " threads, ", cpu.model_name);
    po.x_label = "L (tokens)";
    po.y_label = "ms per head";
    po.log_x = true;
    po.log_y = true;
    for (i64 L : opt.lengths) po.x_ticks.push_back(static_cast<double>(L));
    write_svg_line_chart(opt.svg_path, plot, po);
    std::cout << "wrote " << opt.svg_path << "\n";
  }
  return 0;
}

}  // namespace mf::bench
