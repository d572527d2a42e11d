// Micro-kernels of the quantised AdderConv, one set per instruction set (quantized_tiles_*.cc), chosen at
// run time. They only touch raw arrays, so no inline function built for a wider ISA leaks into other code.
//
// Bytes come in octets: 8 taps of one output pixel (8 input channels of one kernel tap, in place in the
// quantised image, or 8 bytes of an explicit column) and, for W, 8 output channels x 8 taps = 64 bytes,
// the operands of one VPSADBW lane each. Taps added to fill an octet hold 0 in both x and W.
#pragma once

#include <cstdint>

namespace adderconvert::cpu {

constexpr int64_t kOctet = 8;

// S for `count` output pixels x 8 * channel_octets output channels of one group:
//   out[p * out_stride + 8 * q + l] = sum over t < taps, c < octets, b < 8 of
//       |pixels[p][tap_offsets[t] + 8 * c + b] - w[q * w_stride + (t * octets + c) * 64 + 8 * l + b]|
struct SadTile {
  const uint8_t* const* pixels;
  int64_t count;
  const int64_t* tap_offsets;
  int64_t taps;
  int64_t octets;  // per tap
  const uint8_t* w;
  int64_t w_stride;  // bytes between octets of output channels
  int64_t channel_octets;
  int32_t* out;
  int64_t out_stride;
};

struct QuantizedTileKernels {
  const char* isa;
  void (*sad)(const SadTile& tile);
  // out[p * out_stride + c] = QuantizeValue(x[c * channel_stride + p]) for p < count, c < channels (1..8);
  // bytes c in [channels, 8) are 0.
  void (*quantize_octet)(const float* x, int64_t channel_stride, int64_t channels, int64_t count, float inv_scale,
                         int32_t zero_point, uint8_t* out, int64_t out_stride);
  // y[m * y_stride + p] = relu?(fmaf(alpha[m], (float)s[p * s_stride + m], beta[m])) for m < channels, p < count.
  void (*epilogue)(const int32_t* s, int64_t s_stride, int64_t count, int64_t channels, const float* alpha,
                   const float* beta, bool relu, float* y, int64_t y_stride);
};

QuantizedTileKernels QuantizedTileKernelsAvx512();
QuantizedTileKernels QuantizedTileKernelsAvx2();
QuantizedTileKernels QuantizedTileKernelsGeneric();

}  // namespace adderconvert::cpu
