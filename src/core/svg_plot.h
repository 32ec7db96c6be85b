// SVG line charts for benchmark and training reports (time vs L, GFLOP/s vs
// size, loss curves): named series of (x, y) points, axis labels, ticks,
// optional log scales, legend; and horizontal bar charts (a time profile:
// one labelled bar per category). Pure string building; written atomically.
#pragma once
#include <string>
#include <vector>

namespace mf {

struct PlotSeries {
  std::string name;
  std::vector<double> x, y;  // same length; non-finite points are skipped (the line breaks there)
};

struct PlotOptions {
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;  // log axes require every finite value > 0
  bool y_from_zero = false;           // linear y axis starts at 0 (e.g. GFLOP/s)
  std::vector<double> x_ticks;        // explicit x ticks (e.g. the sizes measured); empty: automatic
  int width = 800, height = 480;
};

// Throws mf::Error "[svg_plot] ..." naming the series and point for mismatched
// lengths or non-positive values on a log axis.
std::string svg_line_chart(const std::vector<PlotSeries>& series, const PlotOptions& options);
void write_svg_line_chart(const std::string& path, const std::vector<PlotSeries>& series, const PlotOptions& options);

// Horizontal bars from 0, one per entry, top to bottom in the given order;
// `note` (e.g. "12.3%") is printed after the bar.
struct Bar {
  std::string label;
  double value = 0;  // finite, >= 0
  std::string note;
};
struct BarChartOptions {
  std::string title, value_label;
  int width = 800;  // the height follows from the number of bars
};
// Throws mf::Error "[svg_plot] ..." naming the bar for a negative or non-finite value.
std::string svg_bar_chart(const std::vector<Bar>& bars, const BarChartOptions& options);
void write_svg_bar_chart(const std::string& path, const std::vector<Bar>& bars, const BarChartOptions& options);

}  // namespace mf
