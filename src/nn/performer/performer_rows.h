// Internal to src/nn/performer (not an API): the row-level pieces that the
// non-causal path (performer.cpp) and the causal scan (performer_causal.cpp)
// share: the call geometry, the feature map forward and backward on blocks of
// rows, [v, 1] rows, the output rows and their gradient. Math: performer.h.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/vec_exp.h"
#include "nn/performer/performer.h"

namespace mf::performer_detail {

// The running max before any real key: exp(kNoKey - M) is 0 for every real M,
// and exp(0) = 1 multiplies only zero rows (no key yet).
inline constexpr float kNoKey = -1e30f;
// Non-causal rows per block of keys or queries (a [rows, m] feature block).
inline constexpr std::int64_t kRowBlock = 128;

// exp(min(a - b, 0)): every stabilizer factor (its argument is <= 0 for real keys).
inline float decay(float a, float b) { return exp_approx(std::min(a - b, 0.0f)); }

inline float row_max(const float* row, std::int64_t n) {
  float mx = row[0];
  for (std::int64_t f = 1; f < n; ++f) mx = std::max(mx, row[f]);
  return mx;
}

inline double sum_sq(const float* x, std::int64_t n) {
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

inline bool is_real(const std::int32_t* mask, std::int64_t row) { return mask == nullptr || mask[row] != 0; }

// Per-task pointers into the token-major tensors.
struct TaskRows {
  std::int64_t b, kvh;
  std::int64_t row0;  // b * L
};

// logits [rows, m] = c x W^T, x rows at stride ldx.
void feature_logits(float* logits, const float* x, std::int64_t ldx, std::int64_t rows, const Geometry& g);
// Full features from logits (queries; non-causal keys): softmax r (exp(z - diag - stab) + eps), relu relu(z) + eps.
void full_features(float* feat, const float* logits, const float* x, std::int64_t ldx, std::int64_t rows,
                   const float* stab, const Geometry& g);
// dz = dfeat * dfeat/dz in place (the stabilizer is a constant), then
// dx (rows at lddx) = c dz W (- c^2 x sum_f dz for softmax's diag term).
void feature_backward(float* dx, std::int64_t lddx, float* dfeat, const float* feat, const float* logits,
                      const float* x, std::int64_t ldx, std::int64_t rows, float additive, const Geometry& g);
// va [rows, d+1] = [v, 1] (zero rows for padding).
void augment_values(float* va, const float* v, std::int64_t ldv, std::int64_t rows, const std::int32_t* mask,
                    const Geometry& g);
// out_i = oa_i[:d] / oa_i[d] (0 when the row saw no key) for rows r0.. of query
// head h; a training forward also keeps den_i = oa_i[d] and the query stabilizer.
void finish_rows(float* out, PerformerAttentionSaved* s, std::int64_t r0, std::int64_t h, const float* oa,
                 const float* qstab, std::int64_t rows, const Geometry& g);
// doa_i = [dout_i / den_i, -(dout_i . out_i) / den_i]: the gradient of the augmented row.
void augmented_grad(float* doa, const float* dout, const float* out, std::int64_t ldo, const float* den,
                    std::int64_t ldden, std::int64_t rows, const Geometry& g);

// The causal scan of one (sequence, KV head) (performer_causal.cpp): the
// prefix state exp_state [m, d+1], plain [d+1] and ref carried in and out;
// with `s`, the per-chunk states, stabilizers and denominators are saved.
void causal_forward_task(const TaskRows& t, float* out, PerformerAttentionSaved* s, float* exp_state, float* plain,
                         float& ref, const float* q, const float* k, const float* v, const std::int32_t* mask,
                         const Geometry& g);
// Its backward: dq rows of the task's query heads, dk and dv rows of its KV head (overwritten).
void causal_backward_task(const TaskRows& t, float* dq, float* dk, float* dv, const float* dout,
                          const PerformerAttentionSaved& s, const float* q, const float* k, const float* v,
                          const std::int32_t* mask, const Geometry& g);

}  // namespace mf::performer_detail
