// The grouped MoE compute (see moe.h): route, group kept assignments by
// expert, one ffn_forward per expert over its gathered rows, weighted
// scatter back in slot order; the backward mirrors it.
#include "nn/moe/moe.h"

#include <cstring>

#include "core/error.h"
#include "nn/linear.h"

namespace mf {

namespace {

constexpr const char* kOp = "[moe]";

void check_io(const Tensor& t, std::int64_t n, std::int64_t c, const char* name) {
  MF_CHECK(t.defined() && t.dtype() == DType::F32 && t.is_contiguous(), kOp, " tensor '", name,
           "' must be contiguous float32");
  t.check_shape({n, c}, "moe", name);
}

// a += w * b over c floats.
void axpy(float* a, float w, const float* b, std::int64_t c) {
  for (std::int64_t i = 0; i < c; ++i) a[i] += w * b[i];
}

}  // namespace

void moe_check_params(const MoeParams& p) {
  p.router.validate(std::string(kOp) + " ");
  MF_CHECK(p.gate != nullptr, kOp, " the router's gate weight is missing");
  MF_CHECK(p.gate->value.dim() == 2, kOp, " parameter '", p.gate->name, "' must be [E, C]");
  const std::int64_t e = p.router.num_experts, c = p.gate->value.size(1);
  p.gate->value.check_shape({e, c}, "moe", p.gate->name.c_str());
  MF_CHECK(p.router.kind != RouterKind::NoisyTopK || p.gate_noise != nullptr, kOp,
           " router \"noisy_topk\" needs its noise weight");
  if (p.gate_noise) p.gate_noise->value.check_shape({e, c}, "moe", p.gate_noise->name.c_str());
  MF_CHECK(static_cast<std::int64_t>(p.experts.size()) == e, kOp, " ", e, " experts expected but ", p.experts.size(),
           " given");
  for (const FfnParams& f : p.experts) {
    ffn_check_params(f);
    MF_CHECK(f.hidden() == c && f.kind == p.experts[0].kind && f.intermediate() == p.experts[0].intermediate(), kOp,
             " every expert must be a ", c, "-wide FFN of one kind and width ('", f.up->name, "' differs)");
  }
  if (p.has_shared()) {
    ffn_check_params(p.shared);
    MF_CHECK(p.shared.hidden() == c, kOp, " the shared experts must be ", c, " wide");
  }
}

void moe_forward(const Tensor& y, MoeSaved& s, const Tensor& x, const MoeParams& p, const Tensor& noise) {
  moe_check_params(p);
  MF_CHECK(x.dim() == 2, kOp, " input must be [N, C] but has shape ", shape_str(x.shape()));
  const std::int64_t n = x.size(0), c = p.hidden(), e = p.router.num_experts, k = p.router.top_k;
  check_io(x, n, c, "x");
  check_io(y, n, c, "y");
  s = MoeSaved{};
  router_forward(s.router, x, p.gate->value, p.gate_noise ? p.gate_noise->value : Tensor(), noise, p.router);
  const RouterSaved& r = s.router;

  // Group: counting sort of kept assignments by expert, stable in token order.
  s.offset.assign(static_cast<std::size_t>(e + 1), 0);
  for (std::int64_t i = 0; i < e; ++i) s.offset[static_cast<std::size_t>(i + 1)] = s.offset[static_cast<std::size_t>(i)] + r.load[static_cast<std::size_t>(i)];
  std::vector<std::int64_t> next(s.offset.begin(), s.offset.end() - 1);
  std::vector<std::int64_t> token_of(static_cast<std::size_t>(s.offset.back()));
  s.row.assign(static_cast<std::size_t>(n * k), -1);
  for (std::int64_t a = 0; a < n * k; ++a) {
    if (!r.kept[static_cast<std::size_t>(a)]) continue;
    const std::int64_t row = next[static_cast<std::size_t>(r.expert[static_cast<std::size_t>(a)])]++;
    s.row[static_cast<std::size_t>(a)] = row;
    token_of[static_cast<std::size_t>(row)] = a / k;
  }
  const std::int64_t rows = s.offset.back();
  s.grouped_in = Tensor::empty({rows, c});
  s.grouped_out = Tensor::empty({rows, c});
  const float* xp = x.data<float>();
  float* gin = s.grouped_in.data<float>();
#pragma omp parallel for schedule(static) if (rows * c > 65536)
  for (std::int64_t i = 0; i < rows; ++i)
    std::memcpy(gin + i * c, xp + token_of[static_cast<std::size_t>(i)] * c, static_cast<std::size_t>(c) * sizeof(float));

  // One FFN call (one GEMM per projection) per expert over its rows.
  s.experts.resize(static_cast<std::size_t>(e));
  for (std::int64_t i = 0; i < e; ++i) {
    const std::int64_t r0 = s.offset[static_cast<std::size_t>(i)], r1 = s.offset[static_cast<std::size_t>(i + 1)];
    if (r1 == r0) continue;
    ffn_forward(s.grouped_out.slice(0, r0, r1), s.experts[static_cast<std::size_t>(i)], s.grouped_in.slice(0, r0, r1),
                p.experts[static_cast<std::size_t>(i)]);
  }

  // Combine: the shared experts' output (or 0), plus each kept choice in slot order.
  if (p.has_shared())
    ffn_forward(y, s.shared, x, p.shared);
  else
    Tensor(y).fill(0.0f);  // a handle on y's storage
  float* yp = y.data<float>();
  const float* gout = s.grouped_out.data<float>();
#pragma omp parallel for schedule(static) if (n * c > 65536)
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t row = s.row[static_cast<std::size_t>(t * k + j)];
      if (row >= 0) axpy(yp + t * c, r.weight[static_cast<std::size_t>(t * k + j)], gout + row * c, c);
    }
}

void moe_router_backward(const Tensor& dx, const std::vector<float>& dweight, const Tensor& x,
                         const RouterSaved& router, const MoeParams& p) {
  const std::int64_t n = x.size(0), e = p.router.num_experts;
  Tensor dlogits = Tensor::empty({n, e});
  Tensor dnoise = router.noise.defined() ? Tensor::empty({n, e}) : Tensor();
  router_backward(dlogits, dnoise, dweight, router, p.router);
  linear_backward(dx, p.gate->grad, Tensor(), dlogits, x, p.gate->value);
  if (dnoise.defined())
    linear_backward(dx, p.gate_noise->grad, Tensor(), dnoise, x, p.gate_noise->value, /*accumulate_din=*/true);
}

void moe_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MoeSaved& s, const MoeParams& p) {
  moe_check_params(p);
  const std::int64_t n = x.size(0), c = p.hidden(), e = p.router.num_experts, k = p.router.top_k;
  check_io(x, n, c, "x");
  check_io(dx, n, c, "dx");
  check_io(dy, n, c, "dy");
  MF_CHECK(s.router.tokens == n && static_cast<std::int64_t>(s.row.size()) == n * k, kOp,
           " backward called without this input's forward state");
  const RouterSaved& r = s.router;
  const std::int64_t rows = s.offset.back();
  // dw_tj = dy_t . out_row; d(out_row) = w_tj dy_t.
  std::vector<float> dweight(static_cast<std::size_t>(n * k), 0.0f);
  Tensor dgrouped_out = Tensor::empty({rows, c});
  const float *dyp = dy.data<float>(), *gout = s.grouped_out.data<float>();
  float* dgo = dgrouped_out.data<float>();
#pragma omp parallel for schedule(static) if (n * c > 65536)
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t j = 0; j < k; ++j) {
      const std::size_t a = static_cast<std::size_t>(t * k + j);
      const std::int64_t row = s.row[a];
      if (row < 0) continue;
      double dot = 0;
      const float *g = dyp + t * c, *o = gout + row * c;
      for (std::int64_t i = 0; i < c; ++i) dot += static_cast<double>(g[i]) * o[i];
      dweight[a] = static_cast<float>(dot);
      const float w = r.weight[a];
      float* d = dgo + row * c;
      for (std::int64_t i = 0; i < c; ++i) d[i] = w * g[i];
    }
  Tensor dgrouped_in = Tensor::empty({rows, c});
  for (std::int64_t i = 0; i < e; ++i) {
    const std::int64_t r0 = s.offset[static_cast<std::size_t>(i)], r1 = s.offset[static_cast<std::size_t>(i + 1)];
    if (r1 == r0) continue;
    ffn_backward(dgrouped_in.slice(0, r0, r1), dgrouped_out.slice(0, r0, r1), s.grouped_in.slice(0, r0, r1),
                 s.experts[static_cast<std::size_t>(i)], p.experts[static_cast<std::size_t>(i)]);
  }
  // dx = router part (overwrites), + shared experts, + each kept choice in slot order.
  moe_router_backward(dx, dweight, x, r, p);
  if (p.has_shared()) {
    Tensor dshared = Tensor::empty({n, c});
    ffn_backward(dshared, dy, x, s.shared, p.shared);
    const float* ds = dshared.data<float>();
    float* d = dx.data<float>();
    for (std::int64_t i = 0; i < n * c; ++i) d[i] += ds[i];
  }
  float* dxp = dx.data<float>();
  const float* dgi = dgrouped_in.data<float>();
#pragma omp parallel for schedule(static) if (n * c > 65536)
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t row = s.row[static_cast<std::size_t>(t * k + j)];
      if (row >= 0) axpy(dxp + t * c, 1.0f, dgi + row * c, c);
    }
}

}  // namespace mf
