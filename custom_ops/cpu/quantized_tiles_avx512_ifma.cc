// Quantised AdderConv micro-kernels for AVX-512BW with IFMA, accumulating with VPMADD52LUQ (flags set in
// CMakeLists.txt).
#define ADDERCONVERT_Q_IFMA 1
#define ADDERCONVERT_Q_FACTORY QuantizedTileKernelsAvx512Ifma
#define ADDERCONVERT_Q_ISA_NAME "avx512ifma"
#include "cpu/quantized_tiles_avx512.inc"
