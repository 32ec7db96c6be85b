#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace mf {

void CosineSchedule::validate() const {
  MF_CHECK(std::isfinite(max_lr) && max_lr > 0, "[schedule] lr must be > 0 but is ", max_lr);
  MF_CHECK(std::isfinite(min_lr) && min_lr >= 0 && min_lr <= max_lr, "[schedule] min_lr must be in [0, lr = ",
           max_lr, "] but is ", min_lr);
  MF_CHECK(total_steps >= 1, "[schedule] steps must be >= 1 but is ", total_steps);
  MF_CHECK(warmup_steps >= 0, "[schedule] warmup_steps must be >= 0 but is ", warmup_steps);
}

double CosineSchedule::lr_at(std::int64_t step) const {
  MF_CHECK(step >= 0, "[schedule] step must be >= 0 but is ", step);
  if (step < warmup_steps) return max_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  if (step >= total_steps) return min_lr;
  const double span = static_cast<double>(std::max<std::int64_t>(1, total_steps - 1 - warmup_steps));
  const double t = std::min(1.0, static_cast<double>(step - warmup_steps) / span);
  return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * t));
}

}  // namespace mf
