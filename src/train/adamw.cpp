#include "train/adamw.h"

#include <cmath>
#include <cstdlib>
#include <set>

#include "core/profile.h"
#include "core/safetensors.h"

namespace mf {

void validate(const AdamWConfig& c) {
  MF_CHECK(c.beta1 >= 0 && c.beta1 < 1, "[adamw] beta1 must be in [0, 1) but is ", c.beta1);
  MF_CHECK(c.beta2 >= 0 && c.beta2 < 1, "[adamw] beta2 must be in [0, 1) but is ", c.beta2);
  MF_CHECK(c.eps > 0 && std::isfinite(c.eps), "[adamw] eps must be > 0 but is ", c.eps);
  MF_CHECK(c.weight_decay >= 0 && std::isfinite(c.weight_decay), "[adamw] weight_decay must be >= 0 but is ",
           c.weight_decay);
}

AdamW::AdamW(const std::vector<Parameter*>& params, const AdamWConfig& cfg) : cfg_(cfg) {
  validate(cfg_);
  for (Parameter* p : params) {
    MF_CHECK(p != nullptr, "[adamw] null parameter");
    if (p->trainable) params_.push_back(p);  // buffers are never updated
  }
  std::set<std::string> names;
  for (Parameter* p : params_) {
    MF_CHECK(names.insert(p->name).second, "[adamw] parameter name '", p->name, "' appears twice");
    MF_CHECK(p->value.dtype() == DType::F32 && p->value.is_contiguous(), "[adamw] parameter '", p->name,
             "' must be a contiguous float32 tensor");
    p->grad.check_shape(p->value.shape(), "adamw", (p->name + ".grad").c_str());
    exp_avg_.push_back(Tensor::zeros(p->value.shape()));
    exp_avg_sq_.push_back(Tensor::zeros(p->value.shape()));
  }
}

void AdamW::step(double lr) {
  const profile::Scope timer(profile::Category::Optimizer);
  MF_CHECK(lr >= 0 && std::isfinite(lr), "[adamw] learning rate must be finite and >= 0 but is ", lr);
  ++step_;
  // Scalars as torch computes them: in double, then rounded to float by the kernels.
  const double bias_correction1 = 1.0 - std::pow(cfg_.beta1, static_cast<double>(step_));
  const double bias_correction2 = 1.0 - std::pow(cfg_.beta2, static_cast<double>(step_));
  const float neg_step_size = static_cast<float>(-(lr / bias_correction1));
  const float bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float b1 = static_cast<float>(cfg_.beta1), one_minus_b1 = static_cast<float>(1.0 - cfg_.beta1);
  const float b2 = static_cast<float>(cfg_.beta2), one_minus_b2 = static_cast<float>(1.0 - cfg_.beta2);
  const float eps = static_cast<float>(cfg_.eps);
  for (std::size_t k = 0; k < params_.size(); ++k) {
    Parameter& prm = *params_[k];
    const float decay = static_cast<float>(1.0 - lr * (prm.weight_decay ? cfg_.weight_decay : 0.0));
    float* p = prm.value.data<float>();
    const float* g = prm.grad.data<float>();
    float* m = exp_avg_[k].data<float>();
    float* v = exp_avg_sq_[k].data<float>();
    const std::int64_t n = prm.value.numel();
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
    for (std::int64_t i = 0; i < n; ++i) {
      p[i] = p[i] * decay;                                  // decoupled weight decay (on the old p)
      m[i] = std::fma(g[i], one_minus_b1, m[i] * b1);       // m = b1 m + (1 - b1) g
      v[i] = v[i] * b2 + one_minus_b2 * g[i] * g[i];        // v = b2 v + (1 - b2) g^2
      const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;  // sqrt(v_hat) + eps, as torch forms it
      p[i] = p[i] + neg_step_size * m[i] / denom;           // p -= lr/bc1 * m / denom
    }
  }
}

std::vector<std::pair<std::string, Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (std::size_t k = 0; k < params_.size(); ++k) {
    out.emplace_back(params_[k]->name + ".exp_avg", exp_avg_[k]);
    out.emplace_back(params_[k]->name + ".exp_avg_sq", exp_avg_sq_[k]);
  }
  return out;
}

void AdamW::load_state(const std::map<std::string, Tensor>& tensors, std::int64_t steps_taken) {
  MF_CHECK(steps_taken >= 0, "[adamw] step count must be >= 0 but is ", steps_taken);
  MF_CHECK(tensors.size() == 2 * params_.size(), "[adamw] state has ", tensors.size(), " tensors but ",
           params_.size(), " parameters need ", 2 * params_.size());
  // Check everything before changing anything.
  std::vector<const Tensor*> found;
  for (Parameter* p : params_)
    for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
      const std::string name = p->name + suffix;
      auto it = tensors.find(name);
      MF_CHECK(it != tensors.end(), "[adamw] state tensor '", name, "' is missing");
      MF_CHECK(it->second.dtype() == DType::F32, "[adamw] state tensor '", name, "' must be float32 but is ",
               dtype_name(it->second.dtype()));
      it->second.check_shape(p->value.shape(), "adamw", name.c_str());
      found.push_back(&it->second);
    }
  for (std::size_t k = 0; k < params_.size(); ++k) {
    exp_avg_[k].copy_from(*found[2 * k]);
    exp_avg_sq_[k].copy_from(*found[2 * k + 1]);
  }
  step_ = steps_taken;
}

namespace {
std::string exact(double x) {  // round-trips a double through text
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}
}  // namespace

void AdamW::save(const std::string& path) const {
  save_safetensors(path, state_tensors(),
                   {{"format", "modformer-adamw"},
                    {"step", std::to_string(step_)},
                    {"beta1", exact(cfg_.beta1)},
                    {"beta2", exact(cfg_.beta2)},
                    {"eps", exact(cfg_.eps)},
                    {"weight_decay", exact(cfg_.weight_decay)}});
}

void AdamW::load(const std::string& path) {
  const SafetensorsContents c = load_safetensors(path);
  auto meta = [&](const char* key) -> const std::string& {
    auto it = c.metadata.find(key);
    MF_CHECK(it != c.metadata.end(), "[adamw] '", path, "' has no metadata field '", key, "'");
    return it->second;
  };
  MF_CHECK(meta("format") == "modformer-adamw", "[adamw] '", path, "' is not an AdamW state file (format '",
           meta("format"), "')");
  char* end = nullptr;
  const std::string& s = meta("step");
  const long long steps = std::strtoll(s.c_str(), &end, 10);
  MF_CHECK(!s.empty() && *end == '\0' && steps >= 0, "[adamw] '", path, "' has a bad step count '", s, "'");
  load_state(c.tensors, steps);
}

}  // namespace mf
