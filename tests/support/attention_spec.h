// One attention problem for the attention kernel tests (dense, flash):
// batched ([B, H, L, D], equal lengths) or varlen (packed rows), with the
// shapes and element offsets a naive reference loop needs, and the front-door
// calls that run it on a chosen kernel.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "nn/attention/attention.h"

namespace mf::testing {

struct AttentionSpec {
  std::string name;
  bool varlen = false;
  std::int64_t hq = 4, hkv = 2, d = 8;
  std::vector<std::int64_t> lq{5, 5}, lk{7, 7};  // per batch entry
  AttentionOptions opt;
  std::vector<std::int32_t> mask;  // [B, Lk] key padding (batched only), empty = none

  std::int64_t batch() const { return static_cast<std::int64_t>(lq.size()); }
  // Rows before entry b of a packed layout with per-entry lengths l.
  static std::int64_t cu(const std::vector<std::int64_t>& l, std::int64_t b) {
    std::int64_t s = 0;
    for (std::int64_t x = 0; x < b; ++x) s += l[x];
    return s;
  }
  std::int64_t total_q() const { return cu(lq, batch()); }
  std::int64_t total_k() const { return cu(lk, batch()); }
  Shape q_shape() const { return varlen ? Shape{total_q(), hq, d} : Shape{batch(), hq, lq[0], d}; }
  Shape k_shape() const { return varlen ? Shape{total_k(), hkv, d} : Shape{batch(), hkv, lk[0], d}; }
  // Offsets of row i (query) or j (key) of entry b, head h or group g, in the
  // contiguous q/k and lse layouts.
  std::int64_t q_at(std::int64_t b, std::int64_t h, std::int64_t i) const {
    return varlen ? ((cu(lq, b) + i) * hq + h) * d : ((b * hq + h) * lq[0] + i) * d;
  }
  std::int64_t k_at(std::int64_t b, std::int64_t g, std::int64_t j) const {
    return varlen ? ((cu(lk, b) + j) * hkv + g) * d : ((b * hkv + g) * lk[0] + j) * d;
  }
  std::int64_t lse_at(std::int64_t b, std::int64_t h, std::int64_t i) const {
    return varlen ? h * total_q() + cu(lq, b) + i : (b * hq + h) * lq[0] + i;
  }
  VarlenSeqlens seqlens() const {
    VarlenSeqlens s;
    for (std::int64_t b = 0; b <= batch(); ++b) {
      s.cu_seqlens_q.push_back(cu(lq, b));
      s.cu_seqlens_k.push_back(cu(lk, b));
    }
    return s;
  }
  // One query row: entry b, query head h and its key/value group g, row i at
  // key position ip = i + lk - lq (rows aligned to the last key), and the
  // entry's key count lk.
  struct Row {
    std::int64_t b, h, g, i, ip, lk;
  };
  template <class F>
  void for_each_query_row(F&& f) const {
    for (std::int64_t b = 0; b < batch(); ++b)
      for (std::int64_t h = 0; h < hq; ++h)
        for (std::int64_t i = 0; i < lq[b]; ++i) f(Row{b, h, h / (hq / hkv), i, i + lk[b] - lq[b], lk[b]});
  }
  // opt with the key padding mask as the int32 tensor the front door takes.
  AttentionOptions options() const {
    AttentionOptions o = opt;
    if (!mask.empty()) {
      o.key_padding_mask = Tensor::empty({batch(), lk[0]}, DType::I32);
      std::copy(mask.begin(), mask.end(), o.key_padding_mask.data<std::int32_t>());
    }
    return o;
  }
  // Whether the query at position ip (row i of entry b sits at i + lk - lq)
  // sees key j: the window, global tokens, causality and key padding of
  // attention.h, written out per element.
  bool visible(std::int64_t b, std::int64_t ip, std::int64_t j) const {
    auto is_global = [&](std::int64_t pos) {
      return std::find(opt.global_tokens.begin(), opt.global_tokens.end(), pos) != opt.global_tokens.end();
    };
    const bool win =
        (opt.window_left < 0 || j >= ip - opt.window_left) && (opt.window_right < 0 || j <= ip + opt.window_right);
    return (win || is_global(ip) || is_global(j)) && (!opt.causal || j <= ip) &&
           (mask.empty() || mask[b * lk[b] + j] != 0);
  }
};

// A named list of specs, each the base spec changed by one function: the
// option grids the attention tests loop over.
template <class Spec>
class SpecGrid {
 public:
  explicit SpecGrid(Spec base = Spec()) : base_(std::move(base)) {}
  void add(const std::string& name, const std::function<void(Spec&)>& change) {
    Spec s = base_;
    s.name = name;
    change(s);
    specs_.push_back(std::move(s));
  }
  const std::vector<Spec>& specs() const { return specs_; }

 private:
  Spec base_;
  std::vector<Spec> specs_;
};

inline AttentionOutput run_attention_forward(const AttentionSpec& s, const Tensor& q, const Tensor& k,
                                             const Tensor& v, AttentionImpl impl) {
  return s.varlen ? attention_varlen_forward(q, k, v, s.seqlens(), s.options(), impl)
                  : attention_forward(q, k, v, s.options(), impl);
}

inline AttentionGrads run_attention_backward(const AttentionSpec& s, const Tensor& q, const Tensor& k,
                                             const Tensor& v, const AttentionOutput& f, const Tensor& dout,
                                             AttentionImpl impl) {
  return s.varlen ? attention_varlen_backward(q, k, v, f.out, f.lse, dout, s.seqlens(), s.options(), impl)
                  : attention_backward(q, k, v, f.out, f.lse, dout, s.options(), impl);
}

}  // namespace mf::testing
