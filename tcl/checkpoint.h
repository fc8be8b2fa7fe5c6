// Files written by the package: complete or not at all.
#pragma once

#include <functional>
#include <string>

namespace tcltorch::tcl {

// Calls write(tmp) for a temporary file beside `path`, then renames it over
// `path`; a failure leaves `path` as it was and removes the temporary.
void write_atomically(const std::string& path,
                      const std::function<void(const std::string& tmp)>& write);

}  // namespace tcltorch::tcl
