// Multi-head Latent Attention: projections, RoPE on the rope parts, the flash
// kernels with query/key head dim dq and value head dim dv (training), and the
// latent cache with the absorbed (steps) and naive (prefill) forms. See mla.h
// for the math.
#include "nn/mla/mla.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "kernels/gemm.h"
#include "nn/linear.h"

namespace mf {

namespace {

constexpr const char* kOp = "[mla]";

void check_weight(const Parameter* w, const Shape& shape, const char* role) {
  MF_CHECK(w != nullptr, kOp, " parameter ", role, " is missing");
  w->value.check_shape(shape, "mla", w->name.c_str());
}

void check_inputs(const MlaParams& p, const Tensor& x, std::int64_t batch, std::int64_t seq_len) {
  MF_CHECK(x.dim() == 2 && x.dtype() == DType::F32 && x.is_contiguous(), kOp,
           " input must be a contiguous float32 [B*L, C] tensor but has shape ", shape_str(x.shape()));
  MF_CHECK(batch >= 1 && seq_len >= 1 && x.size(0) == batch * seq_len, kOp, " input has ", x.size(0),
           " rows but batch ", batch, " x seq_len ", seq_len, " were given");
  MF_CHECK(p.rope != nullptr && p.rope->config().rotary_dim == p.qk_rope_head_dim, kOp,
           " needs a RoPE table of rotary_dim qk_rope_head_dim = ", p.qk_rope_head_dim);
  const std::int64_t c = x.size(1), h = p.num_heads, dq = p.q_head_dim(), r = p.kv_lora_rank;
  if (p.q_lora_rank > 0) {
    check_weight(p.q_a_proj, {p.q_lora_rank, c}, "q_a_proj");
    check_weight(p.q_a_layernorm, {p.q_lora_rank}, "q_a_layernorm");
    check_weight(p.q_b_proj, {h * dq, p.q_lora_rank}, "q_b_proj");
  } else {
    check_weight(p.q_proj, {h * dq, c}, "q_proj");
  }
  check_weight(p.kv_a_proj_with_mqa, {p.latent_dim(), c}, "kv_a_proj_with_mqa");
  check_weight(p.kv_a_layernorm, {r}, "kv_a_layernorm");
  check_weight(p.kv_b_proj, {h * (p.qk_nope_head_dim + p.v_head_dim), r}, "kv_b_proj");
  check_weight(p.o_proj, {c, h * p.v_head_dim}, "o_proj");
}

NormParams rms_params(Parameter* weight, float eps) {
  NormParams n;
  n.kind = NormKind::RMSNorm;
  n.eps = eps;
  n.weight = weight;
  return n;
}

Tensor rms_forward(const Tensor& in, NormSaved& stats, Parameter* weight, float eps) {
  Tensor out = Tensor::empty(in.shape());
  norm_forward(out, stats, in, rms_params(weight, eps));
  return out;
}

RopeArgs rope_args(std::int64_t offset) {
  RopeArgs a;
  a.layout = RopeLayout::BLHD;
  a.positions.offset = offset;
  return a;
}

// The rope parts q_pe of every head: a [B, L, H, dr] view of q [N, H dq].
Tensor q_rope_view(const Tensor& q, std::int64_t b, std::int64_t l, const MlaParams& p) {
  return q.reshape({b, l, p.num_heads, p.q_head_dim()}).slice(3, p.qk_nope_head_dim, p.q_head_dim());
}

// Everything that depends on the call's tokens only: q (RoPE applied), c, c_n and
// the rotated k_pe, at positions past .. past + L - 1.
struct Projected {
  Tensor cq, cq_n, q;  // [N, rq], [N, rq], [N, H dq]
  NormSaved cq_stats;
  Tensor c, c_n, k_pe;  // [N, r], [N, r], [N, dr]
  NormSaved c_stats;
};

Projected project(const Tensor& x, std::int64_t b, std::int64_t l, std::int64_t past, const MlaParams& p) {
  Projected pr;
  if (p.q_lora_rank > 0) {
    pr.cq = linear_forward(x, p.q_a_proj->value, bias_of(p.q_a_bias));
    pr.cq_n = rms_forward(pr.cq, pr.cq_stats, p.q_a_layernorm, p.rms_norm_eps);
    pr.q = linear_forward(pr.cq_n, p.q_b_proj->value, Tensor());
  } else {
    pr.q = linear_forward(x, p.q_proj->value, Tensor());
  }
  const std::int64_t r = p.kv_lora_rank;
  const Tensor ckv = linear_forward(x, p.kv_a_proj_with_mqa->value, bias_of(p.kv_a_bias));  // [N, r + dr]
  pr.c = ckv.slice(1, 0, r).contiguous();
  pr.k_pe = ckv.slice(1, r, p.latent_dim()).contiguous();
  pr.c_n = rms_forward(pr.c, pr.c_stats, p.kv_a_layernorm, p.rms_norm_eps);
  rope_forward_inplace(q_rope_view(pr.q, b, l, p), *p.rope, rope_args(past));
  rope_forward_inplace(pr.k_pe.reshape({b, l, 1, p.qk_rope_head_dim}), *p.rope, rope_args(past));
  return pr;
}

// K [M, H, dq] = per head [k_nope_h | k_pe] from kv [M, H (dn + dv)] and k_pe [M, dr];
// V [M, H, dv].
void split_keys_values(const Tensor& kv, const Tensor& k_pe, const MlaParams& p, Tensor& k, Tensor& v) {
  const std::int64_t m = kv.size(0), h = p.num_heads, dn = p.qk_nope_head_dim, dr = p.qk_rope_head_dim;
  const std::int64_t dv = p.v_head_dim, dq = p.q_head_dim(), w = dn + dv;
  k = Tensor::empty({m, h, dq});
  v = Tensor::empty({m, h, dv});
  const float* kvp = kv.data<float>();
  const float* pe = k_pe.data<float>();
  float* kp = k.data<float>();
  float* vp = v.data<float>();
#pragma omp parallel for schedule(static) if (m * h * (dq + dv) >= (1 << 16))
  for (std::int64_t t = 0; t < m; ++t)
    for (std::int64_t hh = 0; hh < h; ++hh) {
      const float* src = kvp + (t * h + hh) * w;
      float* kd = kp + (t * h + hh) * dq;
      std::memcpy(kd, src, static_cast<std::size_t>(dn) * sizeof(float));
      std::memcpy(kd + dn, pe + t * dr, static_cast<std::size_t>(dr) * sizeof(float));
      std::memcpy(vp + (t * h + hh) * dv, src + dn, static_cast<std::size_t>(dv) * sizeof(float));
    }
}

// [N, H*D] token-major rows <-> contiguous [B, H, L, D].
Tensor to_heads(const Tensor& rows, std::int64_t b, std::int64_t l, std::int64_t h, std::int64_t d) {
  return rows.reshape({b, l, h, d}).permute({0, 2, 1, 3}).contiguous();
}
Tensor from_heads(const Tensor& t) {
  const std::int64_t b = t.size(0), h = t.size(1), l = t.size(2), d = t.size(3);
  return t.permute({0, 2, 1, 3}).contiguous().reshape({b * l, h * d});
}

VarlenSeqlens equal_seqlens(std::int64_t b, std::int64_t l) {
  VarlenSeqlens s;
  for (std::int64_t i = 0; i <= b; ++i) s.cu_seqlens_q.push_back(i * l);
  s.cu_seqlens_k = s.cu_seqlens_q;
  return s;
}

AttentionOptions attention_options(const MlaParams& p, bool causal, const Tensor& key_padding_mask) {
  AttentionOptions opt;
  opt.causal = causal;
  opt.scale = p.softmax_scale;
  opt.key_padding_mask = key_padding_mask;
  return opt;
}

// The absorbed form over the latent cache for batch entry rows: q_lat [N, H, r + dr]
// rows (token, head) = [W_UK_h^T q_nope_h | q_pe_h]; o_lat [N, H, r] = softmax(scale
// q_lat K^T) C with K = cache rows [c_n | k_pe] and C = their c_n; causal with the
// call's tokens at positions past ...
void absorbed_attention(const Tensor& q, const MlaCache& cache, std::int64_t b, std::int64_t l, const MlaParams& p,
                        Tensor& o_lat) {
  const std::int64_t h = p.num_heads, dn = p.qk_nope_head_dim, dr = p.qk_rope_head_dim, dq = p.q_head_dim();
  const std::int64_t r = p.kv_lora_rank, lat = p.latent_dim(), w = dn + p.v_head_dim, n = b * l;
  const std::int64_t past = cache.past, lk = past + l, cap = cache.rows.size(1);
  Tensor q_lat = Tensor::empty({n, h, lat});
  const float* qp = q.data<float>();
  const float* wkv = p.kv_b_proj->value.data<float>();
  float* ql = q_lat.data<float>();
  for (std::int64_t hh = 0; hh < h; ++hh)  // q_lat_h = q_nope_h W_UK_h  ([N, dn] x [dn, r])
    gemm(Trans::N, Trans::N, n, r, dn, 1.0f, qp + hh * dq, h * dq, wkv + hh * w * r, r, 0.0f, ql + hh * lat, h * lat);
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t hh = 0; hh < h; ++hh)
      std::memcpy(ql + (t * h + hh) * lat + r, qp + (t * h + hh) * dq + dn, static_cast<std::size_t>(dr) * sizeof(float));
  o_lat = Tensor::empty({n, h, r});
  Tensor scores = Tensor::empty({l * h, lk});
  float* s = scores.data<float>();
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (std::int64_t bb = 0; bb < b; ++bb) {
    const float* keys = cache.rows.data<float>() + bb * cap * lat;
    // S [(i, h), j] = scale q_lat . [c_n | k_pe]_j
    gemm(Trans::N, Trans::T, l * h, lk, lat, p.softmax_scale, ql + bb * l * h * lat, lat, keys, lat, 0.0f, s, lk);
#pragma omp parallel for schedule(static) if (l * h * lk >= (1 << 15))
    for (std::int64_t row = 0; row < l * h; ++row) {
      float* sr = s + row * lk;
      const std::int64_t visible = past + row / h + 1;  // causal: keys j <= past + i
      float mx = neg_inf;
      for (std::int64_t j = 0; j < visible; ++j) mx = std::max(mx, sr[j]);
      double sum = 0;
      for (std::int64_t j = 0; j < visible; ++j) {
        sr[j] = std::exp(sr[j] - mx);
        sum += sr[j];
      }
      const auto inv = static_cast<float>(1.0 / sum);
      for (std::int64_t j = 0; j < visible; ++j) sr[j] *= inv;
      std::fill(sr + visible, sr + lk, 0.0f);
    }
    // o_lat [(i, h), :] = P C   (C = the c_n columns of the cache rows)
    gemm(Trans::N, Trans::N, l * h, r, lk, 1.0f, s, lk, keys, lat, 0.0f, o_lat.data<float>() + bb * l * h * r, r);
  }
}

}  // namespace

float mla_softmax_scale(std::int64_t q_head_dim, const RopeConfig* rope) {
  double scale = 1.0 / std::sqrt(static_cast<double>(q_head_dim));
  if (rope != nullptr && rope->scaling != RopeScaling::None && rope->mscale_all_dim.value_or(0.0) != 0.0 &&
      rope->factor > 1.0) {
    const double m = 0.1 * *rope->mscale_all_dim * std::log(rope->factor) + 1.0;
    scale *= m * m;
  }
  return static_cast<float>(scale);
}

void mla_forward(const Tensor& y, MlaSaved& s, const Tensor& x, std::int64_t b, std::int64_t l, bool causal,
                 const Tensor& key_padding_mask, const MlaParams& p) {
  check_inputs(p, x, b, l);
  const std::int64_t n = b * l, h = p.num_heads, dq = p.q_head_dim(), dv = p.v_head_dim;
  Projected pr = project(x, b, l, 0, p);
  const Tensor kv = linear_forward(pr.c_n, p.kv_b_proj->value, Tensor());  // [N, H (dn + dv)]
  Tensor k, v;
  split_keys_values(kv, pr.k_pe, p, k, v);
  s.cq = pr.cq, s.cq_n = pr.cq_n, s.cq_stats = pr.cq_stats;
  s.c = pr.c, s.c_n = pr.c_n, s.c_stats = pr.c_stats;
  const AttentionOptions opt = attention_options(p, causal, key_padding_mask);
  Tensor merged;
  if (key_padding_mask.defined()) {  // the [B, H, L, D] kernels take the mask
    s.q = to_heads(pr.q, b, l, h, dq);
    s.k = to_heads(k.reshape({n, h * dq}), b, l, h, dq);
    s.v = to_heads(v.reshape({n, h * dv}), b, l, h, dv);
    AttentionOutput a = attention_forward(s.q, s.k, s.v, opt, p.impl);
    s.out = a.out, s.lse = a.lse;
    merged = from_heads(s.out);
  } else {
    s.q = pr.q.reshape({n, h, dq});
    s.k = k;
    s.v = v;
    AttentionOutput a = attention_varlen_forward(s.q, s.k, s.v, equal_seqlens(b, l), opt, p.impl);
    s.out = a.out, s.lse = a.lse;
    merged = s.out.reshape({n, h * dv});
  }
  linear_forward(y, merged, p.o_proj->value, bias_of(p.o_bias));
}

void mla_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MlaSaved& s, std::int64_t b,
                  std::int64_t l, bool causal, const Tensor& key_padding_mask, const MlaParams& p) {
  check_inputs(p, x, b, l);
  MF_CHECK(s.out.defined(), kOp, " backward called without the forward's saved activations");
  const bool heads_layout = key_padding_mask.defined();
  MF_CHECK(heads_layout == (s.out.dim() == 4), kOp,
           " backward called with a different key padding mask setting than the forward");
  const std::int64_t n = b * l, h = p.num_heads, dn = p.qk_nope_head_dim, dr = p.qk_rope_head_dim;
  const std::int64_t dq = p.q_head_dim(), dv = p.v_head_dim, r = p.kv_lora_rank, w = dn + dv;
  // o_proj: dmerged = dy Wo; dWo += dy^T merged.
  const Tensor merged = heads_layout ? from_heads(s.out) : s.out.reshape({n, h * dv});
  Tensor dmerged = Tensor::empty({n, h * dv});
  linear_backward(dmerged, p.o_proj->grad, bias_grad_of(p.o_bias), dy, merged, p.o_proj->value);
  const AttentionOptions opt = attention_options(p, causal, key_padding_mask);
  Tensor dq_rows, dk_rows, dv_rows;  // [N, H dq], [N, H dq], [N, H dv]
  if (heads_layout) {
    const AttentionGrads g =
        attention_backward(s.q, s.k, s.v, s.out, s.lse, to_heads(dmerged, b, l, h, dv), opt, p.impl);
    dq_rows = from_heads(g.dq), dk_rows = from_heads(g.dk), dv_rows = from_heads(g.dv);
  } else {
    const AttentionGrads g = attention_varlen_backward(s.q, s.k, s.v, s.out, s.lse, dmerged.reshape({n, h, dv}),
                                                       equal_seqlens(b, l), opt, p.impl);
    dq_rows = g.dq.reshape({n, h * dq}), dk_rows = g.dk.reshape({n, h * dq}), dv_rows = g.dv.reshape({n, h * dv});
  }
  // RoPE^T on the rope parts; k_pe is shared by the heads: its gradient is the sum over heads.
  rope_backward_inplace(q_rope_view(dq_rows, b, l, p), *p.rope, rope_args(0));
  Tensor dk_pe = Tensor::zeros({n, dr});
  Tensor dkv = Tensor::empty({n, h * w});  // per head [dk_nope | dv]
  {
    const float* dkp = dk_rows.data<float>();
    const float* dvp = dv_rows.data<float>();
    float* pe = dk_pe.data<float>();
    float* out = dkv.data<float>();
#pragma omp parallel for schedule(static) if (n * h * (dq + dv) >= (1 << 16))
    for (std::int64_t t = 0; t < n; ++t)
      for (std::int64_t hh = 0; hh < h; ++hh) {
        const float* src = dkp + (t * h + hh) * dq;
        std::memcpy(out + (t * h + hh) * w, src, static_cast<std::size_t>(dn) * sizeof(float));
        std::memcpy(out + (t * h + hh) * w + dn, dvp + (t * h + hh) * dv, static_cast<std::size_t>(dv) * sizeof(float));
        for (std::int64_t d = 0; d < dr; ++d) pe[t * dr + d] += src[dn + d];
      }
  }
  rope_backward_inplace(dk_pe.reshape({b, l, 1, dr}), *p.rope, rope_args(0));
  // kv_b_proj and kv_a_layernorm.
  Tensor dc_n = Tensor::empty({n, r});
  linear_backward(dc_n, p.kv_b_proj->grad, Tensor(), dkv, s.c_n, p.kv_b_proj->value);
  Tensor dckv = Tensor::empty({n, p.latent_dim()});  // [dc | dk_pe]
  Tensor dc = Tensor::empty({n, r});
  norm_backward(dc, dc_n, s.c, s.c_stats, rms_params(p.kv_a_layernorm, p.rms_norm_eps));
  dckv.slice(1, 0, r).copy_from(dc);
  dckv.slice(1, r, p.latent_dim()).copy_from(dk_pe);
  linear_backward(dx, p.kv_a_proj_with_mqa->grad, bias_grad_of(p.kv_a_bias), dckv, x, p.kv_a_proj_with_mqa->value);
  // The query path.
  if (p.q_lora_rank > 0) {
    Tensor dcq_n = Tensor::empty({n, p.q_lora_rank}), dcq = Tensor::empty({n, p.q_lora_rank});
    linear_backward(dcq_n, p.q_b_proj->grad, Tensor(), dq_rows, s.cq_n, p.q_b_proj->value);
    norm_backward(dcq, dcq_n, s.cq, s.cq_stats, rms_params(p.q_a_layernorm, p.rms_norm_eps));
    linear_backward(dx, p.q_a_proj->grad, bias_grad_of(p.q_a_bias), dcq, x, p.q_a_proj->value, true);
  } else {
    linear_backward(dx, p.q_proj->grad, Tensor(), dq_rows, x, p.q_proj->value, true);
  }
}

void mla_forward_cached(const Tensor& y, const Tensor& x, std::int64_t b, std::int64_t l, MlaCache& cache,
                        MlaDecodeForm form, const MlaParams& p) {
  check_inputs(p, x, b, l);
  const std::int64_t n = b * l, h = p.num_heads, dq = p.q_head_dim(), dv = p.v_head_dim, r = p.kv_lora_rank;
  const std::int64_t lat = p.latent_dim(), dn = p.qk_nope_head_dim, w = dn + dv;
  MF_CHECK(cache.rows.dim() == 3 && cache.rows.size(0) == b && cache.rows.size(2) == lat, kOp,
           " the latent cache has shape ", shape_str(cache.rows.shape()), " but the call needs [", b, ", capacity, ",
           lat, "]");
  const std::int64_t past = cache.past, cap = cache.rows.size(1), lk = past + l;
  MF_CHECK(lk <= cap, kOp, " the latent cache holds ", cap, " positions but the call needs ", lk, " (", past,
           " cached + ", l, " new)");
  const Projected pr = project(x, b, l, past, p);
  {  // Append [c_n | k_pe] rows.
    float* rows = cache.rows.data<float>();
    for (std::int64_t bb = 0; bb < b; ++bb)
      for (std::int64_t i = 0; i < l; ++i) {
        float* dst = rows + (bb * cap + past + i) * lat;
        std::memcpy(dst, pr.c_n.data<float>() + (bb * l + i) * r, static_cast<std::size_t>(r) * sizeof(float));
        std::memcpy(dst + r, pr.k_pe.data<float>() + (bb * l + i) * p.qk_rope_head_dim,
                    static_cast<std::size_t>(p.qk_rope_head_dim) * sizeof(float));
      }
  }
  if (form == MlaDecodeForm::Auto) form = l <= kMlaAbsorbedMaxRows ? MlaDecodeForm::Absorbed : MlaDecodeForm::Naive;
  Tensor merged = Tensor::empty({n, h * dv});
  if (form == MlaDecodeForm::Absorbed) {
    Tensor o_lat;
    absorbed_attention(pr.q, cache, b, l, p, o_lat);
    const float* wkv = p.kv_b_proj->value.data<float>();
    for (std::int64_t hh = 0; hh < h; ++hh)  // out_h = o_lat_h W_UV_h^T  ([N, r] x [r, dv])
      gemm(Trans::N, Trans::T, n, dv, r, 1.0f, o_lat.data<float>() + hh * r, h * r, wkv + (hh * w + dn) * r, r, 0.0f,
           merged.data<float>() + hh * dv, h * dv);
  } else {
    // Naive: K and V of every cached position, up-projected, then the flash kernels.
    Tensor c_all = Tensor::empty({b * lk, r}), pe_all = Tensor::empty({b * lk, p.qk_rope_head_dim});
    for (std::int64_t bb = 0; bb < b; ++bb)
      for (std::int64_t j = 0; j < lk; ++j) {
        const float* src = cache.rows.data<float>() + (bb * cap + j) * lat;
        std::memcpy(c_all.data<float>() + (bb * lk + j) * r, src, static_cast<std::size_t>(r) * sizeof(float));
        std::memcpy(pe_all.data<float>() + (bb * lk + j) * p.qk_rope_head_dim, src + r,
                    static_cast<std::size_t>(p.qk_rope_head_dim) * sizeof(float));
      }
    const Tensor kv = linear_forward(c_all, p.kv_b_proj->value, Tensor());
    Tensor k, v;
    split_keys_values(kv, pe_all, p, k, v);
    const AttentionOutput a =
        attention_forward(to_heads(pr.q, b, l, h, dq), to_heads(k.reshape({b * lk, h * dq}), b, lk, h, dq),
                          to_heads(v.reshape({b * lk, h * dv}), b, lk, h, dv), attention_options(p, true, Tensor()),
                          p.impl);
    merged = from_heads(a.out);
  }
  linear_forward(y, merged, p.o_proj->value, bias_of(p.o_bias));
  cache.past = lk;
}

}  // namespace mf
