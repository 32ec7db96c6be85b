// safetensors files (https://github.com/huggingface/safetensors format):
// u64 little-endian header size N, N bytes of JSON {name: {dtype, shape,
// data_offsets}, "__metadata__": {str: str}}, then the data. Supported
// dtypes: F32, BF16, F16, I32, I64 (kept as stored; Tensor::to converts).
// Reading validates everything (header size, JSON, dtypes, shapes vs byte
// ranges, offsets in range, contiguous and non-overlapping, absurd sizes).
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace mf {

struct SafetensorsContents {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

SafetensorsContents load_safetensors(const std::string& path);
SafetensorsContents parse_safetensors(const std::string& bytes, const std::string& name);

// Writes tensors in the given order (names must be unique); atomic.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace mf
