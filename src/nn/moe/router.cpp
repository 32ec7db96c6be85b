// The MoE routers (see router.h for the math): gate logits through the GEMM
// wrapper, per-token softmax / top-k / weights in parallel over tokens,
// capacity admission in one sequential pass (N * k steps, deterministic), and
// the auxiliary losses' values and gradients.
#include "nn/moe/router.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "nn/linear.h"

namespace mf {

namespace {

constexpr const char* kOp = "[moe router]";

struct RouterName {
  const char* name;
  RouterKind kind;
};
constexpr RouterName kRouterNames[] = {{"softmax_topk", RouterKind::SoftmaxTopK},
                                       {"switch", RouterKind::Switch},
                                       {"noisy_topk", RouterKind::NoisyTopK},
                                       {"deepseek", RouterKind::DeepSeek}};

double softplus(double v) { return v > 20 ? v : std::log1p(std::exp(v)); }
double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// p = softmax(r) of one row (double inside); returns logsumexp(r).
double softmax_row(float* p, const float* r, std::int64_t e) {
  double mx = r[0];
  for (std::int64_t i = 1; i < e; ++i) mx = std::max(mx, static_cast<double>(r[i]));
  double sum = 0;
  for (std::int64_t i = 0; i < e; ++i) sum += std::exp(static_cast<double>(r[i]) - mx);
  for (std::int64_t i = 0; i < e; ++i) p[i] = static_cast<float>(std::exp(static_cast<double>(r[i]) - mx) / sum);
  return mx + std::log(sum);
}

// The k largest entries of p, descending; ties go to the lower index.
void top_k(std::int32_t* chosen, const float* p, std::int64_t e, std::int64_t k) {
  for (std::int64_t j = 0; j < k; ++j) {
    std::int32_t best = -1;
    for (std::int64_t i = 0; i < e; ++i) {
      bool taken = false;
      for (std::int64_t m = 0; m < j; ++m) taken = taken || chosen[m] == i;
      if (!taken && (best < 0 || p[i] > p[best])) best = static_cast<std::int32_t>(i);
    }
    chosen[j] = best;
  }
}

// dz = q * (a - sum(a * q)) + (2 beta / N) lse q, added into dz (one row).
void add_aux_row(float* dz, const float* q, const double* a, double z_scale, std::int64_t e) {
  double dot = 0;
  for (std::int64_t i = 0; i < e; ++i) dot += a[i] * q[i];
  for (std::int64_t i = 0; i < e; ++i) dz[i] += static_cast<float>(q[i] * (a[i] - dot) + z_scale * q[i]);
}

}  // namespace

RouterKind parse_router_kind(const std::string& name, const std::string& prefix) {
  std::string known;
  for (const auto& r : kRouterNames) {
    if (name == r.name) return r.kind;
    known += (known.empty() ? "\"" : ", \"") + std::string(r.name) + "\"";
  }
  fail(prefix, "unknown router \"", name, "\" (known: ", known, ")");
}

std::string router_kind_name(RouterKind k) {
  for (const auto& r : kRouterNames)
    if (r.kind == k) return r.name;
  return "?";
}

bool RouterOptions::renormalizes() const {
  switch (kind) {
    case RouterKind::SoftmaxTopK: return norm_topk_prob;
    case RouterKind::Switch: return false;
    case RouterKind::NoisyTopK: return true;
    case RouterKind::DeepSeek: return norm_topk_prob && top_k > 1;
  }
  return false;
}

void RouterOptions::validate(const std::string& prefix) const {
  MF_CHECK(num_experts >= 1, prefix, "the number of experts must be >= 1 but is ", num_experts);
  MF_CHECK(top_k >= 1 && top_k <= num_experts, prefix, "option 'num_experts_per_tok' must be in [1, ", num_experts,
           "] (the number of experts) but is ", top_k);
  MF_CHECK(kind != RouterKind::Switch || top_k == 1, prefix,
           "router \"switch\" routes each token to one expert: option 'num_experts_per_tok' must be 1 but is ", top_k);
  MF_CHECK(capacity_factor >= 0 && std::isfinite(capacity_factor), prefix,
           "option 'capacity_factor' must be >= 0 (0: no limit) but is ", capacity_factor);
  MF_CHECK(routed_scaling_factor > 0 && std::isfinite(routed_scaling_factor), prefix,
           "option 'routed_scaling_factor' must be > 0 but is ", routed_scaling_factor);
  MF_CHECK(aux_loss_coef >= 0 && std::isfinite(aux_loss_coef), prefix,
           "option 'router_aux_loss_coef' must be >= 0 but is ", aux_loss_coef);
  MF_CHECK(z_loss_coef >= 0 && std::isfinite(z_loss_coef), prefix, "option 'router_z_loss_coef' must be >= 0 but is ",
           z_loss_coef);
}

std::int64_t RouterOptions::capacity(std::int64_t n) const {
  if (capacity_factor <= 0) return n * top_k;
  const double c = std::ceil(capacity_factor * static_cast<double>(top_k) * static_cast<double>(n) /
                             static_cast<double>(num_experts) - 1e-9);
  return std::max<std::int64_t>(1, static_cast<std::int64_t>(c));
}

void router_forward(RouterSaved& s, const Tensor& x, const Tensor& w_gate, const Tensor& w_noise, const Tensor& noise,
                    const RouterOptions& opt) {
  opt.validate(std::string(kOp) + " ");
  MF_CHECK(x.dim() == 2 && x.dtype() == DType::F32, kOp, " x must be float32 [N, C] but has shape ",
           shape_str(x.shape()));
  const std::int64_t n = x.size(0), c = x.size(1), e = opt.num_experts, k = opt.top_k;
  w_gate.check_shape({e, c}, "moe router", "gate weight");
  const bool noisy = opt.kind == RouterKind::NoisyTopK && noise.defined();
  if (noisy) {
    MF_CHECK(w_noise.defined(), kOp, " noisy_topk needs the noise weight [E, C]");
    w_noise.check_shape({e, c}, "moe router", "noise weight");
    noise.check_shape({n, e}, "moe router", "noise");
  }
  s = RouterSaved{};
  s.tokens = n;
  const Tensor xc = x.contiguous();
  s.logits = linear_forward(xc, w_gate.contiguous(), Tensor());
  Tensor route = s.logits;
  if (noisy) {
    s.noise = noise.contiguous();
    s.noise_logits = linear_forward(xc, w_noise.contiguous(), Tensor());
    route = Tensor::empty({n, e});
    const float *z = s.logits.data<float>(), *nl = s.noise_logits.data<float>(), *eps = s.noise.data<float>();
    float* r = route.data<float>();
    for (std::int64_t i = 0; i < n * e; ++i)
      r[i] = static_cast<float>(z[i] + eps[i] * softplus(static_cast<double>(nl[i])));
  }
  s.probs = Tensor::empty({n, e});
  s.expert.assign(static_cast<std::size_t>(n * k), 0);
  s.weight.assign(static_cast<std::size_t>(n * k), 0.0f);
  s.kept.assign(static_cast<std::size_t>(n * k), 1);
  const double scale = opt.routed_scaling_factor;
  const bool renorm = opt.renormalizes();
  const float* r = route.data<float>();
  float* p = s.probs.data<float>();
#pragma omp parallel for schedule(static) if (n * e > 4096)
  for (std::int64_t t = 0; t < n; ++t) {
    softmax_row(p + t * e, r + t * e, e);
    std::int32_t* chosen = s.expert.data() + t * k;
    top_k(chosen, p + t * e, e, k);
    double denom = 1.0;
    if (renorm) {
      denom = 0;
      for (std::int64_t j = 0; j < k; ++j) denom += p[t * e + chosen[j]];
    }
    for (std::int64_t j = 0; j < k; ++j)
      s.weight[static_cast<std::size_t>(t * k + j)] = static_cast<float>(scale * p[t * e + chosen[j]] / denom);
  }
  // Capacity: (slot, token) order; f counts every choice (before drops).
  const std::int64_t cap = opt.capacity(n);
  s.load.assign(static_cast<std::size_t>(e), 0);
  std::vector<std::int64_t> chosen_count(static_cast<std::size_t>(e), 0);
  for (std::int64_t j = 0; j < k; ++j)
    for (std::int64_t t = 0; t < n; ++t) {
      const std::size_t a = static_cast<std::size_t>(t * k + j);
      const std::size_t ex = static_cast<std::size_t>(s.expert[a]);
      ++chosen_count[ex];
      if (s.load[ex] >= cap) {
        s.kept[a] = 0;
        s.weight[a] = 0.0f;
        ++s.dropped;
      } else {
        ++s.load[ex];
      }
    }
  s.chosen_fraction.assign(static_cast<std::size_t>(e), 0.0);
  for (std::int64_t i = 0; i < e; ++i)
    s.chosen_fraction[static_cast<std::size_t>(i)] =
        n > 0 ? static_cast<double>(chosen_count[static_cast<std::size_t>(i)]) / static_cast<double>(n) : 0.0;
  // Auxiliary losses from the clean logits (rows summed in order: deterministic).
  if (n == 0 || (opt.aux_loss_coef == 0 && opt.z_loss_coef == 0)) return;
  std::vector<double> mean_q(static_cast<std::size_t>(e), 0.0);
  std::vector<float> q(static_cast<std::size_t>(e));
  double lse_sq = 0;
  const float* z = s.logits.data<float>();
  for (std::int64_t t = 0; t < n; ++t) {
    const double lse = softmax_row(q.data(), z + t * e, e);
    lse_sq += lse * lse;
    for (std::int64_t i = 0; i < e; ++i) mean_q[static_cast<std::size_t>(i)] += q[static_cast<std::size_t>(i)];
  }
  double fp = 0;
  for (std::int64_t i = 0; i < e; ++i)
    fp += s.chosen_fraction[static_cast<std::size_t>(i)] * mean_q[static_cast<std::size_t>(i)] / static_cast<double>(n);
  s.balance_loss = opt.aux_loss_coef * static_cast<double>(e) * fp;
  s.z_loss = opt.z_loss_coef * lse_sq / static_cast<double>(n);
}

void router_backward(const Tensor& dlogits, const Tensor& dnoise_logits, const std::vector<float>& dweight,
                     const RouterSaved& s, const RouterOptions& opt) {
  const std::int64_t n = s.tokens, e = opt.num_experts, k = opt.top_k;
  dlogits.check_shape({n, e}, "moe router", "dlogits");
  MF_CHECK(dlogits.is_contiguous() && static_cast<std::int64_t>(dweight.size()) == n * k, kOp,
           " backward: dlogits must be contiguous and dweight hold N * k = ", n * k, " values");
  const bool noisy = s.noise.defined();
  if (noisy) {
    MF_CHECK(dnoise_logits.defined() && dnoise_logits.is_contiguous(), kOp,
             " backward: noisy routing needs a contiguous dnoise_logits");
    dnoise_logits.check_shape({n, e}, "moe router", "dnoise_logits");
  }
  const double scale = opt.routed_scaling_factor;
  const bool renorm = opt.renormalizes();
  const bool aux = opt.aux_loss_coef > 0 || opt.z_loss_coef > 0;
  std::vector<double> a(static_cast<std::size_t>(e), 0.0);  // dL_bal / dq_ti (the same for every t)
  for (std::int64_t i = 0; i < e; ++i)
    a[static_cast<std::size_t>(i)] = opt.aux_loss_coef * static_cast<double>(e) *
                                     s.chosen_fraction[static_cast<std::size_t>(i)] / static_cast<double>(n);
  const float* p = s.probs.data<float>();
  const float* z = s.logits.data<float>();
  float* dz = dlogits.data<float>();
#pragma omp parallel if (n * e > 4096)
  {
  std::vector<double> dp(static_cast<std::size_t>(e));  // per thread, not per token
  std::vector<float> q(static_cast<std::size_t>(e));
#pragma omp for schedule(static)
  for (std::int64_t t = 0; t < n; ++t) {
    const float* pt = p + t * e;
    const std::int32_t* chosen = s.expert.data() + t * k;
    const float* g = dweight.data() + t * k;
    std::fill(dp.begin(), dp.end(), 0.0);
    if (renorm) {  // w_j = s p_j / D: dp_j = s g_j / D - s sum_m g_m p_m / D^2 (every chosen j)
      double denom = 0, gp = 0;
      for (std::int64_t j = 0; j < k; ++j) {
        const double gj = s.kept[static_cast<std::size_t>(t * k + j)] ? g[j] : 0.0;
        denom += pt[chosen[j]];
        gp += gj * pt[chosen[j]];
      }
      for (std::int64_t j = 0; j < k; ++j) {
        const double gj = s.kept[static_cast<std::size_t>(t * k + j)] ? g[j] : 0.0;
        dp[static_cast<std::size_t>(chosen[j])] = scale * (gj / denom - gp / (denom * denom));
      }
    } else {
      for (std::int64_t j = 0; j < k; ++j)
        if (s.kept[static_cast<std::size_t>(t * k + j)]) dp[static_cast<std::size_t>(chosen[j])] = scale * g[j];
    }
    double dot = 0;  // softmax backward: dr = p (dp - sum dp p)
    for (std::int64_t i = 0; i < e; ++i) dot += dp[static_cast<std::size_t>(i)] * pt[i];
    float* dzt = dz + t * e;
    for (std::int64_t i = 0; i < e; ++i) dzt[i] = static_cast<float>(pt[i] * (dp[static_cast<std::size_t>(i)] - dot));
    if (noisy) {  // r = z + eps softplus(nl): dnl = dr eps sigmoid(nl)
      const float *eps = s.noise.data<float>() + t * e, *nl = s.noise_logits.data<float>() + t * e;
      float* dnl = dnoise_logits.data<float>() + t * e;
      for (std::int64_t i = 0; i < e; ++i) dnl[i] = static_cast<float>(dzt[i] * eps[i] * sigmoid(nl[i]));
    }
    if (aux) {
      const double lse = softmax_row(q.data(), z + t * e, e);
      add_aux_row(dzt, q.data(), a.data(), 2.0 * opt.z_loss_coef * lse / static_cast<double>(n), e);
    }
  }
  }
}

}  // namespace mf
