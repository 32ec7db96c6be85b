// `modformer bench mixers`: every registered token mixer (or --mixers) on
// the same x [B, L, C] (hidden C, H heads of C/H), forward and forward +
// backward times and peak activation bytes vs L, measured in interleaved
// rounds (each round runs every mixer once at that L, best of --reps kept);
// the growth ratio time(2L)/time(L) at the largest lengths; the crossover
// length from which each mixer beats exact flash attention (full_attention);
// JSON, and speed-vs-length and memory-vs-length SVGs. With --causal, also
// the decode time per generated token vs the context already held, for every
// mixer that generates (attention grows with the context; recurrent mixers
// should stay flat), as a table, JSON rows and decode.svg.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>

#include "bench/mixer_bench.h"
#include "cli/bench_registry.h"
#include "cli/command.h"
#include "core/alloc.h"
#include "core/json_report.h"
#include "core/rng.h"
#include "core/svg_plot.h"
#include "core/threads.h"
#include "model/transformer.h"
#include "nn/mixer/mixer_registry.h"

namespace {

struct MixerBenchOptions {
  std::vector<std::string> mixers;  // empty: every registered mixer that can run this way
  std::vector<std::int64_t> lengths = {512, 1024, 2048, 4096, 8192};
  std::int64_t hidden = 256, heads = 4, batch = 1;
  int reps = 3;
  bool causal = false;
  std::vector<std::int64_t> decode_contexts = {256, 1024, 4096, 8192};  // --causal only
  std::int64_t decode_steps = 32;
  bool no_decode = false;
  std::string json_path, out_dir = "bench_mixers";
};

// Decode cost per token (bench/mixer_bench.h), printed and returned as JSON rows.
nlohmann::json run_decode_bench(const MixerBenchOptions& o, mf::MixerBenchSet& set, std::vector<mf::PlotSeries>& plot) {
  using namespace mf;
  const std::vector<std::string>& names = set.names;
  std::vector<std::int64_t> contexts = o.decode_contexts;
  std::sort(contexts.begin(), contexts.end());
  std::cout << "\ndecode: time per generated token (batch " << o.batch << ") after a prefilled context of c tokens, mean of "
            << o.decode_steps << " steps, best of " << o.reps << " interleaved rounds:\n";
  const DecodeTimes dt = measure_decode(set, contexts, o.batch, o.reps, o.decode_steps);
  const std::vector<std::size_t>& gen = dt.mixers;
  const std::vector<std::vector<double>>& per_token = dt.per_token;
  for (std::size_t ci = 0; ci < contexts.size(); ++ci)
    for (std::size_t g = 0; g < gen.size(); ++g)
      std::cout << "  c " << std::setw(6) << contexts[ci] << "  " << std::left << std::setw(18) << names[gen[g]]
                << std::right << std::fixed << std::setprecision(1) << std::setw(10) << per_token[g][ci] * 1e6
                << " us/token\n";
  nlohmann::json out = nlohmann::json::array();
  for (std::size_t g = 0; g < gen.size(); ++g) {
    nlohmann::json rec = {{"mixer", names[gen[g]]}, {"rows", nlohmann::json::array()}};
    PlotSeries s{names[gen[g]], {}, {}};
    for (std::size_t ci = 0; ci < contexts.size(); ++ci) {
      rec["rows"].push_back({{"context", contexts[ci]}, {"seconds_per_token", per_token[g][ci]}});
      s.x.push_back(static_cast<double>(contexts[ci]));
      s.y.push_back(per_token[g][ci] * 1e6);
    }
    const double growth = per_token[g].back() / per_token[g].front();
    rec["growth_first_to_last_context"] = growth;
    std::cout << "  " << std::left << std::setw(18) << names[gen[g]] << std::right << " per-token time at c "
              << contexts.back() << " / at c " << contexts.front() << ": " << std::setprecision(2) << growth << "\n";
    plot.push_back(s);
    out.push_back(rec);
  }
  return out;
}

int run_mixer_bench(const MixerBenchOptions& o) {
  using namespace mf;
  MF_CHECK(o.hidden % o.heads == 0, "[bench mixers] --heads ", o.heads, " must divide --hidden ", o.hidden);
  MF_CHECK(!o.lengths.empty(), "[bench mixers] --lengths is empty");
  for (auto l : o.lengths) MF_CHECK(l >= 1, "[bench mixers] lengths must be >= 1, got ", l);
  std::vector<std::int64_t> lengths = o.lengths;
  std::sort(lengths.begin(), lengths.end());
  const std::int64_t max_len = lengths.back();

  MixerBenchSet set = make_bench_mixers(o.mixers, o.hidden, o.heads, max_len, o.causal, "[bench mixers] ");
  const ModelConfig& cfg = set.cfg;
  const std::vector<std::string>& names = set.names;
  const std::int64_t C = o.hidden, B = o.batch;
  std::cout << "bench mixers: hidden " << C << ", " << o.heads << " heads of " << C / o.heads << ", batch " << B
            << ", " << (o.causal ? "causal" : "bidirectional") << ", sliding_attention window " << cfg.sliding_window
            << ", options: each mixer's defaults (Linformer n = the largest L), threads " << num_threads() << ", best of "
            << o.reps << " interleaved rounds; load average " << load_average_1min() << "\n";
  const std::vector<std::vector<MixerSpeedCell>> cells = measure_mixer_speed(set, lengths, B, o.reps, o.causal);
  for (std::size_t li = 0; li < lengths.size(); ++li)
    for (std::size_t m = 0; m < names.size(); ++m) {
      const MixerSpeedCell& c = cells[m][li];
      std::cout << "  L " << std::setw(6) << lengths[li] << "  " << std::left << std::setw(18) << names[m] << std::right
                << std::fixed << std::setprecision(2) << " forward " << std::setw(9) << c.forward_s * 1e3
                << " ms   fwd+bwd " << std::setw(9) << c.train_s * 1e3 << " ms   peak " << std::setw(8)
                << c.peak_bytes / (1 << 20) << " MiB\n";
    }

  std::vector<PlotSeries> decode_plot;
  nlohmann::json decode;
  if (o.causal && !o.no_decode && !o.decode_contexts.empty()) {
    for (auto c : o.decode_contexts) MF_CHECK(c >= 1, "[bench mixers] decode contexts must be >= 1, got ", c);
    MF_CHECK(o.decode_steps >= 1, "[bench mixers] --decode-steps must be >= 1, got ", o.decode_steps);
    decode = run_decode_bench(o, set, decode_plot);
  }

  const auto flash = std::find(names.begin(), names.end(), "full_attention");
  nlohmann::json report = {{"benchmark", "mixers"},
                           {"environment", run_environment_json()},
                           {"hidden", C},
                           {"heads", o.heads},
                           {"batch", B},
                           {"causal", o.causal},
                           {"sliding_window", cfg.sliding_window},
                           {"reps", o.reps},
                           {"lengths", lengths},
                           {"mixers", nlohmann::json::array()}};
  if (!decode.is_null()) report["decode"] = decode;
  std::cout << "\nsummary (growth = time(L_max) / time(L_max / 2); crossover = the smallest L from which the mixer's "
               "forward+backward beats full_attention at every measured length):\n";
  std::vector<PlotSeries> speed, memory;
  for (std::size_t m = 0; m < names.size(); ++m) {
    nlohmann::json rec = {{"mixer", names[m]}, {"rows", nlohmann::json::array()}};
    PlotSeries sp{names[m] + " fwd+bwd", {}, {}}, me{names[m], {}, {}};
    for (std::size_t li = 0; li < lengths.size(); ++li) {
      const MixerSpeedCell& c = cells[m][li];
      rec["rows"].push_back({{"L", lengths[li]}, {"forward_s", c.forward_s}, {"forward_backward_s", c.train_s},
                             {"peak_activation_bytes", c.peak_bytes}});
      sp.x.push_back(static_cast<double>(lengths[li]));
      sp.y.push_back(c.train_s * 1e3);
      me.x.push_back(static_cast<double>(lengths[li]));
      me.y.push_back(std::max(c.peak_bytes, 1.0) / (1 << 20));
    }
    speed.push_back(sp);
    memory.push_back(me);
    std::cout << "  " << std::left << std::setw(18) << names[m] << std::right;
    const std::size_t n = lengths.size();
    if (n >= 2 && lengths[n - 1] == 2 * lengths[n - 2]) {
      const double g_fwd = cells[m][n - 1].forward_s / cells[m][n - 2].forward_s;
      const double g_train = cells[m][n - 1].train_s / cells[m][n - 2].train_s;
      rec["growth_forward"] = g_fwd;
      rec["growth_forward_backward"] = g_train;
      std::cout << " growth " << std::setprecision(2) << g_fwd << " (fwd) " << g_train << " (fwd+bwd) from L "
                << lengths[n - 2] << " to " << lengths[n - 1];
    }
    if (flash != names.end() && names[m] != "full_attention") {
      const std::size_t f = static_cast<std::size_t>(flash - names.begin());
      std::int64_t crossover = -1;
      for (std::size_t li = n; li-- > 0;) {
        if (cells[m][li].train_s < cells[f][li].train_s)
          crossover = lengths[li];
        else
          break;
      }
      rec["crossover_vs_full_attention"] = crossover > 0 ? nlohmann::json(crossover) : nlohmann::json(nullptr);
      std::cout << "; beats full_attention " << (crossover > 0 ? "from L " + std::to_string(crossover)
                                                               : std::string("at no measured L"));
      rec["ratio_vs_full_attention_at_max_len"] = cells[m][n - 1].train_s / cells[f][n - 1].train_s;
      std::cout << " (" << cells[m][n - 1].train_s / cells[f][n - 1].train_s << "x its time at L " << lengths[n - 1]
                << ")";
    }
    std::cout << "\n";
    report["mixers"].push_back(rec);
  }
  std::filesystem::create_directories(o.out_dir);
  PlotOptions po;
  po.log_x = po.log_y = true;
  po.x_label = "sequence length L";
  for (auto l : lengths) po.x_ticks.push_back(static_cast<double>(l));
  po.title = "token mixers: forward + backward time vs length (hidden " + std::to_string(C) + ")";
  po.y_label = "ms";
  write_svg_line_chart(o.out_dir + "/speed.svg", speed, po);
  po.title = "token mixers: peak activation memory (forward + backward) vs length";
  po.y_label = "MiB";
  write_svg_line_chart(o.out_dir + "/memory.svg", memory, po);
  if (!decode_plot.empty()) {
    PlotOptions pd;
    pd.log_x = pd.log_y = true;
    pd.x_label = "context already held (tokens)";
    for (auto c : o.decode_contexts) pd.x_ticks.push_back(static_cast<double>(c));
    pd.title = "decode: time per generated token vs context (hidden " + std::to_string(C) + ")";
    pd.y_label = "microseconds per token";
    write_svg_line_chart(o.out_dir + "/decode.svg", decode_plot, pd);
  }
  const std::string json_path = o.json_path.empty() ? o.out_dir + "/mixers.json" : o.json_path;
  write_json_file(json_path, report);
  std::cout << "wrote " << json_path << ", " << o.out_dir << "/speed.svg, " << o.out_dir << "/memory.svg"
            << (decode_plot.empty() ? "" : ", " + o.out_dir + "/decode.svg") << "\n";
  return 0;
}

}  // namespace

MF_REGISTER_BENCH("mixers", "Every token mixer: forward and forward+backward time and peak memory vs L, growth, "
                  "crossover vs flash attention (JSON + SVG)",
                  [](CLI::App& app) {
                    auto o = std::make_shared<MixerBenchOptions>();
                    app.add_option("--mixers", o->mixers, "Mixers to run (default: all that run this way)")
                        ->delimiter(',');
                    app.add_option("--lengths", o->lengths, "Sequence lengths (default 512 ... 8192, doubling)")
                        ->delimiter(',');
                    app.add_option("--hidden", o->hidden, "Hidden size C")->check(CLI::PositiveNumber);
                    app.add_option("--heads", o->heads, "Attention heads (head dim C / heads)")
                        ->check(CLI::PositiveNumber);
                    app.add_option("--batch", o->batch, "Batch size")->check(CLI::PositiveNumber);
                    app.add_option("--reps", o->reps, "Interleaved rounds, best kept")->check(CLI::PositiveNumber);
                    app.add_flag("--causal", o->causal, "Causal (decoder) mixers; default bidirectional");
                    app.add_option("--decode-contexts", o->decode_contexts,
                                   "With --causal: contexts held before timing decode steps (default 256,1024,4096,8192)")
                        ->delimiter(',');
                    app.add_option("--decode-steps", o->decode_steps, "Decode steps timed per context")
                        ->check(CLI::PositiveNumber);
                    app.add_flag("--no-decode", o->no_decode, "Skip the decode section of --causal");
                    app.add_option("--json", o->json_path, "JSON report (default OUT_DIR/mixers.json)");
                    app.add_option("--out-dir", o->out_dir, "Folder of the SVGs (speed.svg, memory.svg) and JSON")
                        ->capture_default_str();
                    return std::function<int()>([o] { return run_mixer_bench(*o); });
                  });
