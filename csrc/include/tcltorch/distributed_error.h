// The one exception type of tcltorch::distributed, kept in a header of its
// own (no LibTorch) so that front doors can translate it cheaply.
#pragma once

#include <stdexcept>
#include <string>

#include "tcltorch/export.h"

namespace tcltorch::distributed {

// A failed collective, rendezvous or misuse of a process group. `code` says
// which, for front doors to report (Tcl: -errorcode {TORCH DISTRIBUTED code}):
//   STATE    no process group, a second one, or one already destroyed
//   VALUE    a bad rank, world size, port, source rank, tensor or option
//   INIT     the rendezvous failed (unreachable store, a peer never arrived)
//   TIMEOUT  a collective did not complete within the group's timeout
//   PEER     a peer closed its connection (it exited or crashed)
//   COLLECTIVE  any other failure of a collective
class TCLTORCH_API Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& message)
      : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const noexcept { return code_; }

 private:
  std::string code_;
};

}  // namespace tcltorch::distributed
