// Token-level sequence data for tasks scored on some positions only (MQAR,
// selective copying, induction heads; src/compare/): one example per line,
// `INPUTS<TAB>TARGETS`, each a space-separated list of the same length;
// inputs are token ids >= 0, a target is a token id or "-" (not scored; -1 in
// memory, the LanguageModel's ignore marker). An optional first line whose
// first column is not a number (e.g. "input\ttarget") is a header. Batches
// are padded at the end to their longest example (pad input 0, target -1), so
// a causal model's scored positions never see padding.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace mf {

struct SequenceData {
  std::string source;                  // file name (or a label), prefixes errors
  std::vector<std::int32_t> inputs;    // all examples back to back
  std::vector<std::int32_t> targets;   // same layout; -1 = not scored
  std::vector<std::int64_t> offsets{0};  // size() + 1 entries
  std::vector<std::int64_t> lines;     // 1-based line of each example
  bool has_header = false;

  // Strict parsing: throws "[sequence_data] SOURCE:LINE: ..." for a line
  // without exactly one tab, an empty list, lists of different lengths, a
  // token that is not a non-negative integer below 2^31, a target that is
  // neither, or an example with no scored target.
  static SequenceData parse(std::string_view text, const std::string& source);
  static SequenceData load(const std::string& path);
  // The file text of `data` (header "input\ttarget"): parse(to_text(d)) == d.
  std::string to_text() const;
  void save(const std::string& path) const;  // atomic

  // Appends one example (the generators' entry point); same checks as parse.
  void add(const std::vector<std::int32_t>& in, const std::vector<std::int32_t>& target);

  std::int64_t size() const { return static_cast<std::int64_t>(offsets.size()) - 1; }
  std::int64_t length(std::int64_t i) const {
    return offsets[static_cast<std::size_t>(i + 1)] - offsets[static_cast<std::size_t>(i)];
  }
  std::int64_t longest() const;
  std::int32_t max_token() const;  // over inputs and scored targets
  std::int64_t scored() const;     // targets that are not -1
  // FNV-1a 64 over inputs, targets and boundaries (resume check).
  std::uint64_t fingerprint() const;
  std::string summary() const;  // "N examples, lengths A..B, S scored targets, tokens 0..V"
};

// tokens, targets: int32 [B, Lmax] for the examples `indices` (padded at the
// end with input 0 / target -1). Returns the real (non-padding) tokens.
std::int64_t fill_sequence_batch(const SequenceData& data, const std::vector<std::int64_t>& indices, Tensor& tokens,
                                 Tensor& targets);

}  // namespace mf
