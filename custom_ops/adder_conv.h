// Shapes and attributes of the AdderConv op, shared by the CPU and CUDA kernels and the C API.
//
// Y[n, m, h, w] = -sum_{c, i, j} |Xpad[n, g*Cg + c, h*sh + i*dh, w*sw + j*dw] - W[m, c, i, j]|
// with zero padding (a padded tap contributes -|W|), g = m / (M / group), Cg = C / group.
// Every form then applies the per-channel epilogue below: AdderConv adds B, FusedAdderConv applies a folded
// BatchNorm and an optional ReLU, QuantizedAdderConv (quantized_adder_conv.h) its alpha, beta and ReLU.
#pragma once

#include <cstdint>
#include <string>

#ifdef __CUDACC__
#define ADDERCONVERT_HOST_DEVICE __host__ __device__
#else
#define ADDERCONVERT_HOST_DEVICE
#endif

namespace adderconvert {

struct ConvAttributes {
  int64_t strides[2] = {1, 1};
  int64_t pads[4] = {0, 0, 0, 0};  // top, left, bottom, right (ONNX order: x1_begin, x2_begin, x1_end, x2_end)
  int64_t dilations[2] = {1, 1};
  int64_t group = 1;
};

struct ConvShape {
  int64_t batch = 0, in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, kernel_h = 0, kernel_w = 0;
  int64_t out_h = 0, out_w = 0;
  ConvAttributes attrs;

  ADDERCONVERT_HOST_DEVICE int64_t InPerGroup() const { return in_channels / attrs.group; }
  ADDERCONVERT_HOST_DEVICE int64_t OutPerGroup() const { return out_channels / attrs.group; }
  ADDERCONVERT_HOST_DEVICE int64_t Taps() const { return InPerGroup() * kernel_h * kernel_w; }
  ADDERCONVERT_HOST_DEVICE int64_t Positions() const { return out_h * out_w; }
};

// Per-output-channel epilogue of the sum S: y = scale[m] * S + shift[m], then max(y, 0) if relu (NaN stays NaN);
// a null scale is 1, a null shift 0. AdderConv: shift = B; FusedAdderConv: scale, shift; QuantizedAdderConv:
// scale = alpha, shift = beta.
template <typename T>
struct Epilogue {
  const T* scale = nullptr;
  const T* shift = nullptr;
  bool relu = false;
};

// Checks attributes and the shapes of X (N, C, H, W) and W (M, C/group, kH, kW) and fills `shape`.
// Returns an empty string when they are valid, else a message, starting with the op's name, saying what is wrong.
inline std::string ResolveShape(const int64_t* x_dims, size_t x_rank, const int64_t* w_dims, size_t w_rank,
                                const ConvAttributes& attrs, ConvShape* shape, const char* op = "AdderConv") {
  const std::string name = std::string(op) + ": ";
  if (x_rank != 4) return name + "X must be 4-D (N, C, H, W), got rank " + std::to_string(x_rank);
  if (w_rank != 4) return name + "W must be 4-D (M, C/group, kH, kW), got rank " + std::to_string(w_rank);
  for (size_t i = 0; i < 4; ++i) {
    if (x_dims[i] < 0 || w_dims[i] <= 0) return name + "negative or zero dimension in X or W";
  }
  for (int i = 0; i < 2; ++i) {
    if (attrs.strides[i] <= 0) return name + "strides must be positive";
    if (attrs.dilations[i] <= 0) return name + "dilations must be positive";
  }
  for (int i = 0; i < 4; ++i) {
    if (attrs.pads[i] < 0) return name + "pads must be non-negative";
  }
  const int64_t group = attrs.group;
  if (group <= 0) return name + "group must be positive";
  if (x_dims[1] % group != 0 || w_dims[0] % group != 0) {
    return name + "channels (" + std::to_string(x_dims[1]) + " in, " + std::to_string(w_dims[0]) +
           " out) must be divisible by group " + std::to_string(group);
  }
  if (w_dims[1] * group != x_dims[1]) {
    return name + "X has " + std::to_string(x_dims[1]) + " channels but W expects " +
           std::to_string(w_dims[1] * group) + " (W.shape[1] * group)";
  }
  const int64_t eff_h = attrs.dilations[0] * (w_dims[2] - 1) + 1;
  const int64_t eff_w = attrs.dilations[1] * (w_dims[3] - 1) + 1;
  const int64_t padded_h = x_dims[2] + attrs.pads[0] + attrs.pads[2];
  const int64_t padded_w = x_dims[3] + attrs.pads[1] + attrs.pads[3];
  if (eff_h > padded_h || eff_w > padded_w) {
    return name + "kernel (" + std::to_string(eff_h) + "x" + std::to_string(eff_w) +
           " with dilation) is larger than the padded input (" + std::to_string(padded_h) + "x" +
           std::to_string(padded_w) + ")";
  }
  shape->batch = x_dims[0];
  shape->in_channels = x_dims[1];
  shape->in_h = x_dims[2];
  shape->in_w = x_dims[3];
  shape->out_channels = w_dims[0];
  shape->kernel_h = w_dims[2];
  shape->kernel_w = w_dims[3];
  shape->out_h = (padded_h - eff_h) / attrs.strides[0] + 1;
  shape->out_w = (padded_w - eff_w) / attrs.strides[1] + 1;
  shape->attrs = attrs;
  return {};
}

}  // namespace adderconvert
