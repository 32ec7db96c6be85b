// A parameter: its value, its gradient (same shape, accumulated with += by
// every backward), and whether AdamW applies weight decay to it (by default
// not for norms, biases and embeddings). A buffer (trainable false) is a
// tensor the model computes with and saves in its checkpoint but never
// trains (Performer's random features, Reformer's rotations): the optimizer
// skips it and no backward writes its gradient.
#pragma once
#include <string>

#include "core/tensor.h"

namespace mf {

struct Parameter {
  std::string name;  // checkpoint name, e.g. "model.layers.0.self_attn.q_proj.weight"
  Tensor value;      // float32
  Tensor grad;       // float32, same shape; zeroed by the trainer before each step
  bool weight_decay = true;
  bool trainable = true;

  Parameter() = default;
  Parameter(std::string n, Tensor v, bool decay)
      : name(std::move(n)), value(std::move(v)), grad(Tensor::zeros(value.shape())), weight_decay(decay) {}
};

// An optional parameter's value or gradient (e.g. a bias that is off): an
// undefined Tensor when the parameter is absent, as the kernels take it.
inline Tensor bias_of(const Parameter* p) { return p ? p->value : Tensor(); }
inline Tensor bias_grad_of(const Parameter* p) { return p ? p->grad : Tensor(); }

}  // namespace mf
