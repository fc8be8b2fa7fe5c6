// The loops for CPUs with AVX2 (compiled with -mavx2; chosen at run time).
#define TCLTORCH_KERNEL_NS avx2
#include "loops.h"
