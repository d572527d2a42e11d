// Quantised AdderConv micro-kernels in portable C++ (the reference the vector paths are tested against).
#include <cmath>
#include <cstdlib>

#include "cpu/quantized_tiles.h"
#include "quantized_adder_conv.h"

namespace adderconvert::cpu {
namespace {

void Sad(const SadTile& t) {
  for (int64_t p = 0; p < t.count; ++p) {
    for (int64_t q = 0; q < t.channel_octets; ++q) {
      int32_t acc[kOctet] = {};
      const uint8_t* w = t.w + q * t.w_stride;
      for (int64_t k = 0; k < t.taps; ++k) {
        const uint8_t* x = t.pixels[p] + t.tap_offsets[k];
        for (int64_t c = 0; c < t.octets; ++c, w += kOctet * kOctet) {
          for (int64_t l = 0; l < kOctet; ++l) {
            for (int64_t b = 0; b < kOctet; ++b) acc[l] += std::abs(int32_t{x[c * kOctet + b]} - w[l * kOctet + b]);
          }
        }
      }
      for (int64_t l = 0; l < kOctet; ++l) t.out[p * t.out_stride + q * kOctet + l] = acc[l];
    }
  }
}

void QuantizeOctet(const float* x, int64_t channel_stride, int64_t channels, int64_t count, float inv_scale,
                   int32_t zero_point, uint8_t* out, int64_t out_stride) {
  for (int64_t p = 0; p < count; ++p) {
    uint8_t* o = out + p * out_stride;
    for (int64_t c = 0; c < kOctet; ++c) {
      o[c] = c < channels ? QuantizeValue(x[c * channel_stride + p], inv_scale, zero_point) : 0;
    }
  }
}

void Epilogue(const int32_t* s, int64_t s_stride, int64_t count, int64_t channels, const float* alpha,
              const float* beta, bool relu, float* y, int64_t y_stride) {
  for (int64_t m = 0; m < channels; ++m) {
    for (int64_t p = 0; p < count; ++p) {
      const float v = std::fma(alpha[m], static_cast<float>(s[p * s_stride + m]), beta[m]);
      y[m * y_stride + p] = relu && v < 0.0f ? 0.0f : v;
    }
  }
}

}  // namespace

QuantizedTileKernels QuantizedTileKernelsGeneric() { return {"generic", &Sad, &QuantizeOctet, &Epilogue}; }

}  // namespace adderconvert::cpu
