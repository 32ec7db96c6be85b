// `modformer bench attention`: exact attention in one run — the flash kernels
// (forward, forward + backward), the dense reference, an unfused baseline
// (sgemm + softmax + sgemm per head) and sgemm itself at the same shapes;
// plus the decode (flash-decoding vs memory bandwidth, GQA) and sliding-window
// sections, and an optional tile-size sweep (--tune).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mf::bench {

struct AttentionBenchOptions {
  std::vector<std::int64_t> lengths{512, 1024, 2048, 4096, 8192, 16384};
  std::vector<std::int64_t> dims{64, 128};
  int reps = 3;                         // best of reps after one warmup
  std::int64_t dense_max_len = 2048;    // dense reference rows up to this L (L^2 scores, slow loops)
  std::int64_t unfused_max_len = 8192;  // unfused rows up to this L (one head's L^2 scores at a time)
  std::vector<std::int64_t> decode_lengths{4096, 8192, 16384, 32768};
  std::int64_t window_len = 8192;
  std::vector<std::string> sections{"main", "decode", "window"};  // also "tune"
  std::string json_path, svg_path;  // empty: not written
  // Binary re-executed (as `bench gemm --child-openblas-only`) to measure
  // OpenBLAS sgemm under OPENBLAS_CORETYPE=SkylakeX; empty: not measured.
  std::string self_exe;
};

// --quick: lengths {1024, 4096}, d {64, 128}, 2 reps, smaller decode/window sections.
AttentionBenchOptions quick_attention_bench_options();

// Prints the header and tables to stdout (progress on stderr); returns the exit code.
int run_attention_bench(const AttentionBenchOptions& options);

// Memory read bandwidth (bytes/s, best of reps) of all num_threads() threads
// summing disjoint parts of a `bytes` buffer (1 GiB in the decode section;
// use one far larger than the last-level cache). Shared by `bench generate`.
double read_bandwidth_bytes_per_s(int reps, std::int64_t bytes = std::int64_t{1} << 30);

}  // namespace mf::bench
