// Subcommand registry: each src/cli/cmd_<name>.cpp defines one subcommand and
// registers it with MF_REGISTER_COMMAND, so adding a command touches one file.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace mf::cli {

struct Command {
  std::string name;
  std::string summary;  // one line for `modformer --help`
  // Adds options to `sub` and returns the action run after parsing.
  std::function<std::function<int()>(CLI::App& sub)> setup;
};

std::vector<Command>& command_registry();

struct CommandRegistrar {
  explicit CommandRegistrar(Command c) { command_registry().push_back(std::move(c)); }
};

}  // namespace mf::cli

#define MF_CLI_CONCAT2(a, b) a##b
#define MF_CLI_CONCAT(a, b) MF_CLI_CONCAT2(a, b)
#define MF_REGISTER_COMMAND(name, summary, setup) \
  static ::mf::cli::CommandRegistrar MF_CLI_CONCAT(mf_cmd_, __LINE__){::mf::cli::Command{name, summary, setup}}
