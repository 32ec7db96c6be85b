// Residual sublayer with pre/post/sandwich norm placement, forward and backward:
//   u = N_in(x) | x;  r = F(u);  r' = N_out(r) | r;  s = x + r';  y = N_post(s) | s
//   ds = N_post^T(dy) | dy;  dr = N_out^T(ds) | ds;  du = F^T(dr);  dx = ds + (N_in^T(du) | du)
// The branch r' = N_out(F(N_in(x))) alone (no residual, no post-norm) is
// also a function of its own, for the reversible block.
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

Tensor sublayer_branch_forward(SublayerSaved& sv, const Tensor& x, const SublayerNorms& norms,
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
  if (!present(norms.out)) return r;
  sv.r = r;
  Tensor r2 = Tensor::empty(shape);
  norm_forward(r2, sv.out_stats, r, norms.out);
  return r2;
}

Tensor sublayer_branch_backward(const Tensor& dr2, const Tensor& x, const SublayerSaved& sv,
                                const SublayerNorms& norms, const SublayerBackward& f_backward) {
  const Shape& shape = x.shape();
  Tensor dr = dr2;
  if (present(norms.out)) {
    dr = Tensor::empty(shape);
    norm_backward(dr, dr2, sv.r, sv.out_stats, norms.out);
  }
  Tensor du = Tensor::empty(shape);
  f_backward(du, dr, sv.u);
  if (!present(norms.in)) return du;
  Tensor dx = Tensor::empty(shape);
  norm_backward(dx, du, x, sv.in_stats, norms.in);
  return dx;
}

Tensor residual_sublayer_forward(SublayerSaved& sv, const Tensor& x, const SublayerNorms& norms,
                                 const SublayerForward& f) {
  Tensor s = sublayer_branch_forward(sv, x, norms, f);
  add_into(s, x, s);  // s = x + r', in r''s buffer (the branch keeps r, never r')
  if (!present(norms.post)) return s;
  sv.s = s;
  Tensor y = Tensor::empty(x.shape());
  norm_forward(y, sv.post_stats, s, norms.post);
  return y;
}

Tensor residual_sublayer_backward(const Tensor& dy, const Tensor& x, const SublayerSaved& sv,
                                  const SublayerNorms& norms, const SublayerBackward& f_backward) {
  Tensor ds = dy;
  if (present(norms.post)) {
    ds = Tensor::empty(x.shape());
    norm_backward(ds, dy, sv.s, sv.post_stats, norms.post);
  }
  Tensor dx = sublayer_branch_backward(ds, x, sv, norms, f_backward);
  add_into(dx, dx, ds);  // the residual path
  return dx;
}

}  // namespace mf
