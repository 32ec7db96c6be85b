// The parts of the token-mixer interface shared by every mixer: refusing
// calls outside a mixer's capabilities, the default "cannot generate", and
// the default batched decode (each row through forward on its own).
#include "nn/mixer/token_mixer.h"

#include "core/error.h"

namespace mf {

namespace {

std::string because(const std::string& limits) { return limits.empty() ? std::string() : " (" + limits + ")"; }

}  // namespace

std::unique_ptr<MixerState> TokenMixer::new_state(const GenerationOptions&) const {
  fail("[", name_, "] cannot generate: it has no generation state", because(limits_));
}

void TokenMixer::forward_rows(const Tensor& y, const Tensor& x, const MixerCall& call) {
  MF_CHECK(call.row_states != nullptr && call.row_past != nullptr, "[", name_,
           "] forward_rows needs one state and one past length per row");
  MF_CHECK(call.seq_len == 1 && x.dim() == 2 && x.size(0) == call.batch && y.shape() == x.shape(), "[", name_,
           "] forward_rows takes one position per row: x and y [", call.batch, ", C] but x is ", shape_str(x.shape()),
           " and y ", shape_str(y.shape()));
  for (std::int64_t i = 0; i < call.batch; ++i) {
    MixerCall row;
    row.batch = 1;
    row.seq_len = 1;
    row.causal = call.causal;
    row.state = call.row_states[i];
    row.past = call.row_past[i];
    forward(y.slice(0, i, i + 1), x.slice(0, i, i + 1), row, false);
  }
}

void TokenMixer::check_call(const MixerCall& call) const {
  MF_CHECK(!call.causal || caps_.causal, "[", name_, "] cannot run causally (decoder, is_decoder true)",
           because(limits_));
  MF_CHECK(call.causal || caps_.bidirectional, "[", name_, "] cannot run bidirectionally (encoder, is_decoder false)",
           because(limits_));
  MF_CHECK(!call.key_padding_mask.defined() || caps_.padding, "[", name_, "] does not support a key padding mask",
           because(limits_));
  MF_CHECK(call.state == nullptr || caps_.generation, "[", name_, "] cannot generate", because(limits_));
  MF_CHECK(call.memory == nullptr || caps_.segment_memory, "[", name_, "] keeps no segment memory",
           because(limits_));
  MF_CHECK(call.memory == nullptr || call.state == nullptr, "[", name_,
           "] a call takes a generation state or a segment memory, not both");
  MF_CHECK(call.batch >= 1 && call.seq_len >= 1, "[", name_, "] batch and seq_len must be >= 1 but are ", call.batch,
           " and ", call.seq_len);
  MF_CHECK(!call.position_ids.defined() || caps_.position_ids, "[", name_,
           "] does not take explicit position ids (Mixture of Depths' routed tokens)", because(limits_));
  if (call.position_ids.defined()) {
    const Tensor& ids = call.position_ids;
    MF_CHECK(ids.dtype() == DType::I32 && ids.dim() == 2 && ids.size(0) == call.batch && ids.size(1) == call.seq_len,
             "[", name_, "] position ids must be int32 [", call.batch, ", ", call.seq_len, "] but are ",
             dtype_name(ids.dtype()), " ", shape_str(ids.shape()));
  }
  if (call.key_padding_mask.defined()) {
    const Tensor& m = call.key_padding_mask;
    MF_CHECK(m.dtype() == DType::I32 && m.dim() == 2 && m.size(0) == call.batch && m.size(1) == call.seq_len, "[",
             name_, "] the key padding mask must be int32 [", call.batch, ", ", call.seq_len, "] but is ",
             dtype_name(m.dtype()), " ", shape_str(m.shape()));
  }
}

}  // namespace mf
