// AdderConv and FusedAdderConv kernels for ONNX Runtime's CPU execution provider.
#pragma once

#include <memory>

#include "adder_conv_op.h"
#include "cpu/adder_conv_cpu.h"

namespace adderconvert::cpu {

class AdderConvCpuKernel : public AdderConvKernelBase {
 public:
  AdderConvCpuKernel(const OrtKernelInfo* info, OpForm form);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  // Where W is a constant initializer: its data and the layouts kept for it across runs.
  const float* constant_w_ = nullptr;
  std::unique_ptr<WeightLayoutCache<float>> w_layouts_;
};

}  // namespace adderconvert::cpu
