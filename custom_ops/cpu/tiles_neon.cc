// The FP32 and INT8 tile kernels built for AArch64 Advanced SIMD (NEON, part of the base architecture).
#define ADDERCONVERT_ISA Neon
#define ADDERCONVERT_ISA_NAME "neon"
#define ADDERCONVERT_USE_NEON
#define ADDERCONVERT_VECTOR_BYTES 16
#define ADDERCONVERT_CLAMP_TAPS 2
#include "cpu/adder_conv_cpu_tiles.inc"
#include "cpu/quantized_tiles.inc"
