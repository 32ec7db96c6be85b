// Residual sublayer with pre/post/sandwich norm placement, forward and backward:
//   u = N_in(x) | x;  r = F(u);  r' = N_out(r) | r;  s = x + r';  y = N_post(s) | s
//   ds = N_post^T(dy) | dy;  dr = N_out^T(ds) | ds;  du = F^T(dr);  dx = ds + (N_in^T(du) | du)
#include "nn/block/residual_sublayer.h"

namespace mf {

namespace {

bool present(const NormParams& p) { return p.weight != nullptr; }

// out = a + b (element-wise, any size).
void add_into(const Tensor& out, const Tensor& a, const Tensor& b) {
  const std::int64_t n = a.numel();
  const float *pa = a.data<float>(), *pb = b.data<float>();
  float* po = out.data<float>();
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
  for (std::int64_t i = 0; i < n; ++i) po[i] = pa[i] + pb[i];
}

}  // namespace

Tensor residual_sublayer_forward(SublayerSaved& sv, const Tensor& x, const SublayerNorms& norms,
                                 const SublayerForward& f) {
  const Shape& shape = x.shape();
  sv = SublayerSaved{};
  if (present(norms.in)) {
    sv.u = Tensor::empty(shape);
    norm_forward(sv.u, sv.in_stats, x, norms.in);
  } else {
    sv.u = x;
  }
  Tensor r = Tensor::empty(shape);
  f(r, sv.u);
  Tensor r2 = r;
  if (present(norms.out)) {
    sv.r = r;
    r2 = Tensor::empty(shape);
    norm_forward(r2, sv.out_stats, r, norms.out);
  }
  Tensor s = present(norms.out) ? r2 : r;  // reuse a buffer that is no longer needed
  add_into(s, x, r2);
  if (!present(norms.post)) return s;
  sv.s = s;
  Tensor y = Tensor::empty(shape);
  norm_forward(y, sv.post_stats, s, norms.post);
  return y;
}

Tensor residual_sublayer_backward(const Tensor& dy, const Tensor& x, const SublayerSaved& sv,
                                  const SublayerNorms& norms, const SublayerBackward& f_backward) {
  const Shape& shape = x.shape();
  Tensor ds = dy;
  if (present(norms.post)) {
    ds = Tensor::empty(shape);
    norm_backward(ds, dy, sv.s, sv.post_stats, norms.post);
  }
  Tensor dr = ds;
  if (present(norms.out)) {
    dr = Tensor::empty(shape);
    norm_backward(dr, ds, sv.r, sv.out_stats, norms.out);
  }
  Tensor du = Tensor::empty(shape);
  f_backward(du, dr, sv.u);
  Tensor dx = du;
  if (present(norms.in)) {
    dx = Tensor::empty(shape);
    norm_backward(dx, du, x, sv.in_stats, norms.in);
  }
  add_into(dx, dx, ds);  // the residual path
  return dx;
}

}  // namespace mf
