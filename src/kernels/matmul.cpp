// matmul: shape checks, then one gemm or gemm_batched call. An operand is
// passed without copying when its last two axes are a row-major matrix
// (stride 1 on the last axis) or a transposed one (stride 1 on the row axis).
#include "kernels/matmul.h"

#include <algorithm>

namespace mf {
namespace {

const char* tname(Trans t) { return t == Trans::N ? "N" : "T"; }
Trans flip(Trans t) { return t == Trans::N ? Trans::T : Trans::N; }

// A 2-D or 3-D tensor seen as (batch of) row-major matrices for gemm.
struct Operand {
  Tensor holder;  // keeps a copy alive when one was needed
  const float* data = nullptr;
  std::int64_t ld = 0, batch_stride = 0;
  Trans trans = Trans::N;
};

// `rows` x `cols` is the stored matrix shape (last two axes).
Operand as_operand(const Tensor& t, Trans trans) {
  Operand o;
  o.holder = t;
  o.trans = trans;
  const std::int64_t rows = t.size(-2), cols = t.size(-1);
  const std::int64_t s_row = t.stride(-2), s_col = t.stride(-1);
  if (s_col == 1 && s_row >= std::max<std::int64_t>(1, cols)) {
    o.ld = s_row;  // row-major (possibly with padded rows)
  } else if (s_row == 1 && s_col >= std::max<std::int64_t>(1, rows)) {
    o.ld = s_col;  // a transposed view: the same memory read as the transpose
    o.trans = flip(trans);
  } else {
    o.holder = t.contiguous();
    o.ld = std::max<std::int64_t>(1, cols);
  }
  o.data = o.holder.data<float>();
  o.batch_stride = o.holder.dim() == 3 ? o.holder.stride(0) : 0;  // 0 for a 2-D operand: broadcast
  return o;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, Trans ta, Trans tb) {
  MF_CHECK(a.defined(), "[matmul] tensor 'a' is undefined");
  MF_CHECK(b.defined(), "[matmul] tensor 'b' is undefined");
  a.check_dtype(DType::F32, "matmul");
  b.check_dtype(DType::F32, "matmul");
  auto describe = [&] {
    return str_cat("a ", shape_str(a.shape()), " (", tname(ta), ") and b ", shape_str(b.shape()), " (", tname(tb),
                   ")");
  };
  MF_CHECK((a.dim() == 2 || a.dim() == 3) && (b.dim() == 2 || b.dim() == 3), "[matmul] operands must be 2-D or 3-D, got ",
           describe());
  const std::int64_t m = ta == Trans::N ? a.size(-2) : a.size(-1);
  const std::int64_t ka = ta == Trans::N ? a.size(-1) : a.size(-2);
  const std::int64_t kb = tb == Trans::N ? b.size(-2) : b.size(-1);
  const std::int64_t n = tb == Trans::N ? b.size(-1) : b.size(-2);
  MF_CHECK(ka == kb, "[matmul] inner dimensions differ (", ka, " vs ", kb, ") for ", describe());
  const bool batched = a.dim() == 3 || b.dim() == 3;
  std::int64_t batch = 1;
  if (batched) {
    batch = a.dim() == 3 ? a.size(0) : b.size(0);
    MF_CHECK(a.dim() != 3 || b.dim() != 3 || a.size(0) == b.size(0), "[matmul] batch sizes differ (", a.size(0),
             " vs ", b.size(0), ") for ", describe());
  }
  Tensor c = batched ? Tensor::empty({batch, m, n}) : Tensor::empty({m, n});
  if (c.numel() == 0) return c;
  const Operand oa = as_operand(a, ta);
  const Operand ob = as_operand(b, tb);
  float* cp = c.data<float>();
  if (!batched) {
    gemm(oa.trans, ob.trans, m, n, ka, 1.0f, oa.data, oa.ld, ob.data, ob.ld, 0.0f, cp, n);
  } else {
    gemm_batched(oa.trans, ob.trans, m, n, ka, 1.0f, oa.data, oa.ld, oa.batch_stride, ob.data, ob.ld,
                 ob.batch_stride, 0.0f, cp, n, m * n, batch);
  }
  return c;
}

}  // namespace mf
