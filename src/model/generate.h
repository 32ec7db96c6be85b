// Autoregressive generation with the model's per-layer generation states (KV
// caches for attention layers): the prompt is prefilled in one call (the
// flash kernel over all prompt rows), then one token per step goes through
// the states (few query rows against many cached keys: the attention
// front door takes the flash-decoding split-KV path for long contexts).
// Sampling: src/model/sampling.h, one counter-based draw per token.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/sampling.h"
#include "model/transformer.h"

namespace mf {

struct GenerateOptions {
  std::int64_t max_new_tokens = 128;  // >= 1
  SamplingOptions sampling;           // temperature 0: greedy
  std::uint64_t seed = 0;             // sampling draws: Rng(seed), one per token
  std::int64_t capacity = 0;          // cache positions; 0: max_position_embeddings
  std::int64_t prefill_chunk = 0;     // prompt tokens per prefill call; 0: the whole prompt in one call
  void validate() const;              // errors name the option
};

struct GenerateResult {
  std::vector<std::int32_t> tokens;  // the new tokens (the prompt excluded)
  std::int64_t prompt_tokens = 0;
  double prefill_seconds = 0;  // prompt forward + first token's sampling
  double decode_seconds = 0;   // the tokens after the first: one cached forward + sampling each
  std::vector<double> decode_step_seconds;  // each of those steps (step s feeds position prompt_tokens + s - 1)
  double prefill_tokens_per_s() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0.0; }
  double decode_tokens_per_s() const {
    const auto n = static_cast<double>(tokens.size()) - 1.0;
    return decode_seconds > 0 && n > 0 ? n / decode_seconds : 0.0;
  }
};

// Called with each new token as soon as it is sampled (streaming). Its time
// is not counted in the timings.
using TokenCallback = std::function<void(std::int32_t token)>;

// Generates up to max_new_tokens after `prompt` (ids in [0, vocab)). Checks
// up front that prompt + max_new_tokens - 1 positions fit the cache.
GenerateResult generate(Transformer& model, const std::vector<std::int32_t>& prompt, const GenerateOptions& opt,
                        const TokenCallback& on_token = {});

// Several prompts at once (batched generation): each prompt is prefilled on
// its own, then every step feeds one token per prompt through
// Transformer::logits_rows, so each weight is read once per step for all
// prompts while each prompt keeps its own positions and caches (ragged
// lengths). Prompt i samples with Rng(opt.seed), as generate() alone would:
// its tokens equal generate(model, prompts[i], opt).tokens (bit for bit
// logits, so greedy and seeded sampling alike).
struct BatchGenerateResult {
  std::vector<std::vector<std::int32_t>> tokens;  // per prompt: its new tokens
  std::int64_t prompt_tokens = 0;                 // all prompts
  double prefill_seconds = 0;                     // every prompt's prefill + first sampling
  double decode_seconds = 0;                      // the batched steps (forward + sampling of every row)
  std::int64_t decode_tokens = 0;                 // tokens made by the batched steps
  std::vector<double> decode_step_seconds;        // each batched step
  double prefill_tokens_per_s() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0.0; }
  double decode_tokens_per_s() const { return decode_seconds > 0 ? decode_tokens / decode_seconds : 0.0; }
};

// Called with (prompt index, token) as soon as a token is sampled.
using BatchTokenCallback = std::function<void(std::int64_t prompt, std::int32_t token)>;

BatchGenerateResult generate_batch(Transformer& model, const std::vector<std::vector<std::int32_t>>& prompts,
                                   const GenerateOptions& opt, const BatchTokenCallback& on_token = {});

}  // namespace mf
