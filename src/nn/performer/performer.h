// Performer self-attention (Choromanski et al. 2021, "Rethinking Attention with
// Performers"): FAVOR+ positive random features replace softmax(q k^T), so
// attention is linear in L; non-causal by two GEMMs, causal by a chunked
// prefix scan; forward, backward and a recurrent generation state.
//
// The math, per (sequence, query head h, its KV head h / (Hq/Hkv)); d = head
// dim, m = nb_features, W [m, d] the projection, c = d^(-1/4), r = m^(-1/2):
//   logits   a_j = c W k_j (keys), b_i = c W q_i (queries); diag(x) = c^2 |x|^2 / 2
//   softmax: phi_q(q_i) = r (exp(b_i - diag(q_i) - max_f b_i,f) + eps)    (eps = 1e-4)
//            phi_k(k_j) = r (exp(a_j - diag(k_j) - M) + eps)
//   relu:    phi(x)     = relu(c W x) + kernel_epsilon                     (no stabilizer, no r)
//   A_ij = phi_q(q_i) . phi_k(k_j);   out_i = sum_j A_ij v_j / sum_j A_ij
// over the visible keys j: non-causal every real (non-padding) key, causal the
// real keys j <= i. Non-causal, this is performer-pytorch's softmax_kernel /
// generalized_kernel + linear_attention, M = the max of a over all (real) keys
// and features. Padding keys are left out of the sums and of M; a row that
// sees no real key outputs 0.
//
// Causal key stabilizer (our rule; the reference's global M lets a future key
// change the past): row i uses M_i = the max of a over the real keys j <= i
// and all features (a running max), i.e. row i is exactly the non-causal
// formula on the prefix 0..i, eps added after the row's own stabilizer:
//   phi_k^(i)(k_j) = r (exp(a_j - diag(k_j) - M_i) + eps).
// The scan keeps each key against its own running max, g_j = r exp(a_j -
// diag(k_j) - M_j) (entries <= 1), so that
//   A_ij = exp(M_j - M_i) (phi_q(q_i) . g_j) + r eps s_i,   s_i = sum_f phi_q(q_i)_f:
// intra-chunk an elementwise factor exp(M_j - M_i) <= 1 on the masked C x C
// matrix; inter-chunk the state sum_j exp(M_j - R) g_j [v_j, 1]^T [m, d+1]
// against a reference R (the running max at the chunk's start, rescaled by
// exp(R_old - R_new) <= 1 as it grows) plus the plain sum_j [v_j, 1] for the
// eps part. No exp(.) argument is positive, so nothing overflows, and row i
// depends only on keys <= i (bit-identically: tested). The last causal row
// equals the non-causal one.
//
// The stabilizers are constants for the gradient (the reference's .detach()).
// With eps = 0 the output does not depend on them at all. RoPE (when the
// sublayer has one) is applied to q and k before the features (as
// performer-pytorch's rotary option).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/parameter.h"
#include "nn/position/rope.h"

namespace mf {

enum class PerformerKernel { Softmax, Relu };
enum class PerformerScaling { Chi, SqrtD };  // row norms of W: chi(d)-distributed, or all sqrt(d)

inline constexpr double kPerformerSoftmaxEps = 1e-4;  // performer-pytorch softmax_kernel's eps

struct PerformerOptions {
  PerformerKernel kernel = PerformerKernel::Softmax;
  double kernel_epsilon = 1e-3;  // relu kernel only
  // softmax kernel's eps (performer-pytorch: 1e-4). With eps = 0 the output no
  // longer depends on the stabilizers, so the detached-stabilizer gradient is
  // the exact derivative (the finite-difference test uses that).
  double softmax_epsilon = kPerformerSoftmaxEps;
  std::int64_t chunk_size = 64;  // causal scan: rows per chunk (any >= 1; L need not be a multiple)
};

// The recurrent generation state of one layer, per (sequence, KV head), over
// the real keys j seen so far: exp_state [B, Hkv, m, d+1] = sum_j r exp(a_j -
// diag(k_j) - ref) [v_j, 1]^T (relu: sum_j phi(k_j) [v_j, 1]^T), plain_sum
// [B, Hkv, d+1] = sum_j [v_j, 1] (the eps part), ref [B, Hkv] = the running
// max M of the last position (-1e30 before any real key; relu: 0). O(m d)
// per head, whatever the length.
struct PerformerState {
  Tensor exp_state, plain_sum, ref;
  std::int64_t past = 0;  // positions consumed
  PerformerState() = default;
  PerformerState(std::int64_t batch, std::int64_t kv_heads, std::int64_t features, std::int64_t head_dim);
  void reset();
  std::int64_t bytes() const;
};

// What the attention core keeps for its backward. N = B*L.
struct PerformerAttentionSaved {
  Tensor out;         // [N, Hq, d]
  Tensor den;         // [N, Hq]   sum_j A_ij (0: the row saw no key)
  Tensor query_stab;  // [N, Hq]   max_f b_i,f (softmax)
  Tensor key_stab;    // [N, Hkv]  M (non-causal: the sequence's M on every row; causal: the running M_i)
  Tensor chunk_exp;   // [B, Hkv, chunks, m, d+1] causal: the exp-part state before each chunk
                      //   (per-chunk states only; the backward recomputes features per chunk)
  Tensor chunk_plain; // [B, Hkv, chunks, d+1]    causal: the plain sums before each chunk
  std::vector<const Tensor*> tensors() const;
};

// The attention core on projected heads (token-major, the varlen layout):
// q [B*L, Hq, d], k, v [B*L, Hkv, d], projection [m, d]; out [B*L, Hq, d]
// written. key_padding_mask int32 [B, L] (nonzero = real) or undefined.
// With `state` (causal only) the call continues a generation: keys and values
// of earlier calls are in the state, which is updated; nothing is saved.
void performer_attention_forward(const Tensor& out, PerformerAttentionSaved* saved, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& projection, std::int64_t batch, std::int64_t seq_len,
                                 bool causal, const Tensor& key_padding_mask, const PerformerOptions& opt,
                                 PerformerState* state = nullptr);

// dq [B*L, Hq, d], dk, dv [B*L, Hkv, d] overwritten (padding keys get 0).
void performer_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                                  const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& projection,
                                  const PerformerAttentionSaved& saved, std::int64_t batch, std::int64_t seq_len,
                                  bool causal, const Tensor& key_padding_mask, const PerformerOptions& opt);

// For an approximation-error meter: the Performer output for one sequence,
// q [L, Hq, d], k, v [L, Hkv, d] (heads already projected, RoPE applied if
// any), projection [m, d] (e.g. from performer_draw_projection); returns
// [L, Hq, d]. Compare with exact softmax(q k^T / sqrt(d)) v: FAVOR+
// estimates exp(q.k / sqrt(d)) (the c = d^(-1/4) on both sides).
Tensor performer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& projection, bool causal,
                           const PerformerOptions& opt = {});

// W [m, d]: orthogonal blocks (each the Q^T of a Gaussian d x d matrix's QR,
// by modified Gram-Schmidt in double, so R has a positive diagonal; the last
// block truncated to m mod d rows), rows rescaled by the norms of the rows of
// a second Gaussian [m, d] matrix (Chi: chi(d)-distributed, mean ~ sqrt(d))
// or by sqrt(d) (SqrtD), as performer-pytorch's
// gaussian_orthogonal_random_matrix. Draw `draw` (0 = the initial draw, k =
// after the k-th redraw) of (seed, stream): Philox stream stream + draw * 2^32,
// element index = block * d * d + i (blocks), then the norm matrix after them.
void performer_draw_projection(Tensor& projection, std::uint64_t seed, std::uint64_t stream, std::uint64_t draw,
                               PerformerScaling scaling);

// A feature redraw: W is replaced by draw `draw` of a seed hashed from W's own
// bits (splitmix64 over its float32 words). So the next W depends only on the
// W in use (which the checkpoint holds) and the draw number: a run resumed
// from a checkpoint redraws exactly as the uninterrupted run did, whatever
// seed the reloaded model was built with.
void performer_redraw_projection(Tensor& projection, std::uint64_t draw, PerformerScaling scaling);

// The whole sublayer: y = Wo merge_h(performer(RoPE(x Wq^T + bq), RoPE(x Wk^T + bk), x Wv^T + bv)) + bo.
struct PerformerParams {
  std::int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  Parameter* q = nullptr;  // [Hq * d, C]
  Parameter* k = nullptr;  // [Hkv * d, C]
  Parameter* v = nullptr;  // [Hkv * d, C]
  Parameter* o = nullptr;  // [C, Hq * d]
  Parameter *q_bias = nullptr, *k_bias = nullptr, *v_bias = nullptr, *o_bias = nullptr;  // optional
  Parameter* projection = nullptr;  // [m, d] buffer (not trained)
  RopeTable* rope = nullptr;        // or null
  PerformerOptions options;
};

struct PerformerSaved {
  Tensor q, k, v;  // [N, Hq, d], [N, Hkv, d] x2, RoPE applied
  PerformerAttentionSaved attn;
  std::vector<const Tensor*> tensors() const;
};

// y [B*L, C] written. With `state`: causal generation at positions state->past ...
void performer_forward(const Tensor& y, PerformerSaved* saved, const Tensor& x, std::int64_t batch,
                       std::int64_t seq_len, bool causal, const Tensor& key_padding_mask, const PerformerParams& p,
                       PerformerState* state = nullptr);
// dx overwritten; parameter gradients accumulate (+=); the projection gets none.
void performer_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const PerformerSaved& saved,
                        std::int64_t batch, std::int64_t seq_len, bool causal, const Tensor& key_padding_mask,
                        const PerformerParams& p);

namespace reference {
// The specification in double, row by row from the definition above (causal
// row i: the non-causal formula on the real keys 0..i), O(L^2 m d). Same
// layouts and contracts as performer_attention_forward (no state).
void performer_attention_forward(const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& projection, std::int64_t batch, std::int64_t seq_len, bool causal,
                                 const Tensor& key_padding_mask, const PerformerOptions& opt);
}  // namespace reference

}  // namespace mf
