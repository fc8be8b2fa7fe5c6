// Distributed commands: a process group per interpreter (c10d's TCPStore +
// ProcessGroupGloo through tcltorch::distributed), its collectives, data
// parallel modules and the sharded Adafactor. The group is released by
// torch::distributed_destroy or when the interpreter is deleted.
#include <torch/nn/module.h>

#include <cctype>
#include <memory>

#include "argspec.h"
#include "commands.h"
#include "distributed.h"
#include "errors.h"
#include "objects.h"
#include "tensor_util.h"
#include "tcltorch/distributed.h"
#include "tcltorch/sharded_adafactor.h"

namespace tcltorch::tcl {
namespace {

using distributed::ProcessGroup;

constexpr const char* kAssocKey = "tcltorch::distributed";

struct GroupSlot {
  std::shared_ptr<ProcessGroup> group;
};

void delete_slot(ClientData data, Tcl_Interp*) {
  auto* slot = static_cast<GroupSlot*>(data);
  try {
    if (slot->group) slot->group->destroy();
  } catch (...) {
  }
  delete slot;
}

GroupSlot& slot_of(Tcl_Interp* interp) {
  auto* slot = static_cast<GroupSlot*>(Tcl_GetAssocData(interp, kAssocKey, nullptr));
  if (!slot) {
    slot = new GroupSlot;
    Tcl_SetAssocData(interp, kAssocKey, delete_slot, slot);
  }
  return *slot;
}

int distributed_fail(Tcl_Interp* interp, const char* command, const distributed::Error& e) {
  return fail(interp, std::string(command) + ": " + e.what(), {"TORCH", "DISTRIBUTED", e.code()});
}

// The live group, or an error {TORCH DISTRIBUTED STATE}.
std::shared_ptr<ProcessGroup> group_or_fail(Tcl_Interp* interp, const char* command) {
  auto& slot = slot_of(interp);
  if (!slot.group || !slot.group->alive()) {
    fail(interp, std::string(command) + ": no process group: call torch::distributed_init first",
         {"TORCH", "DISTRIBUTED", "STATE"});
    return nullptr;
  }
  return slot.group;
}

// Bad values of these commands are distributed errors too:
// {TORCH DISTRIBUTED VALUE -option value}. Tcl's own codes (TCL WRONGARGS,
// TCL LOOKUP) stay as they are.
bool looks_like_option(Tcl_Obj* obj) {
  const char* s = Tcl_GetString(obj);
  return s[0] == '-' && std::isalpha(static_cast<unsigned char>(s[1]));
}

// Besides the named and the positional forms, these commands take their
// first argument (the handle) followed by named options, as torch.distributed
// reads: `torch::all_reduce $t -op max` is `torch::all_reduce -tensor $t -op max`.
int parse(Tcl_Interp* interp, const CommandSpec& spec, int objc, Tcl_Obj* const objv[],
          Args& args) {
  std::vector<Tcl_Obj*> named;
  if (objc >= 3 && !spec.args.empty() && !looks_like_option(objv[1]) &&
      looks_like_option(objv[2])) {
    named.push_back(objv[0]);
    named.push_back(Tcl_NewStringObj((std::string("-") + spec.args[0].name).c_str(), -1));
    Tcl_IncrRefCount(named.back());
    named.insert(named.end(), objv + 1, objv + objc);
    objc = static_cast<int>(named.size());
    objv = named.data();
  }
  struct Release {
    std::vector<Tcl_Obj*>& named;
    ~Release() {
      if (!named.empty()) Tcl_DecrRefCount(named[1]);
    }
  } release{named};
  if (parse_args(interp, spec, objc, objv, args) == TCL_OK) return TCL_OK;
  Tcl_Obj* options = Tcl_GetReturnOptions(interp, TCL_ERROR);
  Tcl_IncrRefCount(options);
  Tcl_Obj* key = Tcl_NewStringObj("-errorcode", -1);
  Tcl_IncrRefCount(key);
  Tcl_Obj* code = nullptr;
  Tcl_DictObjGet(nullptr, options, key, &code);
  Tcl_Size n = 0;
  Tcl_Obj** items = nullptr;
  if (code && Tcl_ListObjGetElements(nullptr, code, &n, &items) == TCL_OK && n >= 1 &&
      std::string(Tcl_GetString(items[0])) == "TORCH") {
    Tcl_Obj* words = Tcl_NewListObj(0, nullptr);
    Tcl_ListObjAppendElement(nullptr, words, Tcl_NewStringObj("TORCH", -1));
    Tcl_ListObjAppendElement(nullptr, words, Tcl_NewStringObj("DISTRIBUTED", -1));
    for (Tcl_Size k = 1; k < n; ++k) Tcl_ListObjAppendElement(nullptr, words, items[k]);
    Tcl_SetObjErrorCode(interp, words);
  }
  Tcl_DecrRefCount(key);
  Tcl_DecrRefCount(options);
  return TCL_ERROR;
}

template <typename Body>
int distributed_guard(Tcl_Interp* interp, const char* command, Body&& body) {
  try {
    return body();
  } catch (const distributed::Error& e) {
    return distributed_fail(interp, command, e);
  }
}

// ------------------------------------------------------------ the group

const char* const kBackends[] = {"gloo", nullptr};
const NumberRule kPort{[](double v) { return v >= 1 && v <= 65535; }, "in [1, 65535]"};

const CommandSpec kInit{"torch::distributed_init", {
    {.name = "backend", .type = ArgType::String, .default_value = "gloo",
     .placeholder = "backend", .choices = kBackends, .positional = false},
    {.name = "rank", .type = ArgType::Int, .placeholder = "rank", .rule = kNonNegative,
     .positional = false},
    {.name = "worldSize", .snake = "world_size", .type = ArgType::Int, .placeholder = "n",
     .rule = kPositiveInt, .positional = false},
    {.name = "masterAddr", .snake = "master_addr", .type = ArgType::String,
     .placeholder = "host", .positional = false},
    {.name = "masterPort", .snake = "master_port", .type = ArgType::Int, .placeholder = "port",
     .rule = kPort, .positional = false},
    {.name = "timeout", .type = ArgType::Double, .placeholder = "seconds", .rule = kPositive,
     .positional = false},
}};

int cmd_distributed_init(Registry&, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse(interp, kInit, objc, objv, args) != TCL_OK) return TCL_ERROR;
  auto& slot = slot_of(interp);
  if (slot.group && slot.group->alive()) {
    return fail(interp,
                "torch::distributed_init: a process group already exists in this interpreter "
                "(rank " + std::to_string(slot.group->rank()) + " of " +
                    std::to_string(slot.group->world_size()) +
                    "); call torch::distributed_destroy first",
                {"TORCH", "DISTRIBUTED", "STATE"});
  }
  distributed::ProcessGroupOptions o;
  o.backend = args.str("backend");
  if (args.has("rank")) o.rank = static_cast<int>(args.integer("rank"));
  if (args.has("worldSize")) o.world_size = static_cast<int>(args.integer("worldSize"));
  if (args.has("masterAddr")) o.master_addr = args.str("masterAddr");
  if (args.has("masterPort")) o.master_port = static_cast<int>(args.integer("masterPort"));
  if (args.has("timeout")) {
    o.timeout = std::chrono::milliseconds(
        std::max<std::int64_t>(1, static_cast<std::int64_t>(args.number("timeout") * 1000)));
  }
  if (o.rank && o.world_size && *o.rank >= *o.world_size) {
    Tcl_Obj* rank = args.obj("rank");
    return fail(interp,
                std::string("bad value \"") + Tcl_GetString(rank) +
                    "\" for -rank: must be less than -worldSize " +
                    std::to_string(*o.world_size),
                {"TORCH", "DISTRIBUTED", "VALUE", "-rank", Tcl_GetString(rank)});
  }
  return distributed_guard(interp, kInit.name, [&] {
    slot.group = ProcessGroup::create(o);
    return ok(interp, "");
  });
}

int cmd_distributed_rank(Registry&, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  const CommandSpec spec{"torch::distributed_rank", {}};
  Args args;
  if (parse(interp, spec, objc, objv, args) != TCL_OK) return TCL_ERROR;
  auto group = group_or_fail(interp, spec.name);
  if (!group) return TCL_ERROR;
  Tcl_SetObjResult(interp, Tcl_NewIntObj(group->rank()));
  return TCL_OK;
}

int cmd_distributed_world_size(Registry&, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  const CommandSpec spec{"torch::distributed_world_size", {}};
  Args args;
  if (parse(interp, spec, objc, objv, args) != TCL_OK) return TCL_ERROR;
  auto group = group_or_fail(interp, spec.name);
  if (!group) return TCL_ERROR;
  Tcl_SetObjResult(interp, Tcl_NewIntObj(group->world_size()));
  return TCL_OK;
}

int cmd_barrier(Registry&, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  const CommandSpec spec{"torch::barrier", {}};
  Args args;
  if (parse(interp, spec, objc, objv, args) != TCL_OK) return TCL_ERROR;
  auto group = group_or_fail(interp, spec.name);
  if (!group) return TCL_ERROR;
  return distributed_guard(interp, spec.name, [&] {
    group->barrier();
    return ok(interp, "");
  });
}

// Releases the group (threads, sockets, store). Without one: nothing to do.
int cmd_distributed_destroy(Registry&, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  const CommandSpec spec{"torch::distributed_destroy", {}};
  Args args;
  if (parse(interp, spec, objc, objv, args) != TCL_OK) return TCL_ERROR;
  auto& slot = slot_of(interp);
  if (slot.group) slot.group->destroy();
  slot.group.reset();
  return ok(interp, "");
}

// ------------------------------------------------------------ collectives

const char* const kOps[] = {"sum", "avg", "max", "min", nullptr};

const CommandSpec kAllReduce{"torch::all_reduce", {
    {.name = "tensor", .required = true, .placeholder = "tensor"},
    {.name = "op", .type = ArgType::String, .default_value = "sum", .placeholder = "op",
     .choices = kOps},
}};

int cmd_all_reduce(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse(interp, kAllReduce, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor t;
  if (!registry.get(interp, args.obj("tensor"), t)) return TCL_ERROR;
  auto group = group_or_fail(interp, kAllReduce.name);
  if (!group) return TCL_ERROR;
  return distributed_guard(interp, kAllReduce.name, [&] {
    group->all_reduce(t, distributed::parse_reduce_op(args.str("op")));
    Tcl_SetObjResult(interp, args.obj("tensor"));
    return TCL_OK;
  });
}

const CommandSpec kBroadcast{"torch::broadcast", {
    {.name = "tensor", .required = true, .placeholder = "tensor"},
    {.name = "src", .type = ArgType::Int, .default_value = "0", .placeholder = "rank",
     .rule = kNonNegative},
}};

int cmd_broadcast(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse(interp, kBroadcast, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor t;
  if (!registry.get(interp, args.obj("tensor"), t)) return TCL_ERROR;
  auto group = group_or_fail(interp, kBroadcast.name);
  if (!group) return TCL_ERROR;
  if (args.integer("src") >= group->world_size()) {
    Tcl_Obj* src = args.obj("src");
    return fail(interp,
                std::string("bad value \"") + Tcl_GetString(src) + "\" for -src: must be a rank in [0, " +
                    std::to_string(group->world_size() - 1) + "]",
                {"TORCH", "DISTRIBUTED", "VALUE", "-src", Tcl_GetString(src)});
  }
  return distributed_guard(interp, kBroadcast.name, [&] {
    group->broadcast(t, static_cast<int>(args.integer("src")));
    Tcl_SetObjResult(interp, args.obj("tensor"));
    return TCL_OK;
  });
}

const CommandSpec kAllGather{"torch::all_gather", {
    {.name = "tensor", .required = true, .placeholder = "tensor"},
}};

int cmd_all_gather(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse(interp, kAllGather, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor t;
  if (!registry.get(interp, args.obj("tensor"), t)) return TCL_ERROR;
  auto group = group_or_fail(interp, kAllGather.name);
  if (!group) return TCL_ERROR;
  return distributed_guard(interp, kAllGather.name,
                           [&] { return tensor_result(registry, interp, group->all_gather(t)); });
}

// ------------------------------------------------------------ data parallel

// Forward runs the wrapped module; the parameters (shared with it) carry
// the hooks that average their gradients after every backward pass.
class DataParallelModuleImpl : public torch::nn::Module {
 public:
  DataParallelModuleImpl(torch::nn::AnyModule inner, std::shared_ptr<ProcessGroup> group,
                         std::int64_t bucket_bytes)
      : inner_(std::move(inner)) {
    register_module("module", inner_.ptr());
    ddp_ = std::make_unique<distributed::DataParallel>(
        std::move(group), inner_.ptr()->parameters(), inner_.ptr()->buffers(), bucket_bytes);
  }
  at::Tensor forward(at::Tensor input) { return inner_.forward(std::move(input)); }

 private:
  torch::nn::AnyModule inner_;
  std::unique_ptr<distributed::DataParallel> ddp_;
};

const CommandSpec kDataParallel{"torch::distributed_data_parallel", {
    {.name = "module", .required = true, .placeholder = "module"},
    {.name = "bucketCapMb", .snake = "bucket_cap_mb", .type = ArgType::Double,
     .default_value = "25", .placeholder = "mb", .rule = kPositive},
}};

int cmd_distributed_data_parallel(Registry& registry, Tcl_Interp* interp, int objc,
                                  Tcl_Obj* const objv[]) {
  Args args;
  if (parse(interp, kDataParallel, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<ModuleEntry> module;
  if (!registry.get(interp, args.obj("module"), module)) return TCL_ERROR;
  auto group = group_or_fail(interp, kDataParallel.name);
  if (!group) return TCL_ERROR;
  const auto bucket_bytes =
      std::max<std::int64_t>(1, static_cast<std::int64_t>(args.number("bucketCapMb") * 1024 * 1024));
  return distributed_guard(interp, kDataParallel.name, [&] {
    auto wrapper = std::make_shared<DataParallelModuleImpl>(module->module, group, bucket_bytes);
    return ok(interp, registry.add(std::make_shared<ModuleEntry>(ModuleEntry{
                          "distributed_data_parallel", torch::nn::AnyModule(wrapper)})));
  });
}

}  // namespace

int sharded_adafactor_result(
    Registry& registry, Tcl_Interp* interp,
    const std::vector<std::pair<std::vector<at::Tensor>, AdafactorOptions>>& groups,
    const AdafactorOptions& defaults) {
  auto group = group_or_fail(interp, "torch::optimizer_adafactor -shardState");
  if (!group) return TCL_ERROR;
  auto make = [group, groups, defaults]() -> std::unique_ptr<torch::optim::Optimizer> {
    std::vector<torch::optim::OptimizerParamGroup> param_groups;
    for (const auto& [params, options] : groups) {
      param_groups.emplace_back(params, std::make_unique<AdafactorOptions>(options));
    }
    return std::make_unique<distributed::ShardedAdafactor>(group, param_groups, defaults);
  };
  return distributed_guard(interp, "torch::optimizer_adafactor", [&] {
    auto optimizer = make();
    return ok(interp, registry.add(std::make_shared<OptimizerEntry>(
                          OptimizerEntry{"adafactor", std::move(optimizer), make})));
  });
}

int sharded_load_agreed(Tcl_Interp* interp, const torch::optim::Optimizer& optimizer,
                        const std::string& what, std::optional<std::string>& error) {
  const auto* sharded = dynamic_cast<const distributed::ShardedAdafactor*>(&optimizer);
  if (!sharded) return TCL_OK;
  try {
    auto& group = sharded->group();
    const auto flags =
        group.all_gather(at::full({1}, error ? 0 : 1, at::TensorOptions().dtype(at::kLong)));
    std::string failed;
    int count = 0;
    for (int r = 0; r < group.world_size(); ++r) {
      if (flags[r][0].item<std::int64_t>() != 0) continue;
      failed += (count++ ? ", " : "") + std::to_string(r);
    }
    if (!error && count) {
      error = (count > 1 ? "ranks " : "rank ") + failed +
              " could not load it (every rank loads or none does)";
    }
  } catch (const distributed::Error& e) {
    // This rank's own file error, if any, is the one to report.
    if (!error) return fail(interp, what + e.what(), {"TORCH", "DISTRIBUTED", e.code()});
  }
  return TCL_OK;
}

const std::vector<CommandDef>& distributed_commands() {
  static const std::vector<CommandDef> table = {
      {"torch::distributed_init", cmd_distributed_init},
      {"torch::distributed_rank", cmd_distributed_rank},
      {"torch::distributed_world_size", cmd_distributed_world_size},
      {"torch::barrier", cmd_barrier},
      {"torch::distributed_destroy", cmd_distributed_destroy},
      {"torch::all_reduce", cmd_all_reduce},
      {"torch::broadcast", cmd_broadcast},
      {"torch::all_gather", cmd_all_gather},
      {"torch::distributed_data_parallel", cmd_distributed_data_parallel},
  };
  return table;
}

}  // namespace tcltorch::tcl
