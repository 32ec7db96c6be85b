// `modformer bench attention`: flash vs dense vs unfused vs sgemm, decode and
// window sections (see src/bench/attention_bench.h).
#include <memory>

#include "bench/attention_bench.h"
#include "cli/bench_registry.h"
#include "cli/command.h"  // MF_CLI_CONCAT, used by MF_REGISTER_BENCH

namespace {
std::function<int()> setup_attention(CLI::App& app) {
  auto opt = std::make_shared<mf::bench::AttentionBenchOptions>();
  auto quick = std::make_shared<bool>(false);
  auto no_child = std::make_shared<bool>(false);
  auto lengths = std::make_shared<std::vector<std::int64_t>>();
  auto dims = std::make_shared<std::vector<std::int64_t>>();
  auto sections = std::make_shared<std::vector<std::string>>();
  auto reps = std::make_shared<int>(0);
  auto decode_lengths = std::make_shared<std::vector<std::int64_t>>();
  auto window_len = std::make_shared<std::int64_t>(0);
  app.add_option("--lengths", *lengths, "Sequence lengths L (default 512 ... 16384, doubling)")->delimiter(',');
  app.add_option("--dims", *dims, "Head dims (default 64 128)")->delimiter(',');
  app.add_option("--sections", *sections, "Sections: main decode window tune (default main decode window)")
      ->delimiter(',');
  app.add_option("--reps", *reps, "Timed repetitions per cell, best kept (default 3; --quick 2)")
      ->check(CLI::Range(1, 100));
  app.add_option("--dense-max-len", opt->dense_max_len, "Dense reference rows up to this L")->capture_default_str();
  app.add_option("--unfused-max-len", opt->unfused_max_len, "Unfused baseline rows up to this L")
      ->capture_default_str();
  app.add_option("--decode-lengths", *decode_lengths, "KV lengths of the decode section (default 4096 ... 32768)")
      ->delimiter(',');
  app.add_option("--window-len", *window_len, "Sequence length of the window section (default 8192; --quick 4096)");
  app.add_option("--json", opt->json_path, "Write one JSON record per row to this file");
  app.add_option("--svg", opt->svg_path, "Write an SVG plot of time per head vs L to this file");
  app.add_flag("--quick", *quick, "Fewer lengths and reps (L 1024 4096)");
  app.add_flag("--no-coretype-child", *no_child, "Do not re-execute to measure OpenBLAS with OPENBLAS_CORETYPE=SkylakeX");
  return [opt, quick, no_child, lengths, dims, sections, reps, decode_lengths, window_len] {
    mf::bench::AttentionBenchOptions o = *quick ? mf::bench::quick_attention_bench_options() : *opt;
    o.dense_max_len = *quick ? std::min(o.dense_max_len, opt->dense_max_len) : opt->dense_max_len;
    o.unfused_max_len = opt->unfused_max_len;
    o.json_path = opt->json_path;
    o.svg_path = opt->svg_path;
    if (!lengths->empty()) o.lengths = *lengths;
    if (!dims->empty()) o.dims = *dims;
    if (!sections->empty()) o.sections = *sections;
    if (*reps > 0) o.reps = *reps;
    if (!decode_lengths->empty()) o.decode_lengths = *decode_lengths;
    if (*window_len != 0) o.window_len = *window_len;
    if (!*no_child) o.self_exe = "/proc/self/exe";
    return mf::bench::run_attention_bench(o);
  };
}
}  // namespace

MF_REGISTER_BENCH("attention", "Flash attention vs dense, unfused and sgemm; decode bandwidth, GQA, windows",
                  setup_attention);
