// Mamba token mixer (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with
// Selective State Spaces"), exactly as Hugging Face's MambaMixer.slow_forward
// and the reference mamba_simple.Mamba / selective_scan_ref, per token t of a
// sequence (C = hidden, Di = expand * C, N = state_size, K = conv_kernel,
// R = time_step_rank):
//   [x_t, z_t]  = W_in h_t (+ b_in)                      in_proj, x then z (each Di)
//   xc_t        = b_conv + sum_{k<K} w_conv[:, k] * x_{t-K+1+k}   causal depthwise conv (x_{<0} = 0,
//                                                        or the generation state's last inputs)
//   u_t         = SiLU(xc_t)
//   [dt_t, B_t, C_t] = W_x u_t                           x_proj, in this order (R, N, N)
//   Delta_t     = softplus(W_dt dt_t + dt_bias)          softplus(v) = v for v > 20 (torch's threshold)
//   A           = -exp(A_log)                            [Di, N]
//   s_t[d, n]   = exp(Delta_t[d] A[d, n]) s_{t-1}[d, n] + Delta_t[d] B_t[n] u_t[d]     (s_{-1} = 0 or the state)
//   y_t[d]      = sum_n C_t[n] s_t[d, n] + D[d] u_t[d]
//   out_t       = W_out (y_t * SiLU(z_t)) (+ b_out)
// The scan is parallel over (sequence, group of channels), vectorized over
// channels (see mamba_scan.cpp for why not over the state), and chunked over time: the forward keeps the state only at chunk
// starts ([B, ceil(L/T), Di, N]) and the backward recomputes inside a chunk,
// so no [B, L, Di, N] tensor is ever made.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "nn/parameter.h"

namespace mf {

struct MambaParams {
  std::int64_t hidden = 0;       // C
  std::int64_t inner = 0;        // Di = expand * C
  std::int64_t state_size = 0;   // N
  std::int64_t conv_kernel = 0;  // K
  std::int64_t dt_rank = 0;      // R
  std::int64_t chunk_len = 64;   // T: scan steps between saved states (speed/memory only, never the math)
  Parameter* in_proj = nullptr;        // [2 Di, C]
  Parameter* in_proj_bias = nullptr;   // [2 Di] or null
  Parameter* conv_weight = nullptr;    // [Di, 1, K]
  Parameter* conv_bias = nullptr;      // [Di] or null
  Parameter* x_proj = nullptr;         // [R + 2N, Di]
  Parameter* dt_proj = nullptr;        // [Di, R]
  Parameter* dt_bias = nullptr;        // [Di]  (checkpoint name dt_proj.bias)
  Parameter* a_log = nullptr;          // [Di, N]
  Parameter* d_skip = nullptr;         // [Di]  (checkpoint name D)
  Parameter* out_proj = nullptr;       // [C, Di]
  Parameter* out_proj_bias = nullptr;  // [C] or null
};

// ---- the selective scan on its own ------------------------------------------

// Inputs of B sequences of L steps, token-major rows (b * L + t).
struct SelectiveScanInputs {
  Tensor u;      // [B*L, D]
  Tensor delta;  // [B*L, D]  (after the softplus)
  Tensor a_log;  // [D, N]    (A = -exp(A_log))
  Tensor b;      // [B*L, N]  rows may be strided (a column slice of x_proj's output)
  Tensor c;      // [B*L, N]  likewise
  Tensor d;      // [D]
};

// Gradients: du, ddelta, db, dc overwritten; da_log, dd accumulate (+=).
struct SelectiveScanGrads {
  Tensor du, ddelta;  // [B*L, D]
  Tensor db, dc;      // [B*L, N] (strided rows allowed)
  Tensor da_log;      // [D, N]
  Tensor dd;          // [D]
};

std::int64_t selective_scan_chunks(std::int64_t seq_len, std::int64_t chunk_len);  // ceil(L / T)

// y = scan(u, delta, A, B, C) + D u. chunk_states [B, chunks, D, N]: the state
// before each chunk (written; undefined: not kept). state [B, D, N]: the
// initial state on entry and the final state on return (undefined: zeros, not
// returned).
void selective_scan_forward(const Tensor& y,  // [B*L, D] (written)
                            const Tensor& chunk_states, const SelectiveScanInputs& in, std::int64_t batch,
                            std::int64_t chunk_len, const Tensor& state);

// Reads the chunk states of the forward (so it also serves a nonzero initial
// state; its gradient is not formed).
void selective_scan_backward(const SelectiveScanGrads& grads, const Tensor& dy,  // [B*L, D]
                             const SelectiveScanInputs& in, const Tensor& chunk_states, std::int64_t batch,
                             std::int64_t chunk_len);

// ---- the whole mixer ---------------------------------------------------------

// Saved by the forward for the backward (N_tok = B*L).
struct MambaSaved {
  Tensor xz;            // [N_tok, 2 Di] in_proj output (x, z)
  Tensor xc;            // [N_tok, Di] conv output before the SiLU
  Tensor u;             // [N_tok, Di] SiLU(xc)
  Tensor x_dbl;         // [N_tok, R + 2N] x_proj output (dt, B, C)
  Tensor delta;         // [N_tok, Di]
  Tensor y_ssm;         // [N_tok, Di] scan output (with D u)
  Tensor gated;         // [N_tok, Di] y_ssm * SiLU(z)
  Tensor chunk_states;  // [B, chunks, Di, N]
  std::vector<const Tensor*> tensors() const;
  std::size_t bytes() const;
};

// A layer's generation state (Hugging Face's conv_states / ssm_states).
struct MambaCache {
  Tensor conv;  // [B, Di, K]: the last K inputs x of the conv, newest at K - 1
  Tensor ssm;   // [B, Di, N]
};

// out [B*L, C] from h [B*L, C]. saved: null for inference. cache: continues
// from it and updates it (inference only: refused with saved).
void mamba_forward(const Tensor& out, MambaSaved* saved, const Tensor& x, std::int64_t batch, std::int64_t seq_len,
                   const MambaParams& p, MambaCache* cache);

// dx overwritten; parameter gradients accumulate (+=).
void mamba_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const MambaSaved& saved, std::int64_t batch,
                    std::int64_t seq_len, const MambaParams& p);

MambaCache mamba_new_cache(const MambaParams& p, std::int64_t batch);

// Checks every argument (parameters and their shapes, rows, the cache).
void mamba_check(const Tensor& x, std::int64_t batch, std::int64_t seq_len, const MambaParams& p,
                 const MambaCache* cache);

namespace reference {
// Plain loops in double, the specification (same contracts; the backward
// recomputes the forward, from zero states).
void selective_scan_forward(const Tensor& y, const SelectiveScanInputs& in, std::int64_t batch, const Tensor& state);
void selective_scan_backward(const SelectiveScanGrads& grads, const Tensor& dy, const SelectiveScanInputs& in,
                             std::int64_t batch);
void mamba_forward(const Tensor& out, const Tensor& x, std::int64_t batch, std::int64_t seq_len, const MambaParams& p,
                   MambaCache* cache);
void mamba_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, std::int64_t batch, std::int64_t seq_len,
                    const MambaParams& p);
}  // namespace reference

}  // namespace mf
