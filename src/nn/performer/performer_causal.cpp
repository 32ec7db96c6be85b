// Performer attention core, the causal scan (performer.h; the rule and its
// algebra are stated there): chunks of C rows; inside a chunk the masked
// C x C matrix (intra), before it the carried prefix state (inter), each a
// GEMM. The backward walks the chunks in reverse with a carried state of the
// later rows per query head and reads the per-chunk prefix states saved by
// the forward (never per-token states).
#include <algorithm>
#include <vector>

#include "kernels/gemm.h"
#include "nn/performer/performer_rows.h"

namespace mf::performer_detail {

namespace {

// Key side of one chunk: logits, running max M_j (continuing from `running`),
// exp-part features G_j = r exp(a_j - diag_j - M_j) (relu: the full feature,
// M = 0), [v, 1]; padding rows zero (M carried).
void causal_keys(float* klog, float* kf, float* kstab, float* va, float& running, const float* kb, const float* vb,
                 std::int64_t rows, const std::int32_t* mask, const Geometry& g, const float* saved_stab) {
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
      exp_affine_row(f, g.m, diag + kstab[j], g.ratio, 0.0f);
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

}  // namespace

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

}  // namespace mf::performer_detail
