#include "adder_conv_impl.cuh"

namespace adderconvert::cuda {
namespace {

// One block computes kBlockRows output channels x kBlockCols output positions (flattened over the
// batch) of one group. Each step stages kStepTaps taps of W and of the gathered input in shared
// memory; each thread accumulates a kThreadRows x kThreadCols register tile.
constexpr int kBlockRows = 64;
constexpr int kBlockCols = 64;
constexpr int kStepTaps = 16;
constexpr int kThreadRows = 4;
constexpr int kThreadCols = 4;
constexpr int kThreads = (kBlockRows / kThreadRows) * (kBlockCols / kThreadCols);

__global__ void __launch_bounds__(kThreads)
    AdderConvForwardKernel(ConvShape s, const float* __restrict__ x, const float* __restrict__ w,
                           Epilogue<float> e, float* __restrict__ y) {
  __shared__ float w_tile[kStepTaps][kBlockRows];
  __shared__ float x_tile[kStepTaps][kBlockCols];

  const int64_t taps = s.Taps(), rows = s.OutPerGroup(), positions = s.Positions();
  const int64_t columns = s.batch * positions;
  const int64_t kernel_hw = s.kernel_h * s.kernel_w, in_hw = s.in_h * s.in_w;
  const int64_t g = blockIdx.z;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kBlockRows;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kBlockCols;
  const int tid = threadIdx.x;
  const int tcol = tid % (kBlockCols / kThreadCols), trow = tid / (kBlockCols / kThreadCols);

  // The input columns this thread gathers stay the same for every step: precompute their origins.
  constexpr int kLoadsPerThread = kStepTaps * kBlockCols / kThreads;
  const int load_col = tid % kBlockCols;
  const int load_tap = tid / kBlockCols;  // plus i * (kThreads / kBlockCols)
  const int64_t col = col0 + load_col;
  const bool col_valid = col < columns;
  const int64_t img = col_valid ? col / positions : 0, pos = col_valid ? col % positions : 0;
  const int64_t ih0 = (pos / s.out_w) * s.attrs.strides[0] - s.attrs.pads[0];
  const int64_t iw0 = (pos % s.out_w) * s.attrs.strides[1] - s.attrs.pads[1];
  const float* x_img = x + (img * s.in_channels + g * s.InPerGroup()) * in_hw;
  const float* w_group = w + g * rows * taps;

  float acc[kThreadRows][kThreadCols] = {};
  for (int64_t k0 = 0; k0 < taps; k0 += kStepTaps) {
    for (int i = 0; i < kStepTaps * kBlockRows / kThreads; ++i) {
      const int idx = tid + i * kThreads;
      const int r = idx / kStepTaps, kk = idx % kStepTaps;
      const int64_t row = row0 + r, k = k0 + kk;
      w_tile[kk][r] = (row < rows && k < taps) ? w_group[row * taps + k] : 0.f;
    }
    for (int i = 0; i < kLoadsPerThread; ++i) {
      const int kk = load_tap + i * (kThreads / kBlockCols);
      const int64_t k = k0 + kk;
      float v = 0.f;
      if (col_valid && k < taps) {
        const int64_t c = k / kernel_hw, rem = k % kernel_hw;
        const int64_t ih = ih0 + (rem / s.kernel_w) * s.attrs.dilations[0];
        const int64_t iw = iw0 + (rem % s.kernel_w) * s.attrs.dilations[1];
        if (ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w) v = x_img[c * in_hw + ih * s.in_w + iw];
      }
      x_tile[kk][load_col] = v;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kStepTaps; ++kk) {
      float wr[kThreadRows], xr[kThreadCols];
#pragma unroll
      for (int i = 0; i < kThreadRows; ++i) wr[i] = w_tile[kk][trow * kThreadRows + i];
#pragma unroll
      for (int j = 0; j < kThreadCols; ++j) xr[j] = x_tile[kk][tcol * kThreadCols + j];
#pragma unroll
      for (int i = 0; i < kThreadRows; ++i) {
#pragma unroll
        for (int j = 0; j < kThreadCols; ++j) acc[i][j] += fabsf(wr[i] - xr[j]);
      }
    }
    __syncthreads();
  }

  for (int i = 0; i < kThreadRows; ++i) {
    const int64_t row = row0 + trow * kThreadRows + i;
    if (row >= rows) continue;
    const int64_t m = g * rows + row;
    const float bias = e.bias ? e.bias[m] : 0.f;
    const float scale = e.scale ? e.scale[m] : 1.f;
    const float shift = e.shift ? e.shift[m] : 0.f;
    for (int j = 0; j < kThreadCols; ++j) {
      const int64_t c = col0 + tcol * kThreadCols + j;
      if (c >= columns) continue;
      float v = scale * (bias - acc[i][j]) + shift;
      if (e.relu) v = fmaxf(v, 0.f);
      y[((c / positions) * s.out_channels + m) * positions + c % positions] = v;
    }
  }
}

}  // namespace

cudaError_t LaunchAdderConvForward(cudaStream_t stream, const ConvShape& s, const float* x, const float* w,
                                   const Epilogue<float>& epilogue, float* y) {
  const int64_t columns = s.batch * s.Positions();
  if (columns == 0) return cudaSuccess;
  const int64_t col_blocks = (columns + kBlockCols - 1) / kBlockCols;
  const int64_t row_blocks = (s.OutPerGroup() + kBlockRows - 1) / kBlockRows;
  if (col_blocks > 0x7fffffff || row_blocks > 65535 || s.attrs.group > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(row_blocks),
                  static_cast<unsigned>(s.attrs.group));
  AdderConvForwardKernel<<<grid, kThreads, 0, stream>>>(s, x, w, epilogue, y);
  return cudaGetLastError();
}

}  // namespace adderconvert::cuda
