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

namespace {

// Checks a prompt (`which`: "" or " 3" for the fourth of a batch) and returns
// the cache positions it needs (prompt + new tokens - 1: the last new token is
// sampled but never fed back) and the most the cache may hold.
std::int64_t check_prompt(const ModelConfig& cfg, const std::vector<std::int32_t>& prompt, const GenerateOptions& opt,
                          std::int64_t capacity, const std::string& which) {
  const auto n_prompt = static_cast<std::int64_t>(prompt.size());
  MF_CHECK(n_prompt >= 1, kOp, " the prompt", which, " is empty (at least one token is needed to condition on)");
  for (std::int64_t i = 0; i < n_prompt; ++i)
    MF_CHECK(prompt[i] >= 0 && prompt[i] < cfg.vocab_size, kOp, " prompt", which, " token ", prompt[i],
             " at position ", i, " is out of range [0, ", cfg.vocab_size, ")");
  const std::int64_t needed = n_prompt + opt.max_new_tokens - 1;
  MF_CHECK(n_prompt <= capacity, kOp, " the prompt", which, " has ", n_prompt, " tokens but the context holds ",
           capacity, " positions (max_position_embeddings ", cfg.max_position_embeddings, ")");
  MF_CHECK(needed <= capacity, kOp, " a prompt", which, " of ", n_prompt, " tokens plus ", opt.max_new_tokens,
           " new tokens needs ", needed, " positions but the context holds ", capacity, " (max_position_embeddings ",
           cfg.max_position_embeddings, "); ask for at most ", capacity - n_prompt + 1, " new tokens");
  return needed;
}

// Prefills `prompt` into `state` (in chunks of opt.prefill_chunk) and returns the last position's logits.
Tensor prefill(Transformer& model, const std::vector<std::int32_t>& prompt, const GenerateOptions& opt,
               GenerationState* state) {
  const auto n_prompt = static_cast<std::int64_t>(prompt.size());
  const std::int64_t chunk = opt.prefill_chunk > 0 ? opt.prefill_chunk : n_prompt;
  Tensor logits;
  for (std::int64_t s = 0; s < n_prompt; s += chunk)
    logits = model.logits(token_row(prompt.data() + s, std::min(chunk, n_prompt - s)), state);
  return logits;
}

}  // namespace

GenerateResult generate(Transformer& model, const std::vector<std::int32_t>& prompt, const GenerateOptions& opt,
                        const TokenCallback& on_token) {
  opt.validate();
  GenerationOptions gopt;
  gopt.capacity = opt.capacity;
  const std::unique_ptr<GenerationState> cache = model.new_generation_state(gopt);
  check_prompt(model.config(), prompt, opt, cache->capacity(), "");

  GenerateResult r;
  r.prompt_tokens = static_cast<std::int64_t>(prompt.size());
  r.tokens.reserve(static_cast<std::size_t>(opt.max_new_tokens));
  r.decode_step_seconds.reserve(static_cast<std::size_t>(opt.max_new_tokens));
  Rng rng(opt.seed);

  gemm_backend();  // resolve the measured backend choice now, not inside the timed prefill
  auto t0 = std::chrono::steady_clock::now();
  std::int32_t next = sample_last(prefill(model, prompt, opt, cache.get()), opt.sampling, rng);
  r.prefill_seconds = seconds_since(t0);
  r.tokens.push_back(next);
  if (on_token) on_token(next);

  for (std::int64_t step = 1; step < opt.max_new_tokens; ++step) {
    t0 = std::chrono::steady_clock::now();
    const Tensor logits = model.logits(token_row(&next, 1), cache.get());
    next = sample_last(logits, opt.sampling, rng);
    const double dt = seconds_since(t0);
    r.decode_seconds += dt;
    r.decode_step_seconds.push_back(dt);
    r.tokens.push_back(next);
    if (on_token) on_token(next);
  }
  return r;
}

BatchGenerateResult generate_batch(Transformer& model, const std::vector<std::vector<std::int32_t>>& prompts,
                                   const GenerateOptions& opt, const BatchTokenCallback& on_token) {
  opt.validate();
  const ModelConfig& cfg = model.config();
  const auto n = static_cast<std::int64_t>(prompts.size());
  MF_CHECK(n >= 1, kOp, " batched generation needs at least one prompt");
  const std::int64_t capacity = opt.capacity > 0 ? opt.capacity : cfg.max_position_embeddings;
  // Each prompt's state holds only the positions it needs (same bits as a full-size cache).
  std::vector<std::unique_ptr<GenerationState>> states;
  std::vector<GenerationState*> rows;
  BatchGenerateResult r;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto& prompt = prompts[static_cast<std::size_t>(i)];
    GenerationOptions gopt;
    gopt.capacity = check_prompt(cfg, prompt, opt, capacity, str_cat(" ", i));
    states.push_back(model.new_generation_state(gopt));
    rows.push_back(states.back().get());
    r.prompt_tokens += static_cast<std::int64_t>(prompt.size());
  }
  std::vector<Rng> rngs(static_cast<std::size_t>(n), Rng(opt.seed));
  std::vector<std::int32_t> next(static_cast<std::size_t>(n));
  r.tokens.resize(static_cast<std::size_t>(n));
  for (auto& t : r.tokens) t.reserve(static_cast<std::size_t>(opt.max_new_tokens));
  r.decode_step_seconds.reserve(static_cast<std::size_t>(opt.max_new_tokens));

  gemm_backend();
  for (std::int64_t i = 0; i < n; ++i) {
    const auto u = static_cast<std::size_t>(i);
    const auto t0 = std::chrono::steady_clock::now();
    next[u] = sample_last(prefill(model, prompts[u], opt, rows[u]), opt.sampling, rngs[u]);
    r.prefill_seconds += seconds_since(t0);
    r.tokens[u].push_back(next[u]);
    if (on_token) on_token(i, next[u]);
  }
  const std::int64_t vocab = cfg.vocab_size;
  for (std::int64_t step = 1; step < opt.max_new_tokens; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    const Tensor logits = model.logits_rows(next, rows);  // [n, V]
    for (std::int64_t i = 0; i < n; ++i) {
      const auto u = static_cast<std::size_t>(i);
      next[u] = static_cast<std::int32_t>(sample_token(logits.data<float>() + i * vocab, vocab, opt.sampling, rngs[u]));
    }
    const double dt = seconds_since(t0);
    r.decode_seconds += dt;
    r.decode_step_seconds.push_back(dt);
    r.decode_tokens += n;
    for (std::int64_t i = 0; i < n; ++i) {
      r.tokens[static_cast<std::size_t>(i)].push_back(next[static_cast<std::size_t>(i)]);
      if (on_token) on_token(i, next[static_cast<std::size_t>(i)]);
    }
  }
  return r;
}

}  // namespace mf
