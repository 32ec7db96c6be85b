// Decoder block = attention sublayer then FFN sublayer, forward and backward.
#include "nn/block/decoder_block.h"

namespace mf {

Tensor block_forward(BlockSaved& s, const Tensor& x, const BlockParams& p, const AttentionCall& call) {
  s.clear();
  s.x1 = residual_sublayer_forward(s.attn_sub, x, p.attn_norms, [&](const Tensor& out, const Tensor& in) {
    self_attention_forward(out, s.attn, in, p.attn, call);
  });
  return residual_sublayer_forward(s.ffn_sub, s.x1, p.ffn_norms,
                                   [&](const Tensor& out, const Tensor& in) { ffn_forward(out, s.ffn, in, p.ffn); });
}

Tensor block_backward(const Tensor& dy, const Tensor& x, const BlockSaved& s, const BlockParams& p,
                      const AttentionCall& call) {
  const Tensor dx1 = residual_sublayer_backward(
      dy, s.x1, s.ffn_sub, p.ffn_norms,
      [&](const Tensor& din, const Tensor& dout, const Tensor& in) { ffn_backward(din, dout, in, s.ffn, p.ffn); });
  return residual_sublayer_backward(dx1, x, s.attn_sub, p.attn_norms,
                                    [&](const Tensor& din, const Tensor& dout, const Tensor& in) {
                                      self_attention_backward(din, dout, in, s.attn, p.attn, call);
                                    });
}

std::int64_t block_saved_bytes(const BlockSaved& s, std::set<const void*>& seen) {
  std::int64_t total = 0;
  auto add = [&](const Tensor& t) {
    if (t.defined() && seen.insert(t.raw_data()).second) total += static_cast<std::int64_t>(t.nbytes());
  };
  for (const SublayerSaved* sub : {&s.attn_sub, &s.ffn_sub}) {
    for (const Tensor* t : {&sub->u, &sub->r, &sub->s, &sub->in_stats.mean, &sub->in_stats.rstd, &sub->out_stats.mean,
                            &sub->out_stats.rstd, &sub->post_stats.mean, &sub->post_stats.rstd})
      add(*t);
  }
  for (const Tensor* t : {&s.attn.q, &s.attn.k, &s.attn.v, &s.attn.out, &s.attn.lse, &s.ffn.gate, &s.ffn.up, &s.x1})
    add(*t);
  return total;
}

}  // namespace mf
