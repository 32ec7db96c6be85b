// Multi-scale retention (Sun et al. 2023), fast path. Projections keep the
// token-major [N, H*D] rows of linear.h; the retention runs per (sequence,
// head) in parallel, blockwise over chunks of T rows with single-threaded
// GEMMs on strided rows: per block the T x T decay-masked scores, their product
// with the values, the cross-block term from the state S [Dk, Dv], and S's
// update, so time and memory are linear in L (the parallel form's normalizer
// adds an O(L^2) pass of |q . k| sums, still blockwise). The backward uses the
// same blocks: a forward sweep (dq, with S) and a backward sweep (dk, dv, with
// U = sum_n gamma^(n - block end) q_n dR_n^T).
#include "nn/retnet/retention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <exception>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/activations.h"
#include "kernels/gemm.h"
#include "kernels/rmsnorm.h"
#include "nn/linear.h"

namespace mf {

namespace {

constexpr const char* kOp = "[retention]";
constexpr double kParallelMaxScale = 5e4;  // torchscale's clamp(max=5e4) of the parallel form


// theta_i = 10000^(-i / (Dk/2 - 1)) for i < Dk/2 (torchscale's 1 / 10000^linspace(0, 1, Dk/2)).
std::vector<double> rotation_angles(std::int64_t key_dim) {
  const std::int64_t half = key_dim / 2;
  std::vector<double> theta(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i)
    theta[i] = half == 1 ? 1.0 : std::pow(10000.0, -static_cast<double>(i) / static_cast<double>(half - 1));
  return theta;
}

// cos and sin of (past + t) theta_i for t < L, i < Dk/2 ([L, Dk/2] each).
struct RotationTable {
  std::int64_t seq_len = 0, half = 0;
  std::vector<float> cos_t, sin_t;
  RotationTable(std::int64_t length, std::int64_t past, std::int64_t key_dim)
      : seq_len(length), half(key_dim / 2), cos_t(static_cast<std::size_t>(length * (key_dim / 2))),
        sin_t(cos_t.size()) {
    const std::vector<double> theta = rotation_angles(key_dim);
    for (std::int64_t t = 0; t < seq_len; ++t)
      for (std::int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(past + t) * theta[i];
        cos_t[t * half + i] = static_cast<float>(std::cos(angle));
        sin_t[t * half + i] = static_cast<float>(std::sin(angle));
      }
  }
};

// rows [B*L, H*Dk] in place: the theta shift at position (row mod L) of the
// table, or its transpose (the backward).
void theta_shift(const Tensor& rows, const RotationTable& table, std::int64_t heads, bool transpose) {
  const std::int64_t half = table.half, n = rows.size(0);
  const float sign = transpose ? -1.0f : 1.0f;
  float* r = rows.data<float>();
#pragma omp parallel for schedule(static) if (n * heads * half >= (1 << 14))
  for (std::int64_t row = 0; row < n; ++row) {
    const float* c = table.cos_t.data() + (row % table.seq_len) * half;
    const float* s = table.sin_t.data() + (row % table.seq_len) * half;
    for (std::int64_t h = 0; h < heads; ++h) {
      float* x = r + (row * heads + h) * 2 * half;
      for (std::int64_t i = 0; i < half; ++i) {
        // forward: (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin); transpose: sin -> -sin
        const float x0 = x[2 * i], x1 = x[2 * i + 1], si = sign * s[i];
        x[2 * i] = x0 * c[i] - x1 * si;
        x[2 * i + 1] = x1 * c[i] + x0 * si;
      }
    }
  }
}

void scale_in_place(const Tensor& t, float factor) {
  float* p = t.data<float>();
  const std::int64_t n = t.numel();
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
  for (std::int64_t i = 0; i < n; ++i) p[i] *= factor;
}

// The sizes of the blockwise kernels. Rows of q/k have ld H*Dk, rows of v/R ld H*Dv.
struct Geometry {
  std::int64_t batch, seq_len, heads, dk, dv, block;
  std::int64_t ldk() const { return heads * dk; }
  std::int64_t ldv() const { return heads * dv; }
  std::int64_t scratch_floats() const { return block * block + block * std::max(dk, dv) + dk * dv; }
};

// gamma_h^j for j = 0..T (float) per head.
std::vector<std::vector<float>> decay_powers(std::int64_t heads, std::int64_t block) {
  std::vector<std::vector<float>> gp(static_cast<std::size_t>(heads));
  for (std::int64_t h = 0; h < heads; ++h) {
    const double lg = std::log(retention_decay(h));
    for (std::int64_t j = 0; j <= block; ++j) gp[h].push_back(static_cast<float>(std::exp(lg * j)));
  }
  return gp;
}

// sum_{j=0}^{t} gamma^j, and its square root (D's row normalization of row t).
double decay_sum(double gamma, std::int64_t t) {
  return -std::expm1(static_cast<double>(t + 1) * std::log(gamma)) / (1.0 - gamma);
}
double decay_row_norm(double gamma, std::int64_t t) { return std::sqrt(decay_sum(gamma, t)); }

// The rule "key j is visible to query i with weight gamma^(i-j)" of a block's
// scores a [tc, tc]: a[i, j] *= gamma^(i-j) for j <= i, else 0. abs_sum (or
// null) gets sum_j |a[i, j]| after masking.
void decay_mask(float* a, std::int64_t tc, const float* gp, double* abs_sum) {
  for (std::int64_t i = 0; i < tc; ++i) {
    float* row = a + i * tc;
    double sum = 0;
    for (std::int64_t j = 0; j <= i; ++j) {
      row[j] *= gp[i - j];
      sum += std::fabs(row[j]);
    }
    std::fill(row + i + 1, row + tc, 0.0f);
    if (abs_sum) abs_sum[i] = sum;
  }
}

// dst[i, :] = src[i, :] * gp[offset + sign * i] for i < rows (a row-scaled copy).
void scaled_rows(float* dst, const float* src, std::int64_t ld, std::int64_t rows, std::int64_t width,
                 const float* gp, std::int64_t offset, std::int64_t sign) {
  for (std::int64_t i = 0; i < rows; ++i) {
    const float f = gp[offset + sign * i];
    for (std::int64_t c = 0; c < width; ++c) dst[i * width + c] = src[i * ld + c] * f;
  }
}

// Runs fn(i, scratch) for every (sequence, head) i, in parallel unless the
// work is too small to pay for a parallel region (a generation step: about
// (Dk + Dv) T multiply-adds per row); scratch is this thread's
// Geometry::scratch_floats() floats.
template <typename Fn>
void for_each_head(const Geometry& g, const Fn& fn) {
  constexpr std::int64_t kParallelMinWork = std::int64_t{1} << 18;  // multiply-adds
  const std::int64_t count = g.batch * g.heads, work = count * g.seq_len * g.block * (g.dk + g.dv);
  const int threads = omp_in_parallel() || work < kParallelMinWork
                          ? 1
                          : static_cast<int>(std::min<std::int64_t>(num_threads(), count));
  Tensor scratch = Tensor::empty({threads, g.scratch_floats()});
  float* base = scratch.data<float>();
  std::exception_ptr error;
  if (threads == 1) {  // a plain loop: an inactive region would give each GEMM inside a nested team
    for (std::int64_t i = 0; i < count; ++i) fn(i, base);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (std::int64_t i = 0; i < count; ++i) {
    try {
      fn(i, base + omp_get_thread_num() * g.scratch_floats());
    } catch (...) {
#pragma omp critical(mf_retention_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// R (times the normalizer) of every (sequence, head): out [N, H*Dv] = c R,
// normalizer [N*H] = c. state: [B, H, Dk, Dv] S before position `past` (read
// and updated) or null (S starts at 0, past = 0).
void core_forward(float* out, float* normalizer, const float* q, const float* k, const float* v, float* state,
                  std::int64_t past, RetentionForm form, const Geometry& g) {
  const auto gp_all = decay_powers(g.heads, g.block);
  const std::int64_t T = g.block, ldk = g.ldk(), ldv = g.ldv(), dk = g.dk, dv = g.dv, L = g.seq_len;
  for_each_head(g, [&](std::int64_t bh, float* scratch) {
    const std::int64_t b = bh / g.heads, h = bh % g.heads;
    const float* gp = gp_all[h].data();
    const double gamma = retention_decay(h), log_gamma = std::log(gamma);
    float* a = scratch;                     // [T, T] block scores
    float* rows = a + T * T;                // [T, max(Dk, Dv)] row-scaled copies
    float* s = state ? state + bh * dk * dv : rows + T * std::max(dk, dv);  // [Dk, Dv]
    if (!state) std::fill_n(s, dk * dv, 0.0f);
    bool s_used = state != nullptr;
    std::vector<double> abs_sum(static_cast<std::size_t>(T));
    for (std::int64_t c0 = 0; c0 < L; c0 += T) {
      const std::int64_t tc = std::min(T, L - c0);
      const float* qc = q + ((b * L + c0) * g.heads + h) * dk;
      const float* kc = k + ((b * L + c0) * g.heads + h) * dk;
      const float* vc = v + ((b * L + c0) * g.heads + h) * dv;
      float* oc = out + ((b * L + c0) * g.heads + h) * dv;
      // Intra-block: R_c = (Q_c K_c^T . D) V_c
      gemm(Trans::N, Trans::T, tc, tc, dk, 1.0f, qc, ldk, kc, ldk, 0.0f, a, tc);
      decay_mask(a, tc, gp, abs_sum.data());
      gemm(Trans::N, Trans::N, tc, dv, tc, 1.0f, a, tc, vc, ldv, 0.0f, oc, ldv);
      // Cross-block: R_c += diag(gamma^(i+1)) Q_c S
      if (s_used) {
        scaled_rows(rows, qc, ldk, tc, dk, gp, 1, 1);
        gemm(Trans::N, Trans::N, tc, dv, dk, 1.0f, rows, dk, s, dv, 1.0f, oc, ldv);
      }
      // Normalizers (detached constants) of the block's rows.
      double cross = 1.0;
      if (form == RetentionForm::Chunkwise && c0 > 0) {  // torchscale's kv_scale of S_c / sum_{j<T} gamma^j
        double worst = 0;
        for (std::int64_t col = 0; col < dv; ++col) {
          double sum = 0;
          for (std::int64_t r = 0; r < dk; ++r) sum += std::fabs(s[r * dv + col]);
          worst = std::max(worst, sum);
        }
        cross = std::max(worst / decay_sum(gamma, T - 1), 1.0);
      }
      if (form == RetentionForm::Parallel) {  // |q . k| sums over the earlier (full) blocks
        for (std::int64_t c1 = 0; c1 < c0; c1 += T) {
          const float* kb = k + ((b * L + c1) * g.heads + h) * dk;
          gemm(Trans::N, Trans::T, tc, T, dk, 1.0f, qc, ldk, kb, ldk, 0.0f, a, T);
          // gamma^((c0 + i) - (c1 + j)) = gamma^(c0 - c1 - (T-1)) gamma^i gamma^(T-1-j), all exponents >= 0
          const double block_decay = std::exp(log_gamma * static_cast<double>(c0 - c1 - (T - 1)));
          for (std::int64_t i = 0; i < tc; ++i) {
            double sum = 0;
            for (std::int64_t j = 0; j < T; ++j) sum += std::fabs(a[i * T + j]) * gp[T - 1 - j];
            abs_sum[i] += sum * gp[i] * block_decay;
          }
        }
      }
      for (std::int64_t i = 0; i < tc; ++i) {
        double c = 0;
        if (form == RetentionForm::Recurrent) {
          c = 1.0 / decay_row_norm(gamma, past + c0 + i);
        } else if (form == RetentionForm::Chunkwise) {
          const double r = decay_row_norm(gamma, i);
          c = 1.0 / (r * std::max(std::max(abs_sum[i] / r, 1.0), cross));
        } else {
          const double r = decay_row_norm(gamma, c0 + i);
          c = 1.0 / (r * std::clamp(abs_sum[i] / r, 1.0, kParallelMaxScale));
        }
        const auto cf = static_cast<float>(c);
        for (std::int64_t col = 0; col < dv; ++col) oc[i * ldv + col] *= cf;
        normalizer[(b * L + c0 + i) * g.heads + h] = cf;
      }
      // S = gamma^tc S + sum_j gamma^(tc-1-j) k_j v_j^T (skipped after the last block without a state)
      if (state || c0 + tc < L) {
        scaled_rows(rows, kc, ldk, tc, dk, gp, tc - 1, -1);
        gemm(Trans::T, Trans::N, dk, dv, tc, 1.0f, rows, dk, vc, ldv, s_used ? gp[tc] : 0.0f, s, dv);
        s_used = true;
      }
    }
  });
}

// From dR [N, H*Dv] (the gradient of R, already times c): dq, dk [N, H*Dk] and
// dv [N, H*Dv], overwritten.
void core_backward(float* dq, float* dk_out, float* dv_out, const float* dr, const float* q, const float* k,
                   const float* v, const Geometry& g) {
  const auto gp_all = decay_powers(g.heads, g.block);
  const std::int64_t T = g.block, ldk = g.ldk(), ldv = g.ldv(), dk = g.dk, dv = g.dv, L = g.seq_len;
  for_each_head(g, [&](std::int64_t bh, float* scratch) {
    const std::int64_t b = bh / g.heads, h = bh % g.heads;
    const float* gp = gp_all[h].data();
    float* a = scratch;                              // [T, T]
    float* rows = a + T * T;                         // [T, max(Dk, Dv)]
    float* s = rows + T * std::max(dk, dv);          // [Dk, Dv]: S, then U
    auto at = [&](std::int64_t c0, std::int64_t width) { return ((b * L + c0) * g.heads + h) * width; };
    // Forward sweep: dQ_c = (dR_c V_c^T . D) K_c + diag(gamma^(i+1)) dR_c S^T.
    for (std::int64_t c0 = 0; c0 < L; c0 += T) {
      const std::int64_t tc = std::min(T, L - c0);
      gemm(Trans::N, Trans::T, tc, tc, dv, 1.0f, dr + at(c0, dv), ldv, v + at(c0, dv), ldv, 0.0f, a, tc);
      decay_mask(a, tc, gp, nullptr);
      gemm(Trans::N, Trans::N, tc, dk, tc, 1.0f, a, tc, k + at(c0, dk), ldk, 0.0f, dq + at(c0, dk), ldk);
      if (c0 > 0) {
        scaled_rows(rows, dr + at(c0, dv), ldv, tc, dv, gp, 1, 1);
        gemm(Trans::N, Trans::T, tc, dk, dv, 1.0f, rows, dv, s, dv, 1.0f, dq + at(c0, dk), ldk);
      }
      if (c0 + tc < L) {
        scaled_rows(rows, k + at(c0, dk), ldk, tc, dk, gp, tc - 1, -1);
        gemm(Trans::T, Trans::N, dk, dv, tc, 1.0f, rows, dk, v + at(c0, dv), ldv, c0 > 0 ? gp[tc] : 0.0f, s, dv);
      }
    }
    // Backward sweep, U = sum_{n >= next block} gamma^(n - next block start) q_n dR_n^T:
    // dK_c = (dR_c V_c^T . D)^T Q_c + diag(gamma^(tc-j)) V_c U^T,
    // dV_c = (Q_c K_c^T . D)^T dR_c + diag(gamma^(tc-j)) K_c U.
    const std::int64_t last = ((L - 1) / T) * T;
    for (std::int64_t c0 = last; c0 >= 0; c0 -= T) {
      const std::int64_t tc = std::min(T, L - c0);
      gemm(Trans::N, Trans::T, tc, tc, dv, 1.0f, dr + at(c0, dv), ldv, v + at(c0, dv), ldv, 0.0f, a, tc);
      decay_mask(a, tc, gp, nullptr);
      gemm(Trans::T, Trans::N, tc, dk, tc, 1.0f, a, tc, q + at(c0, dk), ldk, 0.0f, dk_out + at(c0, dk), ldk);
      gemm(Trans::N, Trans::T, tc, tc, dk, 1.0f, q + at(c0, dk), ldk, k + at(c0, dk), ldk, 0.0f, a, tc);
      decay_mask(a, tc, gp, nullptr);
      gemm(Trans::T, Trans::N, tc, dv, tc, 1.0f, a, tc, dr + at(c0, dv), ldv, 0.0f, dv_out + at(c0, dv), ldv);
      if (c0 < last) {
        scaled_rows(rows, v + at(c0, dv), ldv, tc, dv, gp, tc, -1);
        gemm(Trans::N, Trans::T, tc, dk, dv, 1.0f, rows, dv, s, dv, 1.0f, dk_out + at(c0, dk), ldk);
        scaled_rows(rows, k + at(c0, dk), ldk, tc, dk, gp, tc, -1);
        gemm(Trans::N, Trans::N, tc, dv, dk, 1.0f, rows, dk, s, dv, 1.0f, dv_out + at(c0, dv), ldv);
      }
      if (c0 > 0) {
        scaled_rows(rows, q + at(c0, dk), ldk, tc, dk, gp, 0, 1);
        gemm(Trans::T, Trans::N, dk, dv, tc, 1.0f, rows, dk, dr + at(c0, dv), ldv, c0 < last ? gp[tc] : 0.0f, s,
             dv);
      }
    }
  });
}

void check_weight(const Parameter* w, const char* role, const Shape& shape) {
  MF_CHECK(w != nullptr, kOp, " parameter ", role, " of shape ", shape_str(shape), " is required but null");
  MF_CHECK(w->value.defined() && w->value.shape() == shape && w->value.is_contiguous() &&
               w->value.dtype() == DType::F32,
           kOp, " parameter ", role, " ('", w->name, "') must be a contiguous float32 tensor of shape ",
           shape_str(shape), " but has shape ", w->value.defined() ? shape_str(w->value.shape()) : "(undefined)");
}

}  // namespace

const char* retention_form_name(RetentionForm form) {
  switch (form) {
    case RetentionForm::Parallel: return "parallel";
    case RetentionForm::Chunkwise: return "chunkwise";
    case RetentionForm::Recurrent: return "recurrent";
  }
  return "?";
}

double retention_decay(std::int64_t head) { return 1.0 - std::exp2(-5.0 - static_cast<double>(head)); }

RetentionState retention_new_state(std::int64_t batch, const RetentionParams& p) {
  MF_CHECK(batch >= 1, kOp, " a generation state needs batch >= 1 but got ", batch);
  return RetentionState{Tensor::zeros({batch, p.num_heads, p.key_dim, p.value_dim}), 0};
}

std::vector<const Tensor*> RetentionSaved::tensors() const {
  std::vector<const Tensor*> all;
  for (const Tensor* t : {&q, &k, &v, &g, &retained, &rstd, &normalizer, &gated})
    if (t->defined()) all.push_back(t);
  return all;
}

void retention_check(const Tensor& x, std::int64_t batch, std::int64_t seq_len, const RetentionParams& p) {
  MF_CHECK(p.num_heads >= 1, kOp, " num_heads must be >= 1 but is ", p.num_heads);
  MF_CHECK(p.key_dim >= 2 && p.key_dim % 2 == 0, kOp, " the key dim per head (hidden / heads) must be even and >= 2 ",
           "(the rotation turns pairs of channels) but is ", p.key_dim);
  MF_CHECK(p.value_dim >= 1, kOp, " the value dim per head must be >= 1 but is ", p.value_dim);
  MF_CHECK(p.chunk_size >= 1, kOp, " option 'chunk_size' must be >= 1 but is ", p.chunk_size);
  MF_CHECK(p.eps >= 0.0f && std::isfinite(p.eps), kOp, " option 'group_norm_eps' must be finite and >= 0 but is ",
           p.eps);
  MF_CHECK(x.defined() && x.dim() == 2 && x.dtype() == DType::F32 && x.is_contiguous(), kOp,
           " input must be a contiguous float32 [B*L, C] tensor but has shape ",
           x.defined() ? shape_str(x.shape()) : "(undefined)");
  MF_CHECK(batch >= 1 && seq_len >= 1 && x.size(0) == batch * seq_len, kOp, " input has ", x.size(0),
           " rows but batch ", batch, " x seq_len ", seq_len, " were given");
  const std::int64_t c = x.size(1), kd = p.num_heads * p.key_dim, vd = p.num_heads * p.value_dim;
  check_weight(p.q, "q_proj", {kd, c});
  check_weight(p.k, "k_proj", {kd, c});
  check_weight(p.v, "v_proj", {vd, c});
  check_weight(p.g, "g_proj", {vd, c});
  check_weight(p.o, "out_proj", {c, vd});
  if (p.q_bias) check_weight(p.q_bias, "q_proj bias", {kd});
  if (p.k_bias) check_weight(p.k_bias, "k_proj bias", {kd});
  if (p.v_bias) check_weight(p.v_bias, "v_proj bias", {vd});
  if (p.g_bias) check_weight(p.g_bias, "g_proj bias", {vd});
  if (p.o_bias) check_weight(p.o_bias, "out_proj bias", {c});
}

void retention_forward(const Tensor& y, RetentionSaved* saved, const Tensor& x, std::int64_t batch,
                       std::int64_t seq_len, RetentionForm form, RetentionState* state, const RetentionParams& p) {
  retention_check(x, batch, seq_len, p);
  y.check_shape(x.shape(), "retention", "y");
  if (state) {
    MF_CHECK(form == RetentionForm::Recurrent, kOp, " a call with a generation state runs the recurrent form, not ",
             retention_form_name(form));
    MF_CHECK(saved == nullptr, kOp, " a call with a generation state is forward only (no saved activations)");
    MF_CHECK(state->kv.defined() && state->kv.shape() == Shape({batch, p.num_heads, p.key_dim, p.value_dim}) &&
                 state->kv.is_contiguous(),
             kOp, " generation state must hold a contiguous [B, H, Dk, Dv] = ",
             shape_str({batch, p.num_heads, p.key_dim, p.value_dim}), " tensor but has ",
             state->kv.defined() ? shape_str(state->kv.shape()) : "(undefined)");
  }
  const std::int64_t n = batch * seq_len, heads = p.num_heads, vd = heads * p.value_dim;
  const std::int64_t past = state ? state->past : 0;
  const Tensor q = linear_forward(x, p.q->value, bias_of(p.q_bias));  // [N, H*Dk]
  const Tensor k = linear_forward(x, p.k->value, bias_of(p.k_bias));  // [N, H*Dk]
  const Tensor v = linear_forward(x, p.v->value, bias_of(p.v_bias));  // [N, H*Dv]
  const Tensor g = linear_forward(x, p.g->value, bias_of(p.g_bias));  // [N, H*Dv]
  scale_in_place(k, static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.key_dim))));
  const RotationTable rotation(seq_len, past, p.key_dim);
  theta_shift(q, rotation, heads, false);
  theta_shift(k, rotation, heads, false);
  const Tensor retained = Tensor::empty({n, vd}), normalizer = Tensor::empty({n * heads});
  const Geometry geo{batch, seq_len, heads, p.key_dim, p.value_dim, std::min(p.chunk_size, seq_len)};
  core_forward(retained.data<float>(), normalizer.data<float>(), q.data<float>(), k.data<float>(),
               v.data<float>(), state ? state->kv.data<float>() : nullptr, past, form, geo);
  const Tensor rstd = Tensor::empty({n * heads}), normed = Tensor::empty({n, vd}), gated = Tensor::empty({n, vd});
  rmsnorm_forward(normed.data<float>(), rstd.data<float>(), retained.data<float>(), nullptr, n * heads,
                  p.value_dim, p.eps);
  swiglu_forward(gated.data<float>(), g.data<float>(), normed.data<float>(), n * vd);
  linear_forward(y, gated, p.o->value, bias_of(p.o_bias));
  if (state) state->past += seq_len;
  if (saved) *saved = RetentionSaved{q, k, v, g, retained, rstd, normalizer, gated};
}

void retention_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const RetentionSaved& s,
                        std::int64_t batch, std::int64_t seq_len, const RetentionParams& p) {
  retention_check(x, batch, seq_len, p);
  dx.check_shape(x.shape(), "retention", "dx");
  dy.check_shape(x.shape(), "retention", "dy");
  const std::int64_t n = batch * seq_len, heads = p.num_heads, vd = heads * p.value_dim;
  MF_CHECK(s.retained.defined() && s.retained.shape() == Shape({n, vd}) && s.q.defined() && s.gated.defined(), kOp,
           " backward called without the saved activations of a forward of this shape");
  // out = gated Wo^T: dgated = dy Wo, dWo += dy^T gated.
  const Tensor dgated = Tensor::empty({n, vd});
  linear_backward(dgated, p.o->grad, bias_grad_of(p.o_bias), dy, s.gated, p.o->value);
  // gated = swish(g) * Y: dg, dY (Y recomputed from O and its rstd).
  const Tensor normed = Tensor::empty({n, vd}), dg = Tensor::empty({n, vd}), dnormed = Tensor::empty({n, vd});
  rmsnorm_forward(normed.data<float>(), nullptr, s.retained.data<float>(), nullptr, n * heads, p.value_dim, p.eps);
  swiglu_backward(dg.data<float>(), dnormed.data<float>(), dgated.data<float>(), s.g.data<float>(),
                  normed.data<float>(), n * vd);
  // Y = RMSNorm(O): dO; then dR = c dO (c detached).
  const Tensor dr = Tensor::empty({n, vd});
  rmsnorm_backward(dr.data<float>(), nullptr, dnormed.data<float>(), s.retained.data<float>(), nullptr,
                   s.rstd.data<float>(), n * heads, p.value_dim);
  {
    float* d = dr.data<float>();
    const float* c = s.normalizer.data<float>();
    const std::int64_t rows = n * heads, dv = p.value_dim;
#pragma omp parallel for schedule(static) if (rows * dv >= (1 << 16))
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t col = 0; col < dv; ++col) d[r * dv + col] *= c[r];
  }
  const Tensor dq = Tensor::empty({n, heads * p.key_dim}), dk = Tensor::empty({n, heads * p.key_dim});
  const Tensor dv = Tensor::empty({n, vd});
  const Geometry geo{batch, seq_len, heads, p.key_dim, p.value_dim, std::min(p.chunk_size, seq_len)};
  core_backward(dq.data<float>(), dk.data<float>(), dv.data<float>(), dr.data<float>(), s.q.data<float>(),
                s.k.data<float>(), s.v.data<float>(), geo);
  const RotationTable rotation(seq_len, 0, p.key_dim);
  theta_shift(dq, rotation, heads, true);
  theta_shift(dk, rotation, heads, true);
  scale_in_place(dk, static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.key_dim))));
  linear_backward(dx, p.q->grad, bias_grad_of(p.q_bias), dq, x, p.q->value);
  linear_backward(dx, p.k->grad, bias_grad_of(p.k_bias), dk, x, p.k->value, /*accumulate_din=*/true);
  linear_backward(dx, p.v->grad, bias_grad_of(p.v_bias), dv, x, p.v->value, /*accumulate_din=*/true);
  linear_backward(dx, p.g->grad, bias_grad_of(p.g_bias), dg, x, p.g->value, /*accumulate_din=*/true);
}

}  // namespace mf
