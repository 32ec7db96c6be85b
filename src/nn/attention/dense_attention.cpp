// Dense reference attention: materializes the score matrix S and the
// probabilities P of each (batch, head) and applies the textbook formulas
// (Vaswani et al. 2017), forward and backward. It is the specification the
// flash kernels are tested against: simple, exact (double accumulation), slow.
// A block-sparse layout enters as its element mask (attention_layout_visible).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "core/error.h"
#include "nn/attention/attention_problem.h"

namespace mf {

namespace {

double dot(const float* a, const float* b, std::int64_t n) {
  double s = 0;
  for (std::int64_t x = 0; x < n; ++x) s += static_cast<double>(a[x]) * b[x];
  return s;
}

// Below this many multiply-adds in total a call runs on one thread: a
// parallel region costs a barrier, which on a loaded machine can wait a whole
// scheduler time slice (measured: tiny calls 200x slower with 2 threads).
constexpr std::int64_t kParallelMinWork = std::int64_t{1} << 18;

std::int64_t total_work(const AttentionProblem& p) {
  std::int64_t w = 0;
  for (std::int64_t b = 0; b < p.batch; ++b) w += p.q_len[b] * p.k_len[b];
  return w * p.hq * p.d;
}

// Runs body(t) for t in [0, n) in parallel; an exception thrown by a task
// (e.g. std::bad_alloc for a score matrix too large) is rethrown after the
// loop instead of terminating the program from inside the OpenMP region.
template <typename Body>
void parallel_tasks(std::int64_t n, std::int64_t work, const char* op, const Body& body) {
  bool failed = false;
  std::string message;
#pragma omp parallel for schedule(dynamic, 1) if (work >= kParallelMinWork)
  for (std::int64_t t = 0; t < n; ++t) {
    try {
      body(t);
    } catch (const std::bad_alloc&) {
#pragma omp critical(mf_dense_attention_error)
      if (!failed) {
        failed = true;
        message = "out of memory for the dense score matrix (use the flash implementation for long sequences)";
      }
    } catch (const std::exception& e) {
#pragma omp critical(mf_dense_attention_error)
      if (!failed) {
        failed = true;
        message = e.what();
      }
    }
  }
  if (failed) fail(op, " ", message);
}

// P[i, j] = exp(S[i, j] - LSE[i]) for visible keys, 0 otherwise, for query
// head h of batch entry b; P is [Lq, Lk]. If `lse_in` is null the LSE is
// computed here and written to `lse_out` (forward); otherwise it is read
// (backward recomputes P from the saved LSE, as the flash kernels do).
void softmax_probs(const AttentionProblem& p, std::int64_t b, std::int64_t h, const float* q, const float* k,
                   const float* lse_in, float* lse_out, std::vector<float>& P) {
  const std::int64_t lq = p.q_len[b], lk = p.k_len[b], d = p.d;
  const float* qh = q + p.q_off[b] + h * p.q_head_stride;
  const float* kh = k + p.k_off[b] + (h / p.group()) * p.k_head_stride;
  const std::int64_t lse_base = p.lse_off[b] + h * p.lse_head_stride;
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  std::vector<double> s(static_cast<std::size_t>(lk));
  std::vector<unsigned char> visible(static_cast<std::size_t>(lk));
  for (std::int64_t i = 0; i < lq; ++i) {
    // S[i, j] = scale * q_i . k_j + bias(i, j), over visible keys.
    double mx = kNegInf;
    bool any = false;
    for (std::int64_t j = 0; j < lk; ++j) {
      visible[j] = attention_visible(p, b, i, j) && attention_layout_visible(p, h, i + p.shift(b), j);
      if (!visible[j]) continue;
      s[j] = static_cast<double>(p.scale) * dot(qh + i * p.q_row_stride, kh + j * p.k_row_stride, d) +
             static_cast<double>(attention_bias(p, b, h, i, j));
      mx = any ? std::max(mx, s[j]) : s[j];
      any = true;
    }
    double row_lse = kNegInf;
    if (lse_in != nullptr) {
      row_lse = lse_in[lse_base + i];
    } else if (any) {
      // LSE = max + log sum exp(S - max): stable for logits of any size.
      double sum = 0;
      for (std::int64_t j = 0; j < lk; ++j)
        if (visible[j]) sum += std::exp(s[j] - mx);
      row_lse = mx + std::log(sum);
    }
    if (lse_out != nullptr) lse_out[lse_base + i] = static_cast<float>(row_lse);
    float* prow = P.data() + i * lk;
    // A row that sees no key (LSE = -inf) keeps P = 0: O = 0 and zero gradients.
    // A NaN LSE (NaN or infinite inputs) gives NaN P, which reaches O and the gradients.
    const bool empty = !any || row_lse == kNegInf;
    for (std::int64_t j = 0; j < lk; ++j)
      prow[j] = (!empty && visible[j]) ? static_cast<float>(std::exp(s[j] - row_lse)) : 0.0f;
  }
}

// Z = P o M / (1 - p): the dropped-out probabilities that multiply V
// (M[i, j] = attention_dropout_keep). Z = P without dropout.
void apply_dropout(const AttentionProblem& p, std::int64_t b, std::int64_t h, std::vector<float>& Z) {
  if (p.dropout_p <= 0.0f) return;
  const std::int64_t lq = p.q_len[b], lk = p.k_len[b];
  const float inv_keep = 1.0f / (1.0f - p.dropout_p);
  for (std::int64_t i = 0; i < lq; ++i)
    for (std::int64_t j = 0; j < lk; ++j) {
      float& z = Z[i * lk + j];
      if (z != 0.0f) z = attention_dropout_keep(p, b, h, i, j) ? z * inv_keep : 0.0f;
    }
}

}  // namespace

void dense_attention_forward(const AttentionProblem& p, const float* q, const float* k, const float* v, float* out,
                             float* lse) {
  const std::int64_t dv = p.dv;
  parallel_tasks(p.batch * p.hq, total_work(p), "[dense_attention_forward]", [&](std::int64_t t) {
    const std::int64_t b = t / p.hq, h = t % p.hq;
    const std::int64_t lq = p.q_len[b], lk = p.k_len[b];
    const float* vh = v + p.v_off[b] + (h / p.group()) * p.v_head_stride;
    float* oh = out + p.o_off[b] + h * p.o_head_stride;
    // P = softmax(S) over visible keys; LSE.
    std::vector<float> P(static_cast<std::size_t>(lq * lk));
    softmax_probs(p, b, h, q, k, nullptr, lse, P);
    // O = Z V with Z = dropout(P).
    apply_dropout(p, b, h, P);
    std::vector<double> acc(static_cast<std::size_t>(dv));
    for (std::int64_t i = 0; i < lq; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (std::int64_t j = 0; j < lk; ++j) {
        const double z = P[i * lk + j];
        if (z == 0.0) continue;
        const float* vj = vh + j * p.v_row_stride;
        for (std::int64_t x = 0; x < dv; ++x) acc[x] += z * vj[x];
      }
      float* orow = oh + i * p.o_row_stride;
      for (std::int64_t x = 0; x < dv; ++x) orow[x] = static_cast<float>(acc[x]);
    }
  });
}

// With Z = P o M / (1 - p) and O = Z V:
//   dV = Z^T dO;  dZ = dO V^T;  dP = dZ o M / (1 - p);
//   dS = P o (dP - D) with D_i = sum_j P_ij dP_ij = rowsum(dO o O);
//   dQ = scale dS K;  dK = scale dS^T Q  (ALiBi's bias does not depend on Q, K).
// Parallel over (batch, KV head): the query heads of one group are walked in
// order and their dK/dV contributions summed in one buffer, so there are no
// races and the result does not depend on the thread count.
void dense_attention_backward(const AttentionProblem& p, const float* q, const float* k, const float* v,
                              const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  const std::int64_t d = p.d, dvd = p.dv;  // q/k and v/out head dims
  parallel_tasks(p.batch * p.hkv, 2 * total_work(p), "[dense_attention_backward]", [&](std::int64_t t) {
    const std::int64_t b = t / p.hkv, kvh = t % p.hkv;
    const std::int64_t lq = p.q_len[b], lk = p.k_len[b];
    const std::int64_t kbase = p.k_off[b] + kvh * p.k_head_stride;
    const std::int64_t vbase = p.v_off[b] + kvh * p.v_head_stride;
    const float* kh = k + kbase;
    const float* vh = v + vbase;
    const double inv_keep = 1.0 / (1.0 - static_cast<double>(p.dropout_p));
    std::vector<double> dk_acc(static_cast<std::size_t>(lk * d), 0.0), dv_acc(static_cast<std::size_t>(lk * dvd), 0.0);
    std::vector<double> dq_row(static_cast<std::size_t>(d));
    std::vector<float> P(static_cast<std::size_t>(lq * lk));
    for (std::int64_t h = kvh * p.group(); h < (kvh + 1) * p.group(); ++h) {
      const std::int64_t qbase = p.q_off[b] + h * p.q_head_stride;
      const std::int64_t obase = p.o_off[b] + h * p.o_head_stride;
      softmax_probs(p, b, h, q, k, lse, nullptr, P);
      for (std::int64_t i = 0; i < lq; ++i) {
        const float* qi = q + qbase + i * p.q_row_stride;
        const float* oi = out + obase + i * p.o_row_stride;
        const float* doi = dout + obase + i * p.o_row_stride;
        // D_i = rowsum(dO o O).
        const double Di = dot(doi, oi, dvd);
        std::fill(dq_row.begin(), dq_row.end(), 0.0);
        for (std::int64_t j = 0; j < lk; ++j) {
          const double pij = P[i * lk + j];
          if (pij == 0.0) continue;
          // M_ij / (1 - p): the dropout factor shared by Z and dP.
          const double m = attention_dropout_keep(p, b, h, i, j) ? inv_keep : 0.0;
          const float* kj = kh + j * p.k_row_stride;
          const float* vj = vh + j * p.v_row_stride;
          // dV_j += Z_ij dO_i.
          const double zij = pij * m;
          if (zij != 0.0)
            for (std::int64_t x = 0; x < dvd; ++x) dv_acc[j * dvd + x] += zij * doi[x];
          // dP_ij = (dO_i . V_j) M_ij / (1 - p);  dS_ij = P_ij (dP_ij - D_i).
          const double dp = m != 0.0 ? dot(doi, vj, dvd) * m : 0.0;
          const double ds = pij * (dp - Di) * static_cast<double>(p.scale);
          // dQ_i += scale dS_ij K_j;  dK_j += scale dS_ij Q_i.
          for (std::int64_t x = 0; x < d; ++x) {
            dq_row[x] += ds * kj[x];
            dk_acc[j * d + x] += ds * qi[x];
          }
        }
        float* dqi = dq + qbase + i * p.q_row_stride;
        for (std::int64_t x = 0; x < d; ++x) dqi[x] = static_cast<float>(dq_row[x]);
      }
    }
    for (std::int64_t j = 0; j < lk; ++j) {
      for (std::int64_t x = 0; x < d; ++x) dk[kbase + j * p.k_row_stride + x] = static_cast<float>(dk_acc[j * d + x]);
      for (std::int64_t x = 0; x < dvd; ++x)
        dv[vbase + j * p.v_row_stride + x] = static_cast<float>(dv_acc[j * dvd + x]);
    }
  });
}

}  // namespace mf
