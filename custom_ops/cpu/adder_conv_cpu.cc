#include "adder_conv_cpu.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "adder_conv_cpu_tiles.h"

namespace adderconvert::cpu {
namespace {

// Uses the identity |x - w| = x + w - 2 min(x, w): the inner loop is a min and an add, and the sums of
// x (per output position) and of w (per output channel) are added back in the epilogue.

// The widest instruction set this processor has; ADDERCONVERT_CPU_ISA=avx2|generic caps it (for tests).
template <typename T>
const TileKernels<T>& Tiles() {
  static const TileKernels<T> tiles = [] {
    const char* cap = std::getenv("ADDERCONVERT_CPU_ISA");
    const std::string limit = cap != nullptr ? cap : "";
    __builtin_cpu_init();
    if ((limit.empty() || limit == "avx512") && __builtin_cpu_supports("avx512f")) return TileKernelsAvx512<T>();
    if (limit != "generic" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return TileKernelsAvx2<T>();
    }
    return TileKernelsGeneric<T>();
  }();
  return tiles;
}

// Output columns that share an image and an output row: their inputs lie along one input row.
template <typename T>
struct ColumnRun {
  int64_t first, count;
  const T* image;  // first input channel of the group in this image
  int64_t ih0, iw0;
};

// Gathers the receptive fields of output columns [col0, col0 + count) of group `g` into x_packed
// (taps x nr, zero for padding and for columns past `count`) and their sums into col_sums.
template <typename T>
void PackColumns(const ConvShape& s, const T* x, int64_t g, int64_t col0, int64_t count, int64_t nr, T* x_packed,
                 T* col_sums, int64_t* y_offsets) {
  const int64_t positions = s.Positions();
  const int64_t in_hw = s.in_h * s.in_w;
  const ConvAttributes& a = s.attrs;
  thread_local std::vector<ColumnRun<T>> runs;
  runs.clear();
  for (int64_t n = 0; n < count; ++n) {
    const int64_t col = col0 + n;
    const int64_t img = col / positions, pos = col % positions;
    const int64_t oh = pos / s.out_w, ow = pos % s.out_w;
    y_offsets[n] = img * s.out_channels * positions + pos;
    if (ow == 0 || n == 0) {
      runs.push_back({n, 0, x + (img * s.in_channels + g * s.InPerGroup()) * in_hw, oh * a.strides[0] - a.pads[0],
                      ow * a.strides[1] - a.pads[1]});
    }
    ++runs.back().count;
  }
  std::fill(col_sums, col_sums + nr, T(0));
  int64_t k = 0;
  for (int64_t c = 0; c < s.InPerGroup(); ++c) {
    for (int64_t i = 0; i < s.kernel_h; ++i) {
      for (int64_t j = 0; j < s.kernel_w; ++j, ++k) {
        T* row = x_packed + k * nr;
        for (const ColumnRun<T>& run : runs) {
          T* dst = row + run.first;
          const int64_t ih = run.ih0 + i * a.dilations[0];
          if (ih < 0 || ih >= s.in_h) {
            std::fill(dst, dst + run.count, T(0));
            continue;
          }
          const T* src = run.image + c * in_hw + ih * s.in_w;
          const int64_t iw = run.iw0 + j * a.dilations[1], step = a.strides[1];
          // Columns t with 0 <= iw + t * step < in_w read the input; the others are padding.
          const int64_t lo = iw >= 0 ? 0 : std::min(run.count, (-iw + step - 1) / step);
          const int64_t hi = iw >= s.in_w ? 0 : std::min(run.count, (s.in_w - iw + step - 1) / step);
          std::fill(dst, dst + lo, T(0));
          if (step == 1) {
            std::copy(src + iw + lo, src + iw + std::max(lo, hi), dst + lo);
          } else {
            for (int64_t t = lo; t < hi; ++t) dst[t] = src[iw + t * step];
          }
          std::fill(dst + std::max(lo, hi), dst + run.count, T(0));
        }
        std::fill(row + count, row + nr, T(0));
        for (int64_t n = 0; n < nr; ++n) col_sums[n] += row[n];
      }
    }
  }
}

template <typename T>
struct ForwardJob {
  const ConvShape* shape;
  const T* x;
  const T* w_packed;     // per group, in the layout TileKernels::min_sum expects
  const double* w_sums;  // per output channel
  Epilogue<T> epilogue;
  T* y;
  int64_t tiles_per_group;
};

template <typename T>
void ForwardItem(void* data, size_t item) {
  const auto& job = *static_cast<const ForwardJob<T>*>(data);
  const ConvShape& s = *job.shape;
  const TileKernels<T>& tiles = Tiles<T>();
  const int64_t nr = tiles.columns, taps = s.Taps(), rows = s.OutPerGroup(), positions = s.Positions();
  const int64_t g = static_cast<int64_t>(item) / job.tiles_per_group;
  const int64_t col0 = (static_cast<int64_t>(item) % job.tiles_per_group) * nr;
  const int64_t count = std::min(nr, s.batch * positions - col0);

  thread_local std::vector<T> x_packed, min_sums, col_sums;
  thread_local std::vector<int64_t> y_offsets;
  x_packed.resize(taps * nr);
  min_sums.resize(rows * nr);
  col_sums.resize(nr);
  y_offsets.resize(nr);
  PackColumns(s, job.x, g, col0, count, nr, x_packed.data(), col_sums.data(), y_offsets.data());
  tiles.min_sum(x_packed.data(), job.w_packed + g * rows * taps, taps, rows, min_sums.data());

  // The epilogue runs in double: adder sums reach -10^3 while a folded BatchNorm's shift cancels most of
  // that, so one rounding at the end keeps the fused form as exact as AdderConv followed by BatchNorm.
  const Epilogue<T>& e = job.epilogue;
  for (int64_t o = 0; o < rows; ++o) {
    const int64_t m = g * rows + o;
    const double bias = e.bias ? e.bias[m] : 0.0;
    const double scale = e.scale ? e.scale[m] : 1.0;
    const double shift = (e.shift ? e.shift[m] : 0.0) + scale * (bias - job.w_sums[m]);
    const T* ms = min_sums.data() + o * nr;
    T* y = job.y + m * positions;
    for (int64_t n = 0; n < count; ++n) {
      double v = scale * (2.0 * ms[n] - col_sums[n]) + shift;
      if (e.relu && v < 0.0) v = 0.0;
      y[y_offsets[n]] = static_cast<T>(v);
    }
  }
}

// Input gradient in two passes over O(im2col) memory: (1) per (group, column tile) the gradient of
// every gathered tap, written to grad_cols (group x taps x columns); (2) per (image, group) a scatter
// of those columns back through the padding into grad_x, so no two items write the same element.
template <typename T>
struct BackwardInputJob {
  const ConvShape* shape;
  const T* x;
  const T* w_transposed;  // per group: taps x rows
  const T* grad_y;
  T* grad_cols;
  T* grad_x;
  int64_t tiles_per_group;
};

template <typename T>
void GradColumnsItem(void* data, size_t item) {
  const auto& job = *static_cast<const BackwardInputJob<T>*>(data);
  const ConvShape& s = *job.shape;
  const TileKernels<T>& tiles = Tiles<T>();
  const int64_t nr = tiles.columns, taps = s.Taps(), rows = s.OutPerGroup(), positions = s.Positions();
  const int64_t columns = s.batch * positions;
  const int64_t g = static_cast<int64_t>(item) / job.tiles_per_group;
  const int64_t col0 = (static_cast<int64_t>(item) % job.tiles_per_group) * nr;
  const int64_t count = std::min(nr, columns - col0);

  thread_local std::vector<T> x_packed, g_packed, grad_packed, col_sums;
  thread_local std::vector<int64_t> y_offsets;
  x_packed.resize(taps * nr);
  g_packed.resize(rows * nr);
  grad_packed.resize(taps * nr);
  col_sums.resize(nr);
  y_offsets.resize(nr);
  PackColumns(s, job.x, g, col0, count, nr, x_packed.data(), col_sums.data(), y_offsets.data());
  for (int64_t o = 0; o < rows; ++o) {
    const T* gy = job.grad_y + (g * rows + o) * positions;
    T* row = g_packed.data() + o * nr;
    for (int64_t n = 0; n < count; ++n) row[n] = gy[y_offsets[n]];
    std::fill(row + count, row + nr, T(0));
  }
  tiles.clamp_dot(x_packed.data(), job.w_transposed + g * taps * rows, g_packed.data(), taps, rows, grad_packed.data());
  T* out = job.grad_cols + g * taps * columns + col0;
  for (int64_t k = 0; k < taps; ++k) std::copy_n(grad_packed.data() + k * nr, count, out + k * columns);
}

template <typename T>
void ScatterItem(void* data, size_t item) {
  const auto& job = *static_cast<const BackwardInputJob<T>*>(data);
  const ConvShape& s = *job.shape;
  const ConvAttributes& a = s.attrs;
  const int64_t taps = s.Taps(), positions = s.Positions(), columns = s.batch * positions;
  const int64_t in_hw = s.in_h * s.in_w;
  const int64_t img = static_cast<int64_t>(item) / a.group, g = static_cast<int64_t>(item) % a.group;
  T* grad_x = job.grad_x + (img * s.in_channels + g * s.InPerGroup()) * in_hw;
  std::fill(grad_x, grad_x + s.InPerGroup() * in_hw, T(0));
  const T* cols = job.grad_cols + g * taps * columns + img * positions;
  int64_t k = 0;
  for (int64_t c = 0; c < s.InPerGroup(); ++c) {
    for (int64_t i = 0; i < s.kernel_h; ++i) {
      for (int64_t j = 0; j < s.kernel_w; ++j, ++k) {
        const T* gk = cols + k * columns;
        T* gx = grad_x + c * in_hw;
        for (int64_t oh = 0; oh < s.out_h; ++oh) {
          const int64_t ih = oh * a.strides[0] - a.pads[0] + i * a.dilations[0];
          if (ih < 0 || ih >= s.in_h) continue;
          for (int64_t ow = 0; ow < s.out_w; ++ow) {
            const int64_t iw = ow * a.strides[1] - a.pads[1] + j * a.dilations[1];
            if (iw >= 0 && iw < s.in_w) gx[ih * s.in_w + iw] += gk[oh * s.out_w + ow];
          }
        }
      }
    }
  }
}

}  // namespace

template <typename T>
void AdderConvForward(const ConvShape& s, const T* x, const T* w, const Epilogue<T>& epilogue, T* y,
                      const ParallelFor& parallel) {
  const int64_t taps = s.Taps(), rows = s.OutPerGroup();
  std::vector<T> w_packed(s.out_channels * taps);
  std::vector<double> w_sums(s.out_channels, 0.0);
  for (int64_t g = 0; g < s.attrs.group; ++g) {
    const T* wg = w + g * rows * taps;
    T* out = w_packed.data() + g * rows * taps;
    const int64_t blocks = rows / kRowsPerBlock;
    for (int64_t b = 0; b < blocks; ++b) {
      for (int64_t k = 0; k < taps; ++k) {
        for (int64_t r = 0; r < kRowsPerBlock; ++r) *out++ = wg[(b * kRowsPerBlock + r) * taps + k];
      }
    }
    out = std::copy(wg + blocks * kRowsPerBlock * taps, wg + rows * taps, out);
  }
  for (int64_t m = 0; m < s.out_channels; ++m) {
    for (int64_t k = 0; k < taps; ++k) w_sums[m] += w[m * taps + k];
  }
  const int64_t columns = s.batch * s.Positions();
  if (columns == 0) return;
  const int64_t nr = Tiles<T>().columns;
  ForwardJob<T> job{&s, x, w_packed.data(), w_sums.data(), epilogue, y, (columns + nr - 1) / nr};
  parallel.Run(static_cast<size_t>(job.tiles_per_group * s.attrs.group), &ForwardItem<T>, &job);
}

template <typename T>
void AdderConvBackwardInput(const ConvShape& s, const T* x, const T* w, const T* grad_y, T* grad_x,
                            const ParallelFor& parallel) {
  const int64_t taps = s.Taps(), rows = s.OutPerGroup();
  std::vector<T> w_transposed(s.out_channels * taps);
  for (int64_t g = 0; g < s.attrs.group; ++g) {
    for (int64_t o = 0; o < rows; ++o) {
      for (int64_t k = 0; k < taps; ++k) {
        w_transposed[(g * taps + k) * rows + o] = w[(g * rows + o) * taps + k];
      }
    }
  }
  const int64_t columns = s.batch * s.Positions();
  if (columns == 0) {
    std::fill(grad_x, grad_x + s.batch * s.in_channels * s.in_h * s.in_w, T(0));
    return;
  }
  const int64_t nr = Tiles<T>().columns;
  std::vector<T> grad_cols(s.attrs.group * taps * columns);
  BackwardInputJob<T> job{&s, x, w_transposed.data(), grad_y, grad_cols.data(), grad_x, (columns + nr - 1) / nr};
  parallel.Run(static_cast<size_t>(job.tiles_per_group * s.attrs.group), &GradColumnsItem<T>, &job);
  parallel.Run(static_cast<size_t>(s.batch * s.attrs.group), &ScatterItem<T>, &job);
}

const char* KernelIsa() { return Tiles<float>().isa; }

template void AdderConvForward<float>(const ConvShape&, const float*, const float*, const Epilogue<float>&, float*,
                                      const ParallelFor&);
template void AdderConvForward<double>(const ConvShape&, const double*, const double*, const Epilogue<double>&, double*,
                                       const ParallelFor&);
template void AdderConvBackwardInput<float>(const ConvShape&, const float*, const float*, const float*, float*,
                                            const ParallelFor&);
template void AdderConvBackwardInput<double>(const ConvShape&, const double*, const double*, const double*, double*,
                                             const ParallelFor&);

}  // namespace adderconvert::cpu
