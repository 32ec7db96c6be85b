// safetensors reader/writer. The reader follows the reference implementation's
// rules (huggingface/safetensors): the sorted byte ranges must tile the data
// section exactly (no gaps, no overlaps); we also reject duplicate JSON keys,
// which nlohmann would otherwise accept silently (last one wins).
#include "core/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/atomic_file.h"

namespace mf {
namespace {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;  // 100 MB, as the reference implementation
constexpr int kMaxJsonDepth = 4;                        // {name: {key: [int]}} needs 3

using json = nlohmann::json;

template <typename... Args>
[[noreturn]] void bad_file(const std::string& file, Args&&... args) {
  fail("[safetensors] file '", file, "': ", std::forward<Args>(args)...);
}

struct StDType {
  const char* name;
  DType dtype;
};
constexpr StDType kDTypes[] = {
    {"F32", DType::F32}, {"BF16", DType::BF16}, {"F16", DType::F16}, {"I32", DType::I32}, {"I64", DType::I64}};

const char* st_name(DType t) {
  for (const auto& d : kDTypes)
    if (d.dtype == t) return d.name;
  return "?";
}

// Element count of `shape`; rejects shapes whose byte size could overflow
// (the product of the non-zero dimensions must stay below 2^63 / 8).
std::int64_t checked_numel(const Shape& shape, const std::string& file, const std::string& tensor) {
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max() / 8;
  std::int64_t bound = 1, numel = 1;
  for (auto d : shape) {
    if (d > 1 && bound > kMax / d)
      bad_file(file, "tensor '", tensor, "': shape ", shape_str(shape), " is absurdly large (byte size overflows)");
    if (d > 1) bound *= d;
    numel *= d;
  }
  return numel;
}

// Parses the header JSON, rejecting duplicate keys in any object and deep nesting.
json parse_header_json(const char* begin, const char* end, const std::string& file) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  const json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth > kMaxJsonDepth) bad_file(file, "header JSON is nested too deeply (depth ", depth, ")");
    switch (event) {
      case json::parse_event_t::object_start: keys.emplace_back(); break;
      case json::parse_event_t::object_end: keys.pop_back(); break;
      case json::parse_event_t::key: {
        const auto& k = parsed.get_ref<const std::string&>();
        if (!keys.back().insert(k).second) bad_file(file, "duplicate key '", k, "' in the header");
        break;
      }
      default: break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, cb, /*allow_exceptions=*/true);
  } catch (const json::exception& e) {
    bad_file(file, "header is not valid JSON: ", e.what());
  }
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  std::uint64_t begin, end;
};

std::uint64_t as_u64(const json& v, const std::string& file, const std::string& tensor, const char* field) {
  if (!v.is_number_unsigned())
    bad_file(file, "tensor '", tensor, "': '", field, "' must hold non-negative integers, found ", v.dump());
  return v.get<std::uint64_t>();
}

Entry parse_entry(const std::string& name, const json& v, std::uint64_t data_size, const std::string& file) {
  if (!v.is_object()) bad_file(file, "tensor '", name, "': entry must be a JSON object but is ", v.type_name());
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!v.contains(key)) bad_file(file, "tensor '", name, "': missing key '", key, "'");
  for (const auto& [key, unused] : v.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      bad_file(file, "tensor '", name, "': unexpected key '", key, "' (expected dtype, shape, data_offsets)");

  Entry e;
  e.name = name;
  const json& dt = v["dtype"];
  if (!dt.is_string()) bad_file(file, "tensor '", name, "': 'dtype' must be a string, found ", dt.dump());
  const auto& dts = dt.get_ref<const std::string&>();
  const auto it = std::find_if(std::begin(kDTypes), std::end(kDTypes), [&](const StDType& d) { return dts == d.name; });
  if (it == std::end(kDTypes))
    bad_file(file, "tensor '", name, "': unsupported dtype '", dts, "' (supported: F32, BF16, F16, I32, I64)");
  e.dtype = it->dtype;

  const json& sh = v["shape"];
  if (!sh.is_array()) bad_file(file, "tensor '", name, "': 'shape' must be a list, found ", sh.dump());
  for (const auto& d : sh) {
    const std::uint64_t u = as_u64(d, file, name, "shape");
    if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      bad_file(file, "tensor '", name, "': shape dimension ", u, " is absurdly large");
    e.shape.push_back(static_cast<std::int64_t>(u));
  }
  const std::int64_t numel = checked_numel(e.shape, file, name);

  const json& off = v["data_offsets"];
  if (!off.is_array() || off.size() != 2)
    bad_file(file, "tensor '", name, "': 'data_offsets' must be a list [begin, end], found ", off.dump());
  e.begin = as_u64(off[0], file, name, "data_offsets");
  e.end = as_u64(off[1], file, name, "data_offsets");
  if (e.begin > e.end)
    bad_file(file, "tensor '", name, "': data_offsets [", e.begin, ", ", e.end, "] have begin > end");
  const std::uint64_t need = static_cast<std::uint64_t>(numel) * dtype_size(e.dtype);
  if (e.end - e.begin != need)
    bad_file(file, "tensor '", name, "': data_offsets [", e.begin, ", ", e.end, "] hold ", e.end - e.begin,
             " bytes but shape ", shape_str(e.shape), " of ", dts, " needs ", need);
  if (e.end > data_size)
    bad_file(file, "tensor '", name, "': data_offsets [", e.begin, ", ", e.end,
             "] lie outside the data section (", data_size, " bytes)");
  return e;
}

}  // namespace

SafetensorsContents parse_safetensors(const std::string& bytes, const std::string& name) {
  const std::uint64_t size = bytes.size();
  if (size < 8) bad_file(name, "file is ", size, " bytes, shorter than the 8-byte header size field");
  std::uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);  // little-endian host (asserted above)
  if (header_size > kMaxHeaderBytes)
    bad_file(name, "header size ", header_size, " is absurd (limit ", kMaxHeaderBytes, " bytes)");
  if (header_size > size - 8)
    bad_file(name, "header size ", header_size, " exceeds the file size (", size, " bytes)");
  const char* header = bytes.data() + 8;
  const json root = parse_header_json(header, header + header_size, name);
  if (!root.is_object()) bad_file(name, "header must be a JSON object but is ", root.type_name());

  const std::uint64_t data_size = size - 8 - header_size;
  SafetensorsContents out;
  std::vector<Entry> entries;
  entries.reserve(root.size());
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) bad_file(name, "'__metadata__' must be an object of strings but is ", value.type_name());
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) bad_file(name, "'__metadata__' value of key '", mk, "' must be a string, found ", mv.dump());
        out.metadata.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    entries.push_back(parse_entry(key, value, data_size, name));
  }

  // The byte ranges, sorted, must tile [0, data_size) exactly.
  std::vector<const Entry*> order;
  order.reserve(entries.size());
  for (const auto& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(),
            [](const Entry* a, const Entry* b) { return std::tie(a->begin, a->end) < std::tie(b->begin, b->end); });
  std::uint64_t cursor = 0;
  const Entry* prev = nullptr;
  for (const Entry* e : order) {
    if (e->begin < cursor)
      bad_file(name, "tensor '", e->name, "' (bytes [", e->begin, ", ", e->end, ")) overlaps tensor '", prev->name,
               "' (bytes [", prev->begin, ", ", prev->end, "))");
    if (e->begin > cursor)
      bad_file(name, "data section bytes [", cursor, ", ", e->begin, ") before tensor '", e->name,
               "' are not used by any tensor");
    cursor = e->end;
    prev = e;
  }
  if (cursor != data_size)
    bad_file(name, "data section bytes [", cursor, ", ", data_size, ") at the end are not used by any tensor");

  const char* data = header + header_size;
  for (const auto& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (e.end > e.begin) std::memcpy(t.raw_data(), data + e.begin, e.end - e.begin);
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

SafetensorsContents load_safetensors(const std::string& path) { return parse_safetensors(read_file(path), path); }

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Validate everything before touching the file system.
  std::set<std::string> names;
  std::vector<Tensor> packed;
  packed.reserve(tensors.size());
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto& [tname, t] : tensors) {
    MF_CHECK(tname != "__metadata__", "[save_safetensors] '", path, "': '__metadata__' is reserved, not a tensor name");
    MF_CHECK(names.insert(tname).second, "[save_safetensors] '", path, "': duplicate tensor name '", tname, "'");
    MF_CHECK(t.defined(), "[save_safetensors] '", path, "': tensor '", tname, "' is undefined");
    packed.push_back(t.contiguous());
    const std::uint64_t n = packed.back().nbytes();
    header[tname] = {{"dtype", st_name(t.dtype())}, {"shape", t.shape()}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string h;
  try {
    h = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name that is not valid UTF-8
    fail("[save_safetensors] '", path, "': cannot encode the header: ", e.what());
  }
  h.append((8 - h.size() % 8) % 8, ' ');
  const std::uint64_t hsize = h.size();
  write_file_atomic(path, [&](std::ostream& os) {
    char len[8];
    std::memcpy(len, &hsize, 8);
    os.write(len, 8);
    os.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (const auto& t : packed)
      if (t.nbytes()) os.write(static_cast<const char*>(t.raw_data()), static_cast<std::streamsize>(t.nbytes()));
  });
}

}  // namespace mf
