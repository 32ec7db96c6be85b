// Runs the `modformer` program built alongside the tests (MODFORMER_CLI_PATH)
// in a shell, with stdout captured and stderr kept in a file of `dir`.
#pragma once
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace mf::testing {

struct CliResult {
  int rc = -1;  // exit status; -1 when the program did not exit normally
  std::string out, err;
};

// `prefix` goes before the program (environment assignments, `cd DIR &&`).
inline CliResult run_cli(const std::string& args, const std::filesystem::path& dir, const std::string& prefix = "") {
  const std::filesystem::path err_path = dir / "stderr.txt";
  const std::string cmd = prefix + " " + std::string(MODFORMER_CLI_PATH) + " " + args + " 2>" + err_path.string();
  CliResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream f(err_path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  r.err = ss.str();
  return r;
}

}  // namespace mf::testing
