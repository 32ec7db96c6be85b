// The comparison tasks' data generators (src/compare/) and the token-level
// sequence format they write (src/train/sequence_data.h): known small cases,
// the structure every generated example must have, label distributions,
// determinism, files that round-trip, and refusals of bad options and files.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "compare/induction_heads.h"
#include "compare/listops.h"
#include "compare/mqar.h"
#include "compare/selective_copy.h"
#include "../support/errors.h"
#include "train/classify_data.h"
#include "train/sequence_data.h"

namespace mf {
namespace {

using testing::error_of;

std::vector<std::int32_t> slice(const std::vector<std::int32_t>& v, const SequenceData& d, std::int64_t i) {
  const auto b = v.begin() + d.offsets[static_cast<std::size_t>(i)];
  return {b, b + d.length(i)};
}

TEST(CompareListOps, KnownExpressionsAndTheirValues) {
  EXPECT_EQ(listops_value("[MAX 2 9 [MIN 4 7 ] 0 ]"), 9);
  EXPECT_EQ(listops_value("[MIN [MAX 1 2 ] 3 ]"), 2);
  EXPECT_EQ(listops_value("[MED 1 2 3 4 ]"), 2);  // int(np.median) = int(2.5)
  EXPECT_EQ(listops_value("[MED 7 1 5 ]"), 5);
  EXPECT_EQ(listops_value("[SM 5 7 9 ]"), 1);     // 21 mod 10
  EXPECT_EQ(listops_value("7"), 7);
  // LRA's binarized spelling of [MAX 2 9 ] and of a nested tree
  EXPECT_EQ(listops_value("( ( ( [MAX 2 ) 9 ) ] )"), 9);
  EXPECT_EQ(listops_value("( ( ( [SM ( ( ( [MED 3 ) 8 ) ] ) ) 6 ) ] )"), 1);  // (5 + 6) mod 10
}

TEST(CompareListOps, MalformedExpressionsAreRefusedByName) {
  EXPECT_NE(error_of([] { listops_value("[FOO 1 2 ]"); }).find("unknown token '[FOO'"), std::string::npos);
  EXPECT_NE(error_of([] { listops_value("[MAX 1 2"); }).find("unclosed '[MAX'"), std::string::npos);
  EXPECT_NE(error_of([] { listops_value("1 ]"); }).find("unbalanced ']'"), std::string::npos);
  EXPECT_NE(error_of([] { listops_value("[MAX ]"); }).find("[MAX has no argument"), std::string::npos);
  EXPECT_NE(error_of([] { listops_value("1 2"); }).find("2 top-level values"), std::string::npos);
  ListOpsOptions o;
  o.max_length = o.min_length + 1;
  EXPECT_NE(error_of([&] { generate_listops(1, 0, o); }).find("option 'max_length'"), std::string::npos);
  o = ListOpsOptions{};
  o.max_args = 1;
  EXPECT_NE(error_of([&] { generate_listops(1, 0, o); }).find("option 'max_args'"), std::string::npos);
  o = ListOpsOptions{2, 2, 100, 200, 0.25};  // depth 2, 2 arguments: no tree is that long
  EXPECT_NE(error_of([&] { generate_listops(1, 0, o); }).find("widen the length window"), std::string::npos);
}

TEST(CompareListOps, GeneratedTreesHaveTheirValueLengthAndSpread) {
  const ListOpsOptions o{10, 10, 6, 40, 0.25};
  const std::vector<ListOpsExample> ex = generate_listops(1500, 7, o);
  ASSERT_EQ(ex.size(), 1500u);
  std::set<std::string> texts;
  std::map<int, int> counts;
  std::int64_t deepest = 0;
  for (const ListOpsExample& e : ex) {
    EXPECT_EQ(listops_value(e.text), e.value) << e.text;
    std::istringstream in(e.text);
    std::string tok;
    std::int64_t n = 0, depth = 0;
    while (in >> tok) {
      ++n;
      if (tok[0] == '[') deepest = std::max(deepest, ++depth);
      if (tok == "]") --depth;
    }
    EXPECT_EQ(n, e.length) << e.text;
    EXPECT_GT(e.length, o.min_length);
    EXPECT_LT(e.length, o.max_length);
    texts.insert(e.text);
    ++counts[e.value];
  }
  EXPECT_EQ(texts.size(), ex.size()) << "duplicates";
  EXPECT_GE(deepest, 3);
  ASSERT_EQ(counts.size(), 10u) << "every class 0..9 appears";
  for (const auto& [v, c] : counts) EXPECT_LT(c, 1500 / 2) << "class " << v << " dominates";
  // deterministic in the seed
  EXPECT_EQ(generate_listops(20, 7, o)[5].text, generate_listops(20, 7, o)[5].text);
  EXPECT_NE(generate_listops(20, 7, o)[5].text, generate_listops(20, 8, o)[5].text);
}

TEST(CompareListOps, TsvRoundTripsThroughTheClassifierReader) {
  const std::vector<ListOpsExample> ex = generate_listops(30, 3, ListOpsOptions{10, 10, 4, 20, 0.25});
  const ClassifyData d = ClassifyData::parse(listops_tsv(ex), "listops.tsv");
  EXPECT_TRUE(d.has_header);
  ASSERT_EQ(d.size(), 30);
  for (std::int64_t i = 0; i < d.size(); ++i) {
    EXPECT_EQ(d.bytes.substr(static_cast<std::size_t>(d.offsets[static_cast<std::size_t>(i)]),
                             static_cast<std::size_t>(d.length(i))),
              ex[static_cast<std::size_t>(i)].text);
    EXPECT_EQ(d.labels[static_cast<std::size_t>(i)], ex[static_cast<std::size_t>(i)].value);
  }
}

TEST(CompareMqar, SequencesHoldPairsThenQueriesWhoseTargetsAreTheValues) {
  const MqarOptions o{32, 40, 6, 0.01};
  const SequenceData d = generate_mqar(300, 5, o, "mqar");
  const std::int32_t K = (32 - 1) / 2;
  std::int64_t first_slot_sum = 0;
  std::map<std::int32_t, int> value_counts;
  for (std::int64_t e = 0; e < d.size(); ++e) {
    const auto in = slice(d.inputs, d, e), t = slice(d.targets, d, e);
    ASSERT_EQ(in.size(), 40u);
    std::map<std::int32_t, std::int32_t> kv;
    std::set<std::int32_t> values;
    for (int j = 0; j < 6; ++j) {
      const std::int32_t k = in[2 * j], v = in[2 * j + 1];
      EXPECT_GE(k, 1);
      EXPECT_LE(k, K);
      EXPECT_GT(v, K);
      EXPECT_LT(v, 32);
      EXPECT_TRUE(kv.emplace(k, v).second) << "keys are distinct";
      EXPECT_TRUE(values.insert(v).second) << "values are distinct";
      EXPECT_EQ(t[2 * j], -1);
      EXPECT_EQ(t[2 * j + 1], -1);
      ++value_counts[v];
    }
    std::set<std::int32_t> queried;
    std::int64_t first = -1;
    for (std::size_t i = 12; i < in.size(); ++i) {
      if (t[i] >= 0) {
        EXPECT_EQ((i - 12) % 2, 0u) << "queries sit at even offsets of the region";
        ASSERT_TRUE(kv.count(in[i]));
        EXPECT_EQ(t[i], kv[in[i]]) << "the target of a query is its key's value";
        queried.insert(in[i]);
        if (first < 0) first = static_cast<std::int64_t>(i - 12) / 2;
      } else {
        EXPECT_EQ(in[i], 0) << "blank outside the queries";
      }
    }
    EXPECT_EQ(queried.size(), 6u) << "every key is queried once";
    first_slot_sum += first;
  }
  EXPECT_EQ(d.scored(), 300 * 6);
  // 14 slots for 6 queries: uniform draws put the first at mean ~1.1; the power law near 0 as well but the
  // last ones cluster early: check the mean query slot is below the uniform mean 6.5.
  std::int64_t slot_sum = 0, n = 0;
  for (std::int64_t e = 0; e < d.size(); ++e) {
    const auto t = slice(d.targets, d, e);
    for (std::size_t i = 12; i < t.size(); ++i)
      if (t[i] >= 0) slot_sum += static_cast<std::int64_t>(i - 12) / 2, ++n;
  }
  EXPECT_LT(static_cast<double>(slot_sum) / static_cast<double>(n), 6.5);
  EXPECT_GE(value_counts.size(), 14u) << "values spread over the value range";
  EXPECT_EQ(generate_mqar(3, 5, o, "a").to_text(), generate_mqar(3, 5, o, "b").to_text());
}

TEST(CompareMqar, ImpossibleOptionsAreRefusedByName) {
  EXPECT_NE(error_of([] { generate_mqar(1, 0, MqarOptions{64, 30, 8, 0.01}, "x"); }).find("option 'seq_len'"),
            std::string::npos);
  EXPECT_NE(error_of([] { generate_mqar(1, 0, MqarOptions{9, 64, 8, 0.01}, "x"); }).find("option 'num_pairs'"),
            std::string::npos);
  EXPECT_NE(error_of([] { generate_mqar(1, 0, MqarOptions{64, 64, 8, 0}, "x"); }).find("option 'power_a'"),
            std::string::npos);
}

TEST(CompareSelectiveCopy, MarkersAskForTheDataTokensInOrder) {
  const SelectiveCopyOptions o{10, 30, 5};
  const SequenceData d = generate_selective_copy(200, 2, o, "copy");
  std::map<std::int32_t, int> counts;
  for (std::int64_t e = 0; e < d.size(); ++e) {
    const auto in = slice(d.inputs, d, e), t = slice(d.targets, d, e);
    ASSERT_EQ(in.size(), 30u);
    std::vector<std::int32_t> data;
    for (std::size_t i = 0; i < 25; ++i) {
      EXPECT_EQ(t[i], -1);
      EXPECT_NE(in[i], 1) << "no marker in the prefix";
      if (in[i] != 0) data.push_back(in[i]);
    }
    ASSERT_EQ(data.size(), 5u);
    for (std::size_t j = 0; j < 5; ++j) {
      EXPECT_EQ(in[25 + j], 1);
      EXPECT_EQ(t[25 + j], data[j]);
      ++counts[data[j]];
    }
  }
  EXPECT_EQ(counts.size(), 8u) << "every data token 2..9 appears";
  EXPECT_NE(error_of([] { generate_selective_copy(1, 0, SelectiveCopyOptions{10, 9, 5}, "x"); }).find("option 'seq_len'"),
            std::string::npos);
}

TEST(CompareInductionHeads, TheLastTriggerAsksForTheTokenAfterTheFirst) {
  const SequenceData d = generate_induction_heads(200, 4, InductionHeadsOptions{8, 20}, "induction");
  std::map<std::int32_t, int> answers;
  for (std::int64_t e = 0; e < d.size(); ++e) {
    const auto in = slice(d.inputs, d, e), t = slice(d.targets, d, e);
    ASSERT_EQ(in.size(), 20u);
    EXPECT_EQ(std::count(in.begin(), in.end(), 0), 2) << "the trigger appears twice";
    EXPECT_EQ(in[19], 0);
    const std::size_t p = static_cast<std::size_t>(std::find(in.begin(), in.end(), 0) - in.begin());
    ASSERT_LT(p, 18u);
    EXPECT_EQ(std::count_if(t.begin(), t.end(), [](std::int32_t x) { return x >= 0; }), 1);
    EXPECT_EQ(t[19], in[p + 1]);
    ++answers[t[19]];
  }
  EXPECT_EQ(answers.size(), 7u);
  EXPECT_NE(error_of([] { generate_induction_heads(1, 0, InductionHeadsOptions{2, 20}, "x"); }).find("option 'vocab_size'"),
            std::string::npos);
}

TEST(CompareSequenceData, FilesRoundTripAndBadLinesAreNamed) {
  const SequenceData d = generate_mqar(5, 1, MqarOptions{16, 16, 2, 0.01}, "m");
  const SequenceData back = SequenceData::parse(d.to_text(), "m.tsv");
  EXPECT_TRUE(back.has_header);
  EXPECT_EQ(back.inputs, d.inputs);
  EXPECT_EQ(back.targets, d.targets);
  EXPECT_EQ(back.offsets, d.offsets);
  EXPECT_EQ(back.fingerprint(), d.fingerprint());
  const SequenceData plain = SequenceData::parse("3 4 5\t- 5 -\n1 2\t2 -\n", "p.tsv");
  EXPECT_FALSE(plain.has_header);
  EXPECT_EQ(plain.size(), 2);
  EXPECT_EQ(plain.scored(), 2);
  EXPECT_EQ(plain.longest(), 3);
  Tensor tokens, targets;
  EXPECT_EQ(fill_sequence_batch(plain, {1, 0}, tokens, targets), 5);
  EXPECT_EQ(tokens.shape(), Shape({2, 3}));
  EXPECT_EQ(tokens.data<std::int32_t>()[2], 0);    // padding
  EXPECT_EQ(targets.data<std::int32_t>()[2], -1);  // not scored
  EXPECT_EQ(targets.data<std::int32_t>()[4], 5);
  EXPECT_NE(error_of([] { SequenceData::parse("1 2\t3\n", "a.tsv"); }).find("a.tsv:1: 2 inputs but 1 targets"),
            std::string::npos);
  EXPECT_NE(error_of([] { SequenceData::parse("h\tt\n1 x\t- 2\n", "b.tsv"); }).find("b.tsv:2: input 'x'"),
            std::string::npos);
  EXPECT_NE(error_of([] { SequenceData::parse("1 2\t- -\n", "c.tsv"); }).find("c.tsv:1: no scored target"),
            std::string::npos);
  EXPECT_NE(error_of([] { SequenceData::parse("1 2 - -\n", "d.tsv"); }).find("d.tsv:1: expected exactly one tab"),
            std::string::npos);
  EXPECT_NE(error_of([] { SequenceData::parse("1 2\t-3 -\n", "e.tsv"); }).find("e.tsv:1: target '-3'"),
            std::string::npos);
  EXPECT_NE(error_of([] { SequenceData::parse("input\ttarget\n", "f.tsv"); }).find("no examples after the header"),
            std::string::npos);
}

}  // namespace
}  // namespace mf
