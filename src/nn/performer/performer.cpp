// Performer attention core (FAVOR+), fast path: one task per (sequence, KV
// head), its query heads inside (they share the key features and, causally,
// the prefix state). Non-causal: ctx = phi(K)^T [V, 1] then phi(Q) ctx, two
// GEMMs. Causal: chunks of C rows; inside a chunk the masked C x C matrix
// (intra), before it the carried prefix state (inter), each a GEMM; the
// backward walks the chunks in reverse with a carried state of the later rows
// and reads the per-chunk prefix states saved by the forward. Column d of
// every [., d+1] matrix is the denominator (V augmented with a ones column).
#include "nn/performer/performer.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "kernels/gemm.h"
#include "kernels/vec_exp.h"

namespace mf {

namespace {

constexpr const char* kOp = "[performer]";
// The running max before any real key: exp(kNoKey - M) is 0 for every real M,
// and exp(0) = 1 multiplies only zero rows (no key yet).
constexpr float kNoKey = -1e30f;
// Non-causal rows per block of keys or queries (a [rows, m] feature block).
constexpr std::int64_t kRowBlock = 128;
// Calls below this many multiply-adds (B * Hq * L * m * (d + 1)) run their
// tasks in order: ~0.1 ms of work, a few OpenMP fork/joins.
constexpr double kParallelMinWork = 1 << 20;

// row[f] = mul * exp(row[f] - shift) + add (the scalar and AVX2 forms give the same bits).
void exp_affine(float* row, std::int64_t n, float shift, float mul, float add) {
  std::int64_t f = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 vs = _mm256_set1_ps(shift), vm = _mm256_set1_ps(mul), va = _mm256_set1_ps(add);
  for (; f + 8 <= n; f += 8) {
    const __m256 x = _mm256_sub_ps(_mm256_loadu_ps(row + f), vs);
    _mm256_storeu_ps(row + f, _mm256_fmadd_ps(exp_approx(x), vm, va));
  }
#endif
  for (; f < n; ++f) row[f] = std::fma(exp_approx(row[f] - shift), mul, add);
}

// exp(min(a - b, 0)): every stabilizer factor (its argument is <= 0 for real keys).
inline float decay(float a, float b) { return exp_approx(std::min(a - b, 0.0f)); }

float row_max(const float* row, std::int64_t n) {
  float mx = row[0];
  for (std::int64_t f = 1; f < n; ++f) mx = std::max(mx, row[f]);
  return mx;
}

double sum_sq(const float* x, std::int64_t n) {
  double s = 0;
  for (std::int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

// Sizes and the feature map's constants.
struct Geometry {
  std::int64_t batch, len, hq, hkv, group, d, m, da, ldq, ldk;
  bool causal, softmax;
  float c;        // d^(-1/4)
  float ratio;    // softmax: m^(-1/2); relu: 1
  float add;      // the constant of a full feature: softmax ratio * eps, relu kernel_epsilon
  float key_eps;  // causal softmax: the eps part r * eps of every key (kept out of the exp-part features)
  std::int64_t chunk;
  const float* w;  // the projection [m, d]
  Geometry(const Tensor& q, const Tensor& k, const Tensor& w_, std::int64_t b, std::int64_t l, bool is_causal,
           const PerformerOptions& o)
      : batch(b), len(l), hq(q.size(1)), hkv(k.size(1)), group(q.size(1) / k.size(1)), d(q.size(2)), m(w_.size(0)),
        da(q.size(2) + 1), ldq(q.size(1) * q.size(2)), ldk(k.size(1) * k.size(2)), causal(is_causal),
        softmax(o.kernel == PerformerKernel::Softmax),
        c(static_cast<float>(std::pow(static_cast<double>(q.size(2)), -0.25))),
        ratio(softmax ? static_cast<float>(1.0 / std::sqrt(static_cast<double>(w_.size(0)))) : 1.0f),
        add(softmax ? static_cast<float>(o.softmax_epsilon / std::sqrt(static_cast<double>(w_.size(0))))
                    : static_cast<float>(o.kernel_epsilon)),
        key_eps(softmax && is_causal ? add : 0.0f), chunk(std::min(is_causal ? o.chunk_size : kRowBlock, l)),
        w(w_.data<float>()) {}
  std::int64_t chunks() const { return (len + chunk - 1) / chunk; }
};

// logits [rows, m] = c x W^T, x rows at stride ldx.
void feature_logits(float* logits, const float* x, std::int64_t ldx, std::int64_t rows, const Geometry& g) {
  gemm(Trans::N, Trans::T, rows, g.m, g.d, g.c, x, ldx, g.w, g.d, 0.0f, logits, g.m);
}

// Full features from logits (queries; non-causal keys): softmax r (exp(z - diag - stab) + eps), relu relu(z) + eps.
void full_features(float* feat, const float* logits, const float* x, std::int64_t ldx, std::int64_t rows,
                   const float* stab, const Geometry& g) {
  for (std::int64_t i = 0; i < rows; ++i) {
    float* f = feat + i * g.m;
    const float* z = logits + i * g.m;
    if (g.softmax) {
      std::copy_n(z, g.m, f);
      const float diag = static_cast<float>(0.5 * g.c * g.c * sum_sq(x + i * ldx, g.d));
      exp_affine(f, g.m, diag + stab[i], g.ratio, g.add);
    } else {
      for (std::int64_t j = 0; j < g.m; ++j) f[j] = std::max(z[j], 0.0f) + g.add;
    }
  }
}

// dz = dfeat * dfeat/dz in place (the stabilizer is a constant), then
// dx (rows at ldx) = c dz W (- c^2 x sum_f dz for softmax's diag term).
void feature_backward(float* dx, std::int64_t lddx, float* dfeat, const float* feat, const float* logits,
                      const float* x, std::int64_t ldx, std::int64_t rows, float additive, const Geometry& g) {
  for (std::int64_t i = 0; i < rows; ++i) {
    float* df = dfeat + i * g.m;
    if (g.softmax) {
      const float* f = feat + i * g.m;
      for (std::int64_t j = 0; j < g.m; ++j) df[j] *= f[j] - additive;
    } else {
      const float* z = logits + i * g.m;
      for (std::int64_t j = 0; j < g.m; ++j) df[j] = z[j] > 0.0f ? df[j] : 0.0f;
    }
  }
  gemm(Trans::N, Trans::N, rows, g.d, g.m, g.c, dfeat, g.m, g.w, g.d, 0.0f, dx, lddx);
  if (!g.softmax) return;
  const float c2 = g.c * g.c;
  for (std::int64_t i = 0; i < rows; ++i) {
    double s = 0;
    for (std::int64_t j = 0; j < g.m; ++j) s += dfeat[i * g.m + j];
    const auto k = static_cast<float>(c2 * s);
    for (std::int64_t e = 0; e < g.d; ++e) dx[i * lddx + e] -= k * x[i * ldx + e];
  }
}

bool is_real(const std::int32_t* mask, std::int64_t row) { return mask == nullptr || mask[row] != 0; }

// va [rows, d+1] = [v, 1] (zero rows for padding).
void augment_values(float* va, const float* v, std::int64_t ldv, std::int64_t rows, const std::int32_t* mask,
                    const Geometry& g) {
  for (std::int64_t j = 0; j < rows; ++j) {
    float* r = va + j * g.da;
    if (is_real(mask, j)) {
      std::copy_n(v + j * ldv, g.d, r);
      r[g.d] = 1.0f;
    } else {
      std::fill_n(r, g.da, 0.0f);
    }
  }
}

// out_i = oa_i[:d] / oa_i[d] (0 when the row saw no key) for rows r0.. of query
// head h; a training forward also keeps den_i = oa_i[d] and the query stabilizer.
void finish_rows(float* out, PerformerAttentionSaved* s, std::int64_t r0, std::int64_t h, const float* oa,
                 const float* qstab, std::int64_t rows, const Geometry& g) {
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* r = oa + i * g.da;
    const float dn = r[g.d];
    const float inv = dn != 0.0f ? 1.0f / dn : 0.0f;
    float* o = out + (r0 + i) * g.ldq + h * g.d;
    for (std::int64_t e = 0; e < g.d; ++e) o[e] = r[e] * inv;
    if (s) {
      s->den.data<float>()[(r0 + i) * g.hq + h] = dn;
      s->query_stab.data<float>()[(r0 + i) * g.hq + h] = qstab[i];
    }
  }
}

// doa_i = [dout_i / den_i, -(dout_i . out_i) / den_i]: the gradient of the augmented row.
void augmented_grad(float* doa, const float* dout, const float* out, std::int64_t ldo, const float* den,
                    std::int64_t ldden, std::int64_t rows, const Geometry& g) {
  for (std::int64_t i = 0; i < rows; ++i) {
    float* r = doa + i * g.da;
    const float dn = den[i * ldden];
    if (dn == 0.0f) {
      std::fill_n(r, g.da, 0.0f);
      continue;
    }
    const float inv = 1.0f / dn;
    double dot = 0;
    for (std::int64_t e = 0; e < g.d; ++e) {
      r[e] = dout[i * ldo + e] * inv;
      dot += static_cast<double>(dout[i * ldo + e]) * out[i * ldo + e];
    }
    r[g.d] = -static_cast<float>(dot) * inv;
  }
}

// fn(0..tasks-1) on the threads when the call is large enough (each task's
// GEMMs then run single-threaded inside the region); small calls (decode
// steps, tiny test models) run in order, where a fork/join would dominate.
template <typename Fn>
void for_each_task(std::int64_t tasks, double work, const Fn& fn) {
#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1 && work >= kParallelMinWork && !omp_in_parallel())
  for (std::int64_t t = 0; t < tasks; ++t) fn(t);
}

// Per-task pointers into the token-major tensors.
struct TaskRows {
  std::int64_t b, kvh;
  std::int64_t row0;  // b * L
};

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
      exp_affine(f, g.m, diag + ref, g.ratio, 0.0f);
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

// -------------------------------------------------------------------- causal

// Key side of one chunk: logits, running max M_j (continuing from `running`),
// exp-part features G_j = r exp(a_j - diag_j - M_j) (relu: the full feature,
// M = 0), [v, 1]; padding rows zero (M carried).
void causal_keys(float* klog, float* kf, float* kstab, float* va, float& running, const float* kb, const float* vb,
                 std::int64_t rows, const std::int32_t* mask, const Geometry& g,
                 const float* saved_stab) {
  feature_logits(klog, kb, g.ldk, rows, g);
  for (std::int64_t j = 0; j < rows; ++j) {
    const bool real = is_real(mask, j);
    if (g.softmax) {
      if (saved_stab) {
        running = saved_stab[j * g.hkv];
      } else if (real) {
        running = std::max(running, row_max(klog + j * g.m, g.m));
      }
    }
    kstab[j] = g.softmax ? running : 0.0f;
    float* f = kf + j * g.m;
    if (!real) {
      std::fill_n(f, g.m, 0.0f);
      continue;
    }
    if (g.softmax) {
      std::copy_n(klog + j * g.m, g.m, f);
      const float diag = static_cast<float>(0.5 * g.c * g.c * sum_sq(kb + j * g.ldk, g.d));
      exp_affine(f, g.m, diag + kstab[j], g.ratio, 0.0f);
    } else {
      for (std::int64_t e = 0; e < g.m; ++e) f[e] = std::max(klog[j * g.m + e], 0.0f) + g.add;
    }
  }
  augment_values(va, vb, g.ldk, rows, mask, g);
}

struct CausalWork {
  std::vector<float> klog, kf, kstab, va, qlog, qf, qstab, qsum, a, oa;
  explicit CausalWork(const Geometry& g)
      : klog(g.chunk * g.m), kf(g.chunk * g.m), kstab(g.chunk), va(g.chunk * g.da), qlog(g.chunk * g.m),
        qf(g.chunk * g.m), qstab(g.chunk), qsum(g.chunk), a(g.chunk * g.chunk), oa(g.chunk * g.da) {}
};

// A_ij = exp(min(M_j - M_i, 0)) (phi(q_i) . G_j) + key_eps s_i for j <= i, else 0 (in place on a = phi(Q) G^T).
void causal_mask(float* a, std::int64_t rows, const float* kstab, const float* qsum, const Geometry& g) {
  for (std::int64_t i = 0; i < rows; ++i) {
    float* r = a + i * rows;
    for (std::int64_t j = 0; j <= i; ++j) r[j] = r[j] * decay(kstab[j], kstab[i]) + g.key_eps * qsum[i];
    std::fill(r + i + 1, r + rows, 0.0f);
  }
}

// One (sequence, KV head): exp_state [m, da], plain [da] and ref carried in and out.
void causal_forward_task(const TaskRows& t, float* out, PerformerAttentionSaved* s, float* exp_state, float* plain,
                         float& ref, const float* q, const float* k, const float* v,
                         const std::int32_t* mask, const Geometry& g) {
  const std::int64_t m = g.m, da = g.da, chunks = g.chunks();
  CausalWork wk(g);
  float running = ref;
  for (std::int64_t ci = 0; ci < chunks; ++ci) {
    const std::int64_t t0 = ci * g.chunk, rows = std::min(g.chunk, g.len - t0), r0 = t.row0 + t0;
    if (s) {
      const std::int64_t slot = (t.b * g.hkv + t.kvh) * chunks + ci;
      std::copy_n(exp_state, m * da, s->chunk_exp.data<float>() + slot * m * da);
      std::copy_n(plain, da, s->chunk_plain.data<float>() + slot * da);
    }
    causal_keys(wk.klog.data(), wk.kf.data(), wk.kstab.data(), wk.va.data(), running, k + r0 * g.ldk + t.kvh * g.d,
                v + r0 * g.ldk + t.kvh * g.d, rows, mask ? mask + t0 : nullptr, g, nullptr);
    if (s)
      for (std::int64_t j = 0; j < rows; ++j) s->key_stab.data<float>()[(r0 + j) * g.hkv + t.kvh] = wk.kstab[j];
    for (std::int64_t hh = 0; hh < g.group; ++hh) {
      const std::int64_t h = t.kvh * g.group + hh;
      const float* qb = q + r0 * g.ldq + h * g.d;
      feature_logits(wk.qlog.data(), qb, g.ldq, rows, g);
      for (std::int64_t i = 0; i < rows; ++i) wk.qstab[i] = g.softmax ? row_max(wk.qlog.data() + i * m, m) : 0.0f;
      full_features(wk.qf.data(), wk.qlog.data(), qb, g.ldq, rows, wk.qstab.data(), g);
      for (std::int64_t i = 0; i < rows; ++i) {
        double sum = 0;
        for (std::int64_t f = 0; f < m; ++f) sum += wk.qf[i * m + f];
        wk.qsum[i] = static_cast<float>(sum);
      }
      // Intra-chunk: oa = mask(phi(Q) G^T) [V, 1].
      gemm(Trans::N, Trans::T, rows, rows, m, 1.0f, wk.qf.data(), m, wk.kf.data(), m, 0.0f, wk.a.data(), rows);
      causal_mask(wk.a.data(), rows, wk.kstab.data(), wk.qsum.data(), g);
      gemm(Trans::N, Trans::N, rows, da, rows, 1.0f, wk.a.data(), rows, wk.va.data(), da, 0.0f, wk.oa.data(), da);
      // Inter-chunk: oa_i += exp(ref - M_i) phi(q_i) E + key_eps s_i plain (phi rows rescaled in place).
      for (std::int64_t i = 0; i < rows; ++i) {
        const float f = decay(ref, wk.kstab[i]);
        for (std::int64_t e = 0; e < m; ++e) wk.qf[i * m + e] *= f;
        for (std::int64_t e = 0; e < da; ++e) wk.oa[i * da + e] += g.key_eps * wk.qsum[i] * plain[e];
      }
      gemm(Trans::N, Trans::N, rows, da, m, 1.0f, wk.qf.data(), m, exp_state, da, 1.0f, wk.oa.data(), da);
      finish_rows(out, s, r0, h, wk.oa.data(), wk.qstab.data(), rows, g);
    }
    // State update to the new reference M_last: E = exp(ref - M_last) E + (exp(M_j - M_last) G_j)^T [V, 1].
    const float new_ref = wk.kstab[rows - 1];
    for (std::int64_t j = 0; j < rows; ++j) {
      const float f = decay(wk.kstab[j], new_ref);
      for (std::int64_t e = 0; e < m; ++e) wk.kf[j * m + e] *= f;
      for (std::int64_t e = 0; e < da; ++e) plain[e] += wk.va[j * da + e];
    }
    gemm(Trans::T, Trans::N, m, da, rows, 1.0f, wk.kf.data(), m, wk.va.data(), da, decay(ref, new_ref), exp_state,
         da);
    ref = new_ref;
  }
}

void causal_backward_task(const TaskRows& t, float* dq, float* dk, float* dv, const float* dout,
                          const PerformerAttentionSaved& s, const float* q, const float* k, const float* v,
                          const std::int32_t* mask, const Geometry& g) {
  const std::int64_t m = g.m, da = g.da, chunks = g.chunks(), cm = g.chunk;
  CausalWork wk(g);
  std::vector<float> ks(cm * m), vs(cm * da), dkf(cm * m), dva(cm * da), da_mat(cm * cm), doa(cm * da),
      doa_s(cm * da), dqf(cm * m);
  std::vector<float> later(g.group * m * da, 0.0f), later_sum(g.group * da, 0.0f);  // F, Fs per query head
  float later_ref = 0.0f;  // M of the first row after this chunk
  const float* out = s.out.data<float>();
  const float* den = s.den.data<float>();
  const float* kstab_saved = s.key_stab.data<float>();
  for (std::int64_t ci = chunks - 1; ci >= 0; --ci) {
    const std::int64_t t0 = ci * cm, rows = std::min(cm, g.len - t0), r0 = t.row0 + t0;
    const bool has_later = ci + 1 < chunks;
    const std::int64_t slot = (t.b * g.hkv + t.kvh) * chunks + ci;
    const float* e_state = s.chunk_exp.data<float>() + slot * m * da;
    const float* plain = s.chunk_plain.data<float>() + slot * da;
    const float ref = ci == 0 ? kNoKey : kstab_saved[(r0 - 1) * g.hkv + t.kvh];
    const float* kb = k + r0 * g.ldk + t.kvh * g.d;
    float running = 0.0f;
    causal_keys(wk.klog.data(), wk.kf.data(), wk.kstab.data(), wk.va.data(), running, kb,
                v + r0 * g.ldk + t.kvh * g.d, rows, mask ? mask + t0 : nullptr, g,
                kstab_saved + r0 * g.hkv + t.kvh);
    std::fill_n(dkf.data(), rows * m, 0.0f);
    std::fill_n(dva.data(), rows * da, 0.0f);
    if (has_later)  // key rows scaled for the later rows' state: exp(M_j - M_later)
      for (std::int64_t j = 0; j < rows; ++j) {
        const float f = decay(wk.kstab[j], later_ref);
        for (std::int64_t e = 0; e < m; ++e) ks[j * m + e] = wk.kf[j * m + e] * f;
        for (std::int64_t e = 0; e < da; ++e) vs[j * da + e] = wk.va[j * da + e] * f;
      }
    for (std::int64_t hh = 0; hh < g.group; ++hh) {
      const std::int64_t h = t.kvh * g.group + hh;
      float* fl = later.data() + hh * m * da;
      float* fs = later_sum.data() + hh * da;
      const float* qb = q + r0 * g.ldq + h * g.d;
      feature_logits(wk.qlog.data(), qb, g.ldq, rows, g);
      for (std::int64_t i = 0; i < rows; ++i) wk.qstab[i] = s.query_stab.data<float>()[(r0 + i) * g.hq + h];
      full_features(wk.qf.data(), wk.qlog.data(), qb, g.ldq, rows, wk.qstab.data(), g);
      for (std::int64_t i = 0; i < rows; ++i) {
        double sum = 0;
        for (std::int64_t f = 0; f < m; ++f) sum += wk.qf[i * m + f];
        wk.qsum[i] = static_cast<float>(sum);
      }
      augmented_grad(doa.data(), dout + r0 * g.ldq + h * g.d, out + r0 * g.ldq + h * g.d, g.ldq,
                     den + r0 * g.hq + h, g.hq, rows, g);
      // Intra: A (as the forward), dA = mask(doa [V, 1]^T); d[V, 1] += A^T doa.
      gemm(Trans::N, Trans::T, rows, rows, m, 1.0f, wk.qf.data(), m, wk.kf.data(), m, 0.0f, wk.a.data(), rows);
      causal_mask(wk.a.data(), rows, wk.kstab.data(), wk.qsum.data(), g);
      gemm(Trans::T, Trans::N, rows, da, rows, 1.0f, wk.a.data(), rows, doa.data(), da, 1.0f, dva.data(), da);
      gemm(Trans::N, Trans::T, rows, rows, da, 1.0f, doa.data(), da, wk.va.data(), da, 0.0f, da_mat.data(), rows);
      // dS_ij = dA_ij exp(M_j - M_i) (j <= i); the eps term gives dphi(q_i) += key_eps sum_j dA_ij.
      std::vector<float>& eps_row = wk.oa;  // reused: [rows] sums of dA
      for (std::int64_t i = 0; i < rows; ++i) {
        float* r = da_mat.data() + i * rows;
        double sum = 0;
        for (std::int64_t j = 0; j <= i; ++j) {
          sum += r[j];
          r[j] *= decay(wk.kstab[j], wk.kstab[i]);
        }
        std::fill(r + i + 1, r + rows, 0.0f);
        eps_row[i] = static_cast<float>(sum);
      }
      // dG += dS^T phi(Q); dphi(Q) = dS G.
      gemm(Trans::T, Trans::N, rows, m, rows, 1.0f, da_mat.data(), rows, wk.qf.data(), m, 1.0f, dkf.data(), m);
      gemm(Trans::N, Trans::N, rows, m, rows, 1.0f, da_mat.data(), rows, wk.kf.data(), m, 0.0f, dqf.data(), m);
      // Inter: dphi(q_i) += exp(ref - M_i) E doa_i + key_eps (plain . doa_i).
      for (std::int64_t i = 0; i < rows; ++i) {
        const float f = decay(ref, wk.kstab[i]);
        double dot = 0;
        for (std::int64_t e = 0; e < da; ++e) {
          doa_s[i * da + e] = doa[i * da + e] * f;
          dot += static_cast<double>(plain[e]) * doa[i * da + e];
        }
        const float extra = g.key_eps * (eps_row[i] + static_cast<float>(dot));
        if (extra != 0.0f)
          for (std::int64_t e = 0; e < m; ++e) dqf[i * m + e] += extra;
      }
      gemm(Trans::N, Trans::T, rows, m, da, 1.0f, doa_s.data(), da, e_state, da, 1.0f, dqf.data(), m);
      // Later rows: dG_j += exp(M_j - M_later) F [v_j, 1]; d[v_j, 1] += exp(M_j - M_later) G_j F + key_eps Fs.
      if (has_later) {
        gemm(Trans::N, Trans::T, rows, m, da, 1.0f, vs.data(), da, fl, da, 1.0f, dkf.data(), m);
        gemm(Trans::N, Trans::N, rows, da, m, 1.0f, ks.data(), m, fl, da, 1.0f, dva.data(), da);
        if (g.key_eps != 0.0f)
          for (std::int64_t j = 0; j < rows; ++j)
            for (std::int64_t e = 0; e < da; ++e) dva[j * da + e] += g.key_eps * fs[e];
      }
      // F = exp(M_t0 - M_later) F + sum_i exp(M_t0 - M_i) phi(q_i) doa_i^T; Fs += sum_i s_i doa_i.
      const float new_ref = wk.kstab[0];
      for (std::int64_t i = 0; i < rows; ++i)
        for (std::int64_t e = 0; e < da; ++e) fs[e] += wk.qsum[i] * doa[i * da + e];
      feature_backward(dq + r0 * g.ldq + h * g.d, g.ldq, dqf.data(), wk.qf.data(), wk.qlog.data(), qb, g.ldq, rows,
                       g.add, g);
      for (std::int64_t i = 0; i < rows; ++i) {
        const float f = decay(new_ref, wk.kstab[i]);
        for (std::int64_t e = 0; e < m; ++e) wk.qf[i * m + e] *= f;
      }
      gemm(Trans::T, Trans::N, m, da, rows, 1.0f, wk.qf.data(), m, doa.data(), da,
           has_later ? decay(new_ref, later_ref) : 0.0f, fl, da);
    }
    later_ref = wk.kstab[0];
    float* dkb = dk + r0 * g.ldk + t.kvh * g.d;
    float* dvb = dv + r0 * g.ldk + t.kvh * g.d;
    feature_backward(dkb, g.ldk, dkf.data(), wk.kf.data(), wk.klog.data(), kb, g.ldk, rows, 0.0f, g);
    for (std::int64_t j = 0; j < rows; ++j) {
      if (is_real(mask, t0 + j)) {
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
