// Byte tokenizer, corpus loading (plain, gzip, the dict-gcide default), the
// train/validation split and the deterministic batch sampler.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "train/data.h"
#include "../support/errors.h"

using namespace mf;
using mf::testing::error_of;

namespace {

std::string temp_path(const char* name) {
  return (std::filesystem::temp_directory_path() / (std::string("mf_data_") + std::to_string(::getpid()) + "_" + name))
      .string();
}

void write_gzip(const std::string& path, const std::string& text) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, text.data(), static_cast<unsigned>(text.size())), static_cast<int>(text.size()));
  gzclose(f);
}

std::string sample_text(std::size_t n) {
  std::string s;
  for (std::size_t i = 0; s.size() < n; ++i) s += "line " + std::to_string(i * 7919 % 1000) + " of text\n";
  s.resize(n);
  return s;
}

}  // namespace

TEST(TrainData, ByteTokenizerRoundTrip) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const auto tokens = byte_encode(all);
  ASSERT_EQ(tokens.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(tokens[b], b);
  EXPECT_EQ(byte_decode(tokens), all);
  EXPECT_EQ(byte_encode("héllo").size(), 6u);  // UTF-8: one token per byte
  EXPECT_NE(error_of([] { byte_decode({65, 256}); }).find("token 256 at position 1"), std::string::npos);
  EXPECT_NE(error_of([] { byte_decode({-1}); }).find("token -1 at position 0"), std::string::npos);
  EXPECT_DOUBLE_EQ(bits_per_byte(std::log(2.0)), 1.0);
  EXPECT_NEAR(bits_per_byte(std::log(256.0)), 8.0, 1e-12);
}

TEST(TrainData, LoadsPlainAndGzipAlike) {
  const std::string text = sample_text(300000);
  const std::string plain = temp_path("plain.txt"), gz = temp_path("text.gz");
  { std::ofstream(plain, std::ios::binary) << text; }
  write_gzip(gz, text);
  EXPECT_EQ(load_corpus_text(plain), text);
  EXPECT_EQ(load_corpus_text(gz), text);
  EXPECT_EQ(load_corpus_text(gz, 1000), text.substr(0, 1000));
  // a gzip stream cut short is an error, not a silently shorter corpus
  std::string bytes;
  {
    std::ifstream in(gz, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  { std::ofstream(gz, std::ios::binary) << bytes.substr(0, bytes.size() / 2); }
  EXPECT_NE(error_of([&] { load_corpus_text(gz); }).find("truncated"), std::string::npos);
  { std::ofstream(plain, std::ios::binary | std::ios::trunc); }
  EXPECT_NE(error_of([&] { load_corpus_text(plain); }).find("is empty"), std::string::npos);
  std::filesystem::remove(plain);
  std::filesystem::remove(gz);
  EXPECT_NE(error_of([&] { load_corpus_text(plain); }).find("cannot read corpus '" + plain + "'"), std::string::npos);
  EXPECT_NE(error_of([] { load_corpus_text("/tmp"); }).find("not a regular file"), std::string::npos);
}

TEST(TrainData, DefaultCorpusIsGcide) {
  if (!std::filesystem::exists(kDefaultCorpusPath)) {
    const std::string e = error_of([] { load_corpus_text(); });
    EXPECT_NE(e.find("dict-gcide"), std::string::npos) << e;
    GTEST_SKIP() << "dict-gcide is not installed";
  }
  const std::string head = load_corpus_text("", 1 << 16);  // a streaming prefix: fast
  ASSERT_EQ(head.size(), 1u << 16);
  EXPECT_NE(head.find("Collaborative International Dictionary of English"), std::string::npos);
}

TEST(TrainData, SplitIsContiguousAndDisjoint) {
  TextCorpus c = TextCorpus::from_text(sample_text(10000), 0.1, "sample");
  EXPECT_EQ(c.train_end, 9000);
  EXPECT_EQ(c.val_bytes(), 1000);
  const std::int64_t L = 64;
  std::int64_t lo = c.size(), hi = 0;
  for (std::int64_t step = 0; step < 200; ++step)
    for (std::int64_t o : train_window_offsets(c, 7, step, 0, 16, L)) {
      lo = std::min(lo, o);
      hi = std::max(hi, o + L + 1);  // one past the last byte read
    }
  EXPECT_GE(lo, 0);
  EXPECT_LE(hi, c.train_end);       // never reads validation bytes
  EXPECT_LT(lo, 100);               // and does cover the train split
  EXPECT_GT(hi, c.train_end - 100);
  const auto val = val_window_offsets(c, L);
  ASSERT_EQ(val.size(), static_cast<std::size_t>((1000 - 1) / L));
  for (std::size_t i = 0; i < val.size(); ++i) {
    EXPECT_EQ(val[i], c.train_end + static_cast<std::int64_t>(i) * L);  // targets never repeat
    EXPECT_LE(val[i] + L + 1, c.size());
  }
  const auto thin = val_window_offsets(c, L, 4);
  ASSERT_EQ(thin.size(), 4u);
  EXPECT_EQ(thin[0], c.train_end);
  EXPECT_LT(thin[3], val.back() + 1);
  EXPECT_GT(thin[3], val[val.size() / 2]);  // spread over the split, not the first four
  EXPECT_NE(error_of([&] { val_window_offsets(c, 1000); }).find("validation split"), std::string::npos);
  EXPECT_ERROR("corpus 'text' has 1 bytes; need at least 2 to split", TextCorpus::from_text("x", 0.1));
  EXPECT_ERROR("val_fraction must be in (0, 1) but is 1", TextCorpus::from_text("abc", 1.0));
}

TEST(TrainData, SamplerIsAPureFunctionOfSeedAndStep) {
  TextCorpus c = TextCorpus::from_text(sample_text(50000), 0.01, "sample");
  const auto a = train_window_offsets(c, 42, 17, 0, 8, 32);
  EXPECT_EQ(a, train_window_offsets(c, 42, 17, 0, 8, 32));  // same key, same windows
  EXPECT_NE(a, train_window_offsets(c, 42, 18, 0, 8, 32));  // next step differs
  EXPECT_NE(a, train_window_offsets(c, 43, 17, 0, 8, 32));  // another seed differs
  EXPECT_NE(a, train_window_offsets(c, 42, 17, 1, 8, 32));  // another micro-batch differs
  // window i depends on (seed, step, micro * batch + i) only: splitting a
  // batch into micro-batches draws the same windows
  const auto second_half = train_window_offsets(c, 42, 17, 1, 4, 32);
  EXPECT_EQ(std::vector<std::int64_t>(a.begin() + 4, a.end()), second_half);
  std::set<std::int64_t> distinct(a.begin(), a.end());
  EXPECT_EQ(distinct.size(), a.size());

  Tensor tok, tgt;
  fill_windows(c, a, 32, tok, tgt);
  ASSERT_EQ(tok.shape(), (Shape{8, 32}));
  for (std::int64_t b = 0; b < 8; ++b)
    for (std::int64_t j = 0; j < 32; ++j) {
      EXPECT_EQ(tok.data<std::int32_t>()[b * 32 + j], static_cast<unsigned char>((*c.bytes)[a[b] + j]));
      EXPECT_EQ(tgt.data<std::int32_t>()[b * 32 + j], static_cast<unsigned char>((*c.bytes)[a[b] + j + 1]));
    }
  EXPECT_ERROR("window at 49990 of 33 bytes is outside the corpus (50000 bytes)", fill_windows(c, {c.size() - 10}, 32, tok, tgt));
  EXPECT_NE(c.fingerprint(), TextCorpus::from_text(sample_text(50001), 0.01).fingerprint());
}
