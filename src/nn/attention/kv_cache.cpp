// KV cache: preallocated per-layer K/V, full or a mirrored rolling buffer of
// sliding_window slots. Row copies use memcpy per (batch, head) run; the
// attention front door reads the returned views in place (attention.h).
#include "nn/attention/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace mf {

namespace {

constexpr const char* kOp = "[kv_cache]";

// dst, src: [B, H, n, D] views with unit-stride rows; copies the values.
void copy_rows(const Tensor& dst, const Tensor& src) {
  const std::int64_t b = dst.size(0), h = dst.size(1), n = dst.size(2), d = dst.size(3);
  if (n == 0) return;
  float* dp = dst.data<float>();
  const float* sp = src.data<float>();
  const bool packed = dst.stride(2) == d && src.stride(2) == d;
  for (std::int64_t i = 0; i < b; ++i)
    for (std::int64_t j = 0; j < h; ++j) {
      float* drow = dp + i * dst.stride(0) + j * dst.stride(1);
      const float* srow = sp + i * src.stride(0) + j * src.stride(1);
      if (packed) {
        std::memcpy(drow, srow, static_cast<std::size_t>(n * d) * sizeof(float));
        continue;
      }
      for (std::int64_t r = 0; r < n; ++r)
        std::memcpy(drow + r * dst.stride(2), srow + r * src.stride(2), static_cast<std::size_t>(d) * sizeof(float));
    }
}

// A packed copy of a [B, H, n, D] view.
Tensor packed(const Tensor& t) {
  Tensor c = Tensor::empty(t.shape());
  copy_rows(c, t);
  return c;
}

}  // namespace

KvCache::KvCache(std::int64_t num_layers, std::int64_t batch, std::int64_t num_kv_heads, std::int64_t head_dim,
                 std::int64_t sliding_window, std::int64_t capacity, bool copy_out)
    : batch_(batch),
      kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      window_(sliding_window),
      capacity_(capacity),
      copy_out_(copy_out) {
  MF_CHECK(num_layers >= 1, kOp, " num_layers must be >= 1, got ", num_layers);
  MF_CHECK(batch >= 1, kOp, " batch must be >= 1, got ", batch);
  MF_CHECK(num_kv_heads >= 1, kOp, " num_kv_heads must be >= 1, got ", num_kv_heads);
  MF_CHECK(head_dim >= 1, kOp, " head_dim must be >= 1, got ", head_dim);
  MF_CHECK(sliding_window >= 0, kOp, " sliding_window must be >= 0 (0: none), got ", sliding_window);
  MF_CHECK(capacity >= 1, kOp, " capacity must be >= 1 position, got ", capacity);
  rows_ = window_ > 0 ? 2 * std::min(window_, capacity_) : capacity_;
  std::int64_t total_bytes = 1;
  bool overflow = false;
  for (std::int64_t f : {batch, num_kv_heads, rows_, head_dim, num_layers, std::int64_t{2 * 4}})
    overflow = overflow || __builtin_mul_overflow(total_bytes, f, &total_bytes);
  MF_CHECK(!overflow, kOp, " cache size overflows (", num_layers, " layers x K and V x [", batch, ", ", num_kv_heads,
           ", ", rows_, ", ", head_dim, "] floats)");
  for (std::int64_t l = 0; l < num_layers; ++l) {
    k_.push_back(Tensor::empty({batch, num_kv_heads, rows_, head_dim}));
    v_.push_back(Tensor::empty({batch, num_kv_heads, rows_, head_dim}));
  }
}

std::int64_t KvCache::bytes() const {
  std::int64_t n = 0;
  for (std::size_t l = 0; l < k_.size(); ++l)
    n += static_cast<std::int64_t>(k_[l].nbytes() + v_[l].nbytes());
  return n;
}

void KvCache::reset() {
  past_ = 0;
  call_len_ = 0;
  layers_done_ = 0;
}

void KvCache::check_room(std::int64_t new_tokens, const char* what) const {
  MF_CHECK(new_tokens >= 0, kOp, " ", what, " has a negative token count ", new_tokens);
  MF_CHECK(new_tokens <= capacity_ - past_, kOp, " ", what, " needs positions ", past_, "..", past_ + new_tokens - 1,
           " but the cache holds at most ", capacity_, " positions (", past_, " used, ", capacity_ - past_,
           " free); use a shorter prompt, fewer new tokens or a larger capacity (max_position_embeddings)");
}

void KvCache::check_layer_input(std::int64_t layer, const Tensor& k, const Tensor& v) const {
  MF_CHECK(layer >= 0 && layer < num_layers(), kOp, " layer ", layer, " is out of range [0, ", num_layers(), ")");
  MF_CHECK(k.defined() && v.defined(), kOp, " layer ", layer, ": k and v must be defined");
  MF_CHECK(k.dtype() == DType::F32 && v.dtype() == DType::F32, kOp, " layer ", layer, ": k and v must be float32");
  MF_CHECK(k.dim() == 4 && k.size(0) == batch_ && k.size(1) == kv_heads_ && k.size(3) == head_dim_ && k.size(2) >= 1,
           kOp, " layer ", layer, ": k must have shape [", batch_, ", ", kv_heads_, ", L >= 1, ", head_dim_,
           "] but has ", shape_str(k.shape()));
  MF_CHECK(v.shape() == k.shape(), kOp, " layer ", layer, ": v must have k's shape ", shape_str(k.shape()),
           " but has ", shape_str(v.shape()));
  MF_CHECK(k.stride(3) == 1 && v.stride(3) == 1, kOp, " layer ", layer, ": k and v rows must be unit-stride");
}

void KvCache::write_positions(std::int64_t layer, const Tensor& k, const Tensor& v, std::int64_t from,
                              std::int64_t n, std::int64_t pos) {
  const auto ul = static_cast<std::size_t>(layer);
  auto put = [&](std::int64_t row, std::int64_t src, std::int64_t len) {
    copy_rows(k_[ul].slice(2, row, row + len), k.slice(2, src, src + len));
    copy_rows(v_[ul].slice(2, row, row + len), v.slice(2, src, src + len));
  };
  if (window_ == 0) {
    put(pos, from, n);
    return;
  }
  // Ring of W = rows_ / 2 slots, each stored at rows s and s + W; at most two runs (split at the wrap).
  const std::int64_t w = rows_ / 2;
  for (std::int64_t done = 0; done < n;) {
    const std::int64_t slot = (pos + done) % w, len = std::min(n - done, w - slot);
    put(slot, from + done, len);
    put(slot + w, from + done, len);
    done += len;
  }
}

std::pair<Tensor, Tensor> KvCache::view_positions(std::int64_t layer, std::int64_t first, std::int64_t last) const {
  const auto ul = static_cast<std::size_t>(layer);
  const std::int64_t row = window_ == 0 ? first : first % (rows_ / 2);  // with a window: last - first <= W
  return {k_[ul].slice(2, row, row + (last - first)), v_[ul].slice(2, row, row + (last - first))};
}

std::pair<Tensor, Tensor> KvCache::out(Tensor k, Tensor v) const {
  if (copy_out_) return {packed(k), packed(v)};
  return {std::move(k), std::move(v)};
}

std::pair<Tensor, Tensor> KvCache::extend(std::int64_t layer, const Tensor& k, const Tensor& v) {
  check_layer_input(layer, k, v);
  const std::int64_t len = k.size(2), p = past_;
  MF_CHECK(layer == layers_done_, kOp, " layer ", layer, " was extended out of order (expected layer ", layers_done_,
           layers_done_ > 0 ? "; an earlier call stopped midway: reset() the cache" : "", ")");
  if (layer == 0) {
    check_room(len);
    call_len_ = len;
  } else {
    MF_CHECK(len == call_len_, kOp, " layer ", layer, " got ", len, " new positions but layer 0 got ", call_len_,
             " in this call");
  }
  std::pair<Tensor, Tensor> result;
  if (window_ == 0) {
    write_positions(layer, k, v, 0, len, p);
    auto [kv, vv] = view_positions(layer, 0, p + len);
    result = out(kv, vv);
  } else {
    const std::int64_t w = rows_ / 2;
    if (len == 1) {  // decode: write, then the last min(p + 1, W) positions are one view
      write_positions(layer, k, v, 0, 1, p);
      auto [kv, vv] = view_positions(layer, std::max<std::int64_t>(0, p + 1 - w), p + 1);
      result = out(kv, vv);
    } else {
      // The first new query still sees W - 1 earlier positions: return those
      // (read before the ring is overwritten) followed by this call's L.
      const std::int64_t m = std::min(p, w - 1);
      if (m == 0) {
        result = {copy_out_ ? packed(k) : k, copy_out_ ? packed(v) : v};
      } else {
        auto [kc, vc] = view_positions(layer, p - m, p);
        Tensor kk = Tensor::empty({batch_, kv_heads_, m + len, head_dim_});
        Tensor vv = Tensor::empty({batch_, kv_heads_, m + len, head_dim_});
        copy_rows(kk.slice(2, 0, m), kc);
        copy_rows(vv.slice(2, 0, m), vc);
        copy_rows(kk.slice(2, m, m + len), k);
        copy_rows(vv.slice(2, m, m + len), v);
        result = {kk, vv};
      }
      const std::int64_t keep = std::min(len, w);  // only the last W positions stay in the ring
      write_positions(layer, k, v, len - keep, keep, p + len - keep);
    }
  }
  if (++layers_done_ == num_layers()) {
    past_ += call_len_;
    layers_done_ = 0;
  }
  return result;
}

}  // namespace mf
