// Progress bar: plain-line mode (not a TTY) prints at percent steps and always
// a final line; TTY mode redraws in place; rate and ETA from an injected clock.
#include <gtest/gtest.h>

#include <sstream>
#include <string>

#include "core/progress.h"

using namespace mf;

namespace {
int lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}
}  // namespace

TEST(Progress, PlainLinesAtStepsAndAFinalLine) {
  std::ostringstream out;
  double now = 0;
  ProgressBar::Options o;
  o.out = &out;
  o.tty = 0;
  o.unit = "tok";
  o.clock = [&] { return now; };
  {
    ProgressBar bar("train", 1000, o);
    for (int i = 1; i <= 1000; ++i) {
      now += 0.01;  // 100 tok/s
      bar.update(i, i % 100 == 0 ? "loss 2.31" : "");
    }
    EXPECT_NE(bar.status_line().find("train 1000/1000 100.0%"), std::string::npos) << bar.status_line();
    bar.finish();
    bar.finish();  // idempotent
  }
  const std::string s = out.str();
  EXPECT_EQ(lines(s), 10) << s;  // one per 10%; the final line is not repeated
  EXPECT_EQ(s.find('\r'), std::string::npos);
  EXPECT_NE(s.find("train 100/1000 10.0% 100 tok/s 0:01 eta 0:09 | loss 2.31\n"), std::string::npos) << s;
  EXPECT_NE(s.find("train 1000/1000 100.0% 100 tok/s 0:10 | loss 2.31\n"), std::string::npos) << s;
}

TEST(Progress, FinalLineWhenStoppedEarlyAndUnknownTotal) {
  std::ostringstream out;
  double now = 0;
  ProgressBar::Options o;
  o.out = &out;
  o.tty = 0;
  o.clock = [&] { return now; };
  {
    ProgressBar bar("scan", 0, o);  // unknown total: time-based lines only
    for (int i = 0; i < 50; ++i) {
      now += 1.0;
      bar.advance();
    }
  }  // the destructor prints the final line
  const std::string s = out.str();
  EXPECT_EQ(lines(s), 4) << s;  // at 15 s, 30 s, 45 s, and the final one
  EXPECT_NE(s.find("scan 50 1.00 it/s 0:50\n"), std::string::npos) << s;
}

TEST(Progress, TtyRedrawsInPlaceAtMostTenTimesASecond) {
  std::ostringstream out;
  double now = 0;
  ProgressBar::Options o;
  o.out = &out;
  o.tty = 1;
  o.bar_width = 10;
  o.clock = [&] { return now; };
  ProgressBar bar("bench", 200, o);
  for (int i = 1; i <= 200; ++i) {
    now += 0.01;
    bar.update(i);
  }
  bar.finish("done");
  const std::string s = out.str();
  int redraws = 0;
  for (char c : s) redraws += c == '\r';
  EXPECT_GE(redraws, 18);
  EXPECT_LE(redraws, 22);  // 2 s at <= 10 per second, plus the final draw
  EXPECT_EQ(lines(s), 1);
  EXPECT_NE(s.find("\r[##########] bench 200/200 100.0% 100 it/s 0:02 | done\x1b[K\n"), std::string::npos) << s;
}

TEST(Progress, Formatting) {
  EXPECT_EQ(format_duration(7.4), "0:07");
  EXPECT_EQ(format_duration(754), "12:34");
  EXPECT_EQ(format_duration(3723), "1:02:03");
  EXPECT_EQ(format_count(950), "950");
  EXPECT_EQ(format_count(100), "100");
  EXPECT_EQ(format_count(12345), "12.3k");
  EXPECT_EQ(format_count(4.561e6), "4.56M");
  EXPECT_EQ(format_count(2.5), "2.50");
}
