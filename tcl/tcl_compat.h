// Tcl 8.6 / 9 source compatibility.
#pragma once

#include <tcl.h>

// Tcl 9 sizes lists and strings with Tcl_Size; 8.6 headers lack the type.
#ifndef TCL_SIZE_MAX
typedef int Tcl_Size;
#endif
