// tcltorch::distributed::ProcessGroup on c10d's TCPStore + ProcessGroupGloo.
// Gloo's own types are only touched through torch's exported functions:
// the gloo headers on the build machine may be older than the gloo compiled
// into LibTorch.
#include "tcltorch/distributed.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <numeric>

#include "error_util.h"

namespace tcltorch::distributed {

const char* to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Avg: return "avg";
    case ReduceOp::Max: return "max";
    case ReduceOp::Min: return "min";
  }
  return "?";
}

ReduceOp parse_reduce_op(const std::string& name) {
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min}) {
    if (name == to_string(op)) return op;
  }
  throw Error("VALUE", "bad reduce op \"" + name + "\": must be sum, avg, max or min");
}

namespace detail {

std::string classify(const std::string& message, const std::string& fallback) {
  std::string lower(message);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  auto has = [&](const char* s) { return lower.find(s) != std::string::npos; };
  if (has("timed out") || has("timeout")) return "TIMEOUT";
  if (has("connection closed") || has("closed by peer") || has("connection reset") ||
      has("broken pipe") || has("connection refused") || has("end of file") ||
      has("read error") || has("write error")) {
    return fallback == "INIT" ? "INIT" : "PEER";
  }
  return fallback;
}

[[noreturn]] void rethrow(const std::string& what, const std::string& fallback) {
  std::string message;
  try {
    throw;
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& e) {
    message = e.what_without_backtrace();
  } catch (const std::exception& e) {
    message = e.what();
  }
  // c10d's messages carry a trace after the first line.
  auto nl = message.find('\n');
  if (nl != std::string::npos) message.resize(nl);
  throw Error(classify(message, fallback), what + ": " + message);
}

}  // namespace detail

namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

int env_int(const char* name, const char* option) {
  auto v = env(name);
  if (!v) {
    throw Error("VALUE", std::string(option) + " not given and " + name +
                             " is not set (launch with torchrun, or pass " + option + ")");
  }
  char* end = nullptr;
  long n = std::strtol(v->c_str(), &end, 10);
  if (end == v->c_str() || *end != '\0') {
    throw Error("VALUE", std::string("bad value \"") + *v + "\" of " + name + ": must be an integer");
  }
  return static_cast<int>(n);
}

}  // namespace

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;  // destroyed last
  c10::intrusive_ptr<c10d::ProcessGroupGloo> backend;
};

ProcessGroup::ProcessGroup(int rank, int world_size, std::chrono::milliseconds timeout,
                           std::unique_ptr<Impl> impl)
    : rank_(rank), world_size_(world_size), timeout_(timeout), impl_(std::move(impl)) {}

ProcessGroup::~ProcessGroup() {
  try {
    destroy();
  } catch (...) {
  }
}

bool ProcessGroup::alive() const { return impl_ != nullptr; }

void ProcessGroup::destroy() {
  // The backend joins its threads and closes its pairs; then the store.
  if (impl_) impl_->backend.reset();
  impl_.reset();
}

ProcessGroup::Impl& ProcessGroup::impl(const char* what) {
  if (!impl_) {
    throw Error("STATE", std::string(what) + ": the process group was destroyed");
  }
  return *impl_;
}

std::shared_ptr<ProcessGroup> ProcessGroup::create(const ProcessGroupOptions& o) {
  if (o.backend != "gloo") {
    throw Error("VALUE", "bad backend \"" + o.backend + "\": must be gloo");
  }
  const int world = o.world_size ? *o.world_size : env_int("WORLD_SIZE", "-worldSize");
  const int rank = o.rank ? *o.rank : env_int("RANK", "-rank");
  const std::string addr = o.master_addr ? *o.master_addr : env("MASTER_ADDR").value_or("127.0.0.1");
  int port = c10d::TCPStoreOptions::kDefaultPort;
  if (o.master_port) {
    port = *o.master_port;
  } else if (env("MASTER_PORT")) {
    port = env_int("MASTER_PORT", "-masterPort");
  }
  if (world < 1) {
    throw Error("VALUE", "bad world size " + std::to_string(world) + ": must be at least 1");
  }
  if (rank < 0 || rank >= world) {
    throw Error("VALUE", "bad rank " + std::to_string(rank) + ": must be in [0, " +
                             std::to_string(world - 1) + "] for world size " +
                             std::to_string(world));
  }
  if (port < 1 || port > 65535) {
    throw Error("VALUE", "bad port " + std::to_string(port) + ": must be in [1, 65535]");
  }
  if (addr.empty()) throw Error("VALUE", "bad master address \"\": must be a host name or address");
  if (o.timeout.count() <= 0) {
    throw Error("VALUE", "bad timeout " + std::to_string(o.timeout.count()) +
                             " ms: must be positive");
  }
  auto impl = std::make_unique<Impl>();
  try {
    // As torch.distributed's env:// rendezvous: under torchrun the launcher
    // hosts the store, otherwise rank 0 does.
    const bool agent_store = env("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = !agent_store && rank == 0;
    so.numWorkers = static_cast<std::size_t>(world);
    so.waitWorkers = true;
    so.timeout = o.timeout;
    so.multiTenant = true;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(addr, so);
    // The prefixes of torch.distributed's default group: the store of
    // init_process_group, the group's name ("0"), the device ("cpu").
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("default_pg", store);
    prefixed = c10::make_intrusive<c10d::PrefixStore>("0/", prefixed);
    prefixed = c10::make_intrusive<c10d::PrefixStore>("cpu/", prefixed);
    auto options = c10d::ProcessGroupGloo::Options::create_default(o.timeout);
    impl->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, world, options);
    impl->store = store;
  } catch (...) {
    impl->backend.reset();
    detail::rethrow("cannot join the process group at " + addr + ":" + std::to_string(port) +
                        " as rank " + std::to_string(rank) + " of " + std::to_string(world),
                    "INIT");
  }
  return std::shared_ptr<ProcessGroup>(new ProcessGroup(rank, world, o.timeout, std::move(impl)));
}

namespace {

void check_tensor(const at::Tensor& t, const char* what) {
  if (!t.defined()) throw Error("VALUE", std::string(what) + ": the tensor is undefined");
  if (!t.device().is_cpu()) {
    throw Error("VALUE", std::string(what) + ": the tensor is on " + t.device().str() +
                             "; gloo here takes CPU tensors");
  }
  if (t.is_sparse()) throw Error("VALUE", std::string(what) + ": sparse tensors are not supported");
}

// Runs a collective on a contiguous copy when `t` is not contiguous.
template <typename F>
void on_contiguous(at::Tensor& t, F&& f) {
  if (t.is_contiguous()) {
    f(t);
    return;
  }
  at::Tensor c = t.contiguous();
  f(c);
  c10::NoGradGuard no_grad;
  t.copy_(c);
}

void wait(const c10::intrusive_ptr<c10d::Work>& work) { work->wait(); }

}  // namespace

void ProcessGroup::all_reduce(at::Tensor& tensor, ReduceOp op) {
  auto& im = impl("all_reduce");
  check_tensor(tensor, "all_reduce");
  if (op == ReduceOp::Avg && !tensor.is_floating_point()) {
    throw Error("VALUE", std::string("all_reduce: -op avg needs a floating-point tensor, not ") +
                             c10::toString(tensor.scalar_type()));
  }
  if (tensor.scalar_type() == at::kBool && (op == ReduceOp::Sum)) {
    throw Error("VALUE", "all_reduce: -op sum of a bool tensor; use max (any) or min (all)");
  }
  try {
    on_contiguous(tensor, [&](at::Tensor& t) {
      std::vector<at::Tensor> v{t};
      c10d::AllreduceOptions opts;
      switch (op) {
        case ReduceOp::Sum:
        case ReduceOp::Avg: opts.reduceOp = c10d::ReduceOp::SUM; break;
        case ReduceOp::Max: opts.reduceOp = c10d::ReduceOp::MAX; break;
        case ReduceOp::Min: opts.reduceOp = c10d::ReduceOp::MIN; break;
      }
      wait(im.backend->allreduce(v, opts));
    });
  } catch (...) {
    detail::rethrow("all_reduce", "COLLECTIVE");
  }
  if (op == ReduceOp::Avg && world_size_ > 1) {
    c10::NoGradGuard no_grad;
    tensor.div_(world_size_);
  }
}

void ProcessGroup::broadcast(at::Tensor& tensor, int src) {
  auto& im = impl("broadcast");
  check_tensor(tensor, "broadcast");
  if (src < 0 || src >= world_size_) {
    throw Error("VALUE", "broadcast: bad source rank " + std::to_string(src) + ": must be in [0, " +
                             std::to_string(world_size_ - 1) + "]");
  }
  try {
    on_contiguous(tensor, [&](at::Tensor& t) {
      std::vector<at::Tensor> v{t};
      c10d::BroadcastOptions opts;
      opts.rootRank = src;
      wait(im.backend->broadcast(v, opts));
    });
  } catch (...) {
    detail::rethrow("broadcast", "COLLECTIVE");
  }
}

at::Tensor ProcessGroup::all_gather(const at::Tensor& tensor) {
  auto& im = impl("all_gather");
  check_tensor(tensor, "all_gather");
  std::vector<std::int64_t> sizes{world_size_};
  for (auto d : tensor.sizes()) sizes.push_back(d);
  at::Tensor out = at::empty(sizes, tensor.options().requires_grad(false));
  try {
    std::vector<at::Tensor> in{tensor.detach().contiguous()};
    std::vector<std::vector<at::Tensor>> outs(1);
    for (int r = 0; r < world_size_; ++r) outs[0].push_back(out[r]);
    wait(im.backend->allgather(outs, in));
  } catch (...) {
    detail::rethrow("all_gather", "COLLECTIVE");
  }
  return out;
}

void ProcessGroup::barrier() {
  auto& im = impl("barrier");
  try {
    wait(im.backend->barrier(c10d::BarrierOptions()));
  } catch (...) {
    detail::rethrow("barrier", "COLLECTIVE");
  }
}

std::vector<int> partition_by_bytes(const std::vector<at::Tensor>& tensors, int world_size) {
  std::vector<std::size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  auto bytes = [&](std::size_t i) {
    return static_cast<std::int64_t>(tensors[i].numel()) * tensors[i].element_size();
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return bytes(a) > bytes(b); });
  std::vector<std::int64_t> load(static_cast<std::size_t>(std::max(world_size, 1)), 0);
  std::vector<int> owner(tensors.size(), 0);
  for (std::size_t i : order) {
    auto r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = r;
    load[static_cast<std::size_t>(r)] += bytes(i);
  }
  return owner;
}

void broadcast_coalesced(ProcessGroup& group, const std::vector<at::Tensor>& tensors, int src,
                         std::int64_t bucket_bytes) {
  c10::NoGradGuard no_grad;
  std::size_t k = 0;
  while (k < tensors.size()) {
    // One bucket: consecutive tensors of one dtype, up to bucket_bytes.
    std::vector<at::Tensor> bucket{tensors[k]};
    std::int64_t bytes = tensors[k].numel() * tensors[k].element_size();
    std::size_t j = k + 1;
    while (j < tensors.size() && tensors[j].scalar_type() == tensors[k].scalar_type() &&
           bytes + tensors[j].numel() * tensors[j].element_size() <= bucket_bytes) {
      bytes += tensors[j].numel() * tensors[j].element_size();
      bucket.push_back(tensors[j]);
      ++j;
    }
    std::vector<at::Tensor> flat_parts;
    for (const auto& t : bucket) flat_parts.push_back(t.detach().reshape({-1}));
    at::Tensor flat = at::cat(flat_parts);
    group.broadcast(flat, src);
    std::int64_t offset = 0;
    for (const auto& t : bucket) {
      t.detach().copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
    k = j;
  }
}

}  // namespace tcltorch::distributed
