// Linear forward/backward: three GEMMs (y = x W^T, dx = dy W, dW += dy^T x)
// (a forward of at most kGemvMaxRows rows, a decode step, is a GEMV instead)
// and a column sum for the bias, parallel over column blocks so that every
// sum runs over the rows in one fixed order (deterministic for any thread count).
#include "nn/linear.h"

#include <vector>

#include "kernels/gemm.h"
#include "kernels/gemv.h"

namespace mf {

namespace {

constexpr const char* kOp = "[linear]";

struct Dims {
  std::int64_t n, in, out;
};

void check_matrix(const Tensor& t, const char* name) {
  MF_CHECK(t.defined(), kOp, " tensor '", name, "' is undefined");
  MF_CHECK(t.dtype() == DType::F32, kOp, " tensor '", name, "' must be float32 but is ", dtype_name(t.dtype()));
  MF_CHECK(t.dim() == 2, kOp, " tensor '", name, "' must have 2 dimensions but has shape ", shape_str(t.shape()));
  MF_CHECK(t.is_contiguous(), kOp, " tensor '", name, "' must be contiguous");
}

void check_vector(const Tensor& t, std::int64_t n, const char* name) {
  MF_CHECK(t.dtype() == DType::F32, kOp, " tensor '", name, "' must be float32 but is ", dtype_name(t.dtype()));
  t.check_shape({n}, "linear", name);
  MF_CHECK(t.is_contiguous(), kOp, " tensor '", name, "' must be contiguous");
}

Dims check_args(const Tensor& in, const Tensor& weight) {
  check_matrix(in, "in");
  check_matrix(weight, "weight");
  MF_CHECK(in.size(1) == weight.size(1), kOp, " in has ", in.size(1), " features but weight ",
           shape_str(weight.shape()), " expects ", weight.size(1));
  return {in.size(0), in.size(1), weight.size(0)};
}

// acc[c] += sum_r rows[r, c], columns split over threads in blocks of 64.
void column_sums(float* acc, const float* rows, std::int64_t n, std::int64_t cols) {
  constexpr std::int64_t kBlock = 64;
  const std::int64_t blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n * cols >= (1 << 15))
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::int64_t c0 = b * kBlock, c1 = std::min(cols, c0 + kBlock);
    float s[kBlock] = {};
    for (std::int64_t r = 0; r < n; ++r) {
      const float* row = rows + r * cols;
      for (std::int64_t c = c0; c < c1; ++c) s[c - c0] += row[c];
    }
    for (std::int64_t c = c0; c < c1; ++c) acc[c] += s[c - c0];
  }
}

}  // namespace

void linear_forward(const Tensor& out, const Tensor& in, const Tensor& weight, const Tensor& bias) {
  const Dims d = check_args(in, weight);
  check_matrix(out, "out");
  out.check_shape({d.n, d.out}, "linear", "out");
  if (d.n == 0) return;
  float* y = out.data<float>();
  if (bias.defined()) check_vector(bias, d.out, "bias");
  if (d.n <= gemv_max_rows() && d.in > 0) {  // decode: one pass over W shared by the few rows (kernels/gemv.h)
    gemv(weight.data<float>(), bias.defined() ? bias.data<float>() : nullptr, d.out, d.in, in.data<float>(), d.in,
         d.n, y, d.out);
    return;
  }
  float beta = 0.0f;
  if (bias.defined()) {
    const float* b = bias.data<float>();
#pragma omp parallel for schedule(static) if (d.n * d.out >= (1 << 15))
    for (std::int64_t r = 0; r < d.n; ++r)
      for (std::int64_t c = 0; c < d.out; ++c) y[r * d.out + c] = b[c];
    beta = 1.0f;
  }
  // y[N, out] = in[N, in] * W[out, in]^T (+ y)
  gemm(Trans::N, Trans::T, d.n, d.out, d.in, 1.0f, in.data<float>(), d.in, weight.data<float>(), d.in, beta, y, d.out);
}

Tensor linear_forward(const Tensor& in, const Tensor& weight, const Tensor& bias) {
  const Dims d = check_args(in, weight);
  Tensor out = Tensor::empty({d.n, d.out});
  linear_forward(out, in, weight, bias);
  return out;
}

void linear_backward(const Tensor& din, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                     const Tensor& in, const Tensor& weight, bool accumulate_din) {
  const Dims d = check_args(in, weight);
  check_matrix(dout, "dout");
  dout.check_shape({d.n, d.out}, "linear", "dout");
  check_matrix(dweight, "dweight");
  dweight.check_shape({d.out, d.in}, "linear", "dweight");
  if (din.defined()) {
    check_matrix(din, "din");
    din.check_shape({d.n, d.in}, "linear", "din");
  }
  if (dbias.defined()) check_vector(dbias, d.out, "dbias");
  if (d.n == 0) {
    if (din.defined() && !accumulate_din) Tensor(din).fill(0.0f);
    return;
  }
  const float* dy = dout.data<float>();
  // din[N, in] (+)= dout[N, out] * W[out, in]
  if (din.defined())
    gemm(Trans::N, Trans::N, d.n, d.in, d.out, 1.0f, dy, d.out, weight.data<float>(), d.in,
         accumulate_din ? 1.0f : 0.0f, din.data<float>(), d.in);
  // dW[out, in] += dout[N, out]^T * in[N, in]
  gemm(Trans::T, Trans::N, d.out, d.in, d.n, 1.0f, dy, d.out, in.data<float>(), d.in, 1.0f, dweight.data<float>(),
       d.in);
  if (dbias.defined()) column_sums(dbias.data<float>(), dy, d.n, d.out);
}

namespace reference {

void linear_forward(const Tensor& out, const Tensor& in, const Tensor& weight, const Tensor& bias) {
  const Dims d = check_args(in, weight);
  out.check_shape({d.n, d.out}, "linear", "out");
  const float *x = in.data<float>(), *w = weight.data<float>();
  const float* b = bias.defined() ? bias.data<float>() : nullptr;
  float* y = out.data<float>();
  for (std::int64_t r = 0; r < d.n; ++r)
    for (std::int64_t o = 0; o < d.out; ++o) {
      double s = b ? b[o] : 0.0;
      for (std::int64_t i = 0; i < d.in; ++i) s += static_cast<double>(x[r * d.in + i]) * w[o * d.in + i];
      y[r * d.out + o] = static_cast<float>(s);
    }
}

void linear_backward(const Tensor& din, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                     const Tensor& in, const Tensor& weight) {
  const Dims d = check_args(in, weight);
  const float *x = in.data<float>(), *w = weight.data<float>(), *dy = dout.data<float>();
  if (din.defined()) {
    float* dx = din.data<float>();
    for (std::int64_t r = 0; r < d.n; ++r)
      for (std::int64_t i = 0; i < d.in; ++i) {
        double s = 0;
        for (std::int64_t o = 0; o < d.out; ++o) s += static_cast<double>(dy[r * d.out + o]) * w[o * d.in + i];
        dx[r * d.in + i] = static_cast<float>(s);
      }
  }
  float* dw = dweight.data<float>();
  for (std::int64_t o = 0; o < d.out; ++o)
    for (std::int64_t i = 0; i < d.in; ++i) {
      double s = 0;
      for (std::int64_t r = 0; r < d.n; ++r) s += static_cast<double>(dy[r * d.out + o]) * x[r * d.in + i];
      dw[o * d.in + i] += static_cast<float>(s);
    }
  if (dbias.defined()) {
    float* db = dbias.data<float>();
    for (std::int64_t o = 0; o < d.out; ++o) {
      double s = 0;
      for (std::int64_t r = 0; r < d.n; ++r) s += dy[r * d.out + o];
      db[o] += static_cast<float>(s);
    }
  }
}

}  // namespace reference

}  // namespace mf
