#include "core/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace mf {

void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  try {
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      MF_CHECK(out.good(), "[write] cannot open '", tmp, "' for writing: ", std::strerror(errno));
      write(out);
      out.flush();
      MF_CHECK(out.good(), "[write] error while writing '", tmp, "'");
    }
    MF_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "[write] cannot rename '", tmp, "' to '", path,
             "': ", std::strerror(errno));
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  write_file_atomic(path, [&](std::ostream& out) { out.write(contents.data(), static_cast<std::streamsize>(contents.size())); });
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MF_CHECK(in.good(), "[read] cannot open '", path, "': ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  MF_CHECK(!in.bad(), "[read] error while reading '", path, "'");
  return ss.str();
}

}  // namespace mf
