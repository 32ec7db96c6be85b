// Vectorized mixed-radix Stockham FFT (fnet_fft.h). A stage of radix p on
// length n (m = n / p), with s the stride of one element (the column width
// times the product of the earlier radices), maps x to y by the
// decimation-in-frequency butterfly
//   y[s (p q + r) + t] = exp(-2 pi i q r / n) sum_j x[s (q + m j) + t] exp(-2 pi i j r / p)
// for q < m, r < p, t < s; the next stage runs on length m with stride s p,
// and the output lands in natural order (Stockham autosort, no bit reversal).
#include "nn/fnet/fnet_fft.h"

#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <numbers>

namespace mf::fnet {

namespace {

// exp(-2 pi i num / den) with num reduced exactly first.
void unit_root(std::int64_t num, std::int64_t den, float& re, float& im) {
  const double a = -2.0 * std::numbers::pi * static_cast<double>(num % den) / static_cast<double>(den);
  re = static_cast<float>(std::cos(a));
  im = static_cast<float>(std::sin(a));
}

FftStage make_stage(std::int64_t radix, std::int64_t n) {
  FftStage st;
  st.radix = radix;
  st.n = n;
  const std::int64_t m = n / radix;
  st.tw_re.resize(static_cast<std::size_t>(n));
  st.tw_im.resize(st.tw_re.size());
  for (std::int64_t q = 0; q < m; ++q)
    for (std::int64_t r = 0; r < radix; ++r) unit_root(q * r, n, st.tw_re[q * radix + r], st.tw_im[q * radix + r]);
  if (radix != 2 && radix != 4) {
    st.dft_re.resize(static_cast<std::size_t>(radix * radix));
    st.dft_im.resize(st.dft_re.size());
    for (std::int64_t j = 0; j < radix; ++j)
      for (std::int64_t r = 0; r < radix; ++r)
        unit_root(j * r, radix, st.dft_re[j * radix + r], st.dft_im[j * radix + r]);
  }
  return st;
}

// The radices of n: 4s, then a 2, then odd primes; empty if a prime factor
// exceeds kMaxDirectRadix (then Bluestein).
std::vector<std::int64_t> factorize(std::int64_t n, bool& direct) {
  std::vector<std::int64_t> radices;
  while (n % 4 == 0) radices.push_back(4), n /= 4;
  if (n % 2 == 0) radices.push_back(2), n /= 2;
  for (std::int64_t p = 3; p * p <= n; p += 2)
    while (n % p == 0) radices.push_back(p), n /= p;
  if (n > 1) radices.push_back(n);
  direct = true;
  for (std::int64_t p : radices) direct = direct && p <= kMaxDirectRadix;
  return radices;
}

std::shared_ptr<const FftPlan> build_plan(std::int64_t n) {
  auto plan = std::make_shared<FftPlan>();
  plan->n = n;
  bool direct = true;
  const std::vector<std::int64_t> radices = factorize(n, direct);
  if (direct) {
    std::int64_t len = n;
    for (std::int64_t p : radices) {
      plan->stages.push_back(make_stage(p, len));
      len /= p;
    }
    return plan;
  }
  plan->bluestein = true;
  std::int64_t m = 1;
  while (m < 2 * n - 1) m *= 2;
  plan->m = m;
  plan->inner = fft_plan(m);
  plan->chirp_re.resize(static_cast<std::size_t>(n));
  plan->chirp_im.resize(plan->chirp_re.size());
  // w_k = exp(-i pi k^2 / n) = exp(-2 pi i (k^2 mod 2n) / 2n).
  for (std::int64_t k = 0; k < n; ++k) unit_root((k * k) % (2 * n), 2 * n, plan->chirp_re[k], plan->chirp_im[k]);
  // Filter b_t = conj(w_|t|) for |t| < n, wrapped to [0, m); its FFT / m.
  std::vector<float> br(static_cast<std::size_t>(m), 0.0f), bi(br.size(), 0.0f), wr(br.size()), wi(br.size());
  for (std::int64_t t = 0; t < n; ++t) {
    br[t] = plan->chirp_re[t];
    bi[t] = -plan->chirp_im[t];
    if (t > 0) br[m - t] = br[t], bi[m - t] = bi[t];
  }
  fft_columns(*plan->inner, br.data(), bi.data(), wr.data(), wi.data(), 1);
  const float inv_m = 1.0f / static_cast<float>(m);
  for (std::int64_t k = 0; k < m; ++k) br[k] *= inv_m, bi[k] *= inv_m;
  plan->filter_re = std::move(br);
  plan->filter_im = std::move(bi);
  return plan;
}

// Radix-4 butterflies for t < s: inputs x + j step, outputs y + r s.
void radix4(std::int64_t s, const float* __restrict xr, const float* __restrict xi, std::int64_t step,
            float* __restrict yr, float* __restrict yi, const float* tr, const float* ti) {
  const float w1r = tr[1], w1i = ti[1], w2r = tr[2], w2i = ti[2], w3r = tr[3], w3i = ti[3];
  const float* __restrict x0r = xr;
  const float* __restrict x1r = xr + step;
  const float* __restrict x2r = xr + 2 * step;
  const float* __restrict x3r = xr + 3 * step;
  const float* __restrict x0i = xi;
  const float* __restrict x1i = xi + step;
  const float* __restrict x2i = xi + 2 * step;
  const float* __restrict x3i = xi + 3 * step;
  float* __restrict y0r = yr;
  float* __restrict y1r = yr + s;
  float* __restrict y2r = yr + 2 * s;
  float* __restrict y3r = yr + 3 * s;
  float* __restrict y0i = yi;
  float* __restrict y1i = yi + s;
  float* __restrict y2i = yi + 2 * s;
  float* __restrict y3i = yi + 3 * s;
#pragma omp simd
  for (std::int64_t t = 0; t < s; ++t) {
    // t0 = a0 + a2, t1 = a0 - a2, t2 = a1 + a3, t3 = -i (a1 - a3)
    const float t0r = x0r[t] + x2r[t], t0i = x0i[t] + x2i[t], t1r = x0r[t] - x2r[t], t1i = x0i[t] - x2i[t];
    const float t2r = x1r[t] + x3r[t], t2i = x1i[t] + x3i[t], t3r = x1i[t] - x3i[t], t3i = x3r[t] - x1r[t];
    // y0 = t0 + t2, y1 = (t1 + t3) w1, y2 = (t0 - t2) w2, y3 = (t1 - t3) w3
    const float u1r = t1r + t3r, u1i = t1i + t3i, u2r = t0r - t2r, u2i = t0i - t2i;
    const float u3r = t1r - t3r, u3i = t1i - t3i;
    y0r[t] = t0r + t2r;
    y0i[t] = t0i + t2i;
    y1r[t] = u1r * w1r - u1i * w1i;
    y1i[t] = u1r * w1i + u1i * w1r;
    y2r[t] = u2r * w2r - u2i * w2i;
    y2i[t] = u2r * w2i + u2i * w2r;
    y3r[t] = u3r * w3r - u3i * w3i;
    y3i[t] = u3r * w3i + u3i * w3r;
  }
}

// One Stockham stage x -> y; s = stride of one element in floats.
void run_stage(const FftStage& st, std::int64_t s, const float* __restrict xr, const float* __restrict xi,
               float* __restrict yr, float* __restrict yi) {
  const std::int64_t p = st.radix, m = st.n / p;
  for (std::int64_t q = 0; q < m; ++q) {
    const float* tr = &st.tw_re[q * p];
    const float* ti = &st.tw_im[q * p];
    const std::int64_t in = s * q, out = s * p * q, step = s * m;
    if (p == 4) {
      radix4(s, xr + in, xi + in, step, yr + out, yi + out, tr, ti);
    } else if (p == 2) {
      const float w1r = tr[1], w1i = ti[1];
      for (std::int64_t t = 0; t < s; ++t) {
        const float a0r = xr[in + t], a0i = xi[in + t], a1r = xr[in + step + t], a1i = xi[in + step + t];
        const float dr = a0r - a1r, di = a0i - a1i;
        yr[out + t] = a0r + a1r;
        yi[out + t] = a0i + a1i;
        yr[out + s + t] = dr * w1r - di * w1i;
        yi[out + s + t] = dr * w1i + di * w1r;
      }
    } else {
      // Odd radix: y_r = tw_r sum_j a_j dft[j, r], accumulated in the output row.
      for (std::int64_t r = 0; r < p; ++r) {
        float* __restrict or_ = yr + out + s * r;
        float* __restrict oi = yi + out + s * r;
        std::memcpy(or_, xr + in, static_cast<std::size_t>(s) * sizeof(float));
        std::memcpy(oi, xi + in, static_cast<std::size_t>(s) * sizeof(float));
        for (std::int64_t j = 1; j < p; ++j) {
          const float wr = st.dft_re[j * p + r], wi = st.dft_im[j * p + r];
          const float* ar = xr + in + j * step;
          const float* ai = xi + in + j * step;
          for (std::int64_t t = 0; t < s; ++t) {
            or_[t] += ar[t] * wr - ai[t] * wi;
            oi[t] += ar[t] * wi + ai[t] * wr;
          }
        }
        if (r == 0) continue;
        const float wr = tr[r], wi = ti[r];
        for (std::int64_t t = 0; t < s; ++t) {
          const float vr = or_[t], vi = oi[t];
          or_[t] = vr * wr - vi * wi;
          oi[t] = vr * wi + vi * wr;
        }
      }
    }
  }
}

void bluestein(const FftPlan& plan, float* re, float* im, std::int64_t width) {
  const std::int64_t n = plan.n, m = plan.m;
  thread_local std::vector<float> scratch;
  const std::size_t need = static_cast<std::size_t>(4 * m * width);
  if (scratch.size() < need) scratch.resize(need);
  float* ar = scratch.data();
  float* ai = ar + m * width;
  float* wr = ai + m * width;
  float* wi = wr + m * width;
  // a_j = x_j w_j (j < n), zero-padded to m.
  for (std::int64_t j = 0; j < n; ++j) {
    const float cr = plan.chirp_re[j], ci = plan.chirp_im[j];
    for (std::int64_t t = 0; t < width; ++t) {
      const float xr = re[j * width + t], xi = im[j * width + t];
      ar[j * width + t] = xr * cr - xi * ci;
      ai[j * width + t] = xr * ci + xi * cr;
    }
  }
  std::memset(ar + n * width, 0, static_cast<std::size_t>((m - n) * width) * sizeof(float));
  std::memset(ai + n * width, 0, static_cast<std::size_t>((m - n) * width) * sizeof(float));
  fft_columns(*plan.inner, ar, ai, wr, wi, width);
  // Convolution theorem; the inverse FFT as conj(FFT(conj(.))) (1/m is in the filter).
  for (std::int64_t k = 0; k < m; ++k) {
    const float fr = plan.filter_re[k], fi = plan.filter_im[k];
    for (std::int64_t t = 0; t < width; ++t) {
      const float vr = ar[k * width + t], vi = ai[k * width + t];
      ar[k * width + t] = vr * fr - vi * fi;
      ai[k * width + t] = -(vr * fi + vi * fr);
    }
  }
  fft_columns(*plan.inner, ar, ai, wr, wi, width);
  // X_k = w_k conj(a_k).
  for (std::int64_t k = 0; k < n; ++k) {
    const float cr = plan.chirp_re[k], ci = plan.chirp_im[k];
    for (std::int64_t t = 0; t < width; ++t) {
      const float vr = ar[k * width + t], vi = -ai[k * width + t];
      re[k * width + t] = vr * cr - vi * ci;
      im[k * width + t] = vr * ci + vi * cr;
    }
  }
}

}  // namespace

std::shared_ptr<const FftPlan> fft_plan(std::int64_t n) {
  static std::mutex mu;
  static std::map<std::int64_t, std::shared_ptr<const FftPlan>> cache;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(n);
    if (it != cache.end()) return it->second;
  }
  // Built outside the lock (a Bluestein plan asks for its inner plan).
  std::shared_ptr<const FftPlan> plan = build_plan(n);
  std::lock_guard<std::mutex> lock(mu);
  return cache.emplace(n, std::move(plan)).first->second;
}

void fft_columns(const FftPlan& plan, float* re, float* im, float* work_re, float* work_im, std::int64_t width) {
  if (plan.bluestein) return bluestein(plan, re, im, width);
  float *xr = re, *xi = im, *yr = work_re, *yi = work_im;
  std::int64_t s = width;
  for (const FftStage& st : plan.stages) {
    run_stage(st, s, xr, xi, yr, yi);
    std::swap(xr, yr);
    std::swap(xi, yi);
    s *= st.radix;
  }
  if (xr != re) {
    const std::size_t bytes = static_cast<std::size_t>(plan.n * width) * sizeof(float);
    std::memcpy(re, xr, bytes);
    std::memcpy(im, xi, bytes);
  }
}

}  // namespace mf::fnet
