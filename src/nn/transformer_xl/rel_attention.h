// Transformer-XL relative multi-head attention (Dai et al. 2019; the reference
// implementation is kimiyoung/transformer-xl pytorch/mem_transformer.py,
// RelPartialLearnableMultiHeadAttn), forward and backward, with a segment
// memory. Per batch row, with M memory rows mem [M, C] (the previous
// segment's inputs of this layer, constants: stop-gradient), the segment's
// inputs x [L, C], K = M + L keys, H heads of dim D, scale = D^-1/2:
//   h = cat(mem, x)                     [K, C]
//   q = x Wq^T, k = h Wk^T, v = h Wv^T  (Wq; Wk; Wv = qkv_net.weight rows, no bias)
//   (grouped keys: Hkv key/value heads, query head h reads key/value head
//   h / (H / Hkv); the reference is Hkv = H, which is the default here too)
//   R_d = sinusoid(min(d, clamp_len))   d = 0 .. K-1 (clamp only when clamp_len > 0);
//         sinusoid(t) = [sin(t f_0) .. sin(t f_{C/2-1}), cos(t f_0) .. cos(t f_{C/2-1})],
//         f_c = 10000^(-2c/C)           (the reference's PositionalEmbedding)
//   P = R Wr^T                          [K, H*D] (r_net.weight, no bias)
//   query i (0 .. L-1) sees key j iff j <= M + i (the reference's dec_attn_mask
//   triu(ones(L, K), 1 + M)); for such j, per head h:
//   s_ij = scale * ((q_i + u_h) . k_j + (q_i + v_h) . P_{M+i-j})   u = r_w_bias, v = r_r_bias [H, D]
//   a_i  = sum_j softmax_j(s_ij) v_j;  y = a Wo^T   (o_net.weight, no bias)
// Dropout and the reference's residual + LayerNorm are not here (the block
// around the mixer does the residual and the norms).
//
// The rel-shift: the reference computes BD_raw[i, r] = (q_i + v) . (Wr R'_r)
// with R'_r = sinusoid(pos_seq[r]), pos_seq = [K-1, K-2, .., 0] (clamped), then
// _rel_shift (pad a zero column in front, view [K+1, L], drop the first row,
// view [L, K]) gives BD[i, j] = BD_raw[i, j + L - 1 - i] for j <= M + i (the
// entries past the diagonal are garbage that the mask removes). Its pos_seq
// entry is K-1 - (j + L - 1 - i) = M + i - j, so BD[i, j] = (q_i + v) . P_{M+i-j}
// with P indexed by the distance: exactly the term above. The fast kernel
// computes it per (query tile x key tile), reading the rows P_d that the tile
// needs, never an [L, K] matrix; the reference twin
// (rel_attention_reference.cpp) does the literal pad-and-view shift on the
// dense BD_raw.
//
// Fast kernel: query tiles of kRelQueryTile rows x key tiles of kRelKeyTile
// keys with an online softmax (running max and sum per row, flash style),
// OpenMP over (batch, head, query tile); the backward recomputes the
// probabilities from the saved log-sum-exp, OpenMP over (batch, head), with
// per-(batch, head) partial sums of dP, du and dv reduced over the batch in
// a fixed order, so the bits do not depend on the thread count.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "nn/parameter.h"

namespace mf {

struct RelAttentionParams {
  std::int64_t num_heads = 0;     // H
  std::int64_t num_kv_heads = 0;  // Hkv (divides H; the reference has Hkv = H)
  std::int64_t head_dim = 0;      // D
  std::int64_t clamp_len = 0;  // > 0: distances beyond it use R_clamp_len; 0: no clamp
  Parameter* qkv = nullptr;    // [(H + 2*Hkv)*D, C] qkv_net.weight (rows: q, then k, then v)
  Parameter* r = nullptr;      // [H*D, C] r_net.weight
  Parameter* u = nullptr;      // [H, D] r_w_bias
  Parameter* v = nullptr;      // [H, D] r_r_bias
  Parameter* o = nullptr;      // [C, H*D] o_net.weight
};

// The sinusoids R_d for d = begin .. end-1 (clamped as above): [end - begin, C].
Tensor rel_position_table(std::int64_t begin, std::int64_t end, std::int64_t hidden, std::int64_t clamp_len);

// Saved by a training forward (N = B*L, K = M + L).
struct RelAttentionSaved {
  Tensor memory;  // [B, M, C] the memory used (a copy: the caller's memory moves on); undefined when M = 0
  Tensor q;       // [N, H*D]
  Tensor kv;      // [B*K, 2*Hkv*D] keys then values of cat(mem, x)
  Tensor pos;     // [K, C] R
  Tensor p;       // [K, H*D] R Wr^T
  Tensor attn;    // [N, H*D] a (o_net's input)
  Tensor lse;     // [B, H, L] natural log-sum-exp of each row's scores
  std::int64_t mem_len = 0;  // M
  std::vector<const Tensor*> tensors() const;
};

// y [B*L, C] (written) from x [B*L, C] and memory [B, M, C] (undefined or
// M = 0: none); saved filled when non-null.
void rel_attention_forward(const Tensor& y, RelAttentionSaved* saved, const Tensor& x, const Tensor& memory,
                           std::int64_t batch, std::int64_t seq_len, const RelAttentionParams& p);
// dx [B*L, C] overwritten; parameter gradients accumulate (+=), the memory
// rows' keys and values included (they pass through Wk, Wv); the memory itself
// gets no gradient.
void rel_attention_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const RelAttentionSaved& saved,
                            std::int64_t batch, std::int64_t seq_len, const RelAttentionParams& p);

// Checks a call's shapes and parameters: "[transformer_xl] ...".
void rel_attention_check(const Tensor& x, const Tensor& memory, std::int64_t batch, std::int64_t seq_len,
                         const RelAttentionParams& p);

// The attention core alone (projections done): queries [B*L, H*D], keys and
// values in `kv` rows of 2*Hkv*D floats (keys first), kv_batch_stride floats
// between batch rows (K rows each, the first M of them memory), P [>= K, H*D].
// attn [B*L, H*D] and lse [B, H, L] written. Generation calls it on its cache.
struct RelAttentionCore {
  const float* q = nullptr;
  const float* kv = nullptr;
  std::int64_t kv_batch_stride = 0;
  const float* p = nullptr;
  const float* u = nullptr;   // [H, D]
  const float* vb = nullptr;  // [H, D]
  std::int64_t batch = 0, seq_len = 0, mem_len = 0, heads = 0, kv_heads = 0, head_dim = 0;
};
void rel_attention_core_forward(const RelAttentionCore& c, float* attn, float* lse);

namespace reference {
// Plain loops in double over the reference's own steps: cat, qkv_net, r_net
// over pos_seq = K-1 .. 0 (clamped), AC and the dense BD_raw [L, K], the
// literal _rel_shift (zero column, view [K+1, L], drop a row, view [L, K]),
// the mask, softmax, o_net. The backward recomputes the forward and sends
// dBD back through the same index map. Same contracts as above.
void rel_attention_forward(const Tensor& y, const Tensor& x, const Tensor& memory, std::int64_t batch,
                           std::int64_t seq_len, const RelAttentionParams& p);
void rel_attention_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& memory,
                            std::int64_t batch, std::int64_t seq_len, const RelAttentionParams& p);
}  // namespace reference

}  // namespace mf
