// Reformer LSH attention, fast path (math in lsh_attention.h). Stages: key
// normalization (rows in parallel); hashing, one GEMM [L, D] x [D, R*nb/2]
// per (sequence, head), and a stable counting sort per round; then per
// (sequence, head, round) in parallel, per chunk: gather the c queries and the
// 2c window keys/values, scores by one GEMM [c, 2c], the mask rule, softmax,
// and the output by one GEMM [c, D]; rounds combined by their lse. The
// backward recomputes the scores per chunk (P = exp(S - combined lse)) and
// writes per-round gradient buffers (no races), summed at the end.
#include "nn/reformer/lsh_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/gemm.h"
#include "kernels/softmax.h"
#include "kernels/vec_exp.h"
#include "nn/linear.h"

namespace mf {

namespace {

constexpr const char* kOp = "[lsh_attention]";
constexpr float kNormEps = 1e-6f;  // HF _len_norm epsilon


// The sizes every stage needs. A chunk longer than the sequence is cut to L:
// one chunk per round either way, and the pad slots it drops have weight 0
// (same output, no [c, 2c] scratch for a huge chunk_length).
struct Geometry {
  std::int64_t batch, len, heads, dim, rounds, buckets, half, chunk, padded, chunks_per_round, chunks;
  Geometry(const LshOptions& o, std::int64_t b, std::int64_t l, std::int64_t h, std::int64_t d)
      : batch(b), len(l), heads(h), dim(d), rounds(o.n_hashes), buckets(o.n_buckets), half(o.n_buckets / 2),
        chunk(std::min(o.chunk_length, l)), padded((l + chunk - 1) / chunk * chunk), chunks_per_round(padded / chunk),
        chunks(o.n_hashes * chunks_per_round) {}
  std::int64_t row(std::int64_t b, std::int64_t i, std::int64_t h) const { return ((b * len + i) * heads + h) * dim; }
};

// Below this many multiply-adds in all a stage runs on one thread: a parallel
// region costs more than the work (tests, decode steps of short sequences).
constexpr std::int64_t kParallelMinWork = std::int64_t{1} << 18;

// Runs fn(task) for task in [0, count), in parallel when the stage's total
// work (multiply-adds) is worth it; exceptions are kept.
template <typename Fn>
void parallel_tasks(std::int64_t count, std::int64_t work, const Fn& fn) {
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1) if (count > 1 && work >= kParallelMinWork && !omp_in_parallel())
  for (std::int64_t t = 0; t < count; ++t) {
    try {
      fn(t);
    } catch (...) {
#pragma omp critical(mf_lsh_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// keys = qk * rsqrt(mean(qk^2) + eps) / sqrt(D), row by row.
void normalize_rows(float* keys, float* inv_rms, const float* qk, std::int64_t rows, std::int64_t d) {
  const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d));
#pragma omp parallel for schedule(static) if (rows * d >= (1 << 15) && !omp_in_parallel())
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* x = qk + r * d;
    float ms = 0;
    for (std::int64_t e = 0; e < d; ++e) ms += x[e] * x[e];
    const float s = 1.0f / std::sqrt(ms / static_cast<float>(d) + kNormEps);
    inv_rms[r] = s;
    for (std::int64_t e = 0; e < d; ++e) keys[r * d + e] = x[e] * s * inv_sqrt_d;
  }
}

// Buckets of `count` rows (row i at qk + i * ld) for every round:
// bucket[r * out_ld + i] = argmax([rot ; -rot]) (first maximum), rot = qk_i R_h[:, r, :].
// rot_scratch holds count * R * nb/2 floats.
void hash_rows(std::int32_t* bucket, std::int64_t out_ld, const float* qk, std::int64_t ld, std::int64_t count,
               const float* rot_h, const Geometry& g, float* rot_scratch) {
  const std::int64_t width = g.rounds * g.half;
  gemm(Trans::N, Trans::N, count, width, g.dim, 1.0f, qk, ld, rot_h, width, 0.0f, rot_scratch, width);
  for (std::int64_t i = 0; i < count; ++i)
    for (std::int64_t r = 0; r < g.rounds; ++r) {
      const float* rot = rot_scratch + i * width + r * g.half;
      float best = -std::numeric_limits<float>::infinity();
      std::int32_t arg = 0;
      for (std::int64_t j = 0; j < g.buckets; ++j) {
        const float value = j < g.half ? rot[j] : -rot[j - g.half];
        if (value > best) best = value, arg = static_cast<std::int32_t>(j);
      }
      bucket[r * out_ld + i] = arg;
    }
}

bool is_valid(const std::int32_t* mask, std::int64_t len, std::int64_t j) {
  return j >= 0 && j < len && (mask == nullptr || mask[j] != 0);
}

// sorted_pos [R, Lp] of one (sequence, head): stable counting sort by bucket,
// pad rows and padding tokens in bucket n_buckets.
void hash_and_sort(std::int32_t* sorted_pos, const float* qk, const float* rot_h, const std::int32_t* mask,
                   const Geometry& g) {
  std::vector<std::int32_t> bucket(static_cast<std::size_t>(g.rounds * g.padded), static_cast<std::int32_t>(g.buckets));
  std::vector<float> rot(static_cast<std::size_t>(g.len * g.rounds * g.half));
  hash_rows(bucket.data(), g.padded, qk, g.heads * g.dim, g.len, rot_h, g, rot.data());
  std::vector<std::int64_t> start(static_cast<std::size_t>(g.buckets + 2));
  for (std::int64_t r = 0; r < g.rounds; ++r) {
    std::int32_t* b = bucket.data() + r * g.padded;
    for (std::int64_t i = 0; i < g.padded; ++i)
      if (!is_valid(mask, g.len, i)) b[i] = static_cast<std::int32_t>(g.buckets);
    std::fill(start.begin(), start.end(), 0);
    for (std::int64_t i = 0; i < g.padded; ++i) ++start[b[i] + 1];
    for (std::int64_t k = 1; k < g.buckets + 2; ++k) start[k] += start[k - 1];
    for (std::int64_t i = 0; i < g.padded; ++i) sorted_pos[r * g.padded + start[b[i]]++] = static_cast<std::int32_t>(i);
  }
}

// One chunk's gathered rows and scratch (per task, reused over its chunks).
struct ChunkWork {
  std::vector<float> q, k, v, s, o;            // [c, D], [2c, D], [2c, D], [c, 2c], [c, D]
  std::vector<std::int32_t> q_pos, k_pos;      // [c], [2c]
  explicit ChunkWork(const Geometry& g)
      : q(g.chunk * g.dim), k(2 * g.chunk * g.dim), v(2 * g.chunk * g.dim), s(2 * g.chunk * g.chunk),
        o(g.chunk * g.dim), q_pos(g.chunk), k_pos(2 * g.chunk) {}
};

// Positions of the queries of chunk `local` of round r and of its window
// (the previous chunk, circular over the concatenated rounds, then the chunk).
void chunk_positions(ChunkWork& w, const std::int32_t* sorted, std::int64_t r, std::int64_t local, const Geometry& g) {
  const std::int64_t global = r * g.chunks_per_round + local, prev = (global + g.chunks - 1) % g.chunks;
  for (std::int64_t a = 0; a < g.chunk; ++a) w.q_pos[a] = sorted[global * g.chunk + a];
  for (std::int64_t a = 0; a < g.chunk; ++a) {
    w.k_pos[a] = sorted[prev * g.chunk + a];
    w.k_pos[g.chunk + a] = w.q_pos[a];
  }
}

// rows [count, D] <- src rows at positions (zero for positions >= len).
void gather_rows(float* rows, const std::int32_t* pos, std::int64_t count, const float* src, std::int64_t b,
                 std::int64_t h, const Geometry& g) {
  for (std::int64_t a = 0; a < count; ++a) {
    float* dst = rows + a * g.dim;
    if (pos[a] < g.len)
      std::copy_n(src + g.row(b, pos[a], h), g.dim, dst);
    else
      std::fill_n(dst, g.dim, 0.0f);
  }
}

// S [c, 2c] = Q K^T, then the mask rule (constants replace the score).
void chunk_scores(ChunkWork& w, const std::int32_t* mask, bool causal, const Geometry& g) {
  const std::int64_t c = g.chunk, n = 2 * c;
  gemm(Trans::N, Trans::T, c, n, g.dim, 1.0f, w.q.data(), g.dim, w.k.data(), g.dim, 0.0f, w.s.data(), n);
  for (std::int64_t a = 0; a < c; ++a) {
    float* row = w.s.data() + a * n;
    for (std::int64_t j = 0; j < n; ++j) {
      const LshKeyRole role = lsh_key_role(w.q_pos[a], w.k_pos[j], is_valid(mask, g.len, w.k_pos[j]), causal);
      if (role == LshKeyRole::Self) row[j] = kLshSelfMaskValue;
      if (role == LshKeyRole::Masked) row[j] = kLshMaskValue;
    }
  }
}

void check_mask(const Tensor& mask, std::int64_t batch, std::int64_t seq_len) {
  if (mask.defined()) {
    MF_CHECK(mask.dtype() == DType::I32, kOp, " key_padding_mask must be int32");
    MF_CHECK(mask.is_contiguous() && mask.shape() == Shape({batch, seq_len}), kOp,
             " key_padding_mask must be a contiguous [B, L] = ", shape_str({batch, seq_len}),
             " tensor but has shape ", shape_str(mask.shape()));
  }
}

void check_kernel_args(const Tensor& qk, const Tensor& v, const Tensor& rotations, std::int64_t batch,
                       std::int64_t seq_len, const Tensor& mask, const LshOptions& o) {
  lsh_check_options(o);
  MF_CHECK(qk.defined() && qk.dim() == 3 && qk.dtype() == DType::F32 && qk.is_contiguous(), kOp,
           " qk must be a contiguous float32 [B*L, H, D] tensor but has shape ",
           qk.defined() ? shape_str(qk.shape()) : "(undefined)");
  MF_CHECK(batch >= 1 && seq_len >= 1 && qk.size(0) == batch * seq_len, kOp, " qk has ", qk.size(0),
           " rows but batch ", batch, " x seq_len ", seq_len, " were given");
  v.check_shape(qk.shape(), "lsh_attention", "v");
  MF_CHECK(v.is_contiguous(), kOp, " v must be contiguous");
  const Shape rot_shape{qk.size(1), qk.size(2), o.n_hashes, o.n_buckets / 2};
  MF_CHECK(rotations.defined() && rotations.shape() == rot_shape && rotations.is_contiguous() &&
               rotations.dtype() == DType::F32,
           kOp, " rotations must be a contiguous float32 tensor [H, D, n_hashes, n_buckets/2] = ",
           shape_str(rot_shape), " but have shape ", rotations.defined() ? shape_str(rotations.shape()) : "(undefined)");
  check_mask(mask, batch, seq_len);
}

const std::int32_t* mask_row(const Tensor& mask, std::int64_t b, std::int64_t len) {
  return mask.defined() ? mask.data<std::int32_t>() + b * len : nullptr;
}

// dqk [rows, D] += key-normalization backward of dkeys: with s = inv_rms,
// dx = s / sqrt(D) (g - x s^2 (g . x) / D).
void normalize_rows_backward(float* dqk, const float* dkeys, const float* qk, const float* inv_rms,
                             std::int64_t rows, std::int64_t d) {
  const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d)), inv_d = 1.0f / static_cast<float>(d);
#pragma omp parallel for schedule(static) if (rows * d >= (1 << 15) && !omp_in_parallel())
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* x = qk + r * d;
    const float* gk = dkeys + r * d;
    float gx = 0;
    for (std::int64_t e = 0; e < d; ++e) gx += gk[e] * x[e];
    const float s = inv_rms[r], coef = s * s * gx * inv_d;
    for (std::int64_t e = 0; e < d; ++e) dqk[r * d + e] += s * inv_sqrt_d * (gk[e] - x[e] * coef);
  }
}

}  // namespace

void lsh_check_options(const LshOptions& o) {
  MF_CHECK(o.n_hashes >= 1 && o.n_hashes <= 16, kOp, " option 'n_hashes' must be in [1, 16] but is ", o.n_hashes);
  MF_CHECK(o.n_buckets >= 2 && o.n_buckets % 2 == 0, kOp,
           " option 'n_buckets' must be even and >= 2 (angular LSH: argmax over [xR ; -xR]) but is ", o.n_buckets);
  MF_CHECK(o.chunk_length >= 1, kOp, " option 'chunk_length' must be >= 1 but is ", o.chunk_length);
}

std::vector<const Tensor*> LshKernelSaved::tensors() const {
  std::vector<const Tensor*> all;
  for (const Tensor* t : {&keys, &inv_rms, &sorted_pos, &out, &lse_max, &lse_log_sum})
    if (t->defined()) all.push_back(t);
  return all;
}

std::size_t LshKernelSaved::bytes() const {
  std::size_t total = 0;
  for (const Tensor* t : tensors()) total += t->nbytes();
  return total;
}

std::vector<const Tensor*> LshAttentionSaved::tensors() const {
  std::vector<const Tensor*> all = kernel.tensors();
  for (const Tensor* t : {&qk, &v})
    if (t->defined()) all.push_back(t);
  return all;
}

void lsh_attention_kernel_forward(const Tensor& out, LshKernelSaved& s, const Tensor& qk, const Tensor& v,
                                  const Tensor& rotations, std::int64_t batch, std::int64_t seq_len,
                                  const Tensor& mask, const LshOptions& o) {
  check_kernel_args(qk, v, rotations, batch, seq_len, mask, o);
  out.check_shape(qk.shape(), "lsh_attention", "out");
  const Geometry g(o, batch, seq_len, qk.size(1), qk.size(2));
  const std::int64_t n = batch * seq_len, d = g.dim, c = g.chunk;
  s = LshKernelSaved{};
  s.padded_len = g.padded;
  s.keys = Tensor::empty(qk.shape());
  s.inv_rms = Tensor::empty({n, g.heads});
  normalize_rows(s.keys.data<float>(), s.inv_rms.data<float>(), qk.data<float>(), n * g.heads, d);
  s.sorted_pos = Tensor::empty({batch, g.heads, g.rounds, g.padded}, DType::I32);
  std::int32_t* sorted = s.sorted_pos.data<std::int32_t>();
  const float* qkp = qk.data<float>();
  const float* rot = rotations.data<float>();
  parallel_tasks(batch * g.heads, n * g.heads * (d * g.rounds * g.half + g.rounds), [&](std::int64_t t) {
    const std::int64_t b = t / g.heads, h = t % g.heads;
    hash_and_sort(sorted + t * g.rounds * g.padded, qkp + g.row(b, 0, h), rot + h * d * g.rounds * g.half,
                  mask_row(mask, b, seq_len), g);
  });
  // Per round: output rows [R, N, H, D], each row's max score and sum of
  // exp(S - max) [R, B, H, L], by position.
  Tensor round_out = Tensor::empty({g.rounds, n, g.heads, d});
  Tensor round_max = Tensor::empty({g.rounds, batch, g.heads, seq_len});
  Tensor round_sum = Tensor::empty({g.rounds, batch, g.heads, seq_len});
  float* ro = round_out.data<float>();
  float* rmax = round_max.data<float>();
  float* rsum = round_sum.data<float>();
  const float* keys = s.keys.data<float>();
  const float* vp = v.data<float>();
  const std::int64_t chunk_work = batch * g.heads * g.rounds * g.padded * 2 * c * (2 * d + 1);
  parallel_tasks(batch * g.heads * g.rounds, chunk_work, [&](std::int64_t t) {
    const std::int64_t b = t / (g.heads * g.rounds), h = (t / g.rounds) % g.heads, r = t % g.rounds;
    const std::int32_t* m = mask_row(mask, b, seq_len);
    const std::int32_t* sorted_bh = sorted + (b * g.heads + h) * g.rounds * g.padded;
    ChunkWork w(g);
    std::vector<float> row_max(c);
    std::vector<std::int64_t> row_arg(c);
    for (std::int64_t local = 0; local < g.chunks_per_round; ++local) {
      chunk_positions(w, sorted_bh, r, local, g);
      gather_rows(w.q.data(), w.q_pos.data(), c, qkp, b, h, g);
      gather_rows(w.k.data(), w.k_pos.data(), 2 * c, keys, b, h, g);
      gather_rows(w.v.data(), w.k_pos.data(), 2 * c, vp, b, h, g);
      chunk_scores(w, m, o.causal, g);
      // Each row's max score and sum of exp(S - max) = 1 / P[argmax]. The lse
      // is kept as this pair: max + log(sum) in float would round a self-only
      // row's -1e5 + log(count) to 1/128 and bias the round weights.
      for (std::int64_t a = 0; a < c; ++a) {
        const float* row = w.s.data() + a * 2 * c;
        row_arg[a] = std::max_element(row, row + 2 * c) - row;
        row_max[a] = row[row_arg[a]];
      }
      softmax_forward(w.s.data(), w.s.data(), c, 2 * c);
      gemm(Trans::N, Trans::N, c, d, 2 * c, 1.0f, w.s.data(), 2 * c, w.v.data(), d, 0.0f, w.o.data(), d);
      for (std::int64_t a = 0; a < c; ++a) {
        const std::int64_t i = w.q_pos[a];
        if (i >= seq_len) continue;
        std::copy_n(w.o.data() + a * d, d, ro + r * n * g.heads * d + g.row(b, i, h));
        const std::int64_t at = ((r * batch + b) * g.heads + h) * seq_len + i;
        rmax[at] = row_max[a];
        rsum[at] = 1.0f / w.s[a * 2 * c + row_arg[a]];
      }
    }
  });
  // Rounds: out = sum_r w_r o_r, w_r = sum_r e^(max_r - M) / sum_q sum_q e^(max_q - M)
  // (= exp(lse_r - lse)), M = max_r max_r; saved lse = M + log(total).
  s.out = out;
  s.lse_max = Tensor::empty({batch, g.heads, seq_len});
  s.lse_log_sum = Tensor::empty({batch, g.heads, seq_len});
  float* op = out.data<float>();
  float* lm = s.lse_max.data<float>();
  float* ls = s.lse_log_sum.data<float>();
  const std::int64_t rows = batch * g.heads * seq_len;
#pragma omp parallel for schedule(static) if (rows * d * g.rounds >= (1 << 15))
  for (std::int64_t q = 0; q < rows; ++q) {
    const std::int64_t b = q / (g.heads * seq_len), h = (q / seq_len) % g.heads, i = q % seq_len;
    float m = -std::numeric_limits<float>::infinity();
    for (std::int64_t r = 0; r < g.rounds; ++r) m = std::max(m, rmax[r * rows + q]);
    float total = 0;
    for (std::int64_t r = 0; r < g.rounds; ++r) total += rsum[r * rows + q] * std::exp(rmax[r * rows + q] - m);
    lm[q] = m;
    ls[q] = std::log(total);
    float* dst = op + g.row(b, i, h);
    std::fill_n(dst, d, 0.0f);
    for (std::int64_t r = 0; r < g.rounds; ++r) {
      const float wgt = rsum[r * rows + q] * std::exp(rmax[r * rows + q] - m) / total;
      const float* src = ro + r * n * g.heads * d + g.row(b, i, h);
      for (std::int64_t e = 0; e < d; ++e) dst[e] += wgt * src[e];
    }
  }
}

void lsh_attention_kernel_backward(const Tensor& dqk, const Tensor& dv, const Tensor& dout, const Tensor& qk,
                                   const Tensor& v, const LshKernelSaved& s, std::int64_t batch,
                                   std::int64_t seq_len, const Tensor& mask, const LshOptions& o) {
  lsh_check_options(o);
  MF_CHECK(qk.defined() && qk.dim() == 3 && qk.is_contiguous() && qk.dtype() == DType::F32 && batch >= 1 &&
               seq_len >= 1 && qk.size(0) == batch * seq_len,
           kOp, " backward: qk must be a contiguous float32 [B*L, H, D] tensor of B*L = ", batch * seq_len, " rows");
  v.check_shape(qk.shape(), "lsh_attention", "v");
  check_mask(mask, batch, seq_len);
  const Geometry g(o, batch, seq_len, qk.size(1), qk.size(2));
  MF_CHECK(s.out.defined() && s.out.shape() == qk.shape() && s.padded_len == g.padded && s.sorted_pos.defined() &&
               s.sorted_pos.shape() == Shape({batch, g.heads, g.rounds, g.padded}),
           kOp, " backward called without the saved activations of a forward of this shape");
  for (const Tensor* t : {&dqk, &dv, &dout}) t->check_shape(qk.shape(), "lsh_attention", "gradient");
  const std::int64_t n = batch * seq_len, d = g.dim, c = g.chunk, hd = g.heads * d;
  // D_i = dout_i . out_i per (row, head).
  Tensor delta = Tensor::empty({n, g.heads});
  float* dl = delta.data<float>();
  const float* dop = dout.data<float>();
  const float* outp = s.out.data<float>();
#pragma omp parallel for schedule(static) if (n * hd >= (1 << 15))
  for (std::int64_t q = 0; q < n * g.heads; ++q) {
    float acc = 0;
    for (std::int64_t e = 0; e < d; ++e) acc += dop[q * d + e] * outp[q * d + e];
    dl[q] = acc;
  }
  // Per-round gradient buffers [R, N, H, D]: task (b, h, r) writes only its own.
  Tensor gq = Tensor::zeros({g.rounds, n, g.heads, d}), gk = Tensor::zeros({g.rounds, n, g.heads, d}),
         gv = Tensor::zeros({g.rounds, n, g.heads, d});
  float *gqp = gq.data<float>(), *gkp = gk.data<float>(), *gvp = gv.data<float>();
  const float* qkp = qk.data<float>();
  const float* keys = s.keys.data<float>();
  const float* vp = v.data<float>();
  const float* lse_max = s.lse_max.data<float>();
  const float* lse_log_sum = s.lse_log_sum.data<float>();
  const std::int32_t* sorted = s.sorted_pos.data<std::int32_t>();
  const std::int64_t chunk_work = batch * g.heads * g.rounds * g.padded * 2 * c * (5 * d + 2);
  parallel_tasks(batch * g.heads * g.rounds, chunk_work, [&](std::int64_t t) {
    const std::int64_t b = t / (g.heads * g.rounds), h = (t / g.rounds) % g.heads, r = t % g.rounds;
    const std::int32_t* m = mask_row(mask, b, seq_len);
    const std::int32_t* sorted_bh = sorted + (b * g.heads + h) * g.rounds * g.padded;
    const std::int64_t round_offset = r * n * g.heads * d;
    ChunkWork w(g);
    std::vector<float> dy(c * d), dp(2 * c * c), dq(c * d), dk(2 * c * d), dvw(2 * c * d);
    for (std::int64_t local = 0; local < g.chunks_per_round; ++local) {
      chunk_positions(w, sorted_bh, r, local, g);
      gather_rows(w.q.data(), w.q_pos.data(), c, qkp, b, h, g);
      gather_rows(w.k.data(), w.k_pos.data(), 2 * c, keys, b, h, g);
      gather_rows(w.v.data(), w.k_pos.data(), 2 * c, vp, b, h, g);
      gather_rows(dy.data(), w.q_pos.data(), c, dop, b, h, g);
      chunk_scores(w, m, o.causal, g);
      // P = exp((S - M) - log(total)) with the combined lse (0 for pad query rows).
      for (std::int64_t a = 0; a < c; ++a) {
        float* row = w.s.data() + a * 2 * c;
        const std::int64_t i = w.q_pos[a];
        if (i >= seq_len) {
          std::fill_n(row, 2 * c, 0.0f);
          continue;
        }
        const std::int64_t at = (b * g.heads + h) * seq_len + i;
        exp_shift2_row(row, 2 * c, lse_max[at], lse_log_sum[at]);
      }
      // dV_win = P^T dY; dP = dY V^T.
      gemm(Trans::T, Trans::N, 2 * c, d, c, 1.0f, w.s.data(), 2 * c, dy.data(), d, 0.0f, dvw.data(), d);
      gemm(Trans::N, Trans::T, c, 2 * c, d, 1.0f, dy.data(), d, w.v.data(), d, 0.0f, dp.data(), 2 * c);
      // dS = P (dP - D), none through the mask constants.
      for (std::int64_t a = 0; a < c; ++a) {
        const std::int64_t i = w.q_pos[a];
        float* ds = dp.data() + a * 2 * c;
        const float* pr = w.s.data() + a * 2 * c;
        const float di = i < seq_len ? dl[(b * seq_len + i) * g.heads + h] : 0.0f;
        for (std::int64_t j = 0; j < 2 * c; ++j) {
          const bool scored =
              i < seq_len && lsh_key_role(i, w.k_pos[j], is_valid(m, seq_len, w.k_pos[j]), o.causal) ==
                                 LshKeyRole::Scored;
          ds[j] = scored ? pr[j] * (ds[j] - di) : 0.0f;
        }
      }
      // dQ = dS K; dK_win = dS^T Q.
      gemm(Trans::N, Trans::N, c, d, 2 * c, 1.0f, dp.data(), 2 * c, w.k.data(), d, 0.0f, dq.data(), d);
      gemm(Trans::T, Trans::N, 2 * c, d, c, 1.0f, dp.data(), 2 * c, w.q.data(), d, 0.0f, dk.data(), d);
      for (std::int64_t a = 0; a < c; ++a) {
        if (w.q_pos[a] >= seq_len) continue;
        float* dst = gqp + round_offset + g.row(b, w.q_pos[a], h);
        for (std::int64_t e = 0; e < d; ++e) dst[e] += dq[a * d + e];
      }
      for (std::int64_t a = 0; a < 2 * c; ++a) {
        if (w.k_pos[a] >= seq_len) continue;
        float* dkd = gkp + round_offset + g.row(b, w.k_pos[a], h);
        float* dvd = gvp + round_offset + g.row(b, w.k_pos[a], h);
        for (std::int64_t e = 0; e < d; ++e) dkd[e] += dk[a * d + e], dvd[e] += dvw[a * d + e];
      }
    }
  });
  // Sum the rounds; keys back through the normalization.
  float *dqkp = dqk.data<float>(), *dvp = dv.data<float>();
  const std::int64_t total = n * hd, stride = n * hd;
#pragma omp parallel for schedule(static) if (total * g.rounds >= (1 << 15))
  for (std::int64_t e = 0; e < total; ++e) {
    float q_sum = 0, k_sum = 0, v_sum = 0;
    for (std::int64_t r = 0; r < g.rounds; ++r)
      q_sum += gqp[r * stride + e], k_sum += gkp[r * stride + e], v_sum += gvp[r * stride + e];
    dqkp[e] = q_sum;
    gkp[e] = k_sum;  // round 0's buffer now holds the summed key gradient
    dvp[e] = v_sum;
  }
  normalize_rows_backward(dqkp, gkp, qkp, s.inv_rms.data<float>(), n * g.heads, d);
}

// ---- the sublayer -------------------------------------------------------------

void lsh_attention_check(const Tensor& x, std::int64_t batch, std::int64_t seq_len, const Tensor& mask,
                         const LshAttentionParams& p) {
  lsh_check_options(p.opt);
  MF_CHECK(p.qk && p.v && p.o && p.rotations, kOp, " the qk, v and o projections and the rotations are required");
  MF_CHECK(p.num_heads >= 1 && p.head_dim >= 1, kOp, " num_heads (", p.num_heads, ") and head_dim (", p.head_dim,
           ") must be >= 1");
  MF_CHECK(x.defined() && x.dim() == 2 && x.dtype() == DType::F32 && x.is_contiguous(), kOp,
           " input must be a contiguous float32 [B*L, C] tensor but has shape ",
           x.defined() ? shape_str(x.shape()) : "(undefined)");
  MF_CHECK(batch >= 1 && seq_len >= 1 && x.size(0) == batch * seq_len, kOp, " input has ", x.size(0),
           " rows but batch ", batch, " x seq_len ", seq_len, " were given");
  const std::int64_t c = x.size(1), hd = p.num_heads * p.head_dim;
  p.qk->value.check_shape({hd, c}, "lsh_attention", p.qk->name.c_str());
  p.v->value.check_shape({hd, c}, "lsh_attention", p.v->name.c_str());
  p.o->value.check_shape({c, hd}, "lsh_attention", p.o->name.c_str());
  if (p.qk_bias) p.qk_bias->value.check_shape({hd}, "lsh_attention", p.qk_bias->name.c_str());
  if (p.v_bias) p.v_bias->value.check_shape({hd}, "lsh_attention", p.v_bias->name.c_str());
  if (p.o_bias) p.o_bias->value.check_shape({c}, "lsh_attention", p.o_bias->name.c_str());
  const Shape rot_shape{p.num_heads, p.head_dim, p.opt.n_hashes, p.opt.n_buckets / 2};
  MF_CHECK(p.rotations->value.shape() == rot_shape && p.rotations->value.dtype() == DType::F32, kOp, " buffer '",
           p.rotations->name, "' must be float32 [H, D, n_hashes, n_buckets/2] = ", shape_str(rot_shape),
           " but has shape ", shape_str(p.rotations->value.shape()));
  check_mask(mask, batch, seq_len);
}

void lsh_attention_forward(const Tensor& y, LshAttentionSaved& s, const Tensor& x, std::int64_t batch,
                           std::int64_t seq_len, const Tensor& mask, const LshAttentionParams& p) {
  lsh_attention_check(x, batch, seq_len, mask, p);
  y.check_shape(x.shape(), "lsh_attention", "y");
  const std::int64_t n = batch * seq_len, h = p.num_heads, d = p.head_dim;
  s = LshAttentionSaved{};
  s.qk = linear_forward(x, p.qk->value, bias_of(p.qk_bias)).reshape({n, h, d});
  s.v = linear_forward(x, p.v->value, bias_of(p.v_bias)).reshape({n, h, d});
  const Tensor out = Tensor::empty({n, h, d});
  lsh_attention_kernel_forward(out, s.kernel, s.qk, s.v, p.rotations->value, batch, seq_len, mask, p.opt);
  linear_forward(y, out.reshape({n, h * d}), p.o->value, bias_of(p.o_bias));
}

void lsh_attention_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const LshAttentionSaved& s,
                            std::int64_t batch, std::int64_t seq_len, const Tensor& mask,
                            const LshAttentionParams& p) {
  lsh_attention_check(x, batch, seq_len, mask, p);
  dx.check_shape(x.shape(), "lsh_attention", "dx");
  dy.check_shape(x.shape(), "lsh_attention", "dy");
  const std::int64_t n = batch * seq_len, h = p.num_heads, d = p.head_dim;
  MF_CHECK(s.qk.defined() && s.qk.size(0) == n && s.kernel.out.defined(), kOp,
           " backward called without the saved activations of a forward of this shape");
  Tensor dout = Tensor::empty({n, h * d});
  linear_backward(dout, p.o->grad, bias_grad_of(p.o_bias), dy, s.kernel.out.reshape({n, h * d}), p.o->value);
  const Tensor dqk = Tensor::empty({n, h, d}), dv = Tensor::empty({n, h, d});
  lsh_attention_kernel_backward(dqk, dv, dout.reshape({n, h, d}), s.qk, s.v, s.kernel, batch, seq_len, mask, p.opt);
  linear_backward(dx, p.qk->grad, bias_grad_of(p.qk_bias), dqk.reshape({n, h * d}), x, p.qk->value);
  linear_backward(dx, p.v->grad, bias_grad_of(p.v_bias), dv.reshape({n, h * d}), x, p.v->value, /*accumulate_din=*/true);
}

// ---- meter entry points ----------------------------------------------------------

Tensor lsh_attention(const Tensor& qk, const Tensor& v, const Tensor& rotations, std::int64_t batch,
                     std::int64_t seq_len, std::int64_t chunk_length, bool causal) {
  MF_CHECK(rotations.defined() && rotations.dim() == 4, kOp,
           " rotations must be [H, D, n_hashes, n_buckets/2] but have shape ",
           rotations.defined() ? shape_str(rotations.shape()) : "(undefined)");
  LshOptions o;
  o.n_hashes = rotations.size(2);
  o.n_buckets = 2 * rotations.size(3);
  o.chunk_length = chunk_length;
  o.causal = causal;
  Tensor out = Tensor::empty(qk.shape());
  LshKernelSaved saved;
  lsh_attention_kernel_forward(out, saved, qk.contiguous(), v.contiguous(), rotations.contiguous(), batch, seq_len,
                               Tensor(), o);
  return out;
}

Tensor lsh_attention(const Tensor& qk, const Tensor& v, std::int64_t batch, std::int64_t seq_len,
                     std::int64_t n_hashes, std::int64_t n_buckets, std::uint64_t seed, std::int64_t chunk_length,
                     bool causal) {
  MF_CHECK(qk.defined() && qk.dim() == 3, kOp, " qk must be [B*L, H, D]");
  LshOptions o;
  o.n_hashes = n_hashes, o.n_buckets = n_buckets, o.chunk_length = chunk_length;
  lsh_check_options(o);
  return lsh_attention(qk, v, lsh_draw_rotations(qk.size(1), qk.size(2), n_hashes, n_buckets, seed), batch,
                       seq_len, chunk_length, causal);
}

Tensor lsh_draw_rotations(std::int64_t heads, std::int64_t head_dim, std::int64_t n_hashes, std::int64_t n_buckets,
                          std::uint64_t seed, std::uint64_t stream) {
  Tensor r = Tensor::empty({heads, head_dim, n_hashes, n_buckets / 2});
  fill_normal(r, seed, 0.0f, 1.0f, stream);
  return r;
}

Tensor lsh_normalize_keys(const Tensor& qk) {
  const Tensor x = qk.contiguous();
  Tensor keys = Tensor::empty(x.shape());
  const std::int64_t d = x.size(-1), rows = x.numel() / d;
  std::vector<float> inv(static_cast<std::size_t>(rows));
  normalize_rows(keys.data<float>(), inv.data(), x.data<float>(), rows, d);
  return keys;
}

// ---- generation -------------------------------------------------------------------

LshCache::LshCache(std::int64_t b, std::int64_t cap, std::int64_t h, std::int64_t d, const LshOptions& o)
    : batch(b), capacity(cap), heads(h), head_dim(d), n_hashes(o.n_hashes), n_buckets(o.n_buckets),
      qk(Tensor::empty({b, cap, h, d})), keys(Tensor::empty({b, cap, h, d})), v(Tensor::empty({b, cap, h, d})),
      buckets(Tensor::empty({b, h, o.n_hashes, cap}, DType::I32)),
      window(static_cast<std::size_t>(b * h * o.n_hashes * 2 * std::min(o.chunk_length, cap))),
      scores(window.size()), counts(static_cast<std::size_t>(b * h * 2 * (o.n_buckets + 1))),
      rotated(static_cast<std::size_t>(b * h * o.n_hashes * (o.n_buckets / 2))),
      inv_rms(static_cast<std::size_t>(b * h)) {}

std::int64_t LshCache::bytes() const {
  return static_cast<std::int64_t>(qk.nbytes() + keys.nbytes() + v.nbytes() + buckets.nbytes() +
                                   (window.size() + counts.size()) * sizeof(std::int32_t) +
                                   (scores.size() + rotated.size() + inv_rms.size()) * sizeof(float));
}

namespace {

// Window positions (2 g.chunk entries, -1: pad slot) of the new token t for
// round r, per the generation rule: its chunk and the previous one of the
// prefix 0..t (the chunk cut to t + 1 as Geometry does).
void step_window(std::int32_t* window, std::int32_t* counts, const std::int32_t* buckets_bh, std::int64_t t,
                 std::int64_t r, const Geometry& g, std::int64_t capacity) {
  const std::int64_t c = std::min(g.chunk, t + 1), padded = (t + 1 + c - 1) / c * c;
  const std::int32_t* own = buckets_bh + r * capacity;
  std::int64_t slot = 0;  // #{j < t : bucket(j) <= bucket(t)}
  for (std::int64_t j = 0; j < t; ++j) slot += own[j] <= own[t];
  const std::int64_t k = slot / c;
  // (round, first slot) of the previous chunk, then of the chunk.
  const std::int64_t ranges[2][2] = {{k > 0 ? r : (r + g.rounds - 1) % g.rounds, k > 0 ? (k - 1) * c : padded - c},
                                     {r, k * c}};
  std::fill_n(window, 2 * g.chunk, -1);
  std::int32_t* start = counts;
  std::int32_t* next = counts + g.buckets + 1;
  for (int part = 0; part < 2; ++part) {
    const std::int32_t* bk = buckets_bh + ranges[part][0] * capacity;
    const std::int64_t first = ranges[part][1];
    std::fill_n(start, g.buckets + 1, 0);
    for (std::int64_t j = 0; j <= t; ++j) ++start[bk[j] + 1];
    for (std::int64_t b = 1; b <= g.buckets; ++b) start[b] += start[b - 1];
    std::fill_n(next, g.buckets + 1, 0);
    for (std::int64_t j = 0; j <= t; ++j) {
      const std::int64_t s = start[bk[j]] + next[bk[j]]++;
      if (s >= first && s < first + c) window[part * c + (s - first)] = static_cast<std::int32_t>(j);
    }
  }
}

}  // namespace

void lsh_attention_generate(const Tensor& y, const Tensor& x, std::int64_t batch, std::int64_t seq_len,
                            LshCache& cache, const LshAttentionParams& p) {
  lsh_attention_check(x, batch, seq_len, Tensor(), p);
  y.check_shape(x.shape(), "lsh_attention", "y");
  const std::int64_t h = p.num_heads, d = p.head_dim, hd = h * d, n = batch * seq_len;
  MF_CHECK(batch == cache.batch && h == cache.heads && d == cache.head_dim && p.opt.n_hashes == cache.n_hashes &&
               p.opt.n_buckets == cache.n_buckets,
           kOp, " generation state was made for batch ", cache.batch, ", ", cache.heads, " heads of ", cache.head_dim,
           ", ", cache.n_hashes, " rounds and ", cache.n_buckets, " buckets, but the call has batch ", batch, ", ", h,
           " heads of ", d, ", ", p.opt.n_hashes, " rounds and ", p.opt.n_buckets, " buckets");
  MF_CHECK(cache.length + seq_len <= cache.capacity, kOp, " generation state is full: ", cache.length,
           " positions held + ", seq_len, " new exceed its capacity ", cache.capacity);
  const Tensor qk = linear_forward(x, p.qk->value, bias_of(p.qk_bias));  // [N, H*D]
  const Tensor v = linear_forward(x, p.v->value, bias_of(p.v_bias));
  const Tensor out = Tensor::empty({n, hd});
  const Geometry g(p.opt, batch, cache.capacity, h, d);
  const std::int64_t cap = cache.capacity, past = cache.length;
  // Cache the new positions: qk, normalized keys, values, buckets.
  for (std::int64_t b = 0; b < batch; ++b) {
    float* qk_dst = cache.qk.data<float>() + (b * cap + past) * hd;
    std::copy_n(qk.data<float>() + b * seq_len * hd, seq_len * hd, qk_dst);
    std::copy_n(v.data<float>() + b * seq_len * hd, seq_len * hd, cache.v.data<float>() + (b * cap + past) * hd);
    for (std::int64_t a = 0; a < seq_len; ++a)
      normalize_rows(cache.keys.data<float>() + (b * cap + past + a) * hd, cache.inv_rms.data() + b * h,
                     qk_dst + a * hd, h, d);
  }
  // All new rows in one product, as the forward hashes a prompt (a step uses
  // the state's scratch; a longer call allocates its own).
  parallel_tasks(batch * h, n * h * d * g.rounds * g.half, [&](std::int64_t t) {
    const std::int64_t b = t / h, hh = t % h;
    std::vector<float> rows_scratch(seq_len > 1 ? static_cast<std::size_t>(seq_len * g.rounds * g.half) : 0);
    hash_rows(cache.buckets.data<std::int32_t>() + t * g.rounds * cap + past, cap,
              cache.qk.data<float>() + ((b * cap + past) * h + hh) * d, hd, seq_len,
              p.rotations->value.data<float>() + hh * d * g.rounds * g.half, g,
              seq_len > 1 ? rows_scratch.data() : cache.rotated.data() + t * g.rounds * g.half);
  });
  if (past == 0) {
    // A prompt: the causal forward over it.
    LshAttentionParams causal = p;
    causal.opt.causal = true;
    LshKernelSaved saved;
    lsh_attention_kernel_forward(out.reshape({n, h, d}), saved, qk.reshape({n, h, d}), v.reshape({n, h, d}),
                                 p.rotations->value, batch, seq_len, Tensor(), causal.opt);
  } else {
    const std::int64_t c = g.chunk, width = g.rounds * 2 * c;
    const std::int64_t step_work = n * h * g.rounds * (2 * (past + seq_len) + 2 * c * (2 * d + 1));
    parallel_tasks(batch * h, step_work, [&](std::int64_t task) {
      const std::int64_t b = task / h, hh = task % h;
      std::int32_t* window = cache.window.data() + task * width;
      std::int32_t* counts = cache.counts.data() + task * 2 * (g.buckets + 1);
      const std::int32_t* buckets_bh = cache.buckets.data<std::int32_t>() + task * g.rounds * cap;
      float* scores = cache.scores.data() + task * width;
      for (std::int64_t a = 0; a < seq_len; ++a) {
        const std::int64_t t = past + a;
        for (std::int64_t r = 0; r < g.rounds; ++r) step_window(window + r * 2 * c, counts, buckets_bh, t, r, g, cap);
        // One softmax over every round's window (= rounds combined by lse).
        const float* q = cache.qk.data<float>() + ((b * cap + t) * h + hh) * d;
        float mx = -std::numeric_limits<float>::infinity();
        for (std::int64_t j = 0; j < width; ++j) {
          const std::int64_t pos = window[j];
          const LshKeyRole role = lsh_key_role(t, pos, pos >= 0, true);
          float sc = role == LshKeyRole::Self ? kLshSelfMaskValue : kLshMaskValue;
          if (role == LshKeyRole::Scored) {
            const float* k = cache.keys.data<float>() + ((b * cap + pos) * h + hh) * d;
            sc = 0;
            for (std::int64_t e = 0; e < d; ++e) sc += q[e] * k[e];
          }
          scores[j] = sc;
          mx = std::max(mx, sc);
        }
        float sum = 0;
        for (std::int64_t j = 0; j < width; ++j) sum += scores[j] = std::exp(scores[j] - mx);
        float* dst = out.data<float>() + (b * seq_len + a) * hd + hh * d;
        std::fill_n(dst, d, 0.0f);
        for (std::int64_t j = 0; j < width; ++j) {
          if (scores[j] == 0.0f) continue;
          const float* vr = cache.v.data<float>() + ((b * cap + window[j]) * h + hh) * d;
          const float wgt = scores[j] / sum;
          for (std::int64_t e = 0; e < d; ++e) dst[e] += wgt * vr[e];
        }
      }
    });
  }
  cache.length += seq_len;
  linear_forward(y, out, p.o->value, bias_of(p.o_bias));
}

}  // namespace mf
