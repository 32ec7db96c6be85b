// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR
// 2019): p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), with wd only on
// parameters whose Parameter::weight_decay is set. The float32 op order mirrors
// torch.optim.AdamW (single-tensor path) so the two agree to about an ulp.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "nn/parameter.h"

namespace mf {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  // applied to parameters with weight_decay == true
};

// Throws mf::Error naming the field when a value is out of range.
void validate(const AdamWConfig& cfg);

class AdamW {
 public:
  // Parameters must outlive the optimizer; names must be unique. Buffers
  // (Parameter::trainable false) are left out: never updated, no state.
  AdamW(const std::vector<Parameter*>& params, const AdamWConfig& cfg);

  // One update from the current Parameter::grad values at learning rate lr.
  void step(double lr);
  std::int64_t steps_taken() const { return step_; }
  const AdamWConfig& config() const { return cfg_; }

  // The state as named tensors "<param>.exp_avg" and "<param>.exp_avg_sq"
  // (PyTorch's names), in parameter order; they share storage with the state.
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // Restores the moments (copied; every name and shape is checked) and the step count.
  void load_state(const std::map<std::string, Tensor>& tensors, std::int64_t steps_taken);

  // safetensors file with the moments and metadata {"step", "beta1", ...}; atomic.
  void save(const std::string& path) const;
  // Reads a file written by save(); checks names, shapes and metadata.
  void load(const std::string& path);

 private:
  std::vector<Parameter*> params_;
  AdamWConfig cfg_;
  std::vector<Tensor> exp_avg_, exp_avg_sq_;
  std::int64_t step_ = 0;
};

}  // namespace mf
