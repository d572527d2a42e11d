// AdderConv and FusedAdderConv kernels for ONNX Runtime's CPU execution provider.
#pragma once

#include "adder_conv_op.h"

namespace adderconvert::cpu {

class AdderConvCpuKernel : public AdderConvKernelBase {
 public:
  using AdderConvKernelBase::AdderConvKernelBase;
  OrtStatusPtr ComputeV2(OrtKernelContext* context);
};

}  // namespace adderconvert::cpu
