// Exact softmax attention, one family: dense reference (materialized scores)
// and flash-style tiled kernels, forward and backward, with causal, sliding
// window (+ global tokens), ALiBi, key padding, variable-length batches and
// dropout. Semantics (identical in every implementation):
//   - Q [B, Hq, Lq, D]; K [B, Hkv, Lk, D]; V [B, Hkv, Lk, Dv]; O [B, Hq, Lq, Dv];
//     Hq % Hkv == 0 (MHA/GQA/MQA); query head h reads KV head h / (Hq / Hkv).
//     Dv may differ from D (DeepSeek MLA: D = 192, Dv = 128); both are
//     multiples of 8 in [8, 256].
//   - Positions are bottom-right aligned: query row i sits at absolute
//     position i' = i + (Lk - Lq).
//   - Key j is visible from row i iff (window ok || i' global || j global)
//     && (!causal || j <= i') && key j not padded, where window ok means
//     i' - left <= j <= i' + right (a negative bound is unbounded).
//   - score = scale * q.k - (alibi ? m_h * |i' - j| : 0); P = softmax over
//     visible keys; O = dropout(P) V. LSE = log sum exp(score) over visible keys
//     (natural log, before dropout).
//   - A row that sees no key gets O = 0, LSE = -inf and zero gradients.
//   - NaN or Inf in Q, K or V follows IEEE arithmetic through these formulas:
//     a NaN score, an infinite max or a row whose visible scores are all -inf
//     gives that row NaN O and LSE, and NaN gradients in backward.
//   - Lq and Lk are at most kMaxAttentionLength (2^24) per batch entry.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "nn/attention/block_sparse.h"
#include "nn/attention/flash_attention.h"

namespace mf {

enum class AttentionImpl { Flash, Dense };

// Longest query or key sequence accepted (per batch entry): positions are
// compared and ALiBi distances computed in float32, exact up to 2^24.
inline constexpr std::int64_t kMaxAttentionLength = std::int64_t{1} << 24;

struct AttentionOptions {
  bool causal = false;
  // -1: unbounded (other negative values are rejected); any bound up to INT64_MAX is
  // accepted, and one at least as long as the sequences is the same as unbounded.
  std::int64_t window_left = -1;
  std::int64_t window_right = -1;
  // Absolute positions (0-based, key coordinates) of global tokens (Longformer).
  std::vector<std::int64_t> global_tokens;
  bool alibi = false;  // slopes of the ALiBi paper for Hq heads
  float scale = 0.0f;  // 0: 1/sqrt(D)
  float dropout_p = 0.0f;  // attention dropout on P, kept values scaled by 1/(1-p)
  std::uint64_t dropout_seed = 0;
  // Optional int32 [B, Lk]: nonzero = key may be attended, 0 = padding.
  Tensor key_padding_mask;
  // Tile sizes of the flash kernels for this call (results depend on them only
  // through rounding); validated by check_flash_tiles.
  FlashTiles flash_tiles;
  // Optional block-sparse layout (block_sparse.h): only its present tiles are
  // computed, with its element rule on top of the masks above. Needs Lq <= Lk
  // and, unless Lq == 1, Lk - Lq a multiple of its block; it must cover
  // ceil(Lk / block) row and column blocks.
  std::shared_ptr<const BlockLayout> block_layout;
};

struct AttentionOutput {
  Tensor out;  // [B, Hq, Lq, Dv]  (varlen: [total_q, Hq, Dv])
  Tensor lse;  // [B, Hq, Lq]      (varlen: [Hq, total_q])
};

struct AttentionGrads {
  Tensor dq;  // shape of q
  Tensor dk;  // shape of k (summed over the query heads of each KV group)
  Tensor dv;  // shape of v
};

// k and v may be strided views (unit-stride rows, e.g. a KV cache's first
// Lk rows): the forward reads them in place.
AttentionOutput attention_forward(const Tensor& q,  // [B, Hq, Lq, D]
                                  const Tensor& k,  // [B, Hkv, Lk, D]
                                  const Tensor& v,  // [B, Hkv, Lk, Dv]
                                  const AttentionOptions& opt, AttentionImpl impl = AttentionImpl::Flash);

AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out,   // [B, Hq, Lq, Dv] from forward
                                  const Tensor& lse,   // [B, Hq, Lq] from forward
                                  const Tensor& dout,  // [B, Hq, Lq, Dv]
                                  const AttentionOptions& opt, AttentionImpl impl = AttentionImpl::Flash);

// Variable-length packed batches (flash-attn's varlen API): sequence b owns
// rows [cu_seqlens_q[b], cu_seqlens_q[b+1]) of q and [cu_seqlens_k[b],
// cu_seqlens_k[b+1]) of k and v. key_padding_mask must be empty here.
struct VarlenSeqlens {
  std::vector<std::int64_t> cu_seqlens_q;  // [B + 1], starts at 0, non-decreasing
  std::vector<std::int64_t> cu_seqlens_k;  // [B + 1]
};

AttentionOutput attention_varlen_forward(const Tensor& q,  // [total_q, Hq, D]
                                         const Tensor& k,  // [total_k, Hkv, D]
                                         const Tensor& v,  // [total_k, Hkv, Dv]
                                         const VarlenSeqlens& seqs, const AttentionOptions& opt,
                                         AttentionImpl impl = AttentionImpl::Flash);

AttentionGrads attention_varlen_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const Tensor& out,   // [total_q, Hq, Dv]
                                         const Tensor& lse,   // [Hq, total_q]
                                         const Tensor& dout,  // [total_q, Hq, Dv]
                                         const VarlenSeqlens& seqs, const AttentionOptions& opt,
                                         AttentionImpl impl = AttentionImpl::Flash);

// ALiBi slopes for n heads (Press et al.): 2^(-8h/n), h = 1..n, when n is a
// power of two; otherwise those of the closest lower power of two followed
// by every other slope of twice that count.
std::vector<float> alibi_slopes(std::int64_t n_heads);

}  // namespace mf
