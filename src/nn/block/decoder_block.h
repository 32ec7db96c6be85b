// A decoder block: causal self-attention and a feed-forward network, each a
// residual sublayer with the configured norm placement (pre/post/sandwich).
// llm.c style: the forward fills an explicit BlockSaved; the backward reads it.
// Gradient checkpointing (Chen et al. 2016) keeps only the block input and
// re-runs block_forward inside the backward (see src/model/transformer.cpp).
#pragma once
#include <set>

#include "nn/block/residual_sublayer.h"
#include "nn/block/self_attention.h"
#include "nn/ffn/ffn.h"

namespace mf {

struct BlockParams {
  SublayerNorms attn_norms;
  SublayerNorms ffn_norms;
  SelfAttentionParams attn;
  FfnParams ffn;
};

struct BlockSaved {
  SublayerSaved attn_sub, ffn_sub;
  SelfAttentionSaved attn;
  FfnSaved ffn;
  Tensor x1;  // [N, C] output of the attention sublayer = input of the FFN sublayer

  void clear() { *this = BlockSaved{}; }
};

// Returns the block output [N, C]; x [N, C] with N = call.batch * call.seq_len.
Tensor block_forward(BlockSaved& saved, const Tensor& x, const BlockParams& p, const AttentionCall& call);

// Returns dx [N, C]; parameter gradients accumulate (+=).
Tensor block_backward(const Tensor& dy, const Tensor& x, const BlockSaved& saved, const BlockParams& p,
                      const AttentionCall& call);

// Bytes of activations held by `saved` whose storage is not yet in `seen`
// (each storage counted once across calls; for memory reports).
std::int64_t block_saved_bytes(const BlockSaved& saved, std::set<const void*>& seen);

}  // namespace mf
