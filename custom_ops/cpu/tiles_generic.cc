// The FP32 and INT8 tile kernels in portable C++ (every CPU runs them; the reference of the others' tests).
#define ADDERCONVERT_ISA Generic
#define ADDERCONVERT_ISA_NAME "generic"
#define ADDERCONVERT_VECTOR_BYTES 16
#define ADDERCONVERT_CLAMP_TAPS 2
#include "cpu/adder_conv_cpu_tiles.inc"
#include "cpu/quantized_tiles.inc"
