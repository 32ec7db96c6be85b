// Loads a committed PyTorch fixture (tests/fixtures/<name>.safetensors, made
// by tools/make_fixtures.py) for comparison in a test.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "nn/parameter.h"

namespace mf::testing {

inline SafetensorsContents load_fixture(const std::string& name) {
  return load_safetensors(std::string(MODFORMER_FIXTURES_DIR) + "/" + name + ".safetensors");
}

// An integer option stored as "opt_<name>" (int64 [1]).
inline std::int64_t fixture_option(const SafetensorsContents& f, const std::string& name) {
  return f.tensors.at("opt_" + name).to(DType::I64).data<std::int64_t>()[0];
}

// The fixture's weights as parameters (owned here, zero gradients), made on
// request; get() returns null for a name the fixture does not hold.
struct FixtureParameters {
  const SafetensorsContents& file;
  std::vector<std::unique_ptr<Parameter>> owned;
  explicit FixtureParameters(const SafetensorsContents& f) : file(f) {}
  Parameter* get(const std::string& key) {
    if (!file.tensors.count(key)) return nullptr;
    owned.push_back(std::make_unique<Parameter>(key, file.tensors.at(key).contiguous().clone(), true));
    return owned.back().get();
  }
};

}  // namespace mf::testing
