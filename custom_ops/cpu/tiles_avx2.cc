// Tile kernels built for avx2 (compile flags set in CMakeLists.txt).
#define ADDERCONVERT_ISA Avx2
#define ADDERCONVERT_ISA_NAME "avx2"
#define ADDERCONVERT_VECTOR_BYTES 32
#define ADDERCONVERT_CLAMP_TAPS 2
#include "adder_conv_cpu_tiles.inc"
