// The training benchmark. Our engine and the PyTorch twin (a child process,
// so that its BLAS and OpenMP runtimes never share ours) run the same config,
// batch, sequence length, thread count, AdamW and clipping on random tokens;
// variants alternate round by round so that load changes hit them alike.
#include "bench/train_bench.h"

#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "bench/gemm_bench.h"
#include "core/alloc.h"
#include "core/error.h"
#include "core/json_report.h"
#include "core/progress.h"
#include "core/rng.h"
#include "core/svg_plot.h"
#include "core/threads.h"
#include "model/transformer.h"
#include "nn/attention/attention.h"
#include "nn/linear.h"
#include "train/adamw.h"
#include "train/grad_clip.h"
#include "train/trainer.h"

extern char** environ;

namespace mf::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Token ids in [0, vocab) for step `step`: tokens [B, L] and the next-token targets [B, L].
void fill_random_batch(Tensor& tokens, Tensor& targets, std::int64_t vocab, std::uint64_t step) {
  const std::int64_t B = tokens.size(0), L = tokens.size(1);
  std::int32_t* t = tokens.data<std::int32_t>();
  std::int32_t* y = targets.data<std::int32_t>();
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t i = 0; i <= L; ++i) {
      const float u = rng_uniform(0xbe4c7, step, static_cast<std::uint64_t>(b * (L + 1) + i));
      const auto id = static_cast<std::int32_t>(std::min<std::int64_t>(vocab - 1, static_cast<std::int64_t>(u * static_cast<float>(vocab))));
      if (i < L) t[b * L + i] = id;
      if (i > 0) y[b * L + i - 1] = id;
    }
  }
}

std::string exe_dir() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : p.parent_path().string();
}

struct ChildOutput {
  int spawn_error = 0;  // errno of posix_spawn, 0 when it started
  int status = 0;       // waitpid status
  std::string out;      // stdout and stderr together
};

// Runs argv[0] (a path) with our environment; stdout and stderr are captured.
ChildOutput run_child(const std::vector<std::string>& args) {
  ChildOutput r;
  std::vector<char*> argv;
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  int fds[2];
  MF_CHECK(::pipe(fds) == 0, "[bench train] pipe failed: ", std::strerror(errno));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&fa, fds[1], STDERR_FILENO);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_addclose(&fa, fds[1]);
  pid_t pid = 0;
  r.spawn_error = ::posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[1]);
  if (r.spawn_error != 0) {
    ::close(fds[0]);
    return r;
  }
  char buf[4096];
  for (;;) {
    const ssize_t got = ::read(fds[0], buf, sizeof buf);
    if (got > 0) r.out.append(buf, static_cast<std::size_t>(got));
    else if (got == 0 || errno != EINTR) break;
  }
  ::close(fds[0]);
  while (::waitpid(pid, &r.status, 0) < 0 && errno == EINTR) {
  }
  return r;
}

// The last line of `out` that parses as a JSON object with "ok"; null when none.
json last_json_line(const std::string& out) {
  std::istringstream in(out);
  std::string line;
  json found;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] != '{') continue;
    json j = json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object() && j.contains("ok")) found = j;
  }
  return found;
}

std::string tail(const std::string& s, std::size_t n = 600) { return s.size() <= n ? s : "..." + s.substr(s.size() - n); }

// Runs the script; returns its JSON line, or sets `reason` and returns null.
json run_script(const std::string& python, const std::vector<std::string>& script_args, std::string& reason) {
  if (::access(python.c_str(), X_OK) != 0) {
    reason = str_cat("cannot run '", python, "': ", std::strerror(errno), " (install Debian's python3 and python3-torch)");
    return json();
  }
  std::vector<std::string> args{python};
  args.insert(args.end(), script_args.begin(), script_args.end());
  const ChildOutput c = run_child(args);
  if (c.spawn_error != 0) {
    reason = str_cat("cannot start '", python, "': ", std::strerror(c.spawn_error));
    return json();
  }
  const json j = last_json_line(c.out);
  if (j.is_null()) {
    reason = str_cat("'", python, " ", script_args.empty() ? "" : script_args[0], "' exited with status ",
                     WIFEXITED(c.status) ? WEXITSTATUS(c.status) : -1, " without a result; its output: ", tail(c.out));
    return json();
  }
  if (!j.value("ok", false)) {
    reason = j.value("error", std::string("the script reported a failure"));
    if (reason.find("cannot import torch") != std::string::npos)
      reason += " (PyTorch is missing: apt-get install python3-torch)";
    return json();
  }
  return j;
}

std::string mib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", bytes / (1024.0 * 1024.0));
  return b;
}
std::string ms(double s) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", s * 1e3);
  return b;
}
std::string fixed(double v, int digits) {
  char b[32];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

json phases_json(const PhaseTimes& p) {
  return {{"step_s", p.step_s}, {"forward_s", p.forward_s}, {"backward_s", p.backward_s}, {"optimizer_s", p.optimizer_s}};
}
json engine_json(const EngineRun& r) {
  return {{"tokens_per_s", r.tokens_per_s},
          {"phases", phases_json(r.phases)},
          {"peak_engine_bytes", r.peak_engine_bytes},
          {"resident_engine_bytes", r.resident_engine_bytes},
          {"saved_activation_bytes", r.saved_activation_bytes},
          {"last_loss", r.last_loss}};
}

// Rate of `flops` in `seconds` as a fraction of `sgemm_flops_per_s`; null when not measurable.
json fraction_of(double flops, double seconds, double sgemm_flops_per_s) {
  if (!(seconds > 0) || !(sgemm_flops_per_s > 0) || !(flops > 0)) return json(nullptr);
  return flops / seconds / sgemm_flops_per_s;
}
std::string percent(const json& fraction) {
  return fraction.is_null() ? std::string("n/a") : fixed(100 * fraction.get<double>(), 0) + "%";
}

// The --profile section: the category table (per step of the profiled run),
// the SVG bar chart, and the model's FLOPs/s against the same-run sgemm rate
// at the largest GEMM shape the step ran (phases of the best unprofiled run).
json report_profile(const TrainingProfile& prof, const EngineRun& profiled, const EngineRun& best,
                    const ModelConfig& cfg, std::int64_t batch, std::int64_t seq_len, const std::string& svg_path) {
  const double n = prof.steps, step_s = profiled.phases.step_s;
  const profile::GemmShape big = prof.step.largest_gemm;
  const double sgemm = big.flops() > 0 ? measure_sgemm_gflops(big.m, big.n, big.k) * 1e9 : 0.0;
  std::cout << "\n## profile (a separate run with the profiler on, " << prof.steps << " timed steps; step "
            << ms(step_s) << " ms vs " << ms(best.phases.step_s) << " ms unprofiled)\n\n"
            << "| category | ms/step | % of step | calls/step | GFLOP/s | of it in a gradient-free forward, ms |\n"
            << "|---|---|---|---|---|---|\n";
  json categories = json::array();
  std::vector<Bar> bars;
  double attributed = 0;
  auto add_row = [&](const std::string& name, double seconds, double calls, double flops, double forward_s) {
    const json gflops = seconds > 0 && flops > 0 ? json(flops / seconds * 1e-9) : json(nullptr);
    const double share = step_s > 0 ? seconds / step_s : 0.0;
    std::cout << "| " << name << " | " << fixed(seconds * 1e3, 2) << " | " << fixed(100 * share, 1) << "% | "
              << (calls >= 0 ? fixed(calls, 0) : std::string("-")) << " | "
              << (gflops.is_null() ? std::string("-") : fixed(gflops.get<double>(), 1)) << " | "
              << (forward_s >= 0 ? fixed(forward_s * 1e3, 2) : std::string("-")) << " |\n";
    categories.push_back({{"name", name},
                          {"step_s", seconds},
                          {"fraction_of_step", share},
                          {"calls_per_step", calls >= 0 ? json(calls) : json(nullptr)},
                          {"gflops", gflops},
                          {"forward_s", forward_s >= 0 ? json(forward_s) : json(nullptr)}});
    bars.push_back({name, seconds * 1e3, fixed(100 * share, 1) + "%"});
  };
  for (int i = 0; i < profile::kNumCategories; ++i) {
    const profile::CategoryTotals& c = prof.step.categories[i];
    const double seconds = c.seconds / n;
    attributed += seconds;
    add_row(profile::category_name(static_cast<profile::Category>(i)), seconds, static_cast<double>(c.calls) / n,
            c.flops / n, prof.forward.categories[i].seconds / n);
  }
  const double unattributed = std::max(0.0, step_s - attributed);
  add_row("unattributed", unattributed, -1, 0, -1);

  const double forward_gemm = prof.forward.categories[static_cast<int>(profile::Category::Gemm)].flops / n;
  const double step_gemm = prof.step.categories[static_cast<int>(profile::Category::Gemm)].flops / n;
  const double forward_flops = model_forward_flops(cfg, batch, seq_len, forward_gemm);
  const PhaseTimes& ph = best.phases;
  const json f_fwd = fraction_of(forward_flops, ph.forward_s, sgemm);
  const json f_bwd = fraction_of(2 * forward_flops, ph.backward_s, sgemm);
  const json f_step = fraction_of(3 * forward_flops, ph.step_s, sgemm);
  const double gemm_s = prof.step.categories[static_cast<int>(profile::Category::Gemm)].seconds / n;
  const json f_gemm = fraction_of(step_gemm, gemm_s, sgemm);
  std::cout << "\nunattributed = step minus every category (residual adds, layout glue, allocation, bookkeeping); "
               "copy = Tensor::copy_from (clone, contiguous() of a strided view); categories are exclusive "
               "(a GEMM inside the loss counts as gemm).\n"
            << "sgemm at the model's largest GEMM (m " << big.m << ", n " << big.n << ", k " << big.k
            << "), same run: " << fixed(sgemm * 1e-9, 1) << " GFLOP/s\n"
            << "model FLOPs per step: forward " << fixed(forward_flops * 1e-9, 3) << " GFLOP (GEMMs "
            << fixed(forward_gemm * 1e-9, 3) << " + attention core " << fixed((forward_flops - forward_gemm) * 1e-9, 3)
            << "), backward 2x, step 3x; GEMM FLOPs the step actually ran: " << fixed(step_gemm * 1e-9, 3)
            << " GFLOP\n"
            << "model FLOPs/s as a fraction of that sgemm rate (unprofiled phases): forward " << percent(f_fwd)
            << ", backward " << percent(f_bwd) << ", whole step " << percent(f_step) << "; the GEMM calls alone "
            << percent(f_gemm) << "\n";
  // GEMM calls by shape, the slowest total first: where the GEMM time goes and at what rate.
  std::vector<profile::GemmShapeTotals> shapes = prof.step.gemm_shapes;
  std::sort(shapes.begin(), shapes.end(),
            [](const profile::GemmShapeTotals& a, const profile::GemmShapeTotals& b) { return a.seconds > b.seconds; });
  std::cout << "\nGEMM calls by shape (op(A) [m, k] x op(B) [k, n], batch products per call), per step:\n\n"
            << "| op | m | n | k | batch | calls/step | ms/step | GFLOP/s | of sgemm |\n|---|---|---|---|---|---|---|---|---|\n";
  json shape_rows = json::array();
  for (const profile::GemmShapeTotals& g : shapes) {
    const std::string op = str_cat(g.ta ? "T" : "N", g.tb ? "T" : "N");
    const json gflops = g.seconds > 0 ? json(g.flops / g.seconds * 1e-9) : json(nullptr);
    const json of_sgemm = fraction_of(g.flops, g.seconds, sgemm);
    std::cout << "| " << op << " | " << g.shape.m << " | " << g.shape.n << " | " << g.shape.k << " | " << g.batch
              << " | " << fixed(static_cast<double>(g.calls) / n, 1) << " | " << fixed(g.seconds / n * 1e3, 2) << " | "
              << (gflops.is_null() ? std::string("-") : fixed(gflops.get<double>(), 1)) << " | " << percent(of_sgemm)
              << " |\n";
    shape_rows.push_back({{"op", op}, {"m", g.shape.m}, {"n", g.shape.n}, {"k", g.shape.k}, {"batch", g.batch},
                          {"calls_per_step", static_cast<double>(g.calls) / n}, {"step_s", g.seconds / n},
                          {"gflops", gflops}, {"fraction_of_sgemm", of_sgemm}});
  }
  json j = {{"steps", prof.steps},
            {"gemm_shapes", shape_rows},
            {"step_s", step_s},
            {"unattributed_s", unattributed},
            {"categories", categories},
            {"sgemm", {{"m", big.m}, {"n", big.n}, {"k", big.k}, {"flops_per_s", sgemm}}},
            {"model_flops", {{"forward", forward_flops}, {"backward", 2 * forward_flops}, {"step", 3 * forward_flops},
                             {"forward_gemm", forward_gemm}, {"step_gemm", step_gemm}}},
            {"fraction_of_sgemm", {{"forward", f_fwd}, {"backward", f_bwd}, {"step", f_step}, {"gemm_calls", f_gemm}}},
            {"method", "categories: exclusive time of scoped timers (core/profile.h) per step of a separate profiled "
                       "run; fractions: model FLOPs (forward = GEMM FLOPs of a gradient-free forward + causal "
                       "attention core; backward = 2x; step = 3x) per second of the best unprofiled run's phases, "
                       "over sgemm at the largest GEMM shape measured in this process"}};
  if (!svg_path.empty()) {
    write_svg_bar_chart(svg_path, bars,
                        {str_cat("modformer training step profile (", fixed(step_s * 1e3, 1), " ms/step, ", batch, "x",
                                 seq_len, " tokens)"),
                         "ms per step"});
    j["svg"] = svg_path;
    std::cout << "SVG: " << svg_path << "\n";
  }
  return j;
}

std::int64_t peak_rss_bytes() {
  struct rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<std::int64_t>(u.ru_maxrss) * 1024;
}

}  // namespace

json run_train_script(const std::string& python, const std::string& script, const std::vector<std::string>& args,
                      std::string& reason) {
  if (script.empty()) {
    reason = "bench/train_pytorch.py not found (looked beside the executable and in ./bench; pass --script)";
    return json();
  }
  std::vector<std::string> all{script};
  all.insert(all.end(), args.begin(), args.end());
  return run_script(python, all, reason);
}

std::string find_train_script(const std::string& explicit_path) {
  if (!explicit_path.empty()) {
    MF_CHECK(fs::is_regular_file(explicit_path), "[bench train] --script '", explicit_path, "' does not exist");
    return explicit_path;
  }
  const std::string dir = exe_dir();
  std::vector<fs::path> candidates;
  if (!dir.empty()) {
    candidates.push_back(fs::path(dir) / ".." / "bench" / "train_pytorch.py");
    candidates.push_back(fs::path(dir) / "bench" / "train_pytorch.py");
  }
  candidates.push_back(fs::path("bench") / "train_pytorch.py");
  for (const auto& c : candidates) {
    std::error_code ec;
    if (fs::is_regular_file(c, ec)) return fs::weakly_canonical(c, ec).string();
  }
  return {};
}

EngineRun measure_modformer_training(const ModelConfig& cfg, std::int64_t batch, std::int64_t seq_len, int warmup,
                                     int steps, bool checkpointing, TrainingProfile* profile) {
  MF_CHECK(batch >= 1 && seq_len >= 1 && steps >= 1 && warmup >= 0, "[bench train] batch (", batch, "), seq_len (",
           seq_len, ") and steps (", steps, ") must be >= 1 and warmup (", warmup, ") >= 0");
  MF_CHECK(seq_len <= cfg.max_position_embeddings, "[bench train] seq_len ", seq_len,
           " exceeds the model's max_position_embeddings (", cfg.max_position_embeddings, ")");
  const TrainConfig tc = default_train_config();
  Transformer model(cfg, tc.seed);
  model.set_gradient_checkpointing(checkpointing);
  const std::vector<Parameter*> params = model.parameters();
  AdamW opt(params, AdamWConfig{tc.beta1, tc.beta2, tc.eps, tc.weight_decay});
  Tensor tokens = Tensor::empty({batch, seq_len}, DType::I32), targets = Tensor::empty({batch, seq_len}, DType::I32);

  struct ProfilerOff {  // the profiler never stays on past this measurement (also on an exception)
    bool used;
    ~ProfilerOff() {
      if (used) profile::set_enabled(false);
    }
  } profiler_off{profile != nullptr};
  EngineRun r;
  double fwd = 0, fwdbwd = 0, optim = 0, total = 0;
  for (int s = 0; s < warmup + steps; ++s) {
    fill_random_batch(tokens, targets, cfg.vocab_size, static_cast<std::uint64_t>(s));
    const bool timed = s >= warmup;
    if (s == warmup) {
      r.resident_engine_bytes = memory_stats().current_bytes;
      reset_peak_memory();
    }
    const bool profiled = timed && profile != nullptr;
    if (profiled) {
      profile::set_enabled(true);
      profile::reset();
    }
    // A gradient-free forward of the same batch, for the forward/backward split (not part of the step).
    auto t0 = Clock::now();
    (void)model.loss(tokens, targets, false);
    const double f = seconds_since(t0);
    if (profiled) {
      profile->forward += profile::snapshot();
      profile::reset();
    }

    t0 = Clock::now();
    zero_grads(params);
    const auto t1 = Clock::now();
    r.last_loss = model.loss(tokens, targets, true);
    const auto t2 = Clock::now();
    clip_grad_norm(params, tc.grad_clip);
    opt.step(tc.lr);
    const auto t3 = Clock::now();
    if (profiled) {
      profile->step += profile::snapshot();
      profile->steps += 1;
      profile::set_enabled(false);
    }
    if (timed) {
      fwd += f;
      fwdbwd += std::chrono::duration<double>(t2 - t1).count();
      optim += std::chrono::duration<double>((t1 - t0) + (t3 - t2)).count();
      total += std::chrono::duration<double>(t3 - t0).count();
    }
  }
  MF_CHECK(std::isfinite(r.last_loss), "[bench train] the loss is ", r.last_loss, " (not finite)");
  r.peak_engine_bytes = memory_stats().peak_bytes;
  r.saved_activation_bytes = model.last_saved_activation_bytes();
  const double n = steps;
  r.phases.step_s = total / n;
  r.phases.forward_s = fwd / n;
  r.phases.backward_s = std::max(0.0, (fwdbwd - fwd) / n);
  r.phases.optimizer_s = optim / n;
  r.tokens_per_s = static_cast<double>(batch * seq_len) / r.phases.step_s;
  return r;
}

double causal_attention_pairs(std::int64_t seq_len, std::int64_t window) {
  const double len = static_cast<double>(seq_len);
  if (window <= 0 || window >= seq_len) return len * (len + 1) / 2;
  const double w = static_cast<double>(window);
  return w * (w + 1) / 2 + (len - w) * w;  // the first W rows grow 1..W, the rest see W keys
}

double model_forward_flops(const ModelConfig& cfg, std::int64_t batch, std::int64_t seq_len,
                           double forward_gemm_flops) {
  double attention = 0;
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    const std::string mixer = cfg.layer_mixer(i);
    if (mixer != "full_attention" && mixer != "sliding_attention") continue;
    const std::int64_t window = mixer == "sliding_attention" ? cfg.sliding_window : 0;
    attention += 4.0 * static_cast<double>(batch * cfg.num_attention_heads * cfg.head_dim) *
                 causal_attention_pairs(seq_len, window);
  }
  return forward_gemm_flops + attention;
}

ComponentTimes measure_components(const ModelConfig& cfg, std::int64_t batch, std::int64_t seq_len, int reps) {
  MF_CHECK(reps >= 1, "[bench train] reps must be >= 1 but is ", reps);
  const std::int64_t B = batch, L = seq_len, N = B * L, D = cfg.head_dim, C = cfg.hidden_size;
  const std::int64_t Hq = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads;
  ComponentTimes t;

  // Attention core: forward + backward of one layer's call.
  {
    const Tensor q = randn({B, Hq, L, D}, 1), k = randn({B, Hkv, L, D}, 2), v = randn({B, Hkv, L, D}, 3);
    const Tensor dout = randn({B, Hq, L, D}, 4);
    AttentionOptions opt;
    opt.causal = true;
    opt.alibi = cfg.position == PositionKind::ALiBi;
    if (cfg.sliding_window > 0) opt.window_left = cfg.sliding_window - 1;
    double sum = 0;
    for (int r = 0; r <= reps; ++r) {  // the first call warms up
      const auto t0 = Clock::now();
      const AttentionOutput o = attention_forward(q, k, v, opt, cfg.attention_impl);
      const AttentionGrads g = attention_backward(q, k, v, o.out, o.lse, dout, opt, cfg.attention_impl);
      (void)g;
      if (r > 0) sum += seconds_since(t0);
    }
    t.attention_s = sum / reps * static_cast<double>(cfg.num_hidden_layers);
  }
  // Linear layers: every projection of a layer (x layers) and the LM head.
  {
    struct Shape2 {
      std::int64_t in, out, count;
    };
    std::vector<Shape2> shapes = {{C, Hq * D, cfg.num_hidden_layers},
                                  {C, Hkv * D, 2 * cfg.num_hidden_layers},
                                  {Hq * D, C, cfg.num_hidden_layers}};
    const std::int64_t I = cfg.intermediate_size;
    if (cfg.ffn == FfnKind::MLP) {
      shapes.push_back({C, I, cfg.num_hidden_layers});
    } else if (cfg.ffn != FfnKind::None) {
      shapes.push_back({C, I, 2 * cfg.num_hidden_layers});
    }
    if (cfg.ffn != FfnKind::None) shapes.push_back({I, C, cfg.num_hidden_layers});
    shapes.push_back({C, cfg.vocab_size, 1});
    for (const Shape2& s : shapes) {
      const Tensor x = randn({N, s.in}, 5), w = randn({s.out, s.in}, 6), dy = randn({N, s.out}, 7);
      Tensor y = Tensor::empty({N, s.out}), dx = Tensor::empty({N, s.in}), dw = Tensor::zeros({s.out, s.in});
      double sum = 0;
      for (int r = 0; r <= reps; ++r) {
        const auto t0 = Clock::now();
        linear_forward(y, x, w, Tensor());
        linear_backward(dx, dw, Tensor(), dy, x, w);
        if (r > 0) sum += seconds_since(t0);
      }
      t.linear_s += sum / reps * static_cast<double>(s.count);
    }
  }
  return t;
}

PytorchRun run_pytorch_twin(const std::string& python, const std::string& script, const std::string& config_json_path,
                            std::int64_t batch, std::int64_t seq_len, int threads, int warmup, int steps) {
  PytorchRun r;
  const TrainConfig tc = default_train_config();
  json j = run_train_script(python, script,
                      {"--config", config_json_path, "--batch-size", std::to_string(batch), "--seq-len",
                       std::to_string(seq_len), "--threads", std::to_string(threads), "--warmup",
                       std::to_string(warmup), "--steps", std::to_string(steps), "--lr", str_cat(tc.lr),
                       "--weight-decay", str_cat(tc.weight_decay), "--grad-clip", str_cat(tc.grad_clip), "--seed",
                       std::to_string(tc.seed)},
                      r.reason);
  if (j.is_null()) return r;
  try {
    r.parameters = j.at("parameters").get<std::int64_t>();
    r.tokens_per_s = j.at("tokens_per_s").get<double>();
    const json& p = j.at("phases");
    r.phases.step_s = j.at("step_s").get<double>();
    r.phases.forward_s = p.at("forward_s").get<double>();
    r.phases.backward_s = p.at("backward_s").get<double>();
    r.phases.optimizer_s = p.at("optimizer_s").get<double>();
    r.peak_rss_bytes = j.value("peak_rss_bytes", std::int64_t{0});
  } catch (const json::exception& e) {
    r.reason = str_cat("the script's result lacks a field: ", e.what());
    return r;
  }
  r.raw = j;
  r.available = true;
  return r;
}

std::int64_t pytorch_parameter_count(const std::string& python, const std::string& script,
                                     const std::string& config_json_path) {
  std::string reason;
  const json j = run_train_script(python, script, {"--config", config_json_path, "--count-params"}, reason);
  MF_CHECK(!j.is_null() && j.contains("parameters"), "[bench train] PyTorch parameter count: ", reason);
  return j["parameters"].get<std::int64_t>();
}

int run_train_bench(const TrainBenchOptions& o) {
  MF_CHECK(o.warmup >= 0 && o.steps >= 1 && o.rounds >= 1, "[bench train] warmup (", o.warmup, ") must be >= 0, steps (",
           o.steps, ") and rounds (", o.rounds, ") >= 1");
  const ModelConfig cfg = o.config_path.empty() ? default_config() : load_config(o.config_path);
  const TrainConfig tc = default_train_config();
  const std::int64_t B = o.batch_size > 0 ? o.batch_size : tc.batch_size;
  const std::int64_t L = o.seq_len > 0 ? o.seq_len : tc.seq_len;
  MF_CHECK(L <= cfg.max_position_embeddings, "[bench train] seq_len ", L, " exceeds the model's max_position_embeddings (",
           cfg.max_position_embeddings, ")");
  const int threads = num_threads();
  std::string command = o.command_line;
  if (command.empty()) {  // the flags that reproduce this run
    command = str_cat("modformer --threads ", threads, " bench train");
    if (!o.config_path.empty()) command += " --config " + o.config_path;
    command += str_cat(" --batch-size ", B, " --seq-len ", L, " --warmup ", o.warmup, " --steps ", o.steps,
                       " --rounds ", o.rounds);
    if (!o.pytorch) command += " --no-pytorch";
    if (!o.checkpointing) command += " --no-checkpointing";
    if (!o.components) command += " --no-components";
    if (o.profile) command += " --profile --profile-svg " + (o.profile_svg.empty() ? std::string("''") : o.profile_svg);
    if (!o.json_path.empty()) command += " --json " + o.json_path;
  }
  const std::int64_t ours_params = Transformer(cfg, 0).num_parameters();

  // The config the twin reads: exactly ours, in a temporary folder.
  std::string tmpl = (fs::temp_directory_path() / "modformer_bench_train_XXXXXX").string();
  MF_CHECK(::mkdtemp(tmpl.data()) != nullptr, "[bench train] cannot create a temporary folder: ", std::strerror(errno));
  const std::string tmp_dir = tmpl, cfg_path = tmp_dir + "/config.json";
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{tmp_dir};
  save_config(cfg_path, cfg);

  const std::string script = o.pytorch ? find_train_script(o.script) : std::string();
  std::int64_t torch_params = -1;
  std::string torch_reason = o.pytorch ? std::string() : std::string("skipped (--no-pytorch)");
  if (o.pytorch) {
    try {
      torch_params = pytorch_parameter_count(o.python, script, cfg_path);
    } catch (const Error& e) {
      torch_reason = e.what();
    }
  }
  const bool run_torch = torch_params >= 0;

  const double load_before = load_average_1min();
  std::cout << "# modformer bench train\n\n"
            << "command: " << command << "\n"
            << "config: " << (o.config_path.empty() ? std::string("built-in default (default_config())") : o.config_path)
            << " -- " << cfg.model_type << ", " << cfg.num_hidden_layers << " layers, hidden " << cfg.hidden_size
            << ", heads " << cfg.num_attention_heads << "/" << cfg.num_key_value_heads << " (q/kv), ffn "
            << ffn_kind_name(cfg.ffn) << " " << cfg.intermediate_size << ", vocab " << cfg.vocab_size << ", attention "
            << (cfg.attention_impl == AttentionImpl::Flash ? "flash" : "dense") << "\n"
            << "parameters: modformer " << ours_params << ", pytorch twin "
            << (run_torch ? std::to_string(torch_params) : std::string("n/a")) << "\n"
            << "batch " << B << " x seq " << L << " = " << B * L << " tokens/step, " << threads << " threads, warmup "
            << o.warmup << ", " << o.steps << " timed steps, " << o.rounds << " round(s), load average "
            << fixed(load_before, 2) << "\n";
  std::cout.flush();
  if (!o.pytorch || !run_torch) std::cout << "PyTorch: not measured: " << torch_reason << "\n";
  if (run_torch && torch_params != ours_params)
    std::cout << "WARNING: parameter counts differ (" << ours_params << " vs " << torch_params
              << "): the comparison is not of the same model\n";

  // ---- measure, variants alternating per round ----
  const std::int64_t per_variant = o.warmup + o.steps;
  const std::int64_t units_per_round =
      per_variant * (1 + (o.checkpointing ? 1 : 0) + (run_torch ? 1 : 0)) + (o.components ? 1 : 0);
  std::unique_ptr<ProgressBar> bar;
  if (o.progress) {
    ProgressBar::Options po;
    po.unit = "step";
    bar = std::make_unique<ProgressBar>("bench train", units_per_round * o.rounds, po);
  }
  auto advance = [&](std::int64_t n, const std::string& what) {
    if (bar) bar->advance(n, what);
  };
  std::optional<EngineRun> best, best_ckpt;
  std::optional<ComponentTimes> comp;
  PytorchRun torch_best;
  torch_best.reason = torch_reason;
  for (int round = 0; round < o.rounds; ++round) {
    const std::string tag = o.rounds > 1 ? str_cat(" (round ", round + 1, "/", o.rounds, ")") : std::string();
    if (bar) bar->set_extra("modformer" + tag);
    EngineRun r = measure_modformer_training(cfg, B, L, o.warmup, o.steps, false);
    if (!best || r.tokens_per_s > best->tokens_per_s) best = r;
    advance(per_variant, "modformer + checkpointing" + tag);
    if (o.checkpointing) {
      EngineRun c = measure_modformer_training(cfg, B, L, o.warmup, o.steps, true);
      if (!best_ckpt || c.tokens_per_s > best_ckpt->tokens_per_s) best_ckpt = c;
      advance(per_variant, "components" + tag);
    }
    if (o.components) {
      ComponentTimes c = measure_components(cfg, B, L, o.steps);
      if (!comp || c.attention_s + c.linear_s < comp->attention_s + comp->linear_s) comp = c;
      advance(1, "pytorch eager (child process)" + tag);
    }
    if (run_torch) {
      PytorchRun t = run_pytorch_twin(o.python, script, cfg_path, B, L, threads, o.warmup, o.steps);
      if (!t.available) {
        torch_best = t;
        std::cout << "PyTorch: the twin failed: " << t.reason << "\n";
        break;
      }
      if (!torch_best.available || t.tokens_per_s > torch_best.tokens_per_s) torch_best = t;
      advance(per_variant, "");
    }
  }
  if (bar) bar->finish();
  TrainingProfile prof;
  std::optional<EngineRun> profiled;
  if (o.profile) profiled = measure_modformer_training(cfg, B, L, o.warmup, o.steps, false, &prof);
  const double load_after = load_average_1min();

  // ---- report ----
  auto row = [&](const std::string& name, double tok_s, const PhaseTimes& p, const std::string& mem) {
    std::cout << "| " << name << " | " << format_count(tok_s) << " | " << ms(p.step_s) << " | " << ms(p.forward_s)
              << " | " << ms(p.backward_s) << " | " << ms(p.optimizer_s) << " | " << mem << " |\n";
  };
  std::cout << "\n| engine | tokens/s | step ms | forward ms | backward ms | optimizer ms | memory |\n"
            << "|---|---|---|---|---|---|---|\n";
  row("modformer", best->tokens_per_s, best->phases, "peak engine " + mib(static_cast<double>(best->peak_engine_bytes)));
  if (best_ckpt)
    row("modformer + gradient checkpointing", best_ckpt->tokens_per_s, best_ckpt->phases,
        "peak engine " + mib(static_cast<double>(best_ckpt->peak_engine_bytes)));
  if (torch_best.available)
    row("PyTorch " + torch_best.raw.value("torch_version", std::string("?")) + " eager", torch_best.tokens_per_s,
        torch_best.phases, "peak RSS " + mib(static_cast<double>(torch_best.peak_rss_bytes)));
  std::cout << "\nmodformer forward = a gradient-free forward of the same batch; backward = loss-with-gradients minus "
               "it; optimizer = zero grads + clip + AdamW. modformer process peak RSS "
            << mib(static_cast<double>(peak_rss_bytes())) << ".\n";

  json report = {{"benchmark", "train"},
                 {"environment", run_environment_json()},
                 {"command", command},
                 {"config_source", o.config_path.empty() ? std::string("default_config()") : o.config_path},
                 {"config", config_to_json(cfg)},
                 {"batch_size", B},
                 {"seq_len", L},
                 {"tokens_per_step", B * L},
                 {"threads", threads},
                 {"warmup_steps", o.warmup},
                 {"timed_steps", o.steps},
                 {"rounds", o.rounds},
                 {"optimizer", {{"name", "AdamW"}, {"lr", tc.lr}, {"betas", {tc.beta1, tc.beta2}}, {"eps", tc.eps},
                                {"weight_decay", tc.weight_decay}, {"grad_clip", tc.grad_clip}}},
                 {"load_average_before", load_before},
                 {"load_average_after", load_after},
                 {"parameters", {{"modformer", ours_params}, {"pytorch", run_torch ? json(torch_params) : json(nullptr)}}},
                 {"modformer", engine_json(*best)}};
  report["modformer"]["peak_rss_bytes"] = peak_rss_bytes();
  if (best_ckpt) {
    report["modformer_checkpointing"] = engine_json(*best_ckpt);
    const double cost = best->tokens_per_s / best_ckpt->tokens_per_s - 1.0;
    const std::int64_t saved_peak = best->peak_engine_bytes - best_ckpt->peak_engine_bytes;
    report["checkpointing"] = {{"peak_memory_saved_bytes", saved_peak},
                               {"activation_bytes_saved", best->saved_activation_bytes - best_ckpt->saved_activation_bytes},
                               {"time_cost", cost}};
    std::cout << "gradient checkpointing: activations kept " << mib(static_cast<double>(best->saved_activation_bytes))
              << " -> " << mib(static_cast<double>(best_ckpt->saved_activation_bytes)) << ", peak engine memory "
              << mib(static_cast<double>(best->peak_engine_bytes)) << " -> "
              << mib(static_cast<double>(best_ckpt->peak_engine_bytes)) << " (" << mib(static_cast<double>(saved_peak))
              << " saved), step time " << (cost >= 0 ? "+" : "") << fixed(cost * 100, 1) << "%\n";
  }
  if (comp) {
    const double fb = best->phases.forward_s + best->phases.backward_s;
    const double other = fb - comp->attention_s - comp->linear_s;
    report["components"] = {{"attention_s", comp->attention_s},
                            {"linear_s", comp->linear_s},
                            {"other_s", other},
                            {"forward_backward_s", fb},
                            {"method", "each component timed alone (forward + backward) at the model's shapes, "
                                       "summed over layers; other = modformer forward + backward minus both"}};
    std::cout << "components of forward + backward (" << ms(fb) << " ms, each timed alone at the model's shapes): "
              << "attention " << ms(comp->attention_s) << " ms (" << fixed(100 * comp->attention_s / fb, 0)
              << "%), linear layers " << ms(comp->linear_s) << " ms (" << fixed(100 * comp->linear_s / fb, 0)
              << "%), the rest (norms, RoPE, activations, loss, layout) " << ms(other) << " ms ("
              << fixed(100 * other / fb, 0) << "%)\n";
  }
  if (profiled) report["profile"] = report_profile(prof, *profiled, *best, cfg, B, L, o.profile_svg);
  if (torch_best.available) {
    const double ratio = best->tokens_per_s / torch_best.tokens_per_s;
    report["pytorch"] = torch_best.raw;
    report["pytorch"]["script"] = script;
    report["pytorch"]["python"] = o.python;
    report["ratio"] = ratio;
    report["target_ratio"] = 2.0;
    report["meets_target"] = ratio >= 2.0;
    std::cout << "\nratio modformer / PyTorch eager: " << fixed(ratio, 2) << "x tokens/s (target >= 2x: "
              << (ratio >= 2.0 ? "met" : "NOT met") << ")\n";
  } else {
    report["pytorch"] = {{"available", false}, {"reason", torch_best.reason}};
    report["ratio"] = nullptr;
    std::cout << "\nPyTorch eager: not measured (" << torch_best.reason << "); no ratio\n";
  }
  if (load_after > threads || load_before > threads)
    std::cout << "note: load average " << fixed(load_before, 1) << " -> " << fixed(load_after, 1) << " on "
              << threads << " threads: other processes competed; absolute numbers are low, the ratio is what counts\n";
  if (!o.json_path.empty()) {
    write_json_file(o.json_path, report);
    std::cout << "JSON: " << o.json_path << "\n";
  }
  return 0;
}

}  // namespace mf::bench
