// On this branch no model implements SequenceClassifier yet: make_classifier
// and load_classifier refuse with an error that says so. The encoder
// transformer (issue 9) fills them in: load_config + Transformer(cfg, seed),
// and load_checkpoint(dir).
#include "model/classifier_factory.h"

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"

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

std::unique_ptr<SequenceClassifier> make_classifier(const std::string& config_path, std::uint64_t) {
  fail("[classifier] '", config_path,
       "': encoder classifiers are not available yet in this build (no model implements SequenceClassifier)");
}

std::unique_ptr<SequenceClassifier> load_classifier(const std::string& dir) {
  fail("[classifier] '", dir,
       "': encoder classifiers are not available yet in this build (no model implements SequenceClassifier)");
}

}  // namespace mf
