// Linformer sublayer (Wang et al. 2020), fast path. Projections keep the
// token-major [N, H*D] rows of linear.h; E/F products read them in place with
// strided GEMMs (one per sequence when E is shared by the heads, one per
// (sequence, head) otherwise), and the attention runs on the varlen layout with
// L query rows and kp key rows per sequence, so time is linear in L.
#include "nn/linformer/linformer.h"

#include <omp.h>

#include <algorithm>
#include <exception>
#include <limits>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/gemm.h"
#include "nn/attention/attention.h"
#include "nn/linear.h"

namespace mf {

namespace {

constexpr const char* kOp = "[linformer]";
// Independent products of at most this many FLOPs run in parallel (each
// single-threaded); larger ones run one after another on the threaded GEMM.
// The threshold of gemm_batched (kBatchParallelMaxFlops in gemm.cpp).
constexpr double kParallelMaxFlops = 4.2e6;

const char* projection_name(LinformerProjection p) {
  switch (p) {
    case LinformerProjection::Linear: return "linear";
    case LinformerProjection::Conv: return "conv";
    case LinformerProjection::Mean: return "mean";
    case LinformerProjection::Max: return "max";
  }
  return "?";
}

const char* sharing_name(LinformerSharing s) {
  switch (s) {
    case LinformerSharing::None: return "none";
    case LinformerSharing::Headwise: return "headwise";
    case LinformerSharing::KeyValue: return "kv";
    case LinformerSharing::Layerwise: return "layerwise";
  }
  return "?";
}

bool has_weights(const LinformerParams& p) {
  return p.projection == LinformerProjection::Linear || p.projection == LinformerProjection::Conv;
}
bool shares_kv(const LinformerParams& p) {
  return p.sharing == LinformerSharing::KeyValue || p.sharing == LinformerSharing::Layerwise;
}
bool per_head(const LinformerParams& p) { return p.sharing == LinformerSharing::None; }


// The sizes every stage needs. hd = Hkv*D is the row width of K, V, K', V'.
struct Geometry {
  std::int64_t batch, seq_len, kv_heads, head_dim, hd, max_len, proj_len, stride, rows;  // rows = kp
  Geometry(const LinformerParams& p, std::int64_t b, std::int64_t l)
      : batch(b), seq_len(l), kv_heads(p.num_kv_heads), head_dim(p.head_dim), hd(p.num_kv_heads * p.head_dim),
        max_len(p.max_len), proj_len(p.proj_len), stride(p.max_len / p.proj_len),
        rows(linformer_projected_len(p, l)) {}
};

// Runs fn(0..count-1), whose outputs are disjoint: in parallel (each GEMM then
// single-threaded) when each product is small, else in order.
template <typename Fn>
void run_products(std::int64_t count, double flops_each, const Fn& fn) {
  if (count <= 1 || flops_each > kParallelMaxFlops || num_threads() <= 1 || omp_in_parallel()) {
    for (std::int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  std::exception_ptr error;
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < count; ++i) {
    try {
      fn(i);
    } catch (...) {
#pragma omp critical(mf_linformer_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// rows [N, hd]: rows of padding tokens set to zero.
void zero_padding_rows(const Tensor& rows, const Tensor& mask) {
  if (!mask.defined()) return;
  const std::int32_t* m = mask.data<std::int32_t>();
  float* r = rows.data<float>();
  const std::int64_t n = rows.size(0), w = rows.size(1);
#pragma omp parallel for schedule(static) if (n * w >= (1 << 15))
  for (std::int64_t i = 0; i < n; ++i)
    if (m[i] == 0) std::fill(r + i * w, r + (i + 1) * w, 0.0f);
}

// ---- Linear: K'_b,h [k, D] = E_h[:, :L] K_b,h (E read with ld n) -------------

void linear_project_forward(float* dst, const float* src, const float* e, const Geometry& g, bool heads) {
  const std::int64_t k = g.proj_len, l = g.seq_len, n = g.max_len, hd = g.hd, d = g.head_dim;
  if (!heads) {  // one E for all heads: one GEMM per sequence over all hd columns
    run_products(g.batch, 2.0 * k * hd * l, [&](std::int64_t b) {
      gemm(Trans::N, Trans::N, k, hd, l, 1.0f, e, n, src + b * l * hd, hd, 0.0f, dst + b * k * hd, hd);
    });
    return;
  }
  run_products(g.batch * g.kv_heads, 2.0 * k * d * l, [&](std::int64_t i) {
    const std::int64_t b = i / g.kv_heads, h = i % g.kv_heads;
    gemm(Trans::N, Trans::N, k, d, l, 1.0f, e + h * k * n, n, src + b * l * hd + h * d, hd, 0.0f,
         dst + b * k * hd + h * d, hd);
  });
}

// dsrc = E[:, :L]^T dK' (overwritten); dE[:, :L] += dK' K^T.
void linear_project_backward(float* dsrc, float* de, const float* dproj, const float* src, const float* e,
                             const Geometry& g, bool heads) {
  const std::int64_t k = g.proj_len, l = g.seq_len, n = g.max_len, hd = g.hd, d = g.head_dim;
  if (!heads) {
    run_products(g.batch, 2.0 * k * hd * l, [&](std::int64_t b) {
      gemm(Trans::T, Trans::N, l, hd, k, 1.0f, e, n, dproj + b * k * hd, hd, 0.0f, dsrc + b * l * hd, hd);
    });
    for (std::int64_t b = 0; b < g.batch; ++b)  // one accumulator: sequences in order
      gemm(Trans::N, Trans::T, k, l, hd, 1.0f, dproj + b * k * hd, hd, src + b * l * hd, hd, 1.0f, de, n);
    return;
  }
  run_products(g.batch * g.kv_heads, 2.0 * k * d * l, [&](std::int64_t i) {
    const std::int64_t b = i / g.kv_heads, h = i % g.kv_heads;
    gemm(Trans::T, Trans::N, l, d, k, 1.0f, e + h * k * n, n, dproj + b * k * hd + h * d, hd, 0.0f,
         dsrc + b * l * hd + h * d, hd);
  });
  run_products(g.kv_heads, 2.0 * k * d * l * g.batch, [&](std::int64_t h) {
    for (std::int64_t b = 0; b < g.batch; ++b)
      gemm(Trans::N, Trans::T, k, l, d, 1.0f, dproj + b * k * hd + h * d, hd, src + b * l * hd + h * d, hd, 1.0f,
           de + h * k * n, n);
  });
}

// ---- Conv: kernel = stride = s over the sequence, D -> D channels ------------
// As a GEMM per head: windows [B*kp, s*D] (row j = rows j*s .. j*s+s-1 of the
// head, zero past L) times W_h^T, with W_h [D_out, D_in, s] rearranged to
// [D_out, s*D_in] (column t*D + c holds W[o, c, t]).

// src [N, hd] -> [Hkv, B*kp, s*D]
Tensor conv_windows(const float* src, const Geometry& g) {
  const std::int64_t s = g.stride, d = g.head_dim, kp = g.rows, l = g.seq_len;
  Tensor win = Tensor::empty({g.kv_heads, g.batch * kp, s * d});
  float* w = win.data<float>();
  const std::int64_t total = g.kv_heads * g.batch * kp;
#pragma omp parallel for schedule(static) if (total * s * d >= (1 << 15))
  for (std::int64_t r = 0; r < total; ++r) {
    const std::int64_t h = r / (g.batch * kp), b = (r / kp) % g.batch, j = r % kp;
    float* out = w + r * s * d;
    for (std::int64_t t = 0; t < s; ++t) {
      const std::int64_t i = j * s + t;
      if (i < l)
        std::copy_n(src + (b * l + i) * g.hd + h * d, d, out + t * d);
      else
        std::fill_n(out + t * d, d, 0.0f);
    }
  }
  return win;
}

// [G, D, D, s] (torch Conv1d layout) -> [G, D, s*D]
Tensor conv_weight_rows(const Tensor& w) {
  const std::int64_t d = w.size(-2), s = w.size(-1);
  return w.reshape({-1, d, d, s}).permute({0, 1, 3, 2}).contiguous().reshape({-1, d, s * d});
}

void conv_project_forward(float* dst, const float* src, const Tensor& w, const Geometry& g, bool heads) {
  const std::int64_t s = g.stride, d = g.head_dim, rows = g.batch * g.rows, sd = s * d;
  const Tensor win = conv_windows(src, g);
  const Tensor wr = conv_weight_rows(w);
  const float* wp = win.data<float>();
  const float* wrp = wr.data<float>();
  run_products(g.kv_heads, 2.0 * rows * d * sd, [&](std::int64_t h) {
    gemm(Trans::N, Trans::T, rows, d, sd, 1.0f, wp + h * rows * sd, sd, wrp + (heads ? h * d * sd : 0), sd, 0.0f,
         dst + h * d, g.hd);
  });
}

void conv_project_backward(float* dsrc, const Tensor& dw, const float* dproj, const float* src, const Tensor& w,
                           const Geometry& g, bool heads) {
  const std::int64_t s = g.stride, d = g.head_dim, kp = g.rows, rows = g.batch * kp, sd = s * d, l = g.seq_len;
  const Tensor win = conv_windows(src, g);
  const Tensor wr = conv_weight_rows(w);
  const float* wp = win.data<float>();
  const float* wrp = wr.data<float>();
  // dwindows_h = dK'_h W_h  ([B*kp, s*D]); dW_h += dK'_h^T windows_h.
  Tensor dwin = Tensor::empty({g.kv_heads, rows, sd});
  float* dwp = dwin.data<float>();
  run_products(g.kv_heads, 2.0 * rows * d * sd, [&](std::int64_t h) {
    gemm(Trans::N, Trans::N, rows, sd, d, 1.0f, dproj + h * d, g.hd, wrp + (heads ? h * d * sd : 0), sd, 0.0f,
         dwp + h * rows * sd, sd);
  });
  Tensor dwr = Tensor::zeros(wr.shape());  // [G, D, s*D]
  float* dwrp = dwr.data<float>();
  if (heads) {
    run_products(g.kv_heads, 2.0 * rows * d * sd, [&](std::int64_t h) {
      gemm(Trans::T, Trans::N, d, sd, rows, 1.0f, dproj + h * d, g.hd, wp + h * rows * sd, sd, 0.0f,
           dwrp + h * d * sd, sd);
    });
  } else {
    for (std::int64_t h = 0; h < g.kv_heads; ++h)  // one accumulator: heads in order
      gemm(Trans::T, Trans::N, d, sd, rows, 1.0f, dproj + h * d, g.hd, wp + h * rows * sd, sd, 1.0f, dwrp, sd);
  }
  // dW[.., o, c, t] += dWr[.., o, t*D + c]
  float* gp = dw.data<float>();
  const std::int64_t groups = dwr.size(0);
  for (std::int64_t gi = 0; gi < groups; ++gi)
    for (std::int64_t o = 0; o < d; ++o)
      for (std::int64_t c = 0; c < d; ++c)
        for (std::int64_t t = 0; t < s; ++t)
          gp[((gi * d + o) * d + c) * s + t] += dwrp[(gi * d + o) * sd + t * d + c];
  // Windows back to token rows (the zero padding past L has no source).
  const std::int64_t total = g.kv_heads * rows;
#pragma omp parallel for schedule(static) if (total * sd >= (1 << 15))
  for (std::int64_t r = 0; r < total; ++r) {
    const std::int64_t h = r / rows, b = (r / kp) % g.batch, j = r % kp;
    for (std::int64_t t = 0; t < s && j * s + t < l; ++t)
      std::copy_n(dwp + r * sd + t * d, d, dsrc + (b * l + j * s + t) * g.hd + h * d);
  }
}

// ---- Mean and max pooling over windows of s rows (all hd columns at once) ----

void mean_project_forward(float* dst, const float* src, const Geometry& g) {
  const std::int64_t s = g.stride, kp = g.rows, l = g.seq_len, hd = g.hd, total = g.batch * kp;
  const float inv = 1.0f / static_cast<float>(s);
#pragma omp parallel for schedule(static) if (total * s * hd >= (1 << 15))
  for (std::int64_t r = 0; r < total; ++r) {
    const std::int64_t b = r / kp, j = r % kp;
    float* out = dst + r * hd;
    std::fill_n(out, hd, 0.0f);
    for (std::int64_t i = j * s; i < std::min(l, j * s + s); ++i) {
      const float* in = src + (b * l + i) * hd;
      for (std::int64_t c = 0; c < hd; ++c) out[c] += in[c];
    }
    for (std::int64_t c = 0; c < hd; ++c) out[c] *= inv;
  }
}

void mean_project_backward(float* dsrc, const float* dproj, const Geometry& g) {
  const std::int64_t s = g.stride, kp = g.rows, l = g.seq_len, hd = g.hd, n = g.batch * l;
  const float inv = 1.0f / static_cast<float>(s);
#pragma omp parallel for schedule(static) if (n * hd >= (1 << 15))
  for (std::int64_t row = 0; row < n; ++row) {
    const float* in = dproj + ((row / l) * kp + (row % l) / s) * hd;
    float* out = dsrc + row * hd;
    for (std::int64_t c = 0; c < hd; ++c) out[c] = in[c] * inv;
  }
}

// argmax: int32 [B*kp, hd], the row within the sequence that won, -1 = zero pad.
void max_project_forward(float* dst, std::int32_t* argmax, const float* src, const Geometry& g) {
  const std::int64_t s = g.stride, kp = g.rows, l = g.seq_len, hd = g.hd, total = g.batch * kp;
#pragma omp parallel for schedule(static) if (total * s * hd >= (1 << 15))
  for (std::int64_t r = 0; r < total; ++r) {
    const std::int64_t b = r / kp, j = r % kp, end = std::min(l, j * s + s);
    float* out = dst + r * hd;
    std::int32_t* arg = argmax + r * hd;
    std::fill_n(out, hd, -std::numeric_limits<float>::infinity());
    std::fill_n(arg, hd, -1);
    for (std::int64_t i = j * s; i < end; ++i) {  // first max wins (strict >)
      const float* in = src + (b * l + i) * hd;
      for (std::int64_t c = 0; c < hd; ++c)
        if (in[c] > out[c]) {
          out[c] = in[c];
          arg[c] = static_cast<std::int32_t>(i);
        }
    }
    if (end < j * s + s)  // partial window: the zero rows past L come after the real ones
      for (std::int64_t c = 0; c < hd; ++c)
        if (0.0f > out[c]) {
          out[c] = 0.0f;
          arg[c] = -1;
        }
  }
}

void max_project_backward(float* dsrc, const float* dproj, const std::int32_t* argmax, const Geometry& g) {
  const std::int64_t kp = g.rows, l = g.seq_len, hd = g.hd, total = g.batch * kp;
  std::fill_n(dsrc, g.batch * l * hd, 0.0f);
  // Each source row belongs to one window: rows r write disjoint rows.
#pragma omp parallel for schedule(static) if (total * hd >= (1 << 15))
  for (std::int64_t r = 0; r < total; ++r) {
    const std::int64_t b = r / kp;
    for (std::int64_t c = 0; c < hd; ++c) {
      const std::int32_t i = argmax[r * hd + c];
      if (i >= 0) dsrc[(b * l + i) * hd + c] += dproj[r * hd + c];
    }
  }
}

// K' = proj(K) for keys or values; w is E or F (unused for pooling).
void project_forward(const Tensor& dst, const Tensor& argmax, const Tensor& src, const Parameter* w,
                     const Geometry& g, const LinformerParams& p) {
  float* out = dst.data<float>();
  const float* in = src.data<float>();
  switch (p.projection) {
    case LinformerProjection::Linear: linear_project_forward(out, in, w->value.data<float>(), g, per_head(p)); break;
    case LinformerProjection::Conv: conv_project_forward(out, in, w->value, g, per_head(p)); break;
    case LinformerProjection::Mean: mean_project_forward(out, in, g); break;
    case LinformerProjection::Max: max_project_forward(out, argmax.data<std::int32_t>(), in, g); break;
  }
}

void project_backward(const Tensor& dsrc, const Tensor& dproj, const Tensor& src, const Tensor& argmax,
                      const Parameter* w, const Geometry& g, const LinformerParams& p) {
  float* out = dsrc.data<float>();
  const float* dp = dproj.data<float>();
  switch (p.projection) {
    case LinformerProjection::Linear:
      linear_project_backward(out, w->grad.data<float>(), dp, src.data<float>(), w->value.data<float>(), g,
                              per_head(p));
      break;
    case LinformerProjection::Conv:
      conv_project_backward(out, w->grad, dp, src.data<float>(), w->value, g, per_head(p));
      break;
    case LinformerProjection::Mean: mean_project_backward(out, dp, g); break;
    case LinformerProjection::Max: max_project_backward(out, dp, argmax.data<std::int32_t>(), g); break;
  }
}

VarlenSeqlens seqlens(std::int64_t b, std::int64_t lq, std::int64_t lk) {
  VarlenSeqlens s;
  for (std::int64_t i = 0; i <= b; ++i) {
    s.cu_seqlens_q.push_back(i * lq);
    s.cu_seqlens_k.push_back(i * lk);
  }
  return s;
}

void check_param_shape(const Parameter* w, const char* role, const Shape& shape, const LinformerParams& p) {
  MF_CHECK(w != nullptr, kOp, " projection '", projection_name(p.projection), "' with sharing '",
           sharing_name(p.sharing), "' needs parameter ", role, " of shape ", shape_str(shape), " but it is null");
  MF_CHECK(w->value.defined() && w->value.shape() == shape && w->value.is_contiguous() &&
               w->value.dtype() == DType::F32,
           kOp, " parameter ", role, " ('", w->name, "') must be a contiguous float32 tensor of shape ",
           shape_str(shape), " for projection '", projection_name(p.projection), "' with sharing '",
           sharing_name(p.sharing), "' but has shape ", shape_str(w->value.shape()));
}

}  // namespace

std::vector<std::pair<std::string, Shape>> linformer_projection_shapes(const LinformerParams& p) {
  MF_CHECK(p.num_kv_heads >= 1 && p.head_dim >= 1, kOp, " num_kv_heads (", p.num_kv_heads, ") and head_dim (",
           p.head_dim, ") must be >= 1");
  MF_CHECK(p.max_len >= 1, kOp, " max_len (n) must be >= 1 but is ", p.max_len);
  MF_CHECK(p.proj_len >= 1 && p.proj_len <= p.max_len, kOp, " proj_len (k) must be in [1, max_len = ", p.max_len,
           "] but is ", p.proj_len);
  if (p.projection != LinformerProjection::Linear)
    MF_CHECK(p.max_len % p.proj_len == 0, kOp, " projection '", projection_name(p.projection),
             "' has kernel = stride = n / k, so max_len (n = ", p.max_len, ") must be divisible by proj_len (k = ",
             p.proj_len, ")");
  if (!has_weights(p)) return {};
  Shape one;
  if (p.projection == LinformerProjection::Linear)
    one = {p.proj_len, p.max_len};
  else
    one = {p.head_dim, p.head_dim, p.max_len / p.proj_len};
  Shape shape = one;
  if (per_head(p)) shape.insert(shape.begin(), p.num_kv_heads);
  if (shares_kv(p)) return {{"e", shape}};
  return {{"e", shape}, {"f", shape}};
}

std::int64_t linformer_projected_len(const LinformerParams& p, std::int64_t seq_len) {
  if (p.projection == LinformerProjection::Linear) return p.proj_len;
  const std::int64_t s = p.max_len / p.proj_len;
  return (seq_len + s - 1) / s;
}

std::vector<const Tensor*> LinformerSaved::tensors() const {
  std::vector<const Tensor*> all;
  for (const Tensor* t : {&q, &k, &v, &k_argmax, &v_argmax, &kp, &vp, &out, &lse})
    if (t->defined()) all.push_back(t);
  return all;
}

std::size_t LinformerSaved::bytes() const {
  std::size_t total = 0;
  for (const Tensor* t : tensors()) total += t->nbytes();
  return total;
}

void linformer_check(const Tensor& x, std::int64_t batch, std::int64_t seq_len, const Tensor& mask,
                     const LinformerParams& p) {
  MF_CHECK(p.q && p.k && p.v && p.o, kOp, " the q, k, v and o projections are required");
  MF_CHECK(p.num_heads >= 1 && p.num_kv_heads >= 1 && p.num_heads % p.num_kv_heads == 0, kOp, " num_heads (",
           p.num_heads, ") must be a positive multiple of num_kv_heads (", p.num_kv_heads, ")");
  const auto shapes = linformer_projection_shapes(p);
  if (!has_weights(p)) {
    MF_CHECK(p.e == nullptr && p.f == nullptr, kOp, " projection '", projection_name(p.projection),
             "' (pooling) has no parameters, but ", p.e ? "e" : "f", " was given");
  } else {
    check_param_shape(p.e, "e", shapes[0].second, p);
    if (shares_kv(p))
      MF_CHECK(p.f == nullptr || p.f == p.e, kOp, " sharing '", sharing_name(p.sharing),
               "' uses e for keys and values: f must be null or e");
    else
      check_param_shape(p.f, "f", shapes[1].second, p);
  }
  MF_CHECK(x.defined() && x.dim() == 2 && x.dtype() == DType::F32 && x.is_contiguous(), kOp,
           " input must be a contiguous float32 [B*L, C] tensor but has shape ",
           x.defined() ? shape_str(x.shape()) : "(undefined)");
  MF_CHECK(batch >= 1 && seq_len >= 1 && x.size(0) == batch * seq_len, kOp, " input has ", x.size(0),
           " rows but batch ", batch, " x seq_len ", seq_len, " were given");
  MF_CHECK(seq_len <= p.max_len, kOp, " sequence length ", seq_len, " exceeds max_len (n) = ", p.max_len,
           ": the projections are sized for at most n tokens");
  const std::int64_t c = x.size(1), qd = p.num_heads * p.head_dim, kd = p.num_kv_heads * p.head_dim;
  p.q->value.check_shape({qd, c}, "linformer", p.q->name.c_str());
  p.k->value.check_shape({kd, c}, "linformer", p.k->name.c_str());
  p.v->value.check_shape({kd, c}, "linformer", p.v->name.c_str());
  p.o->value.check_shape({c, qd}, "linformer", p.o->name.c_str());
  if (p.q_bias) p.q_bias->value.check_shape({qd}, "linformer", p.q_bias->name.c_str());
  if (p.k_bias) p.k_bias->value.check_shape({kd}, "linformer", p.k_bias->name.c_str());
  if (p.v_bias) p.v_bias->value.check_shape({kd}, "linformer", p.v_bias->name.c_str());
  if (p.o_bias) p.o_bias->value.check_shape({c}, "linformer", p.o_bias->name.c_str());
  if (mask.defined()) {
    MF_CHECK(mask.dtype() == DType::I32, kOp, " key_padding_mask must be int32");
    MF_CHECK(mask.is_contiguous() && mask.shape() == Shape({batch, seq_len}), kOp,
             " key_padding_mask must be a contiguous [B, L] = ", shape_str({batch, seq_len}),
             " tensor but has shape ", shape_str(mask.shape()));
  }
}

void linformer_forward(const Tensor& y, LinformerSaved& s, const Tensor& x, std::int64_t batch,
                       std::int64_t seq_len, const Tensor& mask, const LinformerParams& p) {
  linformer_check(x, batch, seq_len, mask, p);
  y.check_shape(x.shape(), "linformer", "y");
  const Geometry g(p, batch, seq_len);
  const std::int64_t n = batch * seq_len, d = p.head_dim, rows = batch * g.rows;
  s = LinformerSaved{};
  s.q = linear_forward(x, p.q->value, bias_of(p.q_bias)).reshape({n, p.num_heads, d});  // [N, Hq, D]
  const Tensor k = linear_forward(x, p.k->value, bias_of(p.k_bias));                      // [N, Hkv*D]
  const Tensor v = linear_forward(x, p.v->value, bias_of(p.v_bias));                      // [N, Hkv*D]
  zero_padding_rows(k, mask);
  zero_padding_rows(v, mask);
  const bool is_max = p.projection == LinformerProjection::Max;
  if (is_max) {
    s.k_argmax = Tensor::empty({rows, g.hd}, DType::I32);
    s.v_argmax = Tensor::empty({rows, g.hd}, DType::I32);
  }
  s.kp = Tensor::empty({rows, p.num_kv_heads, d});
  s.vp = Tensor::empty({rows, p.num_kv_heads, d});
  project_forward(s.kp, s.k_argmax, k, p.e, g, p);
  project_forward(s.vp, s.v_argmax, v, shares_kv(p) ? p.e : p.f, g, p);
  if (has_weights(p)) {
    s.k = k;
    s.v = v;
  }
  // Non-causal, no mask: every query sees the kp projected rows of its sequence.
  AttentionOutput a = attention_varlen_forward(s.q, s.kp, s.vp, seqlens(batch, seq_len, g.rows), AttentionOptions{});
  s.out = a.out;
  s.lse = a.lse;
  linear_forward(y, s.out.reshape({n, p.num_heads * d}), p.o->value, bias_of(p.o_bias));
}

void linformer_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const LinformerSaved& s,
                        std::int64_t batch, std::int64_t seq_len, const Tensor& mask, const LinformerParams& p) {
  linformer_check(x, batch, seq_len, mask, p);
  dx.check_shape(x.shape(), "linformer", "dx");
  dy.check_shape(x.shape(), "linformer", "dy");
  const Geometry g(p, batch, seq_len);
  const std::int64_t n = batch * seq_len, d = p.head_dim, hq = p.num_heads;
  MF_CHECK(s.out.defined() && s.out.size(0) == n && s.kp.defined() && s.kp.size(0) == batch * g.rows, kOp,
           " backward called without the saved activations of a forward of this shape");
  // Output projection: dout = dy Wo, dWo += dy^T out.
  Tensor dout = Tensor::empty({n, hq * d});
  linear_backward(dout, p.o->grad, bias_grad_of(p.o_bias), dy, s.out.reshape({n, hq * d}), p.o->value);
  const AttentionGrads ga = attention_varlen_backward(s.q, s.kp, s.vp, s.out, s.lse, dout.reshape({n, hq, d}),
                                                      seqlens(batch, seq_len, g.rows), AttentionOptions{});
  // Projection backward: dK = proj^T(dK'), dE += ...; then the padding mask.
  const Tensor dk = Tensor::empty({n, g.hd}), dv = Tensor::empty({n, g.hd});
  project_backward(dk, ga.dk.contiguous(), s.k, s.k_argmax, p.e, g, p);
  project_backward(dv, ga.dv.contiguous(), s.v, s.v_argmax, shares_kv(p) ? p.e : p.f, g, p);
  zero_padding_rows(dk, mask);
  zero_padding_rows(dv, mask);
  linear_backward(dx, p.q->grad, bias_grad_of(p.q_bias), ga.dq.contiguous().reshape({n, hq * d}), x, p.q->value);
  linear_backward(dx, p.k->grad, bias_grad_of(p.k_bias), dk, x, p.k->value, /*accumulate_din=*/true);
  linear_backward(dx, p.v->grad, bias_grad_of(p.v_bias), dv, x, p.v->value, /*accumulate_din=*/true);
}

}  // namespace mf
