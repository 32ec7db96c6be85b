// The plain MoE twin: tokens one at a time, each kept choice running its
// expert's FFN on that single row (no grouping). Same router, same math as
// moe.cpp; the tests compare the two.
#include <cstring>

#include "core/error.h"
#include "nn/moe/moe.h"

namespace mf::reference {

namespace {

Tensor row_of(const Tensor& t, std::int64_t i) { return t.slice(0, i, i + 1).contiguous(); }

}  // namespace

void moe_forward(const Tensor& y, MoeSaved& s, const Tensor& x, const MoeParams& p, const Tensor& noise) {
  moe_check_params(p);
  const std::int64_t n = x.size(0), c = p.hidden(), k = p.router.top_k;
  y.check_shape({n, c}, "moe reference", "y");
  s = MoeSaved{};
  router_forward(s.router, x, p.gate->value, p.gate_noise ? p.gate_noise->value : Tensor(), noise, p.router);
  for (std::int64_t t = 0; t < n; ++t) {
    const Tensor xt = row_of(x, t);
    Tensor yt = Tensor::zeros({1, c});
    if (p.has_shared()) {
      FfnSaved fs;
      ffn_forward(yt, fs, xt, p.shared);
    }
    for (std::int64_t j = 0; j < k; ++j) {
      const std::size_t a = static_cast<std::size_t>(t * k + j);
      if (!s.router.kept[a]) continue;
      Tensor out = Tensor::empty({1, c});
      FfnSaved fs;
      ffn_forward(out, fs, xt, p.experts[static_cast<std::size_t>(s.router.expert[a])]);
      for (std::int64_t i = 0; i < c; ++i) yt.data<float>()[i] += s.router.weight[a] * out.data<float>()[i];
    }
    std::memcpy(y.data<float>() + t * c, yt.data<float>(), static_cast<std::size_t>(c) * sizeof(float));
  }
}

void moe_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MoeSaved& s, const MoeParams& p) {
  moe_check_params(p);
  const std::int64_t n = x.size(0), c = p.hidden(), k = p.router.top_k;
  MF_CHECK(s.router.tokens == n, "[moe reference] backward called without this input's forward state");
  std::vector<float> dweight(static_cast<std::size_t>(n * k), 0.0f);
  Tensor dx_experts = Tensor::zeros({n, c});
  for (std::int64_t t = 0; t < n; ++t) {
    const Tensor xt = row_of(x, t), dyt = row_of(dy, t);
    float* dxt = dx_experts.data<float>() + t * c;
    if (p.has_shared()) {
      FfnSaved fs;
      Tensor out = Tensor::empty({1, c}), din = Tensor::empty({1, c});
      ffn_forward(out, fs, xt, p.shared);
      ffn_backward(din, dyt, xt, fs, p.shared);
      for (std::int64_t i = 0; i < c; ++i) dxt[i] += din.data<float>()[i];
    }
    for (std::int64_t j = 0; j < k; ++j) {
      const std::size_t a = static_cast<std::size_t>(t * k + j);
      if (!s.router.kept[a]) continue;
      const FfnParams& ex = p.experts[static_cast<std::size_t>(s.router.expert[a])];
      FfnSaved fs;
      Tensor out = Tensor::empty({1, c}), din = Tensor::empty({1, c}), dout = Tensor::empty({1, c});
      ffn_forward(out, fs, xt, ex);
      double dot = 0;
      for (std::int64_t i = 0; i < c; ++i) {
        dot += static_cast<double>(dyt.data<float>()[i]) * out.data<float>()[i];
        dout.data<float>()[i] = s.router.weight[a] * dyt.data<float>()[i];
      }
      dweight[a] = static_cast<float>(dot);
      ffn_backward(din, dout, xt, fs, ex);
      for (std::int64_t i = 0; i < c; ++i) dxt[i] += din.data<float>()[i];
    }
  }
  moe_router_backward(dx, dweight, x, s.router, p);
  for (std::int64_t i = 0; i < n * c; ++i) dx.data<float>()[i] += dx_experts.data<float>()[i];
}

}  // namespace mf::reference
