// Generation loop: prefill, then sample/feed one token at a time through the
// KV cache. Only the last row's logits are sampled; timings exclude the
// streaming callback.
#include "model/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/gemm.h"

namespace mf {

namespace {

constexpr const char* kOp = "[generate]";

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

Tensor token_row(const std::int32_t* ids, std::int64_t n) {
  Tensor t = Tensor::empty({1, n}, DType::I32);
  std::copy(ids, ids + n, t.data<std::int32_t>());
  return t;
}

// The last position's logits of a [1, L, V] tensor -> next token.
std::int32_t sample_last(const Tensor& logits, const SamplingOptions& opt, Rng& rng) {
  const std::int64_t l = logits.size(1), v = logits.size(2);
  const Tensor row = logits.contiguous();
  return static_cast<std::int32_t>(sample_token(row.data<float>() + (l - 1) * v, v, opt, rng));
}

}  // namespace

void GenerateOptions::validate() const {
  MF_CHECK(max_new_tokens >= 1, kOp, " max_new_tokens must be >= 1, got ", max_new_tokens);
  MF_CHECK(capacity >= 0, kOp, " capacity must be >= 0 (0: max_position_embeddings), got ", capacity);
  MF_CHECK(prefill_chunk >= 0, kOp, " prefill_chunk must be >= 0 (0: the whole prompt), got ", prefill_chunk);
  sampling.validate();
}

GenerateResult generate(Transformer& model, const std::vector<std::int32_t>& prompt, const GenerateOptions& opt,
                        const TokenCallback& on_token) {
  opt.validate();
  const ModelConfig& cfg = model.config();
  const auto n_prompt = static_cast<std::int64_t>(prompt.size());
  MF_CHECK(n_prompt >= 1, kOp, " the prompt is empty (at least one token is needed to condition on)");
  for (std::int64_t i = 0; i < n_prompt; ++i)
    MF_CHECK(prompt[i] >= 0 && prompt[i] < cfg.vocab_size, kOp, " prompt token ", prompt[i], " at position ", i,
             " is out of range [0, ", cfg.vocab_size, ")");
  GenerationOptions gopt;
  gopt.capacity = opt.capacity;
  const std::unique_ptr<GenerationState> cache = model.new_generation_state(gopt);
  // The last new token is sampled but never fed back.
  const std::int64_t needed = n_prompt + opt.max_new_tokens - 1;
  MF_CHECK(n_prompt <= cache->capacity(), kOp, " the prompt has ", n_prompt, " tokens but the context holds ",
           cache->capacity(), " positions (max_position_embeddings ", cfg.max_position_embeddings, ")");
  MF_CHECK(needed <= cache->capacity(), kOp, " a prompt of ", n_prompt, " tokens plus ", opt.max_new_tokens,
           " new tokens needs ", needed, " positions but the context holds ", cache->capacity(),
           " (max_position_embeddings ", cfg.max_position_embeddings, "); ask for at most ",
           cache->capacity() - n_prompt + 1, " new tokens");

  GenerateResult r;
  r.prompt_tokens = n_prompt;
  r.tokens.reserve(static_cast<std::size_t>(opt.max_new_tokens));
  Rng rng(opt.seed);

  gemm_backend();  // resolve the measured backend choice now, not inside the timed prefill
  auto t0 = std::chrono::steady_clock::now();
  const std::int64_t chunk = opt.prefill_chunk > 0 ? opt.prefill_chunk : n_prompt;
  Tensor logits;
  for (std::int64_t s = 0; s < n_prompt; s += chunk)
    logits = model.logits(token_row(prompt.data() + s, std::min(chunk, n_prompt - s)), cache.get());
  std::int32_t next = sample_last(logits, opt.sampling, rng);
  r.prefill_seconds = seconds_since(t0);
  r.tokens.push_back(next);
  if (on_token) on_token(next);

  for (std::int64_t step = 1; step < opt.max_new_tokens; ++step) {
    t0 = std::chrono::steady_clock::now();
    logits = model.logits(token_row(&next, 1), cache.get());
    next = sample_last(logits, opt.sampling, rng);
    r.decode_seconds += seconds_since(t0);
    r.tokens.push_back(next);
    if (on_token) on_token(next);
  }
  return r;
}

}  // namespace mf
