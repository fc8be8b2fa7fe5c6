// The loops for CPUs with AVX-512 (F, VL, BW, DQ; chosen at run time): the
// same eight-lane code as loops_avx2.cpp, compiled with -mavx512vl and
// 256-bit vectors preferred, for the EVEX forms of the 256-bit instructions:
// 32 vector registers instead of 16 (fewer spills and reloaded constants)
// and two-source permutes. The lane arithmetic, and so the bits, are those
// of the other copies.
#define TCLTORCH_KERNEL_NS avx512
#include "loops.h"
