// FNet token mixing (Lee-Thorp et al., "FNet: Mixing Tokens with Fourier
// Transforms", 2021): y = Re(DFT_seq(DFT_hidden(x))), the real part taken once
// after the 2-D transform (the survey's snippet takes it in between: a
// different function). No parameters; the map is linear and self-adjoint, so
// the backward is the same transform applied to dy.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace mf {

// Dft: two real GEMM stages with cached cos/sin matrices (fast for short
// lengths, as the paper does on TPUs). Fft: our own vectorized mixed-radix
// FFT (Bluestein for lengths with a prime factor > 31). Auto: chosen per
// (seq_len, hidden) by the measured crossover table in fnet.cpp.
enum class FnetPath { Auto, Dft, Fft };

// y [B, L, C] (written) = Re(F_L x_b F_C) for each b; x [B, L, C].
// Inputs may be given as [B*L, C] with batch/seq_len. y must not alias x.
void fnet_forward(const Tensor& y, const Tensor& x, std::int64_t batch, std::int64_t seq_len,
                  FnetPath path = FnetPath::Auto);
// dx [B, L, C] (overwritten) = the same transform of dy [B, L, C].
void fnet_backward(const Tensor& dx, const Tensor& dy, std::int64_t batch, std::int64_t seq_len,
                   FnetPath path = FnetPath::Auto);
FnetPath fnet_auto_path(std::int64_t seq_len, std::int64_t hidden);  // what Auto picks (never Auto)
const char* fnet_path_name(FnetPath p);                               // "auto", "dft", "fft"

namespace reference {
// The plain formula in double, O(L^2 C + L C^2):
//   y[b, m, k] = sum_{l, c} x[b, l, c] cos(2 pi (l m / L + c k / C)).
// x [B, L, C] or [B*L, C] float32; returns y [B*L*C] row-major.
std::vector<double> fnet_forward(const Tensor& x, std::int64_t batch, std::int64_t seq_len);
}  // namespace reference

}  // namespace mf
