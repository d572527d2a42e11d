// C entry points of libadderconvert_cuda, called from Python (adderconvert/nn/_kernels.py) through ctypes
// with PyTorch's CUDA tensors and current stream. Every function returns 0 on success, or non-zero with
// a message written to `error`.

#include "c_api.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "cuda/adder_conv_impl.cuh"

namespace {

using adderconvert::CApiFail;
using adderconvert::CApiResolve;
using adderconvert::ConvShape;

int Status(cudaError_t status, char* error, size_t error_len) {
  return status == cudaSuccess ? 0 : CApiFail(error, error_len, std::string("CUDA: ") + cudaGetErrorString(status));
}

}  // namespace

// float32, contiguous NCHW device tensors; bias may be null.
ADDERCONVERT_EXPORT int adderconvert_cuda_forward(void* stream, const float* x, const float* w, const float* bias,
                                                  float* y, const int64_t* x_dims, const int64_t* w_dims,
                                                  const int64_t* strides, const int64_t* pads, const int64_t* dilations,
                                                  int64_t group, char* error, size_t error_len) {
  ConvShape shape;
  if (CApiResolve(x_dims, w_dims, strides, pads, dilations, group, &shape, error, error_len) != 0) return 1;
  adderconvert::Epilogue<float> epilogue;
  epilogue.shift = bias;
  return Status(adderconvert::cuda::LaunchAdderConvForward(static_cast<cudaStream_t>(stream), shape, x, w, epilogue, y),
                error, error_len);
}

// Number of floats of scratch adderconvert_cuda_backward_input needs.
ADDERCONVERT_EXPORT int64_t adderconvert_cuda_grad_columns_size(const int64_t* x_dims, const int64_t* w_dims,
                                                                const int64_t* strides, const int64_t* pads,
                                                                const int64_t* dilations, int64_t group) {
  ConvShape shape;
  if (CApiResolve(x_dims, w_dims, strides, pads, dilations, group, &shape, nullptr, 0) != 0) return -1;
  return adderconvert::cuda::GradColumnsSize(shape);
}

ADDERCONVERT_EXPORT int adderconvert_cuda_backward_input(void* stream, const float* x, const float* w,
                                                         const float* grad_y, float* grad_cols, float* grad_x,
                                                         const int64_t* x_dims, const int64_t* w_dims,
                                                         const int64_t* strides, const int64_t* pads,
                                                         const int64_t* dilations, int64_t group, char* error,
                                                         size_t error_len) {
  ConvShape shape;
  if (CApiResolve(x_dims, w_dims, strides, pads, dilations, group, &shape, error, error_len) != 0) return 1;
  return Status(adderconvert::cuda::LaunchAdderConvBackwardInput(static_cast<cudaStream_t>(stream), shape, x, w, grad_y,
                                                                 grad_cols, grad_x),
                error, error_len);
}
