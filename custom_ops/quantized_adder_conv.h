// The QuantizedAdderConv op (com.adderconvert, since version 1): an AdderConv on uint8 integers that share
// one grid, the layer's scale and zero point.
//
//   inputs   X float32 (N, C, H, W); W uint8 (M, C/group, kH, kW); alpha, beta float32 (M)
//   attrs    strides, pads, dilations, group as AdderConv; x_scale (float > 0, 1/x_scale finite);
//            x_zero_point (int 0..255, default 0); relu (0 or 1, default 0)
//   qx       = clamp(nearbyintf(x * (1.0f / x_scale)) + x_zero_point, 0, 255), round half to even (the default
//              rounding mode); NaN gives x_zero_point, +inf 255, -inf 0
//   S        = sum over the taps of |qx - W|, exact in integers; padded taps read qx = x_zero_point
//   Y        = fmaf(alpha[m], (float)S, beta[m]) (one rounding), then max(Y, 0) if relu (NaN stays NaN)
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "adder_conv.h"

namespace adderconvert {

// The grid of X and W (the attributes x_scale and x_zero_point).
struct QuantizedAttributes {
  float x_scale = 1.0f;
  int64_t x_zero_point = 0;
};

// Empty when the quantisation attributes are valid, else what is wrong.
inline std::string CheckQuantization(float x_scale, int64_t x_zero_point) {
  if (!(x_scale > 0.0f) || !std::isfinite(x_scale) || !std::isfinite(1.0f / x_scale)) {
    return "QuantizedAdderConv: x_scale must be positive and finite with 1/x_scale finite, got " +
           std::to_string(x_scale);
  }
  if (x_zero_point < 0 || x_zero_point > 255) {
    return "QuantizedAdderConv: x_zero_point must be in 0..255, got " + std::to_string(x_zero_point);
  }
  return {};
}

// ResolveShape for the quantised op, plus a bound that keeps S within int32.
inline std::string ResolveQuantizedShape(const int64_t* x_dims, size_t x_rank, const int64_t* w_dims, size_t w_rank,
                                         const ConvAttributes& attrs, ConvShape* shape) {
  std::string error = ResolveShape(x_dims, x_rank, w_dims, w_rank, attrs, shape, "QuantizedAdderConv");
  if (!error.empty()) return error;
  // Taps padded to whole octets; 255 per tap at most.
  const int64_t taps = (shape->InPerGroup() + 7) / 8 * 8 * shape->kernel_h * shape->kernel_w;
  if (taps > std::numeric_limits<int32_t>::max() / 255) {
    return "QuantizedAdderConv: too many taps (" + std::to_string(taps) + ") for exact int32 sums";
  }
  return {};
}

// The quantised value of x; inv_scale = 1.0f / x_scale. Clamping to [-zero_point, 255 - zero_point] before
// rounding gives the same integers as rounding and then clamping (the bounds are integers).
inline uint8_t QuantizeValue(float x, float inv_scale, int32_t zero_point) {
  float v = x * inv_scale;
  if (std::isnan(v)) return static_cast<uint8_t>(zero_point);
  v = std::fmin(std::fmax(v, static_cast<float>(-zero_point)), static_cast<float>(255 - zero_point));
  return static_cast<uint8_t>(static_cast<int32_t>(std::nearbyint(v)) + zero_point);
}

}  // namespace adderconvert
