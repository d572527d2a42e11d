// CUDA AdderConv forward (plain and fused epilogue), FP32 accumulation, launched on a caller's stream.
#pragma once

#include <cuda_runtime.h>

#include "adder_conv.h"

namespace adderconvert::cuda {

// y (N, M, Ho, Wo) = epilogue(-sum |x - w|); all pointers are device memory. Returns the launch status.
cudaError_t LaunchAdderConvForward(cudaStream_t stream, const ConvShape& shape, const float* x, const float* w,
                                   const Epilogue<float>& epilogue, float* y);

// grad_x (N, C, H, W) = sum over outputs of HardTanh(w - x) * grad_y. `grad_cols` is device scratch of
// GradColumnsSize(shape) floats (one value per tap and output position, i.e. the size of im2col).
int64_t GradColumnsSize(const ConvShape& shape);
cudaError_t LaunchAdderConvBackwardInput(cudaStream_t stream, const ConvShape& shape, const float* x, const float* w,
                                         const float* grad_y, float* grad_cols, float* grad_x);

}  // namespace adderconvert::cuda
