// Linformer reference twin (Wang et al. 2020): plain loops in double, one
// sequence and one head at a time, written from the formulas in linformer.h.
// The backward recomputes the forward; parameter gradients are summed in double
// and added once. For tests: no blocking, no threads.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "nn/linformer/linformer.h"

namespace mf::reference {

namespace {

using Vec = std::vector<double>;

Vec values(const Parameter* p) {
  if (!p) return {};
  const std::vector<float> v = p->value.to_vector();
  return {v.begin(), v.end()};
}

void add_to_grad(const Parameter* p, const Vec& g) {
  if (!p) return;
  float* out = p->grad.data<float>();
  for (std::size_t i = 0; i < g.size(); ++i) out[i] += static_cast<float>(g[i]);
}

// What a projection needs: its kind, n, k, s, D and this call's L and kp.
struct Proj {
  LinformerProjection kind;
  std::int64_t n, k, s, d, l, kp;
};

// One head: X [L, D] -> P [kp, D]. w: this head's E [k, n] or conv W [D, D, s].
// argmax (Max only): the winning row per (j, c), -1 for a zero pad row.
Vec project(const Proj& g, const double* w, const Vec& x, std::vector<int>& argmax) {
  Vec out(g.kp * g.d, 0.0);
  argmax.assign(g.kp * g.d, -1);
  for (std::int64_t j = 0; j < g.kp; ++j)
    for (std::int64_t o = 0; o < g.d; ++o) {
      double acc = 0;
      if (g.kind == LinformerProjection::Linear) {
        for (std::int64_t i = 0; i < g.l; ++i) acc += w[j * g.n + i] * x[i * g.d + o];
      } else if (g.kind == LinformerProjection::Conv) {
        for (std::int64_t t = 0; t < g.s && j * g.s + t < g.l; ++t)
          for (std::int64_t c = 0; c < g.d; ++c) acc += w[(o * g.d + c) * g.s + t] * x[(j * g.s + t) * g.d + c];
      } else if (g.kind == LinformerProjection::Mean) {
        for (std::int64_t t = 0; t < g.s && j * g.s + t < g.l; ++t) acc += x[(j * g.s + t) * g.d + o];
        acc /= static_cast<double>(g.s);
      } else {  // Max over s rows, zero past L, first maximum wins
        acc = -std::numeric_limits<double>::infinity();
        for (std::int64_t t = 0; t < g.s; ++t) {
          const std::int64_t i = j * g.s + t;
          const double val = i < g.l ? x[i * g.d + o] : 0.0;
          if (val > acc) {
            acc = val;
            argmax[j * g.d + o] = i < g.l ? static_cast<int>(i) : -1;
          }
        }
      }
      out[j * g.d + o] = acc;
    }
  return out;
}

// dX = proj^T(dP) (returned); dw += dProj/dw . dP (this head's weights).
Vec project_back(const Proj& g, const double* w, double* dw, const Vec& x, const Vec& dp,
                 const std::vector<int>& argmax) {
  Vec dx(g.l * g.d, 0.0);
  for (std::int64_t j = 0; j < g.kp; ++j)
    for (std::int64_t o = 0; o < g.d; ++o) {
      const double up = dp[j * g.d + o];
      if (g.kind == LinformerProjection::Linear) {
        for (std::int64_t i = 0; i < g.l; ++i) {
          dx[i * g.d + o] += w[j * g.n + i] * up;
          dw[j * g.n + i] += up * x[i * g.d + o];
        }
      } else if (g.kind == LinformerProjection::Conv) {
        for (std::int64_t t = 0; t < g.s && j * g.s + t < g.l; ++t)
          for (std::int64_t c = 0; c < g.d; ++c) {
            dx[(j * g.s + t) * g.d + c] += w[(o * g.d + c) * g.s + t] * up;
            dw[(o * g.d + c) * g.s + t] += up * x[(j * g.s + t) * g.d + c];
          }
      } else if (g.kind == LinformerProjection::Mean) {
        for (std::int64_t t = 0; t < g.s && j * g.s + t < g.l; ++t) dx[(j * g.s + t) * g.d + o] += up / g.s;
      } else if (argmax[j * g.d + o] >= 0) {
        dx[argmax[j * g.d + o] * g.d + o] += up;
      }
    }
  return dx;
}

// Forward (y) and, when dy is defined, backward (dx, parameter grads).
void run(const Tensor& y, const Tensor& dx, const Tensor& dy, const Tensor& x, std::int64_t batch,
         std::int64_t seq_len, const Tensor& mask, const LinformerParams& p) {
  linformer_check(x, batch, seq_len, mask, p);
  const std::int64_t L = seq_len, C = x.size(1), D = p.head_dim, Hq = p.num_heads, Hkv = p.num_kv_heads;
  const std::int64_t group = Hq / Hkv, QD = Hq * D, KD = Hkv * D;
  const Proj g{p.projection, p.max_len, p.proj_len, p.max_len / p.proj_len, D, L,
               linformer_projected_len(p, L)};
  const std::int64_t kp = g.kp;
  const bool kv_shared = p.sharing == LinformerSharing::KeyValue || p.sharing == LinformerSharing::Layerwise;
  const Parameter* fpar = kv_shared ? p.e : p.f;
  const Vec wq = values(p.q), wk = values(p.k), wv = values(p.v), wo = values(p.o);
  const Vec bq = values(p.q_bias), bk = values(p.k_bias), bv = values(p.v_bias), bo = values(p.o_bias);
  const Vec we = values(p.e), wf = values(fpar);
  // Offset of head h's weights inside E/F (per head for sharing None).
  const std::int64_t per = p.e ? p.e->value.numel() / (p.sharing == LinformerSharing::None ? Hkv : 1) : 0;
  auto head_w = [&](std::int64_t h) { return p.sharing == LinformerSharing::None ? h * per : 0; };
  const std::vector<float> xs = x.to_vector();
  const std::vector<float> dys = dy.defined() ? dy.to_vector() : std::vector<float>();
  const std::int32_t* m = mask.defined() ? mask.data<std::int32_t>() : nullptr;
  Vec gq(wq.size()), gk(wk.size()), gv(wv.size()), go(wo.size()), gbq(bq.size()), gbk(bk.size()), gbv(bv.size()),
      gbo(bo.size()), ge(we.size()), gf(wf.size());
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (std::int64_t b = 0; b < batch; ++b) {
    const float* xb = xs.data() + b * L * C;
    auto proj_rows = [&](const Vec& w, const Vec& bias, std::int64_t width, bool masked) {
      Vec out(L * width, 0.0);
      for (std::int64_t i = 0; i < L; ++i)
        for (std::int64_t r = 0; r < width; ++r) {
          double acc = bias.empty() ? 0.0 : bias[r];
          for (std::int64_t c = 0; c < C; ++c) acc += w[r * C + c] * xb[i * C + c];
          out[i * width + r] = (masked && m && m[b * L + i] == 0) ? 0.0 : acc;
        }
      return out;
    };
    const Vec q = proj_rows(wq, bq, QD, false), k = proj_rows(wk, bk, KD, true), v = proj_rows(wv, bv, KD, true);
    // Project each KV head: kh/vh [L, D] -> kp/vp [kp, D].
    std::vector<Vec> kh(Hkv, Vec(L * D)), vh(Hkv, Vec(L * D)), kph(Hkv), vph(Hkv);
    std::vector<std::vector<int>> karg(Hkv), varg(Hkv);
    for (std::int64_t h = 0; h < Hkv; ++h) {
      for (std::int64_t i = 0; i < L; ++i)
        for (std::int64_t c = 0; c < D; ++c) {
          kh[h][i * D + c] = k[i * KD + h * D + c];
          vh[h][i * D + c] = v[i * KD + h * D + c];
        }
      kph[h] = project(g, we.data() + head_w(h), kh[h], karg[h]);
      vph[h] = project(g, wf.data() + head_w(h), vh[h], varg[h]);
    }
    // Attention per query head over the kp projected rows.
    Vec out(L * QD, 0.0);
    std::vector<Vec> probs(Hq, Vec(L * kp));
    for (std::int64_t hq = 0; hq < Hq; ++hq) {
      const std::int64_t h = hq / group;
      for (std::int64_t i = 0; i < L; ++i) {
        double* pr = probs[hq].data() + i * kp;
        double mx = -std::numeric_limits<double>::infinity(), sum = 0;
        for (std::int64_t j = 0; j < kp; ++j) {
          double s = 0;
          for (std::int64_t c = 0; c < D; ++c) s += q[i * QD + hq * D + c] * kph[h][j * D + c];
          pr[j] = s * scale;
          mx = std::max(mx, pr[j]);
        }
        for (std::int64_t j = 0; j < kp; ++j) sum += (pr[j] = std::exp(pr[j] - mx));
        for (std::int64_t j = 0; j < kp; ++j) {
          pr[j] /= sum;
          for (std::int64_t c = 0; c < D; ++c) out[i * QD + hq * D + c] += pr[j] * vph[h][j * D + c];
        }
      }
    }
    if (!dy.defined()) {
      float* yb = y.data<float>() + b * L * C;
      for (std::int64_t i = 0; i < L; ++i)
        for (std::int64_t r = 0; r < C; ++r) {
          double acc = bo.empty() ? 0.0 : bo[r];
          for (std::int64_t c = 0; c < QD; ++c) acc += wo[r * QD + c] * out[i * QD + c];
          yb[i * C + r] = static_cast<float>(acc);
        }
      continue;
    }
    // Backward. dout = dy Wo; dWo += dy^T out; dbo += sum dy.
    const float* dyb = dys.data() + b * L * C;
    Vec dout(L * QD, 0.0), dq(L * QD, 0.0), dk(L * KD, 0.0), dv(L * KD, 0.0);
    for (std::int64_t i = 0; i < L; ++i)
      for (std::int64_t r = 0; r < C; ++r) {
        const double up = dyb[i * C + r];
        if (!gbo.empty()) gbo[r] += up;
        for (std::int64_t c = 0; c < QD; ++c) {
          dout[i * QD + c] += up * wo[r * QD + c];
          go[r * QD + c] += up * out[i * QD + c];
        }
      }
    std::vector<Vec> dkp(Hkv, Vec(kp * D, 0.0)), dvp(Hkv, Vec(kp * D, 0.0));
    for (std::int64_t hq = 0; hq < Hq; ++hq) {
      const std::int64_t h = hq / group;
      for (std::int64_t i = 0; i < L; ++i) {
        const double* pr = probs[hq].data() + i * kp;
        Vec dp(kp);
        double dot = 0;  // sum_j P_ij dP_ij
        for (std::int64_t j = 0; j < kp; ++j) {
          double acc = 0;
          for (std::int64_t c = 0; c < D; ++c) {
            acc += dout[i * QD + hq * D + c] * vph[h][j * D + c];
            dvp[h][j * D + c] += pr[j] * dout[i * QD + hq * D + c];  // dV' += P^T dO
          }
          dp[j] = acc;
          dot += pr[j] * acc;
        }
        for (std::int64_t j = 0; j < kp; ++j) {
          const double ds = pr[j] * (dp[j] - dot) * scale;  // dS = P (dP - rowsum(P dP)), times the scale
          for (std::int64_t c = 0; c < D; ++c) {
            dq[i * QD + hq * D + c] += ds * kph[h][j * D + c];
            dkp[h][j * D + c] += ds * q[i * QD + hq * D + c];
          }
        }
      }
    }
    for (std::int64_t h = 0; h < Hkv; ++h) {
      const Vec dkh = project_back(g, we.data() + head_w(h), ge.data() + head_w(h), kh[h], dkp[h], karg[h]);
      double* gfp = (kv_shared ? ge.data() : gf.data()) + head_w(h);
      const Vec dvh = project_back(g, wf.data() + head_w(h), gfp, vh[h], dvp[h], varg[h]);
      for (std::int64_t i = 0; i < L; ++i)
        for (std::int64_t c = 0; c < D; ++c) {
          const bool real = !m || m[b * L + i] != 0;  // padding rows were zeroed: no gradient
          dk[i * KD + h * D + c] = real ? dkh[i * D + c] : 0.0;
          dv[i * KD + h * D + c] = real ? dvh[i * D + c] : 0.0;
        }
    }
    // dx = dq Wq + dk Wk + dv Wv; dW += d^T x; db += sum d.
    float* dxb = dx.data<float>() + b * L * C;
    for (std::int64_t i = 0; i < L; ++i)
      for (std::int64_t c = 0; c < C; ++c) {
        double acc = 0;
        for (std::int64_t r = 0; r < QD; ++r) acc += dq[i * QD + r] * wq[r * C + c];
        for (std::int64_t r = 0; r < KD; ++r) acc += dk[i * KD + r] * wk[r * C + c] + dv[i * KD + r] * wv[r * C + c];
        dxb[i * C + c] = static_cast<float>(acc);
      }
    auto accumulate = [&](Vec& gw, Vec& gb, const Vec& d, std::int64_t width) {
      for (std::int64_t i = 0; i < L; ++i)
        for (std::int64_t r = 0; r < width; ++r) {
          if (!gb.empty()) gb[r] += d[i * width + r];
          for (std::int64_t c = 0; c < C; ++c) gw[r * C + c] += d[i * width + r] * xb[i * C + c];
        }
    };
    accumulate(gq, gbq, dq, QD);
    accumulate(gk, gbk, dk, KD);
    accumulate(gv, gbv, dv, KD);
  }
  if (!dy.defined()) return;
  add_to_grad(p.q, gq), add_to_grad(p.k, gk), add_to_grad(p.v, gv), add_to_grad(p.o, go);
  add_to_grad(p.q_bias, gbq), add_to_grad(p.k_bias, gbk), add_to_grad(p.v_bias, gbv), add_to_grad(p.o_bias, gbo);
  add_to_grad(p.e, ge);
  if (!kv_shared) add_to_grad(p.f, gf);
}

}  // namespace

void linformer_forward(const Tensor& y, const Tensor& x, std::int64_t batch, std::int64_t seq_len,
                       const Tensor& key_padding_mask, const LinformerParams& p) {
  y.check_shape(x.shape(), "linformer", "y");
  run(y, Tensor(), Tensor(), x, batch, seq_len, key_padding_mask, p);
}

void linformer_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, std::int64_t batch,
                        std::int64_t seq_len, const Tensor& key_padding_mask, const LinformerParams& p) {
  dx.check_shape(x.shape(), "linformer", "dx");
  dy.check_shape(x.shape(), "linformer", "dy");
  run(Tensor(), dx, dy, x, batch, seq_len, key_padding_mask, p);
}

}  // namespace mf::reference
