// A whole-model fixture of tools/fixtures/model.py (config as UTF-8 bytes in
// "config_json", weights "w:NAME", gradients "g:NAME", tokens, targets,
// logits, loss): the model it describes with its weights loaded, and the
// check of a decoder's logits, loss and every parameter gradient against it.
#pragma once
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>

#include "core/safetensors.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "close.h"
#include "fixtures.h"

namespace mf::testing {

struct ModelFixture {
  SafetensorsContents file;
  std::unique_ptr<Transformer> model;
};

inline ModelFixture load_model_fixture(const std::string& name) {
  ModelFixture f{load_fixture(name), nullptr};
  const Tensor cj = f.file.tensors.at("config_json");
  std::string text;
  for (std::int64_t i = 0; i < cj.numel(); ++i) text += static_cast<char>(cj.data<std::int32_t>()[i]);
  std::map<std::string, Tensor> weights;
  for (const auto& [k, t] : f.file.tensors)
    if (k.rfind("w:", 0) == 0) weights[k.substr(2)] = t;
  f.model = std::make_unique<Transformer>(config_from_string(text, name), 123);
  load_weights(*f.model, weights, name);
  return f;
}

// Logits, the mean loss and every parameter's gradient within 1e-4 (relative).
inline void expect_decoder_matches_fixture(ModelFixture& f) {
  Transformer& m = *f.model;
  const auto& st = f.file.tensors;
  const Tensor& tokens = st.at("tokens");
  EXPECT_TRUE(close(m.logits(tokens), st.at("logits"), 1e-4, "logits"));
  for (Parameter* p : m.parameters()) p->grad.fill(0.0f);
  const double loss = m.loss(tokens, st.at("targets"), true);
  const double want = st.at("loss").to_vector()[0];
  EXPECT_NEAR(loss, want, 1e-4 * want);
  for (Parameter* p : m.parameters()) {
    ASSERT_TRUE(st.count("g:" + p->name)) << p->name;
    EXPECT_TRUE(close(p->grad, st.at("g:" + p->name), 1e-4, "gradient of " + p->name, 1e-3));
  }
}

}  // namespace mf::testing
