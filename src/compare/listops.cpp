#include "compare/listops.h"

#include <algorithm>
#include <unordered_set>

#include "core/error.h"
#include "core/rng.h"

namespace mf {
namespace {

constexpr const char* kOperators[] = {"[MIN", "[MAX", "[MED", "[SM"};  // LRA's OPERATORS, in its order
constexpr std::uint64_t kListOpsStream = 0x6c6973746f7073ull;

std::int32_t apply_operator(std::string_view op, std::vector<std::int32_t>& args) {
  MF_CHECK(!args.empty(), "[listops] operator ", op, " has no argument");
  if (op == "[MIN") return *std::min_element(args.begin(), args.end());
  if (op == "[MAX") return *std::max_element(args.begin(), args.end());
  if (op == "[SM") {
    std::int64_t s = 0;
    for (std::int32_t a : args) s += a;
    return static_cast<std::int32_t>(s % 10);
  }
  std::sort(args.begin(), args.end());  // [MED: int(np.median(args))
  const std::size_t n = args.size();
  return n % 2 == 1 ? args[n / 2] : (args[n / 2 - 1] + args[n / 2]) / 2;
}

// One tree drawn as LRA's generate_tree, appended to `text`; returns false as
// soon as the running length reaches max_length (the tree would be rejected).
bool draw_tree(Rng& rng, const ListOpsOptions& o, std::int64_t depth, std::string& text, std::int64_t& length,
               std::int32_t& value) {
  const double r = depth < o.max_depth ? static_cast<double>(rng.uniform()) : 1.0;
  if (r > o.value_p) {
    value = static_cast<std::int32_t>(rng.below(10));
    text += static_cast<char>('0' + value);
    text += ' ';
    length += 1;
    return length < o.max_length;
  }
  const std::int64_t args = 2 + static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(o.max_args - 1)));
  const std::size_t op_at = text.size();
  text += "?    ";  // the operator is drawn after its arguments, as LRA does; patched below
  length += 2;      // operator and "]"
  std::vector<std::int32_t> values(static_cast<std::size_t>(args));
  for (auto& v : values)
    if (!draw_tree(rng, o, depth + 1, text, length, v)) return false;
  const std::string op = kOperators[rng.below(4)];
  text.replace(op_at, 5, op + " ");
  text += "] ";
  value = apply_operator(op, values);
  return length < o.max_length;
}

}  // namespace

void validate(const ListOpsOptions& o) {
  MF_CHECK(o.max_depth >= 1, "[listops] option 'max_depth' must be >= 1 but is ", o.max_depth);
  MF_CHECK(o.max_args >= 2, "[listops] option 'max_args' must be >= 2 but is ", o.max_args);
  MF_CHECK(o.min_length >= 0, "[listops] option 'min_length' must be >= 0 but is ", o.min_length);
  MF_CHECK(o.max_length > o.min_length + 1, "[listops] option 'max_length' (", o.max_length,
           ") must exceed min_length + 1 (", o.min_length + 1, "): lengths are kept strictly between them");
  MF_CHECK(o.value_p > 0 && o.value_p < 1, "[listops] option 'value_p' must be in (0, 1) but is ", o.value_p);
}

std::vector<ListOpsExample> generate_listops(std::int64_t n, std::uint64_t seed, const ListOpsOptions& o) {
  validate(o);
  MF_CHECK(n >= 1, "[listops] the number of examples must be >= 1 but is ", n);
  Rng rng(seed, kListOpsStream);
  std::vector<ListOpsExample> out;
  std::unordered_set<std::string> seen;
  std::int64_t misses = 0;
  const std::int64_t max_misses = 2000000 + 1000 * n;
  std::string text;
  while (static_cast<std::int64_t>(out.size()) < n) {
    text.clear();
    std::int64_t length = 0;
    std::int32_t value = 0;
    const bool complete = draw_tree(rng, o, 1, text, length, value);
    if (complete && length > o.min_length && seen.insert(text).second) {
      text.pop_back();  // the trailing space
      out.push_back({text, value, length});
    } else {
      MF_CHECK(++misses < max_misses, "[listops] only ", out.size(), " of ", n, " trees fell strictly between ",
               "min_length ", o.min_length, " and max_length ", o.max_length, " after ", misses,
               " draws; widen the length window");
    }
  }
  return out;
}

std::int32_t listops_value(std::string_view e) {
  struct Frame {
    std::string op;
    std::vector<std::int32_t> args;
  };
  std::vector<Frame> stack;
  std::vector<std::int32_t> top;  // values at depth 0
  std::size_t pos = 0;
  while (pos < e.size()) {
    while (pos < e.size() && e[pos] == ' ') ++pos;
    std::size_t end = pos;
    while (end < e.size() && e[end] != ' ') ++end;
    const std::string_view tok = e.substr(pos, end - pos);
    pos = end;
    if (tok.empty() || tok == "(" || tok == ")") continue;
    std::vector<std::int32_t>& sink = stack.empty() ? top : stack.back().args;
    if (tok.size() == 1 && tok[0] >= '0' && tok[0] <= '9') {
      sink.push_back(tok[0] - '0');
    } else if (tok == "]") {
      MF_CHECK(!stack.empty(), "[listops] unbalanced ']' in '", e, "'");
      Frame f = std::move(stack.back());
      stack.pop_back();
      const std::int32_t v = apply_operator(f.op, f.args);
      (stack.empty() ? top : stack.back().args).push_back(v);
    } else {
      bool known = false;
      for (const char* op : kOperators) known = known || tok == op;
      MF_CHECK(known, "[listops] unknown token '", tok, "' in '", e, "' (expected [MIN, [MAX, [MED, [SM, ], a digit)");
      stack.push_back({std::string(tok), {}});
    }
  }
  MF_CHECK(stack.empty(), "[listops] unclosed '", stack.empty() ? "" : stack.back().op, "' in '", e, "'");
  MF_CHECK(top.size() == 1, "[listops] '", e, "' holds ", top.size(), " top-level values (expected one expression)");
  return top.front();
}

std::string listops_tsv(const std::vector<ListOpsExample>& examples) {
  std::string s = "Source\tTarget\n";
  for (const ListOpsExample& x : examples) s += x.text + "\t" + std::to_string(x.value) + "\n";
  return s;
}

}  // namespace mf
