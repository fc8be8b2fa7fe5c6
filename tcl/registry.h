// Per-interpreter handle registry: every tensor, module and optimizer a Tcl
// script can name lives here under a handle such as "tensor7", "module3" or
// "optimizer2". The registry is the interpreter's associated data, so it is
// freed, with everything it holds, when the interpreter is deleted.
#pragma once

#include "tcl_compat.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace tcltorch::tcl {

struct ModuleEntry;     // objects.h
struct OptimizerEntry;  // objects.h

enum class Kind { Tensor, Module, Optimizer };
const char* kind_name(Kind kind);
// "a tensor", "a module", "an optimizer".
std::string a_kind(Kind kind);
// "a" or "an" before a word.
std::string with_article(const std::string& word);

class Registry {
 public:
  std::string add(at::Tensor tensor);
  std::string add(std::shared_ptr<ModuleEntry> module);
  std::string add(std::shared_ptr<OptimizerEntry> optimizer);

  // Look a handle up. On failure (no such handle, or one of another kind)
  // leave a message naming the handle and -errorcode {TORCH HANDLE name} in
  // the interpreter and return false.
  bool get(Tcl_Interp* interp, Tcl_Obj* handle, at::Tensor& out) const;
  bool get(Tcl_Interp* interp, Tcl_Obj* handle,
           std::shared_ptr<ModuleEntry>& out) const;
  bool get(Tcl_Interp* interp, Tcl_Obj* handle,
           std::shared_ptr<OptimizerEntry>& out) const;

  // The kind of a live handle, or nullptr.
  const Kind* kind_of(const std::string& handle) const;
  bool remove(const std::string& handle);
  // Live handles matching a `string match` pattern, in creation order.
  std::vector<std::string> handles(const char* pattern) const;
  std::size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    Kind kind;
    std::uint64_t serial;
    at::Tensor tensor;
    std::shared_ptr<ModuleEntry> module;
    std::shared_ptr<OptimizerEntry> optimizer;
  };
  std::string insert(Entry entry);
  const Entry* find(Tcl_Interp* interp, Tcl_Obj* handle, Kind want) const;

  std::unordered_map<std::string, Entry> entries_;
  std::unordered_map<const void*, std::string> tensor_names_;
  std::uint64_t next_serial_ = 1;
  std::uint64_t next_number_[3] = {1, 1, 1};
};

// The registry of an interpreter, created on first use.
Registry& registry_of(Tcl_Interp* interp);
// The registry if the package was loaded into this interpreter, else nullptr.
Registry* find_registry(Tcl_Interp* interp);

}  // namespace tcltorch::tcl
