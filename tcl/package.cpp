// Torch_Init: `package require torch` (or `load libtcltorch_tcl.so Torch`).
#include <tcl.h>

#include <atomic>

#include "bridge.h"
#include "commands.h"
#include "errors.h"

namespace tcltorch::tcl {
namespace {

// Set once Tcl's stubs table is known; the Python bridge must not call into
// Tcl before that.
std::atomic<bool> g_stubs_ready{false};

int trampoline(ClientData data, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  const auto* def = static_cast<const CommandDef*>(data);
  return guarded(interp, def->name, [&] {
    Registry* registry = find_registry(interp);
    if (!registry) {
      return fail(interp, "the torch package is not initialised in this interpreter",
                  {"TORCH", "STATE"});
    }
    return def->fn(*registry, interp, objc, objv);
  });
}

void register_all(Tcl_Interp* interp, const std::vector<CommandDef>& table) {
  for (const auto& def : table) {
    Tcl_CreateObjCommand(interp, def.name, trampoline,
                         const_cast<CommandDef*>(&def), nullptr);
  }
}

}  // namespace

bool stubs_ready() { return g_stubs_ready.load(); }

}  // namespace tcltorch::tcl

extern "C" __attribute__((visibility("default"))) int Torch_Init(Tcl_Interp* interp) {
  if (Tcl_InitStubs(interp, "8.6-", 0) == nullptr) return TCL_ERROR;
  using namespace tcltorch::tcl;
  g_stubs_ready.store(true);
  return guarded(interp, "package require torch", [&] {
    registry_of(interp);
    register_all(interp, tensor_commands());
    register_all(interp, module_commands());
    register_all(interp, optimizer_commands());
    register_all(interp, math_commands());
    register_all(interp, nn_commands());
    register_all(interp, training_commands());
    register_all(interp, distributed_commands());
    return Tcl_PkgProvide(interp, "torch", TCLTORCH_VERSION);
  });
}
