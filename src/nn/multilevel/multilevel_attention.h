// Multi-level attention (the survey's "Multi-Level Attention", issue 11; not
// DeepSeek's Multi-head Latent Attention, which is "mla"): each query sees a
// local window at full resolution plus mean-pooled summaries of coarser and
// coarser blocks of the farther context, all scored in ONE softmax. The
// survey's snippet is not a usable definition (per-level projections of
// reduced width, a non-causal window mask, pooled keys without positions);
// this is the definition implemented here, forward and backward.
//
// Levels. Level 0 is the positions themselves (unit u_0 = 1); level l = 1..n
// has blocks of u_l = p_l positions, aligned to position 0 (block b of level l
// holds positions [b p_l, (b + 1) p_l)). p_1 >= 2 and each p_{l+1} is a
// multiple of p_l (r_{l+1} = p_{l+1} / p_l >= 2), so the blocks nest.
// Pooled keys and values: K~_l[b] = (1/c) sum_{j in block, j < L} K[j] (the
// plain mean; c = the block's positions inside the sequence: p_l except a
// bidirectional call's last, partial block), likewise V~. K is the key AFTER
// RoPE (when the model has RoPE): a pooled key is the mean of its positions'
// rotated keys, so q_i . K~ = mean_j q^T R(j - i) k_j depends only on relative
// positions, and the averaging fades the high frequencies of far blocks.
//
// Which keys query i sees (one rule, multilevel_ranges, shared by the fast
// kernel, the reference twin and generation), a partition of the covered
// positions into pieces of the finest level that fits, with no holes and no
// overlaps. Left side (the past; all a causal query sees), in level-l units:
//   level 0:  [lo_0, i]          lo_0 = floor(max(0, i - w_0 + 1) / p_1) p_1
//             (the window w_0 reaches back to the start of its p_1-block, so
//             it holds between w_0 and w_0 + p_1 - 1 positions, fewer at the
//             sequence start)
//   level l:  [lo_l, hi_l)       hi_l = lo_{l-1} / r_l (r_1 = p_1),
//             lo_l = max(0, hi_l - w_l), then (l < n) rounded down to a
//             multiple of r_{l+1}; w_n = 0: lo_n = 0 (unbounded coarsest level)
// Every visible block is complete (it ends before lo_0 <= i) and none of its
// positions is covered by a finer level; positions before lo_n * p_n are not
// seen. Bidirectional (encoders): the same on the right, mirrored:
//   level 0:  [i + 1, e_0)       e_0 = ceil((i + w_0) / p_1) p_1: the w_0 - 1
//             positions after i, extended to the end of their p_1-block
//   level l:  [e_{l-1} / r_l, e_l) with e_l = e_{l-1} / r_l + w_l, then (l < n)
//             rounded up to a multiple of r_{l+1}; w_n = 0: to the end
// each clipped to the sequence afterwards (the recursion runs on the
// unclipped ends; the last block of a level may be partial).
//
// Scores and the shared softmax: s = q_i . k / sqrt(D) for a position key and
// s = q_i . K~_l[b] / sqrt(D) + log(c) for a pooled key (option count_bias,
// default on): a block then weighs as its c tokens would if they had the same
// key, so coarsening a level does not change how much attention far context
// gets; without it, a block of 64 tokens counts as one. One softmax over the
// union of every level's keys; out_i = sum_k P_ik value_k. GQA: the pooled
// keys and values are per KV head; query head h reads KV head h / (Hq/Hkv).
// Key padding mask (int32 [B, L], 0 = padding; not with generation): a
// padding position is no key; a block's mean and count c run over its real
// tokens only, and a block with none is not seen. A row that sees no key
// (a padding query amid padding) outputs 0, as exact attention's does.
// Cost per query head O(L (w_0 + p_1 + sum_l (w_l + r_{l+1})) D) (all bounded
// when w_n > 0), plus O(n L D) for the pooling.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/parameter.h"
#include "nn/position/rope.h"

namespace mf {

struct MultilevelGeometry {
  std::int64_t window = 0;                   // w_0 >= 1: full-resolution positions (before the p_1 rounding)
  std::vector<std::int64_t> pool_sizes;      // p_1 .. p_n (n >= 1): p_1 >= 2, each a multiple of the previous
  std::vector<std::int64_t> level_windows;   // w_1 .. w_n blocks (>= 1; the last may be 0 = unbounded)
  bool count_bias = true;                    // + log(count) on pooled scores
  std::int64_t levels() const { return static_cast<std::int64_t>(pool_sizes.size()); }
  std::int64_t unit(std::int64_t level) const { return level == 0 ? 1 : pool_sizes[level - 1]; }
};

// Throws "[multilevel_attention] ..." naming the option that is wrong.
void multilevel_check_geometry(const MultilevelGeometry& g);

// The blocks (positions at level 0) that query i sees at each level, as
// half-open ranges in that level's units: left[l] = [lo, hi) and (bidirectional
// only) right[l]; empty ranges have lo == hi. seq_len is used only when
// !causal (the right side is clipped to it).
struct MultilevelRange {
  std::int64_t lo = 0, hi = 0;
  bool empty() const { return hi <= lo; }
};
struct MultilevelRanges {
  std::vector<MultilevelRange> left, right;  // levels 0..n each
};
void multilevel_ranges(MultilevelRanges& r, const MultilevelGeometry& g, std::int64_t i, std::int64_t seq_len,
                       bool causal);

// Blocks of level l (>= 1) in a sequence of L positions (the last may be partial).
inline std::int64_t multilevel_blocks(const MultilevelGeometry& g, std::int64_t level, std::int64_t seq_len) {
  return (seq_len + g.unit(level) - 1) / g.unit(level);
}

// ---- The attention core: projected (and rotated) q, k, v in, out and lse out.
// q [N, Hq, D], k and v [N, Hkv, D], token-major (N = B*L, sequences of L).
struct MultilevelProblem {
  std::int64_t batch = 0, seq_len = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  bool causal = true;
  Tensor key_padding_mask;  // int32 [B, L], nonzero = token; undefined: none
};

void multilevel_core_forward(const Tensor& out,  // [N, Hq, D] (written)
                             const Tensor& lse,  // [N, Hq] (written): log-sum-exp of each row's scores
                             const Tensor& q, const Tensor& k, const Tensor& v, const MultilevelGeometry& g,
                             const MultilevelProblem& pr);
// dq, dk, dv overwritten.
void multilevel_core_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv,  // shapes of q, k, v
                              const Tensor& dout,                                     // [N, Hq, D]
                              const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                              const Tensor& lse, const MultilevelGeometry& g, const MultilevelProblem& pr);

// ---- The sublayer: y = Wo concat_h core(RoPE(x Wq^T + bq), RoPE(x Wk^T + bk), x Wv^T + bv) (+ bo).
struct MultilevelParams {
  std::int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;  // Hq, Hkv, D (Hq % Hkv == 0)
  MultilevelGeometry geometry;
  Parameter* q = nullptr;  // [Hq * D, C]
  Parameter* k = nullptr;  // [Hkv * D, C]
  Parameter* v = nullptr;  // [Hkv * D, C]
  Parameter* o = nullptr;  // [C, Hq * D]
  Parameter *q_bias = nullptr, *k_bias = nullptr, *v_bias = nullptr, *o_bias = nullptr;  // optional
  RopeTable* rope = nullptr;  // RoPE on q and k (before pooling), or null
};

struct MultilevelSaved {
  Tensor q;    // [N, Hq, D]  RoPE applied
  Tensor k;    // [N, Hkv, D] RoPE applied
  Tensor v;    // [N, Hkv, D]
  Tensor out;  // [N, Hq, D]  core output (before Wo)
  Tensor lse;  // [N, Hq]
  std::vector<const Tensor*> tensors() const { return {&q, &k, &v, &out, &lse}; }
};

// Generation state (causal): per sequence and KV head, the last positions at
// full resolution, each level's running partial block sums and its last
// completed pooled blocks (ring buffers; the coarsest level holds every block
// up to the capacity when w_n = 0, else a bounded number).
struct MultilevelState {
  std::int64_t batch = 0, num_kv_heads = 0, head_dim = 0, capacity = 0;
  std::int64_t past = 0;                  // positions already appended
  std::vector<std::int64_t> ring_slots;   // levels 0..n: slots of each ring
  std::vector<Tensor> ring_k, ring_v;     // level l: [B, Hkv, slots_l, D]
  Tensor partial_k, partial_v;            // [B, Hkv, n, D] running sums of the incomplete block of each level
  std::int64_t bytes() const;
  void reset();
};
MultilevelState multilevel_new_state(const MultilevelGeometry& g, std::int64_t batch, std::int64_t num_kv_heads,
                                     std::int64_t head_dim, std::int64_t capacity);

// y [B*L, C] written. With state: continues a causal generation (positions
// state.past .. + L - 1; the state advances; saved may be null and nothing is
// kept). Without: a training/evaluation forward; saved (when non-null) is filled.
void multilevel_forward(const Tensor& y, MultilevelSaved* saved, const Tensor& x, std::int64_t batch,
                        std::int64_t seq_len, bool causal, MultilevelState* state, const MultilevelParams& p,
                        const Tensor& key_padding_mask = Tensor());
// dx overwritten; parameter gradients accumulate (+=).
void multilevel_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MultilevelSaved& saved,
                         std::int64_t batch, std::int64_t seq_len, bool causal, const MultilevelParams& p,
                         const Tensor& key_padding_mask = Tensor());

namespace reference {
// Plain loops in double over each query's key list (the specification of the
// core; the backward recomputes the forward itself). Same contracts.
void multilevel_core_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                             const MultilevelGeometry& g, const MultilevelProblem& pr);
void multilevel_core_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                              const Tensor& q, const Tensor& k, const Tensor& v, const MultilevelGeometry& g,
                              const MultilevelProblem& pr);
}  // namespace reference

// Checks the core's tensors against the problem (also done by the forward and backward).
void multilevel_core_check(const Tensor& q, const Tensor& k, const Tensor& v, const MultilevelGeometry& g,
                           const MultilevelProblem& pr);

}  // namespace mf
