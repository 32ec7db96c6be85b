// What the trainer, evaluator and generator need from a language model: its
// parameters, a loss with gradients, logits, and checkpoint saving. The
// transformer (src/model/transformer.h) implements it; tests may implement it
// with a tiny model of their own.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/tensor.h"
#include "model/generation_state.h"
#include "nn/parameter.h"

namespace mf {

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;

  virtual std::vector<Parameter*> parameters() = 0;
  virtual std::int64_t vocab_size() const = 0;

  // tokens, targets: int32 [B, L]; a target < 0 is ignored. Returns the mean
  // cross-entropy (nats) over non-ignored targets. With compute_grads, adds
  // d(mean loss)/d(param) into every Parameter::grad (+=).
  virtual double loss(const Tensor& tokens, const Tensor& targets, bool compute_grads) = 0;

  // Segment-level recurrence (Transformer-XL): a model whose layers keep a
  // memory of earlier segments returns a fresh (empty) one for `batch`
  // streams; null (the default) for models without. The trainer and the
  // evaluator then walk consecutive segments of `batch` contiguous streams.
  virtual std::unique_ptr<SegmentMemory> new_segment_memory(std::int64_t batch) {
    (void)batch;
    return nullptr;
  }
  // loss() continuing `memory` (null: as loss()): the memory is read without
  // gradient and moved on by this segment.
  virtual double loss(const Tensor& tokens, const Tensor& targets, bool compute_grads, SegmentMemory* memory) {
    MF_CHECK(memory == nullptr, "[model] this language model keeps no segment memory");
    return loss(tokens, targets, compute_grads);
  }

  // tokens: int32 [B, L] -> float32 logits [B, L, vocab].
  virtual Tensor logits(const Tensor& tokens) = 0;

  // Called by the trainer before each optimizer step's first forward (step
  // counts from 0): mechanisms with per-step state (Performer's feature
  // redraw) update it here, deterministically in (seed, step). Never called
  // in evaluation or generation.
  virtual void begin_training_step(std::int64_t step) { (void)step; }

  // Auxiliary losses of the last loss() with compute_grads (MoE load
  // balancing and router z-loss, Mixture-of-Depths predictors): already in
  // the gradients, not in loss()'s value; the trainer logs them as
  // "aux_loss", with aux_metrics (per layer, the statistics behind them:
  // {"layers.3.moe": {...}}, or an empty object) as "aux".
  virtual bool has_aux_loss() const { return false; }
  virtual double aux_loss() const { return 0.0; }
  virtual nlohmann::json aux_metrics() const { return nlohmann::json::object(); }

  // Writes DIR/config.json and DIR/model.safetensors atomically (DIR exists).
  virtual void save(const std::string& dir) const = 0;
};

}  // namespace mf
