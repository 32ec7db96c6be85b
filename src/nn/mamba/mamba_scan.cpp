// Mamba's selective scan, fast path (the math: mamba.h). One task is one
// (sequence, group of kScanGroup channels); it walks the chunks of T steps in
// order, copies the chunk's delta and u (and dy) columns of its group into a
// compact buffer, and inside the chunk runs one channel after another (the T
// rows of B and C stay in cache for every channel of the group). Each step is
// vectorized over the state (N lanes, padded to the SIMD width with lanes that
// stay 0). The backward walks the chunks in reverse,
// recomputes the states of one channel's chunk from the saved chunk start
// into a (T + 1) x N buffer, and runs the reverse recurrence
//   g_t = dy_t C_t + a_{t+1} g_{t+1}            (g = dLoss/ds_t, carried across chunks)
//   dDelta_t = sum_n g_t s_{t-1} a_t A + u_t sum_n g_t B_t,   du_t = Delta_t sum_n g_t B_t + D dy_t
//   dB_t += g_t Delta_t u_t,  dC_t += dy_t s_t,  dA += g_t s_{t-1} a_t Delta_t,  dD += dy_t u_t
// with a_t = exp(Delta_t A). dB and dC sum over channels: each group writes
// its own partial rows and the groups are added in a fixed order afterwards
// (dA_log and dD likewise over sequences), so the bits do not depend on the
// thread count.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "kernels/simd.h"
#include "nn/mamba/mamba.h"

namespace mf {

namespace {

constexpr const char* kOp = "[mamba]";
// Channels per task. Larger groups read longer runs of each token row when a
// chunk is packed (the packing, one row per page at Di = 1536, dominated the
// scan at 64: /tmp standalone scan measurement, L 8192, Di 1536, N 16, 1 thread,
// forward about 540 ms at 64 vs 455 ms at 128 and 260-455 ms at 256 on a
// loaded AVX-512 machine); smaller groups give B x Di / kScanGroup tasks for
// the threads and fewer partial dB/dC rows (groups x 2N floats per token).
constexpr std::int64_t kScanGroup = 128;

using simd::Vec;
constexpr std::int64_t kW = simd::kWidth;

struct ScanGeometry {
  std::int64_t batch, len, dim, n, padded_n, chunk, chunks, groups;
  std::int64_t ld_bc;  // row stride of B and C
};

ScanGeometry scan_geometry(const SelectiveScanInputs& in, std::int64_t batch, std::int64_t chunk_len) {
  MF_CHECK(batch >= 1 && chunk_len >= 1, kOp, " selective scan: batch and chunk_len must be >= 1 but are ", batch,
           " and ", chunk_len);
  MF_CHECK(in.u.defined() && in.u.dim() == 2 && in.u.is_contiguous() && in.u.dtype() == DType::F32, kOp,
           " selective scan: u must be a contiguous float32 [B*L, D] tensor");
  const std::int64_t rows = in.u.size(0), dim = in.u.size(1);
  MF_CHECK(rows % batch == 0 && rows > 0, kOp, " selective scan: u has ", rows, " rows, not a multiple of batch ",
           batch);
  MF_CHECK(in.a_log.defined() && in.a_log.dim() == 2 && in.a_log.size(0) == dim && in.a_log.is_contiguous(), kOp,
           " selective scan: A_log must be a contiguous [D, N] = [", dim, ", N] tensor");
  const std::int64_t n = in.a_log.size(1);
  in.delta.check_shape({rows, dim}, "mamba", "delta");
  in.d.check_shape({dim}, "mamba", "D");
  for (const Tensor* t : {&in.b, &in.c}) {
    t->check_shape({rows, n}, "mamba", t == &in.b ? "B" : "C");
    MF_CHECK(t->stride(1) == 1, kOp, " selective scan: B and C need unit column stride");
  }
  MF_CHECK(in.b.stride(0) == in.c.stride(0), kOp, " selective scan: B and C must have the same row stride");
  MF_CHECK(in.delta.is_contiguous() && in.d.is_contiguous(), kOp, " selective scan: delta and D must be contiguous");
  ScanGeometry g{};
  g.batch = batch, g.len = rows / batch, g.dim = dim, g.n = n;
  g.padded_n = (n + kW - 1) / kW * kW;
  g.chunk = chunk_len, g.chunks = selective_scan_chunks(g.len, chunk_len);
  g.groups = (dim + kScanGroup - 1) / kScanGroup;
  g.ld_bc = in.b.stride(0);
  return g;
}

// A = -exp(A_log) per channel, padded with 0 to padded_n lanes.
std::vector<float> padded_a(const Tensor& a_log, const ScanGeometry& g) {
  std::vector<float> a(static_cast<std::size_t>(g.dim * g.padded_n), 0.0f);
  const float* src = a_log.data<float>();
  for (std::int64_t d = 0; d < g.dim; ++d)
    for (std::int64_t j = 0; j < g.n; ++j) a[d * g.padded_n + j] = -std::exp(src[d * g.n + j]);
  return a;
}

// Lanes of [j, j + kW) that are real state entries.
inline std::int64_t lanes(std::int64_t j, std::int64_t n) { return std::min(kW, n - j); }

// A chunk's [rows, width] block of columns d0.. of a [*, dim] matrix (from row
// row0) copied to a compact packed[i * width + k], and back: the channel loops
// then step through a few KiB instead of one token row (often one page) per step.
void pack_columns(float* packed, const float* src, std::int64_t row0, std::int64_t rows, std::int64_t dim,
                  std::int64_t d0, std::int64_t width) {
  for (std::int64_t i = 0; i < rows; ++i) std::copy_n(src + (row0 + i) * dim + d0, width, packed + i * width);
}
void unpack_columns(float* dst, const float* packed, std::int64_t row0, std::int64_t rows, std::int64_t dim,
                    std::int64_t d0, std::int64_t width) {
  for (std::int64_t i = 0; i < rows; ++i) std::copy_n(packed + i * width, width, dst + (row0 + i) * dim + d0);
}

// Runs fn(0..count-1) (disjoint outputs), in parallel when the whole scan has
// at least kParallelMinWork state updates (below that, waking threads costs
// more than the work: a decode step of a small model).
constexpr std::int64_t kParallelMinWork = 1 << 14;
template <typename Fn>
void parallel_tasks(std::int64_t count, std::int64_t work, const Fn& fn) {
#pragma omp parallel for schedule(dynamic, 1) if (count > 1 && work >= kParallelMinWork)
  for (std::int64_t i = 0; i < count; ++i) fn(i);
}

}  // namespace

std::int64_t selective_scan_chunks(std::int64_t seq_len, std::int64_t chunk_len) {
  return (seq_len + chunk_len - 1) / chunk_len;
}

void selective_scan_forward(const Tensor& y, const Tensor& chunk_states, const SelectiveScanInputs& in,
                            std::int64_t batch, std::int64_t chunk_len, const Tensor& state) {
  const ScanGeometry g = scan_geometry(in, batch, chunk_len);
  y.check_shape({batch * g.len, g.dim}, "mamba", "y");
  MF_CHECK(y.is_contiguous(), kOp, " selective scan: y must be contiguous");
  if (chunk_states.defined()) chunk_states.check_shape({batch, g.chunks, g.dim, g.n}, "mamba", "chunk_states");
  if (state.defined()) state.check_shape({batch, g.dim, g.n}, "mamba", "state");
  const std::vector<float> a = padded_a(in.a_log, g);
  const float *u = in.u.data<float>(), *delta = in.delta.data<float>(), *dskip = in.d.data<float>();
  const float *bm = in.b.data<float>(), *cm = in.c.data<float>();
  float* yp = y.data<float>();
  float* cs = chunk_states.defined() ? chunk_states.data<float>() : nullptr;
  float* st = state.defined() ? state.data<float>() : nullptr;
  parallel_tasks(batch * g.groups, batch * g.len * g.dim * g.n, [&](std::int64_t task) {
    const std::int64_t b = task / g.groups, d0 = (task % g.groups) * kScanGroup;
    const std::int64_t width = std::min(kScanGroup, g.dim - d0), np = g.padded_n;
    const std::int64_t tmax = std::min(g.chunk, g.len);
    // Per task, never per step: the group's states, a chunk's delta, u and y packed per channel.
    std::vector<float> h(static_cast<std::size_t>(width * np), 0.0f);
    std::vector<float> packed(static_cast<std::size_t>(3 * width * tmax));
    float *delta_c = packed.data(), *u_c = delta_c + width * tmax, *y_c = u_c + width * tmax;
    if (st)
      for (std::int64_t k = 0; k < width; ++k) std::copy_n(st + (b * g.dim + d0 + k) * g.n, g.n, &h[k * np]);
    for (std::int64_t c = 0; c < g.chunks; ++c) {
      const std::int64_t t0 = c * g.chunk, t1 = std::min(g.len, t0 + g.chunk), row0 = b * g.len + t0;
      pack_columns(delta_c, delta, row0, t1 - t0, g.dim, d0, width);
      pack_columns(u_c, u, row0, t1 - t0, g.dim, d0, width);
      for (std::int64_t k = 0; k < width; ++k) {
        const std::int64_t d = d0 + k;
        float* hd = &h[k * np];
        const float* ad = &a[d * np];
        if (cs) std::copy_n(hd, g.n, cs + ((b * g.chunks + c) * g.dim + d) * g.n);
        for (std::int64_t t = t0; t < t1; ++t) {
          const std::int64_t row = b * g.len + t, i = (t - t0) * width + k;
          const float dl = delta_c[i], uu = u_c[i];
          const float* brow = bm + row * g.ld_bc;
          const float* crow = cm + row * g.ld_bc;
          const Vec dl_v = simd::set1(dl), du_v = simd::set1(dl * uu);
          Vec acc = simd::zero();
          for (std::int64_t j = 0; j < np; j += kW) {
            const std::int64_t cnt = lanes(j, g.n);
            const Vec at = simd::exp(dl_v * simd::load(ad + j));                        // exp(Delta A)
            const Vec hv = simd::fmadd(at, simd::load(hd + j), du_v * simd::load(brow + j, cnt));
            simd::store(hd + j, hv);
            acc = simd::fmadd(simd::load(crow + j, cnt), hv, acc);  // C . s
          }
          y_c[i] = simd::reduce_add(acc) + dskip[d] * uu;
        }
      }
      unpack_columns(yp, y_c, row0, t1 - t0, g.dim, d0, width);
    }
    if (st)
      for (std::int64_t k = 0; k < width; ++k) std::copy_n(&h[k * np], g.n, st + (b * g.dim + d0 + k) * g.n);
  });
}

void selective_scan_backward(const SelectiveScanGrads& grads, const Tensor& dy, const SelectiveScanInputs& in,
                             const Tensor& chunk_states, std::int64_t batch, std::int64_t chunk_len) {
  const ScanGeometry g = scan_geometry(in, batch, chunk_len);
  const std::int64_t rows = batch * g.len, np = g.padded_n;
  MF_CHECK(chunk_states.defined(), kOp, " backward called without the saved chunk states");
  chunk_states.check_shape({batch, g.chunks, g.dim, g.n}, "mamba", "chunk_states");
  for (const Tensor* t : {&dy, &grads.du, &grads.ddelta}) {
    t->check_shape({rows, g.dim}, "mamba", "gradient");
    MF_CHECK(t->is_contiguous(), kOp, " selective scan: dy, du and ddelta must be contiguous");
  }
  grads.db.check_shape({rows, g.n}, "mamba", "db");
  grads.dc.check_shape({rows, g.n}, "mamba", "dc");
  grads.da_log.check_shape({g.dim, g.n}, "mamba", "da_log");
  grads.dd.check_shape({g.dim}, "mamba", "dd");
  const std::vector<float> a = padded_a(in.a_log, g);
  const float *u = in.u.data<float>(), *delta = in.delta.data<float>(), *dskip = in.d.data<float>();
  const float *bm = in.b.data<float>(), *cm = in.c.data<float>(), *cs = chunk_states.data<float>();
  const float* dyp = dy.data<float>();
  float *du = grads.du.data<float>(), *ddelta = grads.ddelta.data<float>();
  // Partial sums: dB and dC rows per channel group, dA (w.r.t. A) and dD per sequence.
  Tensor part_bc = Tensor::empty({g.groups, rows, 2 * g.n});
  Tensor part_a = Tensor::zeros({batch, g.dim, g.n}), part_d = Tensor::zeros({batch, g.dim});
  float *pbc = part_bc.data<float>(), *pa = part_a.data<float>(), *pd = part_d.data<float>();
  parallel_tasks(batch * g.groups, batch * g.len * g.dim * g.n, [&](std::int64_t task) {
    const std::int64_t b = task / g.groups, grp = task % g.groups, d0 = grp * kScanGroup;
    const std::int64_t width = std::min(kScanGroup, g.dim - d0), tmax = std::min(g.chunk, g.len);
    // Per task, never per step: the carried g, one chunk of one channel's
    // states s_{t0-1} .. s_{t1-1} and decays, the chunk's partial dB/dC rows.
    std::vector<float> carry(static_cast<std::size_t>(width * np), 0.0f);
    std::vector<float> hbuf(static_cast<std::size_t>((tmax + 1) * np), 0.0f), abuf(static_cast<std::size_t>(tmax * np));
    std::vector<float> bc_rows(static_cast<std::size_t>(tmax * 2 * np)), da(static_cast<std::size_t>(np));
    // The chunk's delta, u, dy (in) and du, ddelta (out), packed per channel.
    std::vector<float> packed(static_cast<std::size_t>(5 * width * tmax));
    float *delta_c = packed.data(), *u_c = delta_c + width * tmax, *dy_c = u_c + width * tmax;
    float *du_c = dy_c + width * tmax, *ddelta_c = du_c + width * tmax;
    for (std::int64_t c = g.chunks - 1; c >= 0; --c) {
      const std::int64_t t0 = c * g.chunk, t1 = std::min(g.len, t0 + g.chunk), row0 = b * g.len + t0;
      std::fill(bc_rows.begin(), bc_rows.end(), 0.0f);
      pack_columns(delta_c, delta, row0, t1 - t0, g.dim, d0, width);
      pack_columns(u_c, u, row0, t1 - t0, g.dim, d0, width);
      pack_columns(dy_c, dyp, row0, t1 - t0, g.dim, d0, width);
      for (std::int64_t k = 0; k < width; ++k) {
        const std::int64_t d = d0 + k;
        const float* ad = &a[d * np];
        // Recompute s_t for t in [t0, t1) from the saved s_{t0-1}.
        std::copy_n(cs + ((b * g.chunks + c) * g.dim + d) * g.n, g.n, hbuf.data());
        for (std::int64_t t = t0; t < t1; ++t) {
          const std::int64_t row = b * g.len + t, i = t - t0;
          const float dl = delta_c[i * width + k];
          const Vec dl_v = simd::set1(dl), du_v = simd::set1(dl * u_c[i * width + k]);
          const float* brow = bm + row * g.ld_bc;
          for (std::int64_t j = 0; j < np; j += kW) {
            const Vec at = simd::exp(dl_v * simd::load(ad + j));
            simd::store(&abuf[i * np + j], at);
            simd::store(&hbuf[(i + 1) * np + j],
                        simd::fmadd(at, simd::load(&hbuf[i * np + j]), du_v * simd::load(brow + j, lanes(j, g.n))));
          }
        }
        // The reverse recurrence over the chunk.
        float* gc = &carry[k * np];
        std::fill(da.begin(), da.end(), 0.0f);
        float dd_sum = 0.0f;
        for (std::int64_t t = t1 - 1; t >= t0; --t) {
          const std::int64_t row = b * g.len + t, i = t - t0, ki = i * width + k;
          const float dyv = dy_c[ki], dl = delta_c[ki], uu = u_c[ki];
          const float* brow = bm + row * g.ld_bc;
          const float* crow = cm + row * g.ld_bc;
          const Vec dy_v = simd::set1(dyv), dl_v = simd::set1(dl), dlu_v = simd::set1(dl * uu);
          Vec g_b = simd::zero(), g_a = simd::zero();  // sum_n g B, sum_n g s_{t-1} a A
          float* db_row = &bc_rows[i * 2 * np];
          float* dc_row = db_row + np;
          for (std::int64_t j = 0; j < np; j += kW) {
            const std::int64_t cnt = lanes(j, g.n);
            const Vec at = simd::load(&abuf[i * np + j]);
            const Vec gv = simd::fmadd(dy_v, simd::load(crow + j, cnt), simd::load(gc + j));  // g_t
            simd::store(dc_row + j, simd::fmadd(dy_v, simd::load(&hbuf[(i + 1) * np + j]), simd::load(dc_row + j)));
            simd::store(db_row + j, simd::fmadd(gv, dlu_v, simd::load(db_row + j)));
            const Vec g_prev_a = gv * simd::load(&hbuf[i * np + j]) * at;  // dLoss/da_t * a_t
            g_a = simd::fmadd(g_prev_a, simd::load(ad + j), g_a);
            simd::store(&da[j], simd::fmadd(g_prev_a, dl_v, simd::load(&da[j])));
            g_b = simd::fmadd(gv, simd::load(brow + j, cnt), g_b);
            simd::store(gc + j, at * gv);  // a_t g_t, for step t - 1
          }
          const float gb = simd::reduce_add(g_b);
          ddelta_c[ki] = simd::reduce_add(g_a) + uu * gb;
          du_c[ki] = dl * gb + dskip[d] * dyv;
          dd_sum += dyv * uu;
        }
        for (std::int64_t j = 0; j < g.n; ++j) pa[(b * g.dim + d) * g.n + j] += da[j] * ad[j];  // dA_log = dA * A
        pd[b * g.dim + d] += dd_sum;
      }
      unpack_columns(du, du_c, row0, t1 - t0, g.dim, d0, width);
      unpack_columns(ddelta, ddelta_c, row0, t1 - t0, g.dim, d0, width);
      for (std::int64_t t = t0; t < t1; ++t) {
        float* dst = pbc + (grp * rows + b * g.len + t) * 2 * g.n;
        const float* src = &bc_rows[(t - t0) * 2 * np];
        std::copy_n(src, g.n, dst);
        std::copy_n(src + np, g.n, dst + g.n);
      }
    }
  });
  // Fixed-order sums over groups (dB, dC) and sequences (dA_log, dD).
  float *db = grads.db.data<float>(), *dc = grads.dc.data<float>();
  const std::int64_t ld_db = grads.db.stride(0), ld_dc = grads.dc.stride(0);
  MF_CHECK(grads.db.stride(1) == 1 && grads.dc.stride(1) == 1, kOp, " selective scan: db and dc need unit column stride");
#pragma omp parallel for schedule(static) if (rows * g.groups * g.n >= (1 << 15))
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t j = 0; j < g.n; ++j) {
      float sb = 0.0f, sc = 0.0f;
      for (std::int64_t grp = 0; grp < g.groups; ++grp) {
        sb += pbc[(grp * rows + r) * 2 * g.n + j];
        sc += pbc[(grp * rows + r) * 2 * g.n + g.n + j];
      }
      db[r * ld_db + j] = sb;
      dc[r * ld_dc + j] = sc;
    }
  }
  float *da_log = grads.da_log.data<float>(), *dd = grads.dd.data<float>();
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t i = 0; i < g.dim * g.n; ++i) da_log[i] += pa[b * g.dim * g.n + i];
    for (std::int64_t d = 0; d < g.dim; ++d) dd[d] += pd[b * g.dim + d];
  }
}

}  // namespace mf
