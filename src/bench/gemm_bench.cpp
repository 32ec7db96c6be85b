// The GEMM benchmark. OpenBLAS picks its kernels (core type) when the library
// loads, from the CPU or OPENBLAS_CORETYPE, so other core types are measured by
// re-executing this binary with the variable set (per shape, interleaved with
// the in-process rows so that all ratios come from one stretch of time).
#include "bench/gemm_bench.h"

#include <omp.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <sstream>

#include "core/cpu_features.h"
#include "core/error.h"
#include "core/json_report.h"
#include "core/progress.h"
#include "core/svg_plot.h"
#include "core/threads.h"

extern char** environ;

namespace mf::bench {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void fill_pattern(std::vector<float>& v, std::uint32_t seed) {
  std::uint32_t x = seed * 2654435761u + 1u;
  for (auto& f : v) {  // xorshift: cheap, deterministic, values in [-0.5, 0.5)
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    f = static_cast<float>(x >> 8) * (1.0f / 16777216.0f) - 0.5f;
  }
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// One measured cell of the table.
struct Row {
  GemmShape shape;
  std::string column;  // "openblas[SkylakeX]", "onednn", "reference"
  std::string backend, core;
  double gflops = 0;
  double ratio = 0;
};

struct ChildResult {
  std::string core;
  std::vector<double> gflops;  // per shape given
};

// Runs `exe args...` with OPENBLAS_CORETYPE=core and MODFORMER_THREADS set,
// and parses its MFGEMM lines.
ChildResult run_child(const GemmBenchOptions& opt, const std::string& core, const std::vector<GemmShape>& shapes) {
  std::vector<std::string> args{opt.self_exe};
  args.insert(args.end(), opt.child_args.begin(), opt.child_args.end());
  args.push_back("--child-openblas-only");
  args.push_back("--reps");
  args.push_back(std::to_string(opt.reps));
  args.push_back("--sizes");
  for (const auto& s : shapes) args.push_back(str_cat(s.m, "x", s.n, "x", s.k));
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "OPENBLAS_CORETYPE=", 18) != 0 && std::strncmp(*e, "MODFORMER_THREADS=", 18) != 0)
      env.emplace_back(*e);
  }
  env.push_back("OPENBLAS_CORETYPE=" + core);
  env.push_back("MODFORMER_THREADS=" + std::to_string(num_threads()));
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);

  int fds[2];
  MF_CHECK(::pipe(fds) == 0, "[bench gemm] pipe failed: ", std::strerror(errno));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_addclose(&fa, fds[1]);
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, opt.self_exe.c_str(), &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    fail("[bench gemm] cannot start '", opt.self_exe, "' for OPENBLAS_CORETYPE=", core, ": ", std::strerror(rc));
  }
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t got = ::read(fds[0], buf, sizeof buf);
    if (got > 0) out.append(buf, static_cast<std::size_t>(got));
    else if (got == 0 || errno != EINTR) break;
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  MF_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "[bench gemm] the OPENBLAS_CORETYPE=", core,
           " child process failed (status ", status, "); its output: ", out);
  ChildResult r;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string tag, kind;
    ls >> tag >> kind;
    if (tag != "MFGEMM") continue;
    if (kind == "core") {
      ls >> r.core;
    } else if (kind == "row") {
      std::int64_t m = 0, n = 0, k = 0;
      double g = 0;
      ls >> m >> n >> k >> g;
      r.gflops.push_back(g);
    }
  }
  MF_CHECK(!r.core.empty() && r.gflops.size() == shapes.size(), "[bench gemm] could not parse the OPENBLAS_CORETYPE=",
           core, " child's output: ", out);
  return r;
}

// Parallel-over-batch vs a loop of threaded products, the choice gemm_batched
// makes with kBatchParallelMaxFlops (kernels/gemm.cpp).
struct BatchedRow {
  std::int64_t size, count;
  std::string backend;
  double loop_gflops, parallel_gflops, chosen_gflops;
};

BatchedRow measure_batched(GemmBackend be, std::int64_t s, std::int64_t count, int reps) {
  std::vector<float> a(static_cast<std::size_t>(s * s * count)), b(a.size()), c(a.size());
  fill_pattern(a, 1);
  fill_pattern(b, 2);
  const double flops = 2.0 * static_cast<double>(s * s * s * count);
  auto time_best = [&](auto&& fn) {
    fn();
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = Clock::now();
      fn();
      best = std::min(best, seconds_since(t0));
    }
    return flops / best * 1e-9;
  };
  auto one = [&](std::int64_t i) {
    gemm_using(be, Trans::N, Trans::N, s, s, s, 1.0f, a.data() + i * s * s, s, b.data() + i * s * s, s, 0.0f,
               c.data() + i * s * s, s);
  };
  BatchedRow row{s, count, gemm_backend_name(be), 0, 0, 0};
  row.loop_gflops = time_best([&] {
    for (std::int64_t i = 0; i < count; ++i) one(i);
  });
  row.parallel_gflops = time_best([&] {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < count; ++i) one(i);
  });
  row.chosen_gflops = time_best([&] {
    gemm_batched_using(be, Trans::N, Trans::N, s, s, s, 1.0f, a.data(), s, s * s, b.data(), s, s * s, 0.0f, c.data(),
                       s, s * s, count);
  });
  return row;
}

std::string env_or_unset(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : "unset";
}

}  // namespace

std::vector<double> measure_sgemm_gflops_each(std::int64_t m, std::int64_t n, std::int64_t k,
                                              const std::vector<GemmBackend>& backends, int reps, Trans ta, Trans tb) {
  MF_CHECK(m > 0 && n > 0 && k > 0, "[bench gemm] m, n, k must be positive, got ", m, "x", n, "x", k);
  MF_CHECK(reps >= 1, "[bench gemm] reps must be >= 1, got ", reps);
  std::vector<float> a(static_cast<std::size_t>(m * k)), b(static_cast<std::size_t>(k * n)),
      c(static_cast<std::size_t>(m * n));
  fill_pattern(a, 1);
  fill_pattern(b, 2);
  const std::int64_t lda = ta == Trans::N ? k : m, ldb = tb == Trans::N ? n : k;
  auto call = [&](GemmBackend be) {
    gemm_using(be, ta, tb, m, n, k, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(), n);
  };
  for (GemmBackend be : backends) call(be);  // warmup: JIT, thread start, page faults
  std::vector<double> best(backends.size(), 1e30);
  for (int r = 0; r < reps; ++r) {
    for (std::size_t i = 0; i < backends.size(); ++i) {
      const auto t0 = Clock::now();
      call(backends[i]);
      best[i] = std::min(best[i], seconds_since(t0));
    }
  }
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  for (auto& t : best) t = flops / t * 1e-9;
  return best;
}

double measure_sgemm_gflops(std::int64_t m, std::int64_t n, std::int64_t k, GemmBackend backend, int reps, Trans ta,
                            Trans tb) {
  return measure_sgemm_gflops_each(m, n, k, {backend}, reps, ta, tb)[0];
}

std::string GemmShape::label() const { return square() ? std::to_string(m) : str_cat(m, "x", n, "x", k); }

std::vector<std::string> default_gemm_shape_specs() {
  return {"256", "512", "1024", "2048", "4096x4096x64", "4096x64x4096"};
}

std::vector<GemmShape> parse_gemm_shapes(const std::vector<std::string>& specs) {
  MF_CHECK(!specs.empty(), "[bench gemm] --sizes needs at least one size");
  std::vector<GemmShape> out;
  for (const auto& s : specs) {
    std::vector<std::int64_t> v;
    std::size_t pos = 0;
    bool ok = !s.empty();
    while (ok && pos <= s.size()) {
      std::size_t end = s.find('x', pos);
      if (end == std::string::npos) end = s.size();
      const std::string part = s.substr(pos, end - pos);
      char* e = nullptr;
      const long long x = part.empty() ? 0 : std::strtoll(part.c_str(), &e, 10);
      ok = !part.empty() && *e == '\0' && x >= 1 && x <= 65536;
      v.push_back(x);
      pos = end + 1;
    }
    ok = ok && (v.size() == 1 || v.size() == 3);
    MF_CHECK(ok, "[bench gemm] size '", s, "' must be N or MxNxK with each value in [1, 65536]");
    out.push_back(v.size() == 1 ? GemmShape{v[0], v[0], v[0]} : GemmShape{v[0], v[1], v[2]});
  }
  return out;
}

int run_gemm_bench_child(const GemmBenchOptions& opt) {
  const auto shapes = parse_gemm_shapes(opt.sizes);
  std::printf("MFGEMM core %s\n", blas_core_name().c_str());
  for (const auto& s : shapes) {
    const double g = measure_sgemm_gflops(s.m, s.n, s.k, GemmBackend::OpenBLAS, opt.reps);
    std::printf("MFGEMM row %" PRId64 " %" PRId64 " %" PRId64 " %.6g\n", s.m, s.n, s.k, g);
  }
  std::fflush(stdout);
  return 0;
}

int run_gemm_bench(const GemmBenchOptions& opt) {
  MF_CHECK(opt.reps >= 1 && opt.reps <= 1000, "[bench gemm] --reps must be in [1, 1000], got ", opt.reps);
  const auto shapes = parse_gemm_shapes(opt.sizes);
  const auto& cpu = cpu_features();
  const std::string here_core = blas_core_name();
  // OpenBLAS core types to measure: this process's, plus SkylakeX (AVX-512)
  // and Haswell (AVX2, the value this environment may force) in children.
  std::vector<std::string> child_cores;
  if (!opt.self_exe.empty()) {
    if (cpu.avx512f && lower(here_core) != "skylakex") child_cores.push_back("SkylakeX");
    if (cpu.avx2 && lower(here_core) != "haswell") child_cores.push_back("Haswell");
  }
  const bool onednn = gemm_backend_available(GemmBackend::OneDNN);
  std::int64_t smallest = 0;
  for (std::size_t i = 1; i < shapes.size(); ++i)
    if (shapes[i].m * shapes[i].n * shapes[i].k < shapes[smallest].m * shapes[smallest].n * shapes[smallest].k)
      smallest = static_cast<std::int64_t>(i);

  const double load = load_average_1min();
  const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  std::cout << "modformer bench gemm: sgemm C[m,n] = A[m,k] B[k,n] (row-major, fp32), GFLOP/s = 2mnk / best time,\n"
            << "  best of " << opt.reps << " after 1 warmup; (ratio) = GFLOP/s / best in the row\n"
            << "cpu:       " << cpu.model_name << " (avx2 " << (cpu.avx2 ? "yes" : "no") << ", avx512f "
            << (cpu.avx512f ? "yes" : "no") << ")\n"
            << "threads:   " << num_threads() << " (OMP_WAIT_POLICY=" << env_or_unset("OMP_WAIT_POLICY") << ")\n"
            << "load:      " << fmt("%.2f", load) << " (1-min average) on " << cpus << " online CPUs"
            << (load > static_cast<double>(cpus) ? ": other processes compete, expect noise" : "") << "\n"
            << "openblas:  core " << here_core << " in this process (OPENBLAS_CORETYPE=" << env_or_unset("OPENBLAS_CORETYPE") << ")";
  if (!child_cores.empty()) {
    std::cout << "; measured in child processes with OPENBLAS_CORETYPE=";
    for (std::size_t i = 0; i < child_cores.size(); ++i) std::cout << (i ? ", " : "") << child_cores[i];
  }
  std::cout << "\n"
            << "onednn:    " << (onednn ? "built in (ignores OPENBLAS_CORETYPE)" : "not built in") << "\n"
            << "auto:      " << gemm_backend_selection() << "\n"
            << "reproduce: ";
  for (const char* var : {"OPENBLAS_CORETYPE", "OMP_WAIT_POLICY"})
    if (env_or_unset(var) != "unset") std::cout << var << "=" << env_or_unset(var) << " ";
  std::cout << "modformer --threads " << num_threads() << " bench gemm --reps " << opt.reps
            << (opt.batched ? "" : " --no-batched") << " --sizes";
  for (const auto& s : shapes) std::cout << " " << s.label();
  std::cout << "\n\n" << std::flush;

  std::vector<std::string> columns{"openblas[" + here_core + "]"};
  std::vector<Row> rows;
  const std::size_t per_shape = 1 + child_cores.size() + (onednn ? 1 : 0);
  ProgressBar::Options popt;
  popt.unit = "cell";
  ProgressBar progress("bench gemm", static_cast<std::int64_t>(shapes.size() * per_shape + 1), popt);
  std::map<std::string, std::string> renamed;  // requested core -> core the child reported
  for (std::size_t si = 0; si < shapes.size(); ++si) {
    const auto& s = shapes[si];
    auto add = [&](const std::string& column, const std::string& backend, const std::string& core, double g) {
      if (std::find(columns.begin(), columns.end(), column) == columns.end()) columns.push_back(column);
      rows.push_back({s, column, backend, core, g, 0});
      progress.advance(1, s.label() + " " + column);
    };
    // In-process backends with interleaved repetitions; the child processes
    // (other OpenBLAS core types) run right after, on the same shape.
    std::vector<GemmBackend> here{GemmBackend::OpenBLAS};
    if (onednn) here.push_back(GemmBackend::OneDNN);
    const std::vector<double> g = measure_sgemm_gflops_each(s.m, s.n, s.k, here, opt.reps);
    add(columns[0], "openblas", here_core, g[0]);
    if (onednn) add("onednn", "onednn", "", g[1]);
    for (const auto& core : child_cores) {
      const ChildResult r = run_child(opt, core, {s});
      if (lower(r.core) != lower(core)) renamed[core] = r.core;
      add("openblas[" + r.core + "]", "openblas", r.core, r.gflops[0]);
    }
    if (static_cast<std::int64_t>(si) == smallest) {
      add("reference", "reference", "",
          measure_sgemm_gflops(s.m, s.n, s.k, GemmBackend::Reference, std::min(opt.reps, 2)));
    }
  }
  progress.finish();
  // Columns: the OpenBLAS core types side by side, then oneDNN, then the reference.
  std::stable_partition(columns.begin(), columns.end(), [](const std::string& c) { return c.rfind("openblas", 0) == 0; });
  for (auto& r : rows) {
    double best = 0;
    for (const auto& o : rows)
      if (o.shape.m == r.shape.m && o.shape.n == r.shape.n && o.shape.k == r.shape.k) best = std::max(best, o.gflops);
    r.ratio = r.gflops / best;
  }
  for (const auto& [want, got] : renamed)
    std::cout << "note: OPENBLAS_CORETYPE=" << want << " gave OpenBLAS core " << got << "\n";

  // Table: one line per shape, one column per backend/core.
  const int w0 = 16, w = 21;
  std::printf("%-*s", w0, "m x n x k");
  for (const auto& c : columns) std::printf("%*s", w, c.c_str());
  std::printf("\n");
  for (const auto& s : shapes) {
    std::printf("%-*s", w0, str_cat(s.m, "x", s.n, "x", s.k).c_str());
    for (const auto& c : columns) {
      std::string cell = "-";
      for (const auto& r : rows)
        if (r.shape.m == s.m && r.shape.n == s.n && r.shape.k == s.k && r.column == c)
          cell = fmt("%.1f", r.gflops) + " (" + fmt("%.2f", r.ratio) + ")";
      std::printf("%*s", w, cell.c_str());
    }
    std::printf("\n");
  }
  std::fflush(stdout);

  std::vector<BatchedRow> batched;
  if (opt.batched) {
    std::printf("\nbatched: 64 products of s x s x s; loop = threaded products one after another, parallel = over\n"
                "the batch with single-threaded products, gemm_batched = what the engine chooses (GFLOP/s)\n");
    std::printf("%-6s%-10s%12s%12s%15s\n", "s", "backend", "loop", "parallel", "gemm_batched");
    std::vector<GemmBackend> bes{GemmBackend::OpenBLAS};
    if (onednn) bes.push_back(GemmBackend::OneDNN);
    for (std::int64_t s : {16, 32, 64, 128, 256}) {
      for (GemmBackend be : bes) {
        const auto r = measure_batched(be, s, 64, std::min(opt.reps, 3));
        batched.push_back(r);
        std::printf("%-6" PRId64 "%-10s%12.1f%12.1f%15.1f\n", s, r.backend.c_str(), r.loop_gflops, r.parallel_gflops,
                    r.chosen_gflops);
        std::fflush(stdout);
      }
    }
  }

  if (!opt.json_path.empty()) {
    const nlohmann::json env = run_environment_json();
    nlohmann::json records = nlohmann::json::array();
    for (const auto& r : rows) {
      nlohmann::json j = env;
      j.update({{"bench", "gemm"}, {"m", r.shape.m}, {"n", r.shape.n}, {"k", r.shape.k}, {"backend", r.backend},
                {"column", r.column}, {"gflops", r.gflops},
                {"best_seconds", 2.0 * static_cast<double>(r.shape.m * r.shape.n * r.shape.k) / (r.gflops * 1e9)}, {"ratio_to_best", r.ratio}, {"reps", opt.reps}});
      if (r.backend == "openblas") j["openblas_core"] = r.core;
      else j.erase("openblas_core");
      records.push_back(j);
    }
    for (const auto& r : batched) {
      nlohmann::json j = env;
      j.update({{"bench", "gemm_batched"}, {"m", r.size}, {"n", r.size}, {"k", r.size}, {"count", r.count},
                {"backend", r.backend}, {"loop_gflops", r.loop_gflops}, {"parallel_gflops", r.parallel_gflops},
                {"gemm_batched_gflops", r.chosen_gflops}});
      records.push_back(j);
    }
    write_json_file(opt.json_path, records);
    std::cout << "wrote " << opt.json_path << "\n";
  }
  if (!opt.svg_path.empty()) {
    std::vector<PlotSeries> series;
    for (const auto& c : columns) {
      PlotSeries ps{c, {}, {}};
      for (const auto& r : rows)
        if (r.column == c && r.shape.square()) {
          ps.x.push_back(static_cast<double>(r.shape.m));
          ps.y.push_back(r.gflops);
        }
      if (!ps.x.empty()) series.push_back(ps);
    }
    PlotOptions po;
    po.title = str_cat("sgemm N x N x N, ", num_threads(), " threads, ", cpu.model_name);
    po.x_label = "N";
    po.y_label = "GFLOP/s";
    po.log_x = true;
    po.y_from_zero = true;
    for (const auto& s : shapes)
      if (s.square()) po.x_ticks.push_back(static_cast<double>(s.m));
    write_svg_line_chart(opt.svg_path, series, po);
    std::cout << "wrote " << opt.svg_path << "\n";
  }
  return 0;
}

}  // namespace mf::bench
