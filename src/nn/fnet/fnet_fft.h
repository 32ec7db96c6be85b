// The FFT behind FNet's Fft path: a complex DFT of any length along the first
// axis of split re/im arrays [n, width], vectorized across the `width`
// columns (every butterfly is a contiguous loop over them). Stockham
// autosort, mixed radix (4, 2, then odd primes up to kMaxDirectRadix as
// plain radix-p butterflies); lengths with a larger prime factor go through
// Bluestein's chirp-z algorithm on a power-of-two length.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace mf::fnet {

inline constexpr std::int64_t kMaxDirectRadix = 31;  // radix-p butterflies cost p per output

struct FftStage {
  std::int64_t radix = 0, n = 0;           // this stage splits length n by radix
  std::vector<float> tw_re, tw_im;         // [n / radix, radix]: exp(-2 pi i q r / n)
  std::vector<float> dft_re, dft_im;       // [radix, radix]: exp(-2 pi i j r / radix) (odd radices)
};

struct FftPlan {
  std::int64_t n = 0;
  std::vector<FftStage> stages;  // Stockham stages, in order (empty when Bluestein)
  // Bluestein: X_k = w_k sum_j (x_j w_j) conj(w_{k-j}), w_k = exp(-i pi k^2 / n),
  // the convolution done by FFTs of the power-of-two length m >= 2n - 1.
  bool bluestein = false;
  std::int64_t m = 0;
  std::vector<float> chirp_re, chirp_im;    // [n]: w_k
  std::vector<float> filter_re, filter_im;  // [m]: FFT_m(conj w, wrapped) / m
  std::shared_ptr<const FftPlan> inner;     // the length-m plan
};

// The plan for length n >= 1, built once per length (thread-safe cache).
std::shared_ptr<const FftPlan> fft_plan(std::int64_t n);

// In place: (re, im)[k, :] = sum_j (re, im)[j, :] exp(-2 pi i j k / n), for
// arrays [n, width]; work_re / work_im are scratch of the same size.
void fft_columns(const FftPlan& plan, float* re, float* im, float* work_re, float* work_im, std::int64_t width);

}  // namespace mf::fnet
