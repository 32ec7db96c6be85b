#include "core/tensor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "core/alloc.h"
#include "core/profile.h"

namespace mf {

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(s[i]);
  }
  return out + "]";
}

std::int64_t shape_numel(const Shape& s) {
  std::int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  std::int64_t acc = 1;
  for (std::size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

Storage::Storage(std::size_t bytes) : data_(aligned_alloc_counted(bytes)), bytes_(bytes) {}
Storage::~Storage() { aligned_free_counted(data_, bytes_); }

namespace {
void check_new_shape(const Shape& shape) {
  // Reject negative dims and element counts whose byte size overflows.
  std::int64_t n = 1;
  for (auto d : shape) {
    MF_CHECK(d >= 0, "[tensor] negative dimension in shape ", shape_str(shape));
    MF_CHECK(d == 0 || n <= std::numeric_limits<std::int64_t>::max() / 8 / d,
             "[tensor] shape ", shape_str(shape), " is too large");
    n *= d;
  }
}
int wrap_dim(int d, int ndim, const char* op) {
  const int w = d < 0 ? d + ndim : d;
  MF_CHECK(w >= 0 && w < ndim, "[", op, "] dimension ", d, " out of range for a ", ndim, "-d tensor");
  return w;
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  check_new_shape(shape);
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.storage_ = std::make_shared<Storage>(static_cast<std::size_t>(shape_numel(shape)) * dtype_size(dtype));
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  if (t.nbytes()) std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::full(const Shape& shape, float value) {
  Tensor t = empty(shape, DType::F32);
  t.fill(value);
  return t;
}

Tensor Tensor::from_vector(const Shape& shape, const std::vector<float>& values) {
  MF_CHECK(static_cast<std::int64_t>(values.size()) == shape_numel(shape), "[tensor] from_vector: ",
           values.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(shape, DType::F32);
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(float));
  return t;
}

std::int64_t Tensor::size(int d) const { return shape_[wrap_dim(d, dim(), "size")]; }
std::int64_t Tensor::stride(int d) const { return strides_[wrap_dim(d, dim(), "stride")]; }

bool Tensor::is_contiguous() const {
  std::int64_t acc = 1;
  for (int i = dim() - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[i] != acc) return false;
    acc *= shape_[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  MF_CHECK(defined(), "[tensor] access to an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<std::int64_t>(dtype_size(dtype_));
}

Tensor Tensor::reshape(const Shape& shape) const {
  MF_CHECK(is_contiguous(), "[reshape] tensor of shape ", shape_str(shape_), " is not contiguous");
  Shape s = shape;
  int infer = -1;
  std::int64_t known = 1;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      MF_CHECK(infer < 0, "[reshape] more than one -1 in ", shape_str(shape));
      infer = static_cast<int>(i);
    } else {
      MF_CHECK(s[i] >= 0, "[reshape] negative dimension in ", shape_str(shape));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    MF_CHECK(known != 0 && numel() % known == 0, "[reshape] cannot reshape ", shape_str(shape_), " to ",
             shape_str(shape));
    s[infer] = numel() / known;
  }
  MF_CHECK(shape_numel(s) == numel(), "[reshape] cannot reshape ", shape_str(shape_), " (", numel(),
           " elements) to ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::slice(int d, std::int64_t start, std::int64_t end) const {
  d = wrap_dim(d, dim(), "slice");
  MF_CHECK(0 <= start && start <= end && end <= shape_[d], "[slice] range [", start, ", ", end,
           ") out of bounds for dimension ", d, " of size ", shape_[d]);
  Tensor t = *this;
  t.offset_ += start * strides_[d];
  t.shape_[d] = end - start;
  return t;
}

Tensor Tensor::select(int d, std::int64_t index) const {
  d = wrap_dim(d, dim(), "select");
  MF_CHECK(0 <= index && index < shape_[d], "[select] index ", index, " out of bounds for dimension ", d,
           " of size ", shape_[d]);
  Tensor t = *this;
  t.offset_ += index * strides_[d];
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::permute(const std::vector<int>& order) const {
  MF_CHECK(static_cast<int>(order.size()) == dim(), "[permute] order has ", order.size(),
           " entries for a ", dim(), "-d tensor");
  std::vector<bool> seen(dim(), false);
  Tensor t = *this;
  for (int i = 0; i < dim(); ++i) {
    const int o = wrap_dim(order[i], dim(), "permute");
    MF_CHECK(!seen[o], "[permute] dimension ", o, " repeated");
    seen[o] = true;
    t.shape_[i] = shape_[o];
    t.strides_[i] = strides_[o];
  }
  return t;
}

Tensor Tensor::transpose(int a, int b) const {
  std::vector<int> order(dim());
  std::iota(order.begin(), order.end(), 0);
  std::swap(order[wrap_dim(a, dim(), "transpose")], order[wrap_dim(b, dim(), "transpose")]);
  return permute(order);
}

namespace {
// Calls f(dst_elem_index, src_elem_offset) over all elements in row-major order.
template <typename F>
void for_each_offset(const Shape& shape, const Shape& strides, std::int64_t base, F&& f) {
  const std::int64_t n = shape_numel(shape);
  if (n == 0) return;
  const int nd = static_cast<int>(shape.size());
  std::vector<std::int64_t> idx(nd, 0);
  std::int64_t off = base;
  for (std::int64_t i = 0; i < n; ++i) {
    f(i, off);
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) {
        off += strides[d];
        break;
      }
      off -= strides[d] * (shape[d] - 1);
      idx[d] = 0;
    }
  }
}
}  // namespace

void Tensor::copy_from(const Tensor& src) {
  const profile::Scope timer(profile::Category::Copy);
  MF_CHECK(src.shape_ == shape_, "[copy] shape mismatch: destination ", shape_str(shape_), ", source ",
           shape_str(src.shape_));
  MF_CHECK(src.dtype_ == dtype_, "[copy] dtype mismatch: destination ", dtype_name(dtype_), ", source ",
           dtype_name(src.dtype_));
  const std::size_t es = dtype_size(dtype_);
  if (is_contiguous() && src.is_contiguous()) {
    if (nbytes()) std::memmove(raw_data(), src.raw_data(), nbytes());
    return;
  }
  // Gather the source in row-major order, then scatter into this tensor.
  std::vector<char> tmp(nbytes());
  const char* sbase = static_cast<const char*>(src.storage_->data());
  for_each_offset(src.shape_, src.strides_, src.offset_, [&](std::int64_t i, std::int64_t off) {
    std::memcpy(tmp.data() + i * es, sbase + off * es, es);
  });
  char* dbase = static_cast<char*>(storage_->data());
  for_each_offset(shape_, strides_, offset_, [&](std::int64_t i, std::int64_t off) {
    std::memcpy(dbase + off * es, tmp.data() + i * es, es);
  });
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(DType target) const {
  if (target == dtype_) return clone();
  const Tensor src = contiguous();
  Tensor out = empty(shape_, target);
  const std::int64_t n = numel();
  auto load = [&](std::int64_t i) -> double {
    switch (dtype_) {
      case DType::F32: return static_cast<const float*>(src.raw_data())[i];
      case DType::BF16: return bf16_to_float(static_cast<const bf16*>(src.raw_data())[i]);
      case DType::F16: return half_to_float(static_cast<const std::uint16_t*>(src.raw_data())[i]);
      case DType::I32: return static_cast<const std::int32_t*>(src.raw_data())[i];
      case DType::I64: return static_cast<double>(static_cast<const std::int64_t*>(src.raw_data())[i]);
    }
    return 0;
  };
  const bool int_to_int = (dtype_ == DType::I32 || dtype_ == DType::I64) &&
                          (target == DType::I32 || target == DType::I64);
  if (int_to_int) {
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t v = dtype_ == DType::I32 ? static_cast<const std::int32_t*>(src.raw_data())[i]
                                                  : static_cast<const std::int64_t*>(src.raw_data())[i];
      if (target == DType::I32) {
        MF_CHECK(v >= std::numeric_limits<std::int32_t>::min() && v <= std::numeric_limits<std::int32_t>::max(),
                 "[to] value ", v, " at index ", i, " does not fit in int32");
        static_cast<std::int32_t*>(out.raw_data())[i] = static_cast<std::int32_t>(v);
      } else {
        static_cast<std::int64_t*>(out.raw_data())[i] = v;
      }
    }
    return out;
  }
  MF_CHECK(target == DType::F32 || target == DType::BF16 || target == DType::F16, "[to] conversion from ",
           dtype_name(dtype_), " to ", dtype_name(target), " is not supported");
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(load(i));
    switch (target) {
      case DType::F32: static_cast<float*>(out.raw_data())[i] = v; break;
      case DType::BF16: static_cast<bf16*>(out.raw_data())[i] = float_to_bf16(v); break;
      case DType::F16: static_cast<std::uint16_t*>(out.raw_data())[i] = float_to_half(v); break;
      default: break;
    }
  }
  return out;
}

void Tensor::fill(float value) {
  check_dtype(DType::F32, "fill");
  float* base = static_cast<float*>(storage_->data());
  if (is_contiguous()) {
    std::fill(data<float>(), data<float>() + numel(), value);
    return;
  }
  for_each_offset(shape_, strides_, offset_, [&](std::int64_t, std::int64_t off) { base[off] = value; });
}

float Tensor::at(std::initializer_list<std::int64_t> idx) const {
  check_dtype(DType::F32, "at");
  MF_CHECK(static_cast<int>(idx.size()) == dim(), "[at] ", idx.size(), " indices for a ", dim(), "-d tensor");
  std::int64_t off = offset_;
  int d = 0;
  for (auto i : idx) {
    MF_CHECK(i >= 0 && i < shape_[d], "[at] index ", i, " out of bounds for dimension ", d, " of size ",
             shape_[d]);
    off += i * strides_[d++];
  }
  return static_cast<const float*>(storage_->data())[off];
}

std::vector<float> Tensor::to_vector() const {
  check_dtype(DType::F32, "to_vector");
  const Tensor c = contiguous();
  return std::vector<float>(c.data<float>(), c.data<float>() + numel());
}

void Tensor::check_shape(const Shape& expected, const char* op, const char* name) const {
  MF_CHECK(defined(), "[", op, "] tensor '", name, "' is undefined");
  MF_CHECK(shape_ == expected, "[", op, "] tensor '", name, "' must have shape ", shape_str(expected),
           " but has ", shape_str(shape_));
}

void Tensor::check_dtype(DType expected, const char* op) const {
  MF_CHECK(defined(), "[", op, "] tensor is undefined");
  MF_CHECK(dtype_ == expected, "[", op, "] expected a ", dtype_name(expected), " tensor but got ",
           dtype_name(dtype_));
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  MF_CHECK(a.shape() == b.shape(), "[max_abs_diff] shapes differ: ", shape_str(a.shape()), " vs ",
           shape_str(b.shape()));
  const auto va = a.to_vector();
  const auto vb = b.to_vector();
  float m = 0;
  for (std::size_t i = 0; i < va.size(); ++i) {
    const float d = std::fabs(va[i] - vb[i]);
    if (std::isnan(d)) return std::numeric_limits<float>::infinity();
    m = std::max(m, d);
  }
  return m;
}

}  // namespace mf
