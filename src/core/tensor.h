// Tensor: a shape, element strides and an offset into shared, 64-byte aligned,
// counted storage. Views (reshape of contiguous data, slice, permute) share
// the storage without copying. Shapes are row-major ("C order").
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace mf {

using Shape = std::vector<std::int64_t>;

std::string shape_str(const Shape& s);  // "[2, 3, 4]"
std::int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

// Owned bytes; counted by the allocation counter (core/alloc.h).
class Storage {
 public:
  explicit Storage(std::size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* data_;
  std::size_t bytes_;
};

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor: defined() is false

  static Tensor empty(const Shape& shape, DType dtype = DType::F32);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32);
  static Tensor full(const Shape& shape, float value);
  // Copies `values` (row-major) into a new float32 tensor of `shape`.
  static Tensor from_vector(const Shape& shape, const std::vector<float>& values);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  std::int64_t offset() const { return offset_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  // Size of dimension d; negative d counts from the end.
  std::int64_t size(int d) const;
  std::int64_t stride(int d) const;
  std::int64_t numel() const { return shape_numel(shape_); }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;

  // Typed element pointer to the first element (checks the dtype).
  template <typename T>
  T* data() const {
    check_dtype(dtype_of<T>(), "data");
    return static_cast<T*>(raw_data());
  }
  void* raw_data() const;

  // Views (share storage).
  Tensor reshape(const Shape& shape) const;  // requires contiguous; one -1 allowed
  Tensor slice(int d, std::int64_t start, std::int64_t end) const;  // [start, end)
  Tensor select(int d, std::int64_t index) const;                   // drops dimension d
  Tensor permute(const std::vector<int>& order) const;
  Tensor transpose(int a, int b) const;

  // Copies.
  Tensor contiguous() const;  // this if already contiguous, else a packed copy
  Tensor clone() const;       // always a new packed copy
  Tensor to(DType dtype) const;  // converts (float32 <-> bf16/f16; int32 <-> int64; ints -> f32)
  void copy_from(const Tensor& src);  // same shape; any strides on either side
  void fill(float value);             // float32 only

  // Element access by multi-index (slow; for tests and small tools).
  float at(std::initializer_list<std::int64_t> idx) const;
  std::vector<float> to_vector() const;  // float32 values in row-major order

  // Throws "[op] tensor 'name' must have shape [..] but has [..]".
  void check_shape(const Shape& expected, const char* op, const char* name) const;
  void check_dtype(DType expected, const char* op) const;

 private:
  std::shared_ptr<Storage> storage_;
  DType dtype_ = DType::F32;
  Shape shape_;
  Shape strides_;  // in elements
  std::int64_t offset_ = 0;  // in elements
};

// Largest absolute elementwise difference of two float32 tensors of one shape.
float max_abs_diff(const Tensor& a, const Tensor& b);

}  // namespace mf
