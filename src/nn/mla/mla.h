// DeepSeek-V2 Multi-head Latent Attention (MLA; DeepSeek-AI 2024, "DeepSeek-V2",
// section 2.1), as Hugging Face's DeepseekV2Attention computes it. Per token x
// (H heads, dn = qk_nope_head_dim, dr = qk_rope_head_dim, dq = dn + dr,
// dv = v_head_dim, r = kv_lora_rank, rq = q_lora_rank):
//   q      = q_b_proj(RMSNorm_qa(q_a_proj x))   (rq > 0)   or   q_proj x   (rq = 0)
//            per head [q_nope (dn) | q_pe (dr)]
//   [c | k_pe] = kv_a_proj_with_mqa x          c: [r], k_pe: [dr], one rope key for all heads
//   c_n    = RMSNorm_kv(c)                      (only c is normalized)
//   kv     = kv_b_proj c_n                      per head [k_nope (dn) | v (dv)]
//   q_pe, k_pe <- RoPE at the token's position (DeepSeek's pairs (2i, 2i + 1), see below)
//   K_h = [k_nope_h | k_pe], Q_h = [q_nope_h | q_pe_h]
//   O_h = softmax(scale Q_h K_h^T + causal mask) V_h,  scale = dq^-1/2 * m^2
//   y   = o_proj [O_1 .. O_H]
// with m = 0.1 mscale_all_dim ln(factor) + 1 under rope scaling with mscale_all_dim
// (else m = 1), and YaRN's cos/sin multiplied by m(factor, mscale) / m(factor,
// mscale_all_dim) (RopeConfig::mscale, rope.h). The RoPE: HF permutes q_pe and k_pe
// from interleaved pairs to [evens | odds] before a rotate-half rotation; since
// queries and keys are permuted alike, scores equal those of the interleaved
// rotation of the unpermuted vectors, which is what we compute (and cache: our
// k_pe cache is the interleaved-layout rotated key).
//
// Training: the attention runs in the flash kernels with query/key head dim dq
// and value head dim dv. Generation: the cache holds only c_n and the rotated
// k_pe (r + dr floats per token). Steps use the absorbed form: W_UK_h (the k_nope
// rows of kv_b_proj for head h, [dn, r]) folds into the query, q_lat_h = W_UK_h^T
// q_nope_h, so that scores are scale (q_lat_h . c_n_j + q_pe_h . k_pe_j): one
// multi-query attention of H heads over the latent cache with value c_n; its
// latent output o_lat_h goes through W_UV_h (the v rows, [dv, r]) before o_proj.
// Longer calls (prefill) take the naive form: K and V up-projected from the cache
// for every position, then the flash kernels.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "nn/attention/attention.h"
#include "nn/norm/norm.h"
#include "nn/parameter.h"
#include "nn/position/rope.h"

namespace mf {

struct MlaParams {
  std::int64_t num_heads = 0;
  std::int64_t q_lora_rank = 0;  // 0: q_proj
  std::int64_t kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  Parameter* q_proj = nullptr;              // [H dq, C]           (rq = 0)
  Parameter* q_a_proj = nullptr;            // [rq, C]             (rq > 0)
  Parameter* q_a_bias = nullptr;            // [rq] or null        (attention_bias)
  Parameter* q_a_layernorm = nullptr;       // [rq]
  Parameter* q_b_proj = nullptr;            // [H dq, rq]
  Parameter* kv_a_proj_with_mqa = nullptr;  // [r + dr, C]
  Parameter* kv_a_bias = nullptr;           // [r + dr] or null    (attention_bias)
  Parameter* kv_a_layernorm = nullptr;      // [r]
  Parameter* kv_b_proj = nullptr;           // [H (dn + dv), r]
  Parameter* o_proj = nullptr;              // [C, H dv]
  Parameter* o_bias = nullptr;              // [C] or null         (attention_bias)
  float rms_norm_eps = 1e-6f;
  float softmax_scale = 0.0f;  // dq^-1/2 m^2 (mla_softmax_scale)
  RopeTable* rope = nullptr;   // rotary_dim dr, interleaved pairs
  AttentionImpl impl = AttentionImpl::Flash;

  std::int64_t q_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  std::int64_t latent_dim() const { return kv_lora_rank + qk_rope_head_dim; }  // cached floats per token
};

// dq^-1/2, times m(factor, mscale_all_dim)^2 when the rope config scales and has mscale_all_dim.
float mla_softmax_scale(std::int64_t q_head_dim, const RopeConfig* rope);

// Saved by the training forward (N = B L tokens).
struct MlaSaved {
  Tensor cq, cq_n;      // [N, rq] q_a_proj output, normalized (rq > 0)
  NormSaved cq_stats;   // (rq > 0)
  Tensor c, c_n;        // [N, r] latent before / after kv_a_layernorm
  NormSaved c_stats;
  Tensor q, k, v;       // [N, H, dq] (RoPE applied), [N, H, dq], [N, H, dv]   ([B, H, L, *] with padding)
  Tensor out, lse;      // [N, H, dv], [H, N]                                  ([B, H, L, dv], [B, H, L])
  std::vector<const Tensor*> tensors() const { return {&cq, &cq_n, &cq_stats.rstd, &c, &c_n, &c_stats.rstd, &q, &k, &v, &out, &lse}; }
};

// The latent cache of one layer: rows [b, t] = [c_n (r) | rotated k_pe (dr)].
struct MlaCache {
  Tensor rows;  // [B, capacity, r + dr]
  std::int64_t past = 0;
};

enum class MlaDecodeForm { Auto, Absorbed, Naive };
// Calls of at most this many new tokens take the absorbed form under Auto.
inline constexpr std::int64_t kMlaAbsorbedMaxRows = 16;

// Training / evaluation forward (no cache): y [N, C] written; `saved` filled.
void mla_forward(const Tensor& y, MlaSaved& saved, const Tensor& x,  // x [N, C]
                 std::int64_t batch, std::int64_t seq_len, bool causal, const Tensor& key_padding_mask,
                 const MlaParams& p);
// dx overwritten; parameter gradients accumulate (+=).
void mla_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MlaSaved& saved, std::int64_t batch,
                  std::int64_t seq_len, bool causal, const Tensor& key_padding_mask, const MlaParams& p);

// Generation: appends the call's L tokens (positions cache.past ..) to the cache
// and writes y [B L, C]; causal.
void mla_forward_cached(const Tensor& y, const Tensor& x, std::int64_t batch, std::int64_t seq_len, MlaCache& cache,
                        MlaDecodeForm form, const MlaParams& p);

namespace reference {
// Plain loops in double, the naive form with every position's K and V: the
// specification the fast paths are tested against. Positions 0 .. L - 1 of
// each sequence; causal when `causal`.
Tensor mla_forward(const Tensor& x, std::int64_t batch, std::int64_t seq_len, bool causal, const MlaParams& p);
}  // namespace reference

}  // namespace mf
