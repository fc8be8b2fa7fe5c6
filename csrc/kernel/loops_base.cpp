// The loops for any x86-64 (or other) CPU.
#define TCLTORCH_KERNEL_NS base
#include "loops.h"
