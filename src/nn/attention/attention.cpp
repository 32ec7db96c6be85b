// The exact-attention front door: validates every input once, builds the
// AttentionProblem (offsets/strides for [B, H, L, D] and varlen [total, H, D]),
// computes the ALiBi slopes (Press et al., "Train Short, Test Long", 2022) and
// dispatches to the dense reference or the flash kernels. Kernels trust it.
#include "nn/attention/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "core/error.h"
#include "core/profile.h"
#include "nn/attention/attention_problem.h"

namespace mf {

namespace {

constexpr const char* kOp = "[attention]";

std::int64_t checked_mul(std::int64_t a, std::int64_t b) {
  MF_CHECK(a == 0 || b <= std::numeric_limits<std::int64_t>::max() / a, kOp, " size overflow (", a, " x ", b, ")");
  return a * b;
}

void check_float_tensor(const Tensor& t, const char* name, int ndim, const char* layout) {
  MF_CHECK(t.defined(), kOp, " tensor '", name, "' is undefined");
  MF_CHECK(t.dtype() == DType::F32, kOp, " tensor '", name, "' must be float32 but is ", dtype_name(t.dtype()));
  MF_CHECK(t.dim() == ndim, kOp, " tensor '", name, "' must have ", ndim, " dimensions ", layout, " but has shape ",
           shape_str(t.shape()));
}

void check_head_dim(std::int64_t d, const char* which = "") {
  MF_CHECK(d >= 8 && d <= 256 && d % 8 == 0, kOp, " ", which, "head dimension ", *which ? "Dv" : "D",
           " must be a multiple of 8 in [8, 256], got ", d);
}

void check_heads(std::int64_t hq, std::int64_t hkv) {
  MF_CHECK(hq >= 1, kOp, " q must have at least one head, got ", hq);
  MF_CHECK(hkv >= 1, kOp, " k must have at least one head, got ", hkv);
  MF_CHECK(hq % hkv == 0, kOp, " query heads (", hq, ") must be a multiple of key/value heads (", hkv, ")");
}

// Positions enter the kernels' masks and ALiBi distances as float32, which
// holds every integer only up to 2^24: longer sequences are refused.
void check_length(std::int64_t len, const char* what) {
  MF_CHECK(len <= kMaxAttentionLength, kOp, " ", what, " is ", len, " positions long but at most ", kMaxAttentionLength,
           " = 2^24 are supported (positions are compared and ALiBi distances computed in float32, exact only up to "
           "2^24)");
}

// The block-sparse layout of a call: valid in itself, one map or one per query
// head, covering every position, and aligned with the query rows (block_sparse.h).
void set_block_layout(AttentionProblem& p, const BlockLayout& layout) {
  check_block_layout(layout, kOp);
  MF_CHECK(layout.heads == 1 || layout.heads == p.hq, kOp, " block layout has ", layout.heads,
           " head maps but q has ", p.hq, " heads (give 1 map shared by all heads, or one per query head)");
  const std::int64_t blk = layout.block;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const std::int64_t lq = p.q_len[b], lk = p.k_len[b];
    MF_CHECK(lq <= lk, kOp, " a block layout needs Lq <= Lk (queries at absolute positions), got Lq ", lq, " > Lk ",
             lk);
    MF_CHECK(lq <= 1 || (lk - lq) % blk == 0, kOp, " with a block layout of block ", blk,
             ", Lk - Lq must be a multiple of the block (or Lq = 1), got Lk ", lk, ", Lq ", lq);
    const std::int64_t need = (lk + blk - 1) / blk;
    MF_CHECK(layout.row_blocks >= need && layout.col_blocks >= need, kOp, " block layout is ", layout.row_blocks,
             " x ", layout.col_blocks, " blocks of ", blk, " but ", lk, " positions need ", need, " x ", need);
  }
  p.layout = &layout;
}

// Fills the option fields of `p` (everything but the layout) and validates
// them; `max_k_len` bounds the global token positions.
void set_options(AttentionProblem& p, const AttentionOptions& opt, std::int64_t max_k_len) {
  MF_CHECK(opt.window_left >= -1, kOp, " window_left must be >= 0, or -1 for unbounded, got ", opt.window_left);
  MF_CHECK(opt.window_right >= -1, kOp, " window_right must be >= 0, or -1 for unbounded, got ", opt.window_right);
  MF_CHECK(std::isfinite(opt.scale) && opt.scale >= 0.0f, kOp,
           " scale must be finite and > 0 (or 0 for the default 1/sqrt(D)), got ", opt.scale);
  MF_CHECK(std::isfinite(opt.dropout_p) && opt.dropout_p >= 0.0f && opt.dropout_p < 1.0f, kOp,
           " dropout_p must be in [0, 1), got ", opt.dropout_p);
  std::vector<std::int64_t> globals = opt.global_tokens;
  for (auto g : globals)
    MF_CHECK(g >= 0 && g < max_k_len, kOp, " global token position ", g, " is out of range [0, ", max_k_len, ")");
  std::sort(globals.begin(), globals.end());
  globals.erase(std::unique(globals.begin(), globals.end()), globals.end());

  p.scale = opt.scale > 0.0f ? opt.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.d)));
  p.causal = opt.causal;
  p.window_left = opt.window_left;
  p.window_right = opt.window_right;
  drop_vacuous_window_bounds(p);
  p.global_tokens = std::move(globals);
  if (opt.alibi) p.alibi_slopes = alibi_slopes(p.hq);
  p.dropout_p = opt.dropout_p;
  p.dropout_seed = opt.dropout_seed;
  check_flash_tiles(opt.flash_tiles);
  p.tiles = opt.flash_tiles;
  if (opt.block_layout) set_block_layout(p, *opt.block_layout);
}

// Dense layout: q/out [B, Hq, Lq, D], k/v [B, Hkv, Lk, D], lse [B, Hq, Lq].
struct DenseInputs {
  Tensor q, k, v, mask;  // contiguous (k and v: or strided views, see kv_view_ok)
  AttentionProblem p;
};

// The forward reads k and v through the problem's strides, so a strided view
// (e.g. the first Lk rows of a preallocated [B, Hkv, capacity, D] KV cache)
// is used in place when its rows are unit-stride. The backward keeps packed
// k/v (dk and dv are written with the k and v strides).
bool kv_view_ok(const Tensor& k, const Tensor& v) {
  if (k.stride(3) != 1 || v.stride(3) != 1) return false;
  for (int i = 0; i < 3; ++i)
    if (k.stride(i) < 0 || v.stride(i) < 0) return false;
  return true;
}

// The value / output layout of a [B, H, L, Dv] problem: v's strides, out packed.
void set_dense_value_layout(AttentionProblem& p, const Tensor& v, std::int64_t lq) {
  p.v_head_stride = v.stride(1);
  p.v_row_stride = v.stride(2);
  p.o_head_stride = checked_mul(lq, p.dv);
  p.o_row_stride = p.dv;
  for (std::int64_t i = 0; i < p.batch; ++i) {
    p.v_off.push_back(i * v.stride(0));
    p.o_off.push_back(i * p.hq * lq * p.dv);
  }
}

DenseInputs prepare_dense(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt,
                          bool kv_views = false) {
  check_float_tensor(q, "q", 4, "[B, Hq, Lq, D]");
  check_float_tensor(k, "k", 4, "[B, Hkv, Lk, D]");
  check_float_tensor(v, "v", 4, "[B, Hkv, Lk, Dv]");
  const std::int64_t b = q.size(0), hq = q.size(1), lq = q.size(2), d = q.size(3);
  const std::int64_t hkv = k.size(1), lk = k.size(2);
  check_length(lq, "q (Lq)");
  check_length(lk, "k (Lk)");
  MF_CHECK(k.size(0) == b, kOp, " k has batch size ", k.size(0), " but q has ", b, " (q ", shape_str(q.shape()),
           ", k ", shape_str(k.shape()), ")");
  MF_CHECK(k.size(3) == d, kOp, " k has head dimension ", k.size(3), " but q has ", d, " (q ", shape_str(q.shape()),
           ", k ", shape_str(k.shape()), ")");
  MF_CHECK(v.size(0) == b && v.size(1) == hkv && v.size(2) == lk, kOp, " v must have shape [B, Hkv, Lk, Dv] = ",
           shape_str({b, hkv, lk, v.size(3)}), " (k's first three dimensions) but has ", shape_str(v.shape()));
  check_heads(hq, hkv);
  check_head_dim(d);
  check_head_dim(v.size(3), "value ");

  DenseInputs in;
  in.q = q.contiguous();
  const bool in_place = kv_views && kv_view_ok(k, v);
  in.k = in_place ? k : k.contiguous();
  in.v = in_place ? v : v.contiguous();
  AttentionProblem& p = in.p;
  p.batch = b;
  p.hq = hq;
  p.hkv = hkv;
  p.d = d;
  p.dv = v.size(3);
  p.q_head_stride = checked_mul(lq, d);
  p.q_row_stride = d;
  p.k_head_stride = in.k.stride(1);
  p.k_row_stride = in.k.stride(2);
  p.lse_head_stride = lq;
  for (std::int64_t i = 0; i < b; ++i) {
    p.q_len.push_back(lq);
    p.k_len.push_back(lk);
    p.q_off.push_back(i * hq * lq * d);
    p.k_off.push_back(i * in.k.stride(0));
    p.lse_off.push_back(i * hq * lq);
  }
  set_dense_value_layout(p, in.v, lq);
  set_options(p, opt, lk);
  if (opt.key_padding_mask.defined()) {
    const Tensor& m = opt.key_padding_mask;
    MF_CHECK(m.dtype() == DType::I32, kOp, " key_padding_mask must be int32 but is ", dtype_name(m.dtype()));
    MF_CHECK(m.dim() == 2 && m.size(0) == b && m.size(1) == lk, kOp, " key_padding_mask must have shape [B, Lk] = ",
             shape_str({b, lk}), " but has ", shape_str(m.shape()));
    in.mask = m.contiguous();
    p.key_mask = in.mask.data<std::int32_t>();
    p.key_mask_stride = lk;
  }
  return in;
}

// Varlen layout: q/out [total_q, Hq, D], k/v [total_k, Hkv, D], lse [Hq, total_q].
DenseInputs prepare_varlen(const Tensor& q, const Tensor& k, const Tensor& v, const VarlenSeqlens& seqs,
                           const AttentionOptions& opt) {
  check_float_tensor(q, "q", 3, "[total_q, Hq, D]");
  check_float_tensor(k, "k", 3, "[total_k, Hkv, D]");
  check_float_tensor(v, "v", 3, "[total_k, Hkv, Dv]");
  const std::int64_t total_q = q.size(0), hq = q.size(1), d = q.size(2);
  const std::int64_t total_k = k.size(0), hkv = k.size(1), dv = v.size(2);
  MF_CHECK(k.size(2) == d, kOp, " k has head dimension ", k.size(2), " but q has ", d);
  MF_CHECK(v.size(0) == total_k && v.size(1) == hkv, kOp, " v must have shape [total_k, Hkv, Dv] = ",
           shape_str({total_k, hkv, dv}), " (k's first two dimensions) but has ", shape_str(v.shape()));
  check_heads(hq, hkv);
  check_head_dim(d);
  check_head_dim(dv, "value ");
  MF_CHECK(!opt.key_padding_mask.defined(), kOp,
           " key_padding_mask is not allowed with variable-length batches (cu_seqlens already delimit the keys)");
  const auto& cq = seqs.cu_seqlens_q;
  const auto& ck = seqs.cu_seqlens_k;
  MF_CHECK(cq.size() >= 2, kOp, " cu_seqlens_q must have B + 1 >= 2 entries, got ", cq.size());
  MF_CHECK(ck.size() == cq.size(), kOp, " cu_seqlens_k has ", ck.size(), " entries but cu_seqlens_q has ", cq.size());
  auto check_cu = [](const std::vector<std::int64_t>& cu, const char* name, std::int64_t total, const char* tname) {
    MF_CHECK(cu.front() == 0, kOp, " ", name, "[0] must be 0, got ", cu.front());
    for (std::size_t i = 1; i < cu.size(); ++i)
      MF_CHECK(cu[i] >= cu[i - 1], kOp, " ", name, " must be non-decreasing but ", name, "[", i, "] = ", cu[i],
               " < ", name, "[", i - 1, "] = ", cu[i - 1]);
    MF_CHECK(cu.back() == total, kOp, " ", name, " ends at ", cu.back(), " but ", tname, " has ", total, " rows");
  };
  check_cu(cq, "cu_seqlens_q", total_q, "q");
  check_cu(ck, "cu_seqlens_k", total_k, "k");

  DenseInputs in;
  in.q = q.contiguous();
  in.k = k.contiguous();
  in.v = v.contiguous();
  AttentionProblem& p = in.p;
  p.batch = static_cast<std::int64_t>(cq.size()) - 1;
  p.hq = hq;
  p.hkv = hkv;
  p.d = d;
  p.dv = dv;
  p.q_head_stride = d;
  p.q_row_stride = checked_mul(hq, d);
  p.k_head_stride = d;
  p.k_row_stride = checked_mul(hkv, d);
  p.v_head_stride = dv;
  p.v_row_stride = checked_mul(hkv, dv);
  p.o_head_stride = dv;
  p.o_row_stride = checked_mul(hq, dv);
  p.lse_head_stride = total_q;
  std::int64_t max_k = 0;
  for (std::int64_t i = 0; i < p.batch; ++i) {
    p.q_len.push_back(cq[i + 1] - cq[i]);
    p.k_len.push_back(ck[i + 1] - ck[i]);
    p.q_off.push_back(cq[i] * hq * d);
    p.k_off.push_back(ck[i] * hkv * d);
    p.v_off.push_back(ck[i] * hkv * dv);
    p.o_off.push_back(cq[i] * hq * dv);
    p.lse_off.push_back(cq[i]);
    max_k = std::max(max_k, ck[i + 1] - ck[i]);
    check_length(p.q_len.back(), "a query sequence (cu_seqlens_q)");
    check_length(p.k_len.back(), "a key sequence (cu_seqlens_k)");
  }
  set_options(p, opt, max_k);
  return in;
}

// out and dout: q's shape with v's head dimension Dv.
void check_backward_tensors(const Tensor& q, const Tensor& v, const Tensor& out, const Tensor& lse,
                            const Tensor& dout, const Shape& lse_shape, const char* lse_layout) {
  check_float_tensor(out, "out", q.dim(), "(q's shape, v's head dimension)");
  check_float_tensor(dout, "dout", q.dim(), "(q's shape, v's head dimension)");
  check_float_tensor(lse, "lse", static_cast<int>(lse_shape.size()), lse_layout);
  Shape out_shape = q.shape();
  out_shape.back() = v.size(v.dim() - 1);
  MF_CHECK(out.shape() == out_shape, kOp, " out must have shape ", shape_str(out_shape),
           " (q's, with v's head dimension) but has ", shape_str(out.shape()));
  MF_CHECK(dout.shape() == out_shape, kOp, " dout must have shape ", shape_str(out_shape),
           " (q's, with v's head dimension) but has ", shape_str(dout.shape()));
  MF_CHECK(lse.shape() == lse_shape, kOp, " lse must have shape ", lse_layout, " = ", shape_str(lse_shape),
           " but has ", shape_str(lse.shape()));
}

AttentionOutput run_forward(const DenseInputs& in, const Shape& lse_shape, AttentionImpl impl) {
  const profile::Scope timer(profile::Category::AttentionForward);
  AttentionOutput r;
  // The flash forward writes every row of out and lse (rows that see no key get 0 and -inf).
  const bool writes_all = impl == AttentionImpl::Flash;
  Shape out_shape = in.q.shape();
  out_shape.back() = in.p.dv;
  r.out = writes_all ? Tensor::empty(out_shape) : Tensor::zeros(out_shape);
  r.lse = writes_all ? Tensor::empty(lse_shape) : Tensor::zeros(lse_shape);
  const float* q = in.q.data<float>();
  const float* k = in.k.data<float>();
  const float* v = in.v.data<float>();
  switch (impl) {
    case AttentionImpl::Dense:
      dense_attention_forward(in.p, q, k, v, r.out.data<float>(), r.lse.data<float>());
      break;
    case AttentionImpl::Flash:
      flash_attention_forward(in.p, q, k, v, r.out.data<float>(), r.lse.data<float>());
      break;
  }
  return r;
}

AttentionGrads run_backward(const DenseInputs& in, const Tensor& out, const Tensor& lse, const Tensor& dout,
                            AttentionImpl impl) {
  const profile::Scope timer(profile::Category::AttentionBackward);
  const Tensor oc = out.contiguous(), lc = lse.contiguous(), dc = dout.contiguous();
  AttentionGrads g;
  // The flash backward writes every element of dq, dk and dv.
  const bool writes_all = impl == AttentionImpl::Flash;
  g.dq = writes_all ? Tensor::empty(in.q.shape()) : Tensor::zeros(in.q.shape());
  g.dk = writes_all ? Tensor::empty(in.k.shape()) : Tensor::zeros(in.k.shape());
  g.dv = writes_all ? Tensor::empty(in.v.shape()) : Tensor::zeros(in.v.shape());
  const float* q = in.q.data<float>();
  const float* k = in.k.data<float>();
  const float* v = in.v.data<float>();
  switch (impl) {
    case AttentionImpl::Dense:
      dense_attention_backward(in.p, q, k, v, oc.data<float>(), lc.data<float>(), dc.data<float>(),
                               g.dq.data<float>(), g.dk.data<float>(), g.dv.data<float>());
      break;
    case AttentionImpl::Flash:
      flash_attention_backward(in.p, q, k, v, oc.data<float>(), lc.data<float>(), dc.data<float>(),
                               g.dq.data<float>(), g.dk.data<float>(), g.dv.data<float>());
      break;
  }
  return g;
}

}  // namespace

void check_block_layout(const BlockLayout& l, const char* op) {
  MF_CHECK(l.block >= 16 && l.block <= 4096 && l.block % 16 == 0, op,
           " block layout: block must be a multiple of 16 in [16, 4096], got ", l.block);
  MF_CHECK(l.heads >= 1 && l.row_blocks >= 0 && l.col_blocks >= 0, op, " block layout: heads (", l.heads,
           ") must be >= 1 and the block counts (", l.row_blocks, ", ", l.col_blocks, ") >= 0");
  MF_CHECK(l.row_blocks <= kMaxAttentionLength && l.col_blocks <= kMaxAttentionLength &&
               static_cast<std::int64_t>(l.present.size()) == l.heads * l.row_blocks * l.col_blocks,
           op, " block layout: present has ", l.present.size(), " entries but heads x row_blocks x col_blocks = ",
           l.heads, " x ", l.row_blocks, " x ", l.col_blocks);
  switch (l.rule.kind) {
    case SparseElementRule::Kind::None:
      break;
    case SparseElementRule::Kind::Strided:
      MF_CHECK(l.rule.period >= 1 && l.rule.period <= kMaxAttentionLength, op,
               " block layout: strided period must be in [1, 2^24], got ", l.rule.period);
      break;
    case SparseElementRule::Kind::Fixed:
      MF_CHECK(l.rule.period >= 1 && l.rule.period <= kMaxAttentionLength, op,
               " block layout: fixed period must be in [1, 2^24], got ", l.rule.period);
      MF_CHECK(l.rule.summary >= 0 && l.rule.summary <= l.rule.period, op,
               " block layout: fixed summary c must be in [0, period = ", l.rule.period, "], got ", l.rule.summary);
      break;
  }
}

std::vector<float> alibi_slopes(std::int64_t n_heads) {
  MF_CHECK(n_heads >= 1, "[alibi] the number of heads must be >= 1, got ", n_heads);
  // Power of two n: m_h = 2^(-8h/n), h = 1..n (a geometric sequence starting at 2^(-8/n)).
  auto power_of_two = [](std::int64_t n) {
    std::vector<float> s;
    for (std::int64_t h = 1; h <= n; ++h) s.push_back(static_cast<float>(std::exp2(-8.0 * h / n)));
    return s;
  };
  std::int64_t closest = 1;
  while (closest * 2 <= n_heads) closest *= 2;
  std::vector<float> slopes = power_of_two(closest);
  if (closest == n_heads) return slopes;
  // Otherwise: the closest lower power of two's slopes, then every other slope
  // of twice that count (h = 1, 3, 5, ...), as many as are still missing.
  const std::vector<float> twice = power_of_two(2 * closest);
  for (std::int64_t i = 0; static_cast<std::int64_t>(slopes.size()) < n_heads; i += 2) slopes.push_back(twice[i]);
  return slopes;
}

AttentionOutput attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt,
                                  AttentionImpl impl) {
  const DenseInputs in = prepare_dense(q, k, v, opt, /*kv_views=*/true);
  return run_forward(in, {q.size(0), q.size(1), q.size(2)}, impl);
}

AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                  const Tensor& lse, const Tensor& dout, const AttentionOptions& opt,
                                  AttentionImpl impl) {
  const DenseInputs in = prepare_dense(q, k, v, opt);
  check_backward_tensors(q, v, out, lse, dout, {q.size(0), q.size(1), q.size(2)}, "[B, Hq, Lq]");
  return run_backward(in, out, lse, dout, impl);
}

AttentionOutput attention_varlen_forward(const Tensor& q, const Tensor& k, const Tensor& v, const VarlenSeqlens& seqs,
                                         const AttentionOptions& opt, AttentionImpl impl) {
  const DenseInputs in = prepare_varlen(q, k, v, seqs, opt);
  return run_forward(in, {q.size(1), q.size(0)}, impl);
}

AttentionGrads attention_varlen_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                         const Tensor& lse, const Tensor& dout, const VarlenSeqlens& seqs,
                                         const AttentionOptions& opt, AttentionImpl impl) {
  const DenseInputs in = prepare_varlen(q, k, v, seqs, opt);
  check_backward_tensors(q, v, out, lse, dout, {q.size(1), q.size(0)}, "[Hq, total_q]");
  return run_backward(in, out, lse, dout, impl);
}

}  // namespace mf
