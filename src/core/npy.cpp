// NumPy .npy reader/writer (format spec: numpy/doc/neps/nep-0001-npy-format).
// The header is a Python dict literal; it is read by a small strict parser
// (strings, ints, True/False/None, tuples, lists), never evaluated.
#include "core/npy.h"

#include <bit>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "core/atomic_file.h"

namespace mf {
namespace {

static_assert(std::endian::native == std::endian::little, "npy I/O assumes a little-endian host");

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLen = 6;
constexpr int kMaxDepth = 8;  // nesting allowed in header literals (ours need 2)

// A parsed Python literal.
struct PyValue {
  enum Kind { Str, Int, Bool, None, Tuple, List, Dict } kind = None;
  std::string str;
  std::int64_t i = 0;
  bool b = false;
  std::vector<PyValue> items;                              // Tuple, List
  std::vector<std::pair<std::string, PyValue>> entries;  // Dict (string keys only)
};

const char* kind_name(PyValue::Kind k) {
  switch (k) {
    case PyValue::Str: return "a string";
    case PyValue::Int: return "an integer";
    case PyValue::Bool: return "a bool";
    case PyValue::None: return "None";
    case PyValue::Tuple: return "a tuple";
    case PyValue::List: return "a list";
    case PyValue::Dict: return "a dict";
  }
  return "?";
}

// Strict recursive-descent parser for the subset of Python literals that
// appear in .npy headers. Errors name the file and the byte position.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& file) : s_(text), file_(file) {}

  PyValue parse_header() {
    skip_ws();
    if (pos_ >= s_.size() || s_[pos_] != '{') error("header must start with a dict '{'");
    PyValue v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) error("unexpected characters after the header dict");
    return v;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    fail("[npy] file '", file_, "': malformed header: ", what, " at header position ", pos_);
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }
  bool consume(char c) {
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool starts_with_word(std::string_view w) const {
    if (s_.substr(pos_, w.size()) != w) return false;
    const std::size_t e = pos_ + w.size();
    return e >= s_.size() || !(std::isalnum(static_cast<unsigned char>(s_[e])) || s_[e] == '_');
  }

  PyValue parse_value(int depth) {
    if (depth > kMaxDepth) error("literal nested too deeply");
    skip_ws();
    if (pos_ >= s_.size()) error("unexpected end of header");
    const char c = s_[pos_];
    PyValue v;
    if (c == '\'' || c == '"') {
      v.kind = PyValue::Str;
      v.str = parse_string();
    } else if (c == '-' || c == '+' || (c >= '0' && c <= '9')) {
      v.kind = PyValue::Int;
      v.i = parse_int();
    } else if (starts_with_word("True") || starts_with_word("False")) {
      v.kind = PyValue::Bool;
      v.b = c == 'T';
      pos_ += v.b ? 4 : 5;
    } else if (starts_with_word("None")) {
      v.kind = PyValue::None;
      pos_ += 4;
    } else if (c == '(' || c == '[') {
      v.kind = c == '(' ? PyValue::Tuple : PyValue::List;
      const char close = c == '(' ? ')' : ']';
      ++pos_;
      bool need_sep = false, saw_comma = false;
      while (!consume(close)) {
        if (need_sep) error(std::string("expected ',' or '") + close + "'");
        v.items.push_back(parse_value(depth + 1));
        need_sep = !consume(',');
        saw_comma = saw_comma || !need_sep;
      }
      // "(3)" is the int 3 in Python, not a tuple: only "(3,)" is a 1-tuple.
      if (v.kind == PyValue::Tuple && v.items.size() == 1 && !saw_comma) error("'(x)' is not a tuple; write '(x,)'");
    } else if (c == '{') {
      v.kind = PyValue::Dict;
      ++pos_;
      bool need_sep = false;
      while (!consume('}')) {
        if (need_sep) error("expected ',' or '}' in dict");
        skip_ws();
        if (pos_ >= s_.size()) error("unexpected end of header (missing '}')");
        if (s_[pos_] != '\'' && s_[pos_] != '"') error("dict keys must be strings");
        std::string key = parse_string();
        for (const auto& e : v.entries)
          if (e.first == key) error("duplicate key '" + key + "'");
        if (!consume(':')) error("expected ':' after key '" + key + "'");
        v.entries.emplace_back(std::move(key), parse_value(depth + 1));
        need_sep = !consume(',');
      }
    } else {
      char shown[8];
      std::snprintf(shown, sizeof shown, std::isprint(static_cast<unsigned char>(c)) ? "%c" : "\\x%02x",
                    static_cast<unsigned char>(c));
      error(std::string("unexpected character '") + shown + "'");
    }
    return v;
  }

  std::string parse_string() {
    const char quote = s_[pos_++];
    std::string out;
    while (true) {
      if (pos_ >= s_.size() || s_[pos_] == '\n') error("unterminated string");
      const char c = s_[pos_++];
      if (c == quote) return out;
      if (c == '\\') error("escape sequences in strings are not supported");
      out += c;
    }
  }

  std::int64_t parse_int() {
    bool neg = false;
    if (s_[pos_] == '-' || s_[pos_] == '+') neg = s_[pos_++] == '-';
    if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') error("expected digits");
    if (s_[pos_] == '0' && pos_ + 1 < s_.size() && s_[pos_ + 1] >= '0' && s_[pos_ + 1] <= '9')
      error("integers with leading zeros are not valid Python");
    // Magnitude up to 2^63 so that INT64_MIN parses; anything larger is rejected.
    std::uint64_t mag = 0;
    const std::uint64_t limit = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) + (neg ? 1 : 0);
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      const unsigned d = static_cast<unsigned>(s_[pos_++] - '0');
      if (mag > (limit - d) / 10) error("integer too large");
      mag = mag * 10 + d;
    }
    if (pos_ < s_.size() && (std::isalpha(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '.' || s_[pos_] == '_'))
      error("only plain decimal integers are supported");
    return neg ? static_cast<std::int64_t>(0 - mag) : static_cast<std::int64_t>(mag);
  }

  std::string_view s_;
  const std::string& file_;
  std::size_t pos_ = 0;
};

// Maps a descr string to a dtype; '|' and '=' mean native (little-endian here).
DType parse_descr(const std::string& descr, const std::string& file) {
  if (descr.size() == 3) {
    const char order = descr[0];
    const std::string code = descr.substr(1);
    const bool known = code == "f4" || code == "i4" || code == "i8";
    if (known && order == '>')
      fail("[npy] file '", file, "': big-endian dtype '", descr,
           "' is not supported (only little-endian; convert with arr.astype('<", code, "'))");
    if (known && (order == '<' || order == '|' || order == '=')) {
      if (code == "f4") return DType::F32;
      if (code == "i4") return DType::I32;
      return DType::I64;
    }
  }
  fail("[npy] file '", file, "': unsupported dtype '", descr,
       "' (supported: '<f4' float32, '<i4' int32, '<i8' int64)");
}

const char* descr_of(DType t) {
  switch (t) {
    case DType::F32: return "<f4";
    case DType::I32: return "<i4";
    case DType::I64: return "<i8";
    default: return nullptr;
  }
}

// Element count of `shape`; rejects shapes whose size could overflow (the
// product of the non-zero dimensions must stay below 2^63 / 8).
std::int64_t checked_numel(const Shape& shape, const std::string& file) {
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max() / 8;
  std::int64_t bound = 1, numel = 1;
  for (auto d : shape) {
    if (d > 1 && bound > kMax / d)
      fail("[npy] file '", file, "': shape ", shape_str(shape), " is absurdly large (byte size overflows)");
    if (d > 1) bound *= d;
    numel *= d;  // <= bound, cannot overflow
  }
  return numel;
}

}  // namespace

Tensor parse_npy(const std::string& bytes, const std::string& name) {
  const std::size_t size = bytes.size();
  MF_CHECK(size >= kMagicLen + 2 && std::memcmp(bytes.data(), kMagic, kMagicLen) == 0, "[npy] file '", name,
           "': not a .npy file (missing the \\x93NUMPY magic)");
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(bytes[i]); };
  const unsigned major = byte(6), minor = byte(7);
  MF_CHECK((major == 1 || major == 2 || major == 3) && minor == 0, "[npy] file '", name,
           "': unsupported format version ", major, ".", minor, " (supported: 1.0, 2.0, 3.0)");
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  const std::size_t prefix = kMagicLen + 2 + len_bytes;
  MF_CHECK(size >= prefix, "[npy] file '", name, "': truncated before the header length (", size, " bytes)");
  std::size_t header_len = 0;
  for (std::size_t i = 0; i < len_bytes; ++i) header_len |= static_cast<std::size_t>(byte(8 + i)) << (8 * i);
  MF_CHECK(header_len <= size - prefix, "[npy] file '", name, "': header length ", header_len,
           " exceeds the file size (", size, " bytes)");

  const PyValue dict = HeaderParser(std::string_view(bytes).substr(prefix, header_len), name).parse_header();
  const PyValue* descr = nullptr;
  const PyValue* fortran = nullptr;
  const PyValue* shape_v = nullptr;
  for (const auto& [key, value] : dict.entries) {
    if (key == "descr") descr = &value;
    else if (key == "fortran_order") fortran = &value;
    else if (key == "shape") shape_v = &value;
    else fail("[npy] file '", name, "': unexpected header key '", key, "' (expected descr, fortran_order, shape)");
  }
  MF_CHECK(descr, "[npy] file '", name, "': header lacks the key 'descr'");
  MF_CHECK(fortran, "[npy] file '", name, "': header lacks the key 'fortran_order'");
  MF_CHECK(shape_v, "[npy] file '", name, "': header lacks the key 'shape'");
  MF_CHECK(descr->kind == PyValue::Str, "[npy] file '", name, "': 'descr' must be a string but is ",
           kind_name(descr->kind), " (structured dtypes are not supported)");
  // One-byte booleans and integers ('|b1', '|u1', '|i1': masks, block maps) load as int32.
  const std::string& code = descr->str;
  const bool bytes_to_i32 = code == "|b1" || code == "|u1" || code == "|i1";
  const DType dtype = bytes_to_i32 ? DType::I32 : parse_descr(code, name);
  MF_CHECK(fortran->kind == PyValue::Bool, "[npy] file '", name, "': 'fortran_order' must be True or False but is ",
           kind_name(fortran->kind));
  MF_CHECK(!fortran->b, "[npy] file '", name,
           "': fortran_order True is not supported (only C order; save np.ascontiguousarray(a))");
  MF_CHECK(shape_v->kind == PyValue::Tuple, "[npy] file '", name, "': 'shape' must be a tuple but is ",
           kind_name(shape_v->kind));
  Shape shape;
  for (const auto& d : shape_v->items) {
    MF_CHECK(d.kind == PyValue::Int, "[npy] file '", name, "': 'shape' entries must be integers, found ",
             kind_name(d.kind));
    MF_CHECK(d.i >= 0, "[npy] file '", name, "': 'shape' has a negative dimension ", d.i);
    shape.push_back(d.i);
  }
  const std::int64_t numel = checked_numel(shape, name);
  const std::size_t need = static_cast<std::size_t>(numel) * (bytes_to_i32 ? 1 : dtype_size(dtype));
  const std::size_t have = size - prefix - header_len;
  MF_CHECK(have >= need, "[npy] file '", name, "': data is truncated: shape ", shape_str(shape), " of ",
           dtype_name(dtype), " needs ", need, " bytes but the file has ", have);
  MF_CHECK(have == need, "[npy] file '", name, "': ", have - need, " trailing bytes after the data of shape ",
           shape_str(shape), " (", need, " bytes)");
  Tensor t = Tensor::empty(shape, dtype);
  if (bytes_to_i32) {
    const char* src = bytes.data() + prefix + header_len;
    std::int32_t* dst = t.data<std::int32_t>();
    for (std::int64_t x = 0; x < numel; ++x)
      dst[x] = code == "|i1" ? static_cast<std::int32_t>(static_cast<signed char>(src[x]))
                             : static_cast<std::int32_t>(static_cast<unsigned char>(src[x]));
  } else if (need) {
    std::memcpy(t.raw_data(), bytes.data() + prefix + header_len, need);
  }
  return t;
}

Tensor load_npy(const std::string& path) { return parse_npy(read_file(path), path); }

void save_npy(const std::string& path, const Tensor& t) {
  MF_CHECK(t.defined(), "[save_npy] '", path, "': tensor is undefined");
  const char* descr = descr_of(t.dtype());
  MF_CHECK(descr, "[save_npy] '", path, "': dtype ", dtype_name(t.dtype()),
           " cannot be stored in .npy (supported: float32, int32, int64; convert with to(DType::F32))");
  const Tensor c = t.contiguous();
  std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (";
  for (int i = 0; i < c.dim(); ++i) dict += std::to_string(c.size(i)) + (i + 1 < c.dim() ? ", " : "");
  if (c.dim() == 1) dict += ",";  // "(3,)": a 1-tuple
  dict += "), }";
  // Pad with spaces and a final '\n' so that the data starts on a 64-byte boundary (as numpy does).
  const auto padded = [&](std::size_t prefix) {
    const std::size_t total = prefix + dict.size() + 1;
    return dict + std::string((64 - total % 64) % 64, ' ') + "\n";
  };
  std::string header = padded(10);
  unsigned major = 1;
  if (header.size() > 0xffff) {
    major = 2;
    header = padded(12);
  }
  std::string out(kMagic, kMagicLen);
  out += static_cast<char>(major);
  out += '\0';
  for (unsigned i = 0; i < (major == 1 ? 2u : 4u); ++i) out += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  out += header;
  write_file_atomic(path, [&](std::ostream& os) {
    os.write(out.data(), static_cast<std::streamsize>(out.size()));
    if (c.nbytes()) os.write(static_cast<const char*>(c.raw_data()), static_cast<std::streamsize>(c.nbytes()));
  });
}

}  // namespace mf
