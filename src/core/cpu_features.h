// What the CPU offers (cpuid) and which BLAS the engine linked, for
// `modformer info` and the benchmarks' headers.
#pragma once
#include <string>

namespace mf {

struct CpuFeatures {
  std::string model_name;
  bool avx2 = false, fma = false, avx512f = false, avx512bw = false, avx512vl = false;
  bool avx512_vnni = false, avx512_bf16 = false, avx_vnni = false, amx_bf16 = false;
};
const CpuFeatures& cpu_features();

// "OpenBLAS 0.3.21 ... (core: Haswell)" from openblas_get_config/corename.
std::string blas_description();
std::string blas_core_name();

}  // namespace mf
