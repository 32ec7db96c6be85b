// Performer sublayer (performer.h): q/k/v projections, RoPE on q and k (as
// performer-pytorch's rotary option: before the feature map), the FAVOR+
// attention core and the output projection; forward and backward.
#include <tuple>

#include "core/error.h"
#include "nn/linear.h"
#include "nn/performer/performer.h"

namespace mf {

namespace {

constexpr const char* kOp = "[performer]";



void check_params(const PerformerParams& p, const Tensor& x, std::int64_t batch, std::int64_t seq_len) {
  MF_CHECK(p.q && p.k && p.v && p.o, kOp, " the q, k, v and o projections are required");
  MF_CHECK(p.projection != nullptr, kOp, " the random-feature projection [m, d] is required");
  MF_CHECK(p.num_heads >= 1 && p.num_kv_heads >= 1 && p.num_heads % p.num_kv_heads == 0 && p.head_dim >= 1, kOp,
           " num_heads (", p.num_heads, ") must be a positive multiple of num_kv_heads (", p.num_kv_heads,
           ") and head_dim (", p.head_dim, ") >= 1");
  MF_CHECK(x.defined() && x.dim() == 2 && x.dtype() == DType::F32 && x.is_contiguous(), kOp,
           " input must be a contiguous float32 [B*L, C] tensor but has shape ",
           x.defined() ? shape_str(x.shape()) : "(undefined)");
  MF_CHECK(batch >= 1 && seq_len >= 1 && x.size(0) == batch * seq_len, kOp, " input has ", x.size(0),
           " rows but batch ", batch, " x seq_len ", seq_len, " were given");
  const std::int64_t c = x.size(1), qd = p.num_heads * p.head_dim, kd = p.num_kv_heads * p.head_dim;
  for (auto [param, shape] : {std::tuple{p.q, Shape{qd, c}}, std::tuple{p.k, Shape{kd, c}},
                              std::tuple{p.v, Shape{kd, c}}, std::tuple{p.o, Shape{c, qd}}})
    param->value.check_shape(shape, "performer", param->name.c_str());
  for (auto [param, n] : {std::tuple{p.q_bias, qd}, std::tuple{p.k_bias, kd}, std::tuple{p.v_bias, kd},
                          std::tuple{p.o_bias, c}})
    if (param) param->value.check_shape({n}, "performer", param->name.c_str());
  MF_CHECK(p.projection->value.dim() == 2 && p.projection->value.size(1) == p.head_dim, kOp, " projection '",
           p.projection->name, "' must be [m, head_dim = ", p.head_dim, "] but is ",
           shape_str(p.projection->value.shape()));
}

}  // namespace

std::vector<const Tensor*> PerformerSaved::tensors() const {
  std::vector<const Tensor*> all;
  for (const Tensor* t : {&q, &k, &v})
    if (t->defined()) all.push_back(t);
  for (const Tensor* t : attn.tensors()) all.push_back(t);
  return all;
}

void performer_forward(const Tensor& y, PerformerSaved* saved, const Tensor& x, std::int64_t batch,
                       std::int64_t seq_len, bool causal, const Tensor& mask, const PerformerParams& p,
                       PerformerState* state) {
  check_params(p, x, batch, seq_len);
  y.check_shape(x.shape(), "performer", "y");
  const std::int64_t n = batch * seq_len, d = p.head_dim, past = state ? state->past : 0;
  Tensor q = linear_forward(x, p.q->value, bias_of(p.q_bias));  // [N, Hq*d]
  Tensor k = linear_forward(x, p.k->value, bias_of(p.k_bias));  // [N, Hkv*d]
  Tensor v = linear_forward(x, p.v->value, bias_of(p.v_bias));  // [N, Hkv*d]
  if (p.rope) {
    rope_forward_inplace(q.reshape({batch, seq_len, p.num_heads * d}), *p.rope, packed_rope_args(p.num_heads, past));
    rope_forward_inplace(k.reshape({batch, seq_len, p.num_kv_heads * d}), *p.rope, packed_rope_args(p.num_kv_heads, past));
  }
  q = q.reshape({n, p.num_heads, d});
  k = k.reshape({n, p.num_kv_heads, d});
  v = v.reshape({n, p.num_kv_heads, d});
  Tensor out = Tensor::empty({n, p.num_heads, d});
  performer_attention_forward(out, saved ? &saved->attn : nullptr, q, k, v, p.projection->value, batch, seq_len,
                              causal, mask, p.options, state);
  if (saved) {
    saved->q = q;
    saved->k = k;
    saved->v = v;
  }
  linear_forward(y, out.reshape({n, p.num_heads * d}), p.o->value, bias_of(p.o_bias));
}

void performer_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const PerformerSaved& s,
                        std::int64_t batch, std::int64_t seq_len, bool causal, const Tensor& mask,
                        const PerformerParams& p) {
  check_params(p, x, batch, seq_len);
  dx.check_shape(x.shape(), "performer", "dx");
  dy.check_shape(x.shape(), "performer", "dy");
  MF_CHECK(s.q.defined() && s.q.size(0) == batch * seq_len, kOp,
           " backward called without the saved activations of a forward of this shape");
  const std::int64_t n = batch * seq_len, d = p.head_dim, hq = p.num_heads, hkv = p.num_kv_heads;
  Tensor dout = Tensor::empty({n, hq * d});
  linear_backward(dout, p.o->grad, bias_grad_of(p.o_bias), dy, s.attn.out.reshape({n, hq * d}), p.o->value);
  Tensor dq = Tensor::empty({n, hq, d}), dk = Tensor::empty({n, hkv, d}), dv = Tensor::empty({n, hkv, d});
  performer_attention_backward(dq, dk, dv, dout.reshape({n, hq, d}), s.q, s.k, s.v, p.projection->value, s.attn,
                               batch, seq_len, causal, mask, p.options);
  if (p.rope) {  // RoPE^T: rotation by the negative angles
    rope_backward_inplace(dq.reshape({batch, seq_len, hq * d}), *p.rope, packed_rope_args(hq, 0));
    rope_backward_inplace(dk.reshape({batch, seq_len, hkv * d}), *p.rope, packed_rope_args(hkv, 0));
  }
  linear_backward(dx, p.q->grad, bias_grad_of(p.q_bias), dq.reshape({n, hq * d}), x, p.q->value);
  linear_backward(dx, p.k->grad, bias_grad_of(p.k_bias), dk.reshape({n, hkv * d}), x, p.k->value, true);
  linear_backward(dx, p.v->grad, bias_grad_of(p.v_bias), dv.reshape({n, hkv * d}), x, p.v->value, true);
}

}  // namespace mf
