// SVG line chart: well-formed output with every series, escaping, log axes,
// explicit ticks, and errors that name the series and point.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "../support/errors.h"
#include "core/io_faults.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/svg_plot.h"

using namespace mf;

namespace {
int count(const std::string& s, const std::string& needle) {
  int n = 0;
  for (std::size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) ++n;
  return n;
}
// A minimal well-formedness check: every opened element is closed in order.
bool balanced(const std::string& s) {
  std::vector<std::string> stack;
  for (std::size_t p = s.find('<'); p != std::string::npos; p = s.find('<', p + 1)) {
    if (s.compare(p, 2, "<?") == 0) continue;
    const std::size_t end = s.find('>', p);
    if (end == std::string::npos) return false;
    const std::string tag = s.substr(p + 1, end - p - 1);
    if (tag.empty()) return false;
    if (tag[0] == '/') {
      if (stack.empty() || stack.back() != tag.substr(1)) return false;
      stack.pop_back();
    } else if (tag.back() != '/') {
      stack.push_back(tag.substr(0, tag.find(' ')));
    }
  }
  return stack.empty();
}
}  // namespace

TEST(SvgPlot, WellFormedWithSeriesLegendAndTicks) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<PlotSeries> series{{"flash <fwd> & bwd", {256, 512, 1024, 2048}, {1.5, 3.1, 6.0, 12.5}},
                                 {"dense", {256, 512, 1024, 2048}, {2.0, nan, 30.0, 130.0}},
                                 {"empty", {}, {}}};
  PlotOptions o;
  o.title = "time vs L";
  o.x_label = "L";
  o.y_label = "ms";
  o.log_x = o.log_y = true;
  o.x_ticks = {256, 512, 1024, 2048};
  const std::string svg = svg_line_chart(series, o);
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_TRUE(balanced(svg)) << svg;
  EXPECT_NE(svg.find("flash &lt;fwd&gt; &amp; bwd"), std::string::npos);  // escaped name in the legend
  EXPECT_NE(svg.find(">dense<"), std::string::npos);
  EXPECT_NE(svg.find(">empty<"), std::string::npos);
  EXPECT_NE(svg.find(">time vs L<"), std::string::npos);
  EXPECT_NE(svg.find(">L (log)<"), std::string::npos);
  for (const char* t : {">256<", ">512<", ">1024<", ">2048<"}) EXPECT_NE(svg.find(t), std::string::npos) << t;
  EXPECT_EQ(count(svg, "<path "), 2);  // the empty series draws no line
  // The NaN point breaks the dense line into two pieces: "M ... M ...".
  const std::size_t p = svg.find("<path", svg.find("<title>dense</title>"));
  const std::string d = svg.substr(p, svg.find("/>", p) - p);
  EXPECT_EQ(count(d, "M"), 2) << d;
  EXPECT_EQ(count(svg, "<circle"), 4 + 3);
}

TEST(SvgPlot, LinearAxisTicksAreNiceAndCoverTheData) {
  PlotOptions o;
  o.y_from_zero = true;
  const std::string svg = svg_line_chart({{"loss", {0, 1, 2, 3}, {2.31, 2.0, 1.7, 1.62}}}, o);
  EXPECT_TRUE(balanced(svg));
  for (const char* t : {">0<", ">0.5<", ">1<", ">1.5<", ">2<", ">2.5<"}) EXPECT_NE(svg.find(t), std::string::npos) << t;
  // A single point and all-NaN data still give a chart.
  EXPECT_TRUE(balanced(svg_line_chart({{"one", {5}, {5}}}, o)));
  EXPECT_TRUE(balanced(svg_line_chart({}, o)));
}

TEST(SvgPlot, ErrorsNameSeriesAndPoint) {
  PlotOptions o;
  o.log_y = true;
  try {
    svg_line_chart({{"ok", {1}, {1}}, {"bad", {1, 2, 3}, {1, 0, 2}}}, o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[svg_plot] series 'bad' point 1 has y = 0 on a log y axis"),
              std::string::npos)
        << e.what();
  }
  try {
    svg_line_chart({{"short", {1, 2}, {1}}}, PlotOptions{});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("series 'short' has 2 x values but 1 y values"), std::string::npos);
  }
}

TEST(SvgPlot, WritesFileAtomically) {
  const std::string path = ::testing::TempDir() + "mf_plot_test.svg";
  write_svg_line_chart(path, {{"a", {1, 2}, {3, 4}}}, PlotOptions{});
  const std::string back = read_file(path);
  EXPECT_NE(back.find("</svg>"), std::string::npos);
  // A failure while writing the next version leaves this one.
  inject_io_fault(IoStep::Write);
  EXPECT_ERROR("[write] error while writing", write_svg_line_chart(path, {{"b", {1, 2, 3}, {5, 6, 7}}}, PlotOptions{}));
  clear_io_faults();
  EXPECT_EQ(read_file(path), back);
  std::remove(path.c_str());
}
