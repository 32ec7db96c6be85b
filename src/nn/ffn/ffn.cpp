// FFN front door: parameter checks, dispatch on the kind (one table), and the
// Reformer's chunking over rows (forward keeps nothing; backward recomputes
// each chunk's pre-activations and runs that chunk's backward).
#include "nn/ffn/ffn.h"

#include <algorithm>

#include "nn/ffn/gated_ffn.h"
#include "nn/ffn/mlp_ffn.h"

namespace mf {

namespace {

constexpr const char* kOp = "[ffn]";

struct FfnKindOps {
  void (*preactivations)(FfnSaved&, const Tensor&, const FfnParams&);
  void (*forward)(const Tensor&, FfnSaved&, const Tensor&, const FfnParams&);
  void (*backward)(const Tensor&, const Tensor&, const Tensor&, const FfnSaved&, const FfnParams&);
};

FfnKindOps ops_for(FfnKind k) {
  if (k == FfnKind::MLP) return {mlp_ffn_preactivations, mlp_ffn_forward, mlp_ffn_backward};
  return {gated_ffn_preactivations, gated_ffn_forward, gated_ffn_backward};  // SwiGLU, GeGLU
}

void check_param(const Parameter* p, const char* role, const Shape& shape) {
  MF_CHECK(p != nullptr, kOp, " the ", role, " parameter is missing");
  MF_CHECK(p->value.dtype() == DType::F32 && p->value.is_contiguous(), kOp, " parameter '", p->name,
           "' must be contiguous float32");
  p->value.check_shape(shape, "ffn", p->name.c_str());
  p->grad.check_shape(shape, "ffn", (p->name + ".grad").c_str());
}

void check_io(const Tensor& t, std::int64_t n, std::int64_t c, const char* name) {
  MF_CHECK(t.defined() && t.dtype() == DType::F32 && t.is_contiguous(), kOp, " tensor '", name,
           "' must be contiguous float32");
  t.check_shape({n, c}, "ffn", name);
}

}  // namespace

void ffn_check_params(const FfnParams& p) {
  MF_CHECK(p.up != nullptr && p.down != nullptr, kOp, " the up and down projections are required");
  MF_CHECK(p.up->value.dim() == 2, kOp, " parameter '", p.up->name, "' must be [I, C]");
  const std::int64_t i = p.up->value.size(0), c = p.up->value.size(1);
  check_param(p.up, "up", {i, c});
  check_param(p.down, "down", {c, i});
  const bool gated = p.kind != FfnKind::MLP;
  if (gated) {
    check_param(p.gate, "gate", {i, c});
    MF_CHECK(p.kind != FfnKind::SwiGLU || p.act == Activation::SiLU, kOp, " SwiGLU needs the SiLU activation");
    MF_CHECK(p.kind != FfnKind::GeGLU || p.act != Activation::SiLU, kOp, " GeGLU needs a GELU activation");
  } else {
    MF_CHECK(p.gate == nullptr && p.gate_bias == nullptr, kOp, " the MLP FFN has no gate projection but '",
             p.gate ? p.gate->name : p.gate_bias->name, "' was given");
  }
  if (p.gate_bias) check_param(p.gate_bias, "gate bias", {i});
  if (p.up_bias) check_param(p.up_bias, "up bias", {i});
  if (p.down_bias) check_param(p.down_bias, "down bias", {c});
  MF_CHECK(p.chunk_size >= 0, kOp, " chunk_size must be >= 0 but is ", p.chunk_size);
}

void ffn_forward(const Tensor& out, FfnSaved& saved, const Tensor& in, const FfnParams& p) {
  ffn_check_params(p);
  MF_CHECK(in.dim() == 2, kOp, " input must be [N, C] but has shape ", shape_str(in.shape()));
  const std::int64_t n = in.size(0), c = p.hidden();
  check_io(in, n, c, "in");
  check_io(out, n, c, "out");
  const FfnKindOps ops = ops_for(p.kind);
  if (p.chunk_size == 0 || p.chunk_size >= n) {
    ops.forward(out, saved, in, p);
    return;
  }
  saved = FfnSaved{};
  for (std::int64_t r0 = 0; r0 < n; r0 += p.chunk_size) {
    const std::int64_t r1 = std::min(n, r0 + p.chunk_size);
    FfnSaved chunk;  // dropped: recomputed in the backward
    ops.forward(out.slice(0, r0, r1), chunk, in.slice(0, r0, r1), p);
  }
}

void ffn_backward(const Tensor& din, const Tensor& dout, const Tensor& in, const FfnSaved& saved,
                  const FfnParams& p) {
  ffn_check_params(p);
  MF_CHECK(in.dim() == 2, kOp, " input must be [N, C] but has shape ", shape_str(in.shape()));
  const std::int64_t n = in.size(0), c = p.hidden();
  check_io(in, n, c, "in");
  check_io(din, n, c, "din");
  check_io(dout, n, c, "dout");
  const FfnKindOps ops = ops_for(p.kind);
  if (p.chunk_size == 0 || p.chunk_size >= n) {
    MF_CHECK(saved.up.defined(), kOp, " backward called without the forward's saved activations");
    ops.backward(din, dout, in, saved, p);
    return;
  }
  for (std::int64_t r0 = 0; r0 < n; r0 += p.chunk_size) {
    const std::int64_t r1 = std::min(n, r0 + p.chunk_size);
    const Tensor in_c = in.slice(0, r0, r1);
    FfnSaved chunk;
    ops.preactivations(chunk, in_c, p);
    ops.backward(din.slice(0, r0, r1), dout.slice(0, r0, r1), in_c, chunk, p);
  }
}

}  // namespace mf
