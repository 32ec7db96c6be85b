// modformer: the command-line front end. Subcommands live in cmd_*.cpp.
#include <algorithm>
#include <iostream>

#include "cli/command.h"
#include "core/error.h"
#include "core/isa.h"
#include "core/threads.h"

namespace mf::cli {
std::vector<Command>& command_registry() {
  static std::vector<Command> commands;
  return commands;
}
}  // namespace mf::cli

namespace {

// CLI11 reports an unknown subcommand ("modformer frobnicate", "modformer bench
// nosuch") as "A subcommand is required"; this names the word it did not know
// and the subcommands that exist at that level instead. Returns false (nothing
// printed) for every other parse error.
bool report_unknown_subcommand(CLI::App& app, const CLI::ParseError& error) {
  if (dynamic_cast<const CLI::RequiredError*>(&error) == nullptr) return false;
  CLI::App* level = &app;
  while (!level->get_subcommands().empty()) level = level->get_subcommands().front();
  const std::vector<std::string> unknown = level->remaining();
  if (unknown.empty()) return false;
  std::string known;
  for (const CLI::App* sub : level->get_subcommands({})) known += (known.empty() ? "" : ", ") + sub->get_name();
  std::cerr << "error: unknown subcommand '" << unknown.front() << "'" << (level == &app ? "" : " of '")
            << (level == &app ? "" : level->get_name() + "'") << "; known: " << known << "\n"
            << "Run with --help for more information.\n";
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"modformer: modern transformer components, trained and measured (C++20)"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "Worker threads (default: MODFORMER_THREADS, else all cores)")
      ->check(CLI::Range(1, 1024));
  app.set_version_flag("--version", std::string("modformer ") + MODFORMER_VERSION);

  auto& commands = mf::cli::command_registry();
  std::sort(commands.begin(), commands.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  std::function<int()> action;
  for (auto& c : commands) {
    CLI::App* sub = app.add_subcommand(c.name, c.summary);
    auto act = c.setup(*sub);
    sub->callback([&action, act] { action = act; });
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (report_unknown_subcommand(app, e)) return e.get_exit_code();
    return app.exit(e);
  }
  try {
    // --threads wins over MODFORMER_THREADS, which is then not read at all.
    if (threads > 0)
      mf::set_num_threads(threads);
    else
      mf::init_threads_from_env();
    mf::active_isa();  // a bad MODFORMER_ISA stops here, named, before any work
    return action ? action() : 0;
  } catch (const mf::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
