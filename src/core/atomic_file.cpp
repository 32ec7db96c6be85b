#include "core/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/io_faults.h"

namespace mf {

void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  try {
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      MF_CHECK(out.good(), "[write] cannot open '", tmp, "' for writing: ", std::strerror(errno));
      write(out);
      out.flush();
      if (take_io_fault(IoStep::Write)) out.setstate(std::ios::badbit);
      MF_CHECK(out.good(), "[write] error while writing '", tmp, "'");
    }
    {  // on disk before it replaces the previous version
      const int fd = ::open(tmp.c_str(), O_RDONLY);
      MF_CHECK(fd >= 0, "[write] cannot open '", tmp, "' to flush it: ", std::strerror(errno));
      const int rc = take_io_fault(IoStep::Flush) ? -1 : ::fsync(fd);
      const int err = errno;
      ::close(fd);
      MF_CHECK(rc == 0, "[write] cannot flush '", tmp, "': ", std::strerror(err));
    }
    MF_CHECK(!take_io_fault(IoStep::Rename) && std::rename(tmp.c_str(), path.c_str()) == 0, "[write] cannot rename '",
             tmp, "' to '", path, "': ", std::strerror(errno));
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  write_file_atomic(path, [&](std::ostream& out) { out.write(contents.data(), static_cast<std::streamsize>(contents.size())); });
}

std::string read_file(const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  MF_CHECK(!std::filesystem::is_directory(st), "[read] cannot read '", path, "': it is a directory");
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  MF_CHECK(in.good(), "[read] cannot open '", path, "': ", std::strerror(errno));
  // One allocation and one read for regular files; other files (pipes)
  // fall back to buffered copying.
  const std::streamoff size = std::filesystem::is_regular_file(st) ? std::streamoff(in.tellg()) : -1;
  if (size >= 0 && in.seekg(0).good()) {
    std::string bytes(static_cast<std::size_t>(size), '\0');
    in.read(bytes.data(), size);
    MF_CHECK(in.gcount() == size, "[read] error while reading '", path, "' (read ", in.gcount(), " of ", size,
             " bytes)");
    return bytes;
  }
  in.clear();
  std::ostringstream ss;
  ss << in.rdbuf();
  MF_CHECK(!in.bad(), "[read] error while reading '", path, "'");
  return ss.str();
}

}  // namespace mf
