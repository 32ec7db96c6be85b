// modformer: the command-line front end. Subcommands live in cmd_*.cpp.
#include <algorithm>
#include <iostream>

#include "cli/command.h"
#include "core/error.h"
#include "core/threads.h"

namespace mf::cli {
std::vector<Command>& command_registry() {
  static std::vector<Command> commands;
  return commands;
}
}  // namespace mf::cli

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
    return app.exit(e);
  }
  try {
    mf::init_threads_from_env();
    if (threads > 0) mf::set_num_threads(threads);
    return action ? action() : 0;
  } catch (const mf::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
