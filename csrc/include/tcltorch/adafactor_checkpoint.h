// An Adafactor checkpoint file read and written without its optimizer, for
// the front doors that number parameters instead of holding LibTorch's
// tensors (Python's state_dict): the files of save_optimizer, of Tcl's
// torch::optimizer_save and the consolidated file of a sharded optimizer's
// collective save are all this one LibTorch archive.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tcltorch/adafactor.h"
#include "tcltorch/export.h"

namespace tcltorch {

// Parameters are numbered over all groups in order, as torch.optim's
// state_dict numbers them: group 0 holds 0..n0-1, group 1 the next n1, ...
struct AdafactorCheckpoint {
  struct Group {
    std::int64_t size = 0;  // how many parameters
    AdafactorOptions options;
  };
  std::vector<Group> groups;
  // Only the parameters that have state (an optimizer creates it lazily).
  std::map<std::int64_t, AdafactorParamState> state;
};

// Reads an Adafactor archive. Throws c10::Error for a file that cannot be
// read or is not an Adafactor checkpoint.
TCLTORCH_API AdafactorCheckpoint read_adafactor_checkpoint(const std::string& path);

// Writes the archive an Adafactor with groups of these sizes and options
// would save with this state (atomically), which load_optimizer and every
// front door's load read. Throws c10::Error for a state index outside the
// groups or invalid options.
TCLTORCH_API void write_adafactor_checkpoint(const AdafactorCheckpoint& checkpoint,
                                             const std::string& path);

}  // namespace tcltorch
