#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

#if defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace adderconvert::cpu {

// The factories of cpu/tiles_<Name>.cc, and a row of the table that uses them.
#define ADDERCONVERT_TILES(Name)      \
  template <typename T>               \
  TileKernels<T> TileKernels##Name(); \
  QuantizedTileKernels QuantizedTileKernels##Name();
#define ADDERCONVERT_ROW(name, supported, Name) \
  {name, supported, &TileKernels##Name<float>, &TileKernels##Name<double>, &QuantizedTileKernels##Name}
ADDERCONVERT_TILES(Generic)
#if defined(__x86_64__)
ADDERCONVERT_TILES(Avx512)
ADDERCONVERT_TILES(Avx2)
QuantizedTileKernels QuantizedTileKernelsAvx512Ifma();
#elif defined(__aarch64__)
ADDERCONVERT_TILES(Neon)
#endif

namespace {

// Whether this CPU runs each ISA.
#if defined(__x86_64__)
bool HasAvx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
}
bool HasAvx512Ifma() { return HasAvx512() && __builtin_cpu_supports("avx512ifma"); }
bool HasAvx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#elif defined(__aarch64__)
// GCC has no __builtin_cpu_supports on aarch64; NEON (Advanced SIMD) is part of the base architecture anyway.
bool HasNeon() { return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0; }
#endif
bool Always() { return true; }

// Widest first.
constexpr Isa kIsas[] = {
#if defined(__x86_64__)
    // The FP32 tiles of avx512ifma are avx512's: IFMA only speeds up the INT8 sums.
    {"avx512ifma", &HasAvx512Ifma, &TileKernelsAvx512<float>, &TileKernelsAvx512<double>,
     &QuantizedTileKernelsAvx512Ifma},
    ADDERCONVERT_ROW("avx512", &HasAvx512, Avx512),
    ADDERCONVERT_ROW("avx2", &HasAvx2, Avx2),
#elif defined(__aarch64__)
    ADDERCONVERT_ROW("neon", &HasNeon, Neon),
#endif
    ADDERCONVERT_ROW("generic", &Always, Generic),
};
constexpr size_t kIsaCount = sizeof(kIsas) / sizeof(kIsas[0]);

}  // namespace

const Isa* IsaTable(size_t* count) {
  *count = kIsaCount;
  return kIsas;
}

const Isa& ChooseIsa(const char* cap) {
#if defined(__x86_64__)
  __builtin_cpu_init();
#endif
  size_t first = 0;
  if (cap != nullptr && cap[0] != '\0') {
    while (first < kIsaCount && std::strcmp(kIsas[first].name, cap) != 0) ++first;
    if (first == kIsaCount) {
      std::string valid;
      for (const Isa& isa : kIsas) valid += (valid.empty() ? "" : ", ") + std::string(isa.name);
      throw std::invalid_argument("ADDERCONVERT_CPU_ISA='" + std::string(cap) + "' is not an instruction set of this " +
                                  "build; use one of " + valid + " (or leave it unset for the widest this CPU runs)");
    }
  }
  for (size_t i = first; i < kIsaCount; ++i) {
    if (kIsas[i].supported()) return kIsas[i];
  }
  return kIsas[kIsaCount - 1];
}

const Isa& CpuIsa() {
  static const Isa& isa = ChooseIsa(std::getenv("ADDERCONVERT_CPU_ISA"));
  return isa;
}

const char* IsaNameOrError(const char* (*name)()) {
  try {
    return name();
  } catch (const std::exception& e) {
    static const std::string error = e.what();  // the variable does not change within a process
    return error.c_str();
  }
}

}  // namespace adderconvert::cpu
