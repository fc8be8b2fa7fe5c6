// ZeRO stage 1 for tcltorch::Adafactor: each rank keeps the state of its
// share of the parameters only (balanced by bytes over all parameter groups),
// steps those, then every
// parameter is broadcast from the rank that owns it. With the same (averaged)
// gradients on every rank the parameters equal the unsharded optimizer's bit
// for bit.
#pragma once

#include <memory>
#include <vector>

#include "tcltorch/adafactor.h"
#include "tcltorch/distributed.h"

namespace tcltorch::distributed {

class TCLTORCH_API ShardedAdafactor : public Adafactor {
 public:
  ShardedAdafactor(std::shared_ptr<ProcessGroup> group, std::vector<torch::Tensor> params,
                   AdafactorOptions defaults = {});
  // Parameter groups, each with its options (as Adafactor takes them); the
  // parameters of all groups are shared out together, by bytes.
  ShardedAdafactor(std::shared_ptr<ProcessGroup> group,
                   const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
                   AdafactorOptions defaults = {});

  // Steps this rank's parameters, then broadcasts every parameter from its
  // owner (collective).
  torch::Tensor step(LossClosure closure = nullptr) override;
  // Refused when on (c10::ValueError, step_in_backward.h says why).
  void set_step_in_backward(bool on, std::int64_t accumulate_steps = 1) override;
  // Collective: gathers every rank's state and writes the archive of the
  // equivalent unsharded Adafactor (the same on every rank), which an
  // unsharded optimizer, or a sharded one at any world size, loads.
  void save(torch::serialize::OutputArchive& archive) const override;
  // Reads such an archive (or any Adafactor archive of these parameters)
  // and keeps this rank's share. Not collective.
  void load(torch::serialize::InputArchive& archive) override;

  // The rank that owns each parameter, in parameter order.
  const std::vector<int>& owners() const { return owners_; }
  ProcessGroup& group() const { return *group_; }
  // Bytes of state tensors held on this rank.
  std::int64_t local_state_bytes() const;

 private:
  std::shared_ptr<ProcessGroup> group_;
  std::vector<int> owners_;
};

}  // namespace tcltorch::distributed
