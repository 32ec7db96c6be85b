// Where a mixer gets its parameters: it asks a ParamStore for each one by its
// checkpoint name (relative to its layer, e.g. "self_attn.q_proj.weight"),
// shape and initialization, in a fixed order. The model's store prefixes the
// layer ("model.layers.N.") and draws each parameter's values from its own
// Philox stream (the parameter's index), so a model is a pure function of
// (config, seed); `modformer mixer --init` uses a store of its own.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/parameter.h"

namespace mf {

// Normal: N(0, initializer_range^2) (matrices, embeddings); Ones: norm
// weights; Zeros: biases.
enum class ParamInit { Normal, Ones, Zeros };

// A custom initializer fills `value` from (seed, stream) through Philox
// (src/core/rng.h) and nothing else, so that the result is deterministic.
using ParamInitFn = std::function<void(Tensor& value, std::uint64_t seed, std::uint64_t stream)>;

class ParamStore {
 public:
  virtual ~ParamStore() = default;
  // A parameter of this layer, named relative to the layer.
  virtual Parameter* add(const std::string& name, const Shape& shape, ParamInit init, bool weight_decay) = 0;
  virtual Parameter* add_custom(const std::string& name, const Shape& shape, const ParamInitFn& init,
                                bool weight_decay) = 0;
  // A parameter shared by every layer that asks for it under this model-level
  // name (no layer prefix), created by the first (e.g. Linformer's layerwise
  // projection). A later request must give the same shape.
  virtual Parameter* shared(const std::string& name, const Shape& shape, const ParamInitFn& init,
                            bool weight_decay) = 0;
  // A buffer of this layer (Parameter::trainable false): saved in the
  // checkpoint, never trained.
  Parameter* add_buffer(const std::string& name, const Shape& shape, const ParamInitFn& init) {
    Parameter* p = add_custom(name, shape, init, false);
    p->trainable = false;
    return p;
  }
};

}  // namespace mf

namespace mf {

// The store every owner of parameters uses (the model, `modformer mixer`):
// parameters in creation order, each drawing from stream = its index, so the
// values depend only on (seed, creation order), never on the thread count.
class ParamList final : public ParamStore {
 public:
  ParamList(std::uint64_t seed, double init_std) : seed_(seed), init_std_(init_std) {}

  // Prefix of the names given to add/add_custom ("model.layers.3.").
  void set_prefix(std::string prefix) { prefix_ = std::move(prefix); }

  Parameter* add(const std::string& name, const Shape& shape, ParamInit init, bool weight_decay) override;
  Parameter* add_custom(const std::string& name, const Shape& shape, const ParamInitFn& init,
                        bool weight_decay) override;
  Parameter* shared(const std::string& name, const Shape& shape, const ParamInitFn& init,
                    bool weight_decay) override;

  // A parameter under its full name (no prefix): embeddings, final norm, heads.
  Parameter* add_global(const std::string& name, const Shape& shape, ParamInit init, bool weight_decay);

  const std::vector<std::unique_ptr<Parameter>>& all() const { return params_; }
  Parameter* find(const std::string& name) const;  // null when absent

 private:
  Parameter* make(const std::string& full_name, const Shape& shape, const ParamInitFn& init, bool weight_decay);
  ParamInitFn standard(ParamInit init) const;

  std::uint64_t seed_;
  double init_std_;
  std::string prefix_;
  std::vector<std::unique_ptr<Parameter>> params_;
};

}  // namespace mf
