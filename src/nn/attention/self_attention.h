// Self-attention sublayer of a block (causal in decoders, bidirectional in
// encoders, with an optional key padding mask): q/k/v projections
// (optional bias), RoPE on q and k (either convention) or ALiBi inside the
// kernel, MHA/GQA/MQA, optional sliding window, the attention front door
// (flash or dense), and the output projection; forward and backward.
// A KvCacheHook, when given, supplies the keys/values of earlier positions
// (generation); the backward is then refused.
#pragma once
#include <cstdint>
#include <span>
#include <functional>
#include <tuple>
#include <utility>

#include "core/tensor.h"
#include "nn/attention/attention.h"
#include "nn/parameter.h"
#include "nn/position/rope.h"

namespace mf {

// Generation hook (KV cache): the layer's keys/values of this call,
// [B, Hkv, L, D] with RoPE applied at positions past .. past + L - 1, go in;
// the keys/values that the L queries attend to come out, [B, Hkv, Lk, D],
// ending with this call's L positions (positions [0, past + L), or the last
// sliding-window slots of them). Queries sit bottom-right aligned
// (attention.h), so causal masks, windows and ALiBi distances stay right.
class KvCacheHook {
 public:
  virtual ~KvCacheHook() = default;
  // Number of positions already cached before this call; the model reads it
  // once per call (before any layer's extend), so an implementation may
  // advance it only after the call (or per layer-0 extend, counting once).
  virtual std::int64_t past_length() const = 0;
  virtual std::pair<Tensor, Tensor> extend(std::int64_t layer, const Tensor& k, const Tensor& v) = 0;
};

struct SelfAttentionParams {
  std::int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  Parameter* q = nullptr;  // [Hq * D, C]
  Parameter* k = nullptr;  // [Hkv * D, C]
  Parameter* v = nullptr;  // [Hkv * D, C]
  Parameter* o = nullptr;  // [C, Hq * D]
  Parameter *q_bias = nullptr, *k_bias = nullptr, *v_bias = nullptr, *o_bias = nullptr;
  RopeTable* rope = nullptr;        // RoPE on q and k, or null
  bool alibi = false;               // ALiBi slopes inside the kernel
  std::int64_t sliding_window = 0;  // W > 0: a token sees itself and the W - 1 before it
  AttentionImpl impl = AttentionImpl::Flash;
  // Extra options of each call, given its key length (past + L): the
  // block-sparse mixer (src/nn/sparse/) sets its layout here. Empty: none.
  std::function<void(AttentionOptions&, std::int64_t key_len)> adjust_options;
};

// Where the call sits: batch shape, layer index (for the cache), the cache,
// the absolute position of the first row (the cache's past length), causal
// or not, and an optional key padding mask.
struct AttentionCall {
  std::int64_t batch = 0, seq_len = 0;
  std::int64_t layer = 0;
  KvCacheHook* cache = nullptr;
  std::int64_t past = 0;
  bool causal = true;
  Tensor key_padding_mask;  // int32 [B, L], nonzero = token; undefined: none
  // int32 [B, L] absolute positions for RoPE (rows of a Mixture-of-Depths
  // routed block); undefined: past + l. Not with ALiBi or a sliding window,
  // whose distances count rows.
  Tensor position_ids;
};

// Saved by the forward for the backward. Without a cache or a padding mask
// the kernels run on the varlen layout, which is exactly the projections'
// token-major rows, so no transposes are needed (cu_seqlens = 0, L, 2L, ...).
// With a padding mask they run on [B, H, L, D] (the shapes in brackets).
struct SelfAttentionSaved {
  Tensor q;    // [N, Hq, D]   RoPE applied   ([B, Hq, L, D])
  Tensor k;    // [N, Hkv, D]  RoPE applied   ([B, Hkv, L, D])
  Tensor v;    // [N, Hkv, D]                 ([B, Hkv, L, D])
  Tensor out;  // [N, Hq, D]   attention output ([B, Hq, L, D])
  Tensor lse;  // [Hq, N]                     ([B, Hq, L])
};

AttentionOptions self_attention_options(const SelfAttentionParams& p, const AttentionCall& call);

void self_attention_forward(const Tensor& y,  // [B*L, C] (written)
                            SelfAttentionSaved& saved,
                            const Tensor& x,  // [B*L, C]
                            const SelfAttentionParams& p, const AttentionCall& call);

// Batched decode: row i of x is the next position past[i] of a sequence whose
// keys and values are caches[i] (a one-layer cache each, extended here);
// each row gets the bits self_attention_forward gives it alone with its cache.
void self_attention_forward_rows(const Tensor& y,  // [n, C] (written)
                                 const Tensor& x,  // [n, C]
                                 const SelfAttentionParams& p, std::span<KvCacheHook* const> caches,
                                 const std::int64_t* past);  // [n]

// dx overwritten; parameter gradients accumulate (+=).
void self_attention_backward(const Tensor& dx,  // [B*L, C]
                             const Tensor& dy,  // [B*L, C]
                             const Tensor& x,   // [B*L, C]
                             const SelfAttentionSaved& saved, const SelfAttentionParams& p,
                             const AttentionCall& call);

}  // namespace mf
