// Self-attention sublayer. Projections produce token-major [N, H*D] rows;
// RoPE rotates them in place ([B, L, H*D] layout) and the kernels read them
// as varlen [N, H, D] (equal-length sequences), so nothing is transposed.
// With a KV cache the call goes through [B, H, L, D] (the cache's layout).
#include "nn/attention/self_attention.h"

#include <omp.h>

#include <algorithm>
#include <exception>

#include "kernels/gemv.h"
#include "nn/linear.h"

namespace mf {

namespace {

constexpr const char* kOp = "[self_attention]";


// [N, H*D] token-major rows -> contiguous [B, H, L, D].
Tensor to_heads(const Tensor& rows, std::int64_t b, std::int64_t l, std::int64_t h, std::int64_t d) {
  return rows.reshape({b, l, h, d}).permute({0, 2, 1, 3}).contiguous();
}

// [B, H, L, D] -> contiguous [N, H*D].
Tensor from_heads(const Tensor& t) {
  const std::int64_t b = t.size(0), h = t.size(1), l = t.size(2), d = t.size(3);
  return t.permute({0, 2, 1, 3}).contiguous().reshape({b * l, h * d});
}

void check_params(const SelfAttentionParams& p, const Tensor& x, const AttentionCall& call) {
  MF_CHECK(p.q && p.k && p.v && p.o, kOp, " the q, k, v and o projections are required");
  MF_CHECK(x.dim() == 2 && x.dtype() == DType::F32 && x.is_contiguous(), kOp,
           " input must be a contiguous float32 [B*L, C] tensor but has shape ", shape_str(x.shape()));
  MF_CHECK(call.batch >= 1 && call.seq_len >= 1 && x.size(0) == call.batch * call.seq_len, kOp, " input has ",
           x.size(0), " rows but batch ", call.batch, " x seq_len ", call.seq_len, " were given");
  const std::int64_t c = x.size(1), qd = p.num_heads * p.head_dim, kd = p.num_kv_heads * p.head_dim;
  p.q->value.check_shape({qd, c}, "self_attention", p.q->name.c_str());
  p.k->value.check_shape({kd, c}, "self_attention", p.k->name.c_str());
  p.v->value.check_shape({kd, c}, "self_attention", p.v->name.c_str());
  p.o->value.check_shape({c, qd}, "self_attention", p.o->name.c_str());
  MF_CHECK(!(p.rope && p.alibi), kOp, " RoPE and ALiBi are exclusive");
  MF_CHECK(!call.position_ids.defined() || (!p.alibi && p.sliding_window == 0), kOp,
           " explicit position ids cannot be used with ALiBi or a sliding window (their distances count rows)");
}

// RoPE arguments of the call: explicit ids, or positions offset .. offset + L - 1.
RopeArgs call_rope_args(std::int64_t heads, std::int64_t offset, const AttentionCall& call) {
  RopeArgs a = packed_rope_args(heads, call.position_ids.defined() ? 0 : offset);
  a.positions.ids = call.position_ids;
  return a;
}

// B sequences of L rows each, packed.
VarlenSeqlens seqlens(std::int64_t b, std::int64_t l) {
  VarlenSeqlens s;
  for (std::int64_t i = 0; i <= b; ++i) s.cu_seqlens_q.push_back(i * l);
  s.cu_seqlens_k = s.cu_seqlens_q;
  return s;
}


// The q, k and v projections of x [N, C]: [N, Hq*D], [N, Hkv*D], [N, Hkv*D].
// A decode step (N <= kGemvMaxRows) is one GEMV call over the three
// matrices' rows (one pass over x, one parallel region); otherwise three GEMMs.
std::tuple<Tensor, Tensor, Tensor> qkv_projections(const Tensor& x, const SelfAttentionParams& p) {
  const std::int64_t n = x.size(0), c = x.size(1);
  if (n > gemv_max_rows()) {
    return {linear_forward(x, p.q->value, bias_of(p.q_bias)), linear_forward(x, p.k->value, bias_of(p.k_bias)),
            linear_forward(x, p.v->value, bias_of(p.v_bias))};
  }
  Tensor q = Tensor::empty({n, p.q->value.size(0)});
  Tensor k = Tensor::empty({n, p.k->value.size(0)});
  Tensor v = Tensor::empty({n, p.v->value.size(0)});
  auto target = [](const Parameter* w, const Parameter* b, const Tensor& y) {
    const Tensor bias = bias_of(b);
    return GemvTarget{w->value.data<float>(), bias.defined() ? bias.data<float>() : nullptr, y.data<float>(), y.size(1),
                      y.size(1)};
  };
  const GemvTarget targets[] = {target(p.q, p.q_bias, q), target(p.k, p.k_bias, k), target(p.v, p.v_bias, v)};
  gemv(targets, x.data<float>(), c, n, c);
  return {q, k, v};
}

}  // namespace

AttentionOptions self_attention_options(const SelfAttentionParams& p, const AttentionCall& call) {
  AttentionOptions opt;
  opt.causal = call.causal;
  opt.key_padding_mask = call.key_padding_mask;
  opt.alibi = p.alibi;
  if (p.sliding_window > 0) {
    opt.window_left = p.sliding_window - 1;
    if (!call.causal) opt.window_right = p.sliding_window - 1;  // encoders: W - 1 on each side
  }
  if (p.adjust_options) p.adjust_options(opt, call.past + call.seq_len);
  return opt;
}

void self_attention_forward(const Tensor& y, SelfAttentionSaved& s, const Tensor& x, const SelfAttentionParams& p,
                            const AttentionCall& call) {
  check_params(p, x, call);
  const std::int64_t b = call.batch, l = call.seq_len, d = p.head_dim;
  const std::int64_t past = call.past;
  MF_CHECK(past == 0 || call.cache != nullptr, kOp, " a past length of ", past, " needs a KV cache");
  auto [ql, kl, vl] = qkv_projections(x, p);  // [N, Hq*D], [N, Hkv*D], [N, Hkv*D]
  if (p.rope) {
    rope_forward_inplace(ql.reshape({b, l, p.num_heads * d}), *p.rope, call_rope_args(p.num_heads, past, call));
    rope_forward_inplace(kl.reshape({b, l, p.num_kv_heads * d}), *p.rope, call_rope_args(p.num_kv_heads, past, call));
  }
  if (call.cache) {  // generation: [B, H, L, D] through the cache; nothing kept for a backward
    const Tensor q = to_heads(ql, b, l, p.num_heads, d);
    auto [k, v] = call.cache->extend(call.layer, to_heads(kl, b, l, p.num_kv_heads, d),
                                     to_heads(vl, b, l, p.num_kv_heads, d));
    MF_CHECK(!call.key_padding_mask.defined(), kOp, " a key padding mask is not supported with a KV cache");
    const AttentionOutput a = attention_forward(q, k, v, self_attention_options(p, call), p.impl);
    s = SelfAttentionSaved{};
    linear_forward(y, from_heads(a.out), p.o->value, bias_of(p.o_bias));
    return;
  }
  if (call.key_padding_mask.defined()) {  // padding anywhere: the [B, H, L, D] kernels take the mask
    s.q = to_heads(ql, b, l, p.num_heads, d);
    s.k = to_heads(kl, b, l, p.num_kv_heads, d);
    s.v = to_heads(vl, b, l, p.num_kv_heads, d);
    AttentionOutput a = attention_forward(s.q, s.k, s.v, self_attention_options(p, call), p.impl);
    s.out = a.out;
    s.lse = a.lse;
    linear_forward(y, from_heads(s.out), p.o->value, bias_of(p.o_bias));
    return;
  }
  s.q = ql.reshape({b * l, p.num_heads, d});
  s.k = kl.reshape({b * l, p.num_kv_heads, d});
  s.v = vl.reshape({b * l, p.num_kv_heads, d});
  AttentionOutput a =
      attention_varlen_forward(s.q, s.k, s.v, seqlens(b, l), self_attention_options(p, call), p.impl);
  s.out = a.out;
  s.lse = a.lse;
  linear_forward(y, s.out.reshape({b * l, p.num_heads * d}), p.o->value, bias_of(p.o_bias));
}

void self_attention_forward_rows(const Tensor& y, const Tensor& x, const SelfAttentionParams& p,
                                 std::span<KvCacheHook* const> caches, const std::int64_t* past) {
  const std::int64_t n = x.size(0), d = p.head_dim, qd = p.num_heads * d, kd = p.num_kv_heads * d;
  AttentionCall row_call;  // one position of one sequence
  row_call.batch = row_call.seq_len = 1;
  check_params(p, x.slice(0, 0, 1), row_call);
  MF_CHECK(static_cast<std::int64_t>(caches.size()) == n && past != nullptr, kOp, " batched decode of ", n,
           " rows needs ", n, " caches and past lengths but got ", caches.size(), " caches");
  auto [ql, kl, vl] = qkv_projections(x, p);  // [n, Hq*D], [n, Hkv*D], [n, Hkv*D]
  Tensor merged = Tensor::empty({n, qd});     // attention outputs, token-major
  for (std::int64_t i = 0; i < n; ++i) {
    MF_CHECK(caches[i] != nullptr, kOp, " batched decode: row ", i, " has no KV cache");
    if (p.rope) {  // row by row on this thread: the table may grow (dynamic scaling)
      rope_forward_inplace(ql.slice(0, i, i + 1).reshape({1, 1, qd}), *p.rope, packed_rope_args(p.num_heads, past[i]));
      rope_forward_inplace(kl.slice(0, i, i + 1).reshape({1, 1, kd}), *p.rope,
                           packed_rope_args(p.num_kv_heads, past[i]));
    }
  }
  // Each row's cache and attention are its own: rows in parallel (a row's
  // kernels then run on one thread; their bits do not depend on that).
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1) if (n > 1 && !omp_in_parallel())
  for (std::int64_t i = 0; i < n; ++i) {
    try {
      // One position, so [1, 1, H*D] rows are also [1, H, 1, D] heads.
      auto [keys, values] = caches[i]->extend(0, kl.slice(0, i, i + 1).reshape({1, p.num_kv_heads, 1, d}),
                                              vl.slice(0, i, i + 1).reshape({1, p.num_kv_heads, 1, d}));
      const AttentionOutput a = attention_forward(ql.slice(0, i, i + 1).reshape({1, p.num_heads, 1, d}), keys, values,
                                                  self_attention_options(p, row_call), p.impl);
      const Tensor row_out = a.out.contiguous();
      std::copy(row_out.data<float>(), row_out.data<float>() + qd, merged.data<float>() + i * qd);
    } catch (...) {
#pragma omp critical(mf_self_attention_rows_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
  linear_forward(y, merged, p.o->value, bias_of(p.o_bias));
}

void self_attention_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const SelfAttentionSaved& s,
                             const SelfAttentionParams& p, const AttentionCall& call) {
  check_params(p, x, call);
  MF_CHECK(call.cache == nullptr, kOp, " backward through a KV cache is not supported (generation is forward only)");
  MF_CHECK(s.out.defined(), kOp, " backward called without the forward's saved activations");
  const std::int64_t b = call.batch, l = call.seq_len, d = p.head_dim, n = b * l;
  const bool heads_layout = call.key_padding_mask.defined();  // the forward's [B, H, L, D] path
  MF_CHECK(heads_layout == (s.out.dim() == 4), kOp,
           " backward called with a different key padding mask setting than the forward");
  // Output projection: dmerged = dy Wo, dWo += dy^T merged.
  const Tensor merged = heads_layout ? from_heads(s.out) : s.out.reshape({n, p.num_heads * d});
  Tensor dmerged = Tensor::empty({n, p.num_heads * d});
  linear_backward(dmerged, p.o->grad, bias_grad_of(p.o_bias), dy, merged, p.o->value);
  Tensor dq, dk, dv;
  if (heads_layout) {
    const AttentionGrads g = attention_backward(s.q, s.k, s.v, s.out, s.lse, to_heads(dmerged, b, l, p.num_heads, d),
                                                self_attention_options(p, call), p.impl);
    dq = from_heads(g.dq);
    dk = from_heads(g.dk);
    dv = from_heads(g.dv);
  } else {
    const AttentionGrads g =
        attention_varlen_backward(s.q, s.k, s.v, s.out, s.lse, dmerged.reshape({n, p.num_heads, d}), seqlens(b, l),
                                  self_attention_options(p, call), p.impl);
    dq = g.dq.reshape({n, p.num_heads * d});
    dk = g.dk.reshape({n, p.num_kv_heads * d});
    dv = g.dv.reshape({n, p.num_kv_heads * d});
  }
  if (p.rope) {  // RoPE^T: rotation by the negative angles
    rope_backward_inplace(dq.reshape({b, l, p.num_heads * d}), *p.rope, call_rope_args(p.num_heads, 0, call));
    rope_backward_inplace(dk.reshape({b, l, p.num_kv_heads * d}), *p.rope, call_rope_args(p.num_kv_heads, 0, call));
  }
  linear_backward(dx, p.q->grad, bias_grad_of(p.q_bias), dq, x, p.q->value);
  linear_backward(dx, p.k->grad, bias_grad_of(p.k_bias), dk, x, p.k->value, /*accumulate_din=*/true);
  linear_backward(dx, p.v->grad, bias_grad_of(p.v_bias), dv, x, p.v->value, /*accumulate_din=*/true);
}

}  // namespace mf
