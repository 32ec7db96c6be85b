// NumPy .npy files (format versions 1.0-3.0; float32, int32, int64, and bool,
// uint8, int8 read as int32; C order, little-endian). Reading validates magic, header length, the header dict,
// dtype, shape vs file size; writing goes through write_file_atomic.
#pragma once
#include <string>

#include "core/tensor.h"

namespace mf {

Tensor load_npy(const std::string& path);
void save_npy(const std::string& path, const Tensor& t);  // float32, int32 or int64

// Parses .npy bytes already in memory; `name` is used in error messages.
Tensor parse_npy(const std::string& bytes, const std::string& name);

}  // namespace mf
