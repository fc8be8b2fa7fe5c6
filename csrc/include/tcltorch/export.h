// Symbol visibility for the core library: everything is hidden unless marked.
#pragma once

#if defined(_WIN32)
#  if defined(TCLTORCH_BUILDING_CORE)
#    define TCLTORCH_API __declspec(dllexport)
#  else
#    define TCLTORCH_API __declspec(dllimport)
#  endif
#else
#  define TCLTORCH_API __attribute__((visibility("default")))
#endif
