// A whole-model fixture of tools/fixtures/model.py (config_json, w:NAME
// weights, tokens, targets, logits, loss, g:NAME gradients) loaded into a
// Transformer built from its config.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/transformer.h"
#include "fixtures.h"

namespace mf::testing {

struct ModelFixture {
  SafetensorsContents file;
  std::unique_ptr<Transformer> model;
  explicit ModelFixture(const std::string& name) : file(load_fixture(name)) {
    const Tensor cj = file.tensors.at("config_json");
    std::string text;
    for (std::int64_t i = 0; i < cj.numel(); ++i) text += static_cast<char>(cj.data<std::int32_t>()[i]);
    std::map<std::string, Tensor> weights;
    for (const auto& [k, t] : file.tensors)
      if (k.rfind("w:", 0) == 0) weights[k.substr(2)] = t;
    model = std::make_unique<Transformer>(config_from_string(text, name), 123);
    load_weights(*model, weights, name);
  }
  const Tensor& tensor(const std::string& key) const { return file.tensors.at(key); }
};

}  // namespace mf::testing
