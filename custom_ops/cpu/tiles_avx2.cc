// The FP32 and INT8 tile kernels built for AVX2 and FMA (compile flags: CMakeLists.txt).
#define ADDERCONVERT_ISA Avx2
#define ADDERCONVERT_ISA_NAME "avx2"
#define ADDERCONVERT_USE_AVX2
#define ADDERCONVERT_VECTOR_BYTES 32
#define ADDERCONVERT_CLAMP_TAPS 2
#include "cpu/adder_conv_cpu_tiles.inc"
#include "cpu/quantized_tiles.inc"
