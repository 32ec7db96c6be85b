// Multi-scale retention (Sun et al. 2023, "Retentive Network"; the reference
// implementation is microsoft/torchscale's MultiScaleRetention + RetNetRelPos):
// the parallel, chunkwise and recurrent forms, forward and backward, and the
// recurrent state for generation. Per head h (H heads, key dim Dk = C / H,
// value dim Dv = value_factor * C / H), at position t (0-based):
//   gamma_h = 1 - 2^(-5-h)
//   q = x Wq^T, k = x Wk^T * Dk^-1/2, v = x Wv^T, g = x Wg^T   (biases optional)
//   q_t, k_t rotated by theta shift (torchscale's rotate_every_two: interleaved
//   pairs (2i, 2i+1) turned by the angle t * theta_i, theta_i = 10000^(-i/(Dk/2-1))
//   (torchscale's 1/10000^linspace(0, 1, Dk/2); theta_0 = 1 when Dk = 2))
//   R_t = sum_{m <= t} gamma^(t-m) (q_t . k_m) v_m          (the retention itself)
//   O_t = c_t R_t, with c_t a per-(position, head) positive normalizer that is
//         DETACHED (no gradient flows through it, as torchscale's .detach()):
//     parallel:  c_t = 1 / (r_t * clamp(sum_{m<=t} |q_t . k_m| gamma^(t-m) / r_t, 1, 5e4)),
//                r_t = sqrt(sum_{j=0}^{t} gamma^j)  (D's row normalization, then
//                the |.|-sum normalization of parallel_forward)
//     chunkwise: chunk size T, t = cT + i: c_t = 1 / (r_i * max(inner_i, cross_c)) with
//                inner_i = clamp(sum_{j<=i in the chunk} |q_t . k_m| gamma^(i-j) / r_i, 1) and
//                cross_c = clamp(max_v sum_k |S_c[k, v]| / sum_{j<T} gamma^j, 1), S_c the
//                state before chunk c (cross_0 = 1): torchscale's chunk_recurrent_forward
//                with its inner_scale / kv_scale / all_scale. torchscale needs T | L; here
//                the last chunk may be shorter (its rows use the same formulas).
//     recurrent: c_t = 1 / r_t (torchscale's recurrent_forward: the running "scale").
//   Y_t = RMSNorm(O_t) per head over Dv, without weights, eps = group_norm_eps
//   out = (swish(g) * Y) Wo^T
// Every form is R_t times a positive per-row constant, so after the group norm
// the three agree up to the eps term: exactly when eps = 0 (and equal to about
// 1e-5 relative in float32 with eps 1e-12 on unit-scale inputs), while with a
// large eps (torchscale's 1e-6 on small activations) they differ measurably.
// The kernel computes R blockwise in every form (blocks of chunk_size: one
// T x T GEMM pair per block plus the state S = sum_m gamma^(t-m) k_m v_m^T), so
// R never needs an [L, L] matrix; the parallel form's normalizer needs the
// |q . k| sums over all pairs (O(L^2) time, blockwise, no [L, L] memory).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "nn/parameter.h"

namespace mf {

enum class RetentionForm { Parallel, Chunkwise, Recurrent };

const char* retention_form_name(RetentionForm form);

struct RetentionParams {
  std::int64_t num_heads = 0;   // H
  std::int64_t key_dim = 0;     // Dk per head (even: the rotation turns pairs)
  std::int64_t value_dim = 0;   // Dv per head
  std::int64_t chunk_size = 0;  // T: the chunkwise form's chunk and every form's block size
  float eps = 1e-6f;            // group norm eps (>= 0)
  Parameter* q = nullptr;       // [H*Dk, C]
  Parameter* k = nullptr;       // [H*Dk, C]
  Parameter* v = nullptr;       // [H*Dv, C]
  Parameter* g = nullptr;       // [H*Dv, C]
  Parameter* o = nullptr;       // [C, H*Dv]  (torchscale's out_proj)
  Parameter *q_bias = nullptr, *k_bias = nullptr, *v_bias = nullptr, *g_bias = nullptr, *o_bias = nullptr;
};

// gamma_h = 1 - 2^(-5-h) (in double).
double retention_decay(std::int64_t head);

// Generation state of one layer: S [B, H, Dk, Dv] = sum_{m < past} gamma^(past-1-m)
// k_m v_m^T (unnormalized), and the number of positions seen.
struct RetentionState {
  Tensor kv;
  std::int64_t past = 0;
};
RetentionState retention_new_state(std::int64_t batch, const RetentionParams& p);

// Saved by a training forward (N = B*L).
struct RetentionSaved {
  Tensor q, k;        // [N, H*Dk] rotated (k scaled)
  Tensor v, g;        // [N, H*Dv] (g before the swish)
  Tensor retained;    // [N, H*Dv] O = c R (the group norm's input)
  Tensor rstd;        // [N*H] the group norm's 1/rms
  Tensor normalizer;  // [N*H] c
  Tensor gated;       // [N, H*Dv] swish(g) * Y (the output projection's input)
  std::vector<const Tensor*> tensors() const;
};

// y [B*L, C] (written) from x [B*L, C]. saved: filled when non-null. state:
// null, or a generation state to continue (positions state->past ..; form
// must be Recurrent; saved must be null); it is updated.
void retention_forward(const Tensor& y, RetentionSaved* saved, const Tensor& x, std::int64_t batch,
                       std::int64_t seq_len, RetentionForm form, RetentionState* state, const RetentionParams& p);

// dx overwritten; parameter gradients accumulate (+=). The normalizers c are
// constants (detached), as in the reference.
void retention_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const RetentionSaved& saved,
                        std::int64_t batch, std::int64_t seq_len, const RetentionParams& p);

// Checks every argument of a call (shapes, options): "[retention] ...".
void retention_check(const Tensor& x, std::int64_t batch, std::int64_t seq_len, const RetentionParams& p);

namespace reference {
// Plain loops in double over the formulas above: the parallel form's
// normalizer from the full decay-masked score rows, the chunkwise form's from
// explicit chunks and states, the recurrent one step by step. Same contracts
// (no saved state: the backward recomputes the forward); state as above.
void retention_forward(const Tensor& y, const Tensor& x, std::int64_t batch, std::int64_t seq_len,
                       RetentionForm form, RetentionState* state, const RetentionParams& p);
void retention_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, std::int64_t batch,
                        std::int64_t seq_len, RetentionForm form, const RetentionParams& p);
}  // namespace reference

}  // namespace mf
