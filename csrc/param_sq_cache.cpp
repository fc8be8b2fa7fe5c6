// One process-wide table: the doors build their per-parameter state anew
// for each step (the Python door from a dict), so the kept sums live with
// the parameter tensors, keyed by their TensorImpl, not with the state.
#include "param_sq_cache.h"

#include <c10/core/TensorImpl.h>
#include <c10/core/UndefinedTensorImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tcltorch::detail {
namespace {

using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

struct Entry {
  // Keeps the TensorImpl's memory (not its data) from being freed, so that
  // no other tensor can take its address while the entry exists.
  WeakImpl impl{c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>()};
  std::uint32_t version = 0;
  const void* data = nullptr;
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  std::vector<std::int64_t> sizes;
  ParamSqLayout layout;
  double sum = 0;
};

struct Table {
  std::mutex mutex;
  std::unordered_map<const c10::TensorImpl*, Entry> entries;
  std::size_t sweep_at = 64;  // sweep dead tensors' entries at this size
};

Table& table() {
  static Table* t = new Table();  // never destroyed: steps may run at exit
  return *t;
}

// The tensor's version, or nullopt where it has no counter (inference
// tensors).
std::optional<std::uint32_t> version_of(const at::Tensor& param) {
  const auto& counter = param.unsafeGetTensorImpl()->version_counter();
  if (!counter.enabled()) return std::nullopt;
  return counter.current_version();
}

bool matches(const Entry& e, const at::Tensor& param, std::uint32_t version,
             const ParamSqLayout& layout) {
  return !e.impl.expired() && e.version == version && e.data == param.data_ptr() &&
         e.dtype == param.scalar_type() && param.sizes().equals(e.sizes) &&
         e.layout == layout;
}

}  // namespace

bool param_sq_cache_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("TCLTORCH_PARAM_SQ_CACHE");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return on;
}

std::optional<double> param_sq_lookup(const at::Tensor& param, const ParamSqLayout& layout) {
  if (!param_sq_cache_enabled()) return std::nullopt;
  const auto version = version_of(param);
  if (!version) return std::nullopt;
  Table& t = table();
  std::lock_guard<std::mutex> lock(t.mutex);
  auto it = t.entries.find(param.unsafeGetTensorImpl());
  if (it == t.entries.end() || !matches(it->second, param, *version, layout)) {
    return std::nullopt;
  }
  return it->second.sum;
}

void param_sq_store(const at::Tensor& param, const ParamSqLayout& layout, double sum) {
  if (!param_sq_cache_enabled()) return;
  const auto version = version_of(param);
  if (!version) return;
  Table& t = table();
  std::vector<Entry> dead;  // freed after the lock is released
  {
    std::lock_guard<std::mutex> lock(t.mutex);
    Entry& e = t.entries[param.unsafeGetTensorImpl()];
    if (e.impl._unsafe_get_target() != param.unsafeGetTensorImpl()) {
      e.impl = WeakImpl(param.getIntrusivePtr());
    }
    e.version = *version;
    e.data = param.data_ptr();
    e.dtype = param.scalar_type();
    e.sizes.assign(param.sizes().begin(), param.sizes().end());
    e.layout = layout;
    e.sum = sum;
    if (t.entries.size() >= t.sweep_at) {
      for (auto it = t.entries.begin(); it != t.entries.end();) {
        if (it->second.impl.expired()) {
          dead.push_back(std::move(it->second));
          it = t.entries.erase(it);
        } else {
          ++it;
        }
      }
      t.sweep_at = std::max<std::size_t>(64, 2 * t.entries.size());
    }
  }
}

}  // namespace tcltorch::detail
