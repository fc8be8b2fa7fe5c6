#include "errors.h"

#include <string_view>
#include <vector>

namespace tcltorch::tcl {

int fail(Tcl_Interp* interp, const std::string& message,
         std::initializer_list<std::string> code) {
  Tcl_SetObjResult(interp, Tcl_NewStringObj(message.data(),
                                            static_cast<int>(message.size())));
  std::vector<Tcl_Obj*> words;
  words.reserve(code.size());
  for (const auto& w : code) {
    words.push_back(Tcl_NewStringObj(w.data(), static_cast<int>(w.size())));
  }
  Tcl_SetObjErrorCode(interp, Tcl_NewListObj(static_cast<int>(words.size()),
                                             words.data()));
  return TCL_ERROR;
}

int bad_value(Tcl_Interp* interp, const std::string& option, Tcl_Obj* value,
              const std::string& requirement) {
  const char* text = Tcl_GetString(value);
  return fail(interp,
              std::string("bad value \"") + text + "\" for -" + option + ": " +
                  requirement,
              {"TORCH", "VALUE", "-" + option, text});
}

bool is_allocation_failure(const c10::Error& e) noexcept {
  const std::string_view message = e.what_without_backtrace();
  for (const char* sign : {"can't allocate memory", "not enough memory",
                           "Could not allocate memory", "out of memory"}) {
    if (message.find(sign) != std::string_view::npos) return true;
  }
  return false;
}

void warn(const std::string& message) {
  Tcl_Channel err = Tcl_GetStdChannel(TCL_STDERR);
  if (!err) return;
  const std::string line = "warning: " + message + "\n";
  Tcl_WriteChars(err, line.data(), static_cast<int>(line.size()));
  Tcl_Flush(err);
}

}  // namespace tcltorch::tcl
