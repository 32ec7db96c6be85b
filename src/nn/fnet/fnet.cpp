// FNet's Fourier token mixing (fnet.h), two paths: the DFT as real GEMMs with
// cached cos/sin matrices, and a real-input 2-D FFT (fnet_fft.h). Both compute
// only the half spectrum along hidden and mirror it (Hermitian symmetry).
//
// Algebra. F_N = C_N - i S_N (C, S symmetric cos / sin matrices), so
//   y_b = Re(F_L x_b F_C) = C_L x_b C_C - S_L x_b S_C.
// Backward: for a loss l with dl/dy = dy, dl/dx_b = C_L^T dy_b C_C^T - S_L^T dy_b S_C^T
// = C_L dy_b C_C - S_L dy_b S_C (symmetry): the same transform applied to dy
// (the map is self-adjoint), so fnet_backward is fnet_forward on dy.
#include "nn/fnet/fnet.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <numbers>

#include "core/threads.h"
#include "kernels/gemm.h"
#include "kernels/rows.h"
#include "nn/fnet/fnet_fft.h"

namespace mf {

namespace {

// ---- Auto: the measured crossover -----------------------------------------
// Auto takes the DFT path when seq_len < dft_below_seq_len of the first row
// with hidden <= max_hidden, and the FFT path otherwise (always beyond the
// last row). Set from dev/fnet_path_probe.cpp (forward, B = 1, the paths
// interleaved, best of 20) on the 2-core AVX-512 build machine ("Intel Xeon
// Processor", avx512f/bw/vnni/bf16, gemm backend onednn; `modformer info`),
// 2026-11-30, other builds running. ms DFT / FFT, 2 threads (load 2.5; the
// runs at higher load were dominated by 4-20 ms stalls of every parallel
// region and were discarded) and 1 thread:
//   C = 64:   2T: L 32 0.006/0.006, L 128 0.029/0.029, L 256 0.066/0.051, L 1024 0.69/0.18
//             1T: L 32 0.006/0.005, L 128 0.031/0.020
//   C = 128:  2T: L 32 0.011/0.011, L 64 0.022/0.026, L 128 0.049/0.044, L 1024 1.22/0.36
//             1T: L 64 0.025/0.019
//   C = 256:  2T: L 8 0.009/0.007, L 64 0.060/0.042, L 1024 2.35/0.67, L 8192 501/8.4
//   C = 1024: 2T: L 8 0.138/0.032, L 1024 14.1/4.6
// The FFT path (the DFT already computes only the hidden half spectrum too)
// wins from C = 256 at every L and from L = 128 below; under L = 128 at
// C <= 128 the two are within noise and the DFT is taken. (C = 512 at L 32-64
// favoured the DFT while the FFT ran one task; fft_task_width now splits.)
// Lengths with a large prime factor (Bluestein) may move the crossover; not
// measured.
struct FnetCrossover {
  std::int64_t max_hidden, dft_below_seq_len;
};
constexpr FnetCrossover kFnetCrossover[] = {{128, 128}};

// Each task of the FFT path transforms a block of `width` columns of length
// n, on 4 arrays of n x width floats (re, im and their Stockham partners).
// fft_block_width takes the widest of 32, 16, 8 whose arrays fit in L1 (32
// KiB) when one does (n <= 256), else the widest that fits in L2 (2 MiB),
// else 8. From the fft_columns section of dev/fnet_path_probe.cpp (one thread,
// AVX-512 build machine, GFLOP/s at 5 n log2 n per column, widths 8/16/32):
// n 128: 47/60/26, n 256: 57/27/18, n 1024: 18/20/24, n 4096: 26/26/28,
// n 8192: 24/23/16.
constexpr std::int64_t kFftL1Bytes = 32 * 1024, kFftL2Bytes = 2 * 1024 * 1024;
std::int64_t fft_block_width(std::int64_t n) {
  for (std::int64_t budget : {kFftL1Bytes, kFftL2Bytes})
    for (std::int64_t w : {32, 16, 8})
      if (16 * n * w <= budget) return w;
  return 8;
}
// The block width for `columns` columns of length n: fft_block_width, but
// narrower (down to 8) when that leaves a thread idle. Each column's
// arithmetic does not depend on the width, so neither do the results.
std::int64_t fft_task_width(std::int64_t n, std::int64_t columns, std::int64_t batch) {
  const std::int64_t threads = num_threads();
  const std::int64_t per_thread = (columns * batch + threads - 1) / threads;
  const std::int64_t split = std::max<std::int64_t>(8, (per_thread + 7) / 8 * 8);
  return std::min(fft_block_width(n), split);
}
// The DFT path's cos/sin matrices are cached up to this many bytes in all
// (one [2048, 4096] sequence table is 32 MiB); a table that would overflow
// the budget empties the cache first (tables in use stay alive with their
// callers), so many distinct lengths cannot grow memory without bound.
constexpr std::size_t kDftCacheBytes = 64u << 20;

// ---- front door --------------------------------------------------------------
struct FnetShape {
  std::int64_t batch, seq_len, hidden;
};

FnetShape check_fnet_args(const char* op, const Tensor& out, const char* out_name, const Tensor& in,
                          const char* in_name, std::int64_t batch, std::int64_t seq_len) {
  MF_CHECK(in.defined(), "[", op, "] ", in_name, " is undefined");
  MF_CHECK(out.defined(), "[", op, "] ", out_name, " is undefined");
  MF_CHECK(in.dtype() == DType::F32, "[", op, "] ", in_name, " must be float32 but is ", dtype_name(in.dtype()));
  MF_CHECK(out.dtype() == DType::F32, "[", op, "] ", out_name, " must be float32 but is ",
           dtype_name(out.dtype()));
  MF_CHECK(in.dim() == 2 || in.dim() == 3, "[", op, "] ", in_name,
           " must have 2 dimensions [B*L, C] or 3 [B, L, C] but has ", in.dim(), " ", shape_str(in.shape()));
  MF_CHECK(batch >= 1 && seq_len >= 1, "[", op, "] batch and seq_len must be >= 1 but are ", batch, " and ",
           seq_len);
  const std::int64_t hidden = in.size(-1);
  MF_CHECK(hidden >= 1, "[", op, "] ", in_name, " must have a hidden size >= 1 but has shape ",
           shape_str(in.shape()));
  if (in.dim() == 3)
    MF_CHECK(in.size(0) == batch && in.size(1) == seq_len, "[", op, "] ", in_name, " has shape ",
             shape_str(in.shape()), " but batch = ", batch, " and seq_len = ", seq_len);
  else
    MF_CHECK(in.size(0) == batch * seq_len, "[", op, "] ", in_name, " has ", in.size(0),
             " rows but batch * seq_len = ", batch, " * ", seq_len, " = ", batch * seq_len);
  MF_CHECK(out.numel() == in.numel() && out.size(-1) == hidden, "[", op, "] ", out_name, " must have the shape of ",
           in_name, " ", shape_str(in.shape()), " but has ", shape_str(out.shape()));
  MF_CHECK(out.is_contiguous(), "[", op, "] ", out_name, " must be contiguous");
  const char* ob = static_cast<const char*>(out.raw_data());
  const char* ib = static_cast<const char*>(in.raw_data());
  MF_CHECK(ob + out.nbytes() <= ib || ib + in.nbytes() <= ob, "[", op, "] ", out_name, " must not overlap ",
           in_name);
  return {batch, seq_len, hidden};
}

// ---- DFT path ---------------------------------------------------------------
// [n, 2 cols] row-major: [C | S] restricted to the first `cols` columns,
// C[j, k] = cos(2 pi j k / n), S[j, k] = sin(2 pi j k / n).
std::shared_ptr<const std::vector<float>> build_cos_sin(std::int64_t n, std::int64_t cols) {
  std::vector<double> cos_t(static_cast<std::size_t>(n)), sin_t(cos_t.size());
  for (std::int64_t t = 0; t < n; ++t) {
    const double a = 2.0 * std::numbers::pi * static_cast<double>(t) / static_cast<double>(n);
    cos_t[t] = std::cos(a);
    sin_t[t] = std::sin(a);
  }
  auto m = std::make_shared<std::vector<float>>(static_cast<std::size_t>(2 * n * cols));
  float* p = m->data();
#pragma omp parallel for schedule(static) if (n * cols >= (1 << 16))
  for (std::int64_t j = 0; j < n; ++j) {
    std::int64_t t = 0;  // (j k) mod n, advanced exactly
    for (std::int64_t k = 0; k < cols; ++k) {
      p[j * 2 * cols + k] = static_cast<float>(cos_t[t]);
      p[j * 2 * cols + cols + k] = static_cast<float>(sin_t[t]);
      t += j;
      if (t >= n) t -= n;
    }
  }
  return m;
}

std::shared_ptr<const std::vector<float>> cos_sin(std::int64_t n, std::int64_t cols) {
  static std::mutex mu;
  static std::map<std::pair<std::int64_t, std::int64_t>, std::shared_ptr<const std::vector<float>>> cache;
  static std::size_t cached_bytes = 0;
  const std::size_t bytes = static_cast<std::size_t>(2 * n * cols) * sizeof(float);
  if (bytes > kDftCacheBytes) return build_cos_sin(n, cols);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find({n, cols});
  if (it != cache.end()) return it->second;
  if (cached_bytes + bytes > kDftCacheBytes) {
    cache.clear();
    cached_bytes = 0;
  }
  cached_bytes += bytes;
  return cache[{n, cols}] = build_cos_sin(n, cols);
}

// Only the K = C / 2 + 1 first columns of the hidden transform are computed
// (the same Hermitian half as the FFT path, halving both GEMM stages); the
// other columns are mirrored: y[-m, C - k] = y[m, k] (see step (4) below).
void fnet_dft(float* y, const float* x, const FnetShape& s) {  // y, x: [B, L, C]
  const std::int64_t B = s.batch, L = s.seq_len, C = s.hidden, K = C / 2 + 1;
  const auto cs_c = cos_sin(C, K);  // [C, 2K]
  const auto cs_l = cos_sin(L, L);  // [L, 2L]
  // h = [x C_C | x S_C] on the first K columns: one [B*L, C] x [C, 2K] product.
  Tensor h = Tensor::empty({B * L, 2 * K});
  float* hp = h.data<float>();
  gemm(Trans::N, Trans::N, B * L, 2 * K, C, 1.0f, x, C, cs_c->data(), 2 * K, 0.0f, hp, 2 * K);
  // y_b[:, :K] = C_L (x_b C_C) - S_L (x_b S_C), per batch element.
  gemm_batched(Trans::N, Trans::N, L, K, L, 1.0f, cs_l->data(), 2 * L, 0, hp, 2 * K, L * 2 * K, 0.0f, y, C, L * C,
               B);
  gemm_batched(Trans::N, Trans::N, L, K, L, -1.0f, cs_l->data() + L, 2 * L, 0, hp + K, 2 * K, L * 2 * K, 1.0f, y, C,
               L * C, B);
  const std::int64_t mirrored = C - K;  // columns C - k for k = 1..C-K, all >= K
  if (mirrored == 0) return;
  kernels::parallel_rows(B * L, mirrored, [&](std::int64_t row) {
    const std::int64_t b = row / L, m = row % L;
    const float* src = y + (b * L + m) * C;
    float* dst = y + (b * L + (L - m) % L) * C;
    for (std::int64_t k = 1; k <= mirrored; ++k) dst[C - k] = src[k];
  });
}

// ---- FFT path ---------------------------------------------------------------
// Per batch element, with V = ceil(L / 2) and K = C / 2 + 1:
// (1) rows v and V + v of x are packed as one complex row z = x_v + i x_{V+v}
//     and transformed along hidden (length C, vectorized over v);
// (2) unpacked by Hermitian symmetry: X_v[k] = (Z[k] + conj Z[-k]) / 2,
//     X_{V+v}[k] = (Z[k] - conj Z[-k]) / 2i, kept for k < K only;
// (3) transformed along the sequence (length L, vectorized over k);
// (4) y[m, k] = Re W[m, k] for k < K; the other half of the 2-D spectrum of a
//     real input is W[m, C - k] = conj W[-m, k], so y[-m, C - k] = Re W[m, k].
void fnet_fft(float* y, const float* x, const FnetShape& s) {  // y, x: [B, L, C]
  const std::int64_t B = s.batch, L = s.seq_len, C = s.hidden;
  const std::int64_t V = (L + 1) / 2, K = C / 2 + 1;
  const auto plan_c = fnet::fft_plan(C);
  const auto plan_l = fnet::fft_plan(L);
  Tensor half = Tensor::empty({2, B, L, K});  // re, im of the hidden half-spectrum
  float* hr = half.data<float>();
  float* hi = hr + B * L * K;
  const std::int64_t width_c = fft_task_width(C, V, B), width_l = fft_task_width(L, K, B);
  const std::int64_t row_blocks = (V + width_c - 1) / width_c;
  const std::int64_t col_blocks = (K + width_l - 1) / width_l;
  const bool par = B * L * C >= (1 << 14);

#pragma omp parallel for schedule(dynamic) if (par && B * row_blocks > 1)
  for (std::int64_t task = 0; task < B * row_blocks; ++task) {
    const std::int64_t b = task / row_blocks, v0 = (task % row_blocks) * width_c;
    const std::int64_t w = std::min(width_c, V - v0);
    thread_local std::vector<float> buf;  // scratch, reused across calls
    if (buf.size() < static_cast<std::size_t>(4 * C * w)) buf.resize(static_cast<std::size_t>(4 * C * w));
    float *zr = buf.data(), *zi = zr + C * w, *wr = zi + C * w, *wi = wr + C * w;
    const float* xb = x + b * L * C;
    for (std::int64_t j = 0; j < w; ++j) {  // (1) [C, w] columns of packed rows
      const float* lo = xb + (v0 + j) * C;
      const float* hi_row = V + v0 + j < L ? xb + (V + v0 + j) * C : nullptr;
      for (std::int64_t c = 0; c < C; ++c) {
        zr[c * w + j] = lo[c];
        zi[c * w + j] = hi_row ? hi_row[c] : 0.0f;
      }
    }
    fnet::fft_columns(*plan_c, zr, zi, wr, wi, w);
    float* hrb = hr + b * L * K;
    float* hib = hi + b * L * K;
    for (std::int64_t k = 0; k < K; ++k) {  // (2)
      const std::int64_t kn = (C - k) % C;
      for (std::int64_t j = 0; j < w; ++j) {
        const float ar = zr[k * w + j], ai = zi[k * w + j], br = zr[kn * w + j], bi = -zi[kn * w + j];
        hrb[(v0 + j) * K + k] = 0.5f * (ar + br);
        hib[(v0 + j) * K + k] = 0.5f * (ai + bi);
        if (V + v0 + j < L) {
          hrb[(V + v0 + j) * K + k] = 0.5f * (ai - bi);
          hib[(V + v0 + j) * K + k] = -0.5f * (ar - br);
        }
      }
    }
  }

#pragma omp parallel for schedule(dynamic) if (par && B * col_blocks > 1)
  for (std::int64_t task = 0; task < B * col_blocks; ++task) {
    const std::int64_t b = task / col_blocks, k0 = (task % col_blocks) * width_l;
    const std::int64_t w = std::min(width_l, K - k0);
    thread_local std::vector<float> buf;  // scratch, reused across calls
    if (buf.size() < static_cast<std::size_t>(4 * L * w)) buf.resize(static_cast<std::size_t>(4 * L * w));
    float *zr = buf.data(), *zi = zr + L * w, *wr = zi + L * w, *wi = wr + L * w;
    const float* hrb = hr + b * L * K;
    const float* hib = hi + b * L * K;
    for (std::int64_t l = 0; l < L; ++l)
      for (std::int64_t j = 0; j < w; ++j) {
        zr[l * w + j] = hrb[l * K + k0 + j];
        zi[l * w + j] = hib[l * K + k0 + j];
      }
    fnet::fft_columns(*plan_l, zr, zi, wr, wi, w);  // (3)
    float* yb = y + b * L * C;
    for (std::int64_t m = 0; m < L; ++m) {  // (4)
      const std::int64_t mirror = (L - m) % L;
      for (std::int64_t j = 0; j < w; ++j) {
        const std::int64_t k = k0 + j;
        yb[m * C + k] = zr[m * w + j];
        if (k >= 1 && C - k > C / 2) yb[mirror * C + C - k] = zr[m * w + j];
      }
    }
  }
}

void fnet_transform(const char* op, const Tensor& out, const char* out_name, const Tensor& in, const char* in_name,
                    std::int64_t batch, std::int64_t seq_len, FnetPath path) {
  const FnetShape s = check_fnet_args(op, out, out_name, in, in_name, batch, seq_len);
  const Tensor xc = in.contiguous();
  if (path == FnetPath::Auto) path = fnet_auto_path(s.seq_len, s.hidden);
  if (path == FnetPath::Dft)
    fnet_dft(out.data<float>(), xc.data<float>(), s);
  else
    fnet_fft(out.data<float>(), xc.data<float>(), s);
}

}  // namespace

FnetPath fnet_auto_path(std::int64_t seq_len, std::int64_t hidden) {
  for (const FnetCrossover& row : kFnetCrossover)
    if (hidden <= row.max_hidden) return seq_len < row.dft_below_seq_len ? FnetPath::Dft : FnetPath::Fft;
  return FnetPath::Fft;
}

const char* fnet_path_name(FnetPath p) {
  switch (p) {
    case FnetPath::Auto:
      return "auto";
    case FnetPath::Dft:
      return "dft";
    case FnetPath::Fft:
      return "fft";
  }
  return "?";
}

void fnet_forward(const Tensor& y, const Tensor& x, std::int64_t batch, std::int64_t seq_len, FnetPath path) {
  fnet_transform("fnet", y, "y", x, "x", batch, seq_len, path);
}

void fnet_backward(const Tensor& dx, const Tensor& dy, std::int64_t batch, std::int64_t seq_len, FnetPath path) {
  fnet_transform("fnet_backward", dx, "dx", dy, "dy", batch, seq_len, path);
}

}  // namespace mf
