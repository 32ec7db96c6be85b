// Mixture of Depths: router, top-k selection, gather / block / scatter,
// backward, the causal predictor and its auxiliary loss, and predictor
// routing for generation (the math is in mixture_of_depths.h).
#include "nn/block/mixture_of_depths.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/error.h"
#include "kernels/activations.h"
#include "nn/linear.h"

namespace mf {

namespace {

constexpr const char* kOp = "[mixture_of_depths]";
// Element counts below which the per-token loops here (router, gather,
// scatter, backward) run on one thread: they stream O(N C) floats, less work
// than a parallel region's fork and barrier costs at the model's sizes
// (16 x 256 tokens of 192 = 0.8M elements) once the cores are shared (on a
// loaded 2-core machine, a routed model with these loops parallel from 32k
// elements trained slower at 2 threads than at 1). Row selection (an
// nth_element per row) parallelizes from kParallelRows tokens.
constexpr std::int64_t kParallelElements = 1 << 21;
constexpr std::int64_t kParallelRows = 1 << 15;

float router_gate(float r, RouterActivation a) { return a == RouterActivation::Linear ? r : 1.0f / (1.0f + std::exp(-r)); }
// dg/dr at r (g = router_gate(r)).
float router_gate_slope(float g, RouterActivation a) { return a == RouterActivation::Linear ? 1.0f : g * (1.0f - g); }

void check_inputs(const Tensor& x, const BlockParams& block, const ModParams& p, const MixerCall& call) {
  MF_CHECK(block.token != nullptr, kOp, " a block with a token mixer is required");
  MF_CHECK(p.router_w != nullptr, kOp, " the router weight mod_router.weight is required");
  MF_CHECK(x.defined() && x.dim() == 2 && x.dtype() == DType::F32 && x.is_contiguous(), kOp,
           " input must be a contiguous float32 [B*L, C] tensor but has shape ",
           x.defined() ? shape_str(x.shape()) : std::string("(undefined)"));
  MF_CHECK(call.batch >= 1 && call.seq_len >= 1 && x.size(0) == call.batch * call.seq_len, kOp, " input has ",
           x.size(0), " rows but batch ", call.batch, " x seq_len ", call.seq_len, " were given");
  p.router_w->value.check_shape({x.size(1)}, "mixture_of_depths", p.router_w->name.c_str());
  MF_CHECK(!call.position_ids.defined(), kOp, " a routed block takes no position ids of its own (it makes them)");
}

// r_i = w · x_i (+ b) for every row; one fixed summation order per row.
Tensor router_logits(const Tensor& x, const ModParams& p) {
  const std::int64_t n = x.size(0), c = x.size(1);
  Tensor r = Tensor::empty({n});
  const float* xs = x.data<float>();
  const float* w = p.router_w->value.data<float>();
  const float bias = p.router_b ? p.router_b->value.data<float>()[0] : 0.0f;
  float* out = r.data<float>();
#pragma omp parallel for schedule(static) if (n * c >= kParallelElements)
  for (std::int64_t i = 0; i < n; ++i) {
    const float* row = xs + i * c;
    float acc = 0;
    for (std::int64_t j = 0; j < c; ++j) acc += row[j] * w[j];
    out[i] = acc + bias;
  }
  return r;
}

// rows[j, :] = x[index(j), :] for the M gathered rows.
template <class Index>
Tensor gather_rows(const Tensor& x, std::int64_t m, const Index& index) {
  const std::int64_t c = x.size(1);
  Tensor out = Tensor::empty({m, c});
  const float* src = x.data<float>();
  float* dst = out.data<float>();
#pragma omp parallel for schedule(static) if (m * c >= kParallelElements)
  for (std::int64_t j = 0; j < m; ++j)
    std::memcpy(dst + j * c, src + index(j) * c, static_cast<std::size_t>(c) * sizeof(float));
  return out;
}

// The predictor's forward on stop-gradient(x): hidden = W1 x + b1 [N, H], logit [N].
void predictor_forward(Tensor& hidden, Tensor& logit, const Tensor& x, const ModParams& p) {
  const std::int64_t n = x.size(0);
  hidden = linear_forward(x, p.pred_w1->value, p.pred_b1->value);
  const Tensor act = silu_forward(hidden);
  logit = linear_forward(act, p.pred_w2->value, p.pred_b2->value).reshape({n});
}

}  // namespace

const std::vector<OptionSpec>& mod_option_schema() {
  static const std::vector<OptionSpec> schema = {
      number_option("capacity", 0.125, 1e-6, 1.0,
                    "fraction of each sequence routed through the block: k = ceil(capacity * L) tokens per row"),
      int_option("every", 2, 1, 1 << 16, "route layers l with l % every == every - 1 (2: layers 1, 3, 5, ...)"),
      choice_option("router_activation", "linear", {"linear", "sigmoid"},
                    "multiplier of a routed token's block update: the router logit r (the paper) or sigmoid(r)"),
      bool_option("router_bias", false, "a scalar router bias mod_router.bias (0 at init; the paper has none)"),
      bool_option("predictor", true,
                  "the causal predictor MLP trained by BCE on top-k membership (needed to generate)"),
      int_option("predictor_hidden", 64, 1, 1 << 16, "hidden width of the predictor MLP"),
      number_option("predictor_loss_coef", 0.1, 0.0, 1e6, "weight of the predictor's BCE auxiliary loss"),
  };
  return schema;
}

ModOptions mod_options_from_json(const nlohmann::json& j) {
  ModOptions o;
  o.capacity = j.at("capacity").get<double>();
  o.every = j.at("every").get<std::int64_t>();
  o.router_activation =
      j.at("router_activation").get<std::string>() == "sigmoid" ? RouterActivation::Sigmoid : RouterActivation::Linear;
  o.router_bias = j.at("router_bias").get<bool>();
  o.predictor = j.at("predictor").get<bool>();
  o.predictor_hidden = j.at("predictor_hidden").get<std::int64_t>();
  o.predictor_loss_coef = j.at("predictor_loss_coef").get<double>();
  return o;
}

std::int64_t mod_capacity_tokens(double capacity, std::int64_t seq_len) {
  MF_CHECK(capacity > 0 && capacity <= 1, kOp, " option 'capacity' must be in (0, 1] but is ", capacity);
  const auto k = static_cast<std::int64_t>(std::ceil(capacity * static_cast<double>(seq_len) - 1e-9));
  return std::clamp<std::int64_t>(k, 1, seq_len);
}

ModParams mod_make_params(const ModOptions& opt, std::int64_t c, ParamStore& store) {
  MF_CHECK(opt.capacity > 0 && opt.capacity <= 1, kOp, " option 'capacity' must be in (0, 1] but is ", opt.capacity);
  MF_CHECK(opt.every >= 1, kOp, " option 'every' must be >= 1 but is ", opt.every);
  MF_CHECK(!opt.predictor || opt.predictor_hidden >= 1, kOp, " option 'predictor_hidden' must be >= 1 but is ",
           opt.predictor_hidden);
  ModParams p;
  p.opt = opt;
  p.router_w = store.add("mod_router.weight", {c}, ParamInit::Normal, false);
  if (opt.router_bias) p.router_b = store.add("mod_router.bias", {1}, ParamInit::Zeros, false);
  if (opt.predictor) {
    const std::int64_t h = opt.predictor_hidden;
    p.pred_w1 = store.add("mod_predictor.fc1.weight", {h, c}, ParamInit::Normal, true);
    p.pred_b1 = store.add("mod_predictor.fc1.bias", {h}, ParamInit::Zeros, false);
    p.pred_w2 = store.add("mod_predictor.fc2.weight", {1, h}, ParamInit::Normal, true);
    p.pred_b2 = store.add("mod_predictor.fc2.bias", {1}, ParamInit::Zeros, false);
  }
  return p;
}

std::int64_t ModState::bytes() const {
  std::int64_t total = 0;
  for (const auto& r : rows) total += r->bytes();
  return total;
}

void ModState::reset() {
  for (auto& r : rows) r->reset();
  std::fill(routed.begin(), routed.end(), 0);
}

std::unique_ptr<MixerState> mod_new_state(const BlockParams& block, const ModParams& p, const GenerationOptions& opt) {
  MF_CHECK(block.token != nullptr, kOp, " a block with a token mixer is required");
  MF_CHECK(p.opt.predictor, kOp, " layer with mixer \"", block.token->name(),
           "\" cannot generate without the causal predictor (option 'predictor' is false): top-k routing over the "
           "sequence depends on later tokens");
  MF_CHECK(opt.batch >= 1, kOp, " generation batch must be >= 1, got ", opt.batch);
  auto state = std::make_unique<ModState>();
  GenerationOptions row = opt;
  row.batch = 1;
  for (std::int64_t b = 0; b < opt.batch; ++b) state->rows.push_back(block.token->new_state(row));
  state->routed.assign(static_cast<std::size_t>(opt.batch), 0);
  return state;
}

namespace {

// Generation: route by the predictor (p_i > 0), each row through its own state.
Tensor mod_generate(const Tensor& x, const BlockParams& block, const ModParams& p, const MixerCall& call) {
  MF_CHECK(p.pred_w1 != nullptr, kOp, " generation needs the causal predictor (option 'predictor' is false)");
  auto* state = dynamic_cast<ModState*>(call.state);
  MF_CHECK(state != nullptr && static_cast<std::int64_t>(state->rows.size()) == call.batch, kOp,
           " the generation state was not made for this routed layer with batch ", call.batch);
  MF_CHECK(!call.key_padding_mask.defined(), kOp, " a key padding mask is not supported in generation");
  const std::int64_t L = call.seq_len, C = x.size(1);
  const Tensor router = router_logits(x, p);
  Tensor hidden, logit;
  predictor_forward(hidden, logit, x, p);
  Tensor out = x.clone();
  const bool explicit_positions = block.token->capabilities().position_ids;
  for (std::int64_t b = 0; b < call.batch; ++b) {
    std::vector<std::int64_t> routed;  // positions of this call's row b that go through the block
    for (std::int64_t l = 0; l < L; ++l)
      if (logit.data<float>()[b * L + l] > 0.0f) routed.push_back(l);
    if (routed.empty()) continue;
    const auto m = static_cast<std::int64_t>(routed.size());
    const Tensor xr = gather_rows(x, m, [&](std::int64_t j) { return b * L + routed[static_cast<std::size_t>(j)]; });
    MixerCall inner;
    inner.batch = 1;
    inner.seq_len = m;
    inner.causal = call.causal;
    inner.state = state->rows[static_cast<std::size_t>(b)].get();
    inner.past = state->routed[static_cast<std::size_t>(b)];
    if (explicit_positions) {
      inner.position_ids = Tensor::empty({1, m}, DType::I32);
      for (std::int64_t j = 0; j < m; ++j)
        inner.position_ids.data<std::int32_t>()[j] = static_cast<std::int32_t>(call.past + routed[static_cast<std::size_t>(j)]);
    }
    BlockSaved unused;
    const Tensor yr = block_forward(unused, xr, block, inner, false);
    state->routed[static_cast<std::size_t>(b)] += m;
    for (std::int64_t j = 0; j < m; ++j) {
      const std::int64_t i = b * L + routed[static_cast<std::size_t>(j)];
      const float g = router_gate(router.data<float>()[i], p.opt.router_activation);
      const float *y = yr.data<float>() + j * C, *xt = xr.data<float>() + j * C;
      float* o = out.data<float>() + i * C;
      for (std::int64_t c = 0; c < C; ++c) o[c] += g * (y[c] - xt[c]);
    }
  }
  return out;
}

}  // namespace

Tensor mod_forward(ModSaved& s, const Tensor& x, const BlockParams& block, const ModParams& p, const MixerCall& call,
                   bool for_backward) {
  check_inputs(x, block, p, call);
  s.clear();
  if (call.state != nullptr) return mod_generate(x, block, p, call);
  const std::int64_t B = call.batch, L = call.seq_len, N = B * L, C = x.size(1);
  const std::int64_t k = mod_capacity_tokens(p.opt.capacity, L);
  s.k = k;
  s.router = router_logits(x, p);
  const float* r = s.router.data<float>();
  const std::int32_t* mask = call.key_padding_mask.defined() ? call.key_padding_mask.data<std::int32_t>() : nullptr;

  // Selection: per row the k largest logits (real tokens before padding,
  // ties to the earlier position), then put back in sequence order.
  s.selected = Tensor::empty({B, k}, DType::I32);
  std::int32_t* sel = s.selected.data<std::int32_t>();
#pragma omp parallel for schedule(static) if (B * L >= kParallelRows)
  for (std::int64_t b = 0; b < B; ++b) {
    std::vector<std::int32_t> order(static_cast<std::size_t>(L));
    std::iota(order.begin(), order.end(), 0);
    const float* rb = r + b * L;
    const std::int32_t* mb = mask ? mask + b * L : nullptr;
    auto before = [&](std::int32_t a, std::int32_t c) {
      const bool ra = !mb || mb[a] != 0, rc = !mb || mb[c] != 0;
      if (ra != rc) return ra;
      if (rb[a] != rb[c]) return rb[a] > rb[c];
      return a < c;
    };
    std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), before);
    std::sort(order.begin(), order.begin() + k);
    std::copy(order.begin(), order.begin() + k, sel + b * k);
  }

  // Gather, run the block on the routed tokens at their own positions.
  s.x_routed = gather_rows(x, B * k, [&](std::int64_t j) { return (j / k) * L + sel[j]; });
  s.inner_call = MixerCall{};
  s.inner_call.batch = B;
  s.inner_call.seq_len = k;
  s.inner_call.causal = call.causal;
  if (block.token->capabilities().position_ids) {
    s.inner_call.position_ids = Tensor::empty({B, k}, DType::I32);
    std::int32_t* ids = s.inner_call.position_ids.data<std::int32_t>();
    for (std::int64_t j = 0; j < B * k; ++j) ids[j] = static_cast<std::int32_t>(call.past + sel[j]);
  }
  if (mask) {
    Tensor routed_mask = Tensor::empty({B, k}, DType::I32);
    bool padded = false;
    for (std::int64_t j = 0; j < B * k; ++j) {
      routed_mask.data<std::int32_t>()[j] = mask[(j / k) * L + sel[j]];
      padded = padded || mask[(j / k) * L + sel[j]] == 0;
    }
    if (padded) s.inner_call.key_padding_mask = routed_mask;
  }
  const Tensor y_routed = block_forward(s.inner, s.x_routed, block, s.inner_call, for_backward);

  // Scatter: out_i = x_i + g_i (block(x̃)_j - x̃_j).
  Tensor out = x.clone();
  s.update = Tensor::empty({B * k, C});
  {
    const float *y = y_routed.data<float>(), *xt = s.x_routed.data<float>();
    float *u = s.update.data<float>(), *o = out.data<float>();
#pragma omp parallel for schedule(static) if (B * k * C >= kParallelElements)
    for (std::int64_t j = 0; j < B * k; ++j) {
      const std::int64_t i = (j / k) * L + sel[j];
      const float g = router_gate(r[i], p.opt.router_activation);
      for (std::int64_t c = 0; c < C; ++c) {
        u[j * C + c] = y[j * C + c] - xt[j * C + c];
        o[i * C + c] += g * u[j * C + c];
      }
    }
  }

  // The predictor and its BCE against top-k membership (training only).
  if (for_backward && p.pred_w1 != nullptr) {
    predictor_forward(s.predictor_hidden, s.predictor_logit, x, p);
    std::vector<std::uint8_t> member(static_cast<std::size_t>(N), 0);
    for (std::int64_t j = 0; j < B * k; ++j) member[static_cast<std::size_t>((j / k) * L + sel[j])] = 1;
    double bce = 0;
    std::int64_t right = 0;
    const float* pl = s.predictor_logit.data<float>();
    for (std::int64_t i = 0; i < N; ++i) {
      const double z = pl[i], t = member[static_cast<std::size_t>(i)];
      bce += std::max(z, 0.0) + std::log1p(std::exp(-std::abs(z))) - t * z;  // softplus(z) - t z
      right += (z > 0) == (t > 0.5);
    }
    s.aux_loss = p.opt.predictor_loss_coef * bce / static_cast<double>(N);
    s.predictor_accuracy = static_cast<double>(right) / static_cast<double>(N);
  }
  if (!for_backward) {
    const std::int64_t keep_k = s.k;
    s.clear();
    s.k = keep_k;
  }
  return out;
}

Tensor mod_backward(const Tensor& dy, const Tensor& x, const ModSaved& s, const BlockParams& block, const ModParams& p,
                    const MixerCall& call) {
  check_inputs(x, block, p, call);
  MF_CHECK(s.update.defined() && s.inner.token != nullptr, kOp,
           " backward called without the training forward's saved state");
  dy.check_shape(x.shape(), "mixture_of_depths", "dy");
  const std::int64_t L = call.seq_len, C = x.size(1), k = s.k, M = call.batch * k, N = x.size(0);
  const std::int32_t* sel = s.selected.data<std::int32_t>();
  const float* r = s.router.data<float>();
  const RouterActivation act = p.opt.router_activation;

  // d(update)_j = g_j dy_i; dr_j = (dy_i · update_j) g'(r_j).
  Tensor d_update = Tensor::empty({M, C});
  std::vector<float> d_router(static_cast<std::size_t>(M));
  {
    const float *g_out = dy.data<float>(), *u = s.update.data<float>();
    float* du = d_update.data<float>();
#pragma omp parallel for schedule(static) if (M * C >= kParallelElements)
    for (std::int64_t j = 0; j < M; ++j) {
      const std::int64_t i = (j / k) * L + sel[j];
      const float g = router_gate(r[i], act);
      float dot = 0;
      for (std::int64_t c = 0; c < C; ++c) {
        du[j * C + c] = g * g_out[i * C + c];
        dot += g_out[i * C + c] * u[j * C + c];
      }
      d_router[static_cast<std::size_t>(j)] = dot * router_gate_slope(g, act);
    }
  }
  // Through the block: update = block(x̃) - x̃, so dx̃ = block^T(d_update) - d_update.
  Tensor dx_routed = block_backward(d_update, s.x_routed, s.inner, block, s.inner_call);
  Tensor dx = dy.clone();
  {
    const float *dxr = dx_routed.data<float>(), *du = d_update.data<float>(), *w = p.router_w->value.data<float>();
    float* d = dx.data<float>();
#pragma omp parallel for schedule(static) if (M * C >= kParallelElements)
    for (std::int64_t j = 0; j < M; ++j) {
      const std::int64_t i = (j / k) * L + sel[j];
      const float dr = d_router[static_cast<std::size_t>(j)];
      for (std::int64_t c = 0; c < C; ++c) d[i * C + c] += dxr[j * C + c] - du[j * C + c] + dr * w[c];
    }
  }
  // Router parameters: dw += sum_j dr_j x̃_j (a fixed order per column), db += sum_j dr_j.
  {
    const float* xt = s.x_routed.data<float>();
    float* dw = p.router_w->grad.data<float>();
#pragma omp parallel for schedule(static) if (M * C >= kParallelElements)
    for (std::int64_t c = 0; c < C; ++c) {
      float acc = 0;
      for (std::int64_t j = 0; j < M; ++j) acc += d_router[static_cast<std::size_t>(j)] * xt[j * C + c];
      dw[c] += acc;
    }
    if (p.router_b) {
      float acc = 0;
      for (float dr : d_router) acc += dr;
      p.router_b->grad.data<float>()[0] += acc;
    }
  }
  // The predictor's auxiliary loss: dp_i = coef (sigmoid(p_i) - t_i) / N; x gets nothing (stop-gradient).
  if (p.pred_w1 != nullptr && s.predictor_logit.defined()) {
    std::vector<std::uint8_t> member(static_cast<std::size_t>(N), 0);
    for (std::int64_t j = 0; j < M; ++j) member[static_cast<std::size_t>((j / k) * L + sel[j])] = 1;
    Tensor dlogit = Tensor::empty({N, 1});
    const float* pl = s.predictor_logit.data<float>();
    const double scale = p.opt.predictor_loss_coef / static_cast<double>(N);
    for (std::int64_t i = 0; i < N; ++i)
      dlogit.data<float>()[i] = static_cast<float>(scale * (1.0 / (1.0 + std::exp(-static_cast<double>(pl[i]))) -
                                                            member[static_cast<std::size_t>(i)]));
    const Tensor act_hidden = silu_forward(s.predictor_hidden);
    const std::int64_t H = s.predictor_hidden.size(1);
    Tensor dact = Tensor::empty({N, H});
    linear_backward(dact, p.pred_w2->grad, p.pred_b2->grad, dlogit, act_hidden, p.pred_w2->value);
    const Tensor dhidden = silu_backward(dact, s.predictor_hidden);
    linear_backward(Tensor(), p.pred_w1->grad, p.pred_b1->grad, dhidden, x, p.pred_w1->value);
  }
  return dx;
}

std::int64_t mod_saved_bytes(const ModSaved& s, std::set<const void*>& seen) {
  std::int64_t total = block_saved_bytes(s.inner, seen);
  for (const Tensor* t : {&s.router, &s.selected, &s.x_routed, &s.update, &s.predictor_hidden, &s.predictor_logit,
                          &s.inner_call.position_ids, &s.inner_call.key_padding_mask})
    if (t->defined() && seen.insert(t->raw_data()).second) total += static_cast<std::int64_t>(t->nbytes());
  return total;
}

}  // namespace mf
