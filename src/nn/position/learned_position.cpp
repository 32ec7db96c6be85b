#include "nn/position/learned_position.h"

#include <vector>

#include "core/rng.h"

namespace mf {

namespace {
constexpr const char* kOp = "learned_position";
constexpr const char* kRows = "max_position_embeddings";

void check_weight(const Parameter& w) {
  MF_CHECK(w.value.defined() && w.value.dim() == 2, "[learned_position] weight '", w.name,
           "' must have 2 dimensions [max_positions, hidden]");
}

ResolvedPositions resolve(const Tensor& x, const PositionIds& positions, const char* name) {
  MF_CHECK(x.dim() == 3, "[learned_position] ", name, " must have 3 dimensions [B, L, hidden] but has shape ",
           shape_str(x.shape()));
  return resolve_positions(positions, x.size(0), x.size(1), kOp);
}
}  // namespace

Parameter learned_position_init(std::string name, std::int64_t max_positions, std::int64_t hidden,
                                std::uint64_t seed, float std) {
  MF_CHECK(max_positions >= 1 && hidden >= 1, "[learned_position] max_position_embeddings and hidden size must be "
           ">= 1, got ", max_positions, " and ", hidden);
  Tensor w = Tensor::empty({max_positions, hidden});
  fill_normal(w, seed, 0.0f, std);
  return Parameter(std::move(name), std::move(w), /*decay=*/false);
}

void learned_position_forward_inplace(const Tensor& x, const Parameter& weight, const PositionIds& positions) {
  check_weight(weight);
  add_position_rows(x, weight.value, resolve(x, positions, "x"), kOp, kRows);
}

Tensor learned_position_forward(const Tensor& x, const Parameter& weight, const PositionIds& positions) {
  Tensor y = x.clone();
  learned_position_forward_inplace(y, weight, positions);
  return y;
}

void learned_position_backward(const Tensor& dy, Parameter& weight, const PositionIds& positions) {
  check_weight(weight);
  MF_CHECK(weight.grad.defined() && weight.grad.shape() == weight.value.shape(), "[learned_position] weight '",
           weight.name, "' must have a gradient of its shape ", shape_str(weight.value.shape()));
  accumulate_position_rows(weight.grad, dy, resolve(dy, positions, "dy"), kOp, kRows);
}

Tensor learned_position_forward_reference(const Tensor& x, const Tensor& weight, const PositionIds& positions) {
  const ResolvedPositions pos = resolve(x, positions, "x");
  MF_CHECK(weight.dim() == 2 && weight.size(1) == x.size(2), "[learned_position] weight must be [P, ", x.size(2),
           "], got ", shape_str(weight.shape()));
  MF_CHECK(pos.end <= weight.size(0), "[learned_position] position ", pos.end - 1, " >= ", kRows, " ",
           weight.size(0));
  Tensor y = x.clone();
  for (std::int64_t b = 0; b < x.size(0); ++b)
    for (std::int64_t l = 0; l < x.size(1); ++l)
      for (std::int64_t j = 0; j < x.size(2); ++j)
        y.data<float>()[(b * x.size(1) + l) * x.size(2) + j] += weight.at({pos.at(b, l), j});
  return y;
}

Tensor learned_position_backward_reference(const Tensor& dy, const Tensor& weight, const PositionIds& positions) {
  const ResolvedPositions pos = resolve(dy, positions, "dy");
  MF_CHECK(pos.end <= weight.size(0), "[learned_position] position ", pos.end - 1, " >= ", kRows, " ",
           weight.size(0));
  const std::int64_t H = dy.size(2);
  std::vector<double> g(static_cast<std::size_t>(weight.numel()), 0.0);
  for (std::int64_t b = 0; b < dy.size(0); ++b)
    for (std::int64_t l = 0; l < dy.size(1); ++l)
      for (std::int64_t j = 0; j < H; ++j) g[pos.at(b, l) * H + j] += dy.at({b, l, j});
  std::vector<float> gf(g.begin(), g.end());
  return Tensor::from_vector(weight.shape(), gf);
}

}  // namespace mf
