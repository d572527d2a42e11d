// CPU QuantizedAdderConv forward (see quantized_adder_conv.h for the arithmetic).
//
// X is quantised into a padded byte image in planes of 8 channels ([group][octet][H + pads][W + pads][8]; a
// group's channels past its last whole octet are 0 bytes, the spatial padding holds x_zero_point). Where a
// group has whole octets of channels, or the kernel is 1x1, the micro-kernels read each tap's channels in
// place; otherwise (depthwise, a 3-channel stem) every output pixel's taps are first copied into one
// contiguous column, so that octets do not fill with padding. The epilogue runs in the micro-kernels.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>

#include "adder_conv.h"
#include "cpu/adder_conv_cpu.h"

namespace adderconvert::cpu {

struct QuantizedEpilogue {
  float x_scale = 1.0f;
  int32_t x_zero_point = 0;
  const float* alpha = nullptr;  // (M,)
  const float* beta = nullptr;   // (M,)
  bool relu = false;
};

// W laid out for the micro-kernels (per group, octets of output channels x octets of taps x 64 bytes).
struct QuantizedWeightLayout;

// The layout of one W that never changes (an ONNX Runtime initializer), made on first use and kept.
// Safe to share between concurrent calls; it must only ever be used with the same W.
class QuantizedWeightCache {
 public:
  QuantizedWeightCache();
  ~QuantizedWeightCache();
  QuantizedWeightCache(const QuantizedWeightCache&) = delete;
  QuantizedWeightCache& operator=(const QuantizedWeightCache&) = delete;
  std::shared_ptr<const QuantizedWeightLayout> Get(const ConvShape& shape, const uint8_t* w);

 private:
  std::mutex mutex_;
  std::shared_ptr<const QuantizedWeightLayout> layout_;
};

// y (N, M, Ho, Wo). `shape` must come from ResolveQuantizedShape and the epilogue's x_scale and zero point
// pass CheckQuantization.
void QuantizedAdderConvForward(const ConvShape& shape, const float* x, const uint8_t* w,
                               const QuantizedEpilogue& epilogue, float* y, const ParallelFor& parallel,
                               QuantizedWeightCache* cache = nullptr);

// The instruction set the quantised micro-kernels were dispatched to ("avx512ifma", "avx512", "avx2" or
// "generic"); ADDERCONVERT_CPU_ISA=avx512|avx2|generic caps it, as for the float kernels.
const char* QuantizedKernelIsa();

}  // namespace adderconvert::cpu
