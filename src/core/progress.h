// A terminal progress bar for long jobs (training, benchmarks), drawn on
// stderr: label, done/total, percent, rate, elapsed, ETA and free text such
// as "loss 2.31". On a TTY it redraws one line in place (at most ~10x/s);
// otherwise (logs, CI) it prints a plain line every ~10% or 15 s.
#pragma once
#include <cstdint>
#include <functional>
#include <mutex>
#include <ostream>
#include <string>

namespace mf {

class ProgressBar {
 public:
  struct Options {
    std::string unit = "it";       // rate shown as "<x> <unit>/s"
    std::int64_t initial = 0;      // count already done (resumed runs); not counted in the rate
    std::ostream* out = nullptr;   // default: std::cerr
    int tty = -1;                  // -1: detect (isatty on stderr when out is std::cerr, else 0); 0/1: force
    double tty_interval_s = 0.1;   // TTY: minimum time between redraws
    double plain_interval_s = 15;  // non-TTY: a line at least this often...
    double plain_step_percent = 10;  // ...and whenever the percent passes a multiple of this
    int bar_width = 24;            // TTY only
    std::function<double()> clock;  // seconds; default steady_clock (tests inject one)
  };

  // total <= 0: unknown (no percent, no ETA).
  ProgressBar(std::string label, std::int64_t total, Options options);
  ProgressBar(std::string label, std::int64_t total) : ProgressBar(std::move(label), total, Options{}) {}
  ~ProgressBar();  // finish() if not yet finished
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void update(std::int64_t done, const std::string& extra = {});  // absolute count
  void advance(std::int64_t n = 1, const std::string& extra = {});
  void set_extra(const std::string& extra);  // shown from the next draw on
  // Prints the final line (always, once) followed by a newline.
  void finish(const std::string& extra = {});

  // The status text without bar or carriage return, e.g.
  // "gemm 30/120 25.0% 4.1 shape/s 0:07 eta 0:22 | 512x512x512".
  std::string status_line() const;

 private:
  double now() const;
  std::string status_line_locked() const;
  void draw_locked(bool final);

  std::string label_;
  std::int64_t total_;
  Options opt_;
  bool tty_ = false;
  mutable std::mutex mu_;
  std::int64_t done_ = 0;
  std::string extra_;
  double start_ = 0, last_draw_ = -1e30;
  double last_plain_percent_ = 0;
  std::int64_t last_plain_done_ = -1;
  std::string last_plain_extra_;
  bool finished_ = false;
};

// "0:07", "12:34", "1:02:03"
std::string format_duration(double seconds);
// Rates: "950", "12.3k", "4.56M", "1.20G", "2.50"; three significant digits.
std::string format_count(double value);

}  // namespace mf
