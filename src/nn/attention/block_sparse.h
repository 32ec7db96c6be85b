// Block-sparse layouts for the exact-attention kernels (Child et al. 2019,
// "Generating Long Sequences with Sparse Transformers"; Zaheer et al. 2020,
// BigBird; Beltagy et al. 2020, Longformer). A layout is a boolean map of
// which (block x block) tiles of the score matrix exist, shared by all query
// heads or one per query head, plus an optional element rule applied inside
// present tiles. The element-level rule of a call with a layout:
//   (i', j) is visible iff present[h][i' / block][j / block]
//                        && rule(i', j)
//                        && the usual element masks allow it (attention.h:
//                           causal, window, global tokens, key padding),
// with i' the query's absolute position (key coordinates, bottom-right
// aligned). Absent tiles cost nothing in the flash kernels. The builders of
// layouts are in src/nn/sparse/block_layout.h.
#pragma once
#include <cstdint>
#include <vector>

namespace mf {

// The element rule inside present tiles, for patterns defined per element.
//   Strided (period l):   |i' - j| < l  or  (i' - j) mod l == 0
//   Fixed (period l, c):  floor(i' / l) == floor(j / l)  or  j mod l >= l - c
// (Child et al. 2019, section 4.2; causal masking, if any, comes from the call.)
struct SparseElementRule {
  enum class Kind { None, Strided, Fixed };
  Kind kind = Kind::None;
  std::int64_t period = 0;   // l
  std::int64_t summary = 0;  // c (Fixed)
};

struct BlockLayout {
  std::int64_t block = 0;  // positions per tile side (queries and keys); a multiple of 16
  std::int64_t heads = 1;  // 1: shared by every query head; else one map per query head
  std::int64_t row_blocks = 0, col_blocks = 0;
  std::vector<std::uint8_t> present;  // [heads, row_blocks, col_blocks], nonzero: the tile exists
  SparseElementRule rule;

  bool at(std::int64_t h, std::int64_t r, std::int64_t c) const {
    return present[static_cast<std::size_t>((h * row_blocks + r) * col_blocks + c)] != 0;
  }
  // Fraction of present tiles.
  double density() const {
    std::int64_t n = 0;
    for (auto x : present) n += x != 0;
    return present.empty() ? 0.0 : static_cast<double>(n) / static_cast<double>(present.size());
  }
};

inline std::int64_t floor_div(std::int64_t a, std::int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }
inline std::int64_t floor_mod(std::int64_t a, std::int64_t b) { return a - floor_div(a, b) * b; }

// rule(i', j) of SparseElementRule, in integers.
inline bool sparse_rule_allows(const SparseElementRule& r, std::int64_t ip, std::int64_t j) {
  switch (r.kind) {
    case SparseElementRule::Kind::None:
      return true;
    case SparseElementRule::Kind::Strided: {
      const std::int64_t diff = ip - j;
      return (diff < r.period && -diff < r.period) || floor_mod(diff, r.period) == 0;
    }
    case SparseElementRule::Kind::Fixed:
      return floor_div(ip, r.period) == floor_div(j, r.period) || floor_mod(j, r.period) >= r.period - r.summary;
  }
  return true;
}

// Throws mf::Error (prefixed by op) naming what is wrong: block a multiple of 16
// in [16, 4096], heads >= 1, sizes matching `present`, the rule's parameters.
void check_block_layout(const BlockLayout& layout, const char* op);

}  // namespace mf
