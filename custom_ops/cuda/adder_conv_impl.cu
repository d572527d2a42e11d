#include <algorithm>

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
// The forward sums the taps of kFoldSteps steps (64 taps) into a partial sum and adds the partials to
// the output's total: one float32 accumulator over all taps (up to 4,608) loses about 8x more to
// rounding. All terms are >= 0 or NaN, so infinities and NaN come out as in a direct sum.
constexpr int kFoldSteps = 4;

// Input value of tap k (channel, kernel row, kernel column) for the output whose window starts at
// (ih0, iw0) in image x_img; 0 in the padding.
__device__ __forceinline__ float LoadTap(const ConvShape& s, const float* x_img, int64_t k, int64_t ih0, int64_t iw0) {
  const int64_t kernel_hw = s.kernel_h * s.kernel_w;
  const int64_t c = k / kernel_hw, rem = k % kernel_hw;
  const int64_t ih = ih0 + (rem / s.kernel_w) * s.attrs.dilations[0];
  const int64_t iw = iw0 + (rem % s.kernel_w) * s.attrs.dilations[1];
  const bool inside = ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w;
  return inside ? x_img[(c * s.in_h + ih) * s.in_w + iw] : 0.f;
}

// clamp(d, -1, 1) that keeps NaN (fminf/fmaxf would turn it into a bound), as HardTanh does.
__device__ __forceinline__ float HardTanh(float d) { return d < -1.f ? -1.f : (d > 1.f ? 1.f : d); }

// acc += partial, then partial = 0.
__device__ __forceinline__ void FoldPartial(float (&acc)[kThreadRows][kThreadCols],
                                            float (&partial)[kThreadRows][kThreadCols]) {
#pragma unroll
  for (int i = 0; i < kThreadRows; ++i) {
#pragma unroll
    for (int j = 0; j < kThreadCols; ++j) {
      acc[i][j] += partial[i][j];
      partial[i][j] = 0.f;
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    AdderConvForwardKernel(ConvShape s, const float* __restrict__ x, const float* __restrict__ w, Epilogue<float> e,
                           float* __restrict__ y) {
  __shared__ float w_tile[kStepTaps][kBlockRows];
  __shared__ float x_tile[kStepTaps][kBlockCols];

  const int64_t taps = s.Taps(), rows = s.OutPerGroup(), positions = s.Positions();
  const int64_t columns = s.batch * positions;
  const int64_t in_hw = s.in_h * s.in_w;
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
  float partial[kThreadRows][kThreadCols] = {};
  int step = 0;
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
      x_tile[kk][load_col] = (col_valid && k < taps) ? LoadTap(s, x_img, k, ih0, iw0) : 0.f;
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
        for (int j = 0; j < kThreadCols; ++j) partial[i][j] += fabsf(wr[i] - xr[j]);
      }
    }
    __syncthreads();
    if (++step == kFoldSteps) {
      step = 0;
      FoldPartial(acc, partial);
    }
  }
  FoldPartial(acc, partial);

  for (int i = 0; i < kThreadRows; ++i) {
    const int64_t row = row0 + trow * kThreadRows + i;
    if (row >= rows) continue;
    const int64_t m = g * rows + row;
    const float scale = e.scale ? e.scale[m] : 1.f;
    const float shift = e.shift ? e.shift[m] : 0.f;
    for (int j = 0; j < kThreadCols; ++j) {
      const int64_t c = col0 + tcol * kThreadCols + j;
      if (c >= columns) continue;
      float v = fmaf(scale, -acc[i][j], shift);
      if (e.relu && v < 0.f) v = 0.f;  // NaN stays NaN
      y[((c / positions) * s.out_channels + m) * positions + c % positions] = v;
    }
  }
}

// Gradient of every gathered tap: grad_cols[g][k][col] = sum_o clamp(w[g,o,k] - x[k,col], -1, 1) * gy[g,o,col].
// A block owns kBlockRows taps x kBlockCols columns; the gathered inputs stay in registers while
// kStepTaps output channels of W and grad_y at a time pass through shared memory.
__global__ void __launch_bounds__(kThreads)
    GradColumnsKernel(ConvShape s, const float* __restrict__ x, const float* __restrict__ w,
                      const float* __restrict__ grad_y, float* __restrict__ grad_cols) {
  __shared__ float w_tile[kStepTaps][kBlockRows];
  __shared__ float g_tile[kStepTaps][kBlockCols];

  const int64_t taps = s.Taps(), rows = s.OutPerGroup(), positions = s.Positions();
  const int64_t columns = s.batch * positions;
  const int64_t in_hw = s.in_h * s.in_w;
  const int64_t g = blockIdx.z;
  const int64_t tap0 = static_cast<int64_t>(blockIdx.y) * kBlockRows;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kBlockCols;
  const int tid = threadIdx.x;
  const int tcol = tid % (kBlockCols / kThreadCols), ttap = tid / (kBlockCols / kThreadCols);

  float xr[kThreadRows][kThreadCols];
  for (int j = 0; j < kThreadCols; ++j) {
    const int64_t col = col0 + tcol * kThreadCols + j;
    const bool col_valid = col < columns;
    const int64_t img = col_valid ? col / positions : 0, pos = col_valid ? col % positions : 0;
    const int64_t ih0 = (pos / s.out_w) * s.attrs.strides[0] - s.attrs.pads[0];
    const int64_t iw0 = (pos % s.out_w) * s.attrs.strides[1] - s.attrs.pads[1];
    const float* x_img = x + (img * s.in_channels + g * s.InPerGroup()) * in_hw;
    for (int i = 0; i < kThreadRows; ++i) {
      const int64_t k = tap0 + ttap * kThreadRows + i;
      xr[i][j] = (col_valid && k < taps) ? LoadTap(s, x_img, k, ih0, iw0) : 0.f;
    }
  }

  const float* w_group = w + g * rows * taps;
  float acc[kThreadRows][kThreadCols] = {};
  for (int64_t o0 = 0; o0 < rows; o0 += kStepTaps) {
    for (int i = 0; i < kStepTaps * kBlockRows / kThreads; ++i) {
      const int idx = tid + i * kThreads;
      const int oo = idx / kBlockRows, kk = idx % kBlockRows;
      const int64_t o = o0 + oo, k = tap0 + kk;
      w_tile[oo][kk] = (o < rows && k < taps) ? w_group[o * taps + k] : 0.f;
    }
    for (int i = 0; i < kStepTaps * kBlockCols / kThreads; ++i) {
      const int idx = tid + i * kThreads;
      const int oo = idx / kBlockCols, cc = idx % kBlockCols;
      const int64_t o = o0 + oo, col = col0 + cc;
      float v = 0.f;
      if (o < rows && col < columns) {
        v = grad_y[((col / positions) * s.out_channels + g * rows + o) * positions + col % positions];
      }
      g_tile[oo][cc] = v;
    }
    __syncthreads();
#pragma unroll
    for (int oo = 0; oo < kStepTaps; ++oo) {
      float wr[kThreadRows], gr[kThreadCols];
#pragma unroll
      for (int i = 0; i < kThreadRows; ++i) wr[i] = w_tile[oo][ttap * kThreadRows + i];
#pragma unroll
      for (int j = 0; j < kThreadCols; ++j) gr[j] = g_tile[oo][tcol * kThreadCols + j];
#pragma unroll
      for (int i = 0; i < kThreadRows; ++i) {
#pragma unroll
        for (int j = 0; j < kThreadCols; ++j) acc[i][j] += HardTanh(wr[i] - xr[i][j]) * gr[j];
      }
    }
    __syncthreads();
  }
  for (int i = 0; i < kThreadRows; ++i) {
    const int64_t k = tap0 + ttap * kThreadRows + i;
    if (k >= taps) continue;
    for (int j = 0; j < kThreadCols; ++j) {
      const int64_t col = col0 + tcol * kThreadCols + j;
      if (col < columns) grad_cols[(g * taps + k) * columns + col] = acc[i][j];
    }
  }
}

// col2im as a gather: each input element sums the tap gradients of the outputs that read it (no atomics).
__global__ void GatherInputGradKernel(ConvShape s, const float* __restrict__ grad_cols, float* __restrict__ grad_x) {
  const int64_t total = s.batch * s.in_channels * s.in_h * s.in_w;
  const int64_t positions = s.Positions(), columns = s.batch * positions, taps = s.Taps();
  const ConvAttributes& a = s.attrs;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t iw = idx % s.in_w, ih = (idx / s.in_w) % s.in_h;
    const int64_t channel = (idx / (s.in_w * s.in_h)) % s.in_channels, img = idx / (s.in_w * s.in_h * s.in_channels);
    const int64_t g = channel / s.InPerGroup(), c = channel % s.InPerGroup();
    const float* cols = grad_cols + g * taps * columns + img * positions;
    float sum = 0.f;
    for (int64_t i = 0; i < s.kernel_h; ++i) {
      const int64_t oh_stride = ih + a.pads[0] - i * a.dilations[0];
      if (oh_stride < 0 || oh_stride % a.strides[0] != 0) continue;
      const int64_t oh = oh_stride / a.strides[0];
      if (oh >= s.out_h) continue;
      for (int64_t j = 0; j < s.kernel_w; ++j) {
        const int64_t ow_stride = iw + a.pads[1] - j * a.dilations[1];
        if (ow_stride < 0 || ow_stride % a.strides[1] != 0) continue;
        const int64_t ow = ow_stride / a.strides[1];
        if (ow >= s.out_w) continue;
        const int64_t k = (c * s.kernel_h + i) * s.kernel_w + j;
        sum += cols[k * columns + oh * s.out_w + ow];
      }
    }
    grad_x[idx] = sum;
  }
}

}  // namespace

int64_t GradColumnsSize(const ConvShape& s) { return s.attrs.group * s.Taps() * s.batch * s.Positions(); }

cudaError_t LaunchAdderConvBackwardInput(cudaStream_t stream, const ConvShape& s, const float* x, const float* w,
                                         const float* grad_y, float* grad_cols, float* grad_x) {
  const int64_t columns = s.batch * s.Positions();
  const int64_t inputs = s.batch * s.in_channels * s.in_h * s.in_w;
  if (inputs == 0) return cudaSuccess;
  if (columns == 0) return cudaMemsetAsync(grad_x, 0, inputs * sizeof(float), stream);
  const int64_t col_blocks = (columns + kBlockCols - 1) / kBlockCols;
  const int64_t tap_blocks = (s.Taps() + kBlockRows - 1) / kBlockRows;
  if (col_blocks > 0x7fffffff || tap_blocks > 65535 || s.attrs.group > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(tap_blocks),
                  static_cast<unsigned>(s.attrs.group));
  GradColumnsKernel<<<grid, kThreads, 0, stream>>>(s, x, w, grad_y, grad_cols);
  const int64_t gather_blocks = std::min<int64_t>((inputs + 255) / 256, 65535 * 8);
  GatherInputGradKernel<<<static_cast<unsigned>(gather_blocks), 256, 0, stream>>>(s, grad_cols, grad_x);
  return cudaGetLastError();
}

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
