// GenerationState: per-layer mixer states and the shared position count.
#include "model/generation_state.h"

#include "core/error.h"

namespace mf {

std::int64_t GenerationState::bytes() const {
  std::int64_t n = 0;
  for (const auto& l : layers_) n += l->bytes();
  return n;
}

void GenerationState::reset() {
  for (auto& l : layers_) l->reset();
  past_ = 0;
}

void GenerationState::check_room(std::int64_t new_tokens, const char* what) const {
  MF_CHECK(new_tokens >= 0, "[generation] ", what, " has a negative token count ", new_tokens);
  MF_CHECK(new_tokens <= capacity_ - past_, "[generation] ", what, " needs positions ", past_, "..",
           past_ + new_tokens - 1, " but the cache holds at most ", capacity_, " positions (", past_, " used, ",
           capacity_ - past_, " free); use a shorter prompt, fewer new tokens or a larger capacity "
           "(max_position_embeddings)");
}

}  // namespace mf
