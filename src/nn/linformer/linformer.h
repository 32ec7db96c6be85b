// Linformer self-attention sublayer (Wang et al. 2020, "Linformer: Self-Attention
// with Linear Complexity"): keys and values are projected along the sequence
// from n to k rows per KV head (learnable E/F, strided convolution, mean or max
// pooling), then every query attends to those k rows; forward and backward.
// Bidirectional only: the projection mixes all positions, so there is no causal
// form (a causal Linformer would leak the future).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "nn/parameter.h"

namespace mf {

// How K and V are shortened along the sequence (the paper's section 4 and its
// "other projections"). s = n / k below (Conv, Mean, Max need n % k == 0).
//   Linear: K'_h = E_h K_h with E_h [k, n]; a call with L < n uses the first L
//           columns of E (as if the sequence were zero-padded to n), k rows out.
//   Conv:   K'_h[j, o] = sum_{t < s, c < D} W_h[o, c, t] K_h[j*s + t, c]: a 1-D
//           convolution over the sequence with kernel = stride = s, D input and
//           D output channels (torch.nn.Conv1d(D, D, s, stride=s) weight layout
//           [D_out, D_in, s], no bias), as linformer-pytorch's "convolution".
//   Mean:   K'_h[j] = (1/s) sum_{t < s} K_h[j*s + t].
//   Max:    K'_h[j, c] = max_{t < s} K_h[j*s + t, c] (gradient to the first max).
// For Conv, Mean and Max a call with L < n gives ceil(L / s) rows: the sequence
// is zero-padded to a multiple of s (a last partial window sees zero rows; Mean
// still divides by s, Max includes 0 among the candidates).
enum class LinformerProjection { Linear, Conv, Mean, Max };

// Which projections are shared (section 4; Linear and Conv only):
//   None:      E and F per KV head       (Linear: [Hkv, k, n]; Conv: [Hkv, D, D, s]) each
//   Headwise:  one E and one F for all heads (Linear: [k, n];  Conv: [D, D, s]) each
//   KeyValue:  one E = F for keys, values and all heads (f null or f == e)
//   Layerwise: as KeyValue inside the sublayer; the model hands the same `e`
//              Parameter to every layer (its gradient then sums over layers).
enum class LinformerSharing { None, Headwise, KeyValue, Layerwise };

struct LinformerParams {
  std::int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;  // Hq, Hkv, D (Hq % Hkv == 0)
  std::int64_t max_len = 0;   // n: the longest sequence a call may have
  std::int64_t proj_len = 0;  // k: projected length (1 <= k <= n)
  LinformerProjection projection = LinformerProjection::Linear;
  LinformerSharing sharing = LinformerSharing::Headwise;
  Parameter* q = nullptr;  // [Hq * D, C]
  Parameter* k = nullptr;  // [Hkv * D, C]
  Parameter* v = nullptr;  // [Hkv * D, C]
  Parameter* o = nullptr;  // [C, Hq * D]
  Parameter *q_bias = nullptr, *k_bias = nullptr, *v_bias = nullptr, *o_bias = nullptr;  // optional
  Parameter* e = nullptr;  // key projection (shape: linformer_projection_shapes); null for Mean/Max
  Parameter* f = nullptr;  // value projection; null (or == e) for KeyValue/Layerwise and Mean/Max
};

// The projection parameters that (projection, sharing) needs, in order, as
// (role, shape) with role "e" or "f": Linear None -> e, f [Hkv, k, n];
// Linear Headwise -> e, f [k, n]; Linear KeyValue/Layerwise -> e [k, n];
// Conv likewise with [Hkv, D, D, s] / [D, D, s]; Mean/Max -> none.
// Throws "[linformer] ..." when the options are inconsistent (see the checks).
std::vector<std::pair<std::string, Shape>> linformer_projection_shapes(const LinformerParams& p);

// Rows per sequence after the projection for a call of length seq_len
// (Linear: k; Conv/Mean/Max: ceil(seq_len / (n / k))).
std::int64_t linformer_projected_len(const LinformerParams& p, std::int64_t seq_len);

// Saved by the forward for the backward (llm.c style). N = B*L, P = B * kp
// with kp = linformer_projected_len(p, L).
struct LinformerSaved {
  Tensor q;         // [N, Hq, D]
  Tensor k, v;      // [N, Hkv*D] after the padding mask (Linear and Conv only)
  Tensor k_argmax;  // int32 [P, Hkv*D] source row of each max within its sequence, -1 = zero pad (Max only)
  Tensor v_argmax;  // int32 [P, Hkv*D] (Max only)
  Tensor kp, vp;    // [P, Hkv, D] projected keys and values
  Tensor out;       // [N, Hq, D] attention output (before Wo)
  Tensor lse;       // [Hq, N]
  // The defined tensors above, for saved-bytes accounting.
  std::vector<const Tensor*> tensors() const;
  std::size_t bytes() const;
};

// y = Wo concat_h softmax(q_h K'_h^T / sqrt(D)) V'_h (+ bo), with q = x Wq^T (+bq),
// K' = proj_E(mask * (x Wk^T (+bk))), V' = proj_F(mask * (x Wv^T (+bv))).
// key_padding_mask (int32 [B, L], nonzero = real token) zeroes the key and value
// rows of padding tokens before the projection, so the projected keys simply
// omit them (exactly for Linear and Conv, which are linear in K; Mean still
// divides by s and Max sees those zeros, as it does the zero pad past L).
// Nothing else is masked: the kp projected rows are all attended, and queries
// of padding tokens are computed as usual. D must suit the attention kernels
// (a multiple of 8 in [8, 256]; attention.h refuses others).
void linformer_forward(const Tensor& y,  // [B*L, C] (written)
                       LinformerSaved& saved,
                       const Tensor& x,  // [B*L, C]
                       std::int64_t batch, std::int64_t seq_len,
                       const Tensor& key_padding_mask,  // int32 [B, L] or undefined
                       const LinformerParams& p);

// dx overwritten; parameter gradients (including e and f) accumulate (+=).
void linformer_backward(const Tensor& dx,  // [B*L, C]
                        const Tensor& dy,  // [B*L, C]
                        const Tensor& x,   // [B*L, C]
                        const LinformerSaved& saved, std::int64_t batch, std::int64_t seq_len,
                        const Tensor& key_padding_mask,  // int32 [B, L] or undefined
                        const LinformerParams& p);

namespace reference {
// Plain loops in double, the specification (same contracts; the backward
// recomputes the forward itself).
void linformer_forward(const Tensor& y, const Tensor& x, std::int64_t batch, std::int64_t seq_len,
                       const Tensor& key_padding_mask, const LinformerParams& p);
void linformer_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, std::int64_t batch,
                        std::int64_t seq_len, const Tensor& key_padding_mask, const LinformerParams& p);
}  // namespace reference

// Checks every argument of a call (also done by the forward and backward):
// parameters and their shapes, n, k, L <= n, the mask. Shared with the reference.
void linformer_check(const Tensor& x, std::int64_t batch, std::int64_t seq_len, const Tensor& key_padding_mask,
                     const LinformerParams& p);

}  // namespace mf
