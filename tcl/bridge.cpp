#include "bridge.h"

#include <tcl.h>

#include <stdexcept>

#include "registry.h"

namespace tcltorch::tcl {
namespace {

Registry& loaded_registry(Tcl_Interp* interp) {
  Registry* registry = stubs_ready() ? find_registry(interp) : nullptr;
  if (!registry) {
    throw std::invalid_argument(
        "the torch package is not loaded in this Tcl interpreter "
        "(run `package require torch` first)");
  }
  return *registry;
}

}  // namespace

at::Tensor bridge_get_tensor(Tcl_Interp* interp, const std::string& handle) {
  Registry& registry = loaded_registry(interp);
  Tcl_Obj* name = Tcl_NewStringObj(handle.data(), static_cast<int>(handle.size()));
  Tcl_IncrRefCount(name);
  at::Tensor out;
  const bool found = registry.get(interp, name, out);
  Tcl_DecrRefCount(name);
  if (!found) {
    std::string message = Tcl_GetStringResult(interp);
    Tcl_ResetResult(interp);
    throw std::invalid_argument(message);
  }
  return out;
}

std::string bridge_add_tensor(Tcl_Interp* interp, const at::Tensor& tensor) {
  if (!tensor.defined()) throw std::invalid_argument("undefined tensor");
  return loaded_registry(interp).add(tensor);
}

}  // namespace tcltorch::tcl
