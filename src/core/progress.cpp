// Progress bar: all drawing decisions in draw_locked (TTY: throttled
// in-place redraw with \r and clear-to-end; otherwise: plain lines at
// percent steps or time intervals).
#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>

namespace mf {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<long long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, (s / 60) % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  }
  return buf;
}

std::string format_count(double v) {
  if (!std::isfinite(v)) return "?";
  const char* suffix[] = {"", "k", "M", "G", "T"};
  int i = 0;
  while (std::fabs(v) >= 999.5 && i < 4) {
    v /= 1000.0;
    ++i;
  }
  char buf[32];
  const double a = std::fabs(v);
  const int decimals = a >= 99.95 ? 0 : a >= 9.995 ? 1 : 2;
  std::snprintf(buf, sizeof buf, "%.*f%s", decimals, v, suffix[i]);
  return buf;
}

ProgressBar::ProgressBar(std::string label, std::int64_t total, Options options)
    : label_(std::move(label)), total_(total), opt_(std::move(options)) {
  if (opt_.out == nullptr) opt_.out = &std::cerr;
  tty_ = opt_.tty >= 0 ? opt_.tty != 0 : (opt_.out == &std::cerr && ::isatty(STDERR_FILENO) == 1);
  done_ = opt_.initial;
  start_ = now();
  if (!tty_) last_draw_ = start_;  // plain lines: the first one comes after an interval or a step
  if (total_ > 0) {
    const double pct = 100.0 * static_cast<double>(done_) / static_cast<double>(total_);
    last_plain_percent_ = std::floor(pct / opt_.plain_step_percent) * opt_.plain_step_percent;
  }
}

ProgressBar::~ProgressBar() {
  try {
    finish();
  } catch (...) {
  }
}

double ProgressBar::now() const {
  if (opt_.clock) return opt_.clock();
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void ProgressBar::update(std::int64_t done, const std::string& extra) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  done_ = done;
  if (!extra.empty()) extra_ = extra;
  draw_locked(false);
}

void ProgressBar::advance(std::int64_t n, const std::string& extra) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  done_ += n;
  if (!extra.empty()) extra_ = extra;
  draw_locked(false);
}

void ProgressBar::set_extra(const std::string& extra) {
  std::lock_guard<std::mutex> lock(mu_);
  extra_ = extra;
}

void ProgressBar::finish(const std::string& extra) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  if (!extra.empty()) extra_ = extra;
  draw_locked(true);
  finished_ = true;
}

std::string ProgressBar::status_line() const {
  std::lock_guard<std::mutex> lock(mu_);
  return status_line_locked();
}

std::string ProgressBar::status_line_locked() const {
  const double elapsed = now() - start_;
  const double rate = elapsed > 0 ? static_cast<double>(done_ - opt_.initial) / elapsed : 0.0;
  std::ostringstream os;
  os << label_ << ' ' << done_;
  if (total_ > 0) {
    char pct[32];
    std::snprintf(pct, sizeof pct, " %.1f%%", 100.0 * static_cast<double>(done_) / static_cast<double>(total_));
    os << '/' << total_ << pct;
  }
  os << ' ' << (elapsed > 0 ? format_count(rate) : "?") << ' ' << opt_.unit << "/s " << format_duration(elapsed);
  if (total_ > 0 && done_ < total_)
    os << " eta " << (rate > 0 ? format_duration(static_cast<double>(total_ - done_) / rate) : "?");
  if (!extra_.empty()) os << " | " << extra_;
  return os.str();
}

void ProgressBar::draw_locked(bool final) {
  const double t = now();
  std::ostream& out = *opt_.out;
  if (tty_) {
    if (!final && t - last_draw_ < opt_.tty_interval_s) return;
    last_draw_ = t;
    out << '\r';
    if (total_ > 0) {
      const double frac = std::clamp(static_cast<double>(done_) / static_cast<double>(total_), 0.0, 1.0);
      const int filled = static_cast<int>(frac * opt_.bar_width + 0.5);
      out << '[' << std::string(static_cast<std::size_t>(filled), '#')
          << std::string(static_cast<std::size_t>(opt_.bar_width - filled), '.') << "] ";
    }
    out << status_line_locked() << "\x1b[K";
    if (final) out << '\n';
    out.flush();
    return;
  }
  bool due = final || t - last_draw_ >= opt_.plain_interval_s;
  if (total_ > 0 && opt_.plain_step_percent > 0) {
    const double pct = 100.0 * static_cast<double>(done_) / static_cast<double>(total_);
    const double step = std::floor(pct / opt_.plain_step_percent) * opt_.plain_step_percent;
    if (step > last_plain_percent_) {
      due = true;
      last_plain_percent_ = step;
    }
  }
  // The final line is not repeated when the last plain line already said the same.
  if (!due || (final && last_plain_done_ == done_ && last_plain_extra_ == extra_)) return;
  last_draw_ = t;
  last_plain_done_ = done_;
  last_plain_extra_ = extra_;
  out << status_line_locked() << '\n';
  out.flush();
}

}  // namespace mf
