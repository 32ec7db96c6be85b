#include "train/sequence_data.h"

#include <algorithm>
#include <charconv>
#include <limits>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"

namespace mf {
namespace {

// Splits a space-separated list; throws on an empty list.
std::vector<std::string_view> split_spaces(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t pos = 0;
  while (pos < s.size()) {
    while (pos < s.size() && s[pos] == ' ') ++pos;
    std::size_t end = pos;
    while (end < s.size() && s[end] != ' ') ++end;
    if (end > pos) out.push_back(s.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

bool parse_id(std::string_view s, std::int32_t& v) {
  if (s.empty() || s.front() == '-' || s.front() == '+') return false;
  std::int64_t x = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), x);
  if (ec != std::errc() || end != s.data() + s.size() || x > std::numeric_limits<std::int32_t>::max()) return false;
  v = static_cast<std::int32_t>(x);
  return true;
}

void check_example(const std::vector<std::int32_t>& in, const std::vector<std::int32_t>& target,
                   const std::string& where) {
  MF_CHECK(!in.empty(), "[sequence_data] ", where, ": empty input list");
  MF_CHECK(in.size() == target.size(), "[sequence_data] ", where, ": ", in.size(), " inputs but ", target.size(),
           " targets (one target per position)");
  for (std::int32_t t : in) MF_CHECK(t >= 0, "[sequence_data] ", where, ": negative input token ", t);
  bool any = false;
  for (std::int32_t t : target) {
    MF_CHECK(t >= -1, "[sequence_data] ", where, ": target ", t, " is neither a token nor -1 (not scored)");
    any = any || t >= 0;
  }
  MF_CHECK(any, "[sequence_data] ", where, ": no scored target (every target is '-')");
}

}  // namespace

void SequenceData::add(const std::vector<std::int32_t>& in, const std::vector<std::int32_t>& target) {
  check_example(in, target, str_cat(source, ": example ", size()));
  inputs.insert(inputs.end(), in.begin(), in.end());
  targets.insert(targets.end(), target.begin(), target.end());
  offsets.push_back(static_cast<std::int64_t>(inputs.size()));
  lines.push_back(static_cast<std::int64_t>(lines.size()) + 2);  // as saved, after the header
}

SequenceData SequenceData::parse(std::string_view text, const std::string& source) {
  SequenceData d;
  d.source = source;
  std::int64_t line_no = 0;
  std::size_t pos = 0;
  std::vector<std::int32_t> in, target;
  while (pos < text.size()) {
    const std::size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const std::string where = str_cat(source, ":", line_no);
    MF_CHECK(!line.empty(), "[sequence_data] ", where, ": empty line");
    const std::size_t tab = line.find('\t');
    MF_CHECK(tab != std::string_view::npos && line.find('\t', tab + 1) == std::string_view::npos, "[sequence_data] ",
             where, ": expected exactly one tab (INPUTS<TAB>TARGETS)");
    const std::vector<std::string_view> a = split_spaces(line.substr(0, tab)), b = split_spaces(line.substr(tab + 1));
    std::int32_t v = 0;
    if (line_no == 1 && (a.empty() || !parse_id(a.front(), v))) {
      d.has_header = true;
      continue;
    }
    in.clear();
    target.clear();
    for (std::string_view s : a) {
      MF_CHECK(parse_id(s, v), "[sequence_data] ", where, ": input '", s, "' is not a token id (0 .. 2^31-1)");
      in.push_back(v);
    }
    for (std::string_view s : b) {
      if (s == "-") {
        target.push_back(-1);
        continue;
      }
      MF_CHECK(parse_id(s, v), "[sequence_data] ", where, ": target '", s, "' is neither a token id nor '-'");
      target.push_back(v);
    }
    check_example(in, target, where);
    d.inputs.insert(d.inputs.end(), in.begin(), in.end());
    d.targets.insert(d.targets.end(), target.begin(), target.end());
    d.offsets.push_back(static_cast<std::int64_t>(d.inputs.size()));
    d.lines.push_back(line_no);
  }
  MF_CHECK(d.size() > 0, "[sequence_data] ", source, ": no examples", d.has_header ? " after the header" : "");
  return d;
}

SequenceData SequenceData::load(const std::string& path) { return parse(read_file(path), path); }

std::string SequenceData::to_text() const {
  std::string s = "input\ttarget\n";
  for (std::int64_t i = 0; i < size(); ++i) {
    const std::size_t o = static_cast<std::size_t>(offsets[static_cast<std::size_t>(i)]);
    const std::size_t n = static_cast<std::size_t>(length(i));
    for (std::size_t j = 0; j < n; ++j) {
      if (j) s += ' ';
      s += std::to_string(inputs[o + j]);
    }
    s += '\t';
    for (std::size_t j = 0; j < n; ++j) {
      if (j) s += ' ';
      if (targets[o + j] < 0)
        s += '-';
      else
        s += std::to_string(targets[o + j]);
    }
    s += '\n';
  }
  return s;
}

void SequenceData::save(const std::string& path) const { write_file_atomic(path, to_text()); }

std::int64_t SequenceData::longest() const {
  std::int64_t m = 0;
  for (std::int64_t i = 0; i < size(); ++i) m = std::max(m, length(i));
  return m;
}

std::int32_t SequenceData::max_token() const {
  std::int32_t m = 0;
  for (std::int32_t t : inputs) m = std::max(m, t);
  for (std::int32_t t : targets) m = std::max(m, t);
  return m;
}

std::int64_t SequenceData::scored() const {
  return static_cast<std::int64_t>(std::count_if(targets.begin(), targets.end(), [](std::int32_t t) { return t >= 0; }));
}

std::uint64_t SequenceData::fingerprint() const {
  std::uint64_t h = 1469598103934665603ull;
  auto mix = [&](std::uint64_t v) {
    for (int k = 0; k < 8; ++k) {
      h ^= (v >> (8 * k)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  for (std::int32_t t : inputs) mix(static_cast<std::uint32_t>(t));
  for (std::int32_t t : targets) mix(static_cast<std::uint32_t>(t));
  for (std::int64_t o : offsets) mix(static_cast<std::uint64_t>(o));
  return h;
}

std::string SequenceData::summary() const {
  std::int64_t shortest = longest();
  for (std::int64_t i = 0; i < size(); ++i) shortest = std::min(shortest, length(i));
  return str_cat(size(), " examples, lengths ", shortest, "..", longest(), ", ", scored(), " scored targets, tokens 0..",
                 max_token());
}

std::int64_t fill_sequence_batch(const SequenceData& data, const std::vector<std::int64_t>& indices, Tensor& tokens,
                                 Tensor& targets) {
  const std::int64_t b = static_cast<std::int64_t>(indices.size());
  MF_CHECK(b >= 1, "[sequence_data] empty batch");
  std::int64_t lmax = 0;
  for (std::int64_t i : indices) {
    MF_CHECK(i >= 0 && i < data.size(), "[sequence_data] example ", i, " is outside '", data.source, "' (",
             data.size(), " examples)");
    lmax = std::max(lmax, data.length(i));
  }
  tokens = Tensor::zeros({b, lmax}, DType::I32);
  targets = Tensor::empty({b, lmax}, DType::I32);
  std::int32_t* tok = tokens.data<std::int32_t>();
  std::int32_t* tgt = targets.data<std::int32_t>();
  std::fill(tgt, tgt + b * lmax, -1);
  std::int64_t real = 0;
  for (std::int64_t r = 0; r < b; ++r) {
    const std::int64_t i = indices[static_cast<std::size_t>(r)];
    const std::size_t o = static_cast<std::size_t>(data.offsets[static_cast<std::size_t>(i)]);
    const std::int64_t len = data.length(i);
    std::copy_n(data.inputs.begin() + static_cast<std::ptrdiff_t>(o), len, tok + r * lmax);
    std::copy_n(data.targets.begin() + static_cast<std::ptrdiff_t>(o), len, tgt + r * lmax);
    real += len;
  }
  return real;
}

}  // namespace mf
