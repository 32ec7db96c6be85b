// Flash attention, stage 3 of 3: the backward, recomputing P from the saved
// log-sum-exp (FlashAttention-2's algorithm 2). It works on S (rows x keys)
// with K^T and V^T packed once per key tile; each work item (batch, KV head,
// key tile) owns its dK, dV rows. Thread counts: dK and dV are the same bits
// for any thread count; dQ adds the key tiles of a (batch, KV head) pair that
// is cut between threads through per-thread partial sums, whose rounding
// depends on the thread count (FlashAttention.ThreadCountIndependence).
// Compiled once per instruction set (core/isa_target.h); flash_attention.cpp
// dispatches.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "core/alloc.h"
#include "core/threads.h"
#include "nn/attention/attention_problem.h"
#include "nn/attention/flash_attention.h"
#include "core/isa_target.h"
#include "nn/attention/flash_geometry.h"

namespace mf::MF_ISA_NS {
namespace flash {
namespace {

template <class Isa>
struct BwdScratch {
  i64 Bkp = 0, Bq = 0;
  Buf kt, vt, qs, dk, dv, s, probs, dp, dropped_probs, keep_scale, lanes;
  float *jpos = nullptr, *keyok = nullptr, *gcol = nullptr;
  explicit BwdScratch(const FlashCall& cm) {
    Bkp = round_up(cm.tiles.bwd_keys, 16);
    Bq = cm.tiles.bwd_rows;
    kt.reset(cm.D * Bkp);
    vt.reset(cm.Dv * Bkp);
    qs.reset(Bq * cm.Dp);
    dk.reset(Bkp * cm.Dp);
    dv.reset(Bkp * cm.Dvp);
    s.reset(Bq * Bkp);
    probs.reset(Bq * Bkp);
    dp.reset(Bq * Bkp);
    if (cm.p.dropout_p > 0.0f) {
      dropped_probs.reset(Bq * Bkp);
      keep_scale.reset(Bq * Bkp);
    }
    lanes.reset(3 * Bkp);
    jpos = lanes.data();
    keyok = jpos + Bkp;
    gcol = keyok + Bkp;
  }
};

struct BwdInputs {
  const float *q, *k, *v, *dout;
  const float* lse;   // [rows] lse, +inf for rows that see no key (so that P = 0)
  const float* di;    // [rows] rowsum(dO * O)
  std::vector<i64> row_base;  // entry b: row (h, i) at row_base[b] + h * q_len[b] + i
  float* dk;
  float* dv;
};

// One work item: keys [j0, j1) of (b, kvh) against every query row of the
// group's heads. Accumulates dK, dV for these keys (written at the end) and
// adds dS K into dq_base (rows of head g at dq_base + g * dq_hs + i * dq_rs).
template <class Isa>
void bwd_item(const FlashCall& cm, const BwdInputs& in, i64 b, i64 kvh, i64 j0, i64 j1, float* dq_base, i64 dq_hs,
              i64 dq_rs, BwdScratch<Isa>& sc) {
  using I = Isa;
  using V = typename I::V;
  using M = typename I::M;
  constexpr int W = I::W;
  const AttentionProblem& p = cm.p;
  const i64 D = cm.D, Dp = cm.Dp, Dv = cm.Dv, Dvp = cm.Dvp, Bkp = sc.Bkp, nc = j1 - j0, shift = p.shift(b);
  const i64 lq = p.q_len[b];
  const i64 k_row_stride = p.k_row_stride, q_row_stride = p.q_row_stride;
  const i64 v_row_stride = p.v_row_stride, o_row_stride = p.o_row_stride;
  const float* k_tile = in.k + p.k_off[b] + kvh * p.k_head_stride + j0 * k_row_stride;
  const float* v_tile = in.v + p.v_off[b] + kvh * p.v_head_stride + j0 * v_row_stride;
  float *kt = sc.kt.data(), *vt = sc.vt.data(), *dka = sc.dk.data(), *dva = sc.dv.data();
  float *s = sc.s.data(), *probs = sc.probs.data(), *dp = sc.dp.data(), *dropped_probs = sc.dropped_probs.data(), *keep_scale = sc.keep_scale.data();
  const bool alibi = !cm.slopes.empty(), has_global = cm.has_global(), dropout = p.dropout_p > 0.0f;
  const i64 few_from = cm.fwd_few_rows_from(b);

  // K^T, V^T [D x Bkp] (zero beyond nc); key lanes: position, usable (in range, not padded), global.
  pack_transposed<I>([&](i64 j) { return j < nc ? k_tile + j * k_row_stride : nullptr; }, Bkp, D, 1.0f, kt, Bkp);
  pack_transposed<I>([&](i64 j) { return j < nc ? v_tile + j * v_row_stride : nullptr; }, Bkp, Dv, 1.0f, vt, Bkp);
  for (i64 jj = 0; jj < Bkp; ++jj) {
    const i64 j = j0 + jj;
    sc.jpos[jj] = static_cast<float>(j);
    sc.keyok[jj] = (jj < nc && !cm.key_padded(b, j)) ? 1.0f : 0.0f;
    sc.gcol[jj] = (jj < nc && cm.global_pos(j)) ? 1.0f : 0.0f;
  }
  std::memset(dka, 0, static_cast<std::size_t>(Bkp * Dp) * sizeof(float));
  std::memset(dva, 0, static_cast<std::size_t>(Bkp * Dvp) * sizeof(float));
  const float inv_keep = dropout ? 1.0f / (1.0f - p.dropout_p) : 1.0f;

  for (i64 g = 0; g < cm.G; ++g) {
    const i64 h = kvh * cm.G + g;
    const float sl = alibi ? cm.slopes[h] : 0.0f;
    const auto [qa, qb] = cm.query_range(b, j0, j1, sc.Bq);
    for (i64 i0 = qa; i0 < qb; i0 += sc.Bq) {
      if (cm.layout != nullptr) {  // block-sparse: on to the next row tile present for head h
        i0 = cm.layout_next_row(b, h, j0, i0);
        if (i0 >= qb) break;
      }
      const i64 nq = std::min(sc.Bq, qb - i0);
      TileKind kind = cm.classify(b, i0 + shift, i0 + nq - 1 + shift, j0, j1);
      if (kind == TileKind::Skip) continue;
      if (cm.layout != nullptr) kind = cm.layout_kind(kind, i0 + shift, i0 + nq - 1 + shift, j0, j1, false);
      const bool masked = kind == TileKind::Edge || nc < Bkp;
      const i64 qoff = p.q_off[b] + h * p.q_head_stride + i0 * q_row_stride;
      const float* qrow = in.q + qoff;
      const float* dorow = in.dout + p.o_off[b] + h * p.o_head_stride + i0 * o_row_stride;
      const i64 rbase = in.row_base[b] + h * lq + i0;

      // S = (scale Q) K^T, rounded exactly as in the forward (same products, same order), so
      // P = exp(S + bias - lse) (visible keys only) matches the forward's normalization.
      float* qs = sc.qs.data();
      for (i64 ii = 0; ii < nq; ++ii)
        for (i64 d = 0; d < Dp; ++d) qs[ii * Dp + d] = d < D ? qrow[ii * q_row_stride + d] * p.scale : 0.0f;
      tile_gemm<I, false>(nq, Bkp, D, qs, Dp, kt, Bkp, s, Bkp, TileMode::Store);
      // Rows whose forward used row_dot_scores: the same sums, bit for bit.
      for (i64 ii = std::max<i64>(0, few_from - i0); ii < nq; ++ii)
        row_dot_scores<I>(1, nc, D, qs + ii * Dp, Dp, k_tile, k_row_stride, s + ii * Bkp, Bkp);
      for (i64 ii = 0; ii < nq; ++ii) {
        const i64 ip = i0 + ii + shift;
        const V nlse = I::set1(-in.lse[rbase + ii]);
        const V ipv = I::set1(static_cast<float>(ip));
        const M row_global_mask = I::mall(has_global && cm.global_pos(ip));
        for (i64 v0 = 0; v0 < Bkp; v0 += W) {
          V x = I::load(s + ii * Bkp + v0);
          const V jv = I::load(sc.jpos + v0);
          if (alibi) x = I::sub(x, I::mul(I::set1(sl), I::abs(I::sub(ipv, jv))));
          x = I::add(x, nlse);
          if (masked) {
            const M vis = visible_pairs<I>(p, ipv, jv, row_global_mask, I::ge(I::load(sc.gcol + v0), I::set1(0.5f)),
                                           I::ge(I::load(sc.keyok + v0), I::set1(0.5f)));
            x = I::select(vis, x, I::set1(kNegInf));
          }
          I::store(probs + ii * Bkp + v0, I::exp2(I::mul(x, I::set1(kLog2e))));
        }
      }
      const float* pv = probs;  // the P that multiplies V in the forward: dropout(P)
      if (dropout) {
        for (i64 ii = 0; ii < nq; ++ii)
          for (i64 jj = 0; jj < Bkp; ++jj) {
            const float x = probs[ii * Bkp + jj];
            const float f = (x != 0.0f && attention_dropout_keep(p, b, h, i0 + ii, j0 + jj)) ? inv_keep : 0.0f;
            keep_scale[ii * Bkp + jj] = f;
            dropped_probs[ii * Bkp + jj] = x * f;
          }
        pv = dropped_probs;
      }
      // dV += dropout(P)^T dO
      tile_gemm<I, true>(nc, Dv, nq, pv, Bkp, dorow, o_row_stride, dva, Dvp, TileMode::Add);
      // dP = dO V^T
      tile_gemm<I, false>(nq, Bkp, Dv, dorow, o_row_stride, vt, Bkp, dp, Bkp, TileMode::Store);
      // dS = scale * P * (dropout'(dP) - D_i)
      for (i64 ii = 0; ii < nq; ++ii) {
        const V di = I::set1(in.di[rbase + ii]);
        const V sc_v = I::set1(p.scale);
        for (i64 v0 = 0; v0 < Bkp; v0 += W) {
          V dpv = I::load(dp + ii * Bkp + v0);
          if (dropout) dpv = I::mul(dpv, I::load(keep_scale + ii * Bkp + v0));
          I::store(dp + ii * Bkp + v0, I::mul(I::mul(I::load(probs + ii * Bkp + v0), I::sub(dpv, di)), sc_v));
        }
      }
      // dK += dS^T Q ; dQ += dS K
      tile_gemm<I, true>(nc, D, nq, dp, Bkp, qrow, q_row_stride, dka, Dp, TileMode::Add);
      tile_gemm<I, false>(nq, D, nc, dp, Bkp, k_tile, k_row_stride, dq_base + g * dq_hs + i0 * dq_rs, dq_rs, TileMode::Add);
    }
  }
  for (i64 jj = 0; jj < nc; ++jj) {
    const i64 k_at = p.k_off[b] + kvh * p.k_head_stride + (j0 + jj) * k_row_stride;
    const i64 v_at = p.v_off[b] + kvh * p.v_head_stride + (j0 + jj) * v_row_stride;
    std::memcpy(in.dk + k_at, dka + jj * Dp, static_cast<std::size_t>(D) * sizeof(float));
    std::memcpy(in.dv + v_at, dva + jj * Dvp, static_cast<std::size_t>(Dv) * sizeof(float));
  }
}

struct BwdItem {
  i64 b, kvh, t;
  double cost;
  int chunk;
};

template <class Isa>
void backward_impl(const FlashCall& cm, const float* q, const float* k, const float* v, const float* out,
                   const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  using I = Isa;
  const AttentionProblem& p = cm.p;
  const i64 D = cm.D, G = cm.G;

  // D_i = rowsum(dO * O) and the row's lse (+inf when it sees no key), once per row.
  BwdInputs in{q, k, v, dout, nullptr, nullptr, std::vector<i64>(p.batch), dk, dv};
  i64 rows = 0;
  for (i64 b = 0; b < p.batch; ++b) {
    in.row_base[b] = rows;
    rows += p.hq * p.q_len[b];
  }
  Buf lse_rows(rows), di(rows);
  in.lse = lse_rows.data();
  in.di = di.data();
  std::vector<std::pair<i64, i64>> bh;  // (b, h) with rows
  for (i64 b = 0; b < p.batch; ++b)
    for (i64 h = 0; h < p.hq; ++h)
      if (p.q_len[b] > 0) bh.push_back({b, h});
  const i64 n_bh = static_cast<i64>(bh.size());
  const bool par = total_work(p) >= kParallelMinWork;
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (i64 x = 0; x < n_bh; ++x) {
    const auto [b, h] = bh[x];
    for (i64 i = 0; i < p.q_len[b]; ++i) {
      const i64 off = p.q_off[b] + h * p.q_head_stride + i * p.q_row_stride;
      const i64 o_at = p.o_off[b] + h * p.o_head_stride + i * p.o_row_stride;
      double sum = 0;  // in double: D_i enters every dS of the row
      for (i64 d = 0; d < cm.Dv; ++d) sum += static_cast<double>(dout[o_at + d]) * out[o_at + d];
      const i64 r = in.row_base[b] + h * p.q_len[b] + i;
      const float l = lse[p.lse_off[b] + h * p.lse_head_stride + i];
      di.data()[r] = static_cast<float>(sum);
      lse_rows.data()[r] = l == kNegInf ? std::numeric_limits<float>::infinity() : l;
      std::memset(dq + off, 0, static_cast<std::size_t>(D) * sizeof(float));  // dq is accumulated below
    }
  }

  // Work items (b, kvh, key tile) own their dK, dV rows. dQ: items are cut
  // into one contiguous chunk per thread by estimated cost; a (b, kvh) pair
  // inside one chunk adds into dq directly, a pair cut by chunk boundaries
  // adds into per-chunk buffers summed in chunk order afterwards. The sums'
  // order depends only on the problem and the thread count (determinism).
  const i64 bk = cm.tiles.bwd_keys, bq = cm.tiles.bwd_rows;
  std::vector<BwdItem> items;
  double total = 0;
  for (i64 b = 0; b < p.batch; ++b) {
    const i64 nt = ceil_div(p.k_len[b], bk);
    std::vector<double> tcost(nt, 0.0);
    for (i64 t = 0; t < nt; ++t) {
      const i64 j0 = t * bk, j1 = std::min(p.k_len[b], j0 + bk);
      double c = 0.1;  // packing
      const auto [qa, qb] = cm.query_range(b, j0, j1, bq);
      for (i64 i0 = qa; i0 < qb; i0 += bq) {
        const TileKind kind = cm.classify(b, i0 + p.shift(b), std::min(i0 + bq, qb) - 1 + p.shift(b), j0, j1);
        // (absent tiles of a shared layout cost nothing; per-head maps are counted as present)
        const bool absent = cm.layout != nullptr && cm.layout->heads == 1 && cm.layout_next_row(b, 0, j0, i0) > i0;
        c += kind == TileKind::Skip || absent ? 0.0 : kind == TileKind::Full ? 1.0 : 1.3;
      }
      tcost[t] = c * static_cast<double>(G);
    }
    for (i64 kvh = 0; kvh < p.hkv; ++kvh)
      for (i64 t = 0; t < nt; ++t) {
        items.push_back({b, kvh, t, tcost[t], 0});
        total += tcost[t];
      }
  }
  const i64 n_items = static_cast<i64>(items.size());
  const int n_chunks = static_cast<int>(std::max<i64>(1, std::min<i64>(par ? num_threads() : 1, n_items)));
  {
    double before = 0;
    for (auto& it : items) {
      const double mid = before + 0.5 * it.cost;
      it.chunk = std::min(n_chunks - 1, static_cast<int>(static_cast<double>(n_chunks) * mid / std::max(total, 1e-9)));
      before += it.cost;
    }
  }
  // Pairs cut by a chunk boundary: one zeroed [G, Lq, D] buffer per (pair, chunk).
  struct Shared {
    i64 b, kvh;
    int c0, c1;
    std::vector<Buf> bufs;
  };
  std::vector<Shared> shared;
  std::vector<i64> item_shared(n_items, -1);
  for (i64 x = 0; x < n_items;) {
    i64 y = x;
    while (y < n_items && items[y].b == items[x].b && items[y].kvh == items[x].kvh) ++y;
    if (items[x].chunk != items[y - 1].chunk) {
      Shared sh{items[x].b, items[x].kvh, items[x].chunk, items[y - 1].chunk, {}};
      for (int c = sh.c0; c <= sh.c1; ++c) {
        sh.bufs.emplace_back(G * p.q_len[sh.b] * D);
        sh.bufs.back().zero();
      }
      for (i64 z = x; z < y; ++z) item_shared[z] = static_cast<i64>(shared.size());
      shared.push_back(std::move(sh));
    }
    x = y;
  }
  std::vector<i64> chunk_start(n_chunks + 1, n_items);
  for (i64 x = n_items - 1; x >= 0; --x) chunk_start[items[x].chunk] = x;
  for (int c = n_chunks - 1; c >= 0; --c) chunk_start[c] = std::min(chunk_start[c], chunk_start[c + 1]);

  auto scratch = make_scratch<BwdScratch<I>>(n_chunks, cm);
#pragma omp parallel num_threads(n_chunks) if (n_chunks > 1)
  {
    BwdScratch<I>& sc = *scratch[omp_get_thread_num()];
#pragma omp for schedule(static, 1)
    for (int c = 0; c < n_chunks; ++c) {
      for (i64 x = chunk_start[c]; x < chunk_start[c + 1]; ++x) {
        const BwdItem& it = items[x];
        const i64 j0 = it.t * bk, j1 = std::min(p.k_len[it.b], j0 + bk);
        if (item_shared[x] < 0) {
          bwd_item<I>(cm, in, it.b, it.kvh, j0, j1, dq + p.q_off[it.b] + it.kvh * G * p.q_head_stride,
                      p.q_head_stride, p.q_row_stride, sc);
        } else {
          Shared& sh = shared[item_shared[x]];
          const i64 lq = p.q_len[it.b];
          bwd_item<I>(cm, in, it.b, it.kvh, j0, j1, sh.bufs[c - sh.c0].data(), lq * D, D, sc);
        }
      }
    }
  }
  // dq rows of cut pairs = sum of the chunks' buffers in chunk order.
  for (const Shared& sh : shared) {
    const i64 lq = p.q_len[sh.b], nrows = G * lq;
#pragma omp parallel for schedule(static) if (par)
    for (i64 r = 0; r < nrows; ++r) {
      const i64 g = r / lq, i = r % lq;
      float* dst = dq + p.q_off[sh.b] + (sh.kvh * G + g) * p.q_head_stride + i * p.q_row_stride;
      for (const Buf& bf : sh.bufs) {
        const float* src = bf.data() + r * D;
        for (i64 d = 0; d < D; ++d) dst[d] += src[d];
      }
    }
  }
}

}  // namespace
}  // namespace flash

void flash_attention_backward(const AttentionProblem& p, const float* q, const float* k, const float* v,
                              const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  const flash::FlashCall cm(p, k, v);
  flash::backward_impl<flash::ThisIsa>(cm, q, k, v, out, lse, dout, dq, dk, dv);
}

}  // namespace mf::MF_ISA_NS
