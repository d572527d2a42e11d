// Quantised AdderConv micro-kernels for AVX-512BW, accumulating with VPADDQ (flags set in CMakeLists.txt).
#define ADDERCONVERT_Q_IFMA 0
#define ADDERCONVERT_Q_FACTORY QuantizedTileKernelsAvx512
#define ADDERCONVERT_Q_ISA_NAME "avx512"
#include "cpu/quantized_tiles_avx512.inc"
