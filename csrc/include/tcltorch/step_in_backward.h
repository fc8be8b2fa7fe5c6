// The step inside backward (tcltorch::Adafactor::set_step_in_backward): its
// rule and its refusals, worded once here for every door, and what other
// parts of the library ask of it. No LibTorch headers beyond the tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "tcltorch/adafactor_options.h"
#include "tcltorch/export.h"

namespace tcltorch {

// accumulate_steps: the number of backward passes whose gradients add up
// before the step runs inside the last of them.
inline constexpr OptionRule kAccumulateStepsRule = OptionRule::AtLeastOne;

// What accumulate_steps must be, completing "must be ": the rule and what
// the number counts (">= 1 (the number of backward passes ...)"). Every
// door's message for a bad value is made from it.
TCLTORCH_API const char* accumulate_steps_requirement();

// The message for a bad accumulate_steps, `got` being the value as the
// caller shows it: "accumulate_steps must be an integer >= 1 (...), got 0".
TCLTORCH_API std::string accumulate_steps_error(const std::string& got);

// Throws c10::ValueError with accumulate_steps_error.
TCLTORCH_API void check_accumulate_steps(std::int64_t accumulate_steps);

// What the step in backward cannot be combined with, and why.
enum class StepInBackwardConflict : std::int8_t {
  ShardedState,  // distributed::ShardedAdafactor (ZeRO-1)
  DataParallel,  // distributed::DataParallel
  // With accumulate_steps > 1: a backward pass that begins while another is
  // still running (one inside another's backward, as torch.utils.checkpoint
  // with use_reentrant=True does, or two on different threads).
  OverlappingBackward,
};
TCLTORCH_API std::string step_in_backward_conflict(StepInBackwardConflict conflict);

// The refusal of a parameter that gets a gradient a second time within one
// backward pass (from a pass run inside it, as torch.utils.checkpoint with
// use_reentrant=True does, or beside it on another thread) after it was
// stepped or queued for its step with the first: a second step would not be
// the usual step (one step with the sum). `group` and `position` count from
// 0; the message counts from 1, and says why and what to do.
TCLTORCH_API std::string gradient_twice_in_one_pass_error(std::size_t group, std::size_t position,
                                                          const std::string& shape);

// True when `param` carries the hook of an Adafactor that steps it inside
// backward.
TCLTORCH_API bool has_step_in_backward_hook(const at::Tensor& param);

namespace detail {
struct StepInBackward;  // step_in_backward.cpp
// Throws c10::Error naming the first parameter whose post-accumulate-grad
// slot no longer holds the hook `in_backward` set there (a later hook took
// the slot, so backward no longer steps that parameter). Adafactor::step and
// each backward pass call it.
TCLTORCH_API void check_hooks_in_place(const StepInBackward& in_backward);
}  // namespace detail

// For distributed::DataParallel, which averages its parameters' gradients
// after backward: marks `param` as averaged (counted, so that two wrappers
// of one parameter each hold a mark) or drops one mark. The step in backward
// refuses a marked parameter.
TCLTORCH_API void mark_averaged_after_backward(const at::Tensor& param, bool on);
TCLTORCH_API bool averaged_after_backward(const at::Tensor& param);

}  // namespace tcltorch
