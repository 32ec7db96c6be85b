// On this branch no model implements SequenceClassifier yet: both functions
// refuse with an error that says so. The encoder transformer (issue 9) fills
// them in: load_config + Transformer(cfg, seed), and load_checkpoint(dir).
#include "model/classifier_factory.h"

#include "core/error.h"

namespace mf {

std::unique_ptr<SequenceClassifier> make_classifier(const std::string& config_path, std::uint64_t) {
  fail("[classifier] '", config_path,
       "': encoder classifiers are not available yet in this build (no model implements SequenceClassifier)");
}

std::unique_ptr<SequenceClassifier> load_classifier(const std::string& dir) {
  fail("[classifier] '", dir,
       "': encoder classifiers are not available yet in this build (no model implements SequenceClassifier)");
}

}  // namespace mf
