// The CPU kernel of every op form (AdderConv, FusedAdderConv, QuantizedAdderConv) for ONNX Runtime's CPU
// execution provider.
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
  // The layouts of the constant W, kept across runs (null where W is a graph input).
  std::unique_ptr<WeightCache> w_layouts_;
};

}  // namespace adderconvert::cpu
