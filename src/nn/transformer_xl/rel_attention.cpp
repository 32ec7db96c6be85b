// Transformer-XL relative attention: the layer (projections through the GEMM
// wrapper, the sinusoid table, o_net) and the tiled attention core, forward
// and backward. The math and the rel-shift equivalence are in rel_attention.h.
#include "nn/transformer_xl/rel_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "nn/linear.h"

namespace mf {

namespace {

constexpr const char* kOp = "[transformer_xl]";
// Tile sizes of the core, forward and backward (query rows x keys per tile):
// 32 x 64 keeps a tile's scores (8 KiB), the transposed key tile and the
// position band in L1 for D <= 64. A first choice, not yet tuned by
// `modformer bench mixers`.
constexpr std::int64_t kRelQueryTile = 32, kRelKeyTile = 64;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline float dot(const float* a, const float* b, std::int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (std::int64_t d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

inline void axpy(float* y, float a, const float* x, std::int64_t n) {
#pragma omp simd
  for (std::int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

// cat(memory[b], x rows of batch b) for every b: [B*K, C]; x itself when M = 0.
Tensor concat_memory(const Tensor& x, const Tensor& memory, std::int64_t batch, std::int64_t seq_len) {
  const std::int64_t m = memory.defined() ? memory.size(1) : 0;
  if (m == 0) return x;
  const std::int64_t c = x.size(1), k = m + seq_len;
  Tensor h = Tensor::empty({batch * k, c});
  const std::size_t row = static_cast<std::size_t>(c) * sizeof(float);
  for (std::int64_t b = 0; b < batch; ++b) {
    std::memcpy(h.data<float>() + b * k * c, memory.data<float>() + b * m * c, row * static_cast<std::size_t>(m));
    std::memcpy(h.data<float>() + (b * k + m) * c, x.data<float>() + b * seq_len * c,
                row * static_cast<std::size_t>(seq_len));
  }
  return h;
}

// Scratch of one thread: a key or value tile transposed [D, kRelKeyTile] and
// the band of position rows a tile needs, reversed and transposed
// [D, kRelQueryTile + kRelKeyTile].
struct TileScratch {
  std::vector<float> keys_t, values_t, band_t;
  explicit TileScratch(std::int64_t head_dim)
      : keys_t(static_cast<std::size_t>(head_dim * kRelKeyTile)), values_t(keys_t.size()),
        band_t(static_cast<std::size_t>(head_dim * (kRelQueryTile + kRelKeyTile))) {}
};

constexpr std::int64_t kBandWidth = kRelQueryTile + kRelKeyTile;

// dst[d * kRelKeyTile + t] = rows[t * row_stride + d] for t < cols, d < D.
void transpose_tile(float* dst, const float* rows, std::int64_t row_stride, std::int64_t cols, std::int64_t D) {
  for (std::int64_t t = 0; t < cols; ++t)
    for (std::int64_t d = 0; d < D; ++d) dst[d * kRelKeyTile + t] = rows[t * row_stride + d];
}

// The scores of query rows i0 .. i0 + rows - 1 against keys j0 .. j1 - 1 of
// one head: s[r * kRelKeyTile + t] = scale ((q + u)_r . k_{j0+t} + (q + v)_r .
// P_{M+i0+r-j0-t}) for visible keys, -inf for later ones. The position rows
// of the tile are the band of distances dhi = M + i0 + rows - 1 - j0 down to
// dhi - (rows + cols - 2), stored reversed (band column b = distance dhi - b,
// zero where the distance is negative), so row r reads the contiguous columns
// rows - 1 - r + t: both terms are then loops over t (keys) without
// horizontal sums. The keys' transpose is left in scratch.keys_t.
void tile_scores(float* s, TileScratch& scratch, const float* qu, const float* qv, std::int64_t rows,
                 std::int64_t i0, std::int64_t j0, std::int64_t j1, const RelAttentionCore& c, const float* kv,
                 std::int64_t h, float scale) {
  const std::int64_t D = c.head_dim, HD = c.heads * D, KD = c.kv_heads * D, M = c.mem_len, cols = j1 - j0;
  const std::int64_t g = h / (c.heads / c.kv_heads);  // the key/value head of query head h
  transpose_tile(scratch.keys_t.data(), kv + j0 * 2 * KD + g * D, 2 * KD, cols, D);
  const std::int64_t dhi = M + i0 + rows - 1 - j0, width = rows + cols - 1;
  for (std::int64_t b = 0; b < width; ++b) {
    const std::int64_t distance = dhi - b;
    for (std::int64_t d = 0; d < D; ++d)
      scratch.band_t[d * kBandWidth + b] = distance >= 0 ? c.p[distance * HD + h * D + d] : 0.0f;
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    float* srow = s + r * kRelKeyTile;
    std::fill_n(srow, cols, 0.0f);
    for (std::int64_t d = 0; d < D; ++d) {
      axpy(srow, qu[r * D + d], scratch.keys_t.data() + d * kRelKeyTile, cols);
      axpy(srow, qv[r * D + d], scratch.band_t.data() + d * kBandWidth + (rows - 1 - r), cols);
    }
    const std::int64_t visible = std::min(cols, M + i0 + r - j0 + 1);  // keys j <= M + i
    for (std::int64_t t = 0; t < cols; ++t) srow[t] = t < visible ? scale * srow[t] : kNegInf;
  }
}

// (q + u) and (q + v) of query rows i0 .. i0 + rows - 1 of head h.
void biased_queries(float* qu, float* qv, const RelAttentionCore& c, std::int64_t b, std::int64_t h, std::int64_t i0,
                    std::int64_t rows) {
  const std::int64_t D = c.head_dim, HD = c.heads * D;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* q = c.q + (b * c.seq_len + i0 + r) * HD + h * D;
    for (std::int64_t d = 0; d < D; ++d)
      qu[r * D + d] = q[d] + c.u[h * D + d], qv[r * D + d] = q[d] + c.vb[h * D + d];
  }
}

struct CoreGrads {
  float* dq;   // [B*L, H*D] written
  float* dkv;  // [B*K, 2*Hkv*D] written
  float* dp;   // [K, H*D] written
  float* du;   // [H, D] +=
  float* dvb;  // [H, D] +=
};

// The backward of rel_attention_core_forward (flash style: the probabilities
// recomputed tile by tile from lse, D_i = dO_i . O_i):
//   p_ij = exp(s_ij - lse_i), ds_ij = p_ij (dO_i . v_j - D_i)
//   dv_j = sum_i p_ij dO_i
//   dq_i = scale sum_j ds_ij (k_j + P_{M+i-j}),  du = scale sum_ij ds_ij k_j,  dv_bias = scale sum_ij ds_ij P_{M+i-j}
//   dk_j = scale sum_i ds_ij (q_i + u),  dP_d = scale sum_{i-j = d-M} ds_ij (q_i + v)
// OpenMP over (batch, head): each writes its own columns of dq and dkv and
// its own partial dP, du, dv_bias, summed over the batch in order afterwards.
void rel_attention_core_backward(const RelAttentionCore& c, const float* attn, const float* lse, const float* dattn,
                                 const CoreGrads& g) {
  const std::int64_t B = c.batch, L = c.seq_len, M = c.mem_len, H = c.heads, D = c.head_dim, HD = H * D, K = M + L;
  const std::int64_t Hkv = c.kv_heads, KD = Hkv * D, group = H / Hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<float> dp_part(static_cast<std::size_t>(B * H * K * D), 0.0f);
  std::vector<float> du_part(static_cast<std::size_t>(B * H * D), 0.0f), dvb_part(du_part.size(), 0.0f);
#pragma omp parallel
  {
    TileScratch scratch(D);
    std::vector<float> qu(static_cast<std::size_t>(kRelQueryTile * D)), qv(qu.size()), gk(qu.size()), gp(qu.size());
    std::vector<float> score(static_cast<std::size_t>(kRelQueryTile * kRelKeyTile)), dpv(score.size());
    float delta[kRelQueryTile];
#pragma omp for schedule(dynamic)
    for (std::int64_t bkv = 0; bkv < B * Hkv; ++bkv) {
      // One key/value head and the `group` query heads that read it, in order.
      const std::int64_t b = bkv / Hkv, kvh = bkv % Hkv;
      const float* kv = c.kv + b * c.kv_batch_stride;
      float* dkv = g.dkv + b * K * 2 * KD;
      for (std::int64_t j = 0; j < K; ++j) {
        std::fill_n(dkv + j * 2 * KD + kvh * D, D, 0.0f);
        std::fill_n(dkv + j * 2 * KD + KD + kvh * D, D, 0.0f);
      }
      for (std::int64_t h = kvh * group, bh = b * H + h; h < (kvh + 1) * group; ++h, ++bh) {
        float* dp = dp_part.data() + bh * K * D;
        for (std::int64_t i0 = 0; i0 < L; i0 += kRelQueryTile) {
          const std::int64_t rows = std::min(kRelQueryTile, L - i0);
          biased_queries(qu.data(), qv.data(), c, b, h, i0, rows);
          for (std::int64_t r = 0; r < rows; ++r) {
            const std::int64_t row = b * L + i0 + r;
            delta[r] = dot(dattn + row * HD + h * D, attn + row * HD + h * D, D);
          }
          std::fill(gk.begin(), gk.end(), 0.0f);
          std::fill(gp.begin(), gp.end(), 0.0f);
          const std::int64_t key_end = M + i0 + rows;
          for (std::int64_t j0 = 0; j0 < key_end; j0 += kRelKeyTile) {
            const std::int64_t j1 = std::min(key_end, j0 + kRelKeyTile), cols = j1 - j0;
            tile_scores(score.data(), scratch, qu.data(), qv.data(), rows, i0, j0, j1, c, kv, h, scale);
            // dO_r . v_j for the tile, as the scores: a loop over keys per channel.
            transpose_tile(scratch.values_t.data(), kv + j0 * 2 * KD + KD + kvh * D, 2 * KD, cols, D);
            for (std::int64_t r = 0; r < rows; ++r) {
              float* drow = dpv.data() + r * kRelKeyTile;
              std::fill_n(drow, cols, 0.0f);
              const float* dout = dattn + (b * L + i0 + r) * HD + h * D;
              for (std::int64_t d = 0; d < D; ++d) axpy(drow, dout[d], scratch.values_t.data() + d * kRelKeyTile, cols);
            }
            for (std::int64_t r = 0; r < rows; ++r) {
              const std::int64_t i = i0 + r, visible = std::min(cols, M + i - j0 + 1);
              const float* dout = dattn + (b * L + i) * HD + h * D;
              const float row_lse = lse[bh * L + i];
              for (std::int64_t t = 0; t < visible; ++t) {
                const std::int64_t j = j0 + t, distance = M + i - j;
                const float prob = std::exp(score[r * kRelKeyTile + t] - row_lse);
                const float ds = prob * (dpv[r * kRelKeyTile + t] - delta[r]);
                const float* key = kv + j * 2 * KD + kvh * D;
                const float* pos = c.p + distance * HD + h * D;
                axpy(dkv + j * 2 * KD + KD + kvh * D, prob, dout, D);
                axpy(gk.data() + r * D, ds, key, D);
                axpy(gp.data() + r * D, ds, pos, D);
                axpy(dkv + j * 2 * KD + kvh * D, ds * scale, qu.data() + r * D, D);
                axpy(dp + distance * D, ds * scale, qv.data() + r * D, D);
              }
            }
          }
          float* du = du_part.data() + bh * D;
          float* dvb = dvb_part.data() + bh * D;
          for (std::int64_t r = 0; r < rows; ++r) {
            float* dq = g.dq + (b * L + i0 + r) * HD + h * D;
            for (std::int64_t d = 0; d < D; ++d) {
              dq[d] = scale * (gk[r * D + d] + gp[r * D + d]);
              du[d] += scale * gk[r * D + d];
              dvb[d] += scale * gp[r * D + d];
            }
          }
        }
      }
    }
#pragma omp for schedule(static)
    for (std::int64_t d = 0; d < K; ++d)
      for (std::int64_t h = 0; h < H; ++h) {
        float* out = g.dp + d * HD + h * D;
        std::fill_n(out, D, 0.0f);
        for (std::int64_t b = 0; b < B; ++b) axpy(out, 1.0f, dp_part.data() + ((b * H + h) * K + d) * D, D);
      }
  }
  for (std::int64_t b = 0; b < B; ++b) {
    axpy(g.du, 1.0f, du_part.data() + b * HD, HD);
    axpy(g.dvb, 1.0f, dvb_part.data() + b * HD, HD);
  }
}

void check_param(const Parameter* p, const char* role, const Shape& shape) {
  MF_CHECK(p != nullptr, kOp, " parameter ", role, " is missing");
  MF_CHECK(p->value.defined() && p->value.dtype() == DType::F32 && p->value.is_contiguous() &&
               p->value.shape() == shape,
           kOp, " parameter ", role, " ('", p->name, "') must be a contiguous float32 tensor of shape ",
           shape_str(shape), " but has shape ", p->value.defined() ? shape_str(p->value.shape()) : "(undefined)");
}

}  // namespace

std::vector<const Tensor*> RelAttentionSaved::tensors() const {
  std::vector<const Tensor*> out;
  for (const Tensor* t : {&memory, &q, &kv, &pos, &p, &attn, &lse})
    if (t->defined()) out.push_back(t);
  return out;
}

Tensor rel_position_table(std::int64_t begin, std::int64_t end, std::int64_t hidden, std::int64_t clamp_len) {
  MF_CHECK(hidden >= 2 && hidden % 2 == 0, kOp, " hidden_size (", hidden,
           ") must be even: the relative sinusoids are sin and cos halves");
  Tensor r = Tensor::empty({end - begin, hidden});
  const std::int64_t half = hidden / 2;
  std::vector<double> inv_freq(static_cast<std::size_t>(half));
  for (std::int64_t k = 0; k < half; ++k)
    inv_freq[k] = 1.0 / std::pow(10000.0, static_cast<double>(2 * k) / static_cast<double>(hidden));
  for (std::int64_t d = begin; d < end; ++d) {
    const double t = static_cast<double>(clamp_len > 0 ? std::min(d, clamp_len) : d);
    float* row = r.data<float>() + (d - begin) * hidden;
    for (std::int64_t k = 0; k < half; ++k) {
      const double angle = t * inv_freq[k];
      row[k] = static_cast<float>(std::sin(angle));
      row[half + k] = static_cast<float>(std::cos(angle));
    }
  }
  return r;
}

void rel_attention_check(const Tensor& x, const Tensor& memory, std::int64_t batch, std::int64_t seq_len,
                         const RelAttentionParams& p) {
  MF_CHECK(p.num_heads >= 1 && p.head_dim >= 1, kOp, " num_heads and head_dim must be >= 1 but are ", p.num_heads,
           " and ", p.head_dim);
  MF_CHECK(p.clamp_len >= 0, kOp, " option 'clamp_len' must be >= 0 (0: no clamp) but is ", p.clamp_len);
  MF_CHECK(x.defined() && x.dim() == 2 && x.dtype() == DType::F32 && x.is_contiguous(), kOp,
           " input must be a contiguous float32 [B*L, C] tensor but has shape ",
           x.defined() ? shape_str(x.shape()) : "(undefined)");
  MF_CHECK(batch >= 1 && seq_len >= 1 && x.size(0) == batch * seq_len, kOp, " input has ", x.size(0),
           " rows but batch ", batch, " x seq_len ", seq_len, " were given");
  MF_CHECK(p.num_kv_heads >= 1 && p.num_heads % p.num_kv_heads == 0, kOp, " num_heads (", p.num_heads,
           ") must be a positive multiple of num_kv_heads (", p.num_kv_heads, ")");
  const std::int64_t c = x.size(1), hd = p.num_heads * p.head_dim, kd = p.num_kv_heads * p.head_dim;
  MF_CHECK(c % 2 == 0, kOp, " hidden_size (", c, ") must be even: the relative sinusoids are sin and cos halves");
  check_param(p.qkv, "qkv_net", {hd + 2 * kd, c});
  check_param(p.r, "r_net", {hd, c});
  check_param(p.u, "r_w_bias", {p.num_heads, p.head_dim});
  check_param(p.v, "r_r_bias", {p.num_heads, p.head_dim});
  check_param(p.o, "o_net", {c, hd});
  if (memory.defined())
    MF_CHECK(memory.dim() == 3 && memory.dtype() == DType::F32 && memory.is_contiguous() &&
                 memory.size(0) == batch && memory.size(2) == c,
             kOp, " the memory must be a contiguous float32 [B, M, C] = [", batch, ", M, ", c,
             "] tensor but has shape ", shape_str(memory.shape()));
}

void rel_attention_core_forward(const RelAttentionCore& c, float* attn, float* lse) {
  const std::int64_t B = c.batch, L = c.seq_len, M = c.mem_len, H = c.heads, D = c.head_dim, HD = H * D;
  const std::int64_t KD = c.kv_heads * D;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const std::int64_t query_tiles = (L + kRelQueryTile - 1) / kRelQueryTile;
#pragma omp parallel
  {
    TileScratch scratch(D);
    std::vector<float> qu(static_cast<std::size_t>(kRelQueryTile * D)), qv(qu.size()), acc(qu.size());
    std::vector<float> score(static_cast<std::size_t>(kRelQueryTile * kRelKeyTile));
    float row_max[kRelQueryTile], row_sum[kRelQueryTile];
#pragma omp for schedule(dynamic)
    for (std::int64_t unit = 0; unit < B * H * query_tiles; ++unit) {
      const std::int64_t b = unit / (H * query_tiles), h = unit / query_tiles % H, tile = unit % query_tiles;
      const std::int64_t value_offset = KD + h / (H / c.kv_heads) * D;  // the value columns of h's key/value head
      const std::int64_t i0 = tile * kRelQueryTile, rows = std::min(kRelQueryTile, L - i0);
      const float* kv = c.kv + b * c.kv_batch_stride;
      biased_queries(qu.data(), qv.data(), c, b, h, i0, rows);
      std::fill_n(row_max, rows, kNegInf);
      std::fill_n(row_sum, rows, 0.0f);
      std::fill(acc.begin(), acc.end(), 0.0f);
      const std::int64_t key_end = M + i0 + rows;  // the last row sees keys 0 .. M + i0 + rows - 1
      for (std::int64_t j0 = 0; j0 < key_end; j0 += kRelKeyTile) {
        const std::int64_t j1 = std::min(key_end, j0 + kRelKeyTile);
        tile_scores(score.data(), scratch, qu.data(), qv.data(), rows, i0, j0, j1, c, kv, h, scale);
        for (std::int64_t r = 0; r < rows; ++r) {
          const std::int64_t visible = std::min(j1 - j0, M + i0 + r - j0 + 1);
          if (visible <= 0) continue;  // the row sees no key of this tile
          const float* s = score.data() + r * kRelKeyTile;
          float tile_max = kNegInf;
          for (std::int64_t t = 0; t < visible; ++t) tile_max = std::max(tile_max, s[t]);
          // Online softmax: rescale what the earlier tiles summed to the new max.
          const float new_max = std::max(row_max[r], tile_max);
          const float rescale = row_max[r] == kNegInf ? 0.0f : std::exp(row_max[r] - new_max);
          float* a = acc.data() + r * D;
          float sum = row_sum[r] * rescale;
          for (std::int64_t d = 0; d < D; ++d) a[d] *= rescale;
          for (std::int64_t t = 0; t < visible; ++t) {
            const float prob = std::exp(s[t] - new_max);
            sum += prob;
            axpy(a, prob, kv + (j0 + t) * 2 * KD + value_offset, D);
          }
          row_sum[r] = sum;
          row_max[r] = new_max;
        }
      }
      for (std::int64_t r = 0; r < rows; ++r) {
        const float inv = 1.0f / row_sum[r];
        float* out = attn + (b * L + i0 + r) * HD + h * D;
        for (std::int64_t d = 0; d < D; ++d) out[d] = acc[r * D + d] * inv;
        lse[(b * H + h) * L + i0 + r] = row_max[r] + std::log(row_sum[r]);
      }
    }
  }
}

void rel_attention_forward(const Tensor& y, RelAttentionSaved* saved, const Tensor& x, const Tensor& memory,
                           std::int64_t batch, std::int64_t seq_len, const RelAttentionParams& p) {
  rel_attention_check(x, memory, batch, seq_len, p);
  MF_CHECK(y.defined() && y.shape() == x.shape() && y.is_contiguous(), kOp, " output must be a contiguous ",
           shape_str(x.shape()), " tensor");
  const std::int64_t c = x.size(1), hd = p.num_heads * p.head_dim, kd = p.num_kv_heads * p.head_dim;
  const std::int64_t n = batch * seq_len, m = memory.defined() ? memory.size(1) : 0, k = m + seq_len;
  const Tensor h = concat_memory(x, memory, batch, seq_len);
  Tensor q = Tensor::empty({n, hd}), kv = Tensor::empty({batch * k, 2 * kd});
  linear_forward(q, x, p.qkv->value.slice(0, 0, hd), Tensor());
  linear_forward(kv, h, p.qkv->value.slice(0, hd, hd + 2 * kd), Tensor());
  const Tensor pos = rel_position_table(0, k, c, p.clamp_len);
  Tensor pr = Tensor::empty({k, hd});
  linear_forward(pr, pos, p.r->value, Tensor());
  Tensor attn = Tensor::empty({n, hd}), lse = Tensor::empty({batch, p.num_heads, seq_len});
  RelAttentionCore core{q.data<float>(), kv.data<float>(), k * 2 * kd, pr.data<float>(), p.u->value.data<float>(),
                        p.v->value.data<float>(), batch, seq_len, m, p.num_heads, p.num_kv_heads, p.head_dim};
  rel_attention_core_forward(core, attn.data<float>(), lse.data<float>());
  linear_forward(y, attn, p.o->value, Tensor());
  if (!saved) return;
  *saved = RelAttentionSaved{};
  if (m > 0) saved->memory = memory.clone();
  saved->q = q;
  saved->kv = kv;
  saved->pos = pos;
  saved->p = pr;
  saved->attn = attn;
  saved->lse = lse;
  saved->mem_len = m;
}

void rel_attention_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const RelAttentionSaved& saved,
                            std::int64_t batch, std::int64_t seq_len, const RelAttentionParams& p) {
  MF_CHECK(saved.attn.defined(), kOp, " backward called without the saved activations (a training forward)");
  rel_attention_check(x, saved.memory, batch, seq_len, p);
  MF_CHECK(dy.defined() && dy.shape() == x.shape() && dx.defined() && dx.shape() == x.shape(), kOp,
           " dy and dx must have the input's shape ", shape_str(x.shape()));
  const std::int64_t c = x.size(1), hd = p.num_heads * p.head_dim, kd = p.num_kv_heads * p.head_dim;
  const std::int64_t n = batch * seq_len, m = saved.mem_len, k = m + seq_len;
  MF_CHECK(saved.attn.size(0) == n && saved.p.size(0) == k, kOp, " the saved activations are for another call");
  Tensor dattn = Tensor::empty({n, hd});
  linear_backward(dattn, p.o->grad, Tensor(), dy.contiguous(), saved.attn, p.o->value);
  Tensor dq = Tensor::empty({n, hd}), dkv = Tensor::empty({batch * k, 2 * kd}), dp = Tensor::empty({k, hd});
  RelAttentionCore core{saved.q.data<float>(), saved.kv.data<float>(), k * 2 * kd, saved.p.data<float>(),
                        p.u->value.data<float>(), p.v->value.data<float>(), batch, seq_len, m, p.num_heads,
                        p.num_kv_heads, p.head_dim};
  rel_attention_core_backward(core, saved.attn.data<float>(), saved.lse.data<float>(), dattn.data<float>(),
                              {dq.data<float>(), dkv.data<float>(), dp.data<float>(), p.u->grad.data<float>(),
                               p.v->grad.data<float>()});
  linear_backward(Tensor(), p.r->grad, Tensor(), dp, saved.pos, p.r->value);
  linear_backward(dx, p.qkv->grad.slice(0, 0, hd), Tensor(), dq, x, p.qkv->value.slice(0, 0, hd));
  const Tensor h = concat_memory(x, saved.memory, batch, seq_len);
  Tensor dh = Tensor::empty({batch * k, c});
  linear_backward(dh, p.qkv->grad.slice(0, hd, hd + 2 * kd), Tensor(), dkv, h,
                  p.qkv->value.slice(0, hd, hd + 2 * kd));
  // Only the segment's own rows pass their gradient on: the memory is a constant.
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t i = 0; i < seq_len; ++i)
      axpy(dx.data<float>() + (b * seq_len + i) * c, 1.0f, dh.data<float>() + (b * k + m + i) * c, c);
}

}  // namespace mf
