// Classifiers are encoder transformers (src/model/transformer.h, is_decoder
// false): built from a config file or loaded from a checkpoint folder.
#include "model/classifier_factory.h"

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "model/checkpoint.h"
#include "model/transformer.h"

namespace mf {

ModelConfigKind inspect_model_config(const std::string& path) {
  const nlohmann::json j = nlohmann::json::parse(read_file(path), nullptr, false);
  MF_CHECK(!j.is_discarded() && j.is_object(), "[config] '", path, "' is not a JSON object");
  ModelConfigKind k;
  if (j.contains("is_decoder")) {
    MF_CHECK(j["is_decoder"].is_boolean(), "[config] field 'is_decoder' in '", path, "' must be true or false");
    k.classifier = !j["is_decoder"].get<bool>();
  }
  if (j.contains("max_position_embeddings")) {
    MF_CHECK(j["max_position_embeddings"].is_number_integer(), "[config] field 'max_position_embeddings' in '", path,
             "' must be an integer");
    k.max_position_embeddings = j["max_position_embeddings"].get<std::int64_t>();
  }
  return k;
}

std::unique_ptr<SequenceClassifier> make_classifier(const std::string& config_path, std::uint64_t seed) {
  const ModelConfig cfg = load_config(config_path);
  MF_CHECK(!cfg.is_decoder, "[classifier] '", config_path,
           "' is a decoder config; a classifier needs \"is_decoder\": false and \"num_labels\"");
  return std::make_unique<Transformer>(cfg, seed);
}

std::unique_ptr<SequenceClassifier> make_classifier(const ModelConfig& cfg, std::uint64_t seed) {
  MF_CHECK(!cfg.is_decoder, "[classifier] a classifier needs \"is_decoder\": false and \"num_labels\"");
  return std::make_unique<Transformer>(cfg, seed);
}

std::unique_ptr<SequenceClassifier> load_classifier(const std::string& dir) {
  std::unique_ptr<Transformer> m = load_checkpoint(dir);
  MF_CHECK(!m->config().is_decoder, "[classifier] '", dir,
           "' holds a decoder (language model); a classifier needs \"is_decoder\": false");
  return m;
}

}  // namespace mf
