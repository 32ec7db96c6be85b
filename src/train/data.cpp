#include "train/data.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <numbers>
#include <sys/stat.h>

#include "core/error.h"
#include "core/rng.h"

namespace mf {

std::vector<std::int32_t> byte_encode(std::string_view text) {
  std::vector<std::int32_t> out(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) out[i] = static_cast<unsigned char>(text[i]);
  return out;
}

std::string byte_decode(const std::vector<std::int32_t>& tokens) {
  std::string out(tokens.size(), '\0');
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    MF_CHECK(tokens[i] >= 0 && tokens[i] < kByteVocabSize, "[byte_decode] token ", tokens[i], " at position ", i,
             " is not a byte (0..255)");
    out[i] = static_cast<char>(static_cast<unsigned char>(tokens[i]));
  }
  return out;
}

double bits_per_byte(double loss_nats) { return loss_nats / std::numbers::ln2; }

std::string load_corpus_text(const std::string& path_in, std::int64_t max_bytes) {
  const bool is_default = path_in.empty();
  const std::string path = is_default ? kDefaultCorpusPath : path_in;
  MF_CHECK(max_bytes >= 0, "[data] max_bytes must be >= 0 but is ", max_bytes);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (is_default)
      fail("[data] the default corpus '", path, "' is missing: install Debian's dict-gcide package ",
           "(apt-get install dict-gcide) or give a text file with --data PATH");
    fail("[data] cannot read corpus '", path, "': ", std::strerror(errno));
  }
  MF_CHECK(S_ISREG(st.st_mode), "[data] corpus '", path, "' is not a regular file");
  gzFile f = gzopen(path.c_str(), "rb");
  MF_CHECK(f != nullptr, "[data] cannot open corpus '", path, "': ", std::strerror(errno));
  gzbuffer(f, 1 << 20);
  std::string text;
  constexpr std::int64_t kPiece = 1 << 20;
  for (;;) {
    std::int64_t want = kPiece;
    if (max_bytes > 0) want = std::min<std::int64_t>(want, max_bytes - static_cast<std::int64_t>(text.size()));
    if (want <= 0) break;
    const std::size_t old = text.size();
    text.resize(old + static_cast<std::size_t>(want));
    const int got = gzread(f, text.data() + old, static_cast<unsigned>(want));
    if (got < 0) {
      int code = 0;
      const std::string why = gzerror(f, &code);
      gzclose(f);
      fail("[data] error reading corpus '", path, "' (zlib): ", why);
    }
    text.resize(old + static_cast<std::size_t>(got));
    if (got < want) {
      int code = 0;
      const char* why = gzerror(f, &code);
      if (code != Z_OK && code != Z_BUF_ERROR) {
        const std::string msg = why;
        gzclose(f);
        fail("[data] error reading corpus '", path, "' (zlib): ", msg);
      }
      if (code == Z_BUF_ERROR) {  // a gzip stream cut short
        gzclose(f);
        fail("[data] corpus '", path, "' is truncated (compressed data ends early)");
      }
      break;
    }
  }
  gzclose(f);
  MF_CHECK(!text.empty(), "[data] corpus '", path, "' is empty");
  return text;
}

std::int64_t TextCorpus::split_point(std::int64_t n, double val_fraction) {
  MF_CHECK(val_fraction > 0 && val_fraction < 1, "[data] val_fraction must be in (0, 1) but is ", val_fraction);
  MF_CHECK(n >= 2, "[data] a corpus of ", n, " bytes cannot be split; need at least 2");
  const std::int64_t val = static_cast<std::int64_t>(std::ceil(val_fraction * static_cast<double>(n)));
  return n - std::clamp<std::int64_t>(val, 1, n - 1);
}

TextCorpus TextCorpus::from_text(std::string text, double val_fraction, std::string source) {
  const std::int64_t n = static_cast<std::int64_t>(text.size());
  MF_CHECK(n >= 2, "[data] corpus '", source, "' has ", n, " bytes; need at least 2 to split");
  TextCorpus c;
  c.train_end = split_point(n, val_fraction);
  c.bytes = std::make_shared<const std::string>(std::move(text));
  c.source = std::move(source);
  return c;
}

TextCorpus TextCorpus::load(const std::string& path, double val_fraction, std::int64_t max_bytes) {
  return from_text(load_corpus_text(path, max_bytes), val_fraction, path.empty() ? kDefaultCorpusPath : path);
}

std::uint64_t TextCorpus::fingerprint() const {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : *bytes) {
    h ^= ch;
    h *= 0x100000001b3ull;
  }
  return h;
}

namespace {
constexpr std::uint64_t kDataSalt = 0x6d662d6461746121ull;  // keeps data draws apart from weight init
constexpr std::uint64_t kDrawsPerWindow = 16;               // Rng positions reserved per window

void check_seq_len(const TextCorpus& c, std::int64_t seq_len, std::int64_t avail, const char* split) {
  MF_CHECK(seq_len >= 1, "[data] seq_len must be >= 1 but is ", seq_len);
  MF_CHECK(avail >= seq_len + 1, "[data] the ", split, " split of '", c.source, "' has ", avail,
           " bytes; a window of seq_len + 1 = ", seq_len + 1, " bytes does not fit");
}
}  // namespace

std::vector<std::int64_t> train_window_offsets(const TextCorpus& c, std::uint64_t seed, std::int64_t step,
                                               std::int64_t micro, std::int64_t batch, std::int64_t seq_len) {
  check_seq_len(c, seq_len, c.train_bytes(), "train");
  MF_CHECK(step >= 0 && micro >= 0 && batch >= 1, "[data] bad sampler position: step ", step, ", micro-batch ",
           micro, ", batch size ", batch);
  const std::uint64_t starts = static_cast<std::uint64_t>(c.train_bytes() - seq_len);  // offsets 0..starts-1
  Rng rng(seed ^ kDataSalt, static_cast<std::uint64_t>(step));
  std::vector<std::int64_t> out(static_cast<std::size_t>(batch));
  for (std::int64_t b = 0; b < batch; ++b) {
    rng.set_position(static_cast<std::uint64_t>(micro * batch + b) * kDrawsPerWindow);
    out[static_cast<std::size_t>(b)] = static_cast<std::int64_t>(rng.below(starts));
  }
  return out;
}

std::vector<std::int64_t> val_window_offsets(const TextCorpus& c, std::int64_t seq_len, std::int64_t max_windows) {
  check_seq_len(c, seq_len, c.val_bytes(), "validation");
  MF_CHECK(max_windows >= 0, "[data] max validation windows must be >= 0 but is ", max_windows);
  const std::int64_t count = (c.val_bytes() - 1) / seq_len;  // windows [i L, i L + L + 1) fit
  const std::int64_t keep = max_windows > 0 ? std::min(count, max_windows) : count;
  std::vector<std::int64_t> out(static_cast<std::size_t>(keep));
  for (std::int64_t i = 0; i < keep; ++i) out[static_cast<std::size_t>(i)] = c.train_end + (i * count / keep) * seq_len;
  return out;
}

namespace {

SegmentStreams segment_streams(std::int64_t begin, std::int64_t bytes, std::int64_t batch, std::int64_t seq_len,
                               const char* split) {
  MF_CHECK(batch >= 1 && seq_len >= 1, "[data] segment streams need batch >= 1 and seq_len >= 1 but got ", batch,
           " and ", seq_len);
  SegmentStreams s;
  s.begin = begin;
  s.stream_len = bytes / batch;
  s.seq_len = seq_len;
  s.batch = batch;
  s.segments = s.stream_len > 1 ? (s.stream_len - 1) / seq_len : 0;
  MF_CHECK(s.segments >= 1, "[data] the ", split, " split (", bytes, " bytes) cut into ", batch,
           " streams holds no segment of ", seq_len + 1, " bytes per stream");
  return s;
}

}  // namespace

std::vector<std::int64_t> SegmentStreams::offsets(std::int64_t segment) const {
  MF_CHECK(segment >= 0 && segment < segments, "[data] segment ", segment, " is outside [0, ", segments, ")");
  std::vector<std::int64_t> out(static_cast<std::size_t>(batch));
  for (std::int64_t b = 0; b < batch; ++b) out[static_cast<std::size_t>(b)] = begin + b * stream_len + segment * seq_len;
  return out;
}

SegmentStreams train_segment_streams(const TextCorpus& c, std::int64_t batch, std::int64_t seq_len) {
  return segment_streams(0, c.train_bytes(), batch, seq_len, "training");
}

SegmentStreams val_segment_streams(const TextCorpus& c, std::int64_t batch, std::int64_t seq_len) {
  return segment_streams(c.train_end, c.val_bytes(), batch, seq_len, "validation");
}

void fill_windows(const TextCorpus& c, const std::vector<std::int64_t>& offsets, std::int64_t seq_len,
                  Tensor& tokens, Tensor& targets) {
  const std::int64_t b = static_cast<std::int64_t>(offsets.size());
  if (!tokens.defined() || tokens.shape() != Shape{b, seq_len} || tokens.dtype() != DType::I32)
    tokens = Tensor::empty({b, seq_len}, DType::I32);
  if (!targets.defined() || targets.shape() != Shape{b, seq_len} || targets.dtype() != DType::I32)
    targets = Tensor::empty({b, seq_len}, DType::I32);
  MF_CHECK(tokens.is_contiguous() && targets.is_contiguous(), "[data] token tensors must be contiguous");
  const unsigned char* src = reinterpret_cast<const unsigned char*>(c.bytes->data());
  std::int32_t* tok = tokens.data<std::int32_t>();
  std::int32_t* tgt = targets.data<std::int32_t>();
  for (std::int64_t i = 0; i < b; ++i) {
    const std::int64_t o = offsets[static_cast<std::size_t>(i)];
    MF_CHECK(o >= 0 && o + seq_len + 1 <= c.size(), "[data] window at ", o, " of ", seq_len + 1,
             " bytes is outside the corpus (", c.size(), " bytes)");
    for (std::int64_t j = 0; j < seq_len; ++j) {
      tok[i * seq_len + j] = src[o + j];
      tgt[i * seq_len + j] = src[o + j + 1];
    }
  }
}

}  // namespace mf
