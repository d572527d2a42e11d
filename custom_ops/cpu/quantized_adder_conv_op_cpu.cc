#include "cpu/quantized_adder_conv_op_cpu.h"

#include <string>
#include <vector>

#include "cpu/ort_parallel_for.h"

namespace adderconvert::cpu {
namespace {

constexpr const char* kOp = "QuantizedAdderConv: ";

QuantizedAttributes ReadQuantization(const OrtKernelInfo* info) {
  Ort::ConstKernelInfo kinfo(info);
  QuantizedAttributes q;
  try {
    q.x_scale = kinfo.GetAttribute<float>("x_scale");
  } catch (const Ort::Exception&) {
    throw Ort::Exception(std::string(kOp) + "attribute 'x_scale' (float) is required", ORT_INVALID_ARGUMENT);
  }
  try {
    q.x_zero_point = kinfo.GetAttribute<int64_t>("x_zero_point");
  } catch (const Ort::Exception&) {
    q.x_zero_point = 0;
  }
  int64_t relu = 0;
  try {
    relu = kinfo.GetAttribute<int64_t>("relu");
  } catch (const Ort::Exception&) {
    relu = 0;
  }
  if (relu != 0 && relu != 1) {
    throw Ort::Exception(std::string(kOp) + "attribute 'relu' must be 0 or 1, got " + std::to_string(relu),
                         ORT_INVALID_ARGUMENT);
  }
  q.relu = relu == 1;
  const std::string error = CheckQuantization(q.x_scale, q.x_zero_point);
  if (!error.empty()) throw Ort::Exception(std::string(error), ORT_INVALID_ARGUMENT);
  return q;
}

const float* PerChannel(Ort::KernelContext& ctx, size_t index, int64_t channels, const char* name) {
  Ort::ConstValue value = ctx.GetInput(index);
  const std::vector<int64_t> dims = value.GetTensorTypeAndShapeInfo().GetShape();
  if (dims.size() != 1 || dims[0] != channels) {
    std::string got;
    for (int64_t d : dims) got += (got.empty() ? "" : ", ") + std::to_string(d);
    throw Ort::Exception(std::string(kOp) + name + " must have shape (" + std::to_string(channels) +
                             ",) matching W.shape[0], got (" + got + ")",
                         ORT_INVALID_ARGUMENT);
  }
  return value.GetTensorData<float>();
}

}  // namespace

QuantizedAdderConvCpuKernel::QuantizedAdderConvCpuKernel(const OrtKernelInfo* info)
    : attrs_(ReadAttributes(info)), quant_(ReadQuantization(info)) {
  int is_constant = 0;
  const Ort::ConstValue w = Ort::ConstKernelInfo(info).GetTensorConstantInput(1, &is_constant);
  if (is_constant != 0 && static_cast<const OrtValue*>(w) != nullptr) {
    constant_w_ = w.GetTensorData<uint8_t>();
    w_layout_ = std::make_unique<QuantizedWeightCache>();
  }
}

OrtStatusPtr QuantizedAdderConvCpuKernel::ComputeV2(OrtKernelContext* context) {
  return StatusFrom([&] {
    Ort::KernelContext ctx(context);
    Ort::ConstValue x = ctx.GetInput(0);
    Ort::ConstValue w = ctx.GetInput(1);
    const std::vector<int64_t> x_dims = x.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> w_dims = w.GetTensorTypeAndShapeInfo().GetShape();
    ConvShape shape;
    const std::string error =
        ResolveQuantizedShape(x_dims.data(), x_dims.size(), w_dims.data(), w_dims.size(), attrs_, &shape);
    if (!error.empty()) throw Ort::Exception(std::string(error), ORT_INVALID_ARGUMENT);
    QuantizedEpilogue epilogue;
    epilogue.x_scale = quant_.x_scale;
    epilogue.x_zero_point = static_cast<int32_t>(quant_.x_zero_point);
    epilogue.alpha = PerChannel(ctx, 2, shape.out_channels, "alpha");
    epilogue.beta = PerChannel(ctx, 3, shape.out_channels, "beta");
    epilogue.relu = quant_.relu;
    float* y = AllocateOutput(ctx, shape);
    const uint8_t* w_data = w.GetTensorData<uint8_t>();
    // The kept layout belongs to the constant W; any other W is laid out for this call only.
    QuantizedWeightCache* cache = w_data == constant_w_ ? w_layout_.get() : nullptr;
    QuantizedAdderConvForward(shape, x.GetTensorData<float>(), w_data, epilogue, y, OrtParallelFor(ctx), cache);
  });
}

}  // namespace adderconvert::cpu
