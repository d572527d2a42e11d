// ONNX Runtime glue shared by the CPU and CUDA AdderConv kernels: op schemas, attribute parsing and
// input checks. Errors come back to ORT as statuses (CreateKernelV2/ComputeV2), never as crashes.
#pragma once

#ifndef ORT_API_MANUAL_INIT
#define ORT_API_MANUAL_INIT
#endif
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <exception>
#include <string>
#include <vector>

#include "adder_conv.h"

namespace adderconvert {

constexpr const char* kDomain = "com.adderconvert";

// The two forms of the op: AdderConv(X, W, B?) and FusedAdderConv(X, W, scale, shift) with attribute relu.
enum class OpForm { kPlain, kFused };

inline ConvAttributes ReadAttributes(const OrtKernelInfo* info) {
  Ort::ConstKernelInfo kinfo(info);
  ConvAttributes attrs;
  auto read = [&](const char* name, int64_t* out, size_t count) {
    std::vector<int64_t> values;
    try {
      values = kinfo.GetAttributes<int64_t>(name);
    } catch (const Ort::Exception&) {
      return;  // absent: keep the default
    }
    if (values.size() != count) {
      throw Ort::Exception(std::string("AdderConv: attribute '") + name + "' must have " + std::to_string(count) +
                               " values, got " + std::to_string(values.size()),
                           ORT_INVALID_ARGUMENT);
    }
    std::copy(values.begin(), values.end(), out);
  };
  read("strides", attrs.strides, 2);
  read("pads", attrs.pads, 4);
  read("dilations", attrs.dilations, 2);
  try {
    attrs.group = kinfo.GetAttribute<int64_t>("group");
  } catch (const Ort::Exception&) {
    attrs.group = 1;
  }
  return attrs;
}

inline bool ReadRelu(const OrtKernelInfo* info) {
  try {
    return Ort::ConstKernelInfo(info).GetAttribute<int64_t>("relu") != 0;
  } catch (const Ort::Exception&) {
    return false;
  }
}

// Inputs of one call, checked against each other; shape.out_* give Y's size.
struct AdderConvInputs {
  ConvShape shape;
  const float* x = nullptr;
  const float* w = nullptr;
  const float* bias = nullptr;   // plain form, optional
  const float* scale = nullptr;  // fused form
  const float* shift = nullptr;  // fused form
};

inline const float* PerChannelInput(Ort::KernelContext& ctx, size_t index, int64_t channels, const char* name) {
  if (index >= ctx.GetInputCount()) return nullptr;
  Ort::ConstValue value = ctx.GetInput(index);
  if (static_cast<const OrtValue*>(value) == nullptr) return nullptr;
  const std::vector<int64_t> dims = value.GetTensorTypeAndShapeInfo().GetShape();
  if (dims.size() != 1 || dims[0] != channels) {
    throw Ort::Exception(
        std::string("AdderConv: ") + name + " must have shape (" + std::to_string(channels) + ",) matching W.shape[0]",
        ORT_INVALID_ARGUMENT);
  }
  return value.GetTensorData<float>();
}

inline AdderConvInputs ReadInputs(Ort::KernelContext& ctx, const ConvAttributes& attrs, OpForm form) {
  AdderConvInputs in;
  Ort::ConstValue x = ctx.GetInput(0);
  Ort::ConstValue w = ctx.GetInput(1);
  const std::vector<int64_t> x_dims = x.GetTensorTypeAndShapeInfo().GetShape();
  const std::vector<int64_t> w_dims = w.GetTensorTypeAndShapeInfo().GetShape();
  const std::string error = ResolveShape(x_dims.data(), x_dims.size(), w_dims.data(), w_dims.size(), attrs, &in.shape);
  if (!error.empty()) throw Ort::Exception(std::string(error), ORT_INVALID_ARGUMENT);
  in.x = x.GetTensorData<float>();
  in.w = w.GetTensorData<float>();
  const int64_t channels = in.shape.out_channels;
  if (form == OpForm::kPlain) {
    in.bias = PerChannelInput(ctx, 2, channels, "B");
  } else {
    in.scale = PerChannelInput(ctx, 2, channels, "scale");
    in.shift = PerChannelInput(ctx, 3, channels, "shift");
    if (in.scale == nullptr || in.shift == nullptr) {
      throw Ort::Exception("FusedAdderConv: scale and shift are required", ORT_INVALID_ARGUMENT);
    }
  }
  return in;
}

inline float* AllocateOutput(Ort::KernelContext& ctx, const ConvShape& s) {
  const std::vector<int64_t> dims{s.batch, s.out_channels, s.out_h, s.out_w};
  return ctx.GetOutput(0, dims).GetTensorMutableData<float>();
}

// Runs `body`, turning exceptions into an ORT status.
template <typename Body>
OrtStatusPtr StatusFrom(Body&& body) {
  try {
    body();
    return nullptr;
  } catch (const Ort::Exception& e) {
    return Ort::Status(e.what(), e.GetOrtErrorCode()).release();
  } catch (const std::exception& e) {
    return Ort::Status(e.what(), ORT_FAIL).release();
  }
}

// Op definition for kernel class TKernel, which is built from (OrtKernelInfo*, OpForm) and implements
// void Compute(Ort::KernelContext&). `provider` is null for the CPU EP.
template <typename TKernel>
struct AdderConvOp : Ort::CustomOpBase<AdderConvOp<TKernel>, TKernel, true> {
  AdderConvOp(OpForm form, const char* provider) : form_(form), provider_(provider) {}

  const char* GetName() const { return form_ == OpForm::kPlain ? "AdderConv" : "FusedAdderConv"; }
  const char* GetExecutionProviderType() const { return provider_; }

  size_t GetInputTypeCount() const { return form_ == OpForm::kPlain ? 3 : 4; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return (form_ == OpForm::kPlain && index == 2) ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return StatusFrom([&] { *kernel = new TKernel(info, form_); });
  }

 private:
  OpForm form_;
  const char* provider_;
};

// Common state of both kernels: the op's attributes and form.
class AdderConvKernelBase {
 public:
  AdderConvKernelBase(const OrtKernelInfo* info, OpForm form)
      : attrs_(ReadAttributes(info)), form_(form), relu_(form == OpForm::kFused && ReadRelu(info)) {}

 protected:
  ConvAttributes attrs_;
  OpForm form_;
  bool relu_;
};

}  // namespace adderconvert
