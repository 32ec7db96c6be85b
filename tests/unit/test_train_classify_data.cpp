// Classification TSV data (the LRA ListOps layout): header detection, strict
// errors that name FILE:LINE, counted truncation, per-batch padding, and a
// sampler whose batches are a pure function of (seed, step, micro-batch).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "core/atomic_file.h"
#include "train/classify_data.h"
#include "../support/errors.h"

using namespace mf;
using mf::testing::error_of;
namespace fs = std::filesystem;

namespace {

std::string text_of(const ClassifyData& d, std::int64_t i) {
  return d.bytes.substr(static_cast<std::size_t>(d.offsets[static_cast<std::size_t>(i)]),
                        static_cast<std::size_t>(d.length(i)));
}

std::string parse_error(const std::string& tsv) {
  return error_of([&] { ClassifyData::parse(tsv, "f.tsv"); });
}

}  // namespace

TEST(ClassifyData, ParsesHeaderAndExamples) {
  const ClassifyData d = ClassifyData::parse("Source\tTarget\n( ( [MAX 2 9 ] 3 ) )\t9\nab c\t0\n", "list.tsv");
  EXPECT_TRUE(d.has_header);
  ASSERT_EQ(d.size(), 2);
  EXPECT_EQ(text_of(d, 0), "( ( [MAX 2 9 ] 3 ) )");
  EXPECT_EQ(text_of(d, 1), "ab c");
  EXPECT_EQ(d.labels, (std::vector<std::int32_t>{9, 0}));
  EXPECT_EQ(d.lines, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(d.max_label(), 9);
  EXPECT_EQ(d.longest(), 20);
  EXPECT_EQ(d.truncated, 0);

  // no header, CRLF line ends, no final newline
  const ClassifyData e = ClassifyData::parse("abc\t1\r\nde\t0", "crlf.tsv");
  EXPECT_FALSE(e.has_header);
  ASSERT_EQ(e.size(), 2);
  EXPECT_EQ(text_of(e, 0), "abc");
  EXPECT_EQ(e.labels, (std::vector<std::int32_t>{1, 0}));
  EXPECT_NE(d.fingerprint(), e.fingerprint());
  EXPECT_NE(ClassifyData::parse("abc\t1\nde\t1", "x").fingerprint(), e.fingerprint());  // labels count
  EXPECT_EQ(ClassifyData::parse("abc\t1\nde\t0\n", "y").fingerprint(), e.fingerprint());
}

TEST(ClassifyData, ErrorsNameFileAndLine) {
  EXPECT_NE(parse_error("Source\tTarget\nab\t1\nno tab here\n").find("[classify_data] f.tsv:3: no tab"),
            std::string::npos);
  EXPECT_NE(parse_error("ab\t1\nx\t-1\n").find("f.tsv:2: label -1 is negative"), std::string::npos);
  EXPECT_NE(parse_error("ab\t1\nx\t1.5\n").find("f.tsv:2: label '1.5' is not an integer"), std::string::npos);
  EXPECT_NE(parse_error("ab\t1\nx\t\n").find("f.tsv:2: label '' is not an integer"), std::string::npos);
  EXPECT_NE(parse_error("ab\t1\n\t1\n").find("f.tsv:2: empty text"), std::string::npos);
  EXPECT_NE(parse_error("ab\t1\n\ncd\t0\n").find("f.tsv:2: empty line"), std::string::npos);
  EXPECT_NE(parse_error("ab\t1\nc\td\t0\n").find("f.tsv:2: more than one tab"), std::string::npos);
  EXPECT_NE(parse_error("ab\t99999999999\n").find("f.tsv:1: label 99999999999 is too large"), std::string::npos);
  // a header is only accepted on the first line
  EXPECT_NE(parse_error("ab\t1\nSource\tTarget\n").find("f.tsv:2: label 'Target' is not an integer"),
            std::string::npos);
  EXPECT_NE(parse_error("Source\tTarget\n").find("f.tsv: no examples after the header"), std::string::npos);
  EXPECT_NE(parse_error("").find("f.tsv: no examples"), std::string::npos);
  // labels against a model
  const ClassifyData d = ClassifyData::parse("Source\tTarget\na\t0\nb\t2\nc\t3\n", "f.tsv");
  d.check_labels(4);
  EXPECT_NE(error_of([&] { d.check_labels(3); }).find("f.tsv:4: label 3 is outside the model's 3 labels (0..2)"),
            std::string::npos);
  EXPECT_NE(error_of([] { ClassifyData::load("/nonexistent/val.tsv"); }).find("/nonexistent/val.tsv"),
            std::string::npos);
}

TEST(ClassifyData, TruncationIsCounted) {
  const ClassifyData d = ClassifyData::parse("abcdef\t1\nab\t0\nxyzw\t1\n", "t.tsv", 3);
  EXPECT_EQ(text_of(d, 0), "abc");
  EXPECT_EQ(text_of(d, 1), "ab");
  EXPECT_EQ(text_of(d, 2), "xyz");
  EXPECT_EQ(d.truncated, 2);
  EXPECT_EQ(d.truncated_bytes, 4);
  EXPECT_EQ(d.longest(), 3);
  EXPECT_NE(d.summary().find("2 truncated to 3 bytes (4 bytes dropped)"), std::string::npos) << d.summary();
  EXPECT_NE(error_of([] { ClassifyData::parse("a\t1", "t.tsv", -1); }).find("max_len must be >= 0"),
            std::string::npos);
  // through a file
  const fs::path p = fs::temp_directory_path() / ("mf_classify_data_" + std::to_string(::getpid()) + ".tsv");
  write_file_atomic(p.string(), "Source\tTarget\nabcdef\t1\n");
  const ClassifyData f = ClassifyData::load(p.string(), 4);
  EXPECT_EQ(f.source, p.string());
  EXPECT_EQ(text_of(f, 0), "abcd");
  EXPECT_EQ(f.truncated, 1);
  fs::remove(p);
}

TEST(ClassifyBatch, PaddedToTheLongestOfEachBatch) {
  const ClassifyData d = ClassifyData::parse("ab\t1\nwxyz\t0\nq\t2\n", "b.tsv");
  Tensor tokens, mask, labels;
  EXPECT_EQ(fill_classify_batch(d, {2, 1, 0}, tokens, mask, labels), 7);
  EXPECT_EQ(tokens.shape(), Shape({3, 4}));
  EXPECT_EQ(tokens.dtype(), DType::I32);
  EXPECT_EQ(mask.dtype(), DType::I32);
  const std::vector<std::int32_t> tok(tokens.data<std::int32_t>(), tokens.data<std::int32_t>() + 12);
  const std::vector<std::int32_t> msk(mask.data<std::int32_t>(), mask.data<std::int32_t>() + 12);
  EXPECT_EQ(tok, (std::vector<std::int32_t>{'q', 0, 0, 0, 'w', 'x', 'y', 'z', 'a', 'b', 0, 0}));
  EXPECT_EQ(msk, (std::vector<std::int32_t>{1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0}));
  EXPECT_EQ(std::vector<std::int32_t>(labels.data<std::int32_t>(), labels.data<std::int32_t>() + 3),
            (std::vector<std::int32_t>{2, 0, 1}));
  // a batch of short examples is short
  fill_classify_batch(d, {0, 2}, tokens, mask, labels);
  EXPECT_EQ(tokens.shape(), Shape({2, 2}));
  EXPECT_NE(error_of([&] { fill_classify_batch(d, {3}, tokens, mask, labels); }).find("example 3 is outside 'b.tsv'"),
            std::string::npos);
}

TEST(ClassifyBatch, SamplerIsAPureFunctionOfSeedAndStep) {
  const std::int64_t n = 10, batch = 3, accum = 2;
  ClassifySampler a(n, 42, batch, accum), b(n, 42, batch, accum), other(n, 43, batch, accum);
  // stream positions 0..29: steps 0..4 x micro-batches 0..1 x 3 examples
  std::vector<std::int64_t> stream;
  for (std::int64_t step = 0; step < 5; ++step)
    for (std::int64_t micro = 0; micro < accum; ++micro)
      for (std::int64_t i : a.indices(step, micro)) stream.push_back(i);
  // each epoch is a permutation of the examples, and epochs differ
  for (int e = 0; e < 3; ++e) {
    std::vector<std::int64_t> epoch(stream.begin() + e * n, stream.begin() + (e + 1) * n);
    EXPECT_EQ(epoch, ClassifySampler::epoch_permutation(n, 42, e));
    std::sort(epoch.begin(), epoch.end());
    for (std::int64_t i = 0; i < n; ++i) EXPECT_EQ(epoch[static_cast<std::size_t>(i)], i);
  }
  EXPECT_NE(ClassifySampler::epoch_permutation(n, 42, 0), ClassifySampler::epoch_permutation(n, 42, 1));
  // queried out of order (as a resumed run does) or by another sampler: the same batches
  EXPECT_EQ(b.indices(4, 1), std::vector<std::int64_t>(stream.begin() + 27, stream.begin() + 30));
  EXPECT_EQ(b.indices(1, 1), std::vector<std::int64_t>(stream.begin() + 9, stream.begin() + 12));  // spans epochs 0|1
  EXPECT_EQ(a.indices(0, 0), std::vector<std::int64_t>(stream.begin(), stream.begin() + 3));
  EXPECT_NE(other.indices(0, 0), a.indices(0, 0));  // another seed, another order (fixed seeds: checked once)
  EXPECT_NE(error_of([&] { a.indices(0, 2); }).find("bad sampler position"), std::string::npos);
}
