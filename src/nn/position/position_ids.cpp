#include "nn/position/position_ids.h"

#include <algorithm>

namespace mf {

ResolvedPositions resolve_positions(const PositionIds& pos, std::int64_t batch, std::int64_t length, const char* op) {
  ResolvedPositions r;
  r.length = length;
  if (!pos.ids.defined()) {
    MF_CHECK(pos.offset >= 0, "[", op, "] position_offset must be >= 0, got ", pos.offset);
    r.offset = pos.offset;
    r.end = length > 0 ? pos.offset + length : 0;
    return r;
  }
  MF_CHECK(pos.offset == 0, "[", op, "] position_offset must be 0 when explicit positions are given, got ",
           pos.offset);
  MF_CHECK(pos.ids.dtype() == DType::I32, "[", op, "] positions must be int32, got ", dtype_name(pos.ids.dtype()));
  const Shape& s = pos.ids.shape();
  const bool one_d = s == Shape{length};
  MF_CHECK(one_d || s == (Shape{batch, length}), "[", op, "] positions must have shape [", length, "] or [", batch,
           ", ", length, "] but has ", shape_str(s));
  r.keep = pos.ids.contiguous();
  r.ids = r.keep.data<std::int32_t>();
  r.per_batch = !one_d;
  const std::int64_t n = r.keep.numel();
  for (std::int64_t i = 0; i < n; ++i) {
    if (r.ids[i] < 0) {
      if (one_d) fail("[", op, "] positions[", i, "] = ", r.ids[i], " must be >= 0");
      fail("[", op, "] positions[", i / length, ", ", i % length, "] = ", r.ids[i], " must be >= 0");
    }
    r.end = std::max<std::int64_t>(r.end, static_cast<std::int64_t>(r.ids[i]) + 1);
  }
  return r;
}

namespace {
struct RowsGeom {
  std::int64_t B, L, H, sb, sl;
};

RowsGeom rows_geom(const Tensor& x, const Tensor& table, const ResolvedPositions& pos, const char* op,
                   const char* xname, const char* table_name) {
  MF_CHECK(x.dtype() == DType::F32, "[", op, "] ", xname, " must be float32, got ", dtype_name(x.dtype()));
  MF_CHECK(x.dim() == 3, "[", op, "] ", xname, " must have 3 dimensions [B, L, hidden] but has shape ",
           shape_str(x.shape()));
  MF_CHECK(table.dtype() == DType::F32 && table.dim() == 2 && table.is_contiguous(), "[", op, "] ", table_name,
           " must be a contiguous float32 [positions, hidden] tensor, got ", dtype_name(table.dtype()), " ",
           shape_str(table.shape()));
  const RowsGeom g{x.size(0), x.size(1), x.size(2), x.stride(0), x.stride(1)};
  MF_CHECK(g.H == table.size(1), "[", op, "] ", xname, " has hidden size ", g.H, " but ", table_name, " has ",
           table.size(1));
  MF_CHECK(g.H <= 1 || x.stride(2) == 1, "[", op, "] ", xname, " must have a contiguous last dimension (stride 1)");
  MF_CHECK(pos.length == g.L, "[", op, "] positions cover ", pos.length, " rows but ", xname, " has ", g.L);
  MF_CHECK(pos.end <= table.size(0), "[", op, "] position ", pos.end - 1, " >= ", table_name, " ", table.size(0));
  return g;
}
}  // namespace

void add_position_rows(const Tensor& x, const Tensor& table, const ResolvedPositions& pos, const char* op,
                       const char* table_name) {
  const RowsGeom g = rows_geom(x, table, pos, op, "x", table_name);
  if (g.B == 0 || g.L == 0 || g.H == 0) return;
  float* xp = x.data<float>();
  const float* tp = table.data<float>();
  const std::int64_t rows = g.B * g.L, H = g.H;
#pragma omp parallel for schedule(static) if (rows * H > (1 << 15))
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t b = r / g.L, l = r % g.L;
    float* xr = xp + b * g.sb + l * g.sl;
    const float* tr = tp + pos.at(b, l) * H;
#pragma omp simd
    for (std::int64_t i = 0; i < H; ++i) xr[i] += tr[i];
  }
}

void accumulate_position_rows(const Tensor& grad, const Tensor& dy, const ResolvedPositions& pos, const char* op,
                              const char* table_name) {
  const RowsGeom g = rows_geom(dy, grad, pos, op, "dy", table_name);
  if (g.B == 0 || g.L == 0 || g.H == 0) return;
  const float* dp = dy.data<float>();
  float* gp = grad.data<float>();
  constexpr std::int64_t kCols = 64;  // one column block: 256 bytes of each row
  const std::int64_t H = g.H, blocks = (H + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (g.B * g.L * H > (1 << 15))
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    const std::int64_t c0 = blk * kCols, c1 = std::min(H, c0 + kCols);
    for (std::int64_t b = 0; b < g.B; ++b)
      for (std::int64_t l = 0; l < g.L; ++l) {
        const float* dr = dp + b * g.sb + l * g.sl;
        float* gr = gp + pos.at(b, l) * H;
#pragma omp simd
        for (std::int64_t c = c0; c < c1; ++c) gr[c] += dr[c];
      }
  }
}

}  // namespace mf
