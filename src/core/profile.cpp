// Scoped timers: a per-thread chain of open scopes. Opening a scope pauses its
// parent (the parent's running interval is added to its exclusive time) and
// closing it resumes the parent, so each nanosecond is counted for exactly
// one open scope.
#include "core/profile.h"

#include <omp.h>

#include <chrono>
#include <thread>

namespace mf::profile {
namespace detail {
std::atomic<bool> g_enabled{false};
}
namespace {

Snapshot g_totals;                      // written only by the recording thread
std::atomic<std::thread::id> g_owner{};  // the recording thread
thread_local Scope* t_current = nullptr;
GemmShapeTotals* g_pending_gemm = nullptr;  // the shape entry of the open GEMM scope (recording thread only)

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
bool recording_here() {
  return g_owner.load(std::memory_order_relaxed) == std::this_thread::get_id() && !omp_in_parallel();
}

}  // namespace

const char* category_name(Category c) {
  switch (c) {
    case Category::Gemm: return "gemm";
    case Category::AttentionForward: return "attention_forward";
    case Category::AttentionBackward: return "attention_backward";
    case Category::Norm: return "norm";
    case Category::Activation: return "activation";
    case Category::Rope: return "rope";
    case Category::Loss: return "loss";
    case Category::Embedding: return "embedding";
    case Category::Optimizer: return "optimizer";
    case Category::Copy: return "copy";
    case Category::kCount: break;
  }
  return "?";
}

double Snapshot::total_seconds() const {
  double s = 0;
  for (const CategoryTotals& c : categories) s += c.seconds;
  return s;
}

Snapshot& Snapshot::operator+=(const Snapshot& o) {
  for (int i = 0; i < kNumCategories; ++i) {
    categories[i].seconds += o.categories[i].seconds;
    categories[i].calls += o.categories[i].calls;
    categories[i].flops += o.categories[i].flops;
  }
  if (o.largest_gemm.flops() > largest_gemm.flops()) largest_gemm = o.largest_gemm;
  for (const GemmShapeTotals& g : o.gemm_shapes) {
    GemmShapeTotals* mine = nullptr;
    for (GemmShapeTotals& h : gemm_shapes)
      if (h.ta == g.ta && h.tb == g.tb && h.batch == g.batch && h.shape.m == g.shape.m && h.shape.n == g.shape.n &&
          h.shape.k == g.shape.k)
        mine = &h;
    if (mine == nullptr) {
      gemm_shapes.push_back(g);
    } else {
      mine->calls += g.calls;
      mine->seconds += g.seconds;
      mine->flops += g.flops;
    }
  }
  return *this;
}

void set_enabled(bool on) {
  if (on) g_owner.store(std::this_thread::get_id(), std::memory_order_relaxed);
  detail::g_enabled.store(on, std::memory_order_relaxed);
}

void reset() {
  g_totals = Snapshot{};
  g_pending_gemm = nullptr;
}

Snapshot snapshot() { return g_totals; }

void Scope::begin(Category c) {
  if (!recording_here()) return;
  const std::int64_t t = now_ns();
  parent_ = t_current;
  if (parent_ != nullptr) parent_->self_ns_ += t - parent_->start_ns_;
  category_ = c;
  start_ns_ = t;
  active_ = true;
  t_current = this;
}

void Scope::end() {
  const std::int64_t t = now_ns();
  self_ns_ += t - start_ns_;
  CategoryTotals& total = g_totals.categories[static_cast<int>(category_)];
  total.seconds += static_cast<double>(self_ns_) * 1e-9;
  total.calls += 1;
  if (category_ == Category::Gemm && g_pending_gemm != nullptr) {
    g_pending_gemm->seconds += static_cast<double>(self_ns_) * 1e-9;
    g_pending_gemm = nullptr;
  }
  t_current = parent_;
  if (parent_ != nullptr) parent_->start_ns_ = t;
}

void add_gemm(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, std::int64_t count) {
  if (!enabled() || !recording_here()) return;
  const GemmShape shape{m, n, k};
  const double flops = shape.flops() * static_cast<double>(count);
  g_totals.categories[static_cast<int>(Category::Gemm)].flops += flops;
  if (shape.flops() > g_totals.largest_gemm.flops()) g_totals.largest_gemm = shape;
  GemmShapeTotals* entry = nullptr;
  for (GemmShapeTotals& g : g_totals.gemm_shapes)  // a few dozen shapes per model
    if (g.ta == ta && g.tb == tb && g.batch == count && g.shape.m == m && g.shape.n == n && g.shape.k == k) entry = &g;
  if (entry == nullptr) {
    g_totals.gemm_shapes.push_back(GemmShapeTotals{ta, tb, shape, count, 0, 0, 0});
    entry = &g_totals.gemm_shapes.back();
  }
  entry->calls += 1;
  entry->flops += flops;
  g_pending_gemm = entry;
}

}  // namespace mf::profile
