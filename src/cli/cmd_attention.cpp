// `modformer attention`: one exact-attention call on .npy files (float32, C
// order), forward and optionally backward, so that any tool can check the
// kernels. Shapes and semantics are those of src/nn/attention/attention.h.
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cli/command.h"
#include "core/error.h"
#include "core/npy.h"
#include "nn/attention/attention.h"
#include "nn/sparse/block_layout.h"

namespace {

struct AttentionArgs {
  std::string q, k, v, out, lse, dout, dq, dk, dv, key_padding_mask, layout;
  std::int64_t layout_block = 64;
  std::string impl = "flash";
  bool causal = false, alibi = false;
  std::int64_t window_left = -1, window_right = -1;
  float scale = 0.0f, dropout = 0.0f;
  std::uint64_t seed = 0;
  std::vector<std::int64_t> global_tokens, cu_seqlens_q, cu_seqlens_k;
};

mf::Tensor load_input(const std::string& path, const char* flag, mf::DType dtype) {
  mf::Tensor t = mf::load_npy(path);
  MF_CHECK(t.dtype() == dtype, "[attention] ", flag, " ", path, " must hold ", mf::dtype_name(dtype), " but holds ",
           mf::dtype_name(t.dtype()));
  return t;
}

// Accepts integers >= 0 (CLI11's NonNegativeNumber prints the double range).
const CLI::Validator kNonNegativeInt(
    [](std::string& s) -> std::string {
      try {
        std::size_t used = 0;
        const long long x = std::stoll(s, &used);
        if (used == s.size() && x >= 0) return {};
      } catch (const std::exception&) {
      }
      return "must be an integer >= 0, got '" + s + "'";
    },
    "N>=0");

// Accepts finite numbers > 0.
const CLI::Validator kPositiveFloat(
    [](std::string& s) -> std::string {
      try {
        std::size_t used = 0;
        const double x = std::stod(s, &used);
        if (used == s.size() && std::isfinite(x) && x > 0) return {};
      } catch (const std::exception&) {
      }
      return "must be a finite number > 0, got '" + s + "'";
    },
    "S>0");

int run_attention(const AttentionArgs& a) {
  const bool backward = !a.dout.empty();
  MF_CHECK(!backward || (!a.dq.empty() && !a.dk.empty() && !a.dv.empty()), "[attention] --dout needs all of --dq, --dk and --dv");
  MF_CHECK(backward || (a.dq.empty() && a.dk.empty() && a.dv.empty()),
           "[attention] --dq, --dk and --dv need --dout (the gradient of the output)");
  const bool varlen = !a.cu_seqlens_q.empty() || !a.cu_seqlens_k.empty();
  MF_CHECK(!varlen || (!a.cu_seqlens_q.empty() && !a.cu_seqlens_k.empty()),
           "[attention] --cu-seqlens-q and --cu-seqlens-k go together");
  const mf::AttentionImpl impl = a.impl == "dense" ? mf::AttentionImpl::Dense : mf::AttentionImpl::Flash;

  const mf::Tensor q = load_input(a.q, "--q", mf::DType::F32);
  const mf::Tensor k = load_input(a.k, "--k", mf::DType::F32);
  const mf::Tensor v = load_input(a.v, "--v", mf::DType::F32);
  mf::AttentionOptions opt;
  opt.causal = a.causal;
  opt.window_left = a.window_left;
  opt.window_right = a.window_right;
  opt.global_tokens = a.global_tokens;
  opt.alibi = a.alibi;
  opt.scale = a.scale;
  opt.dropout_p = a.dropout;
  opt.dropout_seed = a.seed;
  if (!a.key_padding_mask.empty()) opt.key_padding_mask = load_input(a.key_padding_mask, "--key-padding-mask", mf::DType::I32);
  if (!a.layout.empty()) opt.block_layout = std::make_shared<mf::BlockLayout>(mf::layout_from_npy(a.layout, a.layout_block));
  const mf::VarlenSeqlens seqs{a.cu_seqlens_q, a.cu_seqlens_k};

  const mf::AttentionOutput fw = varlen ? mf::attention_varlen_forward(q, k, v, seqs, opt, impl)
                                        : mf::attention_forward(q, k, v, opt, impl);
  mf::AttentionGrads g;
  if (backward) {
    const mf::Tensor dout = load_input(a.dout, "--dout", mf::DType::F32);
    g = varlen ? mf::attention_varlen_backward(q, k, v, fw.out, fw.lse, dout, seqs, opt, impl)
               : mf::attention_backward(q, k, v, fw.out, fw.lse, dout, opt, impl);
  }
  // Write only after everything succeeded, so that a failure leaves no partial set of files.
  mf::save_npy(a.out, fw.out);
  if (!a.lse.empty()) mf::save_npy(a.lse, fw.lse);
  if (backward) {
    mf::save_npy(a.dq, g.dq);
    mf::save_npy(a.dk, g.dk);
    mf::save_npy(a.dv, g.dv);
  }
  return 0;
}

std::function<int()> setup_attention(CLI::App& app) {
  auto a = std::make_shared<AttentionArgs>();
  app.description(
      "Exact softmax attention on .npy files (float32, C order): Q [B, Hq, Lq, D], K and V [B, Hkv, Lk, D]; "
      "writes O [B, Hq, Lq, D], optionally LSE [B, Hq, Lq] and, given dO, dQ/dK/dV. With --cu-seqlens-q/k the "
      "inputs are packed variable-length batches: Q [total_q, Hq, D], K/V [total_k, Hkv, D], LSE [Hq, total_q].");
  app.add_option("--q", a->q, "Queries .npy [B, Hq, Lq, D]")->required()->check(CLI::ExistingFile);
  app.add_option("--k", a->k, "Keys .npy [B, Hkv, Lk, D]")->required()->check(CLI::ExistingFile);
  app.add_option("--v", a->v, "Values .npy [B, Hkv, Lk, D]")->required()->check(CLI::ExistingFile);
  app.add_option("--out", a->out, "Output .npy to write, [B, Hq, Lq, D]")->required();
  app.add_option("--impl", a->impl, "Implementation: flash (tiled) or dense (reference)")
      ->check(CLI::IsMember({"flash", "dense"}))
      ->capture_default_str();
  app.add_flag("--causal", a->causal, "Causal mask (bottom-right aligned when Lq != Lk)");
  app.add_option("--window-left", a->window_left, "Sliding window: keys at most N positions before the query")
      ->check(kNonNegativeInt);
  app.add_option("--window-right", a->window_right, "Sliding window: keys at most N positions after the query")
      ->check(kNonNegativeInt);
  app.add_option("--global-tokens", a->global_tokens, "Global token positions (Longformer), e.g. 0,5,9")
      ->delimiter(',');
  app.add_flag("--alibi", a->alibi, "ALiBi position bias with the paper's slopes for Hq heads");
  app.add_option("--scale", a->scale, "Softmax scale (default 1/sqrt(D))")->check(kPositiveFloat);
  app.add_option("--dropout", a->dropout, "Attention dropout probability in [0, 1)");
  app.add_option("--seed", a->seed, "Dropout seed (Philox)");
  app.add_option("--key-padding-mask", a->key_padding_mask, "int32 .npy [B, Lk]: 0 marks a padded key")
      ->check(CLI::ExistingFile);
  app.add_option("--cu-seqlens-q", a->cu_seqlens_q, "Varlen: cumulative query offsets, e.g. 0,3,8")->delimiter(',');
  app.add_option("--cu-seqlens-k", a->cu_seqlens_k, "Varlen: cumulative key offsets, e.g. 0,5,9")->delimiter(',');
  app.add_option("--layout", a->layout,
                 "Block-sparse layout .npy (bool or integer [R, R] shared, or [Hq, R, R] per head; nonzero = the "
                 "tile of --layout-block positions exists): only present tiles are computed")
      ->check(CLI::ExistingFile);
  app.add_option("--layout-block", a->layout_block, "Positions per side of a --layout tile (a multiple of 16)")
      ->capture_default_str();
  app.add_option("--lse", a->lse, "Write the log-sum-exp per row .npy [B, Hq, Lq]");
  app.add_option("--dout", a->dout, "Gradient of the output .npy (runs the backward pass)")->check(CLI::ExistingFile);
  app.add_option("--dq", a->dq, "Write dQ .npy (with --dout)");
  app.add_option("--dk", a->dk, "Write dK .npy (with --dout; summed over each KV group)");
  app.add_option("--dv", a->dv, "Write dV .npy (with --dout; summed over each KV group)");
  return [a] { return run_attention(*a); };
}

}  // namespace

MF_REGISTER_COMMAND("attention", "Run exact attention (flash or dense) forward/backward on .npy files",
                    setup_attention);
