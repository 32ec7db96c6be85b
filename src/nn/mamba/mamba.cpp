// Mamba mixer, fast path (the math: mamba.h): the projections through the
// linear/GEMM interface, the causal depthwise conv as token-major row loops
// (vectorized over channels, parallel over tokens; its weight gradient
// parallel over channel blocks, each summing the rows in order), SiLU and the
// SiLU gate through kernels/activations.h, the softplus of Delta with the SIMD
// exp (its pre-activation is recomputed in the backward, not kept), the scan
// and the softplus in mamba_scan_isa.cpp (once per instruction set). Saved for the backward: see MambaSaved (about 7 Di floats
// per token plus the chunk states, Di N / T per token).
#include "nn/mamba/mamba.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/isa_dispatch.h"
#include "kernels/activations.h"
#include "kernels/gemm.h"
#include "nn/linear.h"

MF_ISA_DECLARE(void selective_scan_forward(const mf::Tensor& y, const mf::Tensor& chunk_states,
                                           const mf::SelectiveScanInputs& in, std::int64_t batch,
                                           std::int64_t chunk_len, const mf::Tensor& state))
MF_ISA_DECLARE(void selective_scan_backward(const mf::SelectiveScanGrads& grads, const mf::Tensor& dy,
                                            const mf::SelectiveScanInputs& in, const mf::Tensor& chunk_states,
                                            std::int64_t batch, std::int64_t chunk_len))
MF_ISA_DECLARE(void mamba_softplus_forward(float* v, std::int64_t count))
MF_ISA_DECLARE(void mamba_softplus_backward(float* dv, const float* pre, std::int64_t count))

namespace mf {

std::int64_t selective_scan_chunks(std::int64_t seq_len, std::int64_t chunk_len) {
  return (seq_len + chunk_len - 1) / chunk_len;
}

void selective_scan_forward(const Tensor& y, const Tensor& chunk_states, const SelectiveScanInputs& in,
                            std::int64_t batch, std::int64_t chunk_len, const Tensor& state) {
  MF_ISA_DISPATCH(selective_scan_forward, y, chunk_states, in, batch, chunk_len, state);
}

void selective_scan_backward(const SelectiveScanGrads& grads, const Tensor& dy, const SelectiveScanInputs& in,
                             const Tensor& chunk_states, std::int64_t batch, std::int64_t chunk_len) {
  MF_ISA_DISPATCH(selective_scan_backward, grads, dy, in, chunk_states, batch, chunk_len);
}

namespace {

// delta = softplus(delta) and ddelta *= softplus'(pre) on `count` floats (mamba_scan_isa.cpp).
void mamba_softplus_forward(float* v, std::int64_t count) { MF_ISA_DISPATCH(mamba_softplus_forward, v, count); }
void mamba_softplus_backward(float* dv, const float* pre, std::int64_t count) {
  MF_ISA_DISPATCH(mamba_softplus_backward, dv, pre, count);
}

constexpr const char* kOp = "[mamba]";


void check_param(const Parameter* p, const char* what, const Shape& shape) {
  MF_CHECK(p != nullptr, kOp, " missing parameter ", what, " of shape ", shape_str(shape));
  MF_CHECK(p->value.dtype() == DType::F32 && p->value.is_contiguous() && p->value.shape() == shape, kOp,
           " parameter ", what, " ('", p->name, "') must be a contiguous float32 tensor of shape ", shape_str(shape),
           " but is ", shape_str(p->value.shape()));
}

struct Dims {
  std::int64_t rows, len, c, di, n, k, r, xw;  // xw = R + 2N: width of x_proj's output
};

Dims dims_of(const MambaParams& p, std::int64_t batch, std::int64_t seq_len) {
  return {batch * seq_len, seq_len, p.hidden, p.inner, p.state_size, p.conv_kernel, p.dt_rank,
          p.dt_rank + 2 * p.state_size};
}

// The conv weight [Di, 1, K] as K rows of Di (w_t[k][d] = w[d, 0, k]).
std::vector<float> conv_taps(const MambaParams& p) {
  const std::int64_t di = p.inner, k = p.conv_kernel;
  std::vector<float> w(static_cast<std::size_t>(di * k));
  const float* src = p.conv_weight->value.data<float>();
  for (std::int64_t d = 0; d < di; ++d)
    for (std::int64_t j = 0; j < k; ++j) w[j * di + d] = src[d * k + j];
  return w;
}

// xc[b, t] = bias + sum_k w[:, k] x[b, t - K + 1 + k]; x is the first Di
// columns of xz (row stride 2 Di); positions before 0 read the conv state
// [B, Di, K] (its column K + s holds position s < 0) or zero.
void conv_forward(float* xc, const float* xz, const MambaParams& p, const Dims& g, const float* conv_state) {
  const std::vector<float> w = conv_taps(p);
  const float* bias = p.conv_bias ? p.conv_bias->value.data<float>() : nullptr;
  const std::int64_t di = g.di, k = g.k, len = g.len;
#pragma omp parallel for schedule(static) if (g.rows * di * k >= (1 << 15))
  for (std::int64_t row = 0; row < g.rows; ++row) {
    const std::int64_t b = row / len, t = row % len;
    float* out = xc + row * di;
    if (bias)
      std::copy_n(bias, di, out);
    else
      std::fill_n(out, di, 0.0f);
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t s = t - (k - 1) + j;
      const float* wj = &w[j * di];
      if (s >= 0) {
        const float* src = xz + (b * len + s) * 2 * di;
        for (std::int64_t d = 0; d < di; ++d) out[d] += wj[d] * src[d];
      } else if (conv_state) {
        const float* src = conv_state + b * di * k + (k + s);
        for (std::int64_t d = 0; d < di; ++d) out[d] += wj[d] * src[d * k];
      }
    }
  }
}

// After a call: the conv state keeps the last K inputs of (old state, new x).
void conv_state_update(Tensor& conv_state, const float* xz, const Dims& g, std::int64_t batch) {
  const std::int64_t di = g.di, k = g.k, len = g.len;
  Tensor next = Tensor::empty(conv_state.shape());
  const float* old = conv_state.data<float>();
  float* dst = next.data<float>();
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t d = 0; d < di; ++d)
      for (std::int64_t j = 0; j < k; ++j) {
        const std::int64_t s = len - k + j;  // position of slot j
        dst[(b * di + d) * k + j] = s >= 0 ? xz[(b * len + s) * 2 * di + d] : old[(b * di + d) * k + len + j];
      }
  conv_state.copy_from(next);
}

// dx[s] = sum_k dxc[s + K - 1 - k] w[:, k] (into the first Di columns of dxz);
// dw[d, k] += sum_t dxc[t, d] x[t - K + 1 + k, d]; dbias += sum_t dxc[t].
void conv_backward(float* dxz, const float* dxc, const float* xz, const MambaParams& p, const Dims& g) {
  const std::vector<float> w = conv_taps(p);
  const std::int64_t di = g.di, k = g.k, len = g.len;
#pragma omp parallel for schedule(static) if (g.rows * di * k >= (1 << 15))
  for (std::int64_t row = 0; row < g.rows; ++row) {
    const std::int64_t b = row / len, s = row % len;
    float* out = dxz + row * 2 * di;
    std::fill_n(out, di, 0.0f);
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t t = s + (k - 1) - j;
      if (t >= len) continue;
      const float* src = dxc + (b * len + t) * di;
      const float* wj = &w[j * di];
      for (std::int64_t d = 0; d < di; ++d) out[d] += wj[d] * src[d];
    }
  }
  constexpr std::int64_t kBlock = 64;
  const std::int64_t blocks = (di + kBlock - 1) / kBlock;
  float* dw = p.conv_weight->grad.data<float>();
  float* dbias = p.conv_bias ? p.conv_bias->grad.data<float>() : nullptr;
#pragma omp parallel for schedule(static) if (g.rows * di * k >= (1 << 15))
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    const std::int64_t d0 = blk * kBlock, width = std::min(kBlock, di - d0);
    std::vector<float> acc(static_cast<std::size_t>((k + 1) * kBlock), 0.0f);  // K taps, then the bias
    for (std::int64_t row = 0; row < g.rows; ++row) {
      const std::int64_t b = row / len, t = row % len;
      const float* grad = dxc + row * di + d0;
      for (std::int64_t j = 0; j < k; ++j) {
        const std::int64_t s = t - (k - 1) + j;
        if (s < 0) continue;
        const float* src = xz + (b * len + s) * 2 * di + d0;
        float* a = &acc[j * kBlock];
        for (std::int64_t d = 0; d < width; ++d) a[d] += grad[d] * src[d];
      }
      float* a = &acc[k * kBlock];
      for (std::int64_t d = 0; d < width; ++d) a[d] += grad[d];
    }
    for (std::int64_t d = 0; d < width; ++d) {
      for (std::int64_t j = 0; j < k; ++j) dw[(d0 + d) * k + j] += acc[j * kBlock + d];
      if (dbias) dbias[d0 + d] += acc[k * kBlock + d];
    }
  }
}

// pre = dt_low W_dt^T + dt_bias ([rows, Di]).
void delta_preactivation(float* pre, const float* x_dbl, const MambaParams& p, const Dims& g) {
  gemm(Trans::N, Trans::T, g.rows, g.di, g.r, 1.0f, x_dbl, g.xw, p.dt_proj->value.data<float>(), g.r, 0.0f, pre, g.di);
  const float* bias = p.dt_bias->value.data<float>();
#pragma omp parallel for schedule(static) if (g.rows * g.di >= (1 << 15))
  for (std::int64_t row = 0; row < g.rows; ++row)
    for (std::int64_t d = 0; d < g.di; ++d) pre[row * g.di + d] += bias[d];
}

// delta = softplus(pre), in place.
void delta_forward(float* delta, const float* x_dbl, const MambaParams& p, const Dims& g) {
  delta_preactivation(delta, x_dbl, p, g);
  const std::int64_t total = g.rows * g.di;
  mamba_softplus_forward(delta, total);
}

// ddelta *= softplus'(pre) in place, pre recomputed (one small GEMM) rather
// than kept: dLoss/dpre.
void delta_backward(float* ddelta, const float* x_dbl, const MambaParams& p, const Dims& g) {
  Tensor pre = Tensor::empty({g.rows, g.di});
  float* pp = pre.data<float>();
  delta_preactivation(pp, x_dbl, p, g);
  const std::int64_t total = g.rows * g.di;
  mamba_softplus_backward(ddelta, pp, total);
}

// acc[d] += sum_rows v[row, d] ([rows, Di]), channel blocks in parallel, rows in order.
void column_sums(float* acc, const float* v, const Dims& g) {
  constexpr std::int64_t kBlock = 64;
  const std::int64_t blocks = (g.di + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (g.rows * g.di >= (1 << 15))
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    const std::int64_t d0 = blk * kBlock, width = std::min(kBlock, g.di - d0);
    float sum[kBlock] = {};
    for (std::int64_t row = 0; row < g.rows; ++row)
      for (std::int64_t d = 0; d < width; ++d) sum[d] += v[row * g.di + d0 + d];
    for (std::int64_t d = 0; d < width; ++d) acc[d0 + d] += sum[d];
  }
}

// gated = y * SiLU(z) (z: columns Di.. of xz), per row.
void gate_forward(float* gated, const float* y, const float* xz, const Dims& g) {
#pragma omp parallel for schedule(static) if (g.rows * g.di >= (1 << 15))
  for (std::int64_t row = 0; row < g.rows; ++row)
    swiglu_forward(gated + row * g.di, xz + row * 2 * g.di + g.di, y + row * g.di, g.di);
}

}  // namespace

std::vector<const Tensor*> MambaSaved::tensors() const {
  std::vector<const Tensor*> out;
  for (const Tensor* t : {&xz, &xc, &u, &x_dbl, &delta, &y_ssm, &gated, &chunk_states})
    if (t->defined()) out.push_back(t);
  return out;
}

std::size_t MambaSaved::bytes() const {
  std::size_t total = 0;
  for (const Tensor* t : tensors()) total += t->nbytes();
  return total;
}

MambaCache mamba_new_cache(const MambaParams& p, std::int64_t batch) {
  MF_CHECK(batch >= 1, kOp, " generation batch must be >= 1, got ", batch);
  return {Tensor::zeros({batch, p.inner, p.conv_kernel}), Tensor::zeros({batch, p.inner, p.state_size})};
}

void mamba_check(const Tensor& x, std::int64_t batch, std::int64_t seq_len, const MambaParams& p,
                 const MambaCache* cache) {
  MF_CHECK(p.hidden >= 1 && p.inner >= 1 && p.state_size >= 1 && p.conv_kernel >= 1 && p.dt_rank >= 1 &&
               p.chunk_len >= 1,
           kOp, " sizes must be >= 1: hidden ", p.hidden, ", inner ", p.inner, ", state_size ", p.state_size,
           ", conv_kernel ", p.conv_kernel, ", time_step_rank ", p.dt_rank, ", chunk_len ", p.chunk_len);
  MF_CHECK(batch >= 1 && seq_len >= 1, kOp, " batch and seq_len must be >= 1 but are ", batch, " and ", seq_len);
  MF_CHECK(x.defined() && x.dtype() == DType::F32 && x.dim() == 2 && x.is_contiguous(), kOp,
           " input must be a contiguous float32 [B*L, C] tensor");
  MF_CHECK(x.size(0) == batch * seq_len, kOp, " input has ", x.size(0), " rows but batch ", batch, " x seq_len ",
           seq_len, " = ", batch * seq_len);
  MF_CHECK(x.size(1) == p.hidden, kOp, " input has ", x.size(1), " features but hidden_size is ", p.hidden);
  const std::int64_t di = p.inner, n = p.state_size;
  check_param(p.in_proj, "in_proj.weight", {2 * di, p.hidden});
  if (p.in_proj_bias) check_param(p.in_proj_bias, "in_proj.bias", {2 * di});
  check_param(p.conv_weight, "conv1d.weight", {di, 1, p.conv_kernel});
  if (p.conv_bias) check_param(p.conv_bias, "conv1d.bias", {di});
  check_param(p.x_proj, "x_proj.weight", {p.dt_rank + 2 * n, di});
  check_param(p.dt_proj, "dt_proj.weight", {di, p.dt_rank});
  check_param(p.dt_bias, "dt_proj.bias", {di});
  check_param(p.a_log, "A_log", {di, n});
  check_param(p.d_skip, "D", {di});
  check_param(p.out_proj, "out_proj.weight", {p.hidden, di});
  if (p.out_proj_bias) check_param(p.out_proj_bias, "out_proj.bias", {p.hidden});
  if (cache) {
    MF_CHECK(cache->conv.defined() && cache->conv.shape() == Shape({batch, di, p.conv_kernel}), kOp,
             " generation conv state must be [B, Di, K] = [", batch, ", ", di, ", ", p.conv_kernel, "] but is ",
             cache->conv.defined() ? shape_str(cache->conv.shape()) : std::string("undefined"),
             " (a state made for another batch size?)");
    MF_CHECK(cache->ssm.defined() && cache->ssm.shape() == Shape({batch, di, n}), kOp,
             " generation SSM state must be [B, Di, N] = [", batch, ", ", di, ", ", n, "]");
  }
}

void mamba_forward(const Tensor& out, MambaSaved* saved, const Tensor& x, std::int64_t batch, std::int64_t seq_len,
                   const MambaParams& p, MambaCache* cache) {
  mamba_check(x, batch, seq_len, p, cache);
  MF_CHECK(!(saved && cache), kOp, " a forward that continues a generation state is inference only (no backward)");
  out.check_shape({batch * seq_len, p.hidden}, "mamba", "output");
  const Dims g = dims_of(p, batch, seq_len);
  MambaSaved local;
  MambaSaved& s = saved ? *saved : local;
  s.xz = Tensor::empty({g.rows, 2 * g.di});
  s.xc = Tensor::empty({g.rows, g.di});
  s.u = Tensor::empty({g.rows, g.di});
  s.x_dbl = Tensor::empty({g.rows, g.xw});
  s.delta = Tensor::empty({g.rows, g.di});
  s.y_ssm = Tensor::empty({g.rows, g.di});
  s.gated = Tensor::empty({g.rows, g.di});
  s.chunk_states =
      saved ? Tensor::empty({batch, selective_scan_chunks(seq_len, p.chunk_len), g.di, g.n}) : Tensor();
  linear_forward(s.xz, x, p.in_proj->value, bias_of(p.in_proj_bias));
  conv_forward(s.xc.data<float>(), s.xz.data<float>(), p, g, cache ? cache->conv.data<float>() : nullptr);
  if (cache) conv_state_update(cache->conv, s.xz.data<float>(), g, batch);
  silu_forward(s.u.data<float>(), s.xc.data<float>(), s.u.numel());
  linear_forward(s.x_dbl, s.u, p.x_proj->value, Tensor());
  delta_forward(s.delta.data<float>(), s.x_dbl.data<float>(), p, g);
  const SelectiveScanInputs in{s.u, s.delta, p.a_log->value, s.x_dbl.slice(1, g.r, g.r + g.n),
                               s.x_dbl.slice(1, g.r + g.n, g.xw), p.d_skip->value};
  selective_scan_forward(s.y_ssm, s.chunk_states, in, batch, p.chunk_len, cache ? cache->ssm : Tensor());
  gate_forward(s.gated.data<float>(), s.y_ssm.data<float>(), s.xz.data<float>(), g);
  linear_forward(out, s.gated, p.out_proj->value, bias_of(p.out_proj_bias));
}

void mamba_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MambaSaved& s, std::int64_t batch,
                    std::int64_t seq_len, const MambaParams& p) {
  mamba_check(x, batch, seq_len, p, nullptr);
  MF_CHECK(s.chunk_states.defined() && s.xz.defined(), kOp, " backward called without the saved activations");
  const Dims g = dims_of(p, batch, seq_len);
  dx.check_shape({g.rows, g.c}, "mamba", "dx");
  dy.check_shape({g.rows, g.c}, "mamba", "dy");
  // out = gated W_out^T: dgated = dy W_out.
  Tensor dgated = Tensor::empty({g.rows, g.di});
  linear_backward(dgated, p.out_proj->grad, bias_grad_of(p.out_proj_bias), dy, s.gated, p.out_proj->value);
  // gated = y * SiLU(z): dy_ssm, and dz into the last Di columns of dxz.
  Tensor dxz = Tensor::empty({g.rows, 2 * g.di}), dy_ssm = Tensor::empty({g.rows, g.di});
  {
    float *dz = dxz.data<float>(), *dys = dy_ssm.data<float>();
    const float *dgp = dgated.data<float>(), *xz = s.xz.data<float>(), *ys = s.y_ssm.data<float>();
#pragma omp parallel for schedule(static) if (g.rows * g.di >= (1 << 15))
    for (std::int64_t row = 0; row < g.rows; ++row)
      swiglu_backward(dz + row * 2 * g.di + g.di, dys + row * g.di, dgp + row * g.di, xz + row * 2 * g.di + g.di,
                      ys + row * g.di, g.di);
  }
  // The scan: du, ddelta, and dB, dC into their columns of dx_dbl.
  Tensor du = Tensor::empty({g.rows, g.di}), ddelta = Tensor::empty({g.rows, g.di});
  Tensor dx_dbl = Tensor::empty({g.rows, g.xw});
  const SelectiveScanInputs in{s.u, s.delta, p.a_log->value, s.x_dbl.slice(1, g.r, g.r + g.n),
                               s.x_dbl.slice(1, g.r + g.n, g.xw), p.d_skip->value};
  const SelectiveScanGrads sg{du, ddelta, dx_dbl.slice(1, g.r, g.r + g.n), dx_dbl.slice(1, g.r + g.n, g.xw),
                              p.a_log->grad, p.d_skip->grad};
  selective_scan_backward(sg, dy_ssm, in, s.chunk_states, batch, p.chunk_len);
  // Delta = softplus(dt_low W_dt^T + dt_bias).
  float* ddt = ddelta.data<float>();
  delta_backward(ddt, s.x_dbl.data<float>(), p, g);
  column_sums(p.dt_bias->grad.data<float>(), ddt, g);
  gemm(Trans::T, Trans::N, g.di, g.r, g.rows, 1.0f, ddt, g.di, s.x_dbl.data<float>(), g.xw, 1.0f,
       p.dt_proj->grad.data<float>(), g.r);
  gemm(Trans::N, Trans::N, g.rows, g.r, g.di, 1.0f, ddt, g.di, p.dt_proj->value.data<float>(), g.r, 0.0f,
       dx_dbl.data<float>(), g.xw);
  // x_dbl = u W_x^T: du += dx_dbl W_x.
  linear_backward(du, p.x_proj->grad, Tensor(), dx_dbl, s.u, p.x_proj->value, true);
  // u = SiLU(xc), then the conv (into the first Di columns of dxz), then in_proj.
  silu_backward(du.data<float>(), du.data<float>(), s.xc.data<float>(), du.numel());
  conv_backward(dxz.data<float>(), du.data<float>(), s.xz.data<float>(), p, g);
  linear_backward(dx, p.in_proj->grad, bias_grad_of(p.in_proj_bias), dxz, x, p.in_proj->value);
}

}  // namespace mf
