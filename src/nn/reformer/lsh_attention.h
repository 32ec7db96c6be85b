// Reformer LSH self-attention (Kitaev et al. 2020, "Reformer: The Efficient
// Transformer"), following Hugging Face's ReformerModel LSHSelfAttention (the
// reference implementation) exactly; forward, backward and a generation step.
//
// Per head h (H heads of D, shared query/key: no GQA), with qk = x Wqk^T and
// v = x Wv^T, rows i < L of one sequence:
//   key normalization (HF _len_and_dim_norm):
//     k_i = qk_i * rsqrt(mean_d(qk_i^2) + 1e-6) / sqrt(D); queries are qk_i as is
//     (no other 1/sqrt(D) scaling: score(i, j) = qk_i . k_j).
//   hashing, round r < n_hashes (HF _hash_vectors): rot = qk_i R[h, :, r, :]
//     (R [H, D, n_hashes, n_buckets/2], HF's layout), bucket_r(i) =
//     argmax([rot ; -rot]) (first maximum). Padding (key_padding_mask 0) and the
//     internal pad rows L..Lp-1 take the extra bucket n_buckets (HF's pad bucket).
//     The hash is a constant: no gradient flows through it.
//   sort: each round's Lp = ceil(L / c) * c rows (c = chunk_length; the sequence
//     is padded to a chunk multiple internally) are stably sorted by
//     (bucket, position); the rounds are concatenated into n_hashes * Lp slots.
//   chunks: the slots are cut into chunks of c; the queries of chunk g attend to
//     the 2c keys of chunk g - 1 and chunk g (HF num_chunks_before 1, after 0),
//     circularly over the concatenated rounds: chunk 0 of round r looks back at
//     the last chunk of round r - 1 (round 0: of the last round), as HF's
//     _look_adjacent does. Keys are not restricted to the query's bucket (as HF).
//     A key that appears in both chunks counts twice (as HF).
//   masks (HF _attend, values replace the score): a pad/padding key or (causal) a
//     key at a later position -> -1e9; the query's own position -> -1e5 (always,
//     after the other mask). So a token attends to itself only when nothing else
//     is visible; a round where it sees only itself then has lse ~ -1e5 and
//     gets weight 0 in the round combination (unless every round does).
//   per round: lse_r(i) = logsumexp of its 2c scores, o_r(i) = softmax . values;
//   rounds: out(i) = sum_r exp(lse_r(i) - logsumexp_r lse_r(i)) o_r(i), which
//     is one softmax over the union of the rounds' windows (the backward uses
//     that form: P = exp(score - lse(i)) with the combined lse).
//   y = out Wo^T (+ bias).
// Queries at pad rows (>= L) are not computed; queries of padding tokens are
// (as HF) but no other row sees them. Time is O(n_hashes L c D), memory
// O(n_hashes L D) plus a [c, 2c] score tile per thread (a chunk longer than L
// is cut to L: one chunk per round either way, same output). Scores are
// assumed to stay above -1e5 (|qk| < 1e5), as in HF.
// Where this differs from HF: the rotations are a fixed buffer drawn from the
// seed (HF draws new ones every forward unless config.hash_seed is set: this is
// HF with a fixed hash); no dropout; HF runs plain attention when L <=
// chunk_length, which gives the output of our one chunk per round; HF's cached
// decoding (the new token's chunk in the sorted order of the cached tokens,
// unpadded, wrapping within the round) does not equal its own full forward, so
// generation follows the rule below instead.
//
// Generation rule (a forward with a state): a prompt (past 0) is the full causal
// forward above over its L tokens, and fills the cache; each later token t is
// given what the full causal forward over positions 0..t gives its last
// position: per round it sits last in its bucket at slot
//   s_r = #{j < t : bucket_r(j) <= bucket_r(t)} of Lp = ceil((t+1)/c) c slots,
// attends to the chunk of s_r and the previous chunk (of round r - 1's last
// chunk when s_r < c), every cached key there except itself (self-mask rule),
// and the rounds combine by lse. This equals the full forward over a longer
// sequence whenever its chunking does not depend on later tokens (e.g. when
// one chunk covers the whole sequence: exact attention with the self-mask). A
// step costs O(t) integer work plus O(n_hashes c D) flops per head.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "nn/parameter.h"

namespace mf {

// HF's mask values (float32): a masked key and the query's own position.
inline constexpr float kLshMaskValue = -1e9f;
inline constexpr float kLshSelfMaskValue = -1e5f;

// Which score a query at position `query` gives the key at `key` (the one
// rule of the fast path, the generation step and the reference).
enum class LshKeyRole { Scored, Self, Masked };
inline LshKeyRole lsh_key_role(std::int64_t query, std::int64_t key, bool key_valid, bool causal) {
  if (key == query) return LshKeyRole::Self;
  if (!key_valid || (causal && key > query)) return LshKeyRole::Masked;
  return LshKeyRole::Scored;
}

struct LshOptions {
  std::int64_t n_hashes = 2;      // rounds, 1..16
  std::int64_t n_buckets = 32;    // even, >= 2
  std::int64_t chunk_length = 64;
  bool causal = true;
};

// ---- the attention kernel (after the projections) ----------------------------

// What the kernel forward keeps for its backward. N = B*L, R = n_hashes.
struct LshKernelSaved {
  Tensor keys;        // [N, H, D] normalized keys
  Tensor inv_rms;     // [N, H] rsqrt(mean(qk^2) + 1e-6)
  Tensor sorted_pos;  // int32 [B, H, R, Lp] position at each sorted slot (>= L: pad)
  Tensor out;         // [N, H, D] combined output
  // logsumexp over the rounds' windows = lse_max + lse_log_sum, kept apart (a
  // self-only query has lse -1e5 + log(count), which float32 cannot hold)
  Tensor lse_max;      // [B, H, L] the largest score
  Tensor lse_log_sum;  // [B, H, L] log sum exp(score - lse_max)
  std::int64_t padded_len = 0;  // Lp
  std::vector<const Tensor*> tensors() const;
  std::size_t bytes() const;
};

// out [N, H, D] (written) from qk, v [N, H, D] (row-contiguous per token; qk
// may be a [N, H*D] tensor reshaped), rotations [H, D, R, n_buckets/2].
void lsh_attention_kernel_forward(const Tensor& out, LshKernelSaved& saved, const Tensor& qk, const Tensor& v,
                                  const Tensor& rotations, std::int64_t batch, std::int64_t seq_len,
                                  const Tensor& key_padding_mask,  // int32 [B, L] or undefined
                                  const LshOptions& o);
// dqk, dv [N, H, D] overwritten from dout [N, H, D].
void lsh_attention_kernel_backward(const Tensor& dqk, const Tensor& dv, const Tensor& dout, const Tensor& qk,
                                   const Tensor& v, const LshKernelSaved& saved, std::int64_t batch,
                                   std::int64_t seq_len, const Tensor& key_padding_mask, const LshOptions& o);

// For an approximation-error meter: the LSH output [B*L, H, D] of queries =
// keys qk [B*L, H, D] and values v (same shape), with given rotations
// [H, D, n_hashes, n_buckets/2], or rotations drawn from `seed` as the mixer
// draws its buffer (lsh_draw_rotations). Compare with exact attention over
// the same qk and normalized keys (lsh_normalize_keys) and the self-mask.
Tensor lsh_attention(const Tensor& qk, const Tensor& v, const Tensor& rotations, std::int64_t batch,
                     std::int64_t seq_len, std::int64_t chunk_length, bool causal);
Tensor lsh_attention(const Tensor& qk, const Tensor& v, std::int64_t batch, std::int64_t seq_len,
                     std::int64_t n_hashes, std::int64_t n_buckets, std::uint64_t seed, std::int64_t chunk_length,
                     bool causal);
// N(0, 1) rotations [H, D, n_hashes, n_buckets/2] from (seed, stream) through Philox.
Tensor lsh_draw_rotations(std::int64_t heads, std::int64_t head_dim, std::int64_t n_hashes, std::int64_t n_buckets,
                          std::uint64_t seed, std::uint64_t stream = 0);
// k = qk * rsqrt(mean(qk^2) + 1e-6) / sqrt(D) over the last dimension.
Tensor lsh_normalize_keys(const Tensor& qk);

// ---- the sublayer (projections + kernel) -------------------------------------

struct LshAttentionParams {
  std::int64_t num_heads = 0, head_dim = 0;  // H, D
  LshOptions opt;
  Parameter* qk = nullptr;  // [H*D, C] shared query/key projection
  Parameter* v = nullptr;   // [H*D, C]
  Parameter* o = nullptr;   // [C, H*D]
  Parameter *qk_bias = nullptr, *v_bias = nullptr, *o_bias = nullptr;  // optional
  Parameter* rotations = nullptr;  // buffer [H, D, n_hashes, n_buckets/2] (never trained)
};

struct LshAttentionSaved {
  Tensor qk, v;  // [N, H, D]
  LshKernelSaved kernel;
  std::vector<const Tensor*> tensors() const;
};

// y [B*L, C] (written) from x [B*L, C]; opt.causal selects the mask.
void lsh_attention_forward(const Tensor& y, LshAttentionSaved& saved, const Tensor& x, std::int64_t batch,
                           std::int64_t seq_len, const Tensor& key_padding_mask, const LshAttentionParams& p);
// dx overwritten; parameter gradients accumulate (+=); rotations get none.
void lsh_attention_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const LshAttentionSaved& saved,
                            std::int64_t batch, std::int64_t seq_len, const Tensor& key_padding_mask,
                            const LshAttentionParams& p);

// Checks every argument (shared by the fast path and the reference):
// options, parameter shapes, x, the mask.
void lsh_attention_check(const Tensor& x, std::int64_t batch, std::int64_t seq_len, const Tensor& key_padding_mask,
                         const LshAttentionParams& p);
void lsh_check_options(const LshOptions& o);

// ---- generation --------------------------------------------------------------

// The cache of one layer: per sequence the raw qk, normalized keys, values and
// each round's bucket of every position so far.
struct LshCache {
  std::int64_t batch = 0, capacity = 0, heads = 0, head_dim = 0, n_hashes = 0, n_buckets = 0;
  std::int64_t length = 0;  // positions held
  Tensor qk, keys, v;       // [B, capacity, H, D]
  Tensor buckets;           // int32 [B, H, R, capacity]
  // Scratch of a step (allocated once, no allocation per token): per (b, h)
  // the window positions and scores of every round, the per-bucket counters,
  // the rotated vector of the new token; per (b, token, h) 1 / rms.
  std::vector<std::int32_t> window;  // [B*H, R, 2c]
  std::vector<float> scores;         // [B*H, R, 2c]
  std::vector<std::int32_t> counts;  // [B*H, 2, n_buckets + 1]
  std::vector<float> rotated;        // [B*H, R * n_buckets/2]
  std::vector<float> inv_rms;        // [B, H]
  LshCache(std::int64_t batch, std::int64_t capacity, std::int64_t heads, std::int64_t head_dim,
           const LshOptions& o);
  std::int64_t bytes() const;
};

// A generation call: y [B*L, C] for positions cache.length .. + L - 1. A
// prompt into an empty cache is the causal forward; later tokens follow the
// generation rule one at a time.
void lsh_attention_generate(const Tensor& y, const Tensor& x, std::int64_t batch, std::int64_t seq_len,
                            LshCache& cache, const LshAttentionParams& p);

namespace reference {
// Plain loops in double, the specification (same contracts; the backward
// recomputes the forward itself; causal from p.opt.causal).
void lsh_attention_forward(const Tensor& y, const Tensor& x, std::int64_t batch, std::int64_t seq_len,
                           const Tensor& key_padding_mask, const LshAttentionParams& p);
void lsh_attention_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, std::int64_t batch,
                            std::int64_t seq_len, const Tensor& key_padding_mask, const LshAttentionParams& p);
// The generation rule, plainly: y [B, C] of position t = the last row of the
// reference causal forward over x rows 0..t of each sequence (x [B*(t+1), C]).
void lsh_attention_generate_step(const Tensor& y, const Tensor& x, std::int64_t batch, std::int64_t t,
                                 const LshAttentionParams& p);
}  // namespace reference

}  // namespace mf
