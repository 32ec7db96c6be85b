// A low-overhead scoped-timer profiler for `modformer bench train --profile`.
// Off by default (a disabled Scope costs one relaxed atomic load). When on,
// each Scope adds its *exclusive* wall time (its time minus that of scopes
// opened inside it on the same thread) and one call to its category, so the
// categories never double count and their sum is at most the wall time.
// Thread rule: only the thread that called set_enabled(true) records, and
// only outside OpenMP parallel regions (scopes opened by worker threads, or
// inside a region, do nothing); the kernels' own OpenMP regions are inside
// the scopes, so their time counts for the scope that opened them.
// The GEMM wrapper also adds 2*m*n*k per product (FLOPs) and remembers the
// largest single product seen, the shape the sgemm reference rate is taken at.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <vector>

namespace mf::profile {

enum class Category : int {
  Gemm,               // gemm / gemm_batched (src/kernels/gemm.cpp): every matrix product, with FLOPs
  AttentionForward,   // the attention core's forward (flash or dense kernel, src/nn/attention/attention.cpp)
  AttentionBackward,  // the attention core's backward
  Norm,               // RMSNorm / LayerNorm kernels, forward and backward
  Activation,         // GELU / SiLU / SwiGLU / GeGLU kernels, forward and backward
  Rope,               // rotary embedding, forward and backward
  Loss,               // LM head cross-entropy outside its GEMMs (softmax, log-sum-exp, dlogits)
  Embedding,          // token embedding gather (forward) and scatter-add (backward)
  Optimizer,          // zero grads, global-norm clip, AdamW
  Copy,               // materialized tensor copies: Tensor::copy_from (clone, contiguous() of a permuted view)
  kCount
};
constexpr int kNumCategories = static_cast<int>(Category::kCount);
const char* category_name(Category c);  // "gemm", "attention_forward", ... (JSON keys, table rows)

struct CategoryTotals {
  double seconds = 0;     // exclusive wall time
  std::int64_t calls = 0;
  double flops = 0;       // only GEMM: sum of 2*m*n*k
};
struct GemmShape {
  std::int64_t m = 0, n = 0, k = 0;
  double flops() const { return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k); }
};
// One GEMM call shape (ta, tb, m, n, k; `batch` products per call) and its totals.
struct GemmShapeTotals {
  bool ta = false, tb = false;  // transposed operands
  GemmShape shape;
  std::int64_t batch = 1;
  std::int64_t calls = 0;
  double seconds = 0;  // exclusive time of those calls
  double flops = 0;
};
struct Snapshot {
  std::array<CategoryTotals, kNumCategories> categories{};
  GemmShape largest_gemm;  // the single product with the most FLOPs
  std::vector<GemmShapeTotals> gemm_shapes;  // in first-seen order
  double total_seconds() const;
  Snapshot& operator+=(const Snapshot& other);
};

namespace detail {
extern std::atomic<bool> g_enabled;
}
inline bool enabled() { return detail::g_enabled.load(std::memory_order_relaxed); }
// Enabling makes the calling thread the recording thread; disabling stops recording (totals are kept).
void set_enabled(bool on);
void reset();         // zero the totals (call on the recording thread, no scope open)
Snapshot snapshot();  // the totals so far

class Scope {
 public:
  explicit Scope(Category c) {
    if (enabled()) begin(c);
  }
  ~Scope() {
    if (active_) end();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void begin(Category c);
  void end();
  Category category_ = Category::Gemm;
  bool active_ = false;
  Scope* parent_ = nullptr;
  std::int64_t start_ns_ = 0;  // when this scope last (re)started running exclusively
  std::int64_t self_ns_ = 0;   // exclusive time so far
};

// `count` products of op(A) [m, k] op(B) [k, n] in one call (call it right
// after opening the GEMM scope: that scope's time goes to this shape's entry);
// recorded under the same thread rule.
void add_gemm(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, std::int64_t count);

}  // namespace mf::profile
