// tcltorch::distributed: data-parallel training on torch.distributed's own
// engine (c10d's TCPStore and ProcessGroupGloo, compiled into LibTorch),
// launched by torchrun or by hand. No gloo header is needed to use it.
//
//   auto group = tcltorch::distributed::ProcessGroup::create({});  // torchrun's env
//   tcltorch::distributed::DataParallel ddp(group, model->parameters(), model->buffers());
//   ... loss.backward();  // gradients are now averaged over the ranks
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tcltorch/distributed_error.h"
#include "tcltorch/export.h"

namespace tcltorch::distributed {

enum class ReduceOp : std::int8_t { Sum, Avg, Max, Min };
// "sum", "avg", "max", "min"; parse_reduce_op throws Error("VALUE") otherwise.
TCLTORCH_API const char* to_string(ReduceOp op);
TCLTORCH_API ReduceOp parse_reduce_op(const std::string& name);

// torch.distributed's default timeout of a process group.
inline constexpr std::chrono::milliseconds kDefaultTimeout{30 * 60 * 1000};

// Where to meet the other ranks. Unset fields come from the environment
// torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); MASTER_ADDR
// defaults to 127.0.0.1 and MASTER_PORT to 29500, as in torch.
struct ProcessGroupOptions {
  std::string backend = "gloo";  // the only one on CPU
  std::optional<int> rank;
  std::optional<int> world_size;
  std::optional<std::string> master_addr;
  std::optional<int> master_port;
  // Bounds the rendezvous and every later collective.
  std::chrono::milliseconds timeout = kDefaultTimeout;
};

// A process group keyed in the store exactly as torch.distributed's default
// group is ("default_pg", "0/", "cpu/"), so that C++, Tcl and Python ranks
// can meet in one job. Under torchrun (TORCHELASTIC_USE_AGENT_STORE=True)
// every rank is a client of the launcher's store; otherwise rank 0 hosts it.
// Collectives throw Error; none outlives the timeout.
class TCLTORCH_API ProcessGroup {
 public:
  // Rendezvous with the other ranks (collective). Throws Error("VALUE") for
  // bad options and Error("INIT") when the rendezvous fails.
  static std::shared_ptr<ProcessGroup> create(const ProcessGroupOptions& options);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  // False once destroy() ran.
  bool alive() const;

  // In place on every rank. Avg is a sum divided by the world size
  // (floating-point tensors only).
  void all_reduce(at::Tensor& tensor, ReduceOp op = ReduceOp::Sum);
  void broadcast(at::Tensor& tensor, int src = 0);
  // A new tensor [world_size, *tensor.sizes()], rank r's tensor at index r.
  at::Tensor all_gather(const at::Tensor& tensor);
  void barrier();

  // Releases the backend's threads and sockets and the store. Idempotent;
  // later collectives throw Error("STATE").
  void destroy();

 private:
  struct Impl;
  ProcessGroup(int rank, int world_size, std::chrono::milliseconds timeout,
               std::unique_ptr<Impl> impl);
  Impl& impl(const char* what);
  int rank_;
  int world_size_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<Impl> impl_;
};

// Greedy balance by bytes: the rank that owns each tensor (largest tensors
// first, each to the rank holding the fewest bytes so far; ties to the
// lowest rank). The same on every rank.
TCLTORCH_API std::vector<int> partition_by_bytes(const std::vector<at::Tensor>& tensors,
                                                 int world_size);

// Broadcasts `tensors` from `src` in flat buffers of at most `bucket_bytes`
// (one message per bucket, not per tensor), in place.
TCLTORCH_API void broadcast_coalesced(ProcessGroup& group, const std::vector<at::Tensor>& tensors,
                                      int src, std::int64_t bucket_bytes);

// torch.nn.parallel.DistributedDataParallel's default bucket cap.
inline constexpr std::int64_t kDefaultBucketBytes = 25LL * 1024 * 1024;

// Data parallel training: at construction rank 0's parameters and buffers
// are broadcast (collective); from then on every backward pass that reaches
// the parameters ends with their gradients averaged over the ranks, one
// all-reduce per bucket of at most `bucket_bytes` (parameters in reverse
// order, as DDP builds its first buckets). A parameter without a gradient
// on a rank counts as zeros there. Destroying it removes the hooks.
class TCLTORCH_API DataParallel {
 public:
  DataParallel(std::shared_ptr<ProcessGroup> group, std::vector<at::Tensor> parameters,
               std::vector<at::Tensor> buffers = {},
               std::int64_t bucket_bytes = kDefaultBucketBytes);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // What the hooks do after each backward pass (collective).
  void average_gradients();
  // The parameter indices of each bucket.
  const std::vector<std::vector<std::size_t>>& buckets() const;
  ProcessGroup& group() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace tcltorch::distributed
