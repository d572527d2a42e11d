// The FP32 and INT8 tile kernels built for AVX-512 F, BW, VL, DQ (compile flags: CMakeLists.txt).
#define ADDERCONVERT_ISA Avx512
#define ADDERCONVERT_ISA_NAME "avx512"
#define ADDERCONVERT_USE_AVX512
#define ADDERCONVERT_Q_IFMA 0
#define ADDERCONVERT_VECTOR_BYTES 64
#define ADDERCONVERT_CLAMP_TAPS 4
#include "cpu/adder_conv_cpu_tiles.inc"
#include "cpu/quantized_tiles.inc"
