// Plain twin of the Mixture-of-Depths training forward (the specification in
// mixture_of_depths.h): router dot products, selection by sorting
// (real before padding, -r, position), gather, the block, scatter; naive loops.
#include <algorithm>
#include <cmath>
#include <tuple>

#include "core/error.h"
#include "nn/block/mixture_of_depths.h"

namespace mf::reference {

Tensor mod_forward(const Tensor& x, const BlockParams& block, const ModParams& p, const MixerCall& call) {
  const std::int64_t B = call.batch, L = call.seq_len, C = x.size(1);
  const std::int64_t k = mod_capacity_tokens(p.opt.capacity, L);
  const Tensor xc = x.contiguous();
  const float* xs = xc.data<float>();
  const float* w = p.router_w->value.data<float>();
  const float bias = p.router_b ? p.router_b->value.data<float>()[0] : 0.0f;
  const std::int32_t* mask = call.key_padding_mask.defined() ? call.key_padding_mask.data<std::int32_t>() : nullptr;

  std::vector<float> router(static_cast<std::size_t>(B * L));
  for (std::int64_t i = 0; i < B * L; ++i) {
    float acc = 0;  // float, in the fast kernel's order, so that both select the same tokens
    for (std::int64_t c = 0; c < C; ++c) acc += xs[i * C + c] * w[c];
    router[static_cast<std::size_t>(i)] = acc + bias;
  }
  std::vector<std::int64_t> chosen;  // B * k flat indices, each row ascending
  for (std::int64_t b = 0; b < B; ++b) {
    std::vector<std::tuple<int, float, std::int64_t>> keys;  // (padding?, -r, position): ascending is best first
    for (std::int64_t l = 0; l < L; ++l)
      keys.emplace_back(mask && mask[b * L + l] == 0 ? 1 : 0, -router[static_cast<std::size_t>(b * L + l)], l);
    std::sort(keys.begin(), keys.end());
    std::vector<std::int64_t> row;
    for (std::int64_t j = 0; j < k; ++j) row.push_back(std::get<2>(keys[static_cast<std::size_t>(j)]));
    std::sort(row.begin(), row.end());
    for (std::int64_t l : row) chosen.push_back(b * L + l);
  }

  Tensor routed = Tensor::empty({B * k, C});
  for (std::int64_t j = 0; j < B * k; ++j)
    for (std::int64_t c = 0; c < C; ++c) routed.data<float>()[j * C + c] = xs[chosen[static_cast<std::size_t>(j)] * C + c];
  MixerCall inner;
  inner.batch = B;
  inner.seq_len = k;
  inner.causal = call.causal;
  if (block.token->capabilities().position_ids) {
    inner.position_ids = Tensor::empty({B, k}, DType::I32);
    for (std::int64_t j = 0; j < B * k; ++j)
      inner.position_ids.data<std::int32_t>()[j] = static_cast<std::int32_t>(call.past + chosen[static_cast<std::size_t>(j)] % L);
  }
  if (mask) {
    bool padded = false;
    Tensor m = Tensor::empty({B, k}, DType::I32);
    for (std::int64_t j = 0; j < B * k; ++j) {
      m.data<std::int32_t>()[j] = mask[chosen[static_cast<std::size_t>(j)]];
      padded = padded || m.data<std::int32_t>()[j] == 0;
    }
    if (padded) inner.key_padding_mask = m;
  }
  BlockSaved unused;
  const Tensor y = block_forward(unused, routed, block, inner, false);

  Tensor out = xc.clone();
  for (std::int64_t j = 0; j < B * k; ++j) {
    const std::int64_t i = chosen[static_cast<std::size_t>(j)];
    const float r = router[static_cast<std::size_t>(i)];
    const double g = p.opt.router_activation == RouterActivation::Linear ? r : 1.0 / (1.0 + std::exp(-double(r)));
    for (std::int64_t c = 0; c < C; ++c)
      out.data<float>()[i * C + c] = static_cast<float>(
          xs[i * C + c] + g * (static_cast<double>(y.data<float>()[j * C + c]) - routed.data<float>()[j * C + c]));
  }
  return out;
}

}  // namespace mf::reference
