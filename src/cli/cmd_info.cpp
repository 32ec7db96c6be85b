// `modformer info`: version, build, compiler, CPU features, the kernels' instruction
// set (detected and chosen), BLAS, threads.
#include <cstdlib>
#include <iostream>
#include <string>

#include "cli/command.h"
#include "cli/info.h"
#include "core/cpu_features.h"
#include "core/isa.h"
#include "core/threads.h"
#include "kernels/gemm.h"

namespace mf::cli {
namespace {
// "avx512 (detected avx512; MODFORMER_ISA unset; compiled: scalar avx2 avx512; baseline -march=native)".
// main() has already refused a bad MODFORMER_ISA.
std::string isa_line() {
  const char* env = std::getenv("MODFORMER_ISA");
  const std::string cap = env && *env ? "MODFORMER_ISA=" + std::string(env) + " caps it" : "MODFORMER_ISA unset";
  return mf::isa_name(mf::active_isa()) + " (detected " + mf::isa_name(mf::detected_isa()) + "; " + cap +
         "; compiled: scalar avx2 avx512; baseline " + MODFORMER_ARCH + ")";
}
}  // namespace

void print_build_info(std::ostream& out) {
  const auto& f = mf::cpu_features();
  auto yn = [](bool b) { return b ? "yes" : "no"; };
  out << "modformer " << MODFORMER_VERSION << "\n"
            << "build type:   " << MODFORMER_BUILD_TYPE << "\n"
            << "compiler:     g++ " << __VERSION__ << ", C++ " << __cplusplus << "\n"
            << "cpu:          " << f.model_name << "\n"
            << "cpu features: avx2=" << yn(f.avx2) << " fma=" << yn(f.fma) << " avx512f=" << yn(f.avx512f)
            << " avx512bw=" << yn(f.avx512bw) << " avx512_vnni=" << yn(f.avx512_vnni)
            << " avx512_bf16=" << yn(f.avx512_bf16) << " avx_vnni=" << yn(f.avx_vnni) << " amx_bf16=" << yn(f.amx_bf16)
            << "\n"
            << "kernels isa:  " << isa_line() << "\n"
            << "blas:         " << mf::blas_description() << "\n"
            << "blas core:    " << mf::blas_core_name() << "\n"
            << "gemm backend: " << mf::gemm_backend_selection() << "\n"
            << "threads:      " << mf::num_threads() << "\n";
}
}  // namespace mf::cli

namespace {
int run_info() {
  mf::cli::print_build_info(std::cout);
  return 0;
}
}  // namespace

MF_REGISTER_COMMAND("info", "Print version, build, CPU features, BLAS library and thread count",
                    [](CLI::App&) { return std::function<int()>(run_info); });
