// Tile kernels built for avx512 (compile flags set in CMakeLists.txt).
#define ADDERCONVERT_ISA Avx512
#define ADDERCONVERT_ISA_NAME "avx512"
#define ADDERCONVERT_VECTOR_BYTES 64
#define ADDERCONVERT_CLAMP_TAPS 4
#include "adder_conv_cpu_tiles.inc"
