#include "bench/mixer_bench.h"

#include <algorithm>
#include <chrono>

#include "core/alloc.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/transformer.h"
#include "nn/mixer/mixer_registry.h"

namespace mf {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

MixerBenchSet make_bench_mixers(std::vector<std::string> names, std::int64_t hidden, std::int64_t heads,
                                std::int64_t max_len, bool causal, const std::string& prefix,
                                const nlohmann::json& mixer_options) {
  MF_CHECK(hidden % heads == 0, prefix, "--heads ", heads, " must divide --hidden ", hidden);
  MixerBenchSet s;
  ModelConfig& cfg = s.cfg;
  cfg.model_type = "modformer";
  cfg.hidden_size = hidden;
  cfg.num_attention_heads = heads;
  cfg.num_key_value_heads = heads;
  cfg.head_dim = hidden / heads;
  cfg.intermediate_size = 4 * hidden;
  cfg.max_position_embeddings = max_len;
  cfg.position = PositionKind::None;
  cfg.sliding_window = 256;  // sliding_attention rows: a 256-token window
  if (names.empty())
    for (const auto& e : token_mixer_registry())
      if (causal ? e.caps.causal : e.caps.bidirectional) names.push_back(e.name);
  for (const auto& n : names) {
    const TokenMixerEntry& e = token_mixer_entry(n, prefix);
    MF_CHECK(causal ? e.caps.causal : e.caps.bidirectional, prefix, "mixer \"", n, "\" cannot run ",
             causal ? "causally (drop --causal)" : "bidirectionally (give --causal)",
             e.limits.empty() ? "" : " (" + e.limits + ")");
    if (mixer_options.contains(n)) cfg.mixer_options[n] = parse_options(e.options, mixer_options[n], prefix, n);
    s.stores.push_back(std::make_unique<ParamList>(1, 0.02));
    s.mixers.push_back(e.make(mixer_context(cfg, 0, n, nullptr), *s.stores.back()));
  }
  s.names = std::move(names);
  return s;
}

std::vector<std::vector<MixerSpeedCell>> measure_mixer_speed(MixerBenchSet& set, const std::vector<std::int64_t>& lengths,
                                                             std::int64_t B, int reps, bool causal) {
  const std::int64_t C = set.cfg.hidden_size;
  auto& mixers = set.mixers;
  std::vector<std::vector<MixerSpeedCell>> cells(mixers.size(), std::vector<MixerSpeedCell>(lengths.size()));
  if (lengths.empty()) return cells;
  {  // untimed warm-up at the smallest length (GEMM backend choice, cos/sin tables, page faults)
    const std::int64_t L = lengths.front();
    const Tensor x = randn({B * L, C}, 10);
    Tensor y = Tensor::empty({B * L, C}), dx = Tensor::empty({B * L, C});
    MixerCall call;
    call.batch = B;
    call.seq_len = L;
    call.causal = causal;
    for (auto& m : mixers) m->backward(dx, x, x, *m->forward(y, x, call, true), call);
  }
  for (std::size_t li = 0; li < lengths.size(); ++li) {
    const std::int64_t L = lengths[li], N = B * L;
    const Tensor x = randn({N, C}, 11), dy = randn({N, C}, 12);
    Tensor y = Tensor::empty({N, C}), dx = Tensor::empty({N, C});
    MixerCall call;
    call.batch = B;
    call.seq_len = L;
    call.causal = causal;
    for (int r = 0; r < reps; ++r) {
      for (std::size_t m = 0; m < mixers.size(); ++m) {
        MixerSpeedCell& c = cells[m][li];
        double t0 = now_s();
        mixers[m]->forward(y, x, call, false);
        c.forward_s = std::min(c.forward_s, now_s() - t0);
        reset_peak_memory();
        const std::int64_t base = memory_stats().current_bytes;
        t0 = now_s();
        {
          const std::unique_ptr<MixerSaved> saved = mixers[m]->forward(y, x, call, true);
          mixers[m]->backward(dx, dy, x, *saved, call);
        }
        c.train_s = std::min(c.train_s, now_s() - t0);
        c.peak_bytes = std::max(c.peak_bytes, static_cast<double>(memory_stats().peak_bytes - base));
      }
    }
  }
  return cells;
}

DecodeTimes measure_decode(MixerBenchSet& set, const std::vector<std::int64_t>& contexts, std::int64_t B, int reps,
                           std::int64_t steps) {
  const std::int64_t C = set.cfg.hidden_size;
  DecodeTimes out;
  for (std::size_t m = 0; m < set.mixers.size(); ++m)
    if (set.mixers[m]->capabilities().generation) out.mixers.push_back(m);
  out.per_token.assign(out.mixers.size(),
                       std::vector<double>(contexts.size(), std::numeric_limits<double>::infinity()));
  const Tensor step_x = randn({B, C}, 13);
  Tensor step_y = Tensor::empty({B, C});
  for (std::size_t ci = 0; ci < contexts.size(); ++ci) {
    const std::int64_t ctx = contexts[ci];
    const Tensor prompt = randn({B * ctx, C}, 14);
    Tensor prompt_y = Tensor::empty({B * ctx, C});
    for (int r = 0; r < reps; ++r) {
      for (std::size_t g = 0; g < out.mixers.size(); ++g) {
        TokenMixer& mixer = *set.mixers[out.mixers[g]];
        GenerationOptions go;
        go.batch = B;
        go.capacity = ctx + steps;
        const std::unique_ptr<MixerState> state = mixer.new_state(go);
        MixerCall call;
        call.batch = B;
        call.causal = true;
        call.state = state.get();
        call.seq_len = ctx;
        mixer.forward(prompt_y, prompt, call, false);
        call.seq_len = 1;
        const double t0 = now_s();
        for (std::int64_t k = 0; k < steps; ++k) {
          call.past = ctx + k;
          mixer.forward(step_y, step_x, call, false);
        }
        out.per_token[g][ci] = std::min(out.per_token[g][ci], (now_s() - t0) / static_cast<double>(steps));
      }
    }
  }
  return out;
}

}  // namespace mf
