// CPU QuantizedAdderConv forward (see quantized_adder_conv.h for the arithmetic).
//
// X is quantised into a padded byte image in planes of 8 channels ([group][octet][H + pads][W + pads][8]; a
// group's channels past its last whole octet are 0 bytes, the spatial padding holds x_zero_point). Where a
// group has whole octets of channels, or the kernel is 1x1, the micro-kernels read each tap's channels in
// place; otherwise (depthwise, a 3-channel stem) every output pixel's taps are first copied into one
// contiguous column, so that octets do not fill with padding. The epilogue runs in the micro-kernels.
#pragma once

#include <cstdint>

#include "adder_conv.h"
#include "cpu/adder_conv_cpu.h"
#include "quantized_adder_conv.h"

namespace adderconvert::cpu {

// y (N, M, Ho, Wo) = epilogue(S) with the epilogue's scale = alpha and shift = beta, both required. `shape` must
// come from ResolveQuantizedShape and `quantization` pass CheckQuantization. `cache`, when given, keeps W's
// layout across calls (one layout: W's shape fixes it).
void QuantizedAdderConvForward(const ConvShape& shape, const float* x, const uint8_t* w,
                               const QuantizedAttributes& quantization, const Epilogue<float>& epilogue, float* y,
                               const ParallelFor& parallel, WeightCache* cache = nullptr);

// Name of the instruction set the quantised micro-kernels were dispatched to (cpu/isa.h), or the error message
// when ADDERCONVERT_CPU_ISA holds an unknown value.
const char* QuantizedKernelIsa();

}  // namespace adderconvert::cpu
