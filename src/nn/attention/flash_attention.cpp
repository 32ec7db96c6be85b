// Flash attention: the knobs (which SIMD path runs, tile size validation).
// The kernels are split by stage: flash_geometry.h (tile geometry and
// visibility), flash_forward.cpp (forward and split-KV decode),
// flash_backward.cpp (backward).
#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include "core/error.h"
#include "nn/attention/flash_attention.h"
#include "nn/attention/flash_simd.h"  // MF_FLASH_HAVE_AVX2 / MF_FLASH_HAVE_AVX512

namespace mf {
namespace flash {

std::atomic<int> g_isa{static_cast<int>(FlashIsa::Auto)};

}  // namespace flash

bool flash_isa_available(FlashIsa isa) {
  switch (isa) {
    case FlashIsa::Auto:
    case FlashIsa::Scalar:
      return true;
    case FlashIsa::Avx2:
#ifdef MF_FLASH_HAVE_AVX2
      return true;
#else
      return false;
#endif
    case FlashIsa::Avx512:
#ifdef MF_FLASH_HAVE_AVX512
      return true;
#else
      return false;
#endif
  }
  return false;
}

std::string flash_isa_name(FlashIsa isa) {
  switch (isa) {
    case FlashIsa::Auto:
      return "auto";
    case FlashIsa::Avx512:
      return "avx512";
    case FlashIsa::Avx2:
      return "avx2";
    case FlashIsa::Scalar:
      return "scalar";
  }
  return "?";
}

void set_flash_isa(FlashIsa isa) {
  MF_CHECK(flash_isa_available(isa), "[flash_attention] SIMD path ", flash_isa_name(isa),
           " is not compiled into this build");
  flash::g_isa.store(static_cast<int>(isa));
}

FlashIsa flash_isa() {
  const auto isa = static_cast<FlashIsa>(flash::g_isa.load());
  if (isa != FlashIsa::Auto) return isa;
#if defined(MF_FLASH_HAVE_AVX512)
  return FlashIsa::Avx512;
#elif defined(MF_FLASH_HAVE_AVX2)
  return FlashIsa::Avx2;
#else
  return FlashIsa::Scalar;
#endif
}

void check_flash_tiles(const FlashTiles& t) {
  const std::pair<const char*, std::int64_t> sizes[] = {{"fwd_rows", t.fwd_rows},
                                                         {"fwd_keys", t.fwd_keys},
                                                         {"bwd_rows", t.bwd_rows},
                                                         {"bwd_keys", t.bwd_keys},
                                                         {"split_chunk", t.split_chunk}};
  for (const auto& [name, x] : sizes)
    MF_CHECK(x >= 16 && x % 16 == 0 && x <= 4096, "[flash_attention] tile size ", name,
             " must be a multiple of 16 in [16, 4096], got ", x);
  MF_CHECK(t.small_rows >= 0 && t.small_rows <= t.fwd_rows, "[flash_attention] small_rows must be in [0, fwd_rows], got ",
           t.small_rows);
  MF_CHECK(t.split_min_keys >= 1, "[flash_attention] split_min_keys must be >= 1, got ", t.split_min_keys);
}

}  // namespace mf
