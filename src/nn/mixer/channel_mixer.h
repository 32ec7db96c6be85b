// The channel-mixer interface: the per-token part of a block (GELU MLP,
// SwiGLU, GeGLU, MoE). Same contract as a token mixer (see
// token_mixer.h), without sequence or generation concerns: y [N, C] from
// x [N, C], a saved state for the backward, parameter grads +=.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nn/mixer/token_mixer.h"

namespace mf {

class ChannelMixer {
 public:
  explicit ChannelMixer(std::string name) : name_(std::move(name)) {}
  virtual ~ChannelMixer() = default;
  const std::string& name() const { return name_; }

  virtual std::unique_ptr<MixerSaved> forward(const Tensor& y, const Tensor& x, bool for_backward) = 0;
  virtual void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MixerSaved& saved) = 0;
  // Rows per chunk (0: all rows at once), a switch that does not change the math.
  virtual void set_chunk_size(std::int64_t rows) { (void)rows; }
  // Training step `step` begins (as TokenMixer::begin_training_step): MoE's
  // router noise is drawn from (seed, step, layer).
  virtual void begin_training_step(std::int64_t step) { (void)step; }
  // Training mode (as torch's module.train()): on while the model computes a
  // loss with gradients, so that what differs in training (MoE's router
  // noise and statistics) is the same in every forward of that step,
  // including those that keep nothing (gradient checkpointing, reversible
  // blocks) and their re-runs in the backward. Off: evaluation, generation.
  virtual void set_training(bool on) { (void)on; }
  // Auxiliary training losses, as TokenMixer::aux_loss / aux_metrics.
  virtual double aux_loss() const { return 0.0; }
  virtual nlohmann::json aux_metrics() const { return nlohmann::json::object(); }

 private:
  std::string name_;
};

struct ChannelMixerEntry {
  std::string name;  // the config's "ffn" value
  std::string summary;
  std::vector<OptionSpec> options;
  std::function<std::unique_ptr<ChannelMixer>(const MixerContext& ctx, ParamStore& params)> make;
};

}  // namespace mf
