// Block = token-mixer sublayer then channel-mixer sublayer, forward and backward.
#include "nn/block/block.h"

#include "core/error.h"

namespace mf {

Tensor block_forward(BlockSaved& s, const Tensor& x, const BlockParams& p, const MixerCall& call,
                     bool for_backward) {
  MF_CHECK(p.token != nullptr, "[block] a token mixer is required");
  s.clear();
  s.x1 = residual_sublayer_forward(s.token_sub, x, p.token_norms, [&](const Tensor& out, const Tensor& in) {
    if (call.row_states)  // batched decode: each row continues its own sequence
      p.token->forward_rows(out, in, call);
    else
      s.token = p.token->forward(out, in, call, for_backward);
  });
  if (p.channel == nullptr) return s.x1;  // ffn "none": the token sublayer alone
  return residual_sublayer_forward(s.channel_sub, s.x1, p.channel_norms, [&](const Tensor& out, const Tensor& in) {
    s.channel = p.channel->forward(out, in, for_backward);
  });
}

Tensor block_backward(const Tensor& dy, const Tensor& x, const BlockSaved& s, const BlockParams& p,
                      const MixerCall& call) {
  MF_CHECK(s.token != nullptr && (s.channel != nullptr || p.channel == nullptr),
           "[block] backward called without the forward's saved state");
  const Tensor dx1 = p.channel == nullptr ? dy : residual_sublayer_backward(
      dy, s.x1, s.channel_sub, p.channel_norms,
      [&](const Tensor& din, const Tensor& dout, const Tensor& in) { p.channel->backward(din, dout, in, *s.channel); });
  return residual_sublayer_backward(dx1, x, s.token_sub, p.token_norms,
                                    [&](const Tensor& din, const Tensor& dout, const Tensor& in) {
                                      p.token->backward(din, dout, in, *s.token, call);
                                    });
}

std::int64_t block_saved_bytes(const BlockSaved& s, std::set<const void*>& seen) {
  std::vector<const Tensor*> held;
  for (const SublayerSaved* sub : {&s.token_sub, &s.channel_sub}) {
    for (const Tensor* t : {&sub->u, &sub->r, &sub->s, &sub->in_stats.mean, &sub->in_stats.rstd, &sub->out_stats.mean,
                            &sub->out_stats.rstd, &sub->post_stats.mean, &sub->post_stats.rstd})
      held.push_back(t);
  }
  if (s.token) s.token->tensors(held);
  if (s.channel) s.channel->tensors(held);
  held.push_back(&s.x1);
  std::int64_t total = 0;
  for (const Tensor* t : held)
    if (t->defined() && seen.insert(t->raw_data()).second) total += static_cast<std::int64_t>(t->nbytes());
  return total;
}

}  // namespace mf
