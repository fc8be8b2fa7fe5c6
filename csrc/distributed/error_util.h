// Turning c10d's and gloo's exceptions into tcltorch::distributed::Error.
#pragma once

#include <string>

#include "tcltorch/distributed_error.h"

namespace tcltorch::distributed::detail {

// TIMEOUT or PEER when the message says so, else `fallback`.
std::string classify(const std::string& message, const std::string& fallback);

// Inside a catch block: rethrows the current exception as Error, its
// message prefixed by `what`.
[[noreturn]] void rethrow(const std::string& what, const std::string& fallback);

}  // namespace tcltorch::distributed::detail
