#include "registry.h"

#include <algorithm>

#include "errors.h"

namespace tcltorch::tcl {

namespace {
constexpr const char* kAssocKey = "tcltorch::registry";

void delete_registry(ClientData data, Tcl_Interp*) {
  delete static_cast<Registry*>(data);
}
}  // namespace

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::Tensor:
      return "tensor";
    case Kind::Module:
      return "module";
    case Kind::Optimizer:
      return "optimizer";
  }
  return "?";
}

std::string with_article(const std::string& word) {
  const bool vowel = !word.empty() && std::string("aeiouAEIOU").find(word[0]) != std::string::npos;
  return (vowel ? "an " : "a ") + word;
}

std::string a_kind(Kind kind) { return with_article(kind_name(kind)); }

Registry& registry_of(Tcl_Interp* interp) {
  if (auto* r = find_registry(interp)) return *r;
  auto* r = new Registry();
  Tcl_SetAssocData(interp, kAssocKey, delete_registry, r);
  return *r;
}

Registry* find_registry(Tcl_Interp* interp) {
  return static_cast<Registry*>(Tcl_GetAssocData(interp, kAssocKey, nullptr));
}

std::string Registry::insert(Entry entry) {
  const auto k = static_cast<int>(entry.kind);
  std::string name = kind_name(entry.kind) + std::to_string(next_number_[k]++);
  entry.serial = next_serial_++;
  entries_.emplace(name, std::move(entry));
  return name;
}

std::string Registry::add(at::Tensor tensor) {
  // The same tensor keeps one handle while that handle lives, so that
  // repeated `torch::parameters` or `torch::tensor_grad` calls do not pile up
  // handles.
  auto* impl = tensor.unsafeGetTensorImpl();
  auto known = tensor_names_.find(impl);
  if (known != tensor_names_.end()) return known->second;
  std::string name = insert(Entry{Kind::Tensor, 0, std::move(tensor), nullptr, nullptr});
  tensor_names_.emplace(impl, name);
  return name;
}

std::string Registry::add(std::shared_ptr<ModuleEntry> module) {
  return insert(Entry{Kind::Module, 0, {}, std::move(module), nullptr});
}

std::string Registry::add(std::shared_ptr<OptimizerEntry> optimizer) {
  return insert(Entry{Kind::Optimizer, 0, {}, nullptr, std::move(optimizer)});
}

const Registry::Entry* Registry::find(Tcl_Interp* interp, Tcl_Obj* handle,
                                      Kind want) const {
  const std::string name = Tcl_GetString(handle);
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    fail(interp,
         std::string("invalid ") + kind_name(want) + " handle \"" + name +
             "\": no such handle (deleted, or never created in this interpreter)",
         {"TORCH", "HANDLE", name});
    return nullptr;
  }
  if (it->second.kind != want) {
    fail(interp,
         "\"" + name + "\" is " + a_kind(it->second.kind) + " handle, not " +
             a_kind(want) + " handle",
         {"TORCH", "HANDLE", name});
    return nullptr;
  }
  return &it->second;
}

bool Registry::get(Tcl_Interp* interp, Tcl_Obj* handle, at::Tensor& out) const {
  const Entry* e = find(interp, handle, Kind::Tensor);
  if (e) out = e->tensor;
  return e != nullptr;
}

bool Registry::get(Tcl_Interp* interp, Tcl_Obj* handle,
                   std::shared_ptr<ModuleEntry>& out) const {
  const Entry* e = find(interp, handle, Kind::Module);
  if (e) out = e->module;
  return e != nullptr;
}

bool Registry::get(Tcl_Interp* interp, Tcl_Obj* handle,
                   std::shared_ptr<OptimizerEntry>& out) const {
  const Entry* e = find(interp, handle, Kind::Optimizer);
  if (e) out = e->optimizer;
  return e != nullptr;
}

const Kind* Registry::kind_of(const std::string& handle) const {
  auto it = entries_.find(handle);
  return it == entries_.end() ? nullptr : &it->second.kind;
}

bool Registry::remove(const std::string& handle) {
  auto it = entries_.find(handle);
  if (it == entries_.end()) return false;
  if (it->second.kind == Kind::Tensor) {
    tensor_names_.erase(it->second.tensor.unsafeGetTensorImpl());
  }
  entries_.erase(it);
  return true;
}

std::vector<std::string> Registry::handles(const char* pattern) const {
  std::vector<std::pair<std::uint64_t, std::string>> found;
  for (const auto& [name, entry] : entries_) {
    if (!pattern || Tcl_StringMatch(name.c_str(), pattern)) {
      found.emplace_back(entry.serial, name);
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  out.reserve(found.size());
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

}  // namespace tcltorch::tcl
