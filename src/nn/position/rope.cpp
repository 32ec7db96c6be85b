#include "nn/position/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <utility>

#include "core/profile.h"

namespace mf {

RopeScaling parse_rope_scaling(const std::string& name) {
  if (name == "default" || name == "none") return RopeScaling::None;
  if (name == "linear") return RopeScaling::Linear;
  if (name == "ntk") return RopeScaling::Ntk;
  if (name == "dynamic") return RopeScaling::DynamicNtk;
  if (name == "yarn") return RopeScaling::Yarn;
  fail("[rope] rope_scaling.rope_type must be one of default, linear, ntk, dynamic, yarn; got '", name, "'");
}

const char* rope_scaling_name(RopeScaling s) {
  switch (s) {
    case RopeScaling::None: return "default";
    case RopeScaling::Linear: return "linear";
    case RopeScaling::Ntk: return "ntk";
    case RopeScaling::DynamicNtk: return "dynamic";
    case RopeScaling::Yarn: return "yarn";
  }
  return "?";
}

void RopeConfig::validate() const {
  MF_CHECK(std::isfinite(theta) && theta > 1.0, "[rope] rope_theta must be a finite number > 1, got ", theta);
  MF_CHECK(rotary_dim >= 2 && rotary_dim % 2 == 0, "[rope] rotary_dim must be a positive even number, got ",
           rotary_dim);
  const char* type = rope_scaling_name(scaling);
  if (scaling == RopeScaling::None) {
    MF_CHECK(factor == 1.0, "[rope] rope_scaling.factor is ", factor,
             " but rope_scaling.rope_type is default (no scaling)");
  } else {
    MF_CHECK(std::isfinite(factor) && factor >= 1.0, "[rope] rope_scaling.factor must be >= 1, got ", factor);
  }
  if (scaling == RopeScaling::Ntk || scaling == RopeScaling::DynamicNtk)
    MF_CHECK(rotary_dim >= 4, "[rope] rotary_dim must be >= 4 for ", type,
             " scaling (its exponent is R/(R-2)), got ", rotary_dim);
  if (scaling == RopeScaling::DynamicNtk || scaling == RopeScaling::Yarn)
    MF_CHECK(original_max_position_embeddings >= 1, "[rope] rope_scaling.original_max_position_embeddings must be "
             ">= 1 for ", type, " scaling, got ", original_max_position_embeddings);
  if (scaling == RopeScaling::Yarn) {
    MF_CHECK(std::isfinite(beta_fast) && beta_fast > 0, "[rope] rope_scaling.beta_fast must be > 0, got ", beta_fast);
    MF_CHECK(std::isfinite(beta_slow) && beta_slow > 0, "[rope] rope_scaling.beta_slow must be > 0, got ", beta_slow);
    MF_CHECK(beta_fast >= beta_slow, "[rope] rope_scaling.beta_fast (", beta_fast,
             ") must be >= rope_scaling.beta_slow (", beta_slow, ")");
  }
  for (const auto& [name, value] : {std::pair{"mscale", mscale}, std::pair{"mscale_all_dim", mscale_all_dim}})
    if (value)
      MF_CHECK(std::isfinite(*value) && *value >= 0, "[rope] rope_scaling.", name, " must be a finite number >= 0, got ",
               *value);
  if (attention_factor) {
    MF_CHECK(scaling == RopeScaling::Yarn, "[rope] rope_scaling.attention_factor applies only to yarn scaling, "
             "but rope_scaling.rope_type is ", type);
    MF_CHECK(std::isfinite(*attention_factor) && *attention_factor > 0,
             "[rope] rope_scaling.attention_factor must be > 0, got ", *attention_factor);
  }
}

double rope_effective_theta(const RopeConfig& cfg, std::int64_t seq_len) {
  const double R = static_cast<double>(cfg.rotary_dim);
  switch (cfg.scaling) {
    case RopeScaling::Ntk:
      return cfg.theta * std::pow(cfg.factor, R / (R - 2));
    case RopeScaling::DynamicNtk: {
      // Below the pretraining length the base is unchanged (the bracket is 1).
      const double orig = static_cast<double>(cfg.original_max_position_embeddings);
      const double s = std::max(static_cast<double>(seq_len), orig);
      return cfg.theta * std::pow(cfg.factor * s / orig - (cfg.factor - 1), R / (R - 2));
    }
    default:
      return cfg.theta;
  }
}

double rope_attention_factor(const RopeConfig& cfg) {
  if (cfg.scaling != RopeScaling::Yarn) return 1.0;
  if (cfg.attention_factor) return *cfg.attention_factor;
  const auto m = [&](double s) { return cfg.factor <= 1.0 ? 1.0 : 0.1 * s * std::log(cfg.factor) + 1.0; };
  if (cfg.mscale || cfg.mscale_all_dim) return m(cfg.mscale.value_or(1.0)) / m(cfg.mscale_all_dim.value_or(0.0));
  return 0.1 * std::log(cfg.factor) + 1.0;
}

std::vector<double> rope_inv_freq(const RopeConfig& cfg, std::int64_t seq_len) {
  const std::int64_t R = cfg.rotary_dim, half = R / 2;
  const double base = rope_effective_theta(cfg, seq_len);
  std::vector<double> inv(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i)
    inv[i] = std::pow(base, -static_cast<double>(2 * i) / static_cast<double>(R));
  if (cfg.scaling == RopeScaling::Linear) {
    for (double& f : inv) f /= cfg.factor;
  } else if (cfg.scaling == RopeScaling::Yarn) {
    // The dim whose wavelength fits `rotations` times into the pretraining
    // length; frequencies faster than beta_fast rotations keep their value
    // (extrapolation), slower than beta_slow are divided by factor
    // (interpolation), with a linear ramp over pair index in between.
    const double orig = static_cast<double>(cfg.original_max_position_embeddings);
    auto correction_dim = [&](double rotations) {
      return static_cast<double>(R) * std::log(orig / (rotations * 2 * std::numbers::pi)) / (2 * std::log(cfg.theta));
    };
    const double low = std::max(std::floor(correction_dim(cfg.beta_fast)), 0.0);
    double high = std::min(std::ceil(correction_dim(cfg.beta_slow)), static_cast<double>(R - 1));
    if (low == high) high += 0.001;  // as HF: avoid a zero-width ramp
    for (std::int64_t i = 0; i < half; ++i) {
      const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
      inv[i] = inv[i] / cfg.factor * ramp + inv[i] * (1.0 - ramp);  // ramp 0: extrapolate, 1: interpolate
    }
  }
  return inv;
}

// ---------------------------------------------------------------- table

RopeTable::RopeTable(const RopeConfig& cfg, std::int64_t max_positions) : cfg_(cfg) {
  cfg_.validate();
  MF_CHECK(max_positions >= 0, "[rope] table size must be >= 0, got ", max_positions);
  attention_factor_ = rope_attention_factor(cfg_);
  dynamic_len_ = cfg_.original_max_position_embeddings;
  inv_freq_ = rope_inv_freq(cfg_, 0);
  theta_ = rope_effective_theta(cfg_, 0);
  cos_ = Tensor::empty({std::max<std::int64_t>(max_positions, 1), half()});
  sin_ = Tensor::empty({std::max<std::int64_t>(max_positions, 1), half()});
  fill_rows(0, max_positions);
  rows_ = max_positions;
}

void RopeTable::prepare(std::int64_t seq_len) {
  MF_CHECK(seq_len >= 0, "[rope] sequence length must be >= 0, got ", seq_len);
  if (cfg_.scaling == RopeScaling::DynamicNtk) {
    const std::int64_t eff = std::max(seq_len, cfg_.original_max_position_embeddings);
    if (eff != dynamic_len_) {  // new base: every row is stale
      dynamic_len_ = eff;
      inv_freq_ = rope_inv_freq(cfg_, eff);
      theta_ = rope_effective_theta(cfg_, eff);
      rows_ = 0;
    }
  }
  if (seq_len <= rows_) return;
  const std::int64_t capacity = cos_.size(0);
  if (seq_len > capacity) {
    const std::int64_t cap = std::max(seq_len, 2 * capacity);
    Tensor c = Tensor::empty({cap, half()}), s = Tensor::empty({cap, half()});
    if (rows_ > 0) {
      c.slice(0, 0, rows_).copy_from(cos_.slice(0, 0, rows_));
      s.slice(0, 0, rows_).copy_from(sin_.slice(0, 0, rows_));
    }
    cos_ = c;
    sin_ = s;
  }
  fill_rows(rows_, seq_len);
  rows_ = seq_len;
}

void RopeTable::fill_rows(std::int64_t from, std::int64_t to) {
  const std::int64_t h = half();
  float* c = cos_.data<float>();
  float* s = sin_.data<float>();
  const double af = attention_factor_;
  const double* inv = inv_freq_.data();
#pragma omp parallel for schedule(static) if ((to - from) * h > 8192)
  for (std::int64_t p = from; p < to; ++p)
    for (std::int64_t i = 0; i < h; ++i) {
      const double angle = static_cast<double>(p) * inv[i];
      c[p * h + i] = static_cast<float>(std::cos(angle) * af);
      s[p * h + i] = static_cast<float>(std::sin(angle) * af);
    }
}

// ---------------------------------------------------------------- kernels

namespace {

// Rows of x as (b, h, l) -> element offset b*sb + h*sh + l*sl; dims contiguous.
struct RopeGeom {
  std::int64_t B = 0, H = 0, L = 0, D = 0, sb = 0, sh = 0, sl = 0;
};

RopeGeom rope_geom(const Tensor& x, const RopeArgs& a, const char* name) {
  MF_CHECK(x.dtype() == DType::F32, "[rope] ", name, " must be float32, got ", dtype_name(x.dtype()));
  RopeGeom g;
  switch (a.layout) {
    case RopeLayout::BHLD:
      MF_CHECK(x.dim() == 4, "[rope] ", name, " must have 4 dimensions [B, H, L, D] but has shape ",
               shape_str(x.shape()));
      g = {x.size(0), x.size(1), x.size(2), x.size(3), x.stride(0), x.stride(1), x.stride(2)};
      break;
    case RopeLayout::BLHD:
      MF_CHECK(x.dim() == 4, "[rope] ", name, " must have 4 dimensions [B, L, H, D] but has shape ",
               shape_str(x.shape()));
      g = {x.size(0), x.size(2), x.size(1), x.size(3), x.stride(0), x.stride(2), x.stride(1)};
      break;
    case RopeLayout::BL_HD:
      MF_CHECK(x.dim() == 3, "[rope] ", name, " must have 3 dimensions [B, L, H*D] but has shape ",
               shape_str(x.shape()));
      MF_CHECK(a.num_heads >= 1 && x.size(2) % a.num_heads == 0, "[rope] num_heads must be >= 1 and divide the "
               "last dimension ", x.size(2), " of ", name, " (layout [B, L, H*D]), got ", a.num_heads);
      g = {x.size(0), a.num_heads, x.size(1), x.size(2) / a.num_heads, x.stride(0), 0, x.stride(1)};
      g.sh = g.D;
      break;
  }
  MF_CHECK(x.size(-1) <= 1 || x.stride(-1) == 1, "[rope] ", name,
           " must have a contiguous last dimension (stride 1), got stride ", x.stride(-1));
  return g;
}

struct Prepared {
  RopeGeom g;
  ResolvedPositions pos;
};

Prepared prepare_call(const Tensor& x, RopeTable& table, const RopeArgs& args, const char* name) {
  Prepared p{rope_geom(x, args, name), {}};
  p.pos = resolve_positions(args.positions, p.g.B, p.g.L, "rope");
  MF_CHECK(table.config().rotary_dim <= p.g.D, "[rope] rotary_dim ", table.config().rotary_dim,
           " is larger than the head dim ", p.g.D, " of ", name);
  table.prepare(p.pos.end);
  return p;
}

// One row: forward y = R(angle) x, inverse y = R(-angle) x, over the R/2 pairs.
// `omp simd` is safe in place: lane i touches only its own pair.
template <RopeConvention C, bool Inverse>
inline void rotate_row(const float* __restrict__ c, const float* __restrict__ s, const float* x, float* y,
                       std::int64_t half) {
  if constexpr (C == RopeConvention::RotateHalf) {
#pragma omp simd
    for (std::int64_t i = 0; i < half; ++i) {
      const float a = x[i], b = x[i + half];
      if constexpr (Inverse) {
        y[i] = a * c[i] + b * s[i];
        y[i + half] = b * c[i] - a * s[i];
      } else {
        y[i] = a * c[i] - b * s[i];
        y[i + half] = b * c[i] + a * s[i];
      }
    }
  } else {
#pragma omp simd
    for (std::int64_t i = 0; i < half; ++i) {
      const float a = x[2 * i], b = x[2 * i + 1];
      if constexpr (Inverse) {
        y[2 * i] = a * c[i] + b * s[i];
        y[2 * i + 1] = b * c[i] - a * s[i];
      } else {
        y[2 * i] = a * c[i] - b * s[i];
        y[2 * i + 1] = b * c[i] + a * s[i];
      }
    }
  }
}

template <RopeConvention C, bool Inverse>
void rope_rows(const float* src, const RopeGeom& gs, float* dst, const RopeGeom& gd, const RopeTable& t,
               const ResolvedPositions& pos) {
  const std::int64_t half = t.half(), R = 2 * half, D = gs.D;
  const bool copy_tail = src != dst && R < D;
  const std::int64_t rows = gs.B * gs.H * gs.L;
#pragma omp parallel for collapse(3) schedule(static) if (rows * D > (1 << 15))
  for (std::int64_t b = 0; b < gs.B; ++b)
    for (std::int64_t h = 0; h < gs.H; ++h)
      for (std::int64_t l = 0; l < gs.L; ++l) {
        const std::int64_t p = pos.at(b, l);
        const float* x = src + b * gs.sb + h * gs.sh + l * gs.sl;
        float* y = dst + b * gd.sb + h * gd.sh + l * gd.sl;
        rotate_row<C, Inverse>(t.cos_row(p), t.sin_row(p), x, y, half);
        if (copy_tail)
          for (std::int64_t d = R; d < D; ++d) y[d] = x[d];
      }
}

template <bool Inverse>
void rope_dispatch(const float* src, const RopeGeom& gs, float* dst, const RopeGeom& gd, const RopeTable& t,
                   const ResolvedPositions& pos) {
  const profile::Scope timer(profile::Category::Rope);
  if (t.config().convention == RopeConvention::RotateHalf)
    rope_rows<RopeConvention::RotateHalf, Inverse>(src, gs, dst, gd, t, pos);
  else
    rope_rows<RopeConvention::Interleaved, Inverse>(src, gs, dst, gd, t, pos);
}

template <bool Inverse>
void rope_inplace(const Tensor& x, RopeTable& table, const RopeArgs& args, const char* name) {
  const Prepared p = prepare_call(x, table, args, name);
  if (x.numel() == 0) return;
  rope_dispatch<Inverse>(x.data<float>(), p.g, x.data<float>(), p.g, table, p.pos);
}

template <bool Inverse>
Tensor rope_out_of_place(const Tensor& x_in, RopeTable& table, const RopeArgs& args, const char* name) {
  const Tensor x = x_in.dim() > 0 && x_in.size(-1) > 1 && x_in.stride(-1) != 1 ? x_in.contiguous() : x_in;
  const Prepared p = prepare_call(x, table, args, name);
  Tensor y = Tensor::empty(x.shape());
  if (x.numel() == 0) return y;
  const RopeGeom gy = rope_geom(y, args, "output");
  rope_dispatch<Inverse>(x.data<float>(), p.g, y.data<float>(), gy, table, p.pos);
  return y;
}

}  // namespace

void rope_forward_inplace(const Tensor& x, RopeTable& table, const RopeArgs& args) {
  rope_inplace<false>(x, table, args, "x");
}
Tensor rope_forward(const Tensor& x, RopeTable& table, const RopeArgs& args) {
  return rope_out_of_place<false>(x, table, args, "x");
}
void rope_backward_inplace(const Tensor& dy, RopeTable& table, const RopeArgs& args) {
  rope_inplace<true>(dy, table, args, "dy");
}
Tensor rope_backward(const Tensor& dy, RopeTable& table, const RopeArgs& args) {
  return rope_out_of_place<true>(dy, table, args, "dy");
}

// ---------------------------------------------------------------- reference

namespace {
Tensor rope_reference(const Tensor& x_in, const RopeConfig& cfg, const RopeArgs& args, bool inverse) {
  cfg.validate();
  const Tensor x = x_in.contiguous();
  const RopeGeom g = rope_geom(x, args, inverse ? "dy" : "x");
  const ResolvedPositions pos = resolve_positions(args.positions, g.B, g.L, "rope");
  MF_CHECK(cfg.rotary_dim <= g.D, "[rope] rotary_dim ", cfg.rotary_dim, " is larger than the head dim ", g.D);
  const std::vector<double> inv = rope_inv_freq(cfg, pos.end);
  const double af = rope_attention_factor(cfg), sign = inverse ? -1.0 : 1.0;
  const std::int64_t half = cfg.rotary_dim / 2;
  Tensor y = x.clone();  // dims [R, D) pass through
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  for (std::int64_t b = 0; b < g.B; ++b)
    for (std::int64_t h = 0; h < g.H; ++h)
      for (std::int64_t l = 0; l < g.L; ++l) {
        const std::int64_t row = b * g.sb + h * g.sh + l * g.sl;
        const double m = static_cast<double>(pos.at(b, l));
        for (std::int64_t i = 0; i < half; ++i) {
          // The pair (ia, ib) is rotated by angle m * theta_i: [cos -sin; sin cos].
          const std::int64_t ia = cfg.convention == RopeConvention::RotateHalf ? i : 2 * i;
          const std::int64_t ib = cfg.convention == RopeConvention::RotateHalf ? i + half : 2 * i + 1;
          const double angle = sign * m * inv[i];
          const double c = af * std::cos(angle), s = af * std::sin(angle);
          const double xa = xp[row + ia], xb = xp[row + ib];
          yp[row + ia] = static_cast<float>(xa * c - xb * s);
          yp[row + ib] = static_cast<float>(xb * c + xa * s);
        }
      }
  return y;
}
}  // namespace

Tensor rope_forward_reference(const Tensor& x, const RopeConfig& cfg, const RopeArgs& args) {
  return rope_reference(x, cfg, args, false);
}
Tensor rope_backward_reference(const Tensor& dy, const RopeConfig& cfg, const RopeArgs& args) {
  return rope_reference(dy, cfg, args, true);
}

}  // namespace mf
