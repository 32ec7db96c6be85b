#include "compare/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <tuple>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/svg_plot.h"

namespace mf {
namespace {

using nlohmann::json;
const double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string fmt(double v, int digits) {
  if (!std::isfinite(v)) return "-";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}
double num(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<double>() : kNaN;
}

// Rows of a Markdown table.
std::string table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows) {
  std::string s = "|";
  for (const auto& h : head) s += " " + h + " |";
  s += "\n|";
  for (std::size_t i = 0; i < head.size(); ++i) s += i == 0 ? "---|" : "---:|";
  s += "\n";
  for (const auto& r : rows) {
    s += "|";
    for (const auto& c : r) s += " " + c + " |";
    s += "\n";
  }
  return s + "\n";
}

// "mixer", "mixer (alibi)" for a chosen scheme, "mixer [learned]" when
// "auto" fell back from RoPE.
std::string cell_name(const json& c) {
  const std::string pos = c.value("position", std::string()), used = c.value("position_used", std::string());
  const std::string m = c.value("mixer", std::string());
  if (pos == "auto") return m + (used.empty() || used == "rope" ? "" : " [" + used + "]");
  return m + " (" + pos + ")";
}

// "unsupported" / "failed" with a footnote number, else "".
std::string status_mark(const json& c, std::vector<std::string>& notes) {
  const std::string st = c.value("status", std::string("?"));
  if (st == "ok") return "";
  notes.push_back(cell_name(c) + " on " + c.value("task", std::string()) + ": " + st + ": " +
                  c.value("reason", std::string()));
  return st + " [" + std::to_string(notes.size()) + "]";
}

std::vector<const json*> cells_of(const json& r, const std::string& task) {
  std::vector<const json*> out;
  for (const json& c : r["cells"])
    if (c.value("task", std::string()) == task) out.push_back(&c);
  return out;
}

std::string efficiency(const json& c) {
  return fmt(num(c, "tokens_per_s"), 0) + " | " + fmt(num(c, "peak_bytes") / (1 << 20), 1);
}

// A RoPE scaling row of an extrapolation cell whose numbers equal the
// unscaled row bit for bit: the mixer does not use RoPE (Mamba, retention),
// so the row says nothing and is left out of tables and plots.
bool rope_unused(const json& c, const std::string& scaling) {
  const json& lengths = c["metrics"]["lengths"];
  return scaling != "none" && lengths.contains("none") && lengths[scaling] == lengths["none"];
}

void plot_if_any(const std::string& path, const std::vector<PlotSeries>& series, const PlotOptions& o) {
  bool any = false;
  for (const PlotSeries& s : series)
    for (double y : s.y) any = any || std::isfinite(y);
  if (any) write_svg_line_chart(path, series, o);
}

// The published numbers and orderings each task is meant to check, beside
// ours for the mixers that ran; whether they agree is for the reader (and
// the closing note) to judge on a full-profile run.
std::string published_orderings(const json& r) {
  auto measured = [&](const std::string& task, const std::string& mixer) -> std::string {
    for (const json* c : cells_of(r, task))
      if ((*c)["mixer"] == mixer && (*c).value("position", std::string()) == "auto")
        return (*c)["status"] == "ok" ? fmt(num((*c)["metrics"], "accuracy") * 100, 1) : (*c)["status"].get<std::string>();
    return "not run";
  };
  std::string md = "## Published orderings, beside ours\n\n";
  // LRA ListOps test accuracy (%): Tay et al. 2021, Table 1; FNet: Lee-Thorp et al. 2022, Table 4.
  const std::vector<std::pair<std::string, double>> lra = {{"lsh_attention", 37.27}, {"full_attention", 36.37},
                                                            {"linformer", 35.70},     {"fnet", 35.33},
                                                            {"performer", 18.01},     {"sliding_attention", 15.82}};
  if (!cells_of(r, "listops").empty()) {
    md += "ListOps accuracy (%): Long Range Arena (Tay et al. 2021, Table 1: Reformer, Transformer, Linformer, "
          "Performer, local attention; FNet from Lee-Thorp et al. 2022), published order from best:\n\n";
    std::vector<std::vector<std::string>> rows;
    for (const auto& [m, acc] : lra) rows.push_back({m, fmt(acc, 2), measured("listops", m)});
    md += table({"mixer", "LRA ListOps", "ours"}, rows);
  }
  if (!cells_of(r, "selective_copy").empty() || !cells_of(r, "induction_heads").empty())
    md += "Mamba (Gu and Dao 2023): selective copying is solved by input-dependent (selective) mixers, Mamba 99.8% "
          "against 18-57% for LTI state-space and long-convolution models (Table 1), while exact attention, being "
          "content-aware, also solves it; induction heads: Mamba stays at 100% up to 4000x the training length, "
          "attention with absolute positions fails beyond the training length and RoPE/xPos attention generalize "
          "to about 2x (Table 2). Ours: selective copying accuracy " +
          measured("selective_copy", "mamba") + "% (mamba) vs " + measured("selective_copy", "full_attention") +
          "% (full_attention); induction heads in its table above.\n\n";
  if (!cells_of(r, "mqar").empty())
    md += "Zoology (Arora et al. 2023): attention solves MQAR at every number of pairs and model width; gated-"
          "convolution and linear-recurrent mixers (H3, Hyena, RWKV, RetNet) lose accuracy as the pairs grow unless "
          "the width grows with them. Ours (all pair counts): full_attention " +
          measured("mqar", "full_attention") + "%, retention " + measured("mqar", "retention") + "%, mamba " +
          measured("mqar", "mamba") + "%, performer " + measured("mqar", "performer") + "%.\n\n";
  return md;
}

}  // namespace

std::string compare_report_markdown(const json& r) {
  std::string md = "# modformer compare\n\n";
  md += "Command: `" + r.value("command", std::string()) + "`  \n";
  md += "Profile " + r.value("profile", std::string()) + ", " + std::to_string(r.value("steps", 0)) +
        " steps per cell" +
        (num(r, "budget_minutes") > 0 ? " (time budget " + fmt(num(r, "budget_minutes"), 2) + " min per cell)" : "") +
        ", about " + std::to_string(r.value("params_target", 0)) + " parameters per model, seed " +
        std::to_string(r.value("seed", 0)) + ", " + std::to_string(r.value("threads", 0)) + " threads, commit " +
        r.value("commit", std::string()) + ".  \n";
  const json env = r.value("environment", json::object());
  md += "Machine: " + env.value("cpu", std::string("?")) + ", load average " + fmt(num(env, "loadavg_1min"), 2) +
        " at the start.\n\n";
  std::vector<std::string> notes;

  // ---- speed and memory vs length ----
  if (r.contains("speed") && r["speed"].value("status", std::string()) == "ok") {
    const json& sp = r["speed"];
    md += "## Speed and memory vs length\n\nOne token-mixer layer (hidden " + std::to_string(sp.value("hidden", 0)) +
          ", " + std::to_string(sp.value("heads", 0)) +
          " heads, batch 1), forward + backward time in ms / peak activation MiB, best of " +
          std::to_string(sp.value("reps", 0)) + " interleaved rounds (as `modformer bench mixers`).\n\n";
    for (const char* mode : {"bidirectional", "causal"}) {
      if (!sp.contains(mode) || sp[mode].empty()) continue;
      const json* measured = nullptr;  // a mixer with rows (and one with decode rows) gives the columns
      const json* decoded = nullptr;
      for (const json& m : sp[mode]) {
        if (!measured && !m["rows"].empty()) measured = &m;
        if (!decoded && m.contains("decode")) decoded = &m;
      }
      if (!measured) continue;
      std::vector<std::string> head = {std::string(mode) + " mixer"};
      for (const json& row : (*measured)["rows"]) head.push_back("L " + std::to_string(row["L"].get<std::int64_t>()));
      if (decoded)
        for (const json& d : (*decoded)["decode"])
          head.push_back("decode us/token @" + std::to_string(d["context"].get<std::int64_t>()));
      std::vector<std::vector<std::string>> rows;
      for (const json& m : sp[mode]) {
        std::vector<std::string> row = {m["mixer"].get<std::string>()};
        if (m.contains("error")) {
          notes.push_back(m["mixer"].get<std::string>() + " in the " + mode + " speed table: " +
                          m["error"].get<std::string>());
          for (std::size_t i = 1; i < head.size(); ++i) row.push_back("refused [" + std::to_string(notes.size()) + "]");
          rows.push_back(row);
          continue;
        }
        for (const json& x : m["rows"])
          row.push_back(fmt(num(x, "forward_backward_s") * 1e3, 2) + " / " +
                        fmt(num(x, "peak_activation_bytes") / (1 << 20), 1));
        if (decoded)
          for (std::size_t i = 0; i < (*decoded)["decode"].size(); ++i)
            row.push_back(m.contains("decode") ? fmt(num(m["decode"][i], "seconds_per_token") * 1e6, 1)
                                               : "no generation");
        rows.push_back(row);
      }
      md += table(head, rows);
    }
  } else if (r.contains("speed")) {
    md += "## Speed and memory vs length\n\nfailed: " + r["speed"].value("reason", std::string()) + "\n\n";
  }

  // ---- quality vs efficiency ----
  const std::vector<std::pair<std::string, std::string>> quality = {{"char_lm", "char LM bpb"},
                                                                    {"listops", "ListOps acc"},
                                                                    {"mqar", "MQAR acc"},
                                                                    {"selective_copy", "sel. copy acc"},
                                                                    {"induction_heads", "induction acc"}};
  std::vector<std::string> mixers;
  for (const json& c : r["cells"])
    if (c.value("position", std::string()) == "auto" &&
        std::find(mixers.begin(), mixers.end(), c["mixer"].get<std::string>()) == mixers.end())
      mixers.push_back(c["mixer"].get<std::string>());
  if (!mixers.empty()) {
    md += "## Quality vs efficiency\n\nSame data, budget and parameter count per task; training tokens/s and peak "
          "training memory (MiB above the data) from the char LM cell where it ran, else the first cell that did.\n\n";
    std::vector<std::string> head = {"mixer"};
    for (const auto& [t, label] : quality) head.push_back(label);
    head.push_back("train tok/s");
    head.push_back("peak MiB");
    std::vector<std::vector<std::string>> rows;
    for (const std::string& m : mixers) {
      std::vector<std::string> row = {m};
      const json* eff = nullptr;
      for (const auto& [t, label] : quality) {
        std::string v = "not run";
        for (const json* c : cells_of(r, t))
          if ((*c)["mixer"] == m && (*c).value("position", std::string()) == "auto") {
            if ((*c)["status"] == "ok") {
              const json& met = (*c)["metrics"];
              v = t == "char_lm" ? fmt(num(met, "val_bpb"), 3) : fmt(num(met, "accuracy"), 3);
              if (!eff || t == "char_lm") eff = c;
            } else {
              v = (*c)["status"].get<std::string>();
            }
          }
        row.push_back(v);
      }
      row.push_back(eff ? fmt(num(*eff, "tokens_per_s"), 0) : "-");
      row.push_back(eff ? fmt(num(*eff, "peak_bytes") / (1 << 20), 1) : "-");
      rows.push_back(row);
    }
    md += table(head, rows);
  }

  // ---- one table per task ----
  for (const char* task : {"char_lm", "listops", "selective_copy"}) {
    const auto cs = cells_of(r, task);
    if (cs.empty()) continue;
    const bool lm = std::string(task) == "char_lm";
    md += std::string("## ") + task + "\n\n";
    std::vector<std::vector<std::string>> rows;
    for (const json* c : cs) {
      const std::string mark = status_mark(*c, notes);
      const json met = c->value("metrics", json::object());
      rows.push_back({cell_name(*c), fmt(num(*c, "params"), 0), fmt(num(*c, "hidden_size"), 0), fmt(num(*c, "steps"), 0),
                      mark.empty() ? fmt(lm ? num(met, "val_bpb") : num(met, "accuracy"), 3) : mark,
                      fmt(num(met, "train_loss"), 3), mark.empty() ? efficiency(*c) : "- | -"});
    }
    md += table({"mixer", "params", "hidden", "steps", lm ? "val bits/byte" : "test accuracy", "final train loss",
                 "train tok/s", "peak MiB"},
                rows);
  }
  for (const auto& [task, key, label] : {std::tuple<const char*, const char*, const char*>{"mqar", "by_pairs", "pairs"},
                                         {"induction_heads", "by_length", "length"}}) {
    const auto cs = cells_of(r, task);
    if (cs.empty()) continue;
    md += std::string("## ") + task + "\n\nAccuracy on the scored positions";
    md += std::string(task) == "mqar" ? " by number of key-value pairs (one model trained on all counts).\n\n"
                                      : " by test length (trained at the first length).\n\n";
    std::vector<std::string> head = {"mixer", "params"};
    std::vector<std::int64_t> xs;
    for (const json* c : cs)
      if ((*c)["status"] == "ok")
        for (const json& row : (*c)["metrics"][key])
          if (std::find(xs.begin(), xs.end(), row[label].get<std::int64_t>()) == xs.end())
            xs.push_back(row[label].get<std::int64_t>());
    for (auto x : xs) head.push_back(std::string(label) + " " + std::to_string(x));
    head.push_back("train tok/s");
    head.push_back("peak MiB");
    std::vector<std::vector<std::string>> rows;
    for (const json* c : cs) {
      const std::string mark = status_mark(*c, notes);
      std::vector<std::string> row = {cell_name(*c), fmt(num(*c, "params"), 0)};
      for (auto x : xs) {
        std::string v = mark.empty() ? "-" : mark;
        if (mark.empty())
          for (const json& e : (*c)["metrics"][key])
            if (e[label] == x) v = fmt(num(e, "accuracy"), 3);
        row.push_back(v);
      }
      row.push_back(mark.empty() ? efficiency(*c) : "- | -");
      rows.push_back(row);
    }
    md += table(head, rows);
  }
  if (const auto cs = cells_of(r, "extrapolation"); !cs.empty()) {
    md += "## extrapolation\n\nValidation bits per byte at each evaluation length (trained at the first); RoPE "
          "models also with each scaling applied at evaluation only (factor = length / training length; rows that equal "
          "the unscaled one exactly are left out: that mixer does not use RoPE). Sinusoidal positions are added to "
          "the embeddings unscaled (amplitude 1 against embeddings of std initializer_range), which slows learning.\n\n";
    std::vector<std::string> head = {"mixer (position)", "scaling"};
    std::vector<std::int64_t> xs;
    for (const json* c : cs)
      if ((*c)["status"] == "ok")
        for (const json& row : (*c)["metrics"]["lengths"]["none"])
          if (std::find(xs.begin(), xs.end(), row["length"].get<std::int64_t>()) == xs.end())
            xs.push_back(row["length"].get<std::int64_t>());
    for (auto x : xs) head.push_back("L " + std::to_string(x));
    std::vector<std::vector<std::string>> rows;
    for (const json* c : cs) {
      const std::string mark = status_mark(*c, notes);
      if (!mark.empty()) {
        std::vector<std::string> row = {cell_name(*c), "-"};
        for (std::size_t i = 0; i < xs.size(); ++i) row.push_back(mark);
        rows.push_back(row);
        continue;
      }
      for (const auto& [scaling, series] : (*c)["metrics"]["lengths"].items()) {
        if (rope_unused(*c, scaling)) continue;
        std::vector<std::string> row = {cell_name(*c), scaling};
        for (auto x : xs) {
          std::string v = "-";
          for (const json& e : series)
            if (e["length"] == x) v = e.contains("error") ? "error" : fmt(num(e, "val_bpb"), 3);
          row.push_back(v);
        }
        rows.push_back(row);
      }
    }
    md += table(head, rows);
  }
  md += published_orderings(r);
  if (!notes.empty()) {
    md += "## Cells that did not produce a number\n\n";
    for (std::size_t i = 0; i < notes.size(); ++i) md += std::to_string(i + 1) + ". " + notes[i] + "\n";
    md += "\n";
  }
  return md;
}

void write_compare_report(const json& r, const std::string& out) {
  write_file_atomic(out + "/results.md", compare_report_markdown(r));
  PlotOptions o;
  o.width = 960;
  // quality vs speed: one point per mixer per task (char LM bpb would need its own axis: it is plotted alone)
  {
    std::vector<PlotSeries> s;
    for (const json* c : cells_of(r, "char_lm"))
      if ((*c)["status"] == "ok")
        s.push_back({cell_name(*c), {num(*c, "tokens_per_s")}, {num((*c)["metrics"], "val_bpb")}});
    o.title = "char LM: quality vs training speed";
    o.x_label = "training tokens/s";
    o.y_label = "validation bits/byte (lower is better)";
    plot_if_any(out + "/quality_vs_speed.svg", s, o);
  }
  for (const auto& [task, key, label, file] :
       {std::tuple<const char*, const char*, const char*, const char*>{"mqar", "by_pairs", "pairs", "mqar.svg"},
        {"induction_heads", "by_length", "length", "induction_heads.svg"}}) {
    std::vector<PlotSeries> s;
    for (const json* c : cells_of(r, task)) {
      if ((*c)["status"] != "ok") continue;
      PlotSeries ps{cell_name(*c), {}, {}};
      for (const json& e : (*c)["metrics"][key]) {
        ps.x.push_back(e[label].get<double>());
        ps.y.push_back(num(e, "accuracy"));
      }
      s.push_back(ps);
    }
    o.title = std::string(task) == "mqar" ? "MQAR: accuracy vs number of key-value pairs"
                                          : "induction heads: accuracy vs test length";
    o.x_label = std::string(task) == "mqar" ? "key-value pairs" : "test length (tokens)";
    o.y_label = "accuracy";
    o.log_x = true;
    o.y_from_zero = true;
    plot_if_any(out + "/" + file, s, o);
  }
  {
    std::vector<PlotSeries> s;
    for (const json* c : cells_of(r, "extrapolation")) {
      if ((*c)["status"] != "ok") continue;
      for (const auto& [scaling, series] : (*c)["metrics"]["lengths"].items()) {
        if (rope_unused(*c, scaling)) continue;
        PlotSeries ps{cell_name(*c) + (scaling == "none" ? "" : " +" + scaling), {}, {}};
        for (const json& e : series) {
          ps.x.push_back(e["length"].get<double>());
          ps.y.push_back(num(e, "val_bpb"));
        }
        s.push_back(ps);
      }
    }
    o.title = "length extrapolation: validation bits/byte vs evaluation length";
    o.x_label = "evaluation length (tokens)";
    o.y_label = "bits/byte";
    o.y_from_zero = false;
    plot_if_any(out + "/extrapolation.svg", s, o);
  }
  if (r.contains("speed") && r["speed"].value("status", std::string()) == "ok") {
    std::vector<PlotSeries> speed, memory;
    for (const char* mode : {"bidirectional", "causal"})
      for (const json& m : r["speed"].value(mode, json::array())) {
        PlotSeries sp{m["mixer"].get<std::string>() + " " + mode, {}, {}}, me = sp;
        for (const json& x : m["rows"]) {
          sp.x.push_back(x["L"].get<double>());
          sp.y.push_back(num(x, "forward_backward_s") * 1e3);
          me.x.push_back(x["L"].get<double>());
          me.y.push_back(std::max(num(x, "peak_activation_bytes"), 1.0) / (1 << 20));
        }
        speed.push_back(sp);
        memory.push_back(me);
      }
    o.log_x = o.log_y = true;
    o.x_label = "sequence length L";
    o.title = "forward + backward time of one mixer layer vs length";
    o.y_label = "ms";
    plot_if_any(out + "/speed.svg", speed, o);
    o.title = "peak activation memory (forward + backward) vs length";
    o.y_label = "MiB";
    plot_if_any(out + "/memory.svg", memory, o);
  }
}

}  // namespace mf
