// Build and machine facts shared by `modformer info` and `modformer demo`.
#pragma once
#include <ostream>

namespace mf::cli {
void print_build_info(std::ostream& os);
}  // namespace mf::cli
