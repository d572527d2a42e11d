// AdderConv and FusedAdderConv kernels for ONNX Runtime's CUDA execution provider (run on ORT's stream).
#pragma once

#include "adder_conv_op.h"

namespace adderconvert::cuda {

constexpr const char* kCudaProvider = "CUDAExecutionProvider";

class AdderConvCudaKernel : public AdderConvKernelBase {
 public:
  using AdderConvKernelBase::AdderConvKernelBase;
  OrtStatusPtr ComputeV2(OrtKernelContext* context);
};

}  // namespace adderconvert::cuda
