// A model's generation state: one MixerState per layer (a KV cache for
// attention layers, a recurrent state for recurrent mixers, ...) and the
// number of positions consumed so far. Made by Transformer::new_generation_state;
// every call of Transformer::logits with it continues the sequence.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "nn/mixer/token_mixer.h"

namespace mf {

class GenerationState {
 public:
  GenerationState(std::vector<std::unique_ptr<MixerState>> layers, std::int64_t batch, std::int64_t capacity)
      : layers_(std::move(layers)), batch_(batch), capacity_(capacity) {}

  std::int64_t past_length() const { return past_; }
  std::int64_t capacity() const { return capacity_; }  // most positions in all
  std::int64_t remaining() const { return capacity_ - past_; }
  std::int64_t batch() const { return batch_; }
  std::int64_t num_layers() const { return static_cast<std::int64_t>(layers_.size()); }
  MixerState* layer(std::int64_t i) { return layers_.at(static_cast<std::size_t>(i)).get(); }
  std::int64_t bytes() const;  // memory of every layer's state

  // Throws a clear error unless `new_tokens` more positions fit.
  void check_room(std::int64_t new_tokens, const char* what = "the next call") const;
  // After a call of `n` positions went through every layer.
  void advance(std::int64_t n) { past_ += n; }
  void reset();  // forget every position (storage is kept)

 private:
  std::vector<std::unique_ptr<MixerState>> layers_;
  std::int64_t batch_, capacity_;
  std::int64_t past_ = 0;
};

// A model's segment memory (Transformer-XL's segment-level recurrence): one
// MixerState per layer whose token mixer keeps one (null for the others),
// for `batch` streams. Made by Transformer::new_segment_memory; each
// loss() or logits() call with it reads the memory (as a constant) and moves
// it on by the call's segment, so consecutive calls must carry consecutive
// segments of each stream.
class SegmentMemory {
 public:
  SegmentMemory(std::vector<std::unique_ptr<MixerState>> layers, std::int64_t batch)
      : layers_(std::move(layers)), batch_(batch) {}
  std::int64_t batch() const { return batch_; }
  MixerState* layer(std::int64_t i) { return layers_.at(static_cast<std::size_t>(i)).get(); }
  std::int64_t bytes() const {
    std::int64_t n = 0;
    for (const auto& l : layers_) n += l ? l->bytes() : 0;
    return n;
  }
  void reset() {  // forget every segment (the start of new streams)
    for (auto& l : layers_)
      if (l) l->reset();
  }

 private:
  std::vector<std::unique_ptr<MixerState>> layers_;
  std::int64_t batch_;
};

}  // namespace mf
