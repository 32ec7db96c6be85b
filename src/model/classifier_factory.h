// Where the CLI gets a SequenceClassifier: a new one from a model config file,
// or one loaded from a checkpoint folder. The one place that knows which
// model class implements encoder classification (the transformer, for
// configs with "is_decoder": false and "num_labels").
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "model/config.h"
#include "model/sequence_classifier.h"

namespace mf {

// What the CLI reads from a model config file before choosing a path, with
// nlohmann-json directly (so that it works whatever the config parser knows).
struct ModelConfigKind {
  bool classifier = false;                  // "is_decoder": false
  std::int64_t max_position_embeddings = 0;  // 0 when the file does not say
};
// Throws mf::Error naming the file when it is not a JSON object or a field has the wrong type.
ModelConfigKind inspect_model_config(const std::string& config_path);

// A freshly initialized classifier for the model config file at config_path,
// its parameters drawn from `seed`. Throws mf::Error naming the file when the
// config is not an encoder classifier.
std::unique_ptr<SequenceClassifier> make_classifier(const std::string& config_path, std::uint64_t seed);

// A freshly initialized classifier for `cfg` (an encoder config).
std::unique_ptr<SequenceClassifier> make_classifier(const ModelConfig& cfg, std::uint64_t seed);

// The classifier saved in checkpoint folder `dir` (config.json + model.safetensors).
std::unique_ptr<SequenceClassifier> load_classifier(const std::string& dir);

}  // namespace mf
