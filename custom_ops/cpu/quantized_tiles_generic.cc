// Quantised AdderConv micro-kernels in portable C++ (the reference the vector paths are tested against).
#include <cmath>
#include <cstdlib>

#include "cpu/quantized_tiles.h"
#include "quantized_adder_conv.h"

namespace adderconvert::cpu {
namespace {

void Sad(const SadTile& t) {
  for (int64_t p = 0; p < t.count; ++p) {
    for (int64_t q = 0; q * kOctet < t.channels; ++q) {
      int32_t acc[kOctet] = {};
      const uint8_t* w = t.w + q * t.w_stride;
      for (int64_t k = 0; k < t.taps; ++k) {
        const uint8_t* x = t.pixels[p] + t.tap_offsets[k];
        for (int64_t c = 0; c < t.octets; ++c, w += kOctet * kOctet) {
          for (int64_t l = 0; l < kOctet; ++l) {
            for (int64_t b = 0; b < kOctet; ++b) {
              acc[l] += std::abs(int32_t{x[c * t.octet_stride + b]} - w[l * kOctet + b]);
            }
          }
        }
      }
      for (int64_t l = 0; l < kOctet && q * kOctet + l < t.channels; ++l) {
        const int64_t m = q * kOctet + l;
        const float v = std::fma(t.alpha[m], static_cast<float>(acc[l]), t.beta[m]);
        t.y[m * t.y_stride + p] = t.relu && v < 0.0f ? 0.0f : v;
      }
    }
  }
}

void SadLanes(const SadTile& t) {
  for (int64_t p = 0; p < t.count; ++p) {
    for (int64_t m = 0; m < t.channels; ++m) {
      int32_t acc = 0;
      for (int64_t c = 0; c < t.octets; ++c) {
        const uint8_t* x = t.pixels[p] + c * t.octet_stride + m * kOctet;
        const uint8_t* w = t.w + c * kOctet * kOctet + m * kOctet;
        for (int64_t b = 0; b < kOctet; ++b) acc += std::abs(int32_t{x[b]} - w[b]);
      }
      const float v = std::fma(t.alpha[m], static_cast<float>(acc), t.beta[m]);
      t.y[m * t.y_stride + p] = t.relu && v < 0.0f ? 0.0f : v;
    }
  }
}

void QuantizeOctet(const float* x, int64_t channel_stride, int64_t channels, int64_t count, float inv_scale,
                   int32_t zero_point, uint8_t* out) {
  for (int64_t p = 0; p < count; ++p) {
    for (int64_t c = 0; c < kOctet; ++c) {
      out[p * kOctet + c] = c < channels ? QuantizeValue(x[c * channel_stride + p], inv_scale, zero_point) : 0;
    }
  }
}

}  // namespace

QuantizedTileKernels QuantizedTileKernelsGeneric() { return {"generic", &Sad, &SadLanes, &QuantizeOctet}; }

}  // namespace adderconvert::cpu
