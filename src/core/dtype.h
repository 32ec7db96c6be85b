// Element types. float32 is the compute type; bfloat16 and float16 are
// storage types (converted on load), int32/int64 hold token ids.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace mf {

enum class DType : std::uint8_t { F32, BF16, F16, I32, I64 };

std::size_t dtype_size(DType t);
std::string_view dtype_name(DType t);  // "float32", "bfloat16", ...

// bfloat16: the top 16 bits of an IEEE float32. Conversion rounds to nearest
// even; NaN stays NaN.
struct bf16 {
  std::uint16_t bits;
};
inline float bf16_to_float(bf16 v) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(v.bits) << 16);
}
inline bf16 float_to_bf16(float f) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<std::uint16_t>((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<std::uint16_t>(u >> 16)};
}

// IEEE binary16 <-> float32 (exact for every half value; rounds to nearest even).
float half_to_float(std::uint16_t h);
std::uint16_t float_to_half(float f);

template <typename T>
constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<bf16>() { return DType::BF16; }
template <> constexpr DType dtype_of<std::int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<std::int64_t>() { return DType::I64; }

}  // namespace mf
