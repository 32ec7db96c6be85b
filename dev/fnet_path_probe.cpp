// Dev probe for FNet (src/nn/fnet): forward time of the DFT-as-GEMM path and
// our FFT path, and of the same 2-D real FFT built on Debian's kissfft
// (kiss_fftr along hidden, kiss_fft along the sequence, rows/columns in
// parallel) to choose the FFT library; then the DFT/FFT crossover per hidden
// size that feeds kFnetCrossover in src/nn/fnet/fnet.cpp, and fft_columns
// alone by block width (fft_block_width in fnet.cpp). Best of `rounds`,
// the variants interleaved. Not linked into the library.
// build: sh dev/build_probes.sh   run: ./build/fnet_path_probe [rounds]
//
// Measured 2026-11-30 on the 2-core AVX-512 build machine ("Intel Xeon
// Processor", `modformer info`), other builds running. C = 256, ms
// dft / fft / kissfft, 2 threads (load 2.5) and OMP_NUM_THREADS=1 (load 2.6):
//   L       2 threads                 1 thread
//   128     0.154 / 0.103 / 0.307     0.165 / 0.086 / 0.334
//   256     0.401 / 0.205 / 0.607     0.442 / 0.194 / 0.632
//   512     1.10  / 0.361 / 1.34      1.39  / 0.395 / 1.41
//   1024    3.56  / 0.853 / 2.60      4.82  / 0.902 / 2.75
//   2048    8.98  / 1.60  / 3.66      18.5  / 2.33  / 7.47
//   4096    117   / 4.06  / 8.13      184   / 5.96  / 16.5
//   8192    501   / 8.38  / 18.0      687   / 14.7  / 37.0
// Our FFT is 2-3.9x faster than kissfft, so kissfft is not a dependency.
// At higher load the 2-thread figures are dominated by 4-20 ms stalls of
// every parallel region (a preempted thread at the join): rerun when quiet.
// The crossover rows are quoted in src/nn/fnet/fnet.cpp.
#include <kissfft/kiss_fft.h>
#include <kissfft/kiss_fftr.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "core/rng.h"
#include "nn/fnet/fnet.h"
#include "nn/fnet/fnet_fft.h"

using namespace mf;

namespace {

double seconds(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// y = Re(FFT_L(FFT_C(x))) for one [L, C] matrix with kissfft (C even): the
// real FFT of each row (half spectrum), then each column's complex FFT,
// mirrored into the other half as in fnet.cpp.
struct KissFnet {
  std::int64_t L, C, K;
  std::vector<kiss_fftr_cfg> row_cfgs;  // kiss_fftr keeps scratch in its cfg: one per thread
  kiss_fft_cfg col_cfg;
  std::vector<kiss_fft_cpx> half;  // [L, K]
  KissFnet(std::int64_t l, std::int64_t c) : L(l), C(c), K(c / 2 + 1), half(static_cast<std::size_t>(l * K)) {
    for (int t = 0; t < omp_get_max_threads(); ++t) row_cfgs.push_back(kiss_fftr_alloc(static_cast<int>(C), 0, nullptr, nullptr));
    col_cfg = kiss_fft_alloc(static_cast<int>(L), 0, nullptr, nullptr);
  }
  ~KissFnet() {
    for (auto c : row_cfgs) kiss_fftr_free(c);
    kiss_fft_free(col_cfg);
  }
  void run(float* y, const float* x) {
#pragma omp parallel for schedule(static)
    for (std::int64_t l = 0; l < L; ++l) kiss_fftr(row_cfgs[omp_get_thread_num()], x + l * C, &half[l * K]);
#pragma omp parallel
    {
      std::vector<kiss_fft_cpx> in(static_cast<std::size_t>(L)), out(in.size());
#pragma omp for schedule(static)
      for (std::int64_t k = 0; k < K; ++k) {
        for (std::int64_t l = 0; l < L; ++l) in[l] = half[l * K + k];
        kiss_fft(col_cfg, in.data(), out.data());
        for (std::int64_t m = 0; m < L; ++m) {
          y[m * C + k] = out[m].r;
          if (k >= 1 && C - k > C / 2) y[((L - m) % L) * C + C - k] = out[m].r;
        }
      }
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 3;
  std::printf("threads %d, rounds %d, B = 1\n\n", omp_get_max_threads(), rounds);

  std::printf("paths at C = 256 (ms; ratios to our FFT)\n%6s %10s %10s %10s %9s %9s\n", "L", "dft", "fft", "kissfft",
              "dft/fft", "kiss/fft");
  for (std::int64_t L = 128; L <= 8192; L *= 2) {
    const std::int64_t C = 256;
    const Tensor x = randn({1, L, C}, 1);
    Tensor y = Tensor::empty({1, L, C}), yk = Tensor::empty({1, L, C});
    KissFnet kiss(L, C);
    double dft = 1e30, fft = 1e30, kf = 1e30;
    const int r = L >= 4096 ? std::min(rounds, 2) : rounds;
    for (int i = 0; i < r; ++i) {
      dft = std::min(dft, seconds([&] { fnet_forward(y, x, 1, L, FnetPath::Dft); }));
      fft = std::min(fft, seconds([&] { fnet_forward(y, x, 1, L, FnetPath::Fft); }));
      kf = std::min(kf, seconds([&] { kiss.run(yk.data<float>(), x.data<float>()); }));
    }
    std::printf("%6ld %10.3f %10.3f %10.3f %9.2f %9.2f   (|kiss - ours| %.2g)\n", static_cast<long>(L), dft * 1e3,
                fft * 1e3, kf * 1e3, dft / fft, kf / fft, static_cast<double>(max_abs_diff(y, yk)));
  }

  std::printf("\nfft_columns alone (one thread): GFLOP/s (5 n log2 n per column) by block width\n");
  for (std::int64_t n : {64, 128, 256, 512, 1024, 2048, 4096, 8192}) {
    std::printf("n %5ld:", static_cast<long>(n));
    const auto plan = fnet::fft_plan(n);
    for (std::int64_t w : {8, 16, 32}) {
      std::vector<float> re(static_cast<std::size_t>(n * w), 1.0f), im(re.size(), 0.5f), wr(re.size()), wi(re.size());
      double best = 1e30;
      for (int i = 0; i < 20 * rounds; ++i)
        best = std::min(best, seconds([&] { fnet::fft_columns(*plan, re.data(), im.data(), wr.data(), wi.data(), w); }));
      std::printf("  w %2ld: %6.1f", static_cast<long>(w), 5.0 * n * std::log2(double(n)) * w / best * 1e-9);
    }
    std::printf("\n");
  }

  std::printf("\ncrossover: smallest L (powers of 2) from which fft < dft at every longer L, per C (ms dft/fft)\n");
  for (std::int64_t C : {64, 128, 256, 512, 1024}) {
    std::printf("C %5ld:", static_cast<long>(C));
    long crossover = -1;
    for (std::int64_t L = 8; L <= 1024; L *= 2) {
      const Tensor x = randn({1, L, C}, 2);
      Tensor y = Tensor::empty({1, L, C});
      double dft = 1e30, fft = 1e30;
      for (int i = 0; i < rounds + 2; ++i) {
        dft = std::min(dft, seconds([&] { fnet_forward(y, x, 1, L, FnetPath::Dft); }));
        fft = std::min(fft, seconds([&] { fnet_forward(y, x, 1, L, FnetPath::Fft); }));
      }
      std::printf(" L%ld %.3f/%.3f", static_cast<long>(L), dft * 1e3, fft * 1e3);
      if (fft >= dft) crossover = -1;
      if (crossover < 0 && fft < dft) crossover = static_cast<long>(L);
    }
    std::printf("  -> fft from L = %ld\n", crossover);
  }
}
