// Reversible block: forward, and the backward that reconstructs the inputs.
#include "nn/block/reversible_block.h"

#include "core/error.h"

namespace mf {

namespace {

enum class Op { Add, Sub };

// out = a + b or a - b (element-wise), a new tensor.
Tensor combine(const Tensor& a, const Tensor& b, Op op) {
  Tensor out = Tensor::empty(a.shape());
  const std::int64_t n = a.numel();
  const float *pa = a.data<float>(), *pb = b.data<float>();
  float* po = out.data<float>();
  if (op == Op::Add) {
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
    for (std::int64_t i = 0; i < n; ++i) po[i] = pa[i] + pb[i];
  } else {
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
    for (std::int64_t i = 0; i < n; ++i) po[i] = pa[i] - pb[i];
  }
  return out;
}

Tensor token_branch(SublayerSaved& sv, std::unique_ptr<MixerSaved>& saved, const Tensor& x, const BlockParams& p,
                    const MixerCall& call, bool for_backward) {
  return sublayer_branch_forward(sv, x, p.token_norms, [&](const Tensor& out, const Tensor& in) {
    saved = p.token->forward(out, in, call, for_backward);
  });
}

Tensor channel_branch(SublayerSaved& sv, std::unique_ptr<MixerSaved>& saved, const Tensor& x, const BlockParams& p,
                      bool for_backward) {
  return sublayer_branch_forward(sv, x, p.channel_norms, [&](const Tensor& out, const Tensor& in) {
    saved = p.channel->forward(out, in, for_backward);
  });
}

}  // namespace

void check_reversible(const BlockParams& p, std::int64_t layer) {
  MF_CHECK(p.token != nullptr && p.channel != nullptr, "[reversible] layer ", layer,
           " needs both a token and a channel mixer (F and G)");
  MF_CHECK(p.token_norms.post.weight == nullptr && p.channel_norms.post.weight == nullptr, "[reversible] layer ",
           layer, ": a post-norm (norm_placement \"post\") normalizes Y after the residual add, so X cannot be "
           "recovered from Y; use norm_placement \"pre\" or \"sandwich\"");
}

void reversible_block_forward(Tensor& y1, Tensor& y2, const Tensor& x1, const Tensor& x2, const BlockParams& p,
                              const MixerCall& call) {
  SublayerSaved sv;
  std::unique_ptr<MixerSaved> none;
  y1 = combine(x1, token_branch(sv, none, x2, p, call, false), Op::Add);
  y2 = combine(x2, channel_branch(sv, none, y1, p, false), Op::Add);
}

void reversible_block_backward(Tensor& x1, Tensor& x2, Tensor& dx1, Tensor& dx2, const Tensor& y1, const Tensor& y2,
                               const Tensor& dy1, const Tensor& dy2, const BlockParams& p, const MixerCall& call) {
  MF_CHECK(call.state == nullptr, "[reversible] the backward does not take a generation state");
  {  // Y2 = X2 + G(Y1): X2 = Y2 - G(Y1); dY1 += G^T dY2; dX2 = dY2 (+ F's part below)
    SublayerSaved sv;
    std::unique_ptr<MixerSaved> saved;
    x2 = combine(y2, channel_branch(sv, saved, y1, p, true), Op::Sub);
    const Tensor dg = sublayer_branch_backward(dy2, y1, sv, p.channel_norms,
                                               [&](const Tensor& din, const Tensor& dout, const Tensor& in) {
                                                 p.channel->backward(din, dout, in, *saved);
                                               });
    dx1 = combine(dy1, dg, Op::Add);  // dY1 in full = dX1 (Y1 = X1 + F(X2))
  }
  {  // Y1 = X1 + F(X2): X1 = Y1 - F(X2); dX2 = dY2 + F^T dY1
    SublayerSaved sv;
    std::unique_ptr<MixerSaved> saved;
    x1 = combine(y1, token_branch(sv, saved, x2, p, call, true), Op::Sub);
    const Tensor df = sublayer_branch_backward(dx1, x2, sv, p.token_norms,
                                               [&](const Tensor& din, const Tensor& dout, const Tensor& in) {
                                                 p.token->backward(din, dout, in, *saved, call);
                                               });
    dx2 = combine(dy2, df, Op::Add);
  }
}

}  // namespace mf
