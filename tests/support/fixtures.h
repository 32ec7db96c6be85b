// Loads a committed PyTorch fixture (tests/fixtures/<name>.safetensors, made
// by tools/make_fixtures.py) for comparison in a test, reads its options, and
// checks that a test's list of fixtures covers every file its generator wrote.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "nn/parameter.h"
#include "close.h"

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

// A module fixture (x, y, dy, dx, weights and grad_<weight>): its weights as
// parameters owned here, and the check of a module's outputs against it.
struct FixtureModule {
  SafetensorsContents file;
  std::vector<std::unique_ptr<Parameter>> params;
  explicit FixtureModule(const std::string& name) : file(load_fixture(name)) {}
  const Tensor& tensor(const std::string& key) const { return file.tensors.at(key); }
  std::int64_t option(const std::string& name) const { return fixture_option(file, name); }
  // The tensor `key` as a new parameter (zero gradient), or null when absent.
  Parameter* param(const std::string& key) {
    if (!file.tensors.count(key)) return nullptr;
    params.push_back(std::make_unique<Parameter>(key, tensor(key).contiguous().clone(), true));
    return params.back().get();
  }
  // y, dx and every parameter's gradient vs "y", "dx" and "grad_<name>", within
  // tol times max(max |want|, 1) (a gradient that is 0 in theory is float32
  // cancellation noise of O(1) terms, hence the floor of 1).
  void expect_matches(const Tensor& y, const Tensor& dx, double tol) const {
    EXPECT_TRUE(close(y, tensor("y"), tol, "y", 1.0));
    EXPECT_TRUE(close(dx, tensor("dx"), tol, "dx", 1.0));
    for (const auto& q : params) EXPECT_TRUE(close(q->grad, tensor("grad_" + q->name), tol, "grad_" + q->name, 1.0));
  }
};

}  // namespace mf::testing
