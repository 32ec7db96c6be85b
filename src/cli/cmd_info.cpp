// `modformer info`: version, build, compiler, CPU features, BLAS, threads.
#include <iostream>

#include "cli/command.h"
#include "core/cpu_features.h"
#include "core/threads.h"
#include "kernels/gemm.h"

namespace {
int run_info() {
  const auto& f = mf::cpu_features();
  auto yn = [](bool b) { return b ? "yes" : "no"; };
  std::cout << "modformer " << MODFORMER_VERSION << "\n"
            << "build type:   " << MODFORMER_BUILD_TYPE << "\n"
            << "compiler:     g++ " << __VERSION__ << ", C++ " << __cplusplus << "\n"
            << "cpu:          " << f.model_name << "\n"
            << "cpu features: avx2=" << yn(f.avx2) << " fma=" << yn(f.fma) << " avx512f=" << yn(f.avx512f)
            << " avx512bw=" << yn(f.avx512bw) << " avx512_vnni=" << yn(f.avx512_vnni)
            << " avx512_bf16=" << yn(f.avx512_bf16) << " avx_vnni=" << yn(f.avx_vnni) << " amx_bf16=" << yn(f.amx_bf16)
            << "\n"
            << "blas:         " << mf::blas_description() << "\n"
            << "blas core:    " << mf::blas_core_name() << "\n"
            << "gemm backend: " << mf::gemm_backend_selection() << "\n"
            << "threads:      " << mf::num_threads() << "\n";
  return 0;
}
}  // namespace

MF_REGISTER_COMMAND("info", "Print version, build, CPU features, BLAS library and thread count",
                    [](CLI::App&) { return std::function<int()>(run_info); });
