// The reversible residual block (Gomez et al. 2017, "The Reversible Residual
// Network"; the Reformer's wiring, Kitaev et al. 2020). The hidden state is
// two streams of width C, and a block maps (X1, X2) to
//   Y1 = X1 + F(X2),   Y2 = X2 + G(Y1)
// with F the token-mixer branch and G the channel-mixer branch of a block
// (each r' = N_out(M(N_in(.))): pre-norm or sandwich; a post-norm makes the
// block not invertible and is refused). The inverse is
//   X2 = Y2 - G(Y1),   X1 = Y1 - F(X2),
// so training keeps only the last block's outputs: the backward walks down,
// reconstructing each block's inputs from its outputs and re-running each
// branch's forward (with saving) just before that branch's backward.
// Activation memory is then one block's, whatever the depth.
//
// Replay: a branch is re-run on the reconstructed input, which equals the
// original to rounding (|X - X_rec| ~ eps |Y|), so the recomputed branch is
// the original one to rounding. Every mixer here is a pure function of its
// input and its parameters and buffers (no dropout in models; LSH rotations
// and random features are checkpointed buffers), so no random state needs
// replaying; a mixer that drew fresh randomness per call could not be used.
#pragma once
#include "nn/block/block.h"

namespace mf {

// y1, y2 [N, C] (new tensors) from x1, x2 [N, C]. With call.state the call
// continues a generation, as block_forward.
void reversible_block_forward(Tensor& y1, Tensor& y2, const Tensor& x1, const Tensor& x2, const BlockParams& p,
                              const MixerCall& call);

// From the block's outputs y1, y2 and their gradients dy1, dy2: x1, x2 get
// the reconstructed inputs and dx1, dx2 their gradients (new tensors);
// parameter gradients accumulate (+=). call.state must be null.
void reversible_block_backward(Tensor& x1, Tensor& x2, Tensor& dx1, Tensor& dx2, const Tensor& y1, const Tensor& y2,
                               const Tensor& dy1, const Tensor& dy2, const BlockParams& p, const MixerCall& call);

// Refuses a block that is not invertible (a post-norm slot), naming it.
void check_reversible(const BlockParams& p, std::int64_t layer);

}  // namespace mf
