// Training and evaluating a LanguageModel on SequenceData (task "sequence" of
// the shared loop): batches from ClassifySampler over the training examples,
// cross-entropy on the scored targets only, and validation accuracy = the
// fraction of scored targets whose largest logit is the target (ties: the
// first largest), plus the fraction of examples with every target right.
#pragma once
#include <cstdint>

#include "model/language_model.h"
#include "train/sequence_data.h"
#include "train/trainer.h"

namespace mf {

struct SequenceEvalResult {
  double loss = 0;             // mean nats per scored target
  double accuracy = 0;         // scored targets right / scored targets
  double exact = 0;            // examples with every scored target right / examples
  std::int64_t scored = 0, correct = 0, examples = 0;
};

// Every example of `data`, in order, batch_size at a time; tokens must be
// below model.vocab_size() (checked, naming the file).
SequenceEvalResult evaluate(LanguageModel& model, const SequenceData& data, std::int64_t batch_size);

using SequenceTrainResult = TrainResultOf<SequenceEvalResult>;
// cfg.task must be "sequence"; cfg.seq_len bounds the examples' length
// (longer ones are refused by name, not truncated: a cut would drop targets).
SequenceTrainResult train(LanguageModel& model, const SequenceData& train_data, const SequenceData& val_data,
                          const TrainConfig& cfg, bool resume = false);

}  // namespace mf
