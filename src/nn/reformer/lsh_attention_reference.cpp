// Reformer LSH attention, plain reference (double, loops): the specification
// the fast path and the generation step are tested against. Each query
// collects its entries over every round's window (slot by slot, duplicates
// included), and the rounds are combined as one softmax over the union
// (equal to HF's per-round lse weighting; see lsh_attention.h).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "nn/reformer/lsh_attention.h"

namespace mf::reference {

namespace {

using Vec = std::vector<double>;

// rows [N, out] = x [N, C] W^T (+ b), in double.
Vec project(const Tensor& x, const Parameter* w, const Parameter* b) {
  const std::int64_t n = x.size(0), c = x.size(1), out = w->value.size(0);
  const float* xp = x.data<float>();
  const float* wp = w->value.data<float>();
  Vec r(static_cast<std::size_t>(n * out));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t o = 0; o < out; ++o) {
      double s = b ? b->value.data<float>()[o] : 0.0;
      for (std::int64_t k = 0; k < c; ++k) s += double(xp[i * c + k]) * wp[o * c + k];
      r[i * out + o] = s;
    }
  return r;
}

struct Entry {
  std::int64_t key;  // position within the sequence
  double score;
  bool constant;  // a mask value: no gradient
};

// The whole mechanism for one sequence and head, after the projections.
struct HeadProblem {
  std::int64_t len, padded, d, chunk, rounds, buckets;
  bool causal;
  const double* qk;  // row i at qk + i * stride
  const double* v;
  std::int64_t stride;
  const std::int32_t* mask;  // [L] or null
  const float* rot;          // R[h] [D, rounds, buckets/2]
  Vec keys;                  // [L, D]
  std::vector<std::vector<std::int64_t>> sorted;  // [rounds][Lp]

  bool valid(std::int64_t j) const { return j < len && (!mask || mask[j] != 0); }
  const double* q_row(std::int64_t i) const { return qk + i * stride; }

  void prepare() {
    keys.assign(static_cast<std::size_t>(len * d), 0.0);
    for (std::int64_t i = 0; i < len; ++i) {
      double ms = 0;
      for (std::int64_t e = 0; e < d; ++e) ms += q_row(i)[e] * q_row(i)[e];
      const double s = 1.0 / std::sqrt(ms / d + 1e-6) / std::sqrt(double(d));
      for (std::int64_t e = 0; e < d; ++e) keys[i * d + e] = q_row(i)[e] * s;
    }
    const std::int64_t half = buckets / 2;
    sorted.assign(rounds, {});
    for (std::int64_t r = 0; r < rounds; ++r) {
      std::vector<std::int64_t> bucket(padded, buckets);
      for (std::int64_t i = 0; i < len; ++i) {
        if (!valid(i)) continue;
        double best = -INFINITY;
        for (std::int64_t j = 0; j < buckets; ++j) {  // [rot ; -rot], first maximum
          double rot_j = 0;
          for (std::int64_t e = 0; e < d; ++e) rot_j += q_row(i)[e] * rot[(e * rounds + r) * half + j % half];
          if (j >= half) rot_j = -rot_j;
          if (rot_j > best) best = rot_j, bucket[i] = j;
        }
      }
      std::vector<std::int64_t>& order = sorted[r];
      order.resize(padded);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return bucket[a] < bucket[b]; });
    }
  }

  // Query i's entries over every round's window.
  std::vector<Entry> entries(std::int64_t i) const {
    std::vector<Entry> out;
    const std::int64_t chunks = rounds * padded / chunk;
    for (std::int64_t r = 0; r < rounds; ++r) {
      const std::int64_t slot = std::find(sorted[r].begin(), sorted[r].end(), i) - sorted[r].begin();
      const std::int64_t g = (r * padded + slot) / chunk;
      for (std::int64_t window_chunk : {(g + chunks - 1) % chunks, g})
        for (std::int64_t s = window_chunk * chunk; s < window_chunk * chunk + chunk; ++s) {
          const std::int64_t j = sorted[s / padded][s % padded];
          if (j >= len) continue;  // a pad slot: score -1e9, weight exactly 0, no row to read
          const LshKeyRole role = lsh_key_role(i, j, valid(j), causal);
          double score = role == LshKeyRole::Self ? kLshSelfMaskValue : kLshMaskValue;
          if (role == LshKeyRole::Scored) {
            score = 0;
            for (std::int64_t e = 0; e < d; ++e) score += q_row(i)[e] * keys[j * d + e];
          }
          out.push_back({j, score, role != LshKeyRole::Scored});
        }
    }
    return out;
  }

  static double logsumexp(const std::vector<Entry>& es) {
    double m = -INFINITY, s = 0;
    for (const Entry& e : es) m = std::max(m, e.score);
    for (const Entry& e : es) s += std::exp(e.score - m);
    return m + std::log(s);
  }
};

struct Setup {
  std::int64_t b, l, h, d, n, hd, padded;
  Vec qk, v;
  Setup(const Tensor& x, std::int64_t batch, std::int64_t seq_len, const LshAttentionParams& p)
      : b(batch), l(seq_len), h(p.num_heads), d(p.head_dim), n(batch * seq_len), hd(p.num_heads * p.head_dim),
        padded((seq_len + p.opt.chunk_length - 1) / p.opt.chunk_length * p.opt.chunk_length),
        qk(project(x, p.qk, p.qk_bias)), v(project(x, p.v, p.v_bias)) {}

  HeadProblem head(std::int64_t bi, std::int64_t hi, const Tensor& mask, const LshAttentionParams& p) const {
    const std::int64_t half = p.opt.n_buckets / 2;
    HeadProblem hp{l, padded, d, p.opt.chunk_length, p.opt.n_hashes, p.opt.n_buckets, p.opt.causal,
                   qk.data() + bi * l * hd + hi * d, v.data() + bi * l * hd + hi * d, hd,
                   mask.defined() ? mask.data<std::int32_t>() + bi * l : nullptr,
                   p.rotations->value.data<float>() + hi * d * p.opt.n_hashes * half, {}, {}};
    hp.prepare();
    return hp;
  }
};

// y [N, C] = out [N, hd] Wo^T (+ bo).
void output_projection(const Tensor& y, const Vec& out, const LshAttentionParams& p) {
  const std::int64_t n = y.size(0), c = y.size(1), hd = p.o->value.size(1);
  const float* wo = p.o->value.data<float>();
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t o = 0; o < c; ++o) {
      double s = p.o_bias ? p.o_bias->value.data<float>()[o] : 0.0;
      for (std::int64_t k = 0; k < hd; ++k) s += out[i * hd + k] * wo[o * hd + k];
      y.data<float>()[i * c + o] = static_cast<float>(s);
    }
}

}  // namespace

void lsh_attention_forward(const Tensor& y, const Tensor& x, std::int64_t batch, std::int64_t seq_len,
                           const Tensor& mask, const LshAttentionParams& p) {
  lsh_attention_check(x, batch, seq_len, mask, p);
  y.check_shape(x.shape(), "lsh_attention", "y");
  const Setup s(x, batch, seq_len, p);
  Vec out(static_cast<std::size_t>(s.n * s.hd), 0.0);
  for (std::int64_t bi = 0; bi < batch; ++bi)
    for (std::int64_t hi = 0; hi < s.h; ++hi) {
      const HeadProblem hp = s.head(bi, hi, mask, p);
      for (std::int64_t i = 0; i < seq_len; ++i) {
        const std::vector<Entry> es = hp.entries(i);
        const double lse = HeadProblem::logsumexp(es);
        double* o = out.data() + (bi * seq_len + i) * s.hd + hi * s.d;
        for (const Entry& e : es) {
          const double w = std::exp(e.score - lse);
          for (std::int64_t k = 0; k < s.d; ++k) o[k] += w * hp.v[e.key * s.hd + k];
        }
      }
    }
  output_projection(y, out, p);
}

void lsh_attention_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, std::int64_t batch,
                            std::int64_t seq_len, const Tensor& mask, const LshAttentionParams& p) {
  lsh_attention_check(x, batch, seq_len, mask, p);
  dx.check_shape(x.shape(), "lsh_attention", "dx");
  dy.check_shape(x.shape(), "lsh_attention", "dy");
  const Setup s(x, batch, seq_len, p);
  const std::int64_t n = s.n, hd = s.hd, d = s.d, c = x.size(1);
  const float* dyp = dy.data<float>();
  const float* wo = p.o->value.data<float>();
  // dout = dy Wo; out recomputed; dWo += dy^T out; dbo += sum dy.
  Vec dout(static_cast<std::size_t>(n * hd), 0.0), out(static_cast<std::size_t>(n * hd), 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t k = 0; k < hd; ++k)
      for (std::int64_t o = 0; o < c; ++o) dout[i * hd + k] += double(dyp[i * c + o]) * wo[o * hd + k];
  Vec dqk(static_cast<std::size_t>(n * hd), 0.0), dv(static_cast<std::size_t>(n * hd), 0.0);
  for (std::int64_t bi = 0; bi < batch; ++bi)
    for (std::int64_t hi = 0; hi < s.h; ++hi) {
      const HeadProblem hp = s.head(bi, hi, mask, p);
      Vec dkeys(static_cast<std::size_t>(seq_len * d), 0.0);
      const std::int64_t base = bi * seq_len * hd + hi * d;
      for (std::int64_t i = 0; i < seq_len; ++i) {
        const std::vector<Entry> es = hp.entries(i);
        const double lse = HeadProblem::logsumexp(es);
        double* o = out.data() + base + i * hd;
        for (const Entry& e : es)
          for (std::int64_t k = 0; k < d; ++k) o[k] += std::exp(e.score - lse) * hp.v[e.key * hd + k];
        const double* g = dout.data() + base + i * hd;
        double g_dot_out = 0;  // D_i = dout . out
        for (std::int64_t k = 0; k < d; ++k) g_dot_out += g[k] * o[k];
        for (const Entry& e : es) {
          const double pr = std::exp(e.score - lse);
          double g_dot_v = 0;
          for (std::int64_t k = 0; k < d; ++k) {
            dv[base + e.key * hd + k] += pr * g[k];
            g_dot_v += g[k] * hp.v[e.key * hd + k];
          }
          if (e.constant) continue;
          const double ds = pr * (g_dot_v - g_dot_out);  // dS = P (dP - D)
          for (std::int64_t k = 0; k < d; ++k) {
            dqk[base + i * hd + k] += ds * hp.keys[e.key * d + k];
            dkeys[e.key * d + k] += ds * hp.q_row(i)[k];
          }
        }
      }
      // Key normalization: k = x s / sqrt(D), s = (mean x^2 + eps)^-1/2:
      // dx = s / sqrt(D) (g - x s^2 (g . x) / D).
      for (std::int64_t j = 0; j < seq_len; ++j) {
        const double* q = hp.q_row(j);
        double ms = 0, gx = 0;
        for (std::int64_t k = 0; k < d; ++k) ms += q[k] * q[k], gx += dkeys[j * d + k] * q[k];
        const double sc = 1.0 / std::sqrt(ms / d + 1e-6);
        for (std::int64_t k = 0; k < d; ++k)
          dqk[base + j * hd + k] += sc / std::sqrt(double(d)) * (dkeys[j * d + k] - q[k] * sc * sc * gx / d);
      }
    }
  // Parameter gradients (+=) and dx (=).
  const float* xp = x.data<float>();
  float* dxp = dx.data<float>();
  Vec dxa(static_cast<std::size_t>(n * c), 0.0);
  for (auto [w, bias, grad] : {std::tuple{p.qk, p.qk_bias, &dqk}, std::tuple{p.v, p.v_bias, &dv}}) {
    const float* wp = w->value.data<float>();
    for (std::int64_t k = 0; k < hd; ++k) {
      for (std::int64_t col = 0; col < c; ++col) {
        double gw = 0;
        for (std::int64_t i = 0; i < n; ++i) gw += (*grad)[i * hd + k] * xp[i * c + col];
        w->grad.data<float>()[k * c + col] += static_cast<float>(gw);
      }
      if (bias) {
        double gb = 0;
        for (std::int64_t i = 0; i < n; ++i) gb += (*grad)[i * hd + k];
        bias->grad.data<float>()[k] += static_cast<float>(gb);
      }
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t col = 0; col < c; ++col) dxa[i * c + col] += (*grad)[i * hd + k] * wp[k * c + col];
    }
  }
  for (std::int64_t o = 0; o < c; ++o) {
    for (std::int64_t k = 0; k < hd; ++k) {
      double gw = 0;
      for (std::int64_t i = 0; i < n; ++i) gw += double(dyp[i * c + o]) * out[i * hd + k];
      p.o->grad.data<float>()[o * hd + k] += static_cast<float>(gw);
    }
    if (p.o_bias) {
      double gb = 0;
      for (std::int64_t i = 0; i < n; ++i) gb += dyp[i * c + o];
      p.o_bias->grad.data<float>()[o] += static_cast<float>(gb);
    }
  }
  for (std::int64_t i = 0; i < n * c; ++i) dxp[i] = static_cast<float>(dxa[i]);
}

void lsh_attention_generate_step(const Tensor& y, const Tensor& x, std::int64_t batch, std::int64_t t,
                                 const LshAttentionParams& p) {
  const std::int64_t c = x.size(1), len = t + 1;
  MF_CHECK(x.size(0) == batch * len, "[lsh_attention] reference step: x must hold ", len, " rows per sequence");
  y.check_shape({batch, c}, "lsh_attention", "y");
  LshAttentionParams causal = p;
  causal.opt.causal = true;
  Tensor full = Tensor::empty(x.shape());
  lsh_attention_forward(full, x, batch, len, Tensor(), causal);
  for (std::int64_t b = 0; b < batch; ++b) y.slice(0, b, b + 1).copy_from(full.slice(0, b * len + t, b * len + t + 1));
}

}  // namespace mf::reference
