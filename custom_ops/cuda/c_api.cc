// C entry points of libadderconvert_cuda, called from Python (adderconvert/nn/_kernels.py) through ctypes
// with PyTorch's CUDA tensors and current stream. Every function returns 0 on success, or non-zero with
// a message written to `error`.

#include <algorithm>
#include <cstdio>
#include <string>

#include "cuda/adder_conv_impl.cuh"

namespace {

using adderconvert::ConvAttributes;
using adderconvert::ConvShape;

int Fail(char* error, size_t error_len, const std::string& message) {
  if (error != nullptr && error_len > 0) std::snprintf(error, error_len, "%s", message.c_str());
  return 1;
}

int Resolve(const int64_t* x_dims, const int64_t* w_dims, const int64_t* strides, const int64_t* pads,
            const int64_t* dilations, int64_t group, ConvShape* shape, char* error, size_t error_len) {
  ConvAttributes attrs;
  std::copy(strides, strides + 2, attrs.strides);
  std::copy(pads, pads + 4, attrs.pads);
  std::copy(dilations, dilations + 2, attrs.dilations);
  attrs.group = group;
  const std::string message = adderconvert::ResolveShape(x_dims, 4, w_dims, 4, attrs, shape);
  return message.empty() ? 0 : Fail(error, error_len, message);
}

int Status(cudaError_t status, char* error, size_t error_len) {
  return status == cudaSuccess ? 0 : Fail(error, error_len, std::string("CUDA: ") + cudaGetErrorString(status));
}

}  // namespace

#define ADDERCONVERT_EXPORT extern "C" __attribute__((visibility("default")))

// float32, contiguous NCHW device tensors; bias may be null.
ADDERCONVERT_EXPORT int adderconvert_cuda_forward(void* stream, const float* x, const float* w, const float* bias,
                                                  float* y, const int64_t* x_dims, const int64_t* w_dims,
                                                  const int64_t* strides, const int64_t* pads, const int64_t* dilations,
                                                  int64_t group, char* error, size_t error_len) {
  ConvShape shape;
  if (Resolve(x_dims, w_dims, strides, pads, dilations, group, &shape, error, error_len) != 0) return 1;
  adderconvert::Epilogue<float> epilogue;
  epilogue.bias = bias;
  return Status(adderconvert::cuda::LaunchAdderConvForward(static_cast<cudaStream_t>(stream), shape, x, w, epilogue, y),
                error, error_len);
}

// Number of floats of scratch adderconvert_cuda_backward_input needs.
ADDERCONVERT_EXPORT int64_t adderconvert_cuda_grad_columns_size(const int64_t* x_dims, const int64_t* w_dims,
                                                                const int64_t* strides, const int64_t* pads,
                                                                const int64_t* dilations, int64_t group) {
  ConvShape shape;
  if (Resolve(x_dims, w_dims, strides, pads, dilations, group, &shape, nullptr, 0) != 0) return -1;
  return adderconvert::cuda::GradColumnsSize(shape);
}

ADDERCONVERT_EXPORT int adderconvert_cuda_backward_input(void* stream, const float* x, const float* w,
                                                         const float* grad_y, float* grad_cols, float* grad_x,
                                                         const int64_t* x_dims, const int64_t* w_dims,
                                                         const int64_t* strides, const int64_t* pads,
                                                         const int64_t* dilations, int64_t group, char* error,
                                                         size_t error_len) {
  ConvShape shape;
  if (Resolve(x_dims, w_dims, strides, pads, dilations, group, &shape, error, error_len) != 0) return 1;
  return Status(adderconvert::cuda::LaunchAdderConvBackwardInput(static_cast<cudaStream_t>(stream), shape, x, w, grad_y,
                                                                 grad_cols, grad_x),
                error, error_len);
}
