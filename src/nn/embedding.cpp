// Embedding lookup and scatter-add backward (the input layer of every LM).
// Token ids are validated once at the front door, naming the bad position.
#include "nn/embedding.h"

#include <algorithm>
#include <cstring>

#include "core/profile.h"

namespace mf {

namespace {

constexpr const char* kOp = "[embedding]";

std::string index_str(const Shape& shape, std::int64_t flat) {
  std::string s = "]";
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    const std::int64_t n = shape[d] > 0 ? shape[d] : 1;
    s = (d == 0 ? "[" : ", ") + std::to_string(flat % n) + s;
    flat /= n;
  }
  return shape.empty() ? "[]" : s;
}

void check_args(const Tensor& rows, const Tensor& tokens, const Tensor& table, const char* rows_name) {
  MF_CHECK(tokens.dtype() == DType::I32, kOp, " tokens must be int32 but are ", dtype_name(tokens.dtype()));
  MF_CHECK(tokens.is_contiguous(), kOp, " tokens must be contiguous");
  MF_CHECK(table.dtype() == DType::F32 && table.dim() == 2 && table.is_contiguous(), kOp,
           " table must be a contiguous float32 [V, C] tensor but has shape ", shape_str(table.shape()));
  MF_CHECK(rows.dtype() == DType::F32 && rows.is_contiguous(), kOp, " ", rows_name, " must be contiguous float32");
  rows.check_shape({tokens.numel(), table.size(1)}, "embedding", rows_name);
}

}  // namespace

void check_token_ids(const Tensor& tokens, std::int64_t vocab_size, const char* op) {
  MF_CHECK(tokens.dtype() == DType::I32 || tokens.dtype() == DType::I64, op, " token ids must be int32 or int64 but are ",
           dtype_name(tokens.dtype()));
  const Tensor t = tokens.contiguous();
  const std::int64_t n = t.numel();
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t id = t.dtype() == DType::I32 ? t.data<std::int32_t>()[i] : t.data<std::int64_t>()[i];
    MF_CHECK(id >= 0 && id < vocab_size, op, " token id ", id, " at position ", index_str(t.shape(), i),
             " is out of range [0, ", vocab_size, ")");
  }
}

void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& table) {
  const profile::Scope timer(profile::Category::Embedding);
  check_args(out, tokens, table, "out");
  check_token_ids(tokens, table.size(0), kOp);
  const std::int64_t n = tokens.numel(), c = table.size(1);
  const std::int32_t* tok = tokens.data<std::int32_t>();
  const float* w = table.data<float>();
  float* y = out.data<float>();
#pragma omp parallel for schedule(static) if (n * c >= (1 << 15))
  for (std::int64_t i = 0; i < n; ++i) std::memcpy(y + i * c, w + tok[i] * c, sizeof(float) * c);
}

void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& tokens) {
  const profile::Scope timer(profile::Category::Embedding);
  check_args(dout, tokens, dtable, "dout");
  check_token_ids(tokens, dtable.size(0), kOp);
  const std::int64_t n = tokens.numel(), c = dtable.size(1);
  const std::int32_t* tok = tokens.data<std::int32_t>();
  const float* dy = dout.data<float>();
  float* dw = dtable.data<float>();
  // Each thread owns a block of columns and adds the tokens in order: every
  // row of dtable gets its sum in one fixed order, whatever the thread count.
  constexpr std::int64_t kBlock = 64;
  const std::int64_t blocks = (c + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n * c >= (1 << 15))
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::int64_t c0 = b * kBlock, c1 = std::min(c, c0 + kBlock);
    for (std::int64_t i = 0; i < n; ++i) {
      float* row = dw + tok[i] * c;
      const float* g = dy + i * c;
      for (std::int64_t j = c0; j < c1; ++j) row[j] += g[j];
    }
  }
}

}  // namespace mf
