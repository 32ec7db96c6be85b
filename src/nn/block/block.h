// A block: a token-mixer sublayer (attention, FNet, Linformer, ...) then a
// channel-mixer sublayer (SwiGLU, GeGLU, MLP, ...), each a residual sublayer
// with the configured norm placement (pre/post/sandwich). Which mixers, and
// causal (decoder) or bidirectional (encoder), is the model's choice.
// llm.c style: the forward fills an explicit BlockSaved; the backward reads
// it. Gradient checkpointing (Chen et al. 2016) keeps only the block input
// and re-runs block_forward inside the backward (see src/model/transformer.cpp).
#pragma once
#include <memory>
#include <set>

#include "nn/block/residual_sublayer.h"
#include "nn/mixer/channel_mixer.h"
#include "nn/mixer/token_mixer.h"

namespace mf {

struct BlockParams {
  SublayerNorms token_norms;
  SublayerNorms channel_norms;
  TokenMixer* token = nullptr;
  ChannelMixer* channel = nullptr;
};

struct BlockSaved {
  SublayerSaved token_sub, channel_sub;
  std::unique_ptr<MixerSaved> token, channel;  // null after an inference forward
  Tensor x1;  // [N, C] output of the token sublayer = input of the channel sublayer

  void clear() { *this = BlockSaved{}; }
};

// Returns the block output [N, C]; x [N, C] with N = call.batch * call.seq_len.
// A null channel mixer makes a block of the token sublayer alone (ffn "none").
// for_backward: the mixers keep what their backward needs.
Tensor block_forward(BlockSaved& saved, const Tensor& x, const BlockParams& p, const MixerCall& call,
                     bool for_backward = true);

// Returns dx [N, C]; parameter gradients accumulate (+=).
Tensor block_backward(const Tensor& dy, const Tensor& x, const BlockSaved& saved, const BlockParams& p,
                      const MixerCall& call);

// Bytes of activations held by `saved` whose storage is not yet in `seen`
// (each storage counted once across calls; for memory reports).
std::int64_t block_saved_bytes(const BlockSaved& saved, std::set<const void*>& seen);

}  // namespace mf
