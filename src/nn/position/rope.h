// Rotary position embedding (RoPE; Su et al., "RoFormer", 2021): each pair of
// dims (x_a, x_b) of a query/key row at position m is rotated by m * inv_freq_i.
// Two pairings: rotate-half (GPT-NeoX/Llama/HF: (i, i + R/2)) and interleaved
// (the paper: (2i, 2i + 1)); the first `rotary_dim` (R) dims rotate, the rest
// pass through. Scalings follow Hugging Face transformers' rope init functions
// (linear, NTK-aware, dynamic NTK, YaRN), computed here in double: YaRN's
// attention factor multiplies cos and sin, so it scales q and k alike.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/position/position_ids.h"

namespace mf {

enum class RopeConvention {
  RotateHalf,   // pairs (i, i + R/2): GPT-NeoX, Llama, HF transformers
  Interleaved,  // pairs (2i, 2i + 1): RoFormer paper, GPT-J, Meta's original Llama code
};

enum class RopeScaling {
  None,        // inv_freq_i = theta^(-2i/R)
  Linear,      // positions / factor (position interpolation)
  Ntk,         // NTK-aware static: theta' = theta * factor^(R/(R-2))
  DynamicNtk,  // theta' = theta * (factor*S/orig - (factor-1))^(R/(R-2)) once S = max position + 1 > orig
  Yarn,        // YaRN (Peng et al., 2023): per-frequency ramp between interpolation and extrapolation
};

// HF rope_scaling.rope_type names: "default" (or "none"), "linear", "ntk", "dynamic", "yarn".
RopeScaling parse_rope_scaling(const std::string& name);
const char* rope_scaling_name(RopeScaling s);

// From an HF config.json: theta = rope_theta; rotary_dim = head_dim *
// partial_rotary_factor; original_max_position_embeddings =
// rope_scaling.original_max_position_embeddings if present, else
// max_position_embeddings (what HF's dynamic and yarn functions use). Recent
// transformers versions also replace a yarn factor by max_position_embeddings /
// original when both are given; the config layer decides, this struct takes
// `factor` as given.
struct RopeConfig {
  double theta = 10000.0;      // rope_theta
  std::int64_t rotary_dim = 0;  // R: even, <= head dim; dims [R, D) are not rotated
  RopeConvention convention = RopeConvention::RotateHalf;
  RopeScaling scaling = RopeScaling::None;
  double factor = 1.0;                               // rope_scaling.factor (>= 1)
  std::int64_t original_max_position_embeddings = 0;  // dynamic and yarn: the pretraining length
  double beta_fast = 32.0;                           // yarn
  double beta_slow = 1.0;                            // yarn
  std::optional<double> attention_factor;            // yarn; default 0.1 * ln(factor) + 1
  // yarn, DeepSeek-V2: without attention_factor, cos and sin are multiplied by
  // m(factor, mscale) / m(factor, mscale_all_dim), m(f, s) = 0.1 s ln f + 1
  // (1 when f <= 1), with mscale 1 and mscale_all_dim 0 when absent (DeepSeek's
  // DeepseekV2YarnRotaryEmbedding; HF's yarn init agrees when both are given).
  std::optional<double> mscale, mscale_all_dim;

  // Throws mf::Error naming the field ("[rope] rope_scaling.factor must be >= 1, got 0.5").
  void validate() const;
};

// The R/2 inverse frequencies of `cfg` in double. `seq_len` (1 + the largest
// position of the call) matters only for dynamic NTK.
std::vector<double> rope_inv_freq(const RopeConfig& cfg, std::int64_t seq_len);
// The base actually used: theta, or the NTK / dynamic-NTK adjusted one.
double rope_effective_theta(const RopeConfig& cfg, std::int64_t seq_len);
// Multiplies cos and sin: YaRN's (given or 0.1 ln(factor) + 1), else 1.
double rope_attention_factor(const RopeConfig& cfg);

// cos/sin cache: rows [0, size()) of [positions, R/2], computed in double
// (angle = pos * inv_freq_i, times the attention factor) and stored float.
// prepare(S) makes rows [0, S) valid: it grows the table, and for dynamic NTK
// recomputes it whenever the effective length max(S, orig) changes (so the
// base depends on the call's largest position, as in HF when the length only
// grows, e.g. during generation). Not safe for concurrent prepare() calls.
class RopeTable {
 public:
  RopeTable(const RopeConfig& cfg, std::int64_t max_positions);

  void prepare(std::int64_t seq_len);
  const RopeConfig& config() const { return cfg_; }
  std::int64_t size() const { return rows_; }
  std::int64_t half() const { return cfg_.rotary_dim / 2; }
  double theta() const { return theta_; }  // effective base of the current rows
  double attention_factor() const { return attention_factor_; }
  const float* cos_row(std::int64_t pos) const { return cos_.data<float>() + pos * half(); }
  const float* sin_row(std::int64_t pos) const { return sin_.data<float>() + pos * half(); }
  Tensor cos() const { return cos_.slice(0, 0, rows_); }  // [size(), R/2]
  Tensor sin() const { return sin_.slice(0, 0, rows_); }  // [size(), R/2]

 private:
  void fill_rows(std::int64_t from, std::int64_t to);
  RopeConfig cfg_;
  std::vector<double> inv_freq_;
  double theta_ = 0, attention_factor_ = 1;
  std::int64_t dynamic_len_ = 0;  // effective length the current rows were computed for (dynamic NTK)
  std::int64_t rows_ = 0;
  Tensor cos_, sin_;  // [capacity, R/2]
};

// How the rows of q/k are laid out; the last dimension must be contiguous,
// any other strides are fine (e.g. a slice of a fused QKV projection).
enum class RopeLayout {
  BHLD,   // [B, H, L, D] (attention's layout)
  BLHD,   // [B, L, H, D]
  BL_HD,  // [B, L, H*D]: heads packed in the last dim, as projections produce them; needs num_heads
};

struct RopeArgs {
  RopeLayout layout = RopeLayout::BHLD;
  std::int64_t num_heads = 0;  // BL_HD only
  PositionIds positions;        // offset (KV-cache start) or explicit int32 [L] / [B, L] ids
};

// Arguments for rows [B, L, heads * D] as projections produce them, at
// positions offset .. offset + L - 1 (a KV-cache continuation: offset = past).
inline RopeArgs packed_rope_args(std::int64_t heads, std::int64_t offset) {
  RopeArgs a;
  a.layout = RopeLayout::BL_HD;
  a.num_heads = heads;
  a.positions.offset = offset;
  return a;
}

// y = RoPE(x). In place: x's values are overwritten (x is a handle). Out of
// place: a new contiguous tensor of x's shape. The table is prepared for
// 1 + the largest position of the call.
void rope_forward_inplace(const Tensor& x, RopeTable& table, const RopeArgs& args);  // x: see RopeLayout
Tensor rope_forward(const Tensor& x, RopeTable& table, const RopeArgs& args);

// dx = RoPE^T(dy): rotation by -angle (times the same attention factor), the
// transpose of the forward; dims [R, D) pass through. Call with the same
// positions as the forward (dynamic NTK: the same largest position).
void rope_backward_inplace(const Tensor& dy, RopeTable& table, const RopeArgs& args);  // dy -> dx
Tensor rope_backward(const Tensor& dy, RopeTable& table, const RopeArgs& args);

// Reference twin: element by element from the formulas, angles and products
// in double, no table. Returns a contiguous tensor of x's shape.
Tensor rope_forward_reference(const Tensor& x, const RopeConfig& cfg, const RopeArgs& args);
Tensor rope_backward_reference(const Tensor& dy, const RopeConfig& cfg, const RopeArgs& args);

}  // namespace mf
