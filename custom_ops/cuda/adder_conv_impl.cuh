// CUDA AdderConv forward (plain and fused epilogue), FP32 accumulation, launched on a caller's stream.
#pragma once

#include <cuda_runtime.h>

#include "adder_conv.h"

namespace adderconvert::cuda {

// y (N, M, Ho, Wo) = epilogue(-sum |x - w|); all pointers are device memory. Returns the launch status.
cudaError_t LaunchAdderConvForward(cudaStream_t stream, const ConvShape& shape, const float* x, const float* w,
                                   const Epilogue<float>& epilogue, float* y);

}  // namespace adderconvert::cuda
