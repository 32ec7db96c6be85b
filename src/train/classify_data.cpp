#include "train/classify_data.h"

#include <algorithm>
#include <charconv>
#include <limits>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/rng.h"

namespace mf {
namespace {

constexpr std::uint64_t kShuffleSalt = 0x6d662d636c617373ull;  // keeps example order apart from other draws

// "-?[0-9]+": what counts as an integer column (the header test).
bool looks_integer(std::string_view s) {
  if (!s.empty() && s.front() == '-') s.remove_prefix(1);
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::int32_t parse_label(std::string_view s, const std::string& where) {
  MF_CHECK(looks_integer(s), "[classify_data] ", where, ": label '", s, "' is not an integer");
  MF_CHECK(s.front() != '-', "[classify_data] ", where, ": label ", s, " is negative");
  std::int64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  MF_CHECK(ec == std::errc() && end == s.data() + s.size() && v <= std::numeric_limits<std::int32_t>::max(),
           "[classify_data] ", where, ": label ", s, " is too large");
  return static_cast<std::int32_t>(v);
}

}  // namespace

ClassifyData ClassifyData::parse(std::string_view text, const std::string& source, std::int64_t max_len) {
  MF_CHECK(max_len >= 0, "[classify_data] max_len must be >= 0 but is ", max_len);
  ClassifyData d;
  d.source = source;
  d.max_len = max_len;
  d.offsets.push_back(0);
  std::int64_t line_no = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const std::string where = str_cat(source, ":", line_no);
    MF_CHECK(!line.empty(), "[classify_data] ", where, ": empty line");
    const std::size_t tab = line.find('\t');
    MF_CHECK(tab != std::string_view::npos, "[classify_data] ", where, ": no tab (expected TEXT<TAB>LABEL)");
    MF_CHECK(line.find('\t', tab + 1) == std::string_view::npos, "[classify_data] ", where,
             ": more than one tab (expected TEXT<TAB>LABEL)");
    std::string_view body = line.substr(0, tab), label = line.substr(tab + 1);
    if (line_no == 1 && !looks_integer(label)) {
      d.has_header = true;
      continue;
    }
    MF_CHECK(!body.empty(), "[classify_data] ", where, ": empty text");
    const std::int32_t y = parse_label(label, where);
    if (max_len > 0 && static_cast<std::int64_t>(body.size()) > max_len) {
      ++d.truncated;
      d.truncated_bytes += static_cast<std::int64_t>(body.size()) - max_len;
      body = body.substr(0, static_cast<std::size_t>(max_len));
    }
    d.bytes.append(body);
    d.offsets.push_back(static_cast<std::int64_t>(d.bytes.size()));
    d.labels.push_back(y);
    d.lines.push_back(line_no);
  }
  MF_CHECK(d.size() > 0, "[classify_data] ", source, ": no examples", d.has_header ? " after the header" : "");
  return d;
}

ClassifyData ClassifyData::load(const std::string& path, std::int64_t max_len) {
  return parse(read_file(path), path, max_len);
}

std::int64_t ClassifyData::longest() const {
  std::int64_t m = 0;
  for (std::int64_t i = 0; i < size(); ++i) m = std::max(m, length(i));
  return m;
}

std::int32_t ClassifyData::max_label() const { return *std::max_element(labels.begin(), labels.end()); }

std::string ClassifyData::summary() const {
  std::string s = str_cat(size(), " examples, labels 0..", max_label(), ", longest ", longest(), " bytes");
  if (max_len > 0) s += str_cat(", ", truncated, " truncated to ", max_len, " bytes (", truncated_bytes, " bytes dropped)");
  return s;
}

void ClassifyData::check_labels(std::int64_t num_labels) const {
  for (std::size_t i = 0; i < labels.size(); ++i)
    MF_CHECK(labels[i] < num_labels, "[classify_data] ", source, ":", lines[i], ": label ", labels[i],
             " is outside the model's ", num_labels, " labels (0..", num_labels - 1, ")");
}

std::uint64_t ClassifyData::fingerprint() const {
  std::uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&h](std::uint64_t v) {
    for (int k = 0; k < 8; ++k) {
      h ^= (v >> (8 * k)) & 0xff;
      h *= 0x100000001b3ull;
    }
  };
  for (std::int64_t i = 0; i < size(); ++i) {
    mix(static_cast<std::uint64_t>(length(i)));
    mix(static_cast<std::uint64_t>(labels[static_cast<std::size_t>(i)]));
    for (std::int64_t j = offsets[static_cast<std::size_t>(i)]; j < offsets[static_cast<std::size_t>(i + 1)]; ++j) {
      h ^= static_cast<unsigned char>(bytes[static_cast<std::size_t>(j)]);
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

ClassifySampler::ClassifySampler(std::int64_t num_examples, std::uint64_t seed, std::int64_t batch,
                                 std::int64_t grad_accum)
    : n_(num_examples), batch_(batch), grad_accum_(grad_accum), seed_(seed) {
  MF_CHECK(n_ >= 1 && batch_ >= 1 && grad_accum_ >= 1, "[classify_data] bad sampler: ", n_, " examples, batch ",
           batch_, ", grad_accum ", grad_accum_);
}

std::vector<std::int64_t> ClassifySampler::epoch_permutation(std::int64_t n, std::uint64_t seed, std::int64_t epoch) {
  std::vector<std::int64_t> perm(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) perm[static_cast<std::size_t>(i)] = i;
  Rng rng(seed ^ kShuffleSalt, static_cast<std::uint64_t>(epoch));
  for (std::int64_t i = n - 1; i > 0; --i)
    std::swap(perm[static_cast<std::size_t>(i)],
              perm[static_cast<std::size_t>(rng.below(static_cast<std::uint64_t>(i + 1)))]);
  return perm;
}

std::vector<std::int64_t> ClassifySampler::indices(std::int64_t step, std::int64_t micro) {
  MF_CHECK(step >= 0 && micro >= 0 && micro < grad_accum_, "[classify_data] bad sampler position: step ", step,
           ", micro-batch ", micro);
  std::vector<std::int64_t> out(static_cast<std::size_t>(batch_));
  const std::int64_t first = (step * grad_accum_ + micro) * batch_;
  for (std::int64_t b = 0; b < batch_; ++b) {
    const std::int64_t p = first + b, epoch = p / n_;
    if (epoch != cached_epoch_) {
      perm_ = epoch_permutation(n_, seed_, epoch);
      cached_epoch_ = epoch;
    }
    out[static_cast<std::size_t>(b)] = perm_[static_cast<std::size_t>(p % n_)];
  }
  return out;
}

std::int64_t fill_classify_batch(const ClassifyData& data, const std::vector<std::int64_t>& indices, Tensor& tokens,
                                 Tensor& mask, Tensor& labels) {
  const std::int64_t b = static_cast<std::int64_t>(indices.size());
  MF_CHECK(b >= 1, "[classify_data] empty batch");
  std::int64_t lmax = 0;
  for (std::int64_t i : indices) {
    MF_CHECK(i >= 0 && i < data.size(), "[classify_data] example ", i, " is outside '", data.source, "' (",
             data.size(), " examples)");
    lmax = std::max(lmax, data.length(i));
  }
  tokens = Tensor::zeros({b, lmax}, DType::I32);
  mask = Tensor::zeros({b, lmax}, DType::I32);
  labels = Tensor::empty({b}, DType::I32);
  std::int32_t* tok = tokens.data<std::int32_t>();
  std::int32_t* msk = mask.data<std::int32_t>();
  std::int32_t* lab = labels.data<std::int32_t>();
  const unsigned char* src = reinterpret_cast<const unsigned char*>(data.bytes.data());
  std::int64_t real = 0;
  for (std::int64_t r = 0; r < b; ++r) {
    const std::int64_t i = indices[static_cast<std::size_t>(r)], o = data.offsets[static_cast<std::size_t>(i)];
    const std::int64_t len = data.length(i);
    for (std::int64_t j = 0; j < len; ++j) {
      tok[r * lmax + j] = src[o + j];
      msk[r * lmax + j] = 1;
    }
    lab[r] = data.labels[static_cast<std::size_t>(i)];
    real += len;
  }
  return real;
}

}  // namespace mf
