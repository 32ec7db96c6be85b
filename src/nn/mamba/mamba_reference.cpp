// Mamba mixer and selective scan as plain loops in double: the specification
// the fast path (mamba.cpp, mamba_scan.cpp) is tested against. The scan keeps
// every state s_t ([L, N] per channel) and the backward recomputes the forward.
#include <cmath>
#include <vector>

#include "core/error.h"
#include "nn/mamba/mamba.h"

namespace mf::reference {

namespace {

using Vec = std::vector<double>;

double softplus(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }
double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
double silu(double v) { return v * sigmoid(v); }
double silu_grad(double v) { return sigmoid(v) * (1.0 + v * (1.0 - sigmoid(v))); }

// element (r, c) of a float tensor with any strides
double at(const Tensor& t, std::int64_t r, std::int64_t c) {
  return t.data<float>()[r * t.stride(0) + c * t.stride(1)];
}
float& at_mut(const Tensor& t, std::int64_t r, std::int64_t c) { return t.data<float>()[r * t.stride(0) + c * t.stride(1)]; }

// out[rows, o] = in[rows, i] W^T (+ b), W [o, i].
Vec linear(const Vec& in, std::int64_t rows, const Parameter* w, const Parameter* b) {
  const std::int64_t o = w->value.size(0), i = w->value.size(1);
  const float* wp = w->value.data<float>();
  Vec out(static_cast<std::size_t>(rows * o));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < o; ++j) {
      double s = b ? b->value.data<float>()[j] : 0.0;
      for (std::int64_t k = 0; k < i; ++k) s += in[r * i + k] * wp[j * i + k];
      out[r * o + j] = s;
    }
  return out;
}

// din = dout W; dW += dout^T in; db += sum dout.
Vec linear_back(const Vec& dout, const Vec& in, std::int64_t rows, const Parameter* w, const Parameter* b) {
  const std::int64_t o = w->value.size(0), i = w->value.size(1);
  const float* wp = w->value.data<float>();
  float* gw = w->grad.data<float>();
  Vec din(static_cast<std::size_t>(rows * i), 0.0);
  for (std::int64_t j = 0; j < o; ++j) {
    double sb = 0;
    for (std::int64_t k = 0; k < i; ++k) {
      double s = 0;
      for (std::int64_t r = 0; r < rows; ++r) s += dout[r * o + j] * in[r * i + k];
      gw[j * i + k] += static_cast<float>(s);
    }
    for (std::int64_t r = 0; r < rows; ++r) {
      sb += dout[r * o + j];
      for (std::int64_t k = 0; k < i; ++k) din[r * i + k] += dout[r * o + j] * wp[j * i + k];
    }
    if (b) b->grad.data<float>()[j] += static_cast<float>(sb);
  }
  return din;
}

// The scan in double on plain arrays: u, delta [rows, D]; bm, cm [rows, N];
// a [D, N] = A; optional initial/final state [B, D, N]; states (if not null)
// gets s_t for every (b, d, t) as [B, D, L + 1, N] with s_{-1} first.
Vec scan(const Vec& u, const Vec& delta, const Vec& bm, const Vec& cm, const Vec& a, const Vec& dskip,
         std::int64_t batch, std::int64_t len, std::int64_t dim, std::int64_t n, Vec* state, Vec* states) {
  Vec y(static_cast<std::size_t>(batch * len * dim));
  if (states) states->assign(static_cast<std::size_t>(batch * dim * (len + 1) * n), 0.0);
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t d = 0; d < dim; ++d) {
      Vec h(static_cast<std::size_t>(n), 0.0);
      if (state)
        for (std::int64_t j = 0; j < n; ++j) h[j] = (*state)[(b * dim + d) * n + j];
      for (std::int64_t t = 0; t <= len; ++t) {
        if (states)
          for (std::int64_t j = 0; j < n; ++j) (*states)[((b * dim + d) * (len + 1) + t) * n + j] = h[j];
        if (t == len) break;
        const std::int64_t row = b * len + t;
        const double dl = delta[row * dim + d], uu = u[row * dim + d];
        double out = dskip[d] * uu;
        for (std::int64_t j = 0; j < n; ++j) {
          h[j] = std::exp(dl * a[d * n + j]) * h[j] + dl * bm[row * n + j] * uu;
          out += cm[row * n + j] * h[j];
        }
        y[row * dim + d] = out;
      }
      if (state)
        for (std::int64_t j = 0; j < n; ++j) (*state)[(b * dim + d) * n + j] = h[j];
    }
  return y;
}

struct ScanGrads {
  Vec du, ddelta, db, dc, da, dd;  // da: w.r.t. A
};

ScanGrads scan_back(const Vec& dy, const Vec& u, const Vec& delta, const Vec& bm, const Vec& cm, const Vec& a,
                    const Vec& dskip, std::int64_t batch, std::int64_t len, std::int64_t dim, std::int64_t n) {
  Vec states;
  scan(u, delta, bm, cm, a, dskip, batch, len, dim, n, nullptr, &states);
  const std::int64_t rows = batch * len;
  ScanGrads g{Vec(rows * dim), Vec(rows * dim), Vec(rows * n, 0.0), Vec(rows * n, 0.0), Vec(dim * n, 0.0),
              Vec(dim, 0.0)};
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t d = 0; d < dim; ++d) {
      Vec gs(static_cast<std::size_t>(n), 0.0);  // dLoss/ds_t from steps after t, times a_{t+1}
      for (std::int64_t t = len - 1; t >= 0; --t) {
        const std::int64_t row = b * len + t;
        const double dl = delta[row * dim + d], uu = u[row * dim + d], dyv = dy[row * dim + d];
        const double* s_prev = &states[((b * dim + d) * (len + 1) + t) * n];
        const double* s_cur = s_prev + n;
        double ddl = 0, du = dskip[d] * dyv;
        for (std::int64_t j = 0; j < n; ++j) {
          const double at_ = std::exp(dl * a[d * n + j]);
          const double gj = dyv * cm[row * n + j] + gs[j];
          g.dc[row * n + j] += dyv * s_cur[j];
          g.db[row * n + j] += gj * dl * uu;
          ddl += gj * s_prev[j] * at_ * a[d * n + j] + gj * bm[row * n + j] * uu;
          du += gj * dl * bm[row * n + j];
          g.da[d * n + j] += gj * s_prev[j] * at_ * dl;
          gs[j] = gj * at_;
        }
        g.dd[d] += dyv * uu;
        g.ddelta[row * dim + d] = ddl;
        g.du[row * dim + d] = du;
      }
    }
  return g;
}

Vec to_vec(const Tensor& t) {
  Vec v(static_cast<std::size_t>(t.numel()));
  if (t.dim() == 2) {
    for (std::int64_t r = 0; r < t.size(0); ++r)
      for (std::int64_t c = 0; c < t.size(1); ++c) v[r * t.size(1) + c] = at(t, r, c);
    return v;
  }
  const auto f = t.to_vector();
  for (std::size_t i = 0; i < f.size(); ++i) v[i] = f[i];
  return v;
}

Vec minus_exp(const Tensor& a_log) {
  Vec a = to_vec(a_log);
  for (double& x : a) x = -std::exp(x);
  return a;
}

void store(const Tensor& t, const Vec& v) {
  for (std::int64_t r = 0; r < t.size(0); ++r)
    for (std::int64_t c = 0; c < t.size(1); ++c) at_mut(t, r, c) = static_cast<float>(v[r * t.size(1) + c]);
}

void add_into(const Tensor& t, const Vec& v) {
  float* p = t.data<float>();
  for (std::size_t i = 0; i < v.size(); ++i) p[i] += static_cast<float>(v[i]);
}

// Every intermediate of the mixer's forward, in double.
struct Forward {
  Vec x, xz, xc, u, xdbl, delta, bm, cm, y, gated, out;
};

Forward forward_all(const Tensor& x, std::int64_t batch, std::int64_t len, const MambaParams& p, MambaCache* cache) {
  const std::int64_t rows = batch * len, di = p.inner, n = p.state_size, k = p.conv_kernel, r = p.dt_rank,
                     xw = r + 2 * n;
  Forward f;
  f.x = to_vec(x);
  f.xz = linear(f.x, rows, p.in_proj, p.in_proj_bias);
  const float* w = p.conv_weight->value.data<float>();
  f.xc.assign(rows * di, 0.0);
  f.u.assign(rows * di, 0.0);
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t t = 0; t < len; ++t)
      for (std::int64_t d = 0; d < di; ++d) {
        double s = p.conv_bias ? p.conv_bias->value.data<float>()[d] : 0.0;
        for (std::int64_t j = 0; j < k; ++j) {
          const std::int64_t src = t - (k - 1) + j;
          if (src >= 0)
            s += w[d * k + j] * f.xz[(b * len + src) * 2 * di + d];
          else if (cache)
            s += w[d * k + j] * cache->conv.data<float>()[(b * di + d) * k + k + src];
        }
        f.xc[(b * len + t) * di + d] = s;
        f.u[(b * len + t) * di + d] = silu(s);
      }
  if (cache) {
    Tensor next = Tensor::empty(cache->conv.shape());
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t d = 0; d < di; ++d)
        for (std::int64_t j = 0; j < k; ++j) {
          const std::int64_t src = len - k + j;
          next.data<float>()[(b * di + d) * k + j] =
              src >= 0 ? static_cast<float>(f.xz[(b * len + src) * 2 * di + d])
                       : cache->conv.data<float>()[(b * di + d) * k + len + j];
        }
    cache->conv.copy_from(next);
  }
  f.xdbl = linear(f.u, rows, p.x_proj, nullptr);
  f.delta.assign(rows * di, 0.0);
  f.bm.assign(rows * n, 0.0);
  f.cm.assign(rows * n, 0.0);
  const float* wdt = p.dt_proj->value.data<float>();
  for (std::int64_t row = 0; row < rows; ++row) {
    for (std::int64_t d = 0; d < di; ++d) {
      double s = p.dt_bias->value.data<float>()[d];
      for (std::int64_t j = 0; j < r; ++j) s += f.xdbl[row * xw + j] * wdt[d * r + j];
      f.delta[row * di + d] = softplus(s);
    }
    for (std::int64_t j = 0; j < n; ++j) {
      f.bm[row * n + j] = f.xdbl[row * xw + r + j];
      f.cm[row * n + j] = f.xdbl[row * xw + r + n + j];
    }
  }
  Vec state;
  if (cache) state = to_vec(cache->ssm.reshape({-1, n}));
  f.y = scan(f.u, f.delta, f.bm, f.cm, minus_exp(p.a_log->value), to_vec(p.d_skip->value), batch, len, di, n,
             cache ? &state : nullptr, nullptr);
  if (cache) store(cache->ssm.reshape({-1, n}), state);
  f.gated.assign(rows * di, 0.0);
  for (std::int64_t row = 0; row < rows; ++row)
    for (std::int64_t d = 0; d < di; ++d) f.gated[row * di + d] = f.y[row * di + d] * silu(f.xz[row * 2 * di + di + d]);
  f.out = linear(f.gated, rows, p.out_proj, p.out_proj_bias);
  return f;
}

SelectiveScanInputs checked(const SelectiveScanInputs& in, std::int64_t batch) {
  MF_CHECK(in.u.defined() && in.u.dim() == 2 && batch >= 1 && in.u.size(0) % batch == 0, "[mamba] reference scan: u must be [B*L, D]");
  return in;
}

}  // namespace

void selective_scan_forward(const Tensor& y, const SelectiveScanInputs& in_, std::int64_t batch, const Tensor& state) {
  const SelectiveScanInputs in = checked(in_, batch);
  const std::int64_t rows = in.u.size(0), dim = in.u.size(1), n = in.a_log.size(1);
  Vec st;
  if (state.defined()) st = to_vec(state.reshape({-1, n}));
  const Vec out = scan(to_vec(in.u), to_vec(in.delta), to_vec(in.b), to_vec(in.c), minus_exp(in.a_log),
                       to_vec(in.d), batch, rows / batch, dim, n, state.defined() ? &st : nullptr, nullptr);
  store(y, out);
  if (state.defined()) store(state.reshape({-1, n}), st);
}

void selective_scan_backward(const SelectiveScanGrads& g, const Tensor& dy, const SelectiveScanInputs& in_,
                             std::int64_t batch) {
  const SelectiveScanInputs in = checked(in_, batch);
  const std::int64_t rows = in.u.size(0), dim = in.u.size(1), n = in.a_log.size(1);
  const Vec a = minus_exp(in.a_log);
  ScanGrads r = scan_back(to_vec(dy), to_vec(in.u), to_vec(in.delta), to_vec(in.b), to_vec(in.c), a, to_vec(in.d),
                          batch, rows / batch, dim, n);
  store(g.du, r.du);
  store(g.ddelta, r.ddelta);
  store(g.db, r.db);
  store(g.dc, r.dc);
  for (std::int64_t i = 0; i < dim * n; ++i) r.da[i] *= a[i];  // dA_log = dA * A
  add_into(g.da_log, r.da);
  add_into(g.dd, r.dd);
}

void mamba_forward(const Tensor& out, const Tensor& x, std::int64_t batch, std::int64_t seq_len, const MambaParams& p,
                   MambaCache* cache) {
  mamba_check(x, batch, seq_len, p, cache);
  store(out, forward_all(x, batch, seq_len, p, cache).out);
}

void mamba_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, std::int64_t batch, std::int64_t seq_len,
                    const MambaParams& p) {
  mamba_check(x, batch, seq_len, p, nullptr);
  const Forward f = forward_all(x, batch, seq_len, p, nullptr);
  const std::int64_t rows = batch * seq_len, di = p.inner, n = p.state_size, k = p.conv_kernel, r = p.dt_rank,
                     xw = r + 2 * n;
  const Vec dgated = linear_back(to_vec(dy), f.gated, rows, p.out_proj, p.out_proj_bias);
  Vec dxz(rows * 2 * di, 0.0), dys(rows * di);
  for (std::int64_t row = 0; row < rows; ++row)
    for (std::int64_t d = 0; d < di; ++d) {
      const double z = f.xz[row * 2 * di + di + d], g = dgated[row * di + d];
      dys[row * di + d] = g * silu(z);
      dxz[row * 2 * di + di + d] = g * f.y[row * di + d] * silu_grad(z);
    }
  const Vec a = minus_exp(p.a_log->value);
  ScanGrads sg = scan_back(dys, f.u, f.delta, f.bm, f.cm, a, to_vec(p.d_skip->value), batch, seq_len, di, n);
  for (std::int64_t i = 0; i < di * n; ++i) sg.da[i] *= a[i];
  add_into(p.a_log->grad, sg.da);
  add_into(p.d_skip->grad, sg.dd);
  // Delta = softplus(pre): dpre = ddelta * sigmoid(pre) = ddelta (1 - exp(-Delta)) (1 above the threshold).
  Vec dxdbl(rows * xw, 0.0), ddt_w(di * r, 0.0), ddt_b(di, 0.0);
  const float* wdt = p.dt_proj->value.data<float>();
  for (std::int64_t row = 0; row < rows; ++row) {
    for (std::int64_t d = 0; d < di; ++d) {
      const double dl = f.delta[row * di + d];
      const double dpre = sg.ddelta[row * di + d] * (dl > 20.0 ? 1.0 : -std::expm1(-dl));
      ddt_b[d] += dpre;
      for (std::int64_t j = 0; j < r; ++j) {
        ddt_w[d * r + j] += dpre * f.xdbl[row * xw + j];
        dxdbl[row * xw + j] += dpre * wdt[d * r + j];
      }
    }
    for (std::int64_t j = 0; j < n; ++j) {
      dxdbl[row * xw + r + j] = sg.db[row * n + j];
      dxdbl[row * xw + r + n + j] = sg.dc[row * n + j];
    }
  }
  add_into(p.dt_proj->grad, ddt_w);
  add_into(p.dt_bias->grad, ddt_b);
  Vec du = linear_back(dxdbl, f.u, rows, p.x_proj, nullptr);
  for (std::int64_t i = 0; i < rows * di; ++i) du[i] = (du[i] + sg.du[i]) * silu_grad(f.xc[i]);
  // The conv: du is now dLoss/dxc.
  Vec dw(di * k, 0.0), dbias(di, 0.0);
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t t = 0; t < seq_len; ++t)
      for (std::int64_t d = 0; d < di; ++d) {
        const double g = du[(b * seq_len + t) * di + d];
        dbias[d] += g;
        for (std::int64_t j = 0; j < k; ++j) {
          const std::int64_t src = t - (k - 1) + j;
          if (src < 0) continue;
          dw[d * k + j] += g * f.xz[(b * seq_len + src) * 2 * di + d];
          dxz[(b * seq_len + src) * 2 * di + d] += g * p.conv_weight->value.data<float>()[d * k + j];
        }
      }
  add_into(p.conv_weight->grad, dw);
  if (p.conv_bias) add_into(p.conv_bias->grad, dbias);
  store(dx, linear_back(dxz, f.x, rows, p.in_proj, p.in_proj_bias));
}

}  // namespace mf::reference
