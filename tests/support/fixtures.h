// Loads a committed PyTorch fixture (tests/fixtures/<name>.safetensors, made
// by tools/make_fixtures.py) for comparison in a test.
#pragma once
#include <string>

#include "core/safetensors.h"

namespace mf::testing {

inline SafetensorsContents load_fixture(const std::string& name) {
  return load_safetensors(std::string(MODFORMER_FIXTURES_DIR) + "/" + name + ".safetensors");
}

}  // namespace mf::testing
