#include "errors.h"

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

}  // namespace tcltorch::tcl
