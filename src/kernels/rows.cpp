// Front-door checks shared by the row kernels (see rows.h).
#include "kernels/rows.h"

namespace mf::kernels {

namespace {
void check_f32(const Tensor& x, const char* op, const char* name) {
  MF_CHECK(x.defined(), "[", op, "] tensor '", name, "' is undefined");
  MF_CHECK(x.dtype() == DType::F32, "[", op, "] tensor '", name, "' must be float32 but is ",
           dtype_name(x.dtype()));
}
}  // namespace

Tensor contiguous_f32(const Tensor& x, const char* op, const char* name) {
  check_f32(x, op, name);
  return x.contiguous();
}

RowsView as_rows(const Tensor& x, const char* op, const char* name) {
  check_f32(x, op, name);
  MF_CHECK(x.dim() >= 1, "[", op, "] tensor '", name, "' must have at least 1 dimension but has 0");
  RowsView v;
  v.t = x.contiguous();
  v.n = x.size(-1);
  v.rows = shape_numel(leading_shape(x.shape()));
  return v;
}

void check_same_shape(const Tensor& x, const Shape& shape, const char* op, const char* name) {
  check_f32(x, op, name);
  x.check_shape(shape, op, name);
}

void check_vector(const Tensor& p, std::int64_t n, const char* op, const char* name) {
  check_f32(p, op, name);
  MF_CHECK(p.dim() == 1, "[", op, "] tensor '", name, "' must have 1 dimension but has ", p.dim(), " (shape ",
           shape_str(p.shape()), ")");
  MF_CHECK(p.size(0) == n, "[", op, "] tensor '", name, "' must have shape [", n, "] but has ",
           shape_str(p.shape()));
  MF_CHECK(p.is_contiguous(), "[", op, "] tensor '", name, "' must be contiguous");
}

Shape leading_shape(const Shape& s) { return s.empty() ? Shape{} : Shape(s.begin(), s.end() - 1); }

}  // namespace mf::kernels
