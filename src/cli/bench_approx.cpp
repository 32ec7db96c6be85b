// `modformer bench approx`: how far the approximate attentions are from
// exact attention on the same Q/K/V, against what they cost. Performer
// (FAVOR+, src/nn/performer/) for m = 64 .. 1024 random features and
// Reformer's LSH attention (src/nn/reformer/) for 1 .. 8 hash rounds, each
// compared with the exact attention it approximates:
//   Performer: softmax(q k^T / sqrt(d)) v (causal or not);
//   LSH:       softmax(q k^T) v with shared QK, keys normalized as the LSH
//              layer normalizes them (lsh_normalize_keys: unit length, so the
//              score is q . k_hat) and the self-mask (a token sees itself only
//              when it sees nothing else), computed here in double.
// Error = ||out - exact||_F / ||exact||_F over all rows and heads. Q/K/V are
// N(0, 1) draws, or (--model DIR) layer 0's real queries, keys and values
// on a window of the built-in corpus: its input (embeddings, positions, the
// layer's input norm when it has one), then q/k/v projections and RoPE; LSH
// uses that layer's queries as its shared QK. Cost = the best time of the
// call over --reps (after a warm-up call), next to exact flash attention's on
// the same shapes. Random N(0, 1) Q/K give nearly uniform attention over L
// keys, the hard case for both (LSH sees a few chunks of keys; Performer's
// estimate is noisy against a small exact output); --qk-scale s multiplies Q
// and K by s to make the attention peaked.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/bench_registry.h"
#include "cli/command.h"
#include "core/error.h"
#include "core/json_report.h"
#include "core/rng.h"
#include "core/svg_plot.h"
#include "core/threads.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "nn/attention/attention.h"
#include "nn/embedding.h"
#include "nn/linear.h"
#include "nn/norm/norm.h"
#include "nn/performer/performer.h"
#include "nn/position/learned_position.h"
#include "nn/position/rope.h"
#include "nn/position/sinusoidal.h"
#include "nn/reformer/lsh_attention.h"
#include "train/data.h"

namespace {

using namespace mf;

struct ApproxOptions {
  std::string model;
  std::int64_t length = 1024, heads = 4, head_dim = 64;
  std::vector<std::int64_t> features = {64, 128, 256, 512, 1024};
  std::vector<std::int64_t> rounds = {1, 2, 4, 8};
  std::int64_t buckets = 32, chunk = 64;
  bool causal = false;
  double qk_scale = 1.0;
  std::uint64_t seed = 0;
  int reps = 3;
  std::string json_path, out_dir = "bench_approx";
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best of `reps` timed calls after one untimed warm-up call.
template <typename F>
double best_time(int reps, F&& f) {
  f();
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    f();
    best = std::min(best, now_s() - t0);
  }
  return best;
}

double relative_error(const Tensor& out, const std::vector<double>& exact) {
  const float* o = out.data<float>();
  double num = 0, den = 0;
  for (std::size_t i = 0; i < exact.size(); ++i) {
    num += (o[i] - exact[i]) * (o[i] - exact[i]);
    den += exact[i] * exact[i];
  }
  return std::sqrt(num / den);
}

// Exact attention of [L, H, d] tensors in double: scores q_i . k_j * scale,
// causal or not; self_mask: the diagonal is visible only when nothing else is.
std::vector<double> exact_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, bool causal,
                                    bool self_mask) {
  const std::int64_t L = q.size(0), H = q.size(1), D = q.size(2);
  std::vector<double> out(static_cast<std::size_t>(L * H * D), 0.0);
  const float *pq = q.data<float>(), *pk = k.data<float>(), *pv = v.data<float>();
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (std::int64_t h = 0; h < H; ++h)
    for (std::int64_t i = 0; i < L; ++i) {
      const std::int64_t last = causal ? i : L - 1;
      const bool only_self = self_mask && last == 0 && i == 0;
      std::vector<double> s(static_cast<std::size_t>(last + 1));
      double mx = -std::numeric_limits<double>::infinity();
      for (std::int64_t j = 0; j <= last; ++j) {
        double dot = 0;
        for (std::int64_t c = 0; c < D; ++c) dot += double(pq[(i * H + h) * D + c]) * pk[(j * H + h) * D + c];
        s[j] = (self_mask && j == i && !only_self) ? -std::numeric_limits<double>::infinity() : dot * scale;
        mx = std::max(mx, s[j]);
      }
      double z = 0;
      for (auto& x : s) z += (x = std::exp(x - mx));
      double* o = &out[static_cast<std::size_t>((i * H + h) * D)];
      for (std::int64_t j = 0; j <= last; ++j)
        for (std::int64_t c = 0; c < D; ++c) o[c] += s[j] / z * pv[(j * H + h) * D + c];
    }
  return out;
}

struct Qkv {
  Tensor q, k, v;  // [L, H, d]
  std::string source;
};

Qkv random_qkv(const ApproxOptions& o) {
  const Shape s = {o.length, o.heads, o.head_dim};
  Tensor q = randn(s, o.seed, 1), k = randn(s, o.seed, 2);
  for (Tensor* t : {&q, &k})
    for (std::int64_t i = 0; i < t->numel(); ++i) t->data<float>()[i] *= static_cast<float>(o.qk_scale);
  std::ostringstream what;
  what << "N(0, 1) draws (Q, K times " << o.qk_scale << "), seed " << o.seed;
  return {q, k, randn(s, o.seed, 3), what.str()};
}

// The layer's queries, keys and values on the first L bytes of the built-in
// corpus's validation part (KV heads repeated to the query heads).
Qkv model_qkv(const ApproxOptions& o) {
  auto model = load_checkpoint(o.model);
  const ModelConfig& c = model->config();
  const std::string pre = "model.layers.0.";  // its input is the embeddings: no block runs before it
  auto need = [&](const std::string& name) {
    Parameter* p = model->find_parameter(name);
    MF_CHECK(p != nullptr, "[bench approx] '", o.model, "' layer 0"
             " is not an attention layer with q/k/v projections (no '", name, "')");
    return p;
  };
  MF_CHECK(o.length <= c.max_position_embeddings, "[bench approx] --length ", o.length,
           " exceeds the model's max_position_embeddings ", c.max_position_embeddings);
  const std::int64_t L = o.length, C = c.hidden_size, H = c.num_attention_heads, Hkv = c.num_key_value_heads,
                     D = c.head_dim;
  const TextCorpus corpus = TextCorpus::load();
  MF_CHECK(corpus.val_bytes() >= L, "[bench approx] the corpus's validation part (", corpus.val_bytes(),
           " bytes) is shorter than --length ", L);
  Tensor tokens = Tensor::empty({1, L}, DType::I32);
  for (std::int64_t i = 0; i < L; ++i)
    tokens.data<std::int32_t>()[i] =
        static_cast<std::uint8_t>((*corpus.bytes)[static_cast<std::size_t>(corpus.train_end + i)]);
  MF_CHECK(c.vocab_size >= 256, "[bench approx] the model's vocabulary (", c.vocab_size,
           ") is not the byte vocabulary the built-in corpus needs");
  Tensor x = Tensor::empty({L, C});
  embedding_forward(x, tokens, need("model.embed_tokens.weight")->value);
  PositionIds pos;
  if (c.position == PositionKind::Learned)
    learned_position_forward_inplace(x.reshape({1, L, C}), *need("model.embed_positions.weight"), pos);
  else if (c.position == PositionKind::Sinusoidal)
    sinusoidal_forward_inplace(x.reshape({1, L, C}), sinusoidal_table(c.max_position_embeddings, C), pos);
  if (Parameter* w = model->find_parameter(pre + "input_layernorm.weight")) {
    NormParams n;
    n.kind = c.norm;
    n.eps = static_cast<float>(c.norm_eps());
    n.weight = w;
    n.bias = model->find_parameter(pre + "input_layernorm.bias");
    Tensor u = Tensor::empty({L, C});
    NormSaved st;
    norm_forward(u, st, x, n);
    x = u;
  }
  auto proj = [&](const char* name) {
    Parameter* b = model->find_parameter(pre + "self_attn." + name + ".bias");
    return linear_forward(x, need(pre + "self_attn." + name + ".weight")->value, b ? b->value : Tensor());
  };
  Tensor q = proj("q_proj"), k = proj("k_proj"), v = proj("v_proj");  // [L, H*D], [L, Hkv*D]
  if (c.uses_rope()) {
    RopeTable table(rope_config(c), L);
    rope_forward_inplace(q.reshape({1, L, H * D}), table, packed_rope_args(H, 0));
    rope_forward_inplace(k.reshape({1, L, Hkv * D}), table, packed_rope_args(Hkv, 0));
  }
  auto expand = [&](const Tensor& t) {  // [L, Hkv*D] -> [L, H, D]
    Tensor out = Tensor::empty({L, H, D});
    for (std::int64_t i = 0; i < L; ++i)
      for (std::int64_t h = 0; h < H; ++h)
        std::copy_n(t.data<float>() + (i * Hkv + h / (H / Hkv)) * D, D, out.data<float>() + (i * H + h) * D);
    return out;
  };
  return {q.reshape({L, H, D}).contiguous(), expand(k), expand(v),
          "layer 0 of '" + o.model + "' on " + std::to_string(L) +
              " bytes of the built-in corpus (validation part)" +
              (c.position == PositionKind::ALiBi ? "; its ALiBi bias is left out of the exact attention" : "")};
}

int run_approx(const ApproxOptions& o) {
  MF_CHECK(o.length >= 2, "[bench approx] --length must be >= 2, got ", o.length);
  MF_CHECK(!o.features.empty() && !o.rounds.empty(), "[bench approx] --features and --rounds must not be empty");
  for (auto m : o.features) MF_CHECK(m >= 1, "[bench approx] --features must be >= 1, got ", m);
  for (auto r : o.rounds) MF_CHECK(r >= 1 && r <= 16, "[bench approx] --rounds must be in [1, 16], got ", r);
  MF_CHECK(o.buckets >= 2 && o.buckets % 2 == 0, "[bench approx] --buckets must be even and >= 2, got ", o.buckets);
  const Qkv data = o.model.empty() ? random_qkv(o) : model_qkv(o);
  const std::int64_t L = data.q.size(0), H = data.q.size(1), D = data.q.size(2);
  std::cout << "bench approx: L " << L << ", " << H << " heads of " << D << ", " << (o.causal ? "causal" : "bidirectional")
            << "; Q/K/V: " << data.source << "; threads " << num_threads() << ", best of " << o.reps
            << " calls; load average " << load_average_1min() << "\n";

  // Exact attention (the reference of each error) and its flash time.
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const std::vector<double> exact_softmax = exact_attention(data.q, data.k, data.v, scale, o.causal, false);
  VarlenSeqlens seqs{{0, L}, {0, L}};
  AttentionOptions ao;
  ao.causal = o.causal;
  const double flash_s = best_time(o.reps, [&] { attention_varlen_forward(data.q, data.k, data.v, seqs, ao); });
  const double flash_err =
      relative_error(attention_varlen_forward(data.q, data.k, data.v, seqs, ao).out, exact_softmax);
  std::cout << "  exact flash attention: " << std::fixed << std::setprecision(3) << flash_s * 1e3
            << " ms (its error vs the double reference: " << std::scientific << std::setprecision(2) << flash_err
            << ")\n";

  nlohmann::json report = {{"benchmark", "approx"},     {"environment", run_environment_json()},
                           {"length", L},               {"heads", H},
                           {"head_dim", D},             {"causal", o.causal},
                           {"data", data.source},       {"flash_seconds", flash_s},
                           {"performer", nlohmann::json::array()}, {"lsh", nlohmann::json::array()}};
  PlotSeries perf{"Performer (m = " + std::to_string(o.features.front()) + " .. " + std::to_string(o.features.back()) +
                      ")",
                  {}, {}},
      perf0{"Performer, eps 0", {}, {}},
      lsh{"LSH (rounds " + std::to_string(o.rounds.front()) + " .. " + std::to_string(o.rounds.back()) + ")", {}, {}};
  // The mixer's features add eps = 1e-4 after the stabilizer (performer-pytorch); where most
  // stabilized features are far below eps that bias dominates, so the pure estimator (eps 0) is shown too.
  PerformerOptions pure;
  pure.softmax_epsilon = 0;
  std::cout << "\n  Performer (FAVOR+ softmax kernel, chi-scaled orthogonal features; error with the mixer's eps 1e-4 "
               "and with eps 0):\n"
            << "       m   error eps 1e-4   error eps 0   time ms   x flash\n";
  for (auto m : o.features) {
    Tensor w = Tensor::empty({m, D});
    performer_draw_projection(w, o.seed, 7, 0, PerformerScaling::Chi);
    Tensor out;
    const double t = best_time(o.reps, [&] { out = performer_attention(data.q, data.k, data.v, w, o.causal); });
    const double err = relative_error(out, exact_softmax);
    const double err0 = relative_error(performer_attention(data.q, data.k, data.v, w, o.causal, pure), exact_softmax);
    std::cout << "  " << std::setw(6) << m << "   " << std::scientific << std::setprecision(3) << err << "        "
              << err0 << "   " << std::fixed << std::setw(7) << std::setprecision(3) << t * 1e3 << "   "
              << std::setprecision(2) << t / flash_s << "\n";
    report["performer"].push_back(
        {{"features", m}, {"relative_error", err}, {"relative_error_eps0", err0}, {"seconds", t}});
    perf.x.push_back(t * 1e3);
    perf.y.push_back(err);
    perf0.x.push_back(t * 1e3);
    perf0.y.push_back(err0);
  }

  // LSH: shared QK = the queries; exact attention over the normalized keys with the self-mask.
  const Tensor keys = lsh_normalize_keys(data.q);
  const std::vector<double> exact_lsh = exact_attention(data.q, keys, data.v, 1.0, o.causal, true);
  std::cout << "\n  LSH attention (" << o.buckets << " buckets, chunk " << o.chunk
            << "; reference: exact attention over the normalized shared keys, self-masked):\n"
            << "  rounds   rel. error   time ms   x flash\n";
  for (auto r : o.rounds) {
    Tensor out;
    const double t = best_time(o.reps, [&] {
      out = lsh_attention(data.q, data.v, 1, L, r, o.buckets, o.seed, o.chunk, o.causal);
    });
    const double err = relative_error(out, exact_lsh);
    std::cout << "  " << std::setw(6) << r << "   " << std::scientific << std::setprecision(3) << err << "   "
              << std::fixed << std::setw(7) << std::setprecision(3) << t * 1e3 << "   " << std::setprecision(2)
              << t / flash_s << "\n";
    report["lsh"].push_back({{"rounds", r}, {"relative_error", err}, {"seconds", t}});
    lsh.x.push_back(t * 1e3);
    lsh.y.push_back(err);
  }
  std::filesystem::create_directories(o.out_dir);
  PlotOptions po;
  po.log_x = po.log_y = true;
  po.title = "approximate attention: error vs cost (L " + std::to_string(L) + (o.causal ? ", causal" : "") +
             "; exact flash " + std::to_string(flash_s * 1e3).substr(0, 6) + " ms)";
  po.x_label = "time per call (ms)";
  po.y_label = "relative error vs exact attention";
  write_svg_line_chart(o.out_dir + "/approx.svg", {perf, perf0, lsh}, po);
  const std::string json_path = o.json_path.empty() ? o.out_dir + "/approx.json" : o.json_path;
  write_json_file(json_path, report);
  std::cout << "\nwrote " << json_path << ", " << o.out_dir << "/approx.svg\n";
  return 0;
}

}  // namespace

MF_REGISTER_BENCH("approx", "Approximation error of Performer (m features) and LSH attention (hash rounds) vs exact "
                  "attention on the same Q/K/V, against their cost (table, JSON, SVG)",
                  [](CLI::App& app) {
                    auto o = std::make_shared<ApproxOptions>();
                    app.add_option("--model", o->model, "Checkpoint folder: use its layer's real Q/K/V");
                    app.add_option("--length", o->length, "Sequence length L")->check(CLI::PositiveNumber);
                    app.add_option("--heads", o->heads, "Heads (random Q/K/V)")->check(CLI::PositiveNumber);
                    app.add_option("--head-dim", o->head_dim, "Head dim (random Q/K/V)")->check(CLI::PositiveNumber);
                    app.add_option("--features", o->features, "Performer feature counts m")->delimiter(',');
                    app.add_option("--rounds", o->rounds, "LSH hash rounds")->delimiter(',');
                    app.add_option("--buckets", o->buckets, "LSH buckets (even)");
                    app.add_option("--chunk", o->chunk, "LSH chunk length")->check(CLI::PositiveNumber);
                    app.add_flag("--causal", o->causal, "Causal attention");
                    app.add_option("--qk-scale", o->qk_scale, "Random Q/K: multiply by this (peaked attention)")
                        ->check(CLI::PositiveNumber);
                    app.add_option("--seed", o->seed, "Seed of the random Q/K/V, features and rotations");
                    app.add_option("--reps", o->reps, "Calls timed, best kept")->check(CLI::PositiveNumber);
                    app.add_option("--json", o->json_path, "JSON report (default OUT_DIR/approx.json)");
                    app.add_option("--out-dir", o->out_dir, "Folder of approx.svg and the JSON")->capture_default_str();
                    return std::function<int()>([o] { return run_approx(*o); });
                  });
