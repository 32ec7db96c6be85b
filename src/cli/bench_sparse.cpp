// `modformer bench sparse`: block-sparse flash attention against dense flash
// attention in the same run. For each length L and density 1/k, a layout with
// exactly nb/k present tiles in every block row (columns drawn from the seed,
// the diagonal always present) is timed forward and forward + backward, and
// compared with the dense (full) flash kernel on the same Q, K, V:
//   ratio = time(sparse) / (density x time(dense))   (target <= 1.2),
// density = present tiles / all tiles. Rounds are interleaved (dense, then
// each density), best of --reps kept. A second dense row runs the dense kernel
// with query tiles of one layout block (a layout's tiles must lie in its
// blocks; the default forward tile is 192 rows): its ratio is the share of
// the sparse ratios that comes from the tile shape alone. Patterns (--patterns strided,fixed,
// bigbird,longformer) add the builders' layouts at their own densities.
#include <algorithm>
#include <chrono>
#include <ctime>
#include <iomanip>
#include <iostream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/bench_registry.h"
#include "cli/command.h"
#include "core/json_report.h"
#include "core/rng.h"
#include "core/threads.h"
#include "nn/attention/attention.h"
#include "nn/sparse/block_layout.h"

namespace {

using i64 = std::int64_t;

struct SparseBenchOptions {
  std::vector<i64> lengths = {8192};
  std::vector<i64> inverse_densities = {4, 8, 16};
  std::vector<std::string> patterns;
  i64 heads = 4, head_dim = 64, block = 64;
  int reps = 3;
  bool causal = false;
  std::string json_path;
  std::string clock = "wall";  // "cpu": process CPU time (with --threads 1: robust on a loaded machine)
};

double now_s(const std::string& clock) {
  if (clock == "cpu") {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// nb / k present tiles per block row: the diagonal plus distinct columns from Philox(seed).
std::shared_ptr<mf::BlockLayout> random_rows_layout(i64 len, i64 block, i64 k, std::uint64_t seed) {
  auto l = std::make_shared<mf::BlockLayout>();
  l->block = block;
  l->row_blocks = l->col_blocks = mf::layout_blocks(len, block);
  const i64 nb = l->row_blocks, per_row = std::max<i64>(1, nb / k);
  l->present.assign(static_cast<std::size_t>(nb * nb), 0);
  std::vector<i64> cols(static_cast<std::size_t>(nb));
  for (i64 r = 0; r < nb; ++r) {
    for (i64 c = 0; c < nb; ++c) cols[c] = c;
    std::swap(cols[0], cols[r]);
    for (i64 x = 1; x < per_row; ++x) {  // partial Fisher-Yates over the other columns
      const float u = mf::rng_uniform(seed, static_cast<std::uint64_t>(r), static_cast<std::uint64_t>(x));
      const i64 pick = x + std::min<i64>(nb - x - 1, static_cast<i64>(u * static_cast<float>(nb - x)));
      std::swap(cols[x], cols[pick]);
    }
    for (i64 x = 0; x < per_row; ++x) l->present[static_cast<std::size_t>(r * nb + cols[x])] = 1;
  }
  return l;
}

std::shared_ptr<const mf::BlockLayout> pattern_layout(const std::string& name, i64 len, i64 block, bool causal,
                                                      i64 heads) {
  if (name == "strided") return std::make_shared<mf::BlockLayout>(mf::strided_layout(len, block, 8 * block, causal));
  if (name == "fixed") return std::make_shared<mf::BlockLayout>(mf::fixed_layout(len, block, 4 * block, block / 4, causal));
  if (name == "bigbird") return std::make_shared<mf::BlockLayout>(mf::bigbird_layout(len, block, 1, 1, 3, heads, 0, causal));
  if (name == "longformer")
    return std::make_shared<mf::BlockLayout>(mf::longformer_layout(len, block, 4 * block, causal ? -1 : 4 * block, {0}, causal));
  mf::fail("[bench sparse] unknown pattern '", name, "' (strided, fixed, bigbird, longformer)");
}

int run_sparse_bench(const SparseBenchOptions& o) {
  using namespace mf;
  nlohmann::json rows = nlohmann::json::array();
  std::cout << "block-sparse flash attention vs dense flash, " << o.heads << " heads x d " << o.head_dim << ", block "
            << o.block << (o.causal ? ", causal" : ", bidirectional") << ", threads " << num_threads() << ", best of "
            << o.reps << " interleaved rounds, " << o.clock << " clock; load average " << load_average_1min() << "\n";
  std::cout << "ratio = time / (density x dense time), target <= 1.2\n\n";
  std::cout << std::left << std::setw(8) << "L" << std::setw(22) << "layout" << std::setw(10) << "density"
            << std::setw(12) << "fwd ms" << std::setw(12) << "fwd ratio" << std::setw(14) << "fwd+bwd ms"
            << "fwd+bwd ratio\n";
  for (i64 len : o.lengths) {
    const Tensor q = randn({1, o.heads, len, o.head_dim}, 1), k = randn({1, o.heads, len, o.head_dim}, 2);
    const Tensor v = randn({1, o.heads, len, o.head_dim}, 3), dout = randn({1, o.heads, len, o.head_dim}, 4);
    struct Entry {
      std::string name;
      AttentionOptions opt;
      double density = 1.0, fwd = std::numeric_limits<double>::infinity(), train = fwd;
    };
    std::vector<Entry> entries;
    AttentionOptions dense;
    dense.causal = o.causal;
    entries.push_back({"dense", dense});
    {  // The dense kernel with the query tiles a layout imposes (block rows): the tile-shape share of the ratio.
      AttentionOptions d = dense;
      d.flash_tiles.fwd_rows = std::min<i64>(d.flash_tiles.fwd_rows, o.block);
      entries.push_back({"dense, " + std::to_string(d.flash_tiles.fwd_rows) + "-row tiles", d});
    }
    for (i64 inv : o.inverse_densities) {
      AttentionOptions s = dense;
      auto l = random_rows_layout(len, o.block, inv, 17);
      s.block_layout = l;
      entries.push_back({"random 1/" + std::to_string(inv), s, l->density()});
    }
    for (const std::string& p : o.patterns) {
      AttentionOptions s = dense;
      s.block_layout = pattern_layout(p, len, o.block, o.causal, o.heads);
      if (p == "longformer") {
        s.window_left = 4 * o.block;
        s.window_right = o.causal ? -1 : 4 * o.block;
        s.global_tokens = {0};
      }
      entries.push_back({p, s, s.block_layout->density()});
    }
    for (int r = 0; r < o.reps; ++r)
      for (Entry& e : entries) {
        const double t0 = now_s(o.clock);
        const AttentionOutput a = attention_forward(q, k, v, e.opt);
        const double t1 = now_s(o.clock);
        attention_backward(q, k, v, a.out, a.lse, dout, e.opt);
        const double t2 = now_s(o.clock);
        e.fwd = std::min(e.fwd, t1 - t0);
        e.train = std::min(e.train, t2 - t0);
      }
    // Causal dense flash does half the tiles: the layouts' densities count the tiles they hold,
    // so the baseline is the full (bidirectional) kernel's time scaled by the density.
    const double dense_fwd = entries[0].fwd, dense_train = entries[0].train;
    for (const Entry& e : entries) {
      const double rf = e.fwd / (e.density * dense_fwd), rt = e.train / (e.density * dense_train);
      std::cout << std::left << std::setw(8) << len << std::setw(22) << e.name << std::setw(10) << std::setprecision(4)
                << e.density << std::setw(12) << std::setprecision(4) << e.fwd * 1e3 << std::setw(12)
                << std::setprecision(3) << rf << std::setw(14) << std::setprecision(4) << e.train * 1e3
                << std::setprecision(3) << rt << "\n";
      rows.push_back({{"L", len}, {"layout", e.name}, {"density", e.density}, {"forward_s", e.fwd},
                      {"forward_backward_s", e.train}, {"forward_ratio", rf}, {"forward_backward_ratio", rt}});
    }
  }
  nlohmann::json report = {{"benchmark", "sparse"},
                           {"environment", run_environment_json()},
                           {"heads", o.heads},
                           {"head_dim", o.head_dim},
                           {"block", o.block},
                           {"causal", o.causal},
                           {"clock", o.clock},
                           {"rows", rows}};
  if (!o.json_path.empty()) {
    write_json_file(o.json_path, report);
    std::cout << "wrote " << o.json_path << "\n";
  }
  return 0;
}

}  // namespace

MF_REGISTER_BENCH("sparse", "Block-sparse flash attention: time / (density x dense flash time) by density, forward "
                  "and forward+backward",
                  [](CLI::App& app) {
                    auto o = std::make_shared<SparseBenchOptions>();
                    app.add_option("--lengths", o->lengths, "Sequence lengths (default 8192)")->delimiter(',');
                    app.add_option("--densities", o->inverse_densities, "Inverse densities k (1/k of the tiles), default 4,8,16")
                        ->delimiter(',');
                    app.add_option("--patterns", o->patterns, "Also time these builders: strided,fixed,bigbird,longformer")
                        ->delimiter(',');
                    app.add_option("--heads", o->heads, "Heads")->check(CLI::PositiveNumber);
                    app.add_option("--head-dim", o->head_dim, "Head dimension")->check(CLI::PositiveNumber);
                    app.add_option("--block", o->block, "Layout block (a multiple of 16)")->capture_default_str();
                    app.add_option("--reps", o->reps, "Interleaved rounds, best kept")->check(CLI::PositiveNumber);
                    app.add_flag("--causal", o->causal, "Causal calls (the baseline stays the full dense kernel)");
                    app.add_option("--clock", o->clock, "wall, or cpu (process CPU time: use with --threads 1 on a busy machine)")
                        ->check(CLI::IsMember({"wall", "cpu"}))
                        ->capture_default_str();
                    app.add_option("--json", o->json_path, "JSON report path");
                    return std::function<int()>([o] { return run_sparse_bench(*o); });
                  });
