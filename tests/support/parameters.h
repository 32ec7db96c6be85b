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

}  // namespace mf::testing
