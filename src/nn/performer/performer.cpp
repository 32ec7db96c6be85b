// Performer attention core (FAVOR+), fast path: one task per (sequence, KV
// head), its query heads inside (they share the key features and, causally,
// the prefix state). This file: the front doors, the checks, the generation
// state and the non-causal path (ctx = phi(K)^T [V, 1] in blocks of keys, then
// phi(Q) ctx); the causal scan is in performer_causal.cpp. Column d of every
// [., d+1] matrix is the denominator (V augmented with a ones column).
#include "nn/performer/performer.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "kernels/gemm.h"
#include "nn/performer/performer_rows.h"

namespace mf {

using namespace performer_detail;

namespace {

constexpr const char* kOp = "[performer]";
// Calls below this many multiply-adds (B * Hq * L * m * (d + 1)) run their
// tasks in order: ~0.1 ms of work, a few OpenMP fork/joins.
constexpr double kParallelMinWork = 1 << 20;

// fn(0..tasks-1) on the threads when the call is large enough (each task's
// GEMMs then run single-threaded inside the region); small calls (decode
// steps, tiny test models) run in order, where a fork/join would dominate.
// The small case is a plain loop, not an inactive parallel region: the GEMMs
// inside would otherwise each open a nested OpenMP team (a fresh thread start
// per call: 7 ms per decoded token instead of 0.1 ms, measured).
template <typename Fn>
void for_each_task(std::int64_t tasks, double work, const Fn& fn) {
  if (tasks > 1 && work >= kParallelMinWork && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1)
    for (std::int64_t t = 0; t < tasks; ++t) fn(t);
  } else {
    for (std::int64_t t = 0; t < tasks; ++t) fn(t);
  }
}

// ---------------------------------------------------------------- non-causal

// Exp-part features of a block of keys against the reference `ref`:
// softmax r exp(a_j - diag_j - ref), relu the full feature; zero rows for padding.
void block_key_features(float* kf, const float* klog, const float* kb, std::int64_t rows, const std::int32_t* mask,
                        float ref, const Geometry& g) {
  for (std::int64_t j = 0; j < rows; ++j) {
    float* f = kf + j * g.m;
    if (!is_real(mask, j)) {
      std::fill_n(f, g.m, 0.0f);
    } else if (g.softmax) {
      std::copy_n(klog + j * g.m, g.m, f);
      const float diag = static_cast<float>(0.5 * g.c * g.c * sum_sq(kb + j * g.ldk, g.d));
      exp_affine_row(f, g.m, diag + ref, g.ratio, 0.0f);
    } else {
      for (std::int64_t e = 0; e < g.m; ++e) f[e] = std::max(klog[j * g.m + e], 0.0f) + g.add;
    }
  }
}

// ctx [m, d+1] = sum over real keys of phi(k_j) [v_j, 1]^T, in blocks of keys.
// Softmax: the key stabilizer M (max over real keys and features) is found on
// the way: the exp-part sum is kept against the running max and rescaled by
// exp(old - new) <= 1 when it grows; at the end ctx = E + r eps sum_j [v_j, 1]
// (the eps part of phi). With `known_stab` (the backward) M is given. Returns M.
float key_context(float* ctx, float* klog, float* kf, float* va, const float* kb, const float* vb,
                  const std::int32_t* mask, const float* known_stab, const Geometry& g) {
  const std::int64_t m = g.m, da = g.da;
  std::vector<float> plain(da, 0.0f);
  std::fill_n(ctx, m * da, 0.0f);
  float ref = known_stab ? *known_stab : (g.softmax ? kNoKey : 0.0f);
  for (std::int64_t j0 = 0; j0 < g.len; j0 += g.chunk) {
    const std::int64_t rows = std::min(g.chunk, g.len - j0);
    const std::int32_t* bm = mask ? mask + j0 : nullptr;
    feature_logits(klog, kb + j0 * g.ldk, g.ldk, rows, g);
    float new_ref = ref;
    if (g.softmax && !known_stab)
      for (std::int64_t j = 0; j < rows; ++j)
        if (is_real(bm, j)) new_ref = std::max(new_ref, row_max(klog + j * m, m));
    block_key_features(kf, klog, kb + j0 * g.ldk, rows, bm, new_ref, g);
    augment_values(va, vb + j0 * g.ldk, g.ldk, rows, bm, g);
    for (std::int64_t j = 0; j < rows; ++j)
      for (std::int64_t e = 0; e < da; ++e) plain[e] += va[j * da + e];
    gemm(Trans::T, Trans::N, m, da, rows, 1.0f, kf, m, va, da, decay(ref, new_ref), ctx, da);
    ref = new_ref;
  }
  if (g.softmax)
    for (std::int64_t f = 0; f < m; ++f)
      for (std::int64_t e = 0; e < da; ++e) ctx[f * da + e] += g.add * plain[e];
  return ref;
}

struct BlockWork {
  std::vector<float> klog, kf, va, ctx, qstab, oa;
  explicit BlockWork(const Geometry& g)
      : klog(g.chunk * g.m), kf(g.chunk * g.m), va(g.chunk * g.da), ctx(g.m * g.da), qstab(g.chunk),
        oa(g.chunk * g.da) {}
};

void noncausal_forward_task(const TaskRows& t, float* out, PerformerAttentionSaved* s, const float* q, const float* k,
                            const float* v, const std::int32_t* mask, const Geometry& g) {
  const std::int64_t l = g.len, m = g.m, da = g.da;
  BlockWork wk(g);
  std::vector<float>& qlog = wk.klog;  // the key blocks are done: their buffers hold query blocks
  std::vector<float>& qf = wk.kf;
  const float stab = key_context(wk.ctx.data(), wk.klog.data(), wk.kf.data(), wk.va.data(),
                                 k + t.row0 * g.ldk + t.kvh * g.d, v + t.row0 * g.ldk + t.kvh * g.d, mask, nullptr, g);
  if (s)
    for (std::int64_t j = 0; j < l; ++j) s->key_stab.data<float>()[(t.row0 + j) * g.hkv + t.kvh] = stab;
  for (std::int64_t hh = 0; hh < g.group; ++hh) {
    const std::int64_t h = t.kvh * g.group + hh;
    for (std::int64_t i0 = 0; i0 < l; i0 += g.chunk) {
      const std::int64_t rows = std::min(g.chunk, l - i0), r0 = t.row0 + i0;
      const float* qb = q + r0 * g.ldq + h * g.d;
      feature_logits(qlog.data(), qb, g.ldq, rows, g);
      for (std::int64_t i = 0; i < rows; ++i) wk.qstab[i] = g.softmax ? row_max(qlog.data() + i * m, m) : 0.0f;
      full_features(qf.data(), qlog.data(), qb, g.ldq, rows, wk.qstab.data(), g);
      gemm(Trans::N, Trans::N, rows, da, m, 1.0f, qf.data(), m, wk.ctx.data(), da, 0.0f, wk.oa.data(), da);
      finish_rows(out, s, r0, h, wk.oa.data(), wk.qstab.data(), rows, g);
    }
  }
}

void noncausal_backward_task(const TaskRows& t, float* dq, float* dk, float* dv, const float* dout,
                             const PerformerAttentionSaved& s, const float* q, const float* k, const float* v,
                             const std::int32_t* mask, const Geometry& g) {
  const std::int64_t l = g.len, m = g.m, da = g.da;
  BlockWork wk(g);
  const float* kb = k + t.row0 * g.ldk + t.kvh * g.d;
  const float* vb = v + t.row0 * g.ldk + t.kvh * g.d;
  const float stab = s.key_stab.data<float>()[t.row0 * g.hkv + t.kvh];
  key_context(wk.ctx.data(), wk.klog.data(), wk.kf.data(), wk.va.data(), kb, vb, mask, &stab, g);
  std::vector<float> dctx(m * da, 0.0f), doa(g.chunk * da), dfeat(g.chunk * m);
  const float* out = s.out.data<float>();
  const float* den = s.den.data<float>();
  for (std::int64_t hh = 0; hh < g.group; ++hh) {
    const std::int64_t h = t.kvh * g.group + hh;
    for (std::int64_t i0 = 0; i0 < l; i0 += g.chunk) {
      const std::int64_t rows = std::min(g.chunk, l - i0), r0 = t.row0 + i0;
      const float* qb = q + r0 * g.ldq + h * g.d;
      feature_logits(wk.klog.data(), qb, g.ldq, rows, g);
      for (std::int64_t i = 0; i < rows; ++i) wk.qstab[i] = s.query_stab.data<float>()[(r0 + i) * g.hq + h];
      full_features(wk.kf.data(), wk.klog.data(), qb, g.ldq, rows, wk.qstab.data(), g);
      augmented_grad(doa.data(), dout + r0 * g.ldq + h * g.d, out + r0 * g.ldq + h * g.d, g.ldq,
                     den + r0 * g.hq + h, g.hq, rows, g);
      // dphi(Q) = doa ctx^T; dctx += phi(Q)^T doa.
      gemm(Trans::N, Trans::T, rows, m, da, 1.0f, doa.data(), da, wk.ctx.data(), da, 0.0f, dfeat.data(), m);
      gemm(Trans::T, Trans::N, m, da, rows, 1.0f, wk.kf.data(), m, doa.data(), da, 1.0f, dctx.data(), da);
      feature_backward(dq + r0 * g.ldq + h * g.d, g.ldq, dfeat.data(), wk.kf.data(), wk.klog.data(), qb, g.ldq, rows,
                       g.add, g);
    }
  }
  // Per key block: dphi(K) = [V, 1] dctx^T; d[V, 1] = phi(K) dctx (phi the full feature).
  std::vector<float> dva(g.chunk * da);
  for (std::int64_t j0 = 0; j0 < l; j0 += g.chunk) {
    const std::int64_t rows = std::min(g.chunk, l - j0);
    const std::int32_t* bm = mask ? mask + j0 : nullptr;
    feature_logits(wk.klog.data(), kb + j0 * g.ldk, g.ldk, rows, g);
    block_key_features(wk.kf.data(), wk.klog.data(), kb + j0 * g.ldk, rows, bm, stab, g);
    if (g.softmax)
      for (std::int64_t j = 0; j < rows; ++j)
        if (is_real(bm, j))
          for (std::int64_t e = 0; e < m; ++e) wk.kf[j * m + e] += g.add;
    augment_values(wk.va.data(), vb + j0 * g.ldk, g.ldk, rows, bm, g);
    gemm(Trans::N, Trans::T, rows, m, da, 1.0f, wk.va.data(), da, dctx.data(), da, 0.0f, dfeat.data(), m);
    gemm(Trans::N, Trans::N, rows, da, m, 1.0f, wk.kf.data(), m, dctx.data(), da, 0.0f, dva.data(), da);
    float* dkb = dk + (t.row0 + j0) * g.ldk + t.kvh * g.d;
    float* dvb = dv + (t.row0 + j0) * g.ldk + t.kvh * g.d;
    feature_backward(dkb, g.ldk, dfeat.data(), wk.kf.data(), wk.klog.data(), kb + j0 * g.ldk, g.ldk, rows, g.add, g);
    for (std::int64_t j = 0; j < rows; ++j) {
      if (is_real(bm, j)) {
        std::copy_n(dva.data() + j * da, g.d, dvb + j * g.ldk);
      } else {
        std::fill_n(dkb + j * g.ldk, g.d, 0.0f);
        std::fill_n(dvb + j * g.ldk, g.d, 0.0f);
      }
    }
  }
}

void check_heads(const Tensor& t, const char* name, std::int64_t rows, std::int64_t heads, std::int64_t d) {
  MF_CHECK(t.defined() && t.dtype() == DType::F32 && t.is_contiguous() && t.dim() == 3, kOp, " ", name,
           " must be a contiguous float32 [B*L, H, d] tensor but is ", t.defined() ? shape_str(t.shape()) : "undefined");
  if (rows >= 0)
    MF_CHECK(t.size(0) == rows && (heads < 0 || t.size(1) == heads) && (d < 0 || t.size(2) == d), kOp, " ", name,
             " has shape ", shape_str(t.shape()), " but [", rows, ", ", heads < 0 ? t.size(1) : heads, ", ",
             d < 0 ? t.size(2) : d, "] was expected");
}

void check_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& w, std::int64_t batch,
                     std::int64_t len, bool causal, const Tensor& mask, const PerformerOptions& opt) {
  MF_CHECK(batch >= 1 && len >= 1, kOp, " batch and seq_len must be >= 1 but are ", batch, " and ", len);
  check_heads(q, "q", batch * len, -1, -1);
  check_heads(k, "k", batch * len, -1, q.size(2));
  check_heads(v, "v", batch * len, k.size(1), q.size(2));
  MF_CHECK(q.size(1) % k.size(1) == 0, kOp, " query heads (", q.size(1), ") must be a multiple of KV heads (",
           k.size(1), ")");
  MF_CHECK(w.defined() && w.dtype() == DType::F32 && w.is_contiguous() && w.dim() == 2 && w.size(1) == q.size(2) &&
               w.size(0) >= 1,
           kOp, " projection must be a contiguous float32 [m, d] = [m, ", q.size(2), "] tensor with m >= 1 but is ",
           w.defined() ? shape_str(w.shape()) : "undefined");
  MF_CHECK(opt.chunk_size >= 1, kOp, " option 'chunk_size' must be >= 1 but is ", opt.chunk_size);
  MF_CHECK(opt.kernel_epsilon >= 0 && opt.softmax_epsilon >= 0, kOp,
           " option 'kernel_epsilon' (", opt.kernel_epsilon, ") and the softmax eps (", opt.softmax_epsilon,
           ") must be >= 0");
  (void)causal;
  if (mask.defined())
    MF_CHECK(mask.dtype() == DType::I32 && mask.is_contiguous() && mask.shape() == Shape({batch, len}), kOp,
             " key_padding_mask must be a contiguous int32 [B, L] = ", shape_str({batch, len}), " tensor but is ",
             dtype_name(mask.dtype()), " ", shape_str(mask.shape()));
}

}  // namespace

PerformerState::PerformerState(std::int64_t batch, std::int64_t kv_heads, std::int64_t features,
                               std::int64_t head_dim)
    : exp_state(Tensor::zeros({batch, kv_heads, features, head_dim + 1})),
      plain_sum(Tensor::zeros({batch, kv_heads, head_dim + 1})), ref(Tensor::full({batch, kv_heads}, kNoKey)) {}

void PerformerState::reset() {
  exp_state.fill(0.0f);
  plain_sum.fill(0.0f);
  ref.fill(kNoKey);
  past = 0;
}

std::int64_t PerformerState::bytes() const {
  return static_cast<std::int64_t>(exp_state.nbytes() + plain_sum.nbytes() + ref.nbytes());
}

std::vector<const Tensor*> PerformerAttentionSaved::tensors() const {
  std::vector<const Tensor*> all;
  for (const Tensor* t : {&out, &den, &query_stab, &key_stab, &chunk_exp, &chunk_plain})
    if (t->defined()) all.push_back(t);
  return all;
}

void performer_attention_forward(const Tensor& out, PerformerAttentionSaved* saved, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& projection, std::int64_t batch, std::int64_t seq_len,
                                 bool causal, const Tensor& mask, const PerformerOptions& opt, PerformerState* state) {
  check_attention(q, k, v, projection, batch, seq_len, causal, mask, opt);
  out.check_shape(q.shape(), "performer", "out");
  MF_CHECK(state == nullptr || causal, kOp, " a generation state needs a causal call");
  MF_CHECK(state == nullptr || saved == nullptr, kOp, " a call that continues a generation keeps nothing for a backward");
  const Geometry g(q, k, projection, batch, seq_len, causal, opt);
  if (state) {
    MF_CHECK(state->exp_state.shape() == Shape({batch, g.hkv, g.m, g.da}), kOp, " generation state of shape ",
             shape_str(state->exp_state.shape()), " does not fit batch ", batch, ", ", g.hkv, " KV heads, m = ", g.m,
             ", d = ", g.d);
  }
  if (saved) {
    *saved = PerformerAttentionSaved{};
    saved->out = out;
    saved->den = Tensor::empty({batch * seq_len, g.hq});
    saved->query_stab = Tensor::empty({batch * seq_len, g.hq});
    saved->key_stab = Tensor::empty({batch * seq_len, g.hkv});
    if (causal) {
      saved->chunk_exp = Tensor::empty({batch, g.hkv, g.chunks(), g.m, g.da});
      saved->chunk_plain = Tensor::empty({batch, g.hkv, g.chunks(), g.da});
    }
  }
  const float *qp = q.data<float>(), *kp = k.data<float>(), *vp = v.data<float>();
  const std::int32_t* mp = mask.defined() ? mask.data<std::int32_t>() : nullptr;
  float* op = out.data<float>();
  const double work = static_cast<double>(batch) * g.hq * seq_len * g.m * g.da;
  for_each_task(batch * g.hkv, work, [&](std::int64_t task) {
    const TaskRows t{task / g.hkv, task % g.hkv, (task / g.hkv) * seq_len};
    const std::int32_t* tm = mp ? mp + t.row0 : nullptr;
    if (!causal) {
      noncausal_forward_task(t, op, saved, qp, kp, vp, tm, g);
      return;
    }
    if (state) {
      float* e = state->exp_state.data<float>() + task * g.m * g.da;
      float* pl = state->plain_sum.data<float>() + task * g.da;
      float& ref = state->ref.data<float>()[task];
      if (!g.softmax) ref = 0.0f;
      causal_forward_task(t, op, nullptr, e, pl, ref, qp, kp, vp, tm, g);
      return;
    }
    std::vector<float> e(g.m * g.da, 0.0f), pl(g.da, 0.0f);
    float ref = g.softmax ? kNoKey : 0.0f;
    causal_forward_task(t, op, saved, e.data(), pl.data(), ref, qp, kp, vp, tm, g);
  });
  if (state) state->past += seq_len;
}

void performer_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                                  const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& projection,
                                  const PerformerAttentionSaved& saved, std::int64_t batch, std::int64_t seq_len,
                                  bool causal, const Tensor& mask, const PerformerOptions& opt) {
  check_attention(q, k, v, projection, batch, seq_len, causal, mask, opt);
  const Geometry g(q, k, projection, batch, seq_len, causal, opt);
  MF_CHECK(saved.out.defined() && saved.out.shape() == q.shape() && saved.key_stab.defined() &&
               saved.key_stab.size(0) == batch * seq_len && (!causal || saved.chunk_exp.defined()) &&
               (!causal || saved.chunk_exp.size(2) == g.chunks()),
           kOp, " backward called without the saved activations of a forward of this shape (and causal setting)");
  dq.check_shape(q.shape(), "performer", "dq");
  dk.check_shape(k.shape(), "performer", "dk");
  dv.check_shape(v.shape(), "performer", "dv");
  dout.check_shape(q.shape(), "performer", "dout");
  const Tensor dout_c = dout.contiguous();
  const float *qp = q.data<float>(), *kp = k.data<float>(), *vp = v.data<float>();
  const std::int32_t* mp = mask.defined() ? mask.data<std::int32_t>() : nullptr;
  float *dqp = dq.data<float>(), *dkp = dk.data<float>(), *dvp = dv.data<float>();
  const double work = static_cast<double>(batch) * g.hq * seq_len * g.m * g.da;
  for_each_task(batch * g.hkv, work, [&](std::int64_t task) {
    const TaskRows t{task / g.hkv, task % g.hkv, (task / g.hkv) * seq_len};
    const std::int32_t* tm = mp ? mp + t.row0 : nullptr;
    if (causal)
      causal_backward_task(t, dqp, dkp, dvp, dout_c.data<float>(), saved, qp, kp, vp, tm, g);
    else
      noncausal_backward_task(t, dqp, dkp, dvp, dout_c.data<float>(), saved, qp, kp, vp, tm, g);
  });
}

Tensor performer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& projection, bool causal,
                           const PerformerOptions& opt) {
  MF_CHECK(q.defined() && q.dim() == 3, kOp, " performer_attention takes q [L, Hq, d]");
  const Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  Tensor out = Tensor::empty(qc.shape());
  performer_attention_forward(out, nullptr, qc, kc, vc, projection.contiguous(), 1, qc.size(0), causal, Tensor(),
                              opt);
  return out;
}

}  // namespace mf
