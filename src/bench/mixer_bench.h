// The measurements behind `modformer bench mixers` and the speed/memory rows
// of `modformer compare`: token mixers built on one config and timed on the
// same x [B*L, C]: forward, forward (saving) + backward, and the peak bytes
// allocated above the inputs during forward + backward, in interleaved rounds
// (each round runs every mixer once at that L, best of `reps` kept); and the
// decode time per generated token after a prefilled context.
#pragma once
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "nn/mixer/token_mixer.h"

namespace mf {

struct MixerBenchSet {
  ModelConfig cfg;  // hidden C, H heads of C/H, no positions, sliding_window 256, max length
  std::vector<std::string> names;
  std::vector<std::unique_ptr<ParamList>> stores;
  std::vector<std::unique_ptr<TokenMixer>> mixers;
};
// names empty: every registered mixer that runs this way (causal or not).
// Throws "<prefix>mixer "x" cannot run ..." for one that cannot.
// mixer_options: {"mixer": {options}} for mixers whose defaults do not fit.
MixerBenchSet make_bench_mixers(std::vector<std::string> names, std::int64_t hidden, std::int64_t heads,
                                std::int64_t max_len, bool causal, const std::string& error_prefix,
                                const nlohmann::json& mixer_options = nlohmann::json::object());

struct MixerSpeedCell {
  double forward_s = std::numeric_limits<double>::infinity();
  double train_s = std::numeric_limits<double>::infinity();  // forward (saving) + backward
  double peak_bytes = 0;                                     // above the inputs, during forward + backward
};
// cells[m][li] for lengths (sorted ascending by the caller), after an untimed
// warm-up at the first length.
std::vector<std::vector<MixerSpeedCell>> measure_mixer_speed(MixerBenchSet& set, const std::vector<std::int64_t>& lengths,
                                                             std::int64_t batch, int reps, bool causal);

// Indices (into set.mixers) of the mixers that generate, and their seconds
// per decoded token per_token[g][ci] after a prefilled context contexts[ci]
// (mean of `steps` single-token forwards, best of `reps` interleaved rounds).
struct DecodeTimes {
  std::vector<std::size_t> mixers;
  std::vector<std::vector<double>> per_token;
};
DecodeTimes measure_decode(MixerBenchSet& set, const std::vector<std::int64_t>& contexts, std::int64_t batch, int reps,
                           std::int64_t steps);

}  // namespace mf
