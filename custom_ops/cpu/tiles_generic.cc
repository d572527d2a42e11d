// Tile kernels built for generic (compile flags set in CMakeLists.txt).
#define ADDERCONVERT_ISA Generic
#define ADDERCONVERT_ISA_NAME "generic"
#define ADDERCONVERT_VECTOR_BYTES 16
#define ADDERCONVERT_CLAMP_TAPS 2
#include "adder_conv_cpu_tiles.inc"
