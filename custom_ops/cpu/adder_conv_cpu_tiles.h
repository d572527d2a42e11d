// Register-blocked tile kernels, compiled once per instruction set (adder_conv_cpu_tiles.inc built by
// cpu/tiles_<isa>.cc; cpu/isa.h chooses).
// They only touch raw arrays, so no inline function built for a wider ISA can leak into other code.
#pragma once

#include <cstdint>

namespace adderconvert::cpu {

// Rows of W (output channels) that one min_sum register block handles; taps per clamp_dot block vary.
constexpr int64_t kRowsPerBlock = 4;

// Channels that the depthwise kernel sums side by side: x and w hold kChannelBlock consecutive channels per tap.
constexpr int64_t kChannelBlock = 16;

template <typename T>
struct TileKernels {
  const char* isa;
  int64_t columns;  // output positions per tile (NR)
  // out[o][n] = sum_k min(x[k][n], w[o][k]) for o < rows. x is packed taps x NR; w is packed in
  // blocks of kRowsPerBlock rows ([block][k][row]) followed by the remaining rows one by one ([row][k]).
  void (*min_sum)(const T* x, const T* w_packed, int64_t taps, int64_t rows, T* out);
  // min_sum for one column, for tiles of a few columns: out[o * out_stride] = sum_k min(x[k], w[o][k]),
  // with x given as x_rep, each tap kRowsPerBlock times in a row, so that it lines up with w's row blocks.
  void (*min_sum_column)(const T* x_rep, const T* w_packed, int64_t taps, int64_t rows, T* out, int64_t out_stride);
  // out[k][n] = sum_o clamp(wt[k][o] - x[k][n], -1, 1) * g[o][n]; x is taps x NR, g is rows x NR.
  void (*clamp_dot)(const T* x, const T* wt, const T* g, int64_t taps, int64_t rows, T* out);
  // For convs of one input channel per group: out[p * kChannelBlock + c] = sum_k |x[offsets[k] + p * step + c] -
  // w[k * kChannelBlock + c]| for p < positions, x and w channel-minor (kChannelBlock channels per position or tap).
  void (*abs_sum_channels)(const T* x, const int64_t* offsets, int64_t step, const T* w, int64_t taps,
                           int64_t positions, T* out);
};

}  // namespace adderconvert::cpu
