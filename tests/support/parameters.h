// Parameters that a module test makes with random values and owns, handed to
// the module as pointers and to gradcheck as values() and grads().
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "nn/mixer/param_store.h"
#include "nn/parameter.h"

namespace mf::testing {

struct OwnedParameters {
  std::vector<std::unique_ptr<Parameter>> owned;
  std::uint64_t seed = 0;

  // N(mean, scale^2) values; the k-th parameter made draws from stream k of
  // `seed`, so adding one leaves the values of the others unchanged.
  Parameter* make(const std::string& name, const Shape& shape, float mean, float scale) {
    Tensor v = randn(shape, seed, owned.size());
    for (float& x : std::span(v.data<float>(), v.numel())) x = mean + scale * x;
    owned.push_back(std::make_unique<Parameter>(name, v, true));
    return owned.back().get();
  }
  std::vector<Tensor> values() const {
    std::vector<Tensor> v;
    for (const auto& q : owned) v.push_back(q->value);
    return v;
  }
  std::vector<Tensor> grads() const {
    std::vector<Tensor> v;
    for (const auto& q : owned) v.push_back(q->grad);
    return v;
  }
};

// A ParamStore for mixer tests, over OwnedParameters: matrices (Normal)
// N(0, weight_scale^2), norm weights (Ones) 1 + N(0, 0.2^2), biases (Zeros)
// N(0, 0.2^2): random everywhere, so that every gradient is exercised.
// Custom initializers run as the mixer asks.
struct RandomParamStore final : ParamStore {
  OwnedParameters& owner;
  float weight_scale;
  RandomParamStore(OwnedParameters& o, float scale) : owner(o), weight_scale(scale) {}

  Parameter* add(const std::string& name, const Shape& shape, ParamInit init, bool decay) override {
    Parameter* p = init == ParamInit::Normal ? owner.make(name, shape, 0.0f, weight_scale)
                   : init == ParamInit::Ones ? owner.make(name, shape, 1.0f, 0.2f)
                                             : owner.make(name, shape, 0.0f, 0.2f);
    p->weight_decay = decay;
    return p;
  }
  Parameter* add_custom(const std::string& name, const Shape& shape, const ParamInitFn& init, bool decay) override {
    Parameter* p = owner.make(name, shape, 0.0f, 1.0f);
    init(p->value, owner.seed, owner.owned.size() - 1);
    p->weight_decay = decay;
    return p;
  }
  Parameter* shared(const std::string& name, const Shape& shape, const ParamInitFn& init, bool decay) override {
    for (const auto& q : owner.owned)
      if (q->name == name) return q.get();
    return add_custom(name, shape, init, decay);
  }
};

}  // namespace mf::testing
