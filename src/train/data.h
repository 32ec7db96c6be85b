// Training data: the byte-level tokenizer (vocab 256, one token per byte, so
// bits per byte = loss in nats / ln 2), text corpora (plain or gzip, which
// covers dictd's .dz files) with a contiguous held-out validation tail, and a
// batch sampler whose windows are a pure function of (seed, step, index).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace mf {

// ---- byte-level tokenizer ----
inline constexpr std::int64_t kByteVocabSize = 256;
std::vector<std::int32_t> byte_encode(std::string_view text);
// Throws mf::Error naming the position of a token outside [0, 256).
std::string byte_decode(const std::vector<std::int32_t>& tokens);
// One token is one byte: bits per byte = nats per token / ln 2.
double bits_per_byte(double loss_nats);

// ---- corpora ----
// The GNU Collaborative International Dictionary of English (Debian package
// dict-gcide): about 40 MB of English text, gzip-compressed (dictd .dz).
inline constexpr const char* kDefaultCorpusPath = "/usr/share/dictd/gcide.dict.dz";

// Reads a corpus streaming through zlib (plain files pass through unchanged).
// An empty path means kDefaultCorpusPath; max_bytes > 0 stops after that many
// bytes. Throws mf::Error naming the file (and the Debian package for the
// default) when it cannot be read or is empty.
std::string load_corpus_text(const std::string& path = "", std::int64_t max_bytes = 0);

// A corpus split into train = [0, train_end) and validation = [train_end, size),
// contiguous and disjoint.
struct TextCorpus {
  std::shared_ptr<const std::string> bytes;
  std::int64_t train_end = 0;
  std::string source;  // where it came from (path or a label)

  // val_fraction in (0, 1): the last ceil(fraction * size) bytes are held out.
  static TextCorpus from_text(std::string text, double val_fraction = 0.01, std::string source = "text");
  static TextCorpus load(const std::string& path = "", double val_fraction = 0.01, std::int64_t max_bytes = 0);
  // The train_end that from_text gives n bytes with val_fraction.
  static std::int64_t split_point(std::int64_t n, double val_fraction);

  std::int64_t size() const { return static_cast<std::int64_t>(bytes->size()); }
  std::int64_t train_bytes() const { return train_end; }
  std::int64_t val_bytes() const { return size() - train_end; }
  // FNV-1a 64 of all bytes: lets a resumed run check that it sees the same data.
  std::uint64_t fingerprint() const;
};

// ---- sampling ----
// Start offsets of the `batch` training windows (L + 1 bytes each, inside the
// train split) of micro-batch `micro` at optimizer step `step`. Window i is a
// pure function of (seed, step, micro * batch + i) through the Philox Rng, so
// a run resumed at step s draws exactly the batches of an uninterrupted run.
std::vector<std::int64_t> train_window_offsets(const TextCorpus& corpus, std::uint64_t seed, std::int64_t step,
                                               std::int64_t micro, std::int64_t batch, std::int64_t seq_len);

// A fixed validation set: windows of L + 1 bytes at stride L inside the
// validation split (every byte is a target at most once), thinned evenly to at
// most max_windows (0 = all).
std::vector<std::int64_t> val_window_offsets(const TextCorpus& corpus, std::int64_t seq_len,
                                             std::int64_t max_windows = 0);

// ---- ordered segments (segment-level recurrence: Transformer-XL) ----
// A split [begin, begin + batch * stream_len) cut into `batch` contiguous
// streams of stream_len bytes (the reference's LMOrderedIterator: the tail
// that does not fill a stream is dropped); segment s (0 .. segments - 1) of
// stream b is the window of L + 1 bytes at begin + b * stream_len + s * L, so
// consecutive segments of a stream continue each other's text.
struct SegmentStreams {
  std::int64_t begin = 0, stream_len = 0, seq_len = 0, batch = 0;
  std::int64_t segments = 0;  // per stream: (stream_len - 1) / L
  // The `batch` window offsets of segment `segment` (in [0, segments)).
  std::vector<std::int64_t> offsets(std::int64_t segment) const;
};
// The training split and the validation split as streams; throws naming the
// split when a stream cannot hold one segment.
SegmentStreams train_segment_streams(const TextCorpus& corpus, std::int64_t batch, std::int64_t seq_len);
SegmentStreams val_segment_streams(const TextCorpus& corpus, std::int64_t batch, std::int64_t seq_len);

// tokens[b] = bytes[o_b .. o_b + L), targets[b] = bytes[o_b + 1 .. o_b + L + 1); int32 [B, L].
void fill_windows(const TextCorpus& corpus, const std::vector<std::int64_t>& offsets, std::int64_t seq_len,
                  Tensor& tokens, Tensor& targets);

}  // namespace mf
