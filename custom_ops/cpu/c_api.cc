// C entry points of libadderconvert_cpu, called from Python (adderconvert/nn/_kernels.py) through ctypes.
// Every function returns 0 on success, or non-zero with a message written to `error`.

#include "c_api.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <vector>

#include "adder_conv_cpu.h"
#include "cpu/quantized_adder_conv_cpu.h"
#include "quantized_adder_conv.h"

namespace {

using adderconvert::CApiFail;
using adderconvert::CApiResolve;
using adderconvert::ConvShape;

// Runs work items on OpenMP threads. In a PyTorch process this is torch's own pool (see CMakeLists.txt).
class OpenMpParallelFor final : public adderconvert::cpu::ParallelFor {
 public:
  explicit OpenMpParallelFor(int threads) : threads_(std::max(threads, 1)) {}

  void Run(size_t total, void (*fn)(void*, size_t), void* data) const override {
    const int64_t count = static_cast<int64_t>(total);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_)
    for (int64_t i = 0; i < count; ++i) fn(data, static_cast<size_t>(i));
  }
  int Threads() const override { return threads_; }

 private:
  int threads_;
};

template <typename T>
int Forward(const void* x, const void* w, const void* bias, void* y, const ConvShape& shape, int threads) {
  adderconvert::Epilogue<T> epilogue;
  epilogue.shift = static_cast<const T*>(bias);
  adderconvert::cpu::AdderConvForward<T>(shape, static_cast<const T*>(x), static_cast<const T*>(w), epilogue,
                                         static_cast<T*>(y), OpenMpParallelFor(threads));
  return 0;
}

template <typename T>
int BackwardInput(const void* x, const void* w, const void* grad_y, void* grad_x, const ConvShape& shape, int threads) {
  adderconvert::cpu::AdderConvBackwardInput<T>(shape, static_cast<const T*>(x), static_cast<const T*>(w),
                                               static_cast<const T*>(grad_y), static_cast<T*>(grad_x),
                                               OpenMpParallelFor(threads));
  return 0;
}

}  // namespace

// dtype: 0 float32, 1 float64. Tensors are contiguous NCHW; bias may be null.
ADDERCONVERT_EXPORT int adderconvert_cpu_forward(int dtype, const void* x, const void* w, const void* bias, void* y,
                                                 const int64_t* x_dims, const int64_t* w_dims, const int64_t* strides,
                                                 const int64_t* pads, const int64_t* dilations, int64_t group,
                                                 int threads, char* error, size_t error_len) {
  try {
    ConvShape shape;
    if (CApiResolve(x_dims, w_dims, strides, pads, dilations, group, &shape, error, error_len) != 0) return 1;
    if (dtype == 0) return Forward<float>(x, w, bias, y, shape, threads);
    if (dtype == 1) return Forward<double>(x, w, bias, y, shape, threads);
    return CApiFail(error, error_len, "adderconvert_cpu_forward: dtype must be 0 (float32) or 1 (float64)");
  } catch (const std::exception& e) {
    return CApiFail(error, error_len, e.what());
  }
}

ADDERCONVERT_EXPORT int adderconvert_cpu_backward_input(int dtype, const void* x, const void* w, const void* grad_y,
                                                        void* grad_x, const int64_t* x_dims, const int64_t* w_dims,
                                                        const int64_t* strides, const int64_t* pads,
                                                        const int64_t* dilations, int64_t group, int threads,
                                                        char* error, size_t error_len) {
  try {
    ConvShape shape;
    if (CApiResolve(x_dims, w_dims, strides, pads, dilations, group, &shape, error, error_len) != 0) return 1;
    if (dtype == 0) return BackwardInput<float>(x, w, grad_y, grad_x, shape, threads);
    if (dtype == 1) return BackwardInput<double>(x, w, grad_y, grad_x, shape, threads);
    return CApiFail(error, error_len, "adderconvert_cpu_backward_input: dtype must be 0 (float32) or 1 (float64)");
  } catch (const std::exception& e) {
    return CApiFail(error, error_len, e.what());
  }
}

ADDERCONVERT_EXPORT const char* adderconvert_cpu_isa() { return adderconvert::cpu::KernelIsa(); }

// QuantizedAdderConv (see quantized_adder_conv.h): x float32 (N, C, H, W), w uint8 (M, C/group, kH, kW),
// alpha and beta float32 (M,), y float32 (N, M, Ho, Wo), all contiguous.
ADDERCONVERT_EXPORT int adderconvert_cpu_quantized_forward(const float* x, const uint8_t* w, const float* alpha,
                                                           const float* beta, float* y, const int64_t* x_dims,
                                                           const int64_t* w_dims, const int64_t* strides,
                                                           const int64_t* pads, const int64_t* dilations, int64_t group,
                                                           float x_scale, int64_t x_zero_point, int relu, int threads,
                                                           char* error, size_t error_len) {
  try {
    adderconvert::ConvAttributes attrs;
    std::copy(strides, strides + 2, attrs.strides);
    std::copy(pads, pads + 4, attrs.pads);
    std::copy(dilations, dilations + 2, attrs.dilations);
    attrs.group = group;
    ConvShape shape;
    std::string message = adderconvert::ResolveQuantizedShape(x_dims, 4, w_dims, 4, attrs, &shape);
    if (message.empty()) message = adderconvert::CheckQuantization(x_scale, x_zero_point);
    if (!message.empty()) return CApiFail(error, error_len, message);
    const adderconvert::QuantizedAttributes quantization{x_scale, x_zero_point};
    const adderconvert::Epilogue<float> epilogue{alpha, beta, relu != 0};
    adderconvert::cpu::QuantizedAdderConvForward(shape, x, w, quantization, epilogue, y, OpenMpParallelFor(threads));
    return 0;
  } catch (const std::exception& e) {
    return CApiFail(error, error_len, e.what());
  }
}

ADDERCONVERT_EXPORT const char* adderconvert_cpu_quantized_isa() { return adderconvert::cpu::QuantizedKernelIsa(); }
