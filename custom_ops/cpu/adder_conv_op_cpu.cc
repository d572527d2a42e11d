#include "adder_conv_op_cpu.h"

#include "cpu/ort_parallel_for.h"

namespace adderconvert::cpu {

AdderConvCpuKernel::AdderConvCpuKernel(const OrtKernelInfo* info, OpForm form) : AdderConvKernelBase(info, form) {
  int is_constant = 0;
  const Ort::ConstValue w = Ort::ConstKernelInfo(info).GetTensorConstantInput(1, &is_constant);
  if (is_constant != 0 && static_cast<const OrtValue*>(w) != nullptr) {
    constant_w_ = w.GetTensorData<float>();
    w_layouts_ = std::make_unique<WeightLayoutCache<float>>();
  }
}

OrtStatusPtr AdderConvCpuKernel::ComputeV2(OrtKernelContext* context) {
  return StatusFrom([&] {
    Ort::KernelContext ctx(context);
    const AdderConvInputs in = ReadInputs(ctx, attrs_, form_);
    float* y = AllocateOutput(ctx, in.shape);
    Epilogue<float> epilogue{in.bias, in.scale, in.shift, relu_};
    // The kept layouts belong to the constant W; any other W is laid out for this call only.
    WeightLayoutCache<float>* layouts = in.w == constant_w_ ? w_layouts_.get() : nullptr;
    AdderConvForward<float>(in.shape, in.x, in.w, epilogue, y, OrtParallelFor(ctx), layouts);
  });
}

}  // namespace adderconvert::cpu
