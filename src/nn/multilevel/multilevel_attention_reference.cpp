// Reference twin of the multi-level attention core (multilevel_attention.h):
// for each (sequence, query head, row) the list of keys the row sees, each
// the mean of its positions' keys and values in double, one softmax, plain
// loops; the backward recomputes the forward and sends each pooled key's
// gradient to its positions divided by the count. The specification the
// fast kernel is tested against.
#include <algorithm>
#include <cmath>
#include <vector>

#include "nn/multilevel/multilevel_attention.h"

namespace mf::reference {

namespace {

// A key the row sees: the real tokens among positions [first, last)
// averaged (count of them); bias log(count) when pooled.
struct Key {
  std::int64_t first, last, count;
  double bias;
};

// mask: the sequence's padding mask row (nonzero = token) or null.
bool is_token(const std::int32_t* mask, std::int64_t j) { return mask == nullptr || mask[j] != 0; }

std::vector<Key> keys_of_row(const MultilevelGeometry& g, std::int64_t i, std::int64_t len, bool causal,
                             const std::int32_t* mask) {
  MultilevelRanges r;
  multilevel_ranges(r, g, i, len, causal);
  std::vector<Key> keys;
  for (std::int64_t l = 0; l <= g.levels(); ++l)
    for (const MultilevelRange* range : {&r.left[l], &r.right[l]})
      for (std::int64_t b = range->lo; b < range->hi; ++b) {
        const std::int64_t first = b * g.unit(l), last = std::min(len, first + g.unit(l));
        std::int64_t count = 0;
        for (std::int64_t j = first; j < last; ++j) count += is_token(mask, j);
        if (count == 0) continue;  // padding only: not a key
        const double bias = l > 0 && g.count_bias ? std::log(static_cast<double>(count)) : 0.0;
        keys.push_back({first, last, count, bias});
      }
  return keys;
}

// Mean over the real tokens of a key of head kh's rows of t [N, H, D] (sequence start row0).
std::vector<double> mean_rows(const float* t, const Key& key, const std::int32_t* mask, std::int64_t row0,
                              std::int64_t heads, std::int64_t kh, std::int64_t d) {
  std::vector<double> m(d, 0.0);
  for (std::int64_t j = key.first; j < key.last; ++j)
    if (is_token(mask, j))
      for (std::int64_t c = 0; c < d; ++c) m[c] += t[((row0 + j) * heads + kh) * d + c];
  for (double& x : m) x /= static_cast<double>(key.count);
  return m;
}

const std::int32_t* mask_row(const MultilevelProblem& pr, std::int64_t b) {
  return pr.key_padding_mask.defined() ? pr.key_padding_mask.data<std::int32_t>() + b * pr.seq_len : nullptr;
}

struct RowSoftmax {
  std::vector<Key> keys;
  std::vector<std::vector<double>> kv, vv;
  std::vector<double> p;
  double lse = 0;
};

RowSoftmax row_softmax(const float* q, const float* k, const float* v, const MultilevelGeometry& g,
                       const MultilevelProblem& pr, std::int64_t b, std::int64_t h, std::int64_t i) {
  const std::int64_t d = pr.head_dim, kh = h / (pr.num_heads / pr.num_kv_heads), row0 = b * pr.seq_len;
  RowSoftmax rs;
  const std::int32_t* mask = mask_row(pr, b);
  rs.keys = keys_of_row(g, i, pr.seq_len, pr.causal, mask);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> s;
  double mx = -INFINITY;
  for (const Key& key : rs.keys) {
    rs.kv.push_back(mean_rows(k, key, mask, row0, pr.num_kv_heads, kh, d));
    rs.vv.push_back(mean_rows(v, key, mask, row0, pr.num_kv_heads, kh, d));
    double dot = 0;
    for (std::int64_t c = 0; c < d; ++c) dot += q[((row0 + i) * pr.num_heads + h) * d + c] * rs.kv.back()[c];
    s.push_back(dot * scale + key.bias);
    mx = std::max(mx, s.back());
  }
  double sum = 0;
  for (double x : s) sum += std::exp(x - mx);
  for (double x : s) rs.p.push_back(std::exp(x - mx) / sum);
  rs.lse = rs.keys.empty() ? -INFINITY : mx + std::log(sum);  // no key: output 0
  return rs;
}

}  // namespace

void multilevel_core_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                             const MultilevelGeometry& g, const MultilevelProblem& pr) {
  multilevel_core_check(q, k, v, g, pr);
  const std::int64_t d = pr.head_dim, hq = pr.num_heads;
  out.check_shape({pr.batch * pr.seq_len, hq, d}, "multilevel_attention", "out");
  lse.check_shape({pr.batch * pr.seq_len, hq}, "multilevel_attention", "lse");
  for (std::int64_t b = 0; b < pr.batch; ++b)
    for (std::int64_t h = 0; h < hq; ++h)
      for (std::int64_t i = 0; i < pr.seq_len; ++i) {
        const RowSoftmax rs = row_softmax(q.data<float>(), k.data<float>(), v.data<float>(), g, pr, b, h, i);
        const std::int64_t row = b * pr.seq_len + i;
        for (std::int64_t c = 0; c < d; ++c) {
          double o = 0;
          for (std::size_t m = 0; m < rs.keys.size(); ++m) o += rs.p[m] * rs.vv[m][c];
          out.data<float>()[(row * hq + h) * d + c] = static_cast<float>(o);
        }
        lse.data<float>()[row * hq + h] = static_cast<float>(rs.lse);
      }
}

void multilevel_core_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                              const Tensor& q, const Tensor& k, const Tensor& v, const MultilevelGeometry& g,
                              const MultilevelProblem& pr) {
  multilevel_core_check(q, k, v, g, pr);
  const std::int64_t d = pr.head_dim, hq = pr.num_heads, hkv = pr.num_kv_heads, n = pr.batch * pr.seq_len;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> gq(n * hq * d, 0.0), gk(n * hkv * d, 0.0), gv(n * hkv * d, 0.0);
  for (std::int64_t b = 0; b < pr.batch; ++b)
    for (std::int64_t h = 0; h < hq; ++h)
      for (std::int64_t i = 0; i < pr.seq_len; ++i) {
        const RowSoftmax rs = row_softmax(q.data<float>(), k.data<float>(), v.data<float>(), g, pr, b, h, i);
        const std::int64_t row = b * pr.seq_len + i, kh = h / (hq / hkv);
        const float* dor = dout.data<float>() + (row * hq + h) * d;
        const float* qr = q.data<float>() + (row * hq + h) * d;
        std::vector<double> dp(rs.keys.size(), 0.0);
        double dsum = 0;
        for (std::size_t m = 0; m < rs.keys.size(); ++m) {
          for (std::int64_t c = 0; c < d; ++c) dp[m] += dor[c] * rs.vv[m][c];
          dsum += rs.p[m] * dp[m];  // = dO . O
        }
        for (std::size_t m = 0; m < rs.keys.size(); ++m) {
          const double ds = rs.p[m] * (dp[m] - dsum);
          const Key& key = rs.keys[m];
          const double share = 1.0 / static_cast<double>(key.count);
          for (std::int64_t c = 0; c < d; ++c) gq[(row * hq + h) * d + c] += scale * ds * rs.kv[m][c];
          for (std::int64_t j = key.first; j < key.last; ++j)
            for (std::int64_t c = 0; c < d && is_token(mask_row(pr, b), j); ++c) {
              const std::int64_t at = ((b * pr.seq_len + j) * hkv + kh) * d + c;
              gk[at] += share * scale * ds * qr[c];
              gv[at] += share * rs.p[m] * dor[c];
            }
        }
      }
  for (auto [t, src] : {std::pair{&dq, &gq}, std::pair{&dk, &gk}, std::pair{&dv, &gv}})
    for (std::size_t x = 0; x < src->size(); ++x) t->data<float>()[x] = static_cast<float>((*src)[x]);
}

}  // namespace mf::reference
