// ONNX Runtime glue shared by every op form (AdderConv, FusedAdderConv, QuantizedAdderConv) and provider: the op
// definitions, attribute parsing, the per-channel epilogue inputs and input checks, with errors that name the op.
// Errors come back to ORT as statuses (CreateKernelV2/ComputeV2), never as crashes.
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
#include "quantized_adder_conv.h"

namespace adderconvert {

constexpr const char* kDomain = "com.adderconvert";

// AdderConv(X, W, B?), FusedAdderConv(X, W, scale, shift) with attribute relu, and
// QuantizedAdderConv(X, W uint8, alpha, beta) with attributes x_scale, x_zero_point and relu.
enum class OpForm { kPlain, kFused, kQuantized };

// What tells the forms apart: the inputs after W fill the epilogue's scale and shift (adder_conv.h).
struct OpSpec {
  const char* name;
  ONNXTensorElementDataType w_type;
  const char* scale_input;  // its name, or null where the form has none
  const char* shift_input;
  bool optional_epilogue;  // the epilogue inputs may be absent (AdderConv's B)
  bool strict_relu;        // relu must be 0 or 1 (QuantizedAdderConv), else any non-zero value means 1
};

inline const OpSpec& SpecOf(OpForm form) {
  static const OpSpec specs[] = {
      {"AdderConv", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, nullptr, "B", true, false},
      {"FusedAdderConv", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "scale", "shift", false, false},
      {"QuantizedAdderConv", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, "alpha", "beta", false, true},
  };
  return specs[static_cast<int>(form)];
}

[[noreturn]] inline void Refuse(const OpSpec& op, const std::string& message) {
  throw Ort::Exception(std::string(op.name) + ": " + message, ORT_INVALID_ARGUMENT);
}

// Optional attributes keep their default where absent.
template <typename T>
bool ReadAttribute(const Ort::ConstKernelInfo& info, const char* name, T* out) {
  try {
    *out = info.GetAttribute<T>(name);
    return true;
  } catch (const Ort::Exception&) {
    return false;
  }
}

inline ConvAttributes ReadConvAttributes(const Ort::ConstKernelInfo& info, const OpSpec& op) {
  ConvAttributes attrs;
  auto read = [&](const char* name, int64_t* out, size_t count) {
    std::vector<int64_t> values;
    try {
      values = info.GetAttributes<int64_t>(name);
    } catch (const Ort::Exception&) {
      return;  // absent: keep the default
    }
    if (values.size() != count) {
      Refuse(op, std::string("attribute '") + name + "' must have " + std::to_string(count) + " values, got " +
                     std::to_string(values.size()));
    }
    std::copy(values.begin(), values.end(), out);
  };
  read("strides", attrs.strides, 2);
  read("pads", attrs.pads, 4);
  read("dilations", attrs.dilations, 2);
  ReadAttribute(info, "group", &attrs.group);
  return attrs;
}

// A per-channel input of shape (channels,), or null where it is absent.
inline const float* PerChannelInput(Ort::KernelContext& ctx, size_t index, int64_t channels, const OpSpec& op,
                                    const char* name) {
  if (index >= ctx.GetInputCount()) return nullptr;
  Ort::ConstValue value = ctx.GetInput(index);
  if (static_cast<const OrtValue*>(value) == nullptr) return nullptr;
  const std::vector<int64_t> dims = value.GetTensorTypeAndShapeInfo().GetShape();
  if (dims.size() != 1 || dims[0] != channels) {
    std::string got;
    for (int64_t d : dims) got += (got.empty() ? "" : ", ") + std::to_string(d);
    Refuse(op, std::string(name) + " must have shape (" + std::to_string(channels) + ",) matching W.shape[0], got (" +
                   got + ")");
  }
  return value.GetTensorData<float>();
}

// Inputs of one call, checked against each other; shape.out_* give Y's size. w points at float or uint8 data.
struct OpInputs {
  ConvShape shape;
  const float* x = nullptr;
  const void* w = nullptr;
  Epilogue<float> epilogue;
};

// What every kernel reads once from its node: the form, the attributes and whether W is a constant initializer.
class AdderConvKernelBase {
 public:
  AdderConvKernelBase(const OrtKernelInfo* info, OpForm form) : form_(form), op_(SpecOf(form)) {
    Ort::ConstKernelInfo kinfo(info);
    attrs_ = ReadConvAttributes(kinfo, op_);
    const bool quantized = form == OpForm::kQuantized;
    if (quantized && !ReadAttribute(kinfo, "x_scale", &quantization_.x_scale)) {
      Refuse(op_, "attribute 'x_scale' (float) is required");
    }
    if (quantized) ReadAttribute(kinfo, "x_zero_point", &quantization_.x_zero_point);
    int64_t relu = 0;
    if (op_.scale_input != nullptr) ReadAttribute(kinfo, "relu", &relu);  // the forms with a scale have relu
    if (op_.strict_relu && relu != 0 && relu != 1) {
      Refuse(op_, "attribute 'relu' must be 0 or 1, got " + std::to_string(relu));
    }
    relu_ = relu != 0;
    const std::string error = quantized ? CheckQuantization(quantization_.x_scale, quantization_.x_zero_point) : "";
    if (!error.empty()) throw Ort::Exception(std::string(error), ORT_INVALID_ARGUMENT);
    int is_constant = 0;
    const Ort::ConstValue w = kinfo.GetTensorConstantInput(1, &is_constant);
    if (is_constant != 0 && static_cast<const OrtValue*>(w) != nullptr) constant_w_ = w.GetTensorRawData();
  }

 protected:
  OpInputs ReadInputs(Ort::KernelContext& ctx) const {
    OpInputs in;
    Ort::ConstValue x = ctx.GetInput(0);
    Ort::ConstValue w = ctx.GetInput(1);
    const std::vector<int64_t> x_dims = x.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> w_dims = w.GetTensorTypeAndShapeInfo().GetShape();
    const std::string error =
        form_ == OpForm::kQuantized
            ? ResolveQuantizedShape(x_dims.data(), x_dims.size(), w_dims.data(), w_dims.size(), attrs_, &in.shape)
            : ResolveShape(x_dims.data(), x_dims.size(), w_dims.data(), w_dims.size(), attrs_, &in.shape, op_.name);
    if (!error.empty()) throw Ort::Exception(std::string(error), ORT_INVALID_ARGUMENT);
    in.x = x.GetTensorData<float>();
    in.w = w.GetTensorRawData();
    const int64_t channels = in.shape.out_channels;
    const size_t first = 2;  // the epilogue inputs follow X and W
    size_t index = first;
    if (op_.scale_input != nullptr) in.epilogue.scale = PerChannelInput(ctx, index++, channels, op_, op_.scale_input);
    in.epilogue.shift = PerChannelInput(ctx, index, channels, op_, op_.shift_input);
    if (!op_.optional_epilogue && (in.epilogue.scale == nullptr || in.epilogue.shift == nullptr)) {
      Refuse(op_, std::string(op_.scale_input) + " and " + op_.shift_input + " are required");
    }
    in.epilogue.relu = relu_;
    return in;
  }

  // Whether `w` is the constant initializer, whose layouts a kernel may keep across calls.
  bool IsConstantW(const void* w) const { return constant_w_ != nullptr && w == constant_w_; }

  OpForm form_;
  const OpSpec& op_;
  ConvAttributes attrs_;
  bool relu_ = false;
  QuantizedAttributes quantization_;  // QuantizedAdderConv only
  const void* constant_w_ = nullptr;
};

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

// Op definition of one form for kernel class TKernel, which is built from (OrtKernelInfo*, OpForm) and implements
// OrtStatusPtr ComputeV2(OrtKernelContext*). `provider` is null for the CPU EP.
template <typename TKernel>
struct AdderConvOp : Ort::CustomOpBase<AdderConvOp<TKernel>, TKernel, true> {
  AdderConvOp(OpForm form, const char* provider) : form_(form), provider_(provider) {}

  const char* GetName() const { return SpecOf(form_).name; }
  const char* GetExecutionProviderType() const { return provider_; }

  size_t GetInputTypeCount() const { return SpecOf(form_).scale_input != nullptr ? 4 : 3; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 1 ? SpecOf(form_).w_type : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index >= 2 && SpecOf(form_).optional_epilogue ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
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

}  // namespace adderconvert
