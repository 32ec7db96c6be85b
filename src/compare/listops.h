// ListOps (Nangia and Bowman 2018), generated as the Long Range Arena
// generator does (lra_benchmarks/data/listops.py): a tree whose nodes are
// operators MIN, MAX, MED (median; an even count takes the floor of the two
// middle values' mean, as int(np.median)), SM (sum mod 10) over 2..max_args
// arguments, each argument a digit (probability 1 - value_p at depths below
// max_depth, always at max_depth) or a subtree; the tree's length counts
// digits, operators and closing brackets, and trees are kept when
// min_length < length < max_length (strict, as LRA), without duplicates.
// Written as Nangia and Bowman's bracket strings "[MAX 2 9 [MIN 4 7 ] 0 ]"
// (one token per space-separated item; LRA's binarized form with "(" ")" is
// read too: listops_value ignores parentheses) in `Source<TAB>Target` TSV
// files, 10 classes (the value). Deviation: a tree is abandoned as soon as
// it reaches max_length (LRA draws it whole, then rejects it): the kept trees
// have the same distribution, the draws differ.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mf {

struct ListOpsOptions {
  std::int64_t max_depth = 10;
  std::int64_t max_args = 10;
  std::int64_t min_length = 500;   // exclusive bounds on the tree length (tokens), as LRA
  std::int64_t max_length = 2000;
  double value_p = 0.25;           // LRA's VALUE_P: probability of an operator node below max_depth
};

struct ListOpsExample {
  std::string text;     // "[MAX 2 9 [MIN 4 7 ] 0 ]"
  std::int32_t value;   // 0..9
  std::int64_t length;  // tokens
};

// Throws "[listops] option ..." for impossible options.
void validate(const ListOpsOptions& o);
// n distinct examples from (seed, stream): a pure function of its arguments.
// Throws when the length window admits no tree after many draws.
std::vector<ListOpsExample> generate_listops(std::int64_t n, std::uint64_t seed, const ListOpsOptions& o);
// The value of an expression; throws "[listops] ..." naming the problem for
// a malformed one (unknown operator, unbalanced bracket, no argument).
std::int32_t listops_value(std::string_view expression);
// "Source\tTarget\n" then "TEXT\tVALUE\n" per example (LRA's TSV layout).
std::string listops_tsv(const std::vector<ListOpsExample>& examples);

}  // namespace mf
