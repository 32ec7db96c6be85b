// SVG line and bar charts. Line chart: data range -> "nice" ticks (1/2/5 x 10^k) -> pixel mapping
// -> one <path> per series (split at non-finite points) plus markers and a
// legend. Text is XML-escaped.
#include "core/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "core/atomic_file.h"
#include "core/error.h"

namespace mf {
namespace {

const char* kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                         "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string escape(const std::string& s) {
  std::string r;
  for (char ch : s) {
    switch (ch) {
      case '&': r += "&amp;"; break;
      case '<': r += "&lt;"; break;
      case '>': r += "&gt;"; break;
      case '"': r += "&quot;"; break;
      case '\'': r += "&apos;"; break;
      default: r += ch;
    }
  }
  return r;
}

std::string num(double v) {  // coordinates
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

// Tick labels: "0", "0.25", "512", "1e6", "2.5e-4".
std::string tick_label(double v) {
  if (v == 0) return "0";
  char buf[32];
  const double a = std::fabs(v);
  if (a >= 1e5 || a < 1e-3) {
    std::snprintf(buf, sizeof buf, "%.2g", v);
    std::string s = buf;  // "1e+06" -> "1e6", "2.5e-04" -> "2.5e-4"
    const auto e = s.find('e');
    if (e != std::string::npos) {
      std::string mant = s.substr(0, e), ex = s.substr(e + 1);
      const bool neg = ex[0] == '-';
      ex = ex.substr(1);
      while (ex.size() > 1 && ex[0] == '0') ex.erase(0, 1);
      s = mant + "e" + (neg ? "-" : "") + ex;
    }
    return s;
  }
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

struct Axis {
  bool log = false;
  double lo = 0, hi = 1;  // in data units
  std::vector<double> ticks;
  double t(double v) const { return log ? std::log10(v) : v; }
  double frac(double v) const { return (t(v) - t(lo)) / (t(hi) - t(lo)); }
};

double nice_step(double raw) {
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

Axis make_axis(double mn, double mx, bool log, bool from_zero) {
  Axis ax;
  ax.log = log;
  if (!(mn <= mx)) {  // no finite data
    mn = log ? 1 : 0;
    mx = log ? 10 : 1;
  }
  if (log) {
    double a = std::log10(mn), b = std::log10(mx);
    if (b - a < 1e-9) {
      a -= 0.5;
      b += 0.5;
    }
    const double pad = 0.04 * (b - a);
    ax.lo = std::pow(10.0, a - pad);
    ax.hi = std::pow(10.0, b + pad);
    const int d0 = static_cast<int>(std::floor(a - pad)), d1 = static_cast<int>(std::ceil(b + pad));
    const int decades = d1 - d0;
    const std::vector<double> mults = decades <= 2 ? std::vector<double>{1, 2, 5} : std::vector<double>{1};
    const int every = std::max(1, decades / 8);
    for (int d = d0; d <= d1; ++d) {
      if ((d - d0) % every != 0) continue;
      for (double mlt : mults) {
        const double v = mlt * std::pow(10.0, d);
        if (v >= ax.lo * (1 - 1e-9) && v <= ax.hi * (1 + 1e-9)) ax.ticks.push_back(v);
      }
    }
    if (ax.ticks.size() < 2) {  // less than one decade shown: 1..9 x 10^d
      ax.ticks.clear();
      for (int d = d0; d <= d1; ++d)
        for (int mlt = 1; mlt <= 9; ++mlt) {
          const double v = mlt * std::pow(10.0, d);
          if (v >= ax.lo && v <= ax.hi) ax.ticks.push_back(v);
        }
    }
    return ax;
  }
  if (from_zero) {
    mn = std::min(mn, 0.0);
    mx = std::max(mx, 0.0);
  }
  if (mx - mn < 1e-12 * std::max(1.0, std::fabs(mx))) {
    const double w = std::max(1.0, std::fabs(mx) * 0.1);
    mn -= w;
    mx += w;
  }
  const double step = nice_step((mx - mn) / 5);
  ax.lo = std::floor(mn / step + 1e-9) * step;
  ax.hi = std::ceil(mx / step - 1e-9) * step;
  for (double v = ax.lo; v <= ax.hi + step * 1e-6; v += step) ax.ticks.push_back(std::fabs(v) < step * 1e-9 ? 0 : v);
  return ax;
}

// The XML declaration, the <svg> element, a white background and the title (centred at title_x).
std::string svg_open(int width, int height, const std::string& title, double title_x) {
  const std::string w = std::to_string(width), h = std::to_string(height);
  std::string s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
                  w + "\" height=\"" + h + "\" viewBox=\"0 0 " + w + " " + h +
                  "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  if (!title.empty())
    s += "<text x=\"" + num(title_x) + "\" y=\"26\" text-anchor=\"middle\" font-size=\"15\">" + escape(title) +
         "</text>\n";
  return s;
}

// A vertical grid line and a label below the plot for each tick of `ax` (px: value -> x pixel).
template <class Px>
std::string vertical_grid(const Axis& ax, Px px, double top, double ph) {
  std::string s;
  for (double v : ax.ticks) {
    const double x = px(v);
    s += "<line x1=\"" + num(x) + "\" y1=\"" + num(top) + "\" x2=\"" + num(x) + "\" y2=\"" + num(top + ph) +
         "\" stroke=\"#e0e0e0\"/>\n";
    s += "<text x=\"" + num(x) + "\" y=\"" + num(top + ph + 16) + "\" text-anchor=\"middle\">" + tick_label(v) +
         "</text>\n";
  }
  return s;
}

}  // namespace

std::string svg_line_chart(const std::vector<PlotSeries>& series, const PlotOptions& o) {
  MF_CHECK(o.width >= 200 && o.height >= 150, "[svg_plot] size must be at least 200x150, got ", o.width, "x",
           o.height);
  double xmn = std::numeric_limits<double>::infinity(), xmx = -xmn, ymn = xmn, ymx = -xmn;
  for (const auto& s : series) {
    MF_CHECK(s.x.size() == s.y.size(), "[svg_plot] series '", s.name, "' has ", s.x.size(), " x values but ",
             s.y.size(), " y values");
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      MF_CHECK(!o.log_x || s.x[i] > 0, "[svg_plot] series '", s.name, "' point ", i, " has x = ", s.x[i],
               " on a log x axis");
      MF_CHECK(!o.log_y || s.y[i] > 0, "[svg_plot] series '", s.name, "' point ", i, " has y = ", s.y[i],
               " on a log y axis");
      xmn = std::min(xmn, s.x[i]);
      xmx = std::max(xmx, s.x[i]);
      ymn = std::min(ymn, s.y[i]);
      ymx = std::max(ymx, s.y[i]);
    }
  }
  Axis ax = make_axis(xmn, xmx, o.log_x, false);
  if (!o.x_ticks.empty()) {
    ax.ticks.clear();
    for (double v : o.x_ticks) {
      MF_CHECK(std::isfinite(v) && (!o.log_x || v > 0), "[svg_plot] x tick ", v, " is not valid on this axis");
      if (v >= ax.lo && v <= ax.hi) ax.ticks.push_back(v);  // ticks outside the data range are dropped
    }
  }
  const Axis ay = make_axis(ymn, ymx, o.log_y, o.y_from_zero);

  std::size_t longest = 0;
  for (const auto& s : series) longest = std::max(longest, s.name.size());
  const double legend_w = series.empty() ? 0 : 40 + 7.0 * static_cast<double>(longest);
  const double left = 72, right = 20 + legend_w, top = o.title.empty() ? 20 : 44, bottom = 56;
  const double pw = o.width - left - right, ph = o.height - top - bottom;
  MF_CHECK(pw > 50 && ph > 50, "[svg_plot] series names too long for a ", o.width, "px wide chart");
  auto px = [&](double x) { return left + ax.frac(x) * pw; };
  auto py = [&](double y) { return top + (1 - ay.frac(y)) * ph; };

  std::string s;
  s += svg_open(o.width, o.height, o.title, left + pw / 2);
  // Grid and tick labels.
  s += vertical_grid(ax, px, top, ph);
  for (double v : ay.ticks) {
    const double y = py(v);
    s += "<line x1=\"" + num(left) + "\" y1=\"" + num(y) + "\" x2=\"" + num(left + pw) + "\" y2=\"" + num(y) +
         "\" stroke=\"#e0e0e0\"/>\n";
    s += "<text x=\"" + num(left - 6) + "\" y=\"" + num(y + 4) + "\" text-anchor=\"end\">" + tick_label(v) +
         "</text>\n";
  }
  s += "<rect x=\"" + num(left) + "\" y=\"" + num(top) + "\" width=\"" + num(pw) + "\" height=\"" + num(ph) +
       "\" fill=\"none\" stroke=\"black\"/>\n";
  if (!o.x_label.empty())
    s += "<text x=\"" + num(left + pw / 2) + "\" y=\"" + num(o.height - 14) + "\" text-anchor=\"middle\">" +
         escape(o.x_label + (o.log_x ? " (log)" : "")) + "</text>\n";
  if (!o.y_label.empty())
    s += "<text transform=\"translate(16," + num(top + ph / 2) + ") rotate(-90)\" text-anchor=\"middle\">" +
         escape(o.y_label + (o.log_y ? " (log)" : "")) + "</text>\n";
  // Series.
  for (std::size_t si = 0; si < series.size(); ++si) {
    const auto& sr = series[si];
    const std::string color = kColors[si % (sizeof kColors / sizeof kColors[0])];
    std::string d, marks;
    bool pen_down = false;
    std::size_t finite = 0;
    for (std::size_t i = 0; i < sr.x.size(); ++i) {
      if (!std::isfinite(sr.x[i]) || !std::isfinite(sr.y[i])) {
        pen_down = false;
        continue;
      }
      ++finite;
      const double x = px(sr.x[i]), y = py(sr.y[i]);
      d += (pen_down ? " L" : (d.empty() ? "M" : " M")) + num(x) + " " + num(y);
      pen_down = true;
      marks += "<circle cx=\"" + num(x) + "\" cy=\"" + num(y) + "\" r=\"2.5\" fill=\"" + color + "\"/>";
    }
    s += "<g>\n<title>" + escape(sr.name) + "</title>\n";
    if (!d.empty()) s += "<path d=\"" + d + "\" fill=\"none\" stroke=\"" + color + "\" stroke-width=\"1.8\"/>\n";
    if (finite <= 60) s += marks + "\n";
    s += "</g>\n";
    const double ly = top + 10 + 18.0 * static_cast<double>(si), lx = left + pw + 14;
    s += "<line x1=\"" + num(lx) + "\" y1=\"" + num(ly) + "\" x2=\"" + num(lx + 20) + "\" y2=\"" + num(ly) +
         "\" stroke=\"" + color + "\" stroke-width=\"2.5\"/>\n";
    s += "<text x=\"" + num(lx + 26) + "\" y=\"" + num(ly + 4) + "\">" + escape(sr.name) + "</text>\n";
  }
  s += "</svg>\n";
  return s;
}

void write_svg_line_chart(const std::string& path, const std::vector<PlotSeries>& series, const PlotOptions& options) {
  write_file_atomic(path, svg_line_chart(series, options));
}

std::string svg_bar_chart(const std::vector<Bar>& bars, const BarChartOptions& o) {
  MF_CHECK(o.width >= 300, "[svg_plot] a bar chart must be at least 300 px wide, got ", o.width);
  double mx = 0;
  std::size_t longest = 0, longest_note = 0;
  for (const Bar& b : bars) {
    MF_CHECK(std::isfinite(b.value) && b.value >= 0, "[svg_plot] bar '", b.label, "' has value ", b.value,
             " (must be finite and >= 0)");
    mx = std::max(mx, b.value);
    longest = std::max(longest, b.label.size());
    longest_note = std::max(longest_note, b.note.size());
  }
  const Axis ax = make_axis(0, mx, false, true);
  const double row_h = 22, left = 16 + 7.0 * static_cast<double>(longest), right = 16 + 7.0 * static_cast<double>(longest_note);
  const double top = o.title.empty() ? 16 : 40, bottom = o.value_label.empty() ? 30 : 50;
  const double pw = o.width - left - right;
  MF_CHECK(pw > 100, "[svg_plot] bar labels too long for a ", o.width, "px wide chart");
  const double ph = row_h * static_cast<double>(std::max<std::size_t>(1, bars.size()));
  const int height = static_cast<int>(top + ph + bottom);
  auto px = [&](double v) { return left + ax.frac(v) * pw; };

  std::string s;
  s += svg_open(o.width, height, o.title, o.width / 2.0);
  s += vertical_grid(ax, px, top, ph);
  for (std::size_t i = 0; i < bars.size(); ++i) {
    const Bar& b = bars[i];
    const double y = top + row_h * static_cast<double>(i), x1 = px(b.value);
    const std::string color = kColors[i % (sizeof kColors / sizeof kColors[0])];
    s += "<g>\n<title>" + escape(b.label) + "</title>\n";
    s += "<text x=\"" + num(left - 6) + "\" y=\"" + num(y + row_h / 2 + 4) + "\" text-anchor=\"end\">" +
         escape(b.label) + "</text>\n";
    s += "<rect x=\"" + num(left) + "\" y=\"" + num(y + 3) + "\" width=\"" + num(x1 - left) + "\" height=\"" +
         num(row_h - 6) + "\" fill=\"" + color + "\"/>\n";
    if (!b.note.empty())
      s += "<text x=\"" + num(x1 + 4) + "\" y=\"" + num(y + row_h / 2 + 4) + "\">" + escape(b.note) + "</text>\n";
    s += "</g>\n";
  }
  s += "<line x1=\"" + num(left) + "\" y1=\"" + num(top) + "\" x2=\"" + num(left) + "\" y2=\"" + num(top + ph) +
       "\" stroke=\"black\"/>\n";
  if (!o.value_label.empty())
    s += "<text x=\"" + num(left + pw / 2) + "\" y=\"" + num(height - 14) + "\" text-anchor=\"middle\">" +
         escape(o.value_label) + "</text>\n";
  s += "</svg>\n";
  return s;
}

void write_svg_bar_chart(const std::string& path, const std::vector<Bar>& bars, const BarChartOptions& options) {
  write_file_atomic(path, svg_bar_chart(bars, options));
}

}  // namespace mf
