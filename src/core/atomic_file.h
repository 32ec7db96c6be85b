// Write-then-rename: a file is written to "<path>.tmp.<pid>", flushed to disk
// (fsync), and renamed over <path>, so readers never see a half-written file
// and a crash leaves the previous version intact.
#pragma once
#include <functional>
#include <ostream>
#include <string>

namespace mf {

// Calls write(stream); on success renames the temporary over `path`; on any
// failure removes the temporary and throws mf::Error naming the path.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write);
void write_file_atomic(const std::string& path, const std::string& contents);

// Reads a whole file; throws mf::Error naming the path when it cannot.
std::string read_file(const std::string& path);

}  // namespace mf
