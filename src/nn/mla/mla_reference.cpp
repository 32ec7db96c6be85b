// Reference twin of Multi-head Latent Attention: the naive form of mla.h
// written out element by element in double (projections, RMSNorms, RoPE from
// the formula with the table's config, every head's K and V, softmax).
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "nn/mla/mla.h"

namespace mf::reference {

namespace {

using Mat = std::vector<double>;  // row-major

// out[n, o] = sum_i in[n, i] W[o, i] (+ bias[o])
Mat linear(const Mat& in, std::int64_t rows, std::int64_t cols, const Parameter* w, const Parameter* bias) {
  const std::int64_t outs = w->value.size(0);
  const float* wp = w->value.data<float>();
  Mat out(static_cast<std::size_t>(rows * outs));
  for (std::int64_t n = 0; n < rows; ++n)
    for (std::int64_t o = 0; o < outs; ++o) {
      double s = bias ? bias->value.data<float>()[o] : 0.0;
      for (std::int64_t i = 0; i < cols; ++i) s += in[n * cols + i] * wp[o * cols + i];
      out[n * outs + o] = s;
    }
  return out;
}

// Columns [from, from + width) of each row, RMS-normalized with weight w.
Mat rms_norm(const Mat& in, std::int64_t rows, std::int64_t cols, std::int64_t from, std::int64_t width,
             const Parameter* w, double eps) {
  Mat out(static_cast<std::size_t>(rows * width));
  for (std::int64_t n = 0; n < rows; ++n) {
    double ms = 0;
    for (std::int64_t i = 0; i < width; ++i) ms += in[n * cols + from + i] * in[n * cols + from + i];
    const double inv = 1.0 / std::sqrt(ms / static_cast<double>(width) + eps);
    for (std::int64_t i = 0; i < width; ++i)
      out[n * width + i] = in[n * cols + from + i] * inv * w->value.data<float>()[i];
  }
  return out;
}

// Interleaved RoPE of v[0 .. R) at position pos: pairs (2i, 2i + 1) turn by pos * inv_freq_i, times the attention factor.
void rotate(double* v, std::int64_t pos, const std::vector<double>& inv_freq, double factor) {
  for (std::size_t i = 0; i < inv_freq.size(); ++i) {
    const double a = static_cast<double>(pos) * inv_freq[i], c = std::cos(a) * factor, s = std::sin(a) * factor;
    const double x0 = v[2 * i], x1 = v[2 * i + 1];
    v[2 * i] = x0 * c - x1 * s;
    v[2 * i + 1] = x1 * c + x0 * s;
  }
}

}  // namespace

Tensor mla_forward(const Tensor& x, std::int64_t batch, std::int64_t seq_len, bool causal, const MlaParams& p) {
  MF_CHECK(x.dim() == 2 && x.size(0) == batch * seq_len, "[mla reference] x must be [B*L, C]");
  const std::int64_t n = batch * seq_len, c = x.size(1), h = p.num_heads, dn = p.qk_nope_head_dim;
  const std::int64_t dr = p.qk_rope_head_dim, dq = p.q_head_dim(), dv = p.v_head_dim, r = p.kv_lora_rank;
  const std::int64_t w = dn + dv, rq = p.q_lora_rank;
  const Tensor xc = x.contiguous();
  Mat xm(xc.data<float>(), xc.data<float>() + n * c);
  Mat q;
  if (rq > 0) {
    const Mat cq = linear(xm, n, c, p.q_a_proj, p.q_a_bias);
    q = linear(rms_norm(cq, n, rq, 0, rq, p.q_a_layernorm, p.rms_norm_eps), n, rq, p.q_b_proj, nullptr);
  } else {
    q = linear(xm, n, c, p.q_proj, nullptr);
  }
  Mat ckv = linear(xm, n, c, p.kv_a_proj_with_mqa, p.kv_a_bias);  // [N, r + dr]
  const Mat kv = linear(rms_norm(ckv, n, r + dr, 0, r, p.kv_a_layernorm, p.rms_norm_eps), n, r, p.kv_b_proj, nullptr);
  const RopeConfig& rc = p.rope->config();
  const std::vector<double> inv_freq = rope_inv_freq(rc, seq_len);
  const double factor = rope_attention_factor(rc);
  for (std::int64_t t = 0; t < n; ++t) {
    const std::int64_t pos = t % seq_len;
    for (std::int64_t hh = 0; hh < h; ++hh) rotate(&q[(t * h + hh) * dq + dn], pos, inv_freq, factor);
    rotate(&ckv[t * (r + dr) + r], pos, inv_freq, factor);
  }
  Mat merged(static_cast<std::size_t>(n * h * dv), 0.0);
  std::vector<double> s(static_cast<std::size_t>(seq_len));
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t hh = 0; hh < h; ++hh)
      for (std::int64_t i = 0; i < seq_len; ++i) {
        const double* qi = &q[((b * seq_len + i) * h + hh) * dq];
        const std::int64_t keys = causal ? i + 1 : seq_len;
        double mx = -std::numeric_limits<double>::infinity();
        for (std::int64_t j = 0; j < keys; ++j) {
          const std::int64_t t = b * seq_len + j;
          double dot = 0;
          for (std::int64_t d = 0; d < dn; ++d) dot += qi[d] * kv[(t * h + hh) * w + d];
          for (std::int64_t d = 0; d < dr; ++d) dot += qi[dn + d] * ckv[t * (r + dr) + r + d];
          s[j] = dot * p.softmax_scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (std::int64_t j = 0; j < keys; ++j) sum += (s[j] = std::exp(s[j] - mx));
        double* o = &merged[((b * seq_len + i) * h + hh) * dv];
        for (std::int64_t j = 0; j < keys; ++j)
          for (std::int64_t d = 0; d < dv; ++d) o[d] += s[j] / sum * kv[((b * seq_len + j) * h + hh) * w + dn + d];
      }
  const Mat y = linear(merged, n, h * dv, p.o_proj, p.o_bias);
  Tensor out = Tensor::empty({n, c});
  for (std::int64_t i = 0; i < n * c; ++i) out.data<float>()[i] = static_cast<float>(y[i]);
  return out;
}

}  // namespace mf::reference
