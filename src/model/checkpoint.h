// Model checkpoints: a folder with config.json and model.safetensors. With
// model_type "llama" the tensor names and shapes are Hugging Face
// LlamaForCausalLM's, so tools that read Llama checkpoints read ours (and we
// read theirs); other configs use the naming documented in transformer.h.
// Loading validates every name, shape and dtype against the config.
#pragma once
#include <memory>
#include <string>

#include "core/safetensors.h"
#include "model/transformer.h"

namespace mf {

// Writes DIR/config.json and DIR/model.safetensors (float32), each
// atomically; creates DIR when missing.
void save_checkpoint(const std::string& dir, const Transformer& model);

// Reads DIR/config.json, builds the model and loads DIR/model.safetensors.
std::unique_ptr<Transformer> load_checkpoint(const std::string& dir);

// Copies `tensors` into the model's parameters. Every parameter must be
// present with its exact shape, stored as F32, BF16 or F16 (converted to
// float32); missing and unexpected tensors are all named in one error.
// `source` (a file name) prefixes errors.
void load_weights(Transformer& model, const std::map<std::string, Tensor>& tensors, const std::string& source);

}  // namespace mf
