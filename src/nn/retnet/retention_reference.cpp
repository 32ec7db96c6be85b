// Multi-scale retention, the plain reference twin: loops in double that follow
// torchscale's three forms literally (the parallel form's D / sqrt(row sum)
// and detached |.|-sum; the chunkwise form's inner mask, value/query inner
// decays, kv_state / kv_scale and all_scale; the recurrent form's running
// scale), then the group norm, the swish gate and out_proj. The backward uses
// that every form is c_t R_t with a detached c_t (see retention.h): it
// recomputes the forward, takes c_t = O_t / R_t's formula per form, and runs
// the O(L^2) sums of dR through R.
#include <cmath>
#include <vector>

#include "core/error.h"
#include "nn/retnet/retention.h"

namespace mf::reference {

namespace {

using Vec = std::vector<double>;

Vec to_double(const Tensor& t) {
  const std::vector<float> f = t.to_vector();
  return Vec(f.begin(), f.end());
}

// out[n, o] = sum_c x[n, c] W[o, c] + b[o]
Vec project(const Vec& x, std::int64_t rows, std::int64_t cols, const Parameter* w, const Parameter* b) {
  const Vec wd = to_double(w->value);
  const std::int64_t outs = w->value.size(0);
  const Vec bd = b ? to_double(b->value) : Vec(static_cast<std::size_t>(outs), 0.0);
  Vec out(static_cast<std::size_t>(rows * outs));
  for (std::int64_t n = 0; n < rows; ++n)
    for (std::int64_t o = 0; o < outs; ++o) {
      double s = bd[o];
      for (std::int64_t c = 0; c < cols; ++c) s += x[n * cols + c] * wd[o * cols + c];
      out[n * outs + o] = s;
    }
  return out;
}

// dx[n, c] += sum_o dout[n, o] W[o, c]; dW[o, c] += sum_n dout[n, o] x[n, c]; db[o] += sum_n dout[n, o].
void project_backward(Vec& dx, const Vec& dout, const Vec& x, std::int64_t rows, std::int64_t cols,
                      const Parameter* w, const Parameter* b) {
  const Vec wd = to_double(w->value);
  const std::int64_t outs = w->value.size(0);
  Vec dw(static_cast<std::size_t>(outs * cols), 0.0), db(static_cast<std::size_t>(outs), 0.0);
  for (std::int64_t n = 0; n < rows; ++n)
    for (std::int64_t o = 0; o < outs; ++o) {
      const double d = dout[n * outs + o];
      db[o] += d;
      for (std::int64_t c = 0; c < cols; ++c) {
        dx[n * cols + c] += d * wd[o * cols + c];
        dw[o * cols + c] += d * x[n * cols + c];
      }
    }
  float* gw = w->grad.data<float>();
  for (std::int64_t i = 0; i < outs * cols; ++i) gw[i] += static_cast<float>(dw[i]);
  if (b)
    for (std::int64_t o = 0; o < outs; ++o) b->grad.data<float>()[o] += static_cast<float>(db[o]);
}

double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

// Rotates rows [N, H*Dk] at positions past + (row mod L) (sign -1: the transpose).
void rotate(Vec& r, std::int64_t rows, std::int64_t seq_len, std::int64_t past, std::int64_t heads,
            std::int64_t dk, double sign) {
  const std::int64_t half = dk / 2;
  for (std::int64_t n = 0; n < rows; ++n)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t i = 0; i < half; ++i) {
        const double theta = half == 1 ? 1.0 : std::pow(10000.0, -double(i) / double(half - 1));
        const double angle = double(past + n % seq_len) * theta, c = std::cos(angle), s = sign * std::sin(angle);
        double* x = &r[(n * heads + h) * dk + 2 * i];
        const double x0 = x[0], x1 = x[1];
        x[0] = x0 * c - x1 * s;  // torchscale: x * cos + rotate_every_two(x) * sin
        x[1] = x1 * c + x0 * s;
      }
}

struct Forward {
  std::int64_t n = 0, c = 0, kd = 0, vd = 0;
  Vec x, q, k, v, g;  // q, k rotated (k scaled)
  Vec retained;       // O [N, H*Dv]
  Vec normalizer;     // c [N*H]
  Vec normed, gated, y;
};

Forward run_forward(const Tensor& x, std::int64_t batch, std::int64_t seq_len, RetentionForm form,
                    RetentionState* state, const RetentionParams& p) {
  Forward f;
  const std::int64_t H = p.num_heads, dk = p.key_dim, dv = p.value_dim, L = seq_len, T = p.chunk_size;
  f.n = batch * seq_len, f.c = x.size(1), f.kd = H * dk, f.vd = H * dv;
  f.x = to_double(x);
  f.q = project(f.x, f.n, f.c, p.q, p.q_bias);
  f.k = project(f.x, f.n, f.c, p.k, p.k_bias);
  f.v = project(f.x, f.n, f.c, p.v, p.v_bias);
  f.g = project(f.x, f.n, f.c, p.g, p.g_bias);
  for (double& e : f.k) e /= std::sqrt(double(dk));  // k *= scaling
  const std::int64_t past = state ? state->past : 0;
  rotate(f.q, f.n, L, past, H, dk, 1.0);
  rotate(f.k, f.n, L, past, H, dk, 1.0);
  f.retained.assign(static_cast<std::size_t>(f.n * f.vd), 0.0);
  f.normalizer.assign(static_cast<std::size_t>(f.n * H), 0.0);
  auto qk = [&](std::int64_t b, std::int64_t h, std::int64_t t, std::int64_t m) {
    double s = 0;
    for (std::int64_t d = 0; d < dk; ++d)
      s += f.q[((b * L + t) * H + h) * dk + d] * f.k[((b * L + m) * H + h) * dk + d];
    return s;
  };
  auto vrow = [&](std::int64_t b, std::int64_t h, std::int64_t m) { return &f.v[((b * L + m) * H + h) * dv]; };
  auto qrow = [&](std::int64_t b, std::int64_t h, std::int64_t t) { return &f.q[((b * L + t) * H + h) * dk]; };
  auto krow = [&](std::int64_t b, std::int64_t h, std::int64_t t) { return &f.k[((b * L + t) * H + h) * dk]; };
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t h = 0; h < H; ++h) {
      const double gamma = retention_decay(h);
      auto row_sum = [&](std::int64_t t) {  // sum_{j<=t} gamma^j
        double s = 0;
        for (std::int64_t j = 0; j <= t; ++j) s += std::pow(gamma, double(j));
        return s;
      };
      double* out = &f.retained[0];
      auto orow = [&](std::int64_t t) { return out + ((b * L + t) * H + h) * dv; };
      auto cref = [&](std::int64_t t) -> double& { return f.normalizer[(b * L + t) * H + h]; };
      if (form == RetentionForm::Parallel) {
        for (std::int64_t t = 0; t < L; ++t) {
          const double r = std::sqrt(row_sum(t));  // mask / mask.sum(-1).sqrt()
          double abs_sum = 0;
          for (std::int64_t m = 0; m <= t; ++m)
            abs_sum += std::fabs(qk(b, h, t, m) * std::pow(gamma, double(t - m)) / r);
          const double scale = std::min(std::max(abs_sum, 1.0), 5e4);  // .detach().abs().sum().clamp(1, 5e4)
          for (std::int64_t m = 0; m <= t; ++m) {
            const double w = qk(b, h, t, m) * std::pow(gamma, double(t - m)) / r / scale;
            for (std::int64_t e = 0; e < dv; ++e) orow(t)[e] += w * vrow(b, h, m)[e];
          }
          cref(t) = 1.0 / (r * scale);
        }
      } else if (form == RetentionForm::Chunkwise) {
        const double tail = row_sum(T - 1);  // mask[:, -1].sum()
        Vec kv_state(static_cast<std::size_t>(dk * dv), 0.0);
        double kv_scale = 1.0;
        for (std::int64_t c0 = 0; c0 < L; c0 += T) {
          const std::int64_t tc = std::min(T, L - c0);
          for (std::int64_t i = 0; i < tc; ++i) {
            const std::int64_t t = c0 + i;
            const double r = std::sqrt(row_sum(i));  // scale = mask.sum(-1).sqrt()
            double inner_scale = 0;
            for (std::int64_t j = 0; j <= i; ++j)
              inner_scale += std::fabs(qk(b, h, t, c0 + j) * std::pow(gamma, double(i - j)) / r);
            inner_scale = std::max(inner_scale, 1.0);
            const double all_scale = std::max(inner_scale, kv_scale);
            // inner_output / (all / inner) + cross_output / (all / cross)
            for (std::int64_t j = 0; j <= i; ++j) {
              const double w = qk(b, h, t, c0 + j) * std::pow(gamma, double(i - j)) / r / inner_scale;
              for (std::int64_t e = 0; e < dv; ++e) orow(t)[e] += w * vrow(b, h, c0 + j)[e] / (all_scale / inner_scale);
            }
            const double query_inner_decay = std::pow(gamma, double(i + 1)) / (r / tail);
            for (std::int64_t e = 0; e < dv; ++e) {
              double cross = 0;
              for (std::int64_t d = 0; d < dk; ++d)
                cross += qrow(b, h, t)[d] * query_inner_decay * kv_state[d * dv + e] / kv_scale;
              orow(t)[e] += cross / (all_scale / kv_scale);
            }
            cref(t) = 1.0 / (r * all_scale);
          }
          // kv_state = kv_state * cross_decay + kr^T (v * value_inner_decay); kv_scale from it.
          for (double& s : kv_state) s *= std::pow(gamma, double(T));
          for (std::int64_t j = 0; j < tc; ++j)
            for (std::int64_t d = 0; d < dk; ++d)
              for (std::int64_t e = 0; e < dv; ++e)
                kv_state[d * dv + e] +=
                    krow(b, h, c0 + j)[d] * vrow(b, h, c0 + j)[e] * std::pow(gamma, double(T - 1 - j)) / tail;
          kv_scale = 0;
          for (std::int64_t e = 0; e < dv; ++e) {
            double s = 0;
            for (std::int64_t d = 0; d < dk; ++d) s += std::fabs(kv_state[d * dv + e]);
            kv_scale = std::max(kv_scale, s);
          }
          kv_scale = std::max(kv_scale, 1.0);
        }
      } else {  // recurrent: kv = prev_kv * sqrt(prev_scale) * gamma / sqrt(scale) + k v^T / sqrt(scale)
        Vec kv(static_cast<std::size_t>(dk * dv), 0.0);
        double scale = past > 0 ? row_sum(past - 1) : 0.0;
        if (state) {
          const float* s = state->kv.data<float>() + (b * H + h) * dk * dv;
          for (std::int64_t i = 0; i < dk * dv; ++i) kv[i] = past > 0 ? s[i] / std::sqrt(scale) : 0.0;
        }
        for (std::int64_t t = 0; t < L; ++t) {
          const double prev = scale;
          scale = prev * gamma + 1.0;
          for (std::int64_t d = 0; d < dk; ++d)
            for (std::int64_t e = 0; e < dv; ++e)
              kv[d * dv + e] = kv[d * dv + e] * std::sqrt(prev) * gamma / std::sqrt(scale) +
                               krow(b, h, t)[d] * vrow(b, h, t)[e] / std::sqrt(scale);
          for (std::int64_t e = 0; e < dv; ++e) {
            double s = 0;
            for (std::int64_t d = 0; d < dk; ++d) s += qrow(b, h, t)[d] * kv[d * dv + e];
            orow(t)[e] = s;
          }
          cref(t) = 1.0 / std::sqrt(scale);
        }
        if (state) {
          float* s = state->kv.data<float>() + (b * H + h) * dk * dv;
          for (std::int64_t i = 0; i < dk * dv; ++i) s[i] = static_cast<float>(kv[i] * std::sqrt(scale));
        }
      }
    }
  // Group norm (RMS, no weights) per head, the swish gate, out_proj.
  f.normed.assign(f.retained.size(), 0.0);
  f.gated.assign(f.retained.size(), 0.0);
  for (std::int64_t r = 0; r < f.n * H; ++r) {
    double ms = 0;
    for (std::int64_t e = 0; e < dv; ++e) ms += f.retained[r * dv + e] * f.retained[r * dv + e];
    const double rstd = 1.0 / std::sqrt(ms / double(dv) + double(p.eps));
    for (std::int64_t e = 0; e < dv; ++e) {
      const std::int64_t i = r * dv + e;
      f.normed[i] = f.retained[i] * rstd;
      f.gated[i] = f.g[i] * sigmoid(f.g[i]) * f.normed[i];
    }
  }
  f.y = project(f.gated, f.n, f.vd, p.o, p.o_bias);
  return f;
}

}  // namespace

void retention_forward(const Tensor& y, const Tensor& x, std::int64_t batch, std::int64_t seq_len,
                       RetentionForm form, RetentionState* state, const RetentionParams& p) {
  retention_check(x, batch, seq_len, p);
  y.check_shape(x.shape(), "retention", "y");
  MF_CHECK(!state || form == RetentionForm::Recurrent, "[retention] a call with a generation state runs the "
           "recurrent form, not ", retention_form_name(form));
  const Forward f = run_forward(x, batch, seq_len, form, state, p);
  float* out = y.data<float>();
  for (std::size_t i = 0; i < f.y.size(); ++i) out[i] = static_cast<float>(f.y[i]);
  if (state) state->past += seq_len;
}

void retention_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, std::int64_t batch,
                        std::int64_t seq_len, RetentionForm form, const RetentionParams& p) {
  retention_check(x, batch, seq_len, p);
  const Forward f = run_forward(x, batch, seq_len, form, nullptr, p);
  const std::int64_t H = p.num_heads, dk = p.key_dim, dv = p.value_dim, L = seq_len, n = f.n;
  const Vec dyd = to_double(dy);
  // out_proj
  Vec dgated(f.gated.size(), 0.0);
  project_backward(dgated, dyd, f.gated, n, f.vd, p.o, p.o_bias);
  // gate and group norm
  Vec dg(f.g.size()), dr(f.retained.size());
  for (std::int64_t r = 0; r < n * H; ++r) {
    double ms = 0, dot = 0;
    for (std::int64_t e = 0; e < dv; ++e) ms += f.retained[r * dv + e] * f.retained[r * dv + e];
    const double rstd = 1.0 / std::sqrt(ms / double(dv) + double(p.eps));
    Vec dnormed(static_cast<std::size_t>(dv));
    for (std::int64_t e = 0; e < dv; ++e) {
      const std::int64_t i = r * dv + e;
      const double s = sigmoid(f.g[i]);
      dnormed[e] = dgated[i] * f.g[i] * s;
      dg[i] = dgated[i] * f.normed[i] * s * (1.0 + f.g[i] * (1.0 - s));
      dot += dnormed[e] * f.normed[i];
    }
    for (std::int64_t e = 0; e < dv; ++e) {
      const std::int64_t i = r * dv + e;
      dr[i] = f.normalizer[r] * rstd * (dnormed[e] - f.normed[i] * dot / double(dv));  // dR = c dO
    }
  }
  // R_t = sum_{m<=t} gamma^(t-m) (q_t . k_m) v_m
  Vec dq(f.q.size(), 0.0), dk_(f.k.size(), 0.0), dv_(f.v.size(), 0.0);
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t h = 0; h < H; ++h) {
      const double gamma = retention_decay(h);
      for (std::int64_t t = 0; t < L; ++t)
        for (std::int64_t m = 0; m <= t; ++m) {
          const double w = std::pow(gamma, double(t - m));
          const double* q = &f.q[((b * L + t) * H + h) * dk];
          const double* k = &f.k[((b * L + m) * H + h) * dk];
          const double* v = &f.v[((b * L + m) * H + h) * dv];
          const double* d = &dr[((b * L + t) * H + h) * dv];
          double qk = 0, dv_dot = 0;
          for (std::int64_t i = 0; i < dk; ++i) qk += q[i] * k[i];
          for (std::int64_t e = 0; e < dv; ++e) dv_dot += d[e] * v[e];
          for (std::int64_t i = 0; i < dk; ++i) {
            dq[((b * L + t) * H + h) * dk + i] += w * dv_dot * k[i];
            dk_[((b * L + m) * H + h) * dk + i] += w * dv_dot * q[i];
          }
          for (std::int64_t e = 0; e < dv; ++e) dv_[((b * L + m) * H + h) * dv + e] += w * qk * d[e];
        }
    }
  rotate(dq, n, L, 0, H, dk, -1.0);
  rotate(dk_, n, L, 0, H, dk, -1.0);
  for (double& e : dk_) e /= std::sqrt(double(dk));
  Vec dxd(f.x.size(), 0.0);
  project_backward(dxd, dq, f.x, n, f.c, p.q, p.q_bias);
  project_backward(dxd, dk_, f.x, n, f.c, p.k, p.k_bias);
  project_backward(dxd, dv_, f.x, n, f.c, p.v, p.v_bias);
  project_backward(dxd, dg, f.x, n, f.c, p.g, p.g_bias);
  dx.check_shape(x.shape(), "retention", "dx");
  float* out = dx.data<float>();
  for (std::size_t i = 0; i < dxd.size(); ++i) out[i] = static_cast<float>(dxd[i]);
}

}  // namespace mf::reference
