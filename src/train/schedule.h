// Learning-rate schedule: linear warmup to max_lr, then cosine decay to
// min_lr (Loshchilov & Hutter, SGDR, without restarts), as in GPT-3/Llama
// training recipes. Steps are 0-based indices of the update being taken.
#pragma once
#include <cstdint>

namespace mf {

struct CosineSchedule {
  double max_lr = 1e-3;
  double min_lr = 1e-4;
  std::int64_t warmup_steps = 0;  // updates 0..warmup-1 ramp up linearly
  std::int64_t total_steps = 1;   // update total-1 uses exactly min_lr

  // Throws mf::Error naming the field when a value is out of range.
  void validate() const;
  //   step < warmup:          max_lr * (step + 1) / warmup
  //   warmup <= step < total: min_lr + (max_lr - min_lr) * (1 + cos(pi * t)) / 2,
  //                           t = (step - warmup) / max(1, total - 1 - warmup)
  //   step >= total:          min_lr
  double lr_at(std::int64_t step) const;
};

}  // namespace mf
