// A residual sublayer y = x + F(x) with the norm placements of the
// literature: pre-norm x + F(N(x)) (GPT-2, Llama; Xiong et al. 2020),
// post-norm N(x + F(x)) (Vaswani et al. 2017, BERT) and sandwich
// x + N2(F(N1(x))) (Ding et al., CogView 2021; Gemma 2). One forward and one
// backward for every placement: which norms exist decides the placement.
#pragma once
#include <functional>

#include "core/tensor.h"
#include "nn/norm/norm.h"

namespace mf {

// A norm slot is present when its weight is set.
struct SublayerNorms {
  NormParams in;    // u = N_in(x), F's input (pre, sandwich)
  NormParams out;   // r' = N_out(F(u)) before the residual add (sandwich)
  NormParams post;  // y = N_post(x + r') after the residual add (post)
};

struct SublayerSaved {
  Tensor u;  // [N, C] F's input (x itself when there is no in-norm)
  Tensor r;  // [N, C] F's output (kept only when an out-norm follows)
  Tensor s;  // [N, C] x + r' (kept only when a post-norm follows)
  NormSaved in_stats, out_stats, post_stats;
};

// F's forward writes out [N, C] from in [N, C] (saving what its backward needs);
// F's backward overwrites din from dout (parameter grads +=).
using SublayerForward = std::function<void(const Tensor& out, const Tensor& in)>;
using SublayerBackward = std::function<void(const Tensor& din, const Tensor& dout, const Tensor& in)>;

// Returns y [N, C] (a new tensor).
Tensor residual_sublayer_forward(SublayerSaved& saved, const Tensor& x, const SublayerNorms& norms,
                                 const SublayerForward& f);

// Returns dx [N, C] (a new tensor); norm parameter grads accumulate.
Tensor residual_sublayer_backward(const Tensor& dy, const Tensor& x, const SublayerSaved& saved,
                                  const SublayerNorms& norms, const SublayerBackward& f_backward);

// The branch alone, r' = N_out(F(N_in(x))) (no residual add; the post
// slot must be empty): the reversible block's F and G. Returns r' [N, C].
Tensor sublayer_branch_forward(SublayerSaved& saved, const Tensor& x, const SublayerNorms& norms,
                               const SublayerForward& f);
// Returns dx [N, C] through the branch only, from dr' [N, C].
Tensor sublayer_branch_backward(const Tensor& dr, const Tensor& x, const SublayerSaved& saved,
                                const SublayerNorms& norms, const SublayerBackward& f_backward);

}  // namespace mf
