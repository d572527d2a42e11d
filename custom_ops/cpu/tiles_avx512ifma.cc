// The INT8 tile kernels built for AVX-512 with IFMA, which accumulate with VPMADD52LUQ (compile flags:
// CMakeLists.txt). The FP32 ones of this row are avx512's (cpu/isa.cc).
#define ADDERCONVERT_ISA Avx512Ifma
#define ADDERCONVERT_ISA_NAME "avx512ifma"
#define ADDERCONVERT_USE_AVX512
#define ADDERCONVERT_Q_IFMA 1
#include "cpu/quantized_tiles.inc"
