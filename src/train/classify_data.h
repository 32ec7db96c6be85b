// Sequence-classification data laid out as the Long Range Arena ListOps TSV
// files: an optional header line, then `TEXT<TAB>LABEL` per line (text = bytes,
// one token per byte; label = a non-negative integer). Batches are a pure
// function of (seed, step, micro-batch): epochs of Philox shuffles, each batch
// padded to its own longest sequence with a key padding mask.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace mf {

// Parsed examples, stored back to back: example i is
// bytes[offsets[i], offsets[i + 1]) with labels[i], read from line lines[i].
struct ClassifyData {
  std::string source;                // file name (or a label), prefixes errors
  std::string bytes;                 // the texts, concatenated (after truncation)
  std::vector<std::int64_t> offsets;  // size() + 1 entries
  std::vector<std::int32_t> labels;
  std::vector<std::int64_t> lines;    // 1-based line number of each example
  bool has_header = false;
  std::int64_t max_len = 0;           // truncation length used (0 = none)
  std::int64_t truncated = 0;         // examples cut to max_len
  std::int64_t truncated_bytes = 0;   // bytes dropped by that

  // Strict parsing; throws mf::Error "[classify_data] SOURCE:LINE: ..." for a
  // line without exactly one tab, an empty text, or a label that is not a
  // non-negative decimal integer (below 2^31). The first line is a header when
  // its second column is not an integer (e.g. "Source\tTarget"); later lines
  // never are. A trailing "\r" is dropped (CRLF files); an empty line is an
  // error except for the file's final newline. max_len > 0 truncates longer
  // texts to their first max_len bytes and counts them in `truncated`.
  static ClassifyData parse(std::string_view text, const std::string& source, std::int64_t max_len = 0);
  // Reads a file (plain text) and parses it; the error names the file.
  static ClassifyData load(const std::string& path, std::int64_t max_len = 0);

  std::int64_t size() const { return static_cast<std::int64_t>(labels.size()); }
  std::int64_t length(std::int64_t i) const {
    return offsets[static_cast<std::size_t>(i + 1)] - offsets[static_cast<std::size_t>(i)];
  }
  std::int64_t longest() const;      // longest text (bytes, after truncation)
  std::int32_t max_label() const;
  std::int64_t total_bytes() const { return static_cast<std::int64_t>(bytes.size()); }
  // Throws naming SOURCE:LINE of the first label >= num_labels.
  void check_labels(std::int64_t num_labels) const;
  // One line for people: "N examples, labels 0..K, longest L bytes, T truncated to M bytes (D bytes dropped)".
  std::string summary() const;
  // FNV-1a 64 over texts, labels and boundaries: a resumed run checks it sees the same data.
  std::uint64_t fingerprint() const;
};

// The example indices of micro-batch `micro` at optimizer step `step`: the
// stream position p = (step * grad_accum + micro) * batch + b walks through
// epochs, epoch e = p / n being a Philox Fisher-Yates permutation of 0..n-1
// keyed by (seed, e). So every example is seen once per epoch and a run
// resumed at step s draws the batches of an uninterrupted run.
class ClassifySampler {
 public:
  ClassifySampler(std::int64_t num_examples, std::uint64_t seed, std::int64_t batch, std::int64_t grad_accum);
  std::vector<std::int64_t> indices(std::int64_t step, std::int64_t micro);
  // The permutation of one epoch (a pure function of (n, seed, epoch)).
  static std::vector<std::int64_t> epoch_permutation(std::int64_t n, std::uint64_t seed, std::int64_t epoch);

 private:
  std::int64_t n_, batch_, grad_accum_;
  std::uint64_t seed_;
  std::int64_t cached_epoch_ = -1;  // the permutation below belongs to this epoch
  std::vector<std::int64_t> perm_;
};

// tokens, mask: int32 [B, Lmax] with Lmax the longest of the B examples;
// tokens are the bytes then pad id 0, mask is 1 on real bytes and 0 on padding;
// labels: int32 [B]. Returns the number of real tokens.
std::int64_t fill_classify_batch(const ClassifyData& data, const std::vector<std::int64_t>& indices, Tensor& tokens,
                                 Tensor& mask, Tensor& labels);

}  // namespace mf
