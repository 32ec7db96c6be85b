// What the classification trainer and evaluator need from a sequence
// classifier (an encoder with a pooled classification head, `is_decoder:
// false` + `num_labels` in the model config): its parameters, a loss with
// gradients, class logits, and checkpoint saving. The transformer
// (src/model/transformer.h) implements it for encoder configs; tests may
// implement it with a tiny model of their own.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/parameter.h"

namespace mf {

class SequenceClassifier {
 public:
  virtual ~SequenceClassifier() = default;

  virtual std::vector<Parameter*> parameters() = 0;
  virtual std::int64_t num_labels() const = 0;

  // tokens: int32 [B, L]; mask: int32 [B, L], nonzero = a real token, 0 =
  // padding (every row has at least one real token; padding may sit
  // anywhere, usually at the end); labels: int32 [B] in [0, num_labels).
  // Returns the mean cross-entropy (nats) over the B sequences. With
  // compute_grads, adds d(mean loss)/d(param) into every Parameter::grad (+=).
  virtual double classify_loss(const Tensor& tokens, const Tensor& mask, const Tensor& labels,
                               bool compute_grads) = 0;

  // float32 [B, num_labels] class logits for tokens/mask as above.
  virtual Tensor class_logits(const Tensor& tokens, const Tensor& mask) = 0;

  // Called by the trainer before each optimizer step's first forward (step
  // counts from 0): mechanisms with per-step state (Performer's feature
  // redraw) update it here, deterministically in (seed, step). Never called
  // in evaluation or generation.
  virtual void begin_training_step(std::int64_t step) { (void)step; }

  // Writes DIR/config.json and DIR/model.safetensors atomically (DIR exists).
  virtual void save(const std::string& dir) const = 0;
};

}  // namespace mf
