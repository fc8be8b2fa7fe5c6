// Turning failures into Tcl errors: a message plus an -errorcode list that
// starts with TORCH (or Tcl's own codes), and a guard so that no C++
// exception ever leaves a command procedure (it would abort the host).
#pragma once

#include "tcl_compat.h"

#include <c10/util/Exception.h>

#include "tcltorch/distributed_error.h"

#include <initializer_list>
#include <new>
#include <string>

namespace tcltorch::tcl {

// Sets the result to `message` and -errorcode to `code`; returns TCL_ERROR.
int fail(Tcl_Interp* interp, const std::string& message,
         std::initializer_list<std::string> code);

// "bad value "x" for -name: <requirement>" with -errorcode
// {TORCH VALUE -name x}: the one wording of every invalid argument.
int bad_value(Tcl_Interp* interp, const std::string& option, Tcl_Obj* value,
              const std::string& requirement);

// Whether LibTorch's error says that memory could not be allocated. The CPU
// allocator throws a plain c10::Error ("DefaultCPUAllocator: can't allocate
// memory: ..."), not c10::OutOfMemoryError.
bool is_allocation_failure(const c10::Error& e) noexcept;

// Writes "warning: <message>" and a newline on Tcl's stderr channel: for
// mistakes that are legal but almost certainly unintended.
void warn(const std::string& message);

// Runs `body` (which returns a Tcl status) with every C++ exception turned
// into a Tcl error prefixed by the command name.
template <typename Body>
int guarded(Tcl_Interp* interp, const char* command, Body&& body) noexcept {
  try {
    try {
      return body();
    } catch (const tcltorch::distributed::Error& e) {
      // A collective inside another command (a backward pass through a data
      // parallel module, a sharded optimizer's step or save).
      return fail(interp, std::string(command) + ": " + e.what(),
                  {"TORCH", "DISTRIBUTED", e.code()});
    } catch (const c10::ValueError& e) {
      return fail(interp, std::string(command) + ": " + e.what_without_backtrace(),
                  {"TORCH", "VALUE"});
    } catch (const c10::OutOfMemoryError& e) {
      return fail(interp, std::string(command) + ": out of memory: " + e.what_without_backtrace(),
                  {"TORCH", "MEMORY"});
    } catch (const c10::Error& e) {
      if (is_allocation_failure(e)) {
        return fail(interp,
                    std::string(command) + ": out of memory: " + e.what_without_backtrace(),
                    {"TORCH", "MEMORY"});
      }
      return fail(interp, std::string(command) + ": " + e.what_without_backtrace(),
                  {"TORCH", "LIBTORCH"});
    } catch (const std::bad_alloc&) {
      return fail(interp, std::string(command) + ": out of memory",
                  {"TORCH", "MEMORY"});
    } catch (const std::exception& e) {
      return fail(interp, std::string(command) + ": " + e.what(),
                  {"TORCH", "ERROR"});
    } catch (...) {
      return fail(interp, std::string(command) + ": unknown C++ exception",
                  {"TORCH", "ERROR"});
    }
  } catch (...) {
    // Building the message itself failed (out of memory): still no escape.
    Tcl_SetObjResult(interp, Tcl_NewStringObj("torch: internal error", -1));
    return TCL_ERROR;
  }
}

}  // namespace tcltorch::tcl
