// Loads a committed PyTorch fixture (tests/fixtures/<name>.safetensors, made
// by tools/make_fixtures.py) for comparison in a test, reads its options, and
// checks that a test's list of fixtures covers every file its generator wrote.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/safetensors.h"

namespace mf::testing {

inline SafetensorsContents load_fixture(const std::string& name) {
  return load_safetensors(std::string(MODFORMER_FIXTURES_DIR) + "/" + name + ".safetensors");
}

// The integer option stored as the [1] tensor "opt_<name>".
inline std::int64_t fixture_option(const SafetensorsContents& f, const std::string& name) {
  return f.tensors.at("opt_" + name).to(DType::I64).data<std::int64_t>()[0];
}

// Every <prefix>*.safetensors fixture is in `names`, and there are as many.
inline void expect_fixture_list_covers(const std::string& prefix, const std::vector<std::string>& names) {
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(MODFORMER_FIXTURES_DIR)) {
    const std::string stem = e.path().stem().string();
    if (stem.rfind(prefix, 0) != 0 || e.path().extension() != ".safetensors") continue;
    ++files;
    EXPECT_NE(std::find(names.begin(), names.end(), stem), names.end()) << stem;
  }
  EXPECT_EQ(files, static_cast<int>(names.size()));
}

}  // namespace mf::testing
