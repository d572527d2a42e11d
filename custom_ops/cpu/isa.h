// The instruction sets the CPU kernels are built for, one row each, and the one choice both the FP32 and the INT8
// kernels use: the widest row this CPU runs, capped by the environment variable ADDERCONVERT_CPU_ISA (a row's
// name; unset or empty: no cap). A value that names no row of this build is an error, never ignored.
//   x86-64: avx512ifma, avx512, avx2, generic        aarch64: neon, generic
// A row's tiles are the shared sources cpu/adder_conv_cpu_tiles.inc and cpu/quantized_tiles.inc, built for it by
// cpu/tiles_<name>.cc with the flags CMakeLists.txt gives: adding an ISA is a row in isa.cc and one in CMake.
#pragma once

#include <cstddef>

#include "cpu/adder_conv_cpu_tiles.h"
#include "cpu/quantized_tiles.h"

namespace adderconvert::cpu {

struct Isa {
  const char* name;
  bool (*supported)();  // whether this CPU runs it
  TileKernels<float> (*fp32)();
  TileKernels<double> (*fp64)();
  QuantizedTileKernels (*int8)();
};

// The rows of this build, widest first; the last is "generic", which every CPU runs.
const Isa* IsaTable(size_t* count);

// The row for ADDERCONVERT_CPU_ISA=`cap` (null or empty: no cap). Throws std::invalid_argument, naming the valid
// values, where `cap` names no row.
const Isa& ChooseIsa(const char* cap);

// ChooseIsa(getenv("ADDERCONVERT_CPU_ISA")), chosen once per process (tried again after an error).
const Isa& CpuIsa();

// name(), or the message of the error it threw (for C entry points, which cannot throw).
const char* IsaNameOrError(const char* (*name)());

}  // namespace adderconvert::cpu
