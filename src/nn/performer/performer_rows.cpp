// Row-level pieces of the Performer attention core (performer_rows.h).
#include "nn/performer/performer_rows.h"

#include "kernels/gemm.h"

namespace mf::performer_detail {

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
      exp_affine_row(f, g.m, diag + stab[i], g.ratio, g.add);
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

}  // namespace mf::performer_detail
