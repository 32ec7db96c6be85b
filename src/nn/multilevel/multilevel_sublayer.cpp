// Multi-level attention sublayer (multilevel_attention.h): the q/k/v/o
// projections and RoPE around the core, and causal generation through a
// state of ring buffers: the last w_0 + p_1 - 1 positions at full resolution,
// each level's running sums of its incomplete block, and each level's last
// completed pooled blocks. A generation call appends its positions one by
// one and computes each row from the state (append, then attend: O(keys D)
// per row, the same keys and the same pooled sums, in the same order, as the
// full forward).
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "nn/linear.h"
#include "nn/multilevel/multilevel_attention.h"

namespace mf {

namespace {

constexpr const char* kOp = "[multilevel_attention]";

void check_params(const MultilevelParams& p, const Tensor& x, std::int64_t batch, std::int64_t seq_len) {
  MF_CHECK(p.q && p.k && p.v && p.o, kOp, " the q, k, v and o projections are required");
  MF_CHECK(x.dim() == 2 && x.dtype() == DType::F32 && x.is_contiguous(), kOp,
           " input must be a contiguous float32 [B*L, C] tensor but has shape ", shape_str(x.shape()));
  MF_CHECK(batch >= 1 && seq_len >= 1 && x.size(0) == batch * seq_len, kOp, " input has ", x.size(0),
           " rows but batch ", batch, " x seq_len ", seq_len, " were given");
  MF_CHECK(p.num_heads >= 1 && p.num_kv_heads >= 1 && p.num_heads % p.num_kv_heads == 0, kOp, " num_heads (",
           p.num_heads, ") must be a positive multiple of num_kv_heads (", p.num_kv_heads, ")");
  const std::int64_t c = x.size(1), qd = p.num_heads * p.head_dim, kd = p.num_kv_heads * p.head_dim;
  p.q->value.check_shape({qd, c}, "multilevel_attention", p.q->name.c_str());
  p.k->value.check_shape({kd, c}, "multilevel_attention", p.k->name.c_str());
  p.v->value.check_shape({kd, c}, "multilevel_attention", p.v->name.c_str());
  p.o->value.check_shape({c, qd}, "multilevel_attention", p.o->name.c_str());
  multilevel_check_geometry(p.geometry);
}

MultilevelProblem problem_of(const MultilevelParams& p, std::int64_t batch, std::int64_t seq_len, bool causal,
                             const Tensor& key_padding_mask) {
  return {batch, seq_len, p.num_heads, p.num_kv_heads, p.head_dim, causal, key_padding_mask};
}

// Ring slots per level: enough for every key a row sees plus the blocks
// completed since (finer levels cover them). covered = the most positions
// levels 0..l-1 cover behind a row.
std::vector<std::int64_t> ring_slots(const MultilevelGeometry& g, std::int64_t capacity) {
  const std::int64_t n = g.levels();
  std::vector<std::int64_t> slots(n + 1);
  slots[0] = g.window + g.pool_sizes[0] - 1;
  std::int64_t covered = slots[0];
  for (std::int64_t l = 1; l <= n; ++l) {
    const std::int64_t w = g.level_windows[l - 1], ratio_up = l < n ? g.unit(l + 1) / g.unit(l) : 1;
    slots[l] = w == 0 ? capacity / g.unit(l) + 1 : covered / g.unit(l) + 2 + w + ratio_up;
    covered += (w + ratio_up - 1) * g.unit(l);
  }
  return slots;
}

// Appends position `pos` of (sequence b, KV head kh) to the state.
void state_append(MultilevelState& st, const MultilevelGeometry& g, std::int64_t b, std::int64_t kh,
                  std::int64_t pos, const float* k, const float* v) {
  const std::int64_t d = st.head_dim, n = g.levels();
  auto slot = [&](std::int64_t level, std::int64_t index) {
    const std::int64_t slots = st.ring_slots[level];
    return ((b * st.num_kv_heads + kh) * slots + index % slots) * d;
  };
  std::copy_n(k, d, st.ring_k[0].data<float>() + slot(0, pos));
  std::copy_n(v, d, st.ring_v[0].data<float>() + slot(0, pos));
  for (std::int64_t l = 1; l <= n; ++l) {
    float* pk = st.partial_k.data<float>() + ((b * st.num_kv_heads + kh) * n + l - 1) * d;
    float* pv = st.partial_v.data<float>() + ((b * st.num_kv_heads + kh) * n + l - 1) * d;
    for (std::int64_t c = 0; c < d; ++c) pk[c] += k[c], pv[c] += v[c];
    if ((pos + 1) % g.unit(l) != 0) continue;
    const float inv = 1.0f / static_cast<float>(g.unit(l));
    const std::int64_t at = slot(l, (pos + 1) / g.unit(l) - 1);
    float* rk = st.ring_k[l].data<float>() + at;
    float* rv = st.ring_v[l].data<float>() + at;
    for (std::int64_t c = 0; c < d; ++c) rk[c] = pk[c] * inv, rv[c] = pv[c] * inv, pk[c] = 0.0f, pv[c] = 0.0f;
  }
}

// out_row = the causal row at `pos` of query q (scores in `s`, scratch).
void state_attend(float* out_row, const float* q, const MultilevelState& st, const MultilevelGeometry& g,
                  std::int64_t b, std::int64_t kh, std::int64_t pos, MultilevelRanges& ranges,
                  std::vector<float>& s) {
  const std::int64_t d = st.head_dim, n = g.levels();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  multilevel_ranges(ranges, g, pos, pos + 1, true);
  s.clear();
  float row_max = -std::numeric_limits<float>::infinity();
  for (std::int64_t l = 0; l <= n; ++l) {
    const MultilevelRange& r = ranges.left[l];
    const std::int64_t slots = st.ring_slots[l], completed = (pos + 1) / g.unit(l);
    MF_CHECK(r.empty() || completed - r.lo <= slots, kOp, " internal error: level ", l, " needs ",
             completed - r.lo, " ring slots but has ", slots);
    const float bias = l > 0 && g.count_bias ? std::log(static_cast<float>(g.unit(l))) : 0.0f;
    for (std::int64_t blk = r.lo; blk < r.hi; ++blk) {
      const float* key = st.ring_k[l].data<float>() + ((b * st.num_kv_heads + kh) * slots + blk % slots) * d;
      float dot = 0.0f;
      for (std::int64_t c = 0; c < d; ++c) dot += q[c] * key[c];
      s.push_back(dot * scale + bias);
      row_max = std::max(row_max, s.back());
    }
  }
  float sum = 0.0f;
  for (float& x : s) sum += x = std::exp(x - row_max);
  const float inv = 1.0f / sum;
  std::fill_n(out_row, d, 0.0f);
  std::size_t m = 0;
  for (std::int64_t l = 0; l <= n; ++l) {
    const MultilevelRange& r = ranges.left[l];
    const std::int64_t slots = st.ring_slots[l];
    for (std::int64_t blk = r.lo; blk < r.hi; ++blk, ++m) {
      const float* val = st.ring_v[l].data<float>() + ((b * st.num_kv_heads + kh) * slots + blk % slots) * d;
      const float w = s[m] * inv;
      for (std::int64_t c = 0; c < d; ++c) out_row[c] += w * val[c];
    }
  }
}

void generation_core(const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, MultilevelState& st,
                     const MultilevelParams& p, std::int64_t batch, std::int64_t seq_len) {
  const std::int64_t hq = p.num_heads, hkv = p.num_kv_heads, d = p.head_dim, group = hq / hkv;
  const std::int64_t past = st.past;
#pragma omp parallel
  {
    MultilevelRanges ranges;
    std::vector<float> s;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t task = 0; task < batch * hkv; ++task) {
      const std::int64_t b = task / hkv, kh = task % hkv;
      for (std::int64_t t = 0; t < seq_len; ++t) {
        const std::int64_t row = b * seq_len + t;
        state_append(st, p.geometry, b, kh, past + t, k.data<float>() + (row * hkv + kh) * d,
                     v.data<float>() + (row * hkv + kh) * d);
        for (std::int64_t h = kh * group; h < (kh + 1) * group; ++h)
          state_attend(out.data<float>() + (row * hq + h) * d, q.data<float>() + (row * hq + h) * d, st,
                       p.geometry, b, kh, past + t, ranges, s);
      }
    }
  }
}

}  // namespace

std::int64_t MultilevelState::bytes() const {
  std::int64_t total = static_cast<std::int64_t>(partial_k.nbytes() + partial_v.nbytes());
  for (const auto* ring : {&ring_k, &ring_v})
    for (const Tensor& t : *ring) total += static_cast<std::int64_t>(t.nbytes());
  return total;
}

void MultilevelState::reset() {
  past = 0;
  partial_k.fill(0.0f);
  partial_v.fill(0.0f);
}

MultilevelState multilevel_new_state(const MultilevelGeometry& g, std::int64_t batch, std::int64_t num_kv_heads,
                                     std::int64_t head_dim, std::int64_t capacity) {
  multilevel_check_geometry(g);
  MF_CHECK(batch >= 1 && num_kv_heads >= 1 && head_dim >= 1 && capacity >= 1, kOp,
           " a generation state needs batch, num_kv_heads, head_dim and capacity >= 1 but got ", batch, ", ",
           num_kv_heads, ", ", head_dim, ", ", capacity);
  MultilevelState st;
  st.batch = batch, st.num_kv_heads = num_kv_heads, st.head_dim = head_dim, st.capacity = capacity;
  st.ring_slots = ring_slots(g, capacity);
  for (std::int64_t slots : st.ring_slots) {
    st.ring_k.push_back(Tensor::zeros({batch, num_kv_heads, slots, head_dim}));
    st.ring_v.push_back(Tensor::zeros({batch, num_kv_heads, slots, head_dim}));
  }
  st.partial_k = Tensor::zeros({batch, num_kv_heads, g.levels(), head_dim});
  st.partial_v = Tensor::zeros({batch, num_kv_heads, g.levels(), head_dim});
  return st;
}

void multilevel_forward(const Tensor& y, MultilevelSaved* saved, const Tensor& x, std::int64_t batch,
                        std::int64_t seq_len, bool causal, MultilevelState* state, const MultilevelParams& p,
                        const Tensor& key_padding_mask) {
  check_params(p, x, batch, seq_len);
  const std::int64_t n = batch * seq_len, d = p.head_dim, hq = p.num_heads, hkv = p.num_kv_heads;
  const std::int64_t past = state ? state->past : 0;
  if (state) {
    MF_CHECK(causal, kOp, " generation is causal; a bidirectional call cannot continue a generation state");
    MF_CHECK(!key_padding_mask.defined(), kOp, " a key padding mask is not supported with a generation state");
    MF_CHECK(state->batch == batch && state->num_kv_heads == hkv && state->head_dim == d, kOp,
             " the generation state was made for batch ", state->batch, ", ", state->num_kv_heads,
             " KV heads of dim ", state->head_dim, " but the call has batch ", batch, ", ", hkv, " of dim ", d);
    const bool unbounded = p.geometry.level_windows.back() == 0;
    MF_CHECK(!unbounded || past + seq_len <= state->capacity, kOp, " generation capacity exceeded: ", past,
             " + ", seq_len, " positions > capacity ", state->capacity,
             " (the unbounded coarsest level keeps every block)");
  }
  Tensor ql = linear_forward(x, p.q->value, bias_of(p.q_bias));  // [N, Hq*D]
  Tensor kl = linear_forward(x, p.k->value, bias_of(p.k_bias));  // [N, Hkv*D]
  Tensor vl = linear_forward(x, p.v->value, bias_of(p.v_bias));  // [N, Hkv*D]
  if (p.rope) {
    rope_forward_inplace(ql.reshape({batch, seq_len, hq * d}), *p.rope, packed_rope_args(hq, past));
    rope_forward_inplace(kl.reshape({batch, seq_len, hkv * d}), *p.rope, packed_rope_args(hkv, past));
  }
  MultilevelSaved local;
  MultilevelSaved& s = saved && !state ? *saved : local;
  s.q = ql.reshape({n, hq, d});
  s.k = kl.reshape({n, hkv, d});
  s.v = vl.reshape({n, hkv, d});
  s.out = Tensor::empty({n, hq, d});
  if (state) {
    generation_core(s.out, s.q, s.k, s.v, *state, p, batch, seq_len);
    state->past += seq_len;
    if (saved) *saved = MultilevelSaved{};
  } else {
    s.lse = Tensor::empty({n, hq});
    multilevel_core_forward(s.out, s.lse, s.q, s.k, s.v, p.geometry, problem_of(p, batch, seq_len, causal, key_padding_mask));
  }
  linear_forward(y, s.out.reshape({n, hq * d}), p.o->value, bias_of(p.o_bias));
}

void multilevel_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MultilevelSaved& s,
                         std::int64_t batch, std::int64_t seq_len, bool causal, const MultilevelParams& p,
                         const Tensor& key_padding_mask) {
  check_params(p, x, batch, seq_len);
  MF_CHECK(s.out.defined() && s.lse.defined(), kOp,
           " backward called without the forward's saved activations (generation calls keep none)");
  const std::int64_t n = batch * seq_len, d = p.head_dim, hq = p.num_heads, hkv = p.num_kv_heads;
  Tensor dmerged = Tensor::empty({n, hq * d});
  linear_backward(dmerged, p.o->grad, bias_grad_of(p.o_bias), dy, s.out.reshape({n, hq * d}), p.o->value);
  Tensor dq = Tensor::empty({n, hq, d}), dk = Tensor::empty({n, hkv, d}), dv = Tensor::empty({n, hkv, d});
  multilevel_core_backward(dq, dk, dv, dmerged.reshape({n, hq, d}), s.q, s.k, s.v, s.out, s.lse, p.geometry,
                           problem_of(p, batch, seq_len, causal, key_padding_mask));
  Tensor dql = dq.reshape({n, hq * d}), dkl = dk.reshape({n, hkv * d}), dvl = dv.reshape({n, hkv * d});
  if (p.rope) {  // RoPE^T: rotation by the negative angles
    rope_backward_inplace(dql.reshape({batch, seq_len, hq * d}), *p.rope, packed_rope_args(hq, 0));
    rope_backward_inplace(dkl.reshape({batch, seq_len, hkv * d}), *p.rope, packed_rope_args(hkv, 0));
  }
  linear_backward(dx, p.q->grad, bias_grad_of(p.q_bias), dql, x, p.q->value);
  linear_backward(dx, p.k->grad, bias_grad_of(p.k_bias), dkl, x, p.k->value, /*accumulate_din=*/true);
  linear_backward(dx, p.v->grad, bias_grad_of(p.v_bias), dvl, x, p.v->value, /*accumulate_din=*/true);
}

}  // namespace mf
