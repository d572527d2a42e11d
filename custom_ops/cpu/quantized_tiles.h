// Micro-kernels of the quantised AdderConv, one set per instruction set (cpu/quantized_tiles.inc built by
// cpu/tiles_<isa>.cc; cpu/isa.h chooses). They only touch raw arrays, so no inline function built for a wider ISA
// leaks into other code.
//
// Bytes come in octets: 8 taps of one output pixel (8 input channels of one kernel tap, in place in the
// quantised image, whose planes hold 8 channels each, or 8 bytes of an explicit column) and, for W,
// 8 output channels x 8 taps = 64 bytes, the operands of one VPSADBW lane each. Taps added to fill an octet
// hold 0 in both x and W.
#pragma once

#include <cstdint>

namespace adderconvert::cpu {

constexpr int64_t kOctet = 8;

// The outputs of `count` output pixels (consecutive in y) x `channels` output channels of one group:
//   S[p][m] = sum over t < taps, c < octets, b < 8 of
//       |pixels[p][tap_offsets[t] + c * octet_stride + b] - w[(m / 8) * w_stride + (t * octets + c) * 64 + 8 * (m % 8)
//       + b]|
//   y[m * y_stride + p] = fmaf(alpha[m], (float)S[p][m], beta[m]), then max(y, 0) if relu (NaN stays NaN).
struct SadTile {
  const uint8_t* const* pixels;
  int64_t count;
  const int64_t* tap_offsets;
  int64_t taps;
  int64_t octets;        // per tap
  int64_t octet_stride;  // bytes between a tap's octets
  const uint8_t* w;
  int64_t w_stride;  // bytes between octets of output channels
  int64_t channels;
  const float* alpha;
  const float* beta;
  bool relu;
  float* y;
  int64_t y_stride;
};

struct QuantizedTileKernels {
  const char* isa;
  void (*sad)(const SadTile& tile);
  // The same for one octet of output channels whose x differs per lane (depthwise: a lane per group):
  //   S[p][m] = sum over c < octets, b < 8 of |pixels[p][c * octet_stride + 8 * m + b] - w[c * 64 + 8 * m + b]|
  // (taps, tap_offsets and w_stride unused; channels <= 8).
  void (*sad_lanes)(const SadTile& tile);
  // out[8 * p + c] = QuantizeValue(x[c * channel_stride + p]) for p < count, c < channels (1..8); bytes c in
  // [channels, 8) are 0.
  void (*quantize_octet)(const float* x, int64_t channel_stride, int64_t channels, int64_t count, float inv_scale,
                         int32_t zero_point, uint8_t* out);
};

}  // namespace adderconvert::cpu
