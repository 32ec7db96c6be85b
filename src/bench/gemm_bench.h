// `modformer bench gemm`: sgemm GFLOP/s of each backend (OpenBLAS under each
// core type, oneDNN, the reference) on square and attention-like shapes, in
// one run; plus measure_sgemm_gflops, the sgemm roof other benchmarks use.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/gemm.h"

namespace mf::bench {

// Best GFLOP/s (2*m*n*k / best time) of C = op(A) op(B) in this process, on
// fixed pseudo-random data: one warmup call, then the best of `reps`.
double measure_sgemm_gflops(std::int64_t m, std::int64_t n, std::int64_t k, GemmBackend backend = GemmBackend::Auto,
                            int reps = 5, Trans ta = Trans::N, Trans tb = Trans::N);
// The same for several backends on one set of buffers, their repetitions
// interleaved (rep 1 of each, rep 2 of each, ...) so that a noisy machine
// affects them alike. Returns GFLOP/s in the order of `backends`.
std::vector<double> measure_sgemm_gflops_each(std::int64_t m, std::int64_t n, std::int64_t k,
                                              const std::vector<GemmBackend>& backends, int reps = 5,
                                              Trans ta = Trans::N, Trans tb = Trans::N);

struct GemmShape {
  std::int64_t m, n, k;
  bool square() const { return m == n && n == k; }
  std::string label() const;  // "512" or "4096x4096x64" (m x n x k)
};
// "512" -> 512^3; "4096x64x4096" -> m=4096 n=64 k=4096. Throws naming the bad entry.
std::vector<GemmShape> parse_gemm_shapes(const std::vector<std::string>& specs);
std::vector<std::string> default_gemm_shape_specs();

struct GemmBenchOptions {
  std::vector<std::string> sizes = default_gemm_shape_specs();
  int reps = 5;
  std::string json_path, svg_path;  // empty: not written
  bool batched = true;              // also the batched section (loop vs parallel over the batch)
  // The binary re-executed to measure OpenBLAS under another OPENBLAS_CORETYPE
  // (the variable is read when the library loads); empty: no child processes.
  std::string self_exe;
  std::vector<std::string> child_args;  // arguments that reach `bench gemm` in self_exe (before our flags)
};

// Prints the header and tables to stdout (progress to stderr); returns the exit code.
int run_gemm_bench(const GemmBenchOptions& options);
// Child mode: measures OpenBLAS only and prints "MFGEMM core <name>" then one
// "MFGEMM row <m> <n> <k> <gflops>" line per shape on stdout.
int run_gemm_bench_child(const GemmBenchOptions& options);

}  // namespace mf::bench
