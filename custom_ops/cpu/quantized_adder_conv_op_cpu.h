// The QuantizedAdderConv op (see quantized_adder_conv.h) and its kernel for ONNX Runtime's CPU provider.
#pragma once

#include <memory>

#include "adder_conv_op.h"
#include "cpu/quantized_adder_conv_cpu.h"
#include "quantized_adder_conv.h"

namespace adderconvert::cpu {

class QuantizedAdderConvCpuKernel {
 public:
  explicit QuantizedAdderConvCpuKernel(const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  ConvAttributes attrs_;
  QuantizedAttributes quant_;
  // Where W is a constant initializer: its data and the layout kept for it across runs.
  const uint8_t* constant_w_ = nullptr;
  std::unique_ptr<QuantizedWeightCache> w_layout_;
};

// QuantizedAdderConv(X float, W uint8, alpha float, beta float) -> Y float, CPU only.
struct QuantizedAdderConvOp : Ort::CustomOpBase<QuantizedAdderConvOp, QuantizedAdderConvCpuKernel, true> {
  const char* GetName() const { return "QuantizedAdderConv"; }
  const char* GetExecutionProviderType() const { return nullptr; }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return StatusFrom([&] { *kernel = new QuantizedAdderConvCpuKernel(info); });
  }
};

}  // namespace adderconvert::cpu
