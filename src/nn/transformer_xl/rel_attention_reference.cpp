// The plain twin of rel_attention.cpp: the reference implementation's steps
// in double, with the literal _rel_shift on a dense [L, K] BD matrix
// (kimiyoung/transformer-xl, RelPartialLearnableMultiHeadAttn.forward).
#include <cmath>
#include <limits>
#include <vector>

#include "nn/transformer_xl/rel_attention.h"

namespace mf::reference {

namespace {

using Mat = std::vector<double>;  // row-major

// Everything the forward computes for one batch row (the backward reuses it).
struct Forward {
  std::int64_t L, M, K, C, H, D, HD, KD, group;
  Mat h;        // [K, C] cat(mem, x)
  Mat q, k, v;  // [L, HD], [K, KD], [K, KD]
  Mat pos;      // [K, C] R'_r = sinusoid(pos_seq[r]), pos_seq = K-1 .. 0 (clamped)
  Mat rk;       // [K, HD] r_head_k = r_net(R')
  Mat prob;     // [H, L, K] attention probabilities (0 where masked)
  Mat attn;     // [L, HD]
};

double at(const Tensor& t, std::int64_t i) { return static_cast<double>(t.data<float>()[i]); }

// The literal _rel_shift's index map: BD[i, j] = flat[L + i K + j] of the
// [L, K + 1] matrix [0 | BD_raw] read row-major. Returns (row, column of
// BD_raw), or column -1 for the zero pad.
std::pair<std::int64_t, std::int64_t> rel_shift_source(std::int64_t i, std::int64_t j, std::int64_t L,
                                                       std::int64_t K) {
  const std::int64_t flat = L + i * K + j;
  return {flat / (K + 1), flat % (K + 1) - 1};
}

Forward forward_row(const Tensor& x, const Tensor& memory, std::int64_t b, std::int64_t L,
                    const RelAttentionParams& p) {
  Forward f;
  f.L = L;
  f.M = memory.defined() ? memory.size(1) : 0;
  f.K = f.M + L;
  f.C = x.size(1);
  f.H = p.num_heads;
  f.D = p.head_dim;
  f.HD = f.H * f.D;
  f.KD = p.num_kv_heads * f.D;
  f.group = f.H / p.num_kv_heads;
  const std::int64_t K = f.K, C = f.C, HD = f.HD, KD = f.KD, M = f.M;
  f.h.assign(static_cast<std::size_t>(K * C), 0.0);
  for (std::int64_t r = 0; r < K; ++r)
    for (std::int64_t c = 0; c < C; ++c)
      f.h[r * C + c] = r < M ? at(memory, (b * M + r) * C + c) : at(x, (b * L + r - M) * C + c);
  auto project = [&](const Mat& in, std::int64_t rows, std::int64_t in_offset, const Tensor& w, std::int64_t w_row0,
                     std::int64_t width) {
    Mat out(static_cast<std::size_t>(rows * width), 0.0);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t o = 0; o < width; ++o) {
        double s = 0;
        for (std::int64_t c = 0; c < C; ++c) s += in[(in_offset + r) * C + c] * at(w, (w_row0 + o) * C + c);
        out[r * width + o] = s;
      }
    return out;
  };
  f.q = project(f.h, L, M, p.qkv->value, 0, HD);
  f.k = project(f.h, K, 0, p.qkv->value, HD, KD);
  f.v = project(f.h, K, 0, p.qkv->value, HD + KD, KD);
  f.pos.assign(static_cast<std::size_t>(K * C), 0.0);
  for (std::int64_t r = 0; r < K; ++r) {
    std::int64_t t = K - 1 - r;  // pos_seq = arange(K-1, -1, -1.0)
    if (p.clamp_len > 0 && t > p.clamp_len) t = p.clamp_len;
    for (std::int64_t c = 0; c < C / 2; ++c) {
      const double freq = 1.0 / std::pow(10000.0, static_cast<double>(2 * c) / static_cast<double>(C));
      f.pos[r * C + c] = std::sin(static_cast<double>(t) * freq);
      f.pos[r * C + C / 2 + c] = std::cos(static_cast<double>(t) * freq);
    }
  }
  f.rk = project(f.pos, K, 0, p.r->value, 0, HD);
  const double scale = 1.0 / std::sqrt(static_cast<double>(f.D));
  f.prob.assign(static_cast<std::size_t>(f.H * L * K), 0.0);
  f.attn.assign(static_cast<std::size_t>(L * HD), 0.0);
  for (std::int64_t h = 0; h < f.H; ++h) {
    Mat bd_raw(static_cast<std::size_t>(L * K));
    for (std::int64_t i = 0; i < L; ++i)
      for (std::int64_t r = 0; r < K; ++r) {
        double s = 0;
        for (std::int64_t d = 0; d < f.D; ++d)
          s += (f.q[i * HD + h * f.D + d] + at(p.v->value, h * f.D + d)) * f.rk[r * HD + h * f.D + d];
        bd_raw[i * K + r] = s;
      }
    for (std::int64_t i = 0; i < L; ++i) {
      std::vector<double> score(static_cast<std::size_t>(K), -std::numeric_limits<double>::infinity());
      double mx = -std::numeric_limits<double>::infinity();
      for (std::int64_t j = 0; j <= M + i; ++j) {  // dec_attn_mask: triu(ones(L, K), 1 + M)
        double ac = 0;
        for (std::int64_t d = 0; d < f.D; ++d)
          ac += (f.q[i * HD + h * f.D + d] + at(p.u->value, h * f.D + d)) * f.k[j * KD + h / f.group * f.D + d];
        const auto [row, col] = rel_shift_source(i, j, L, K);
        const double bd = col < 0 ? 0.0 : bd_raw[row * K + col];
        score[j] = scale * (ac + bd);
        mx = std::max(mx, score[j]);
      }
      double sum = 0;
      for (std::int64_t j = 0; j <= M + i; ++j) sum += std::exp(score[j] - mx);
      for (std::int64_t j = 0; j <= M + i; ++j) {
        const double pr = std::exp(score[j] - mx) / sum;
        f.prob[(h * L + i) * K + j] = pr;
        for (std::int64_t d = 0; d < f.D; ++d) f.attn[i * HD + h * f.D + d] += pr * f.v[j * KD + h / f.group * f.D + d];
      }
    }
  }
  return f;
}

}  // namespace

void rel_attention_forward(const Tensor& y, const Tensor& x, const Tensor& memory, std::int64_t batch,
                           std::int64_t seq_len, const RelAttentionParams& p) {
  rel_attention_check(x, memory, batch, seq_len, p);
  const std::int64_t C = x.size(1), HD = p.num_heads * p.head_dim;
  for (std::int64_t b = 0; b < batch; ++b) {
    const Forward f = forward_row(x, memory, b, seq_len, p);
    for (std::int64_t i = 0; i < seq_len; ++i)
      for (std::int64_t c = 0; c < C; ++c) {
        double s = 0;
        for (std::int64_t o = 0; o < HD; ++o) s += f.attn[i * HD + o] * at(p.o->value, c * HD + o);
        y.data<float>()[(b * seq_len + i) * C + c] = static_cast<float>(s);
      }
  }
}

void rel_attention_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& memory,
                            std::int64_t batch, std::int64_t seq_len, const RelAttentionParams& p) {
  rel_attention_check(x, memory, batch, seq_len, p);
  const std::int64_t C = x.size(1), H = p.num_heads, D = p.head_dim, HD = H * D, L = seq_len;
  const std::int64_t KD = p.num_kv_heads * D, group = H / p.num_kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  Mat g_qkv(static_cast<std::size_t>((HD + 2 * KD) * C), 0.0), g_r(static_cast<std::size_t>(HD * C), 0.0);
  Mat g_u(static_cast<std::size_t>(HD), 0.0), g_v(g_u.size(), 0.0), g_o(static_cast<std::size_t>(C * HD), 0.0);
  for (std::int64_t b = 0; b < batch; ++b) {
    const Forward f = forward_row(x, memory, b, L, p);
    const std::int64_t K = f.K, M = f.M;
    // o_net
    Mat da(static_cast<std::size_t>(L * HD), 0.0);
    for (std::int64_t i = 0; i < L; ++i)
      for (std::int64_t c = 0; c < C; ++c) {
        const double g = at(dy, (b * L + i) * C + c);
        for (std::int64_t o = 0; o < HD; ++o) {
          da[i * HD + o] += g * at(p.o->value, c * HD + o);
          g_o[c * HD + o] += g * f.attn[i * HD + o];
        }
      }
    Mat dq(static_cast<std::size_t>(L * HD), 0.0), dk(static_cast<std::size_t>(K * KD), 0.0), dv(dk.size(), 0.0);
    Mat drk(static_cast<std::size_t>(K * HD), 0.0);
    for (std::int64_t h = 0; h < H; ++h) {
      Mat dbd_raw(static_cast<std::size_t>(L * K), 0.0);
      for (std::int64_t i = 0; i < L; ++i) {
        std::vector<double> dp(static_cast<std::size_t>(K), 0.0);
        double dot_pdp = 0;
        for (std::int64_t j = 0; j <= M + i; ++j) {
          for (std::int64_t d = 0; d < D; ++d) dp[j] += da[i * HD + h * D + d] * f.v[j * KD + h / group * D + d];
          dot_pdp += f.prob[(h * L + i) * K + j] * dp[j];
        }
        for (std::int64_t j = 0; j <= M + i; ++j) {
          const double pr = f.prob[(h * L + i) * K + j];
          const double ds = pr * (dp[j] - dot_pdp) * scale;  // d score (AC and BD alike)
          for (std::int64_t d = 0; d < D; ++d) {
            const std::int64_t qd = i * HD + h * D + d, kd = j * KD + h / group * D + d;
            dv[kd] += pr * da[qd];
            dq[qd] += ds * f.k[kd];
            g_u[h * D + d] += ds * f.k[kd];
            dk[kd] += ds * (f.q[qd] + at(p.u->value, h * D + d));
          }
          const auto [row, col] = rel_shift_source(i, j, L, K);
          if (col >= 0) dbd_raw[row * K + col] += ds;  // back through the shift
        }
      }
      for (std::int64_t i = 0; i < L; ++i)
        for (std::int64_t r = 0; r < K; ++r) {
          const double g = dbd_raw[i * K + r];
          if (g == 0.0) continue;
          for (std::int64_t d = 0; d < D; ++d) {
            const std::int64_t qd = i * HD + h * D + d, rd = r * HD + h * D + d;
            dq[qd] += g * f.rk[rd];
            g_v[h * D + d] += g * f.rk[rd];
            drk[rd] += g * (f.q[qd] + at(p.v->value, h * D + d));
          }
        }
    }
    // Projections: qkv_net over cat(mem, x) (memory rows' gradient dropped), r_net over R'.
    for (std::int64_t c = 0; c < C; ++c) {
      for (std::int64_t o = 0; o < HD; ++o)
        for (std::int64_t i = 0; i < L; ++i) g_qkv[o * C + c] += dq[i * HD + o] * f.h[(M + i) * C + c];
      for (std::int64_t o = 0; o < HD; ++o)
        for (std::int64_t r = 0; r < K; ++r) g_r[o * C + c] += drk[r * HD + o] * f.pos[r * C + c];
      for (std::int64_t o = 0; o < KD; ++o)
        for (std::int64_t r = 0; r < K; ++r) {
          g_qkv[(HD + o) * C + c] += dk[r * KD + o] * f.h[r * C + c];
          g_qkv[(HD + KD + o) * C + c] += dv[r * KD + o] * f.h[r * C + c];
        }
    }
    for (std::int64_t i = 0; i < L; ++i)
      for (std::int64_t c = 0; c < C; ++c) {
        double s = 0;
        for (std::int64_t o = 0; o < HD; ++o) s += dq[i * HD + o] * at(p.qkv->value, o * C + c);
        for (std::int64_t o = 0; o < KD; ++o)
          s += dk[(M + i) * KD + o] * at(p.qkv->value, (HD + o) * C + c) +
               dv[(M + i) * KD + o] * at(p.qkv->value, (HD + KD + o) * C + c);
        dx.data<float>()[(b * L + i) * C + c] = static_cast<float>(s);
      }
  }
  auto add = [](Parameter* param, const Mat& g) {
    for (std::size_t i = 0; i < g.size(); ++i) param->grad.data<float>()[i] += static_cast<float>(g[i]);
  };
  add(p.qkv, g_qkv);
  add(p.r, g_r);
  add(p.u, g_u);
  add(p.v, g_v);
  add(p.o, g_o);
}

}  // namespace mf::reference
