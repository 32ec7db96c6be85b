// Tensor files: .npy and safetensors round trips, interop with numpy/PyTorch
// (fixtures from tools/make_io_fixtures.py), one test per malformed-file case
// (made by corrupting valid bytes), atomic saves, and a byte-mutation fuzz.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <unistd.h>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../support/errors.h"
#include "core/io_faults.h"
#include "core/atomic_file.h"
#include "core/npy.h"
#include "core/rng.h"
#include "core/safetensors.h"

using namespace mf;
namespace fs = std::filesystem;

namespace {

std::string fixture(const std::string& name) { return std::string(MODFORMER_FIXTURES_DIR) + "/io/" + name; }

// A fresh directory per test, removed afterwards.
class IoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("mf_io_") + std::to_string(::getpid()) + "_" + info->test_suite_name() + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

// Asserts that fn throws mf::Error whose message contains every substring.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
    return;
  }
  ADD_FAILURE() << "no mf::Error thrown (expected one mentioning '" << (parts.empty() ? "" : parts[0]) << "')";
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  const Tensor ca = a.contiguous(), cb = b.contiguous();
  return ca.nbytes() == 0 || std::memcmp(ca.raw_data(), cb.raw_data(), ca.nbytes()) == 0;
}

template <typename T>
Tensor typed(const Shape& shape, const std::vector<T>& v) {
  Tensor t = Tensor::empty(shape, dtype_of<T>());
  EXPECT_EQ(static_cast<std::int64_t>(v.size()), t.numel());
  if (!v.empty()) std::memcpy(t.raw_data(), v.data(), v.size() * sizeof(T));
  return t;
}

template <typename T>
std::vector<T> values(const Tensor& t) {
  const Tensor c = t.contiguous();
  std::vector<T> out(static_cast<std::size_t>(c.numel()));
  if (!out.empty()) std::memcpy(out.data(), c.raw_data(), out.size() * sizeof(T));
  return out;
}

// ---------------------------------------------------------------- .npy bytes

// A .npy file with the given header dict text, padded as numpy pads it.
std::string npy_bytes(const std::string& dict, const std::string& data, int major = 1) {
  const std::size_t prefix = major == 1 ? 10 : 12;
  std::string header = dict;
  header += std::string((64 - (prefix + header.size() + 1) % 64) % 64, ' ') + "\n";
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  for (std::size_t i = 0; i < prefix - 8; ++i) out += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header + data;
}

// A valid float32 [2, 3] file made by save_npy, and its data bytes.
const std::string kNpyDict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
std::string npy_data() {
  std::string d(24, '\0');
  const float v[6] = {1, 2, 3, 4, 5, 6};
  std::memcpy(d.data(), v, 24);
  return d;
}
// The valid file with one piece of its header dict replaced.
std::string npy_with(const std::string& from, const std::string& to) {
  std::string dict = kNpyDict;
  const auto at = dict.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  dict.replace(at, from.size(), to);
  return npy_bytes(dict, npy_data());
}

void expect_npy_error(const std::string& bytes, const std::vector<std::string>& parts) {
  std::vector<std::string> all = parts;
  all.push_back("case.npy");  // every message names the file
  expect_error([&] { parse_npy(bytes, "case.npy"); }, all);
}

// ---------------------------------------------------------- safetensors bytes

std::string st_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const std::uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

// A valid two-tensor file: a F32 [2, 3] at [0, 24), b I64 [2] at [24, 40).
const std::string kStHeader =
    R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
    R"("b":{"dtype":"I64","shape":[2],"data_offsets":[24,40]}})";
std::string st_valid() { return st_bytes(kStHeader, std::string(40, '\x01')); }
std::string st_with(const std::string& from, const std::string& to, std::size_t data_bytes = 40) {
  std::string h = kStHeader;
  const auto at = h.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  h.replace(at, from.size(), to);
  return st_bytes(h, std::string(data_bytes, '\x01'));
}

void expect_st_error(const std::string& bytes, const std::vector<std::string>& parts) {
  std::vector<std::string> all = parts;
  all.push_back("case.safetensors");  // every message names the file
  expect_error([&] { parse_safetensors(bytes, "case.safetensors"); }, all);
}

}  // namespace

// =================================================================== npy ===

TEST_F(IoTest, NpyRoundTripF32) {
  const Tensor t = randn({3, 5}, 7);
  save_npy(path("a.npy"), t);
  const Tensor u = load_npy(path("a.npy"));
  EXPECT_TRUE(same_bytes(t, u));
  // numpy's layout: version 1.0, data on a 64-byte boundary, header ends in '\n'.
  const std::string raw = read_file(path("a.npy"));
  EXPECT_EQ(raw[6], 1);
  const std::size_t hlen = static_cast<unsigned char>(raw[8]) | static_cast<unsigned char>(raw[9]) << 8;
  EXPECT_EQ((10 + hlen) % 64, 0u);
  EXPECT_EQ(raw[10 + hlen - 1], '\n');
  EXPECT_NE(raw.find("'shape': (3, 5)"), std::string::npos);
}

TEST_F(IoTest, NpyRoundTripI32AndI64) {
  const Tensor a = typed<std::int32_t>({2, 2}, {std::numeric_limits<std::int32_t>::min(), -1, 0, 2147483647});
  const Tensor b = typed<std::int64_t>({3}, {std::numeric_limits<std::int64_t>::min(), 42,
                                             std::numeric_limits<std::int64_t>::max()});
  save_npy(path("a.npy"), a);
  save_npy(path("b.npy"), b);
  EXPECT_TRUE(same_bytes(load_npy(path("a.npy")), a));
  const Tensor lb = load_npy(path("b.npy"));
  EXPECT_TRUE(same_bytes(lb, b));
  EXPECT_NE(read_file(path("b.npy")).find("'shape': (3,)"), std::string::npos);  // 1-tuple form
}

TEST_F(IoTest, NpyRoundTripScalarAndEmptyDims) {
  Tensor s = Tensor::full({}, -2.5f);
  save_npy(path("s.npy"), s);
  const Tensor ls = load_npy(path("s.npy"));
  EXPECT_EQ(ls.dim(), 0);
  EXPECT_EQ(ls.to_vector(), std::vector<float>{-2.5f});
  EXPECT_NE(read_file(path("s.npy")).find("'shape': ()"), std::string::npos);
  for (const Shape& shape : {Shape{0}, Shape{0, 3}, Shape{2, 0, 4}}) {
    save_npy(path("e.npy"), Tensor::empty(shape, DType::I64));
    const Tensor le = load_npy(path("e.npy"));
    EXPECT_EQ(le.shape(), shape);
    EXPECT_EQ(le.dtype(), DType::I64);
  }
}

TEST_F(IoTest, NpyWritesVersion2WhenTheHeaderNeedsIt) {
  const Tensor t = Tensor::full(Shape(25000, 1), 4.0f);  // 25000 dims: the header exceeds 65535 bytes
  save_npy(path("big.npy"), t);
  const std::string raw = read_file(path("big.npy"));
  EXPECT_EQ(raw[6], 2);
  std::uint32_t hlen = 0;
  std::memcpy(&hlen, raw.data() + 8, 4);
  EXPECT_GT(hlen, 65535u);
  EXPECT_EQ((12 + hlen) % 64, 0u);
  EXPECT_TRUE(same_bytes(load_npy(path("big.npy")), t));
}

TEST_F(IoTest, NpyRoundTripNonContiguous) {
  const Tensor t = randn({4, 6}, 3);
  const Tensor view = t.transpose(0, 1).slice(0, 1, 5);  // [4, 4], strided
  ASSERT_FALSE(view.is_contiguous());
  save_npy(path("v.npy"), view);
  const Tensor u = load_npy(path("v.npy"));
  EXPECT_EQ(u.shape(), (Shape{4, 4}));
  EXPECT_EQ(u.to_vector(), view.contiguous().to_vector());
}

TEST_F(IoTest, NpySaveRejectsUnsupportedDtype) {
  expect_error([&] { save_npy(path("x.npy"), Tensor::zeros({2}, DType::BF16)); }, {"bfloat16", "x.npy"});
  expect_error([&] { save_npy(path("x.npy"), Tensor()); }, {"undefined"});
  EXPECT_FALSE(fs::exists(path("x.npy")));
}

TEST(NpyInterop, ReadsNumpyWrittenFiles) {
  const Tensor a = load_npy(fixture("f32_2x3.npy"));
  EXPECT_EQ(a.shape(), (Shape{2, 3}));
  EXPECT_EQ(a.to_vector(), (std::vector<float>{-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f}));
  const Tensor b = load_npy(fixture("i32_5.npy"));
  EXPECT_EQ(b.dtype(), DType::I32);
  EXPECT_EQ(values<std::int32_t>(b), (std::vector<std::int32_t>{-2, -1, 0, 1, 2147483647}));
  const Tensor c = load_npy(fixture("i64_2x3x4.npy"));
  EXPECT_EQ(c.shape(), (Shape{2, 3, 4}));
  const auto cv = values<std::int64_t>(c);
  for (std::int64_t i = 0; i < 24; ++i) EXPECT_EQ(cv[i], i * 10000000000LL - 7);
  const Tensor s = load_npy(fixture("scalar_f32.npy"));
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.to_vector(), std::vector<float>{3.25f});
  EXPECT_EQ(load_npy(fixture("empty_0x3_f32.npy")).shape(), (Shape{0, 3}));
  const Tensor v2 = load_npy(fixture("v2_f32_3x2.npy"));
  EXPECT_EQ(read_file(fixture("v2_f32_3x2.npy"))[6], 2);  // really a version 2.0 file
  EXPECT_EQ(v2.to_vector(), (std::vector<float>{1.5f, -2.0f, 0.25f, 8.0f, -0.125f, 1e-3f}));
}

TEST(NpyInterop, RejectsNumpyFilesWeDoNotSupport) {
  expect_error([] { load_npy(fixture("fortran_f32.npy")); }, {"fortran_order", "fortran_f32.npy"});
  expect_error([] { load_npy(fixture("bigendian_f32.npy")); }, {"big-endian", "'>f4'", "bigendian_f32.npy"});
  expect_error([] { load_npy(fixture("f64.npy")); }, {"unsupported dtype '<f8'", "f64.npy"});
  expect_error([] { load_npy(fixture("no_such_file.npy")); }, {"cannot open", "no_such_file.npy"});
}

TEST(NpyParse, AcceptsNativeAndNotApplicableByteOrder) {
  EXPECT_EQ(parse_npy(npy_with("'<f4'", "'=f4'"), "x").dtype(), DType::F32);
  EXPECT_EQ(parse_npy(npy_with("'<f4'", "'|f4'"), "x").dtype(), DType::F32);
  // Double quotes, no trailing comma, another key order: still a valid header.
  const Tensor t = parse_npy(npy_bytes(R"({"shape": (2, 3), "fortran_order": False, "descr": "<f4"})", npy_data()), "x");
  EXPECT_EQ(t.to_vector(), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  // Version 3.0 (utf-8 header) with a 4-byte header length.
  EXPECT_EQ(parse_npy(npy_bytes(kNpyDict, npy_data(), 3), "x").shape(), (Shape{2, 3}));
}

TEST(NpyMalformed, EmptyFile) { expect_npy_error("", {"not a .npy file"}); }

TEST(NpyMalformed, BadMagic) {
  std::string b = npy_bytes(kNpyDict, npy_data());
  b[1] = 'M';
  expect_npy_error(b, {"magic"});
}

TEST(NpyMalformed, UnsupportedVersion) {
  std::string b = npy_bytes(kNpyDict, npy_data());
  b[6] = 4;
  expect_npy_error(b, {"unsupported format version 4.0"});
  b[6] = 1;
  b[7] = 1;
  expect_npy_error(b, {"unsupported format version 1.1"});
}

TEST(NpyMalformed, TruncatedBeforeHeaderLength) {
  expect_npy_error(npy_bytes(kNpyDict, npy_data(), 2).substr(0, 10), {"truncated before the header length"});
}

TEST(NpyMalformed, HeaderLengthExceedsFile) {
  std::string b = npy_bytes(kNpyDict, npy_data());
  b.resize(50);  // cut inside the header
  expect_npy_error(b, {"header length", "exceeds the file size"});
  std::string c = npy_bytes(kNpyDict, npy_data(), 2);
  c[11] = '\x7f';  // a 2 GB header length in a 2.0 file
  expect_npy_error(c, {"header length", "exceeds the file size"});
}

TEST(NpyMalformed, HeaderNotADict) {
  expect_npy_error(npy_bytes("('descr', '<f4')", npy_data()), {"malformed header", "must start with a dict"});
}

TEST(NpyMalformed, HeaderUnterminated) {
  expect_npy_error(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), ", npy_data()),
                   {"malformed header", "unexpected end"});
  expect_npy_error(npy_with("'<f4'", "'<f4"), {"malformed header"});
}

TEST(NpyMalformed, HeaderBadToken) {
  expect_npy_error(npy_with("False", "false"), {"malformed header", "unexpected character 'f'"});
  expect_npy_error(npy_with("(2, 3)", "(2 3)"), {"malformed header", "expected ',' or ')'"});
  expect_npy_error(npy_with("(2, 3)", "(2, 3.0)"), {"malformed header", "plain decimal integers"});
  expect_npy_error(npy_with("(2, 3)", "(2, 03)"), {"malformed header", "leading zeros"});
  expect_npy_error(npy_with("'<f4'", "'<\\x66\\x34'"), {"malformed header", "escape"});
  expect_npy_error(npy_with("'descr'", "descr"), {"malformed header", "keys must be strings"});
  expect_npy_error(npy_with("'descr':", "'descr'"), {"malformed header", "expected ':'"});
}

TEST(NpyMalformed, HeaderTrailingGarbage) {
  expect_npy_error(npy_with(", }", ", } x"), {"malformed header", "after the header dict"});
}

TEST(NpyMalformed, HeaderNestedTooDeep) {
  expect_npy_error(npy_with("(2, 3)", std::string(200, '(') + std::string(200, ')')),
                   {"malformed header", "nested too deeply"});
}

TEST(NpyMalformed, HeaderIntegerTooLarge) {
  expect_npy_error(npy_with("(2, 3)", "(99999999999999999999,)"), {"malformed header", "integer too large"});
}

TEST(NpyMalformed, HeaderNotATupleInParens) {
  expect_npy_error(npy_with("(2, 3)", "(6)"), {"malformed header", "not a tuple"});
}

TEST(NpyMalformed, MissingKeys) {
  expect_npy_error(npy_with("'descr': '<f4', ", ""), {"lacks the key 'descr'"});
  expect_npy_error(npy_with("'fortran_order': False, ", ""), {"lacks the key 'fortran_order'"});
  expect_npy_error(npy_with("'shape': (2, 3), ", ""), {"lacks the key 'shape'"});
}

TEST(NpyMalformed, ExtraKey) {
  expect_npy_error(npy_with("}", "'extra': 1, }"), {"unexpected header key 'extra'"});
}

TEST(NpyMalformed, DuplicateKey) {
  expect_npy_error(npy_with("}", "'shape': (6,), }"), {"duplicate key 'shape'"});
}

TEST(NpyMalformed, UnsupportedDtype) {
  expect_npy_error(npy_with("'<f4'", "'<u1'"), {"unsupported dtype '<u1'", "'<f4' float32"});
  expect_npy_error(npy_with("'<f4'", "'<f2'"), {"unsupported dtype '<f2'"});
  expect_npy_error(npy_with("'<f4'", "'<f4x'"), {"unsupported dtype '<f4x'"});
}

TEST(NpyMalformed, BigEndianDtype) {
  expect_npy_error(npy_with("'<f4'", "'>i8'"), {"big-endian dtype '>i8'"});
}

TEST(NpyMalformed, StructuredDtype) {
  expect_npy_error(npy_with("'<f4'", "[('x', '<f4')]"), {"'descr' must be a string", "structured"});
}

TEST(NpyMalformed, FortranOrder) {
  expect_npy_error(npy_with("False", "True"), {"fortran_order True is not supported"});
  expect_npy_error(npy_with("False", "0"), {"'fortran_order' must be True or False"});
}

TEST(NpyMalformed, ShapeNotATuple) {
  expect_npy_error(npy_with("(2, 3)", "[2, 3]"), {"'shape' must be a tuple but is a list"});
}

TEST(NpyMalformed, ShapeNegative) {
  expect_npy_error(npy_with("(2, 3)", "(-2, -3)"), {"negative dimension -2"});
}

TEST(NpyMalformed, ShapeNotIntegers) {
  expect_npy_error(npy_with("(2, 3)", "(2, '3')"), {"'shape' entries must be integers"});
  expect_npy_error(npy_with("(2, 3)", "(2, None)"), {"'shape' entries must be integers"});
}

TEST(NpyMalformed, DataTooShort) {
  std::string b = npy_bytes(kNpyDict, npy_data());
  b.pop_back();
  expect_npy_error(b, {"truncated", "needs 24 bytes but the file has 23"});
  expect_npy_error(npy_with("(2, 3)", "(1000000000000,)"), {"truncated", "needs 4000000000000 bytes"});
}

TEST(NpyMalformed, TrailingGarbage) {
  expect_npy_error(npy_bytes(kNpyDict, npy_data() + "xy"), {"2 trailing bytes"});
}

TEST(NpyMalformed, AbsurdSize) {
  expect_npy_error(npy_with("(2, 3)", "(4294967296, 4294967296)"), {"absurdly large"});
  expect_npy_error(npy_with("(2, 3)", "(9223372036854775807, 0)"), {"absurdly large"});
}

// ============================================================ safetensors ===

TEST_F(IoTest, SafetensorsRoundTripAllDtypes) {
  const Tensor f32 = randn({3, 4}, 11);
  const Tensor bf16 = randn({5}, 12).to(DType::BF16);
  const Tensor f16 = randn({2, 3}, 13).to(DType::F16);
  const Tensor i32 = typed<std::int32_t>({3}, {std::numeric_limits<std::int32_t>::min(), 0, 7});
  const Tensor i64 = typed<std::int64_t>({2}, {std::numeric_limits<std::int64_t>::max(), -3});
  const Tensor scalar = Tensor::full({}, 0.5f);
  const Tensor empty = Tensor::empty({0, 7}, DType::F16);
  const Tensor strided = randn({4, 5}, 14).transpose(0, 1);
  const std::vector<std::pair<std::string, Tensor>> in = {{"z.f32", f32},      {"bf16", bf16},   {"f16", f16},
                                                          {"i32", i32},        {"i64", i64},     {"scalar", scalar},
                                                          {"empty", empty},    {"strided", strided}};
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "h\u00e9llo \"quoted\""}};
  save_safetensors(path("m.safetensors"), in, meta);
  const auto out = load_safetensors(path("m.safetensors"));
  EXPECT_EQ(out.metadata, meta);
  ASSERT_EQ(out.tensors.size(), in.size());
  for (const auto& [name, t] : in) {
    ASSERT_TRUE(out.tensors.count(name)) << name;
    EXPECT_TRUE(same_bytes(out.tensors.at(name), t)) << name;  // stored dtype kept (BF16/F16 too)
  }
  EXPECT_EQ(out.tensors.at("bf16").to(DType::F32).to_vector(), bf16.to(DType::F32).to_vector());

  // Layout: 8-byte aligned header, data in the given order.
  const std::string raw = read_file(path("m.safetensors"));
  std::uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const auto header = nlohmann::json::parse(raw.substr(8, n));
  std::uint64_t expect_begin = 0;
  for (const auto& [name, t] : in) {
    EXPECT_EQ(header[name]["data_offsets"][0].get<std::uint64_t>(), expect_begin) << name;
    expect_begin += t.nbytes();
  }
  EXPECT_EQ(raw.size(), 8 + n + expect_begin);
}

TEST_F(IoTest, SafetensorsSaveRejectsBadNames) {
  const Tensor t = Tensor::zeros({2});
  expect_error([&] { save_safetensors(path("x.safetensors"), {{"a", t}, {"a", t}}); },
               {"duplicate tensor name 'a'", "x.safetensors"});
  expect_error([&] { save_safetensors(path("x.safetensors"), {{"__metadata__", t}}); }, {"reserved"});
  expect_error([&] { save_safetensors(path("x.safetensors"), {{"u", Tensor()}}); }, {"tensor 'u' is undefined"});
  EXPECT_FALSE(fs::exists(path("x.safetensors")));
}

TEST(SafetensorsInterop, ReadsPythonWrittenFileAndWritesTheSameBytes) {
  const std::string file = fixture("mixed.safetensors");
  const auto c = load_safetensors(file);
  EXPECT_EQ(c.metadata.at("kind"), "interop");
  const auto& T = c.tensors;
  EXPECT_EQ(T.at("f32").to_vector(), (std::vector<float>{-1.0f, -0.75f, -0.5f, -0.25f, 0.0f, 0.25f}));
  EXPECT_EQ(T.at("bf16").dtype(), DType::BF16);
  EXPECT_EQ(T.at("bf16").to(DType::F32).to_vector(), (std::vector<float>{1.0f, -2.5f, 3.140625f, 0.0078125f}));
  EXPECT_EQ(T.at("f16").dtype(), DType::F16);
  EXPECT_EQ(T.at("f16").to(DType::F32).to_vector(), (std::vector<float>{0.5f, -65504.0f, 0x1p-24f, 1.5f}));
  EXPECT_EQ(values<std::int32_t>(T.at("i32")), (std::vector<std::int32_t>{-7, 0, 2147483647}));
  EXPECT_EQ(values<std::int64_t>(T.at("i64")), (std::vector<std::int64_t>{-(1LL << 40), 1LL << 62}));
  EXPECT_EQ(T.at("scalar").dim(), 0);
  EXPECT_EQ(T.at("scalar").to_vector(), std::vector<float>{-0.75f});
  EXPECT_EQ(T.at("empty").shape(), (Shape{0, 4}));

  // Our writer, given the same tensors in the same order, reproduces the Python file byte for byte.
  const auto dir = fs::temp_directory_path() / ("mf_io_interop_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string again = (dir / "again.safetensors").string();
  std::vector<std::pair<std::string, Tensor>> in;
  for (const char* n : {"f32", "bf16", "f16", "i32", "i64", "scalar", "empty"}) in.emplace_back(n, T.at(n));
  save_safetensors(again, in, c.metadata);
  EXPECT_EQ(read_file(again), read_file(file));
  fs::remove_all(dir);
}

TEST(SafetensorsParse, ValidTemplateLoads) {
  const auto c = parse_safetensors(st_valid(), "ok");
  EXPECT_EQ(c.tensors.at("a").shape(), (Shape{2, 3}));
  EXPECT_EQ(c.tensors.at("b").dtype(), DType::I64);
  EXPECT_EQ(c.metadata.at("k"), "v");
  // No metadata, no tensors: a valid empty file.
  EXPECT_TRUE(parse_safetensors(st_bytes("{}      ", ""), "e").tensors.empty());
}

TEST(SafetensorsMalformed, ShorterThanEightBytes) {
  expect_st_error("", {"0 bytes, shorter than the 8-byte header size"});
  expect_st_error(st_valid().substr(0, 7), {"7 bytes, shorter than the 8-byte"});
}

TEST(SafetensorsMalformed, HeaderSizeAbsurd) {
  std::string b = st_valid();
  const std::uint64_t n = 200ull << 20;
  std::memcpy(b.data(), &n, 8);
  expect_st_error(b, {"header size 209715200 is absurd"});
  const std::uint64_t huge = ~0ull;
  std::memcpy(b.data(), &huge, 8);
  expect_st_error(b, {"is absurd"});
}

TEST(SafetensorsMalformed, HeaderSizeExceedsFile) {
  std::string b = st_valid();
  const std::uint64_t n = b.size();
  std::memcpy(b.data(), &n, 8);
  expect_st_error(b, {"exceeds the file size"});
}

TEST(SafetensorsMalformed, HeaderNotJson) {
  expect_st_error(st_with("}}", "}"), {"header is not valid JSON"});
  expect_st_error(st_with("\"k\"", "k"), {"header is not valid JSON"});
  expect_st_error(st_with("\"v\"", "\"\xff\xfe\""), {"header is not valid JSON"});  // not UTF-8
}

TEST(SafetensorsMalformed, HeaderNotObject) {
  expect_st_error(st_bytes("[1, 2]", ""), {"header must be a JSON object but is array"});
}

TEST(SafetensorsMalformed, HeaderNestedTooDeep) {
  expect_st_error(st_with("\"v\"", std::string(50, '[') + std::string(50, ']')), {"nested too deeply"});
}

TEST(SafetensorsMalformed, EntryNotObject) {
  expect_st_error(st_with(R"({"dtype":"I64","shape":[2],"data_offsets":[24,40]})", "[24, 40]", 24),
                  {"tensor 'b': entry must be a JSON object but is array"});
}

TEST(SafetensorsMalformed, MissingKey) {
  expect_st_error(st_with(R"("dtype":"F32",)", ""), {"tensor 'a': missing key 'dtype'"});
  expect_st_error(st_with(R"("shape":[2,3],)", ""), {"tensor 'a': missing key 'shape'"});
  expect_st_error(st_with(R"(,"data_offsets":[0,24])", ""), {"tensor 'a': missing key 'data_offsets'"});
}

TEST(SafetensorsMalformed, ExtraKey) {
  expect_st_error(st_with(R"("dtype":"F32",)", R"("dtype":"F32","strides":[3,1],)"),
                  {"tensor 'a': unexpected key 'strides'"});
}

TEST(SafetensorsMalformed, UnknownDtype) {
  expect_st_error(st_with(R"("F32")", R"("F64")"), {"tensor 'a': unsupported dtype 'F64'"});
  expect_st_error(st_with(R"("F32")", R"("f32")"), {"tensor 'a': unsupported dtype 'f32'"});
  expect_st_error(st_with(R"("F32")", "4"), {"tensor 'a': 'dtype' must be a string"});
}

TEST(SafetensorsMalformed, ShapeNotAList) {
  expect_st_error(st_with("[2,3]", "6"), {"tensor 'a': 'shape' must be a list"});
}

TEST(SafetensorsMalformed, ShapeNotNonNegativeIntegers) {
  expect_st_error(st_with("[2,3]", "[-2,-3]"), {"tensor 'a': 'shape' must hold non-negative integers, found -2"});
  expect_st_error(st_with("[2,3]", "[2,3.0]"), {"tensor 'a': 'shape' must hold non-negative integers, found 3.0"});
  expect_st_error(st_with("[2,3]", R"([2,"3"])"), {"tensor 'a': 'shape' must hold non-negative integers"});
}

TEST(SafetensorsMalformed, ShapeOverflow) {
  expect_st_error(st_with("[2,3]", "[4294967296,4294967296,4]"), {"tensor 'a'", "absurdly large"});
  expect_st_error(st_with("[2,3]", "[18446744073709551615]"), {"tensor 'a'", "absurdly large"});
}

TEST(SafetensorsMalformed, DataOffsetsNotAPair) {
  expect_st_error(st_with("[0,24]", "[0,12,24]"), {"tensor 'a': 'data_offsets' must be a list [begin, end]"});
  expect_st_error(st_with("[0,24]", "24"), {"tensor 'a': 'data_offsets' must be a list [begin, end]"});
  expect_st_error(st_with("[0,24]", "[-1,23]"), {"tensor 'a': 'data_offsets' must hold non-negative integers"});
}

TEST(SafetensorsMalformed, DataOffsetsBeginAfterEnd) {
  expect_st_error(st_with("[0,24]", "[24,0]"), {"tensor 'a': data_offsets [24, 0] have begin > end"});
}

TEST(SafetensorsMalformed, ByteLengthMismatch) {
  expect_st_error(st_with("[2,3]", "[2,2]"), {"tensor 'a'", "hold 24 bytes but shape [2, 2] of F32 needs 16"});
}

TEST(SafetensorsMalformed, OffsetsOutsideDataSection) {
  expect_st_error(st_with("[24,40]", "[32,48]"), {"tensor 'b'", "outside the data section (40 bytes)"});
  // Truncated file: the data section is shorter than the offsets claim.
  std::string b = st_valid();
  b.resize(b.size() - 1);
  expect_st_error(b, {"tensor 'b'", "outside the data section (39 bytes)"});
}

TEST(SafetensorsMalformed, OverlappingRanges) {
  expect_st_error(st_with("[24,40]", "[16,32]", 40), {"tensor 'b'", "overlaps tensor 'a'"});
}

TEST(SafetensorsMalformed, GapInDataSection) {
  expect_st_error(st_with("[24,40]", "[32,48]", 48), {"bytes [24, 32) before tensor 'b' are not used"});
  expect_st_error(st_with("[0,24]", "[8,32]", 48), {"bytes [0, 8) before tensor 'a' are not used"});
}

TEST(SafetensorsMalformed, UnusedTrailingBytes) {
  expect_st_error(st_valid() + "zz", {"bytes [40, 42) at the end are not used"});
}

TEST(SafetensorsMalformed, DuplicateNames) {
  expect_st_error(st_with(R"("b":)", R"("a":)"), {"duplicate key 'a'"});
  expect_st_error(st_with(R"({"k":"v"})", R"({"k":"v","k":"w"})"), {"duplicate key 'k'"});
}

TEST(SafetensorsMalformed, MetadataNotStringMap) {
  expect_st_error(st_with(R"({"k":"v"})", R"(["k","v"])"), {"'__metadata__' must be an object of strings"});
  expect_st_error(st_with(R"({"k":"v"})", R"({"k":1})"), {"'__metadata__' value of key 'k' must be a string"});
}

// ========================================================== atomic saves ===

// Failures injected into write_file_atomic's write, flush and rename: each
// is an error naming the file, the previous version stays, no temporary.
TEST_F(IoTest, InjectedWriteFlushRenameFailuresKeepThePreviousFile) {
  const std::string f = path("data.bin");
  write_file_atomic(f, std::string("previous"));
  const std::pair<IoStep, const char*> cases[] = {{IoStep::Write, "error while writing"},
                                                  {IoStep::Flush, "cannot flush"},
                                                  {IoStep::Rename, "cannot rename"}};
  for (const auto& [step, needle] : cases) {
    inject_io_fault(step);
    expect_error([&] { write_file_atomic(f, std::string("replacement")); }, {needle, "data.bin"});
    clear_io_faults();
    EXPECT_EQ(read_file(f), "previous");
    for (const auto& e : fs::directory_iterator(dir_))
      EXPECT_EQ(e.path().filename().string(), "data.bin") << "a temporary was left behind";
  }
  // Skip counts: the second write fails, the first lands.
  inject_io_fault(IoStep::Rename, 1);
  write_file_atomic(path("first"), std::string("1"));
  EXPECT_ERROR("[write] cannot rename", write_file_atomic(path("second"), std::string("2")));
  clear_io_faults();
  EXPECT_TRUE(fs::exists(path("first")));
  EXPECT_FALSE(fs::exists(path("second")));
}

TEST_F(IoTest, FailedSaveLeavesPreviousFileIntact) {
  // Missing directory: error naming the path, nothing created.
  const std::string missing = path("no_dir/x.npy");
  expect_error([&] { save_npy(missing, Tensor::zeros({2})); }, {"no_dir/x.npy"});
  expect_error([&] { save_safetensors(path("no_dir/x.safetensors"), {{"a", Tensor::zeros({2})}}); },
               {"no_dir/x.safetensors"});
  EXPECT_FALSE(fs::exists(path("no_dir")));

  // A good file, then failing saves over it: the old bytes stay, no temporary is left.
  const std::string st = path("keep.safetensors");
  save_safetensors(st, {{"w", randn({3}, 1)}});
  const std::string before = read_file(st);
  const Tensor t = Tensor::zeros({2});
  EXPECT_ERROR("duplicate tensor name 'a'", save_safetensors(st, {{"a", t}, {"b", t}, {"a", t}}));
  EXPECT_EQ(read_file(st), before);
  const std::string np = path("keep.npy");
  save_npy(np, randn({4}, 2));
  const std::string before_npy = read_file(np);
  EXPECT_ERROR("dtype float16 cannot be stored in .npy", save_npy(np, Tensor::zeros({2}, DType::F16)));
  EXPECT_EQ(read_file(np), before_npy);
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir_)) {
    ++files;
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
  }
  EXPECT_EQ(files, 2u);
}

// ================================================================== fuzz ===

namespace {
// Mutates `valid` (flip bytes, truncate, append) `iters` times; each parse
// must either succeed with consistent tensors or throw mf::Error.
template <typename Parse>
void fuzz(const std::string& valid, std::size_t header_end, int iters, std::uint64_t seed, Parse parse) {
  Rng rng(seed);
  int ok = 0, rejected = 0;
  for (int it = 0; it < iters; ++it) {
    std::string b = valid;
    const auto mode = rng.below(4);
    if (mode != 1) {  // flip 1-4 bytes, mostly in the header
      const auto flips = 1 + rng.below(4);
      for (std::uint64_t f = 0; f < flips; ++f) {
        const std::size_t at = rng.below(4) ? rng.below(header_end) : rng.below(b.size());
        b[at] = static_cast<char>(rng.below(3) ? b[at] ^ (1 << rng.below(8)) : rng.below(256));
      }
    }
    if (mode == 1 || mode == 3) b.resize(rng.below(b.size()));  // truncate
    if (mode == 2 && rng.below(2)) b += std::string(1 + rng.below(16), static_cast<char>(rng.below(256)));
    try {
      parse(b);
      ++ok;
    } catch (const Error&) {
      ++rejected;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "iteration " << it << ": non-mf exception " << e.what();
    }
  }
  EXPECT_GT(rejected, iters / 4);  // the mutations do hit the validation
  EXPECT_GT(ok, 0);
}
}  // namespace

TEST(IoFuzz, MutatedFilesLoadOrFailCleanly) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string npy = npy_bytes(kNpyDict, npy_data());
  fuzz(npy, npy.size() - 24, 2000, 1, [](const std::string& b) {
    const Tensor t = parse_npy(b, "fuzz.npy");
    EXPECT_EQ(t.nbytes(), static_cast<std::size_t>(t.numel()) * dtype_size(t.dtype()));
  });
  const std::string st = st_valid();
  fuzz(st, 8 + kStHeader.size(), 2000, 2, [](const std::string& b) {
    const auto c = parse_safetensors(b, "fuzz.safetensors");
    std::size_t total = 0;
    for (const auto& [n, t] : c.tensors) total += t.nbytes();
    EXPECT_LE(total, b.size());
  });
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  RecordProperty("seconds", std::to_string(s));
}
