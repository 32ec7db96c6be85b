// `modformer forward --model DIR --tokens T.npy --out LOGITS.npy`: int32 or
// int64 token ids [B, L] -> float32 logits [B, L, vocab]. Token ids out of
// range are rejected with their position.
#include <iostream>
#include <memory>

#include "cli/command.h"
#include "core/npy.h"
#include "model/checkpoint.h"
#include "train/checkpoint.h"

namespace {

struct ForwardArgs {
  std::string model, tokens, out, impl;
};

int run_forward(const ForwardArgs& a) {
  auto model = mf::load_checkpoint(mf::model_folder(a.model, "[forward]"));
  if (a.impl == "dense") model->set_attention_impl(mf::AttentionImpl::Dense);
  if (a.impl == "flash") model->set_attention_impl(mf::AttentionImpl::Flash);
  const mf::Tensor tokens = mf::load_npy(a.tokens);
  MF_CHECK(tokens.dtype() == mf::DType::I32 || tokens.dtype() == mf::DType::I64, "[forward] ", a.tokens,
           ": token ids must be int32 or int64 but are ", mf::dtype_name(tokens.dtype()));
  MF_CHECK(tokens.dim() == 2, "[forward] ", a.tokens, ": token ids must have shape [B, L] but have ",
           mf::shape_str(tokens.shape()));
  const mf::Tensor logits = model->logits(tokens);
  mf::save_npy(a.out, logits);
  std::cout << "wrote " << a.out << ": float32 logits " << mf::shape_str(logits.shape()) << "\n";
  return 0;
}

std::function<int()> setup_forward(CLI::App& app) {
  auto a = std::make_shared<ForwardArgs>();
  app.add_option("--model", a->model, "Checkpoint folder (config.json + model.safetensors)")->required();
  app.add_option("--tokens", a->tokens, "Token ids, .npy int32/int64 [B, L]")->required()->check(CLI::ExistingFile);
  app.add_option("--out", a->out, "Logits to write, .npy float32 [B, L, vocab]")->required();
  app.add_option("--impl", a->impl, "Attention kernel: flash or dense (default: the config's attention_impl)")
      ->check(CLI::IsMember({"flash", "dense"}));
  return [a] { return run_forward(*a); };
}

}  // namespace

MF_REGISTER_COMMAND("forward", "Run a checkpoint on token ids (.npy [B, L]) and write the logits (.npy [B, L, vocab])",
                    setup_forward);
