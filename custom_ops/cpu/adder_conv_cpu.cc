#include "adder_conv_cpu.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/adder_conv_cpu_tiles.h"
#include "cpu/isa.h"

namespace adderconvert::cpu {
namespace {

// Uses the identity |x - w| = x + w - 2 min(x, w): the inner loop is a min and an add, and the sums of
// x (per output position) and of w (per output channel) are added back in the epilogue. The identity
// turns an infinite x or w into inf - inf = NaN, so outputs whose sums are not finite are summed again
// directly (see AbsSum).

// The tiles of the instruction set cpu/isa.h chooses. The first call, on the calling thread of a forward or
// backward pass, throws where ADDERCONVERT_CPU_ISA names no ISA; the work items run after it.
template <typename T>
const TileKernels<T>& Tiles() {
  static const TileKernels<T> tiles = [] {
    if constexpr (std::is_same_v<T, float>) {
      return CpuIsa().fp32();
    } else {
      return CpuIsa().fp64();
    }
  }();
  return tiles;
}

// Kernel rows [i0, i1) and columns [j0, j1) that an output position reads from the input; the other taps
// fall into the zero padding.
struct TapWindow {
  int64_t i0, i1, j0, j1;
  bool operator==(const TapWindow& o) const { return i0 == o.i0 && i1 == o.i1 && j0 == o.j0 && j1 == o.j1; }
};

// Indices t in [0, count) with 0 <= start + t * step < size, as [*lo, *hi): the taps of a kernel row
// (step: the dilation) or the columns of a run (step: the stride) that read the input, not the padding.
inline void InsideRange(int64_t start, int64_t step, int64_t count, int64_t size, int64_t* lo, int64_t* hi) {
  if (step == 1) {
    *lo = std::min(count, std::max<int64_t>(0, -start));
    *hi = std::max(*lo, std::min(count, size - start));
    return;
  }
  *lo = start >= 0 ? 0 : std::min(count, (-start + step - 1) / step);
  *hi = start >= size ? 0 : std::min(count, (size - start + step - 1) / step);
  *hi = std::max(*lo, *hi);
}

TapWindow WindowAt(const ConvShape& s, int64_t pos) {
  const ConvAttributes& a = s.attrs;
  TapWindow w{};
  InsideRange((pos / s.out_w) * a.strides[0] - a.pads[0], a.dilations[0], s.kernel_h, s.in_h, &w.i0, &w.i1);
  InsideRange((pos % s.out_w) * a.strides[1] - a.pads[1], a.dilations[1], s.kernel_w, s.in_w, &w.j0, &w.j1);
  return w;
}

// A tap of the receptive field: index = c * kh * kw + i * kw + j within a group.
struct Tap {
  int64_t index, c, i, j;
};

// The taps that a tile reads and W laid out for them.
template <typename T>
struct TapSet {
  std::vector<Tap> taps;
  std::vector<T> w_packed;       // forward: per group, in the layout TileKernels::min_sum expects
  std::vector<double> w_offset;  // forward: per output channel, sum of w over `taps` + sum of |w| over the rest
  std::vector<T> w_transposed;   // input gradient: per group, taps x rows
};

// How the output columns (image, position) are grouped into tiles of up to NR columns. By image: NR
// consecutive columns, reading zeros for padded taps. By position: up to NR images at one output
// position, which share their padded taps and skip them (a padded tap adds the constant |w|). The
// second is chosen where it saves work: small feature maps, where padding is a large share of the taps.
// By position one work item runs the tiles of every position for its images, so no two threads write
// into the same cache lines of the output.
// Tap sets are shared: a WeightLayoutCache keeps them across calls.
template <typename T>
struct Tiling {
  bool by_position = false;
  int64_t tiles = 0;  // per group: column tiles by image, image tiles by position
  std::vector<std::shared_ptr<const TapSet<T>>> tap_sets;
  std::vector<int64_t> tap_set_of_position;  // by position

  int64_t Passes(const ConvShape& s) const { return by_position ? s.Positions() : 1; }
  const TapSet<T>& TapsOf(int64_t pos) const { return *tap_sets[by_position ? tap_set_of_position[pos] : 0]; }
};

template <typename T>
struct LayOutJob {
  const ConvShape* shape;
  const T* w;
  bool forward;
  TapSet<T>* const* sets;
  int64_t chunks;  // per group
};

// Output channels per layout item: a multiple of kRowsPerBlock, so items own whole packed blocks.
constexpr int64_t kLayOutRows = 64;

// Lays out W for one (tap set, group, chunk of output channels): packed with its offsets for the
// forward pass, else transposed.
template <typename T>
void LayOutWeights(void* data, size_t item) {
  const auto& job = *static_cast<const LayOutJob<T>*>(data);
  const ConvShape& s = *job.shape;
  const int64_t taps = s.Taps(), rows = s.OutPerGroup();
  const int64_t chunk = static_cast<int64_t>(item) % job.chunks;
  const int64_t g = static_cast<int64_t>(item) / job.chunks % s.attrs.group;
  TapSet<T>& set = *job.sets[static_cast<int64_t>(item) / job.chunks / s.attrs.group];
  const int64_t used = static_cast<int64_t>(set.taps.size());
  const int64_t r0 = chunk * kLayOutRows, r1 = std::min(rows, r0 + kLayOutRows);
  const T* wg = job.w + g * rows * taps;
  if (!job.forward) {
    for (int64_t t = 0; t < used; ++t) {
      T* out = set.w_transposed.data() + (g * used + t) * rows;
      for (int64_t o = r0; o < r1; ++o) out[o] = wg[o * taps + set.taps[t].index];
    }
    return;
  }
  const int64_t block_rows = rows / kRowsPerBlock * kRowsPerBlock;
  for (int64_t b = r0; b < std::min(r1, block_rows); b += kRowsPerBlock) {
    T* out = set.w_packed.data() + (g * rows + b) * used;
    for (int64_t t = 0; t < used; ++t) {
      for (int64_t r = 0; r < kRowsPerBlock; ++r) *out++ = wg[(b + r) * taps + set.taps[t].index];
    }
  }
  for (int64_t r = std::max(r0, block_rows); r < r1; ++r) {
    T* out = set.w_packed.data() + (g * rows + r) * used;
    for (int64_t t = 0; t < used; ++t) out[t] = wg[r * taps + set.taps[t].index];
  }
  for (int64_t r = r0; r < r1; ++r) {
    const T* wr = wg + r * taps;
    double offset = 0.0;
    if (used == taps) {
      for (int64_t t = 0; t < taps; ++t) offset += wr[t];
    } else {
      for (int64_t t = 0; t < taps; ++t) offset += std::abs(static_cast<double>(wr[t]));
      for (int64_t t = 0; t < used; ++t) {
        const double v = wr[set.taps[t].index];
        offset += v - std::abs(v);
      }
    }
    set.w_offset[g * rows + r] = offset;
  }
}

// The taps of `window`, in W's order (c, i, j); the full kernel window holds every tap.
std::vector<Tap> TapsIn(const ConvShape& s, const TapWindow& window) {
  const int64_t khw = s.kernel_h * s.kernel_w;
  std::vector<Tap> taps;
  taps.reserve(s.InPerGroup() * (window.i1 - window.i0) * (window.j1 - window.j0));
  for (int64_t c = 0; c < s.InPerGroup(); ++c) {
    for (int64_t i = window.i0; i < window.i1; ++i) {
      for (int64_t j = window.j0; j < window.j1; ++j) taps.push_back({c * khw + i * s.kernel_w + j, c, i, j});
    }
  }
  return taps;
}

// Forward layouts are kept in a WeightCache by their tap window.
WeightCache::Key KeyOf(const TapWindow& w) { return {w.i0, w.i1, w.j0, w.j1, 0}; }

// Plans the tiles and lays out W for the tap set of every distinct window they read. `cache` (forward
// only) supplies the layouts it holds and keeps the new ones it has room for.
template <typename T>
Tiling<T> PlanTiles(const ConvShape& s, const T* w, bool forward, const ParallelFor& parallel, WeightCache* cache) {
  const int64_t nr = Tiles<T>().columns, positions = s.Positions(), columns = s.batch * positions;
  Tiling<T> tiling;
  const int64_t image_tiles = (s.batch + nr - 1) / nr;
  std::vector<TapWindow> windows(positions);
  int64_t inside_taps = 0;  // over all positions
  for (int64_t pos = 0; pos < positions; ++pos) {
    windows[pos] = WindowAt(s, pos);
    inside_taps += (windows[pos].i1 - windows[pos].i0) * (windows[pos].j1 - windows[pos].j0) * s.InPerGroup();
  }
  // Tap visits of each tiling (tiles x NR x taps); by position must save at least a tenth.
  const int64_t by_image_cost = (columns + nr - 1) / nr * nr * s.Taps();
  tiling.by_position = 10 * image_tiles * nr * inside_taps < 9 * by_image_cost;
  std::vector<TapWindow> distinct;
  if (!tiling.by_position) {
    tiling.tiles = (columns + nr - 1) / nr;
    distinct.push_back({0, s.kernel_h, 0, s.kernel_w});
  } else {
    tiling.tiles = image_tiles;
    for (const TapWindow& window : windows) {
      auto found = std::find(distinct.begin(), distinct.end(), window);
      tiling.tap_set_of_position.push_back(found - distinct.begin());
      if (found == distinct.end()) distinct.push_back(window);
    }
  }
  tiling.tap_sets.resize(distinct.size());
  for (size_t d = 0; cache != nullptr && d < distinct.size(); ++d) {
    tiling.tap_sets[d] = cache->Find<TapSet<T>>(KeyOf(distinct[d]));
  }
  std::vector<TapSet<T>*> missing;
  std::vector<size_t> missing_index;
  for (size_t d = 0; d < distinct.size(); ++d) {
    if (tiling.tap_sets[d] != nullptr) continue;
    auto set = std::make_shared<TapSet<T>>();
    set->taps = TapsIn(s, distinct[d]);
    const int64_t used = static_cast<int64_t>(set->taps.size());
    if (forward) {
      set->w_packed.resize(s.out_channels * used);
      set->w_offset.resize(s.out_channels);
    } else {
      set->w_transposed.resize(s.out_channels * used);
    }
    missing.push_back(set.get());
    missing_index.push_back(d);
    tiling.tap_sets[d] = std::move(set);
  }
  if (missing.empty()) return tiling;
  const int64_t chunks = (s.OutPerGroup() + kLayOutRows - 1) / kLayOutRows;
  LayOutJob<T> job{&s, w, forward, missing.data(), chunks};
  parallel.Run(static_cast<size_t>(missing.size() * s.attrs.group * chunks), &LayOutWeights<T>, &job);
  const int64_t budget = kMaxWeightCopies * s.out_channels * s.Taps() * static_cast<int64_t>(sizeof(T));
  for (size_t d : missing_index) {
    if (cache == nullptr) break;
    const int64_t bytes = static_cast<int64_t>(tiling.tap_sets[d]->w_packed.size() * sizeof(T));
    cache->Keep(KeyOf(distinct[d]), tiling.tap_sets[d], bytes, budget);
  }
  return tiling;
}

// Output columns (image * positions + position) of one tile.
struct TileColumns {
  int64_t count;
  int64_t first;   // the first column
  int64_t stride;  // between consecutive columns: 1 by image, positions by position
};

// `pos` is the output position of a by-position tile.
template <typename T>
TileColumns ColumnsOf(const ConvShape& s, const Tiling<T>& tiling, int64_t tile, int64_t pos, int64_t nr) {
  const int64_t positions = s.Positions(), first = tile * nr;
  if (!tiling.by_position) return {std::min(nr, s.batch * positions - first), first, 1};
  return {std::min(nr, s.batch - first), first * positions + pos, positions};
}

// Copies a (batch, rest) array to (rest, batch): by-position tiles then read their images contiguously.
template <typename T>
struct TransposeJob {
  const T* in;
  T* out;
  int64_t batch, rest;
};

constexpr int64_t kTransposeBlock = 256;

template <typename T>
void TransposeItem(void* data, size_t item) {
  const auto& job = *static_cast<const TransposeJob<T>*>(data);
  const int64_t r0 = static_cast<int64_t>(item) * kTransposeBlock, r1 = std::min(job.rest, r0 + kTransposeBlock);
  for (int64_t n = 0; n < job.batch; ++n) {
    for (int64_t r = r0; r < r1; ++r) job.out[r * job.batch + n] = job.in[n * job.rest + r];
  }
}

template <typename T>
std::vector<T> BatchMinor(const T* a, int64_t batch, int64_t rest, const ParallelFor& parallel) {
  std::vector<T> out(batch * rest);
  TransposeJob<T> job{a, out.data(), batch, rest};
  parallel.Run(static_cast<size_t>((rest + kTransposeBlock - 1) / kTransposeBlock), &TransposeItem<T>, &job);
  return out;
}

// Output columns that share an image and an output row: their inputs lie along one input row.
template <typename T>
struct ColumnRun {
  int64_t first, count;
  const T* image;  // first input channel of the group in this image
  int64_t ih0, iw0;
};

// Gathers taps[k0, k1) of the tile's columns, for group `g`, into x_packed ((k1 - k0) x nr), with zeros
// for padding and for columns past the tile's count. By position it reads x_batch_minor (C, H, W, N).
template <typename T>
void PackColumns(const ConvShape& s, const T* x, const T* x_batch_minor, int64_t g, const TileColumns& tile,
                 const Tap* taps, int64_t k0, int64_t k1, int64_t nr, T* x_packed) {
  const int64_t positions = s.Positions(), in_hw = s.in_h * s.in_w;
  const ConvAttributes& a = s.attrs;
  if (tile.stride != 1) {  // by position: every column reads the same taps, all inside, of its own image
    const int64_t pos = tile.first % positions;
    const int64_t ih0 = pos / s.out_w * a.strides[0] - a.pads[0], iw0 = pos % s.out_w * a.strides[1] - a.pads[1];
    const T* base = x_batch_minor + g * s.InPerGroup() * in_hw * s.batch + tile.first / positions;
    for (int64_t t = k0; t < k1; ++t) {
      const Tap& tap = taps[t];
      const int64_t at = tap.c * in_hw + (ih0 + tap.i * a.dilations[0]) * s.in_w + iw0 + tap.j * a.dilations[1];
      T* row = x_packed + (t - k0) * nr;
      std::copy_n(base + at * s.batch, tile.count, row);
      std::fill(row + tile.count, row + nr, T(0));
    }
    return;
  }
  thread_local std::vector<ColumnRun<T>> runs;
  runs.clear();
  for (int64_t n = 0; n < tile.count; ++n) {
    const int64_t col = tile.first + n;
    const int64_t img = col / positions, pos = col % positions;
    const int64_t oh = pos / s.out_w, ow = pos % s.out_w;
    if (ow == 0 || n == 0) {
      runs.push_back({n, 0, x + (img * s.in_channels + g * s.InPerGroup()) * in_hw, oh * a.strides[0] - a.pads[0],
                      ow * a.strides[1] - a.pads[1]});
    }
    ++runs.back().count;
  }
  // inside[j * runs + r]: the columns [lo, hi) of run r that read the input at kernel column j.
  thread_local std::vector<std::pair<int64_t, int64_t>> inside;
  const int64_t step = a.strides[1], run_count = static_cast<int64_t>(runs.size());
  inside.resize(s.kernel_w * run_count);
  for (int64_t j = 0; j < s.kernel_w; ++j) {
    for (int64_t r = 0; r < run_count; ++r) {
      auto& [lo, hi] = inside[j * run_count + r];
      InsideRange(runs[r].iw0 + j * a.dilations[1], step, runs[r].count, s.in_w, &lo, &hi);
    }
  }
  for (int64_t t = k0; t < k1; ++t) {
    const Tap& tap = taps[t];
    T* row = x_packed + (t - k0) * nr;
    for (int64_t r = 0; r < run_count; ++r) {
      const ColumnRun<T>& run = runs[r];
      T* dst = row + run.first;
      const int64_t ih = run.ih0 + tap.i * a.dilations[0];
      if (ih < 0 || ih >= s.in_h) {
        std::fill(dst, dst + run.count, T(0));
        continue;
      }
      const T* src = run.image + tap.c * in_hw + ih * s.in_w;
      const int64_t iw = run.iw0 + tap.j * a.dilations[1];
      const auto [lo, hi] = inside[tap.j * run_count + r];
      std::fill(dst, dst + lo, T(0));
      if (step == 1) {
        std::copy(src + iw + lo, src + iw + hi, dst + lo);
      } else {
        for (int64_t u = lo; u < hi; ++u) dst[u] = src[iw + u * step];
      }
      std::fill(dst + hi, dst + run.count, T(0));
    }
    std::fill(row + tile.count, row + nr, T(0));
  }
}

// Items are (group, tile, split). Where there are few tiles (small feature maps), tiles are split over
// output channels (forward) or taps (input gradient) into about two items per thread; every split
// packs its tile again, so there are no more splits than that.
int64_t SplitsFor(int64_t tiles, int64_t extent, int64_t min_per_split, int threads) {
  if (tiles >= 4 * threads) return 1;
  const int64_t wanted = (2 * threads + tiles - 1) / tiles;
  return std::max<int64_t>(1, std::min(wanted, extent / min_per_split));
}

template <typename T>
struct ForwardJob {
  const ConvShape* shape;
  const Tiling<T>* tiling;
  const T* x;
  const T* x_batch_minor;  // by position only
  const T* w;
  Epilogue<T> epilogue;
  T* y;
  int64_t splits, rows_per_split;
};

// sum_k |x[k] - w[k]| in double over every tap of a row of W, column n of a packed tile `width` columns
// wide: taps missing from `set` (skipped padding) read 0, as in the reference, so -inf inputs give +inf
// and NaN stays NaN.
template <typename T>
double AbsSum(const TapSet<T>& set, const T* x_packed, int64_t n, int64_t width, const T* w_row, int64_t taps) {
  double sum = 0.0;
  size_t t = 0;
  for (int64_t k = 0; k < taps; ++k) {
    const bool inside = t < set.taps.size() && set.taps[t].index == k;
    const double x = inside ? static_cast<double>(x_packed[t++ * width + n]) : 0.0;
    sum += std::abs(x - static_cast<double>(w_row[k]));
  }
  return sum;
}

// Tiles of at most NR / kFewColumnsDivisor columns (small feature maps at batch 1, a batch's last tile)
// are summed one column at a time: the NR-wide kernel is about 3.5x faster per column it fills (AVX-512)
// but does the work of every column of the tile.
constexpr int64_t kFewColumnsDivisor = 2;

// Output channels [r0, r1) of group g for one tile.
template <typename T>
void ForwardTile(const ForwardJob<T>& job, int64_t g, const TileColumns& columns, const TapSet<T>& set, int64_t r0,
                 int64_t r1) {
  const ConvShape& s = *job.shape;
  const TileKernels<T>& kernels = Tiles<T>();
  const int64_t nr = kernels.columns, rows = s.OutPerGroup(), positions = s.Positions();
  const int64_t taps = static_cast<int64_t>(set.taps.size());
  const bool few_columns = columns.count <= nr / kFewColumnsDivisor;
  const int64_t width = few_columns ? columns.count : nr;  // of the packed tile

  thread_local std::vector<T> x_packed, min_sums;
  thread_local std::vector<double> col_sums;  // sum of x over the taps, in double like the epilogue
  thread_local std::vector<int64_t> y_offsets;
  x_packed.resize(taps * width);
  min_sums.assign((r1 - r0) * nr, T(0));
  col_sums.assign(nr, 0.0);
  y_offsets.resize(nr);
  PackColumns(s, job.x, job.x_batch_minor, g, columns, set.taps.data(), 0, taps, width, x_packed.data());
  for (int64_t k = 0; k < taps; ++k) {
    for (int64_t n = 0; n < width; ++n) col_sums[n] += x_packed[k * width + n];
  }
  bool columns_finite = true;
  for (int64_t n = 0; n < columns.count; ++n) columns_finite = columns_finite && std::isfinite(col_sums[n]);
  for (int64_t n = 0; n < columns.count; ++n) {
    const int64_t col = columns.first + n * columns.stride;
    y_offsets[n] = col / positions * s.out_channels * positions + col % positions;
  }
  // By image, a tile's columns are mostly consecutive positions of one image: stored as one run.
  const bool one_run = columns.count > 0 && y_offsets[columns.count - 1] - y_offsets[0] == columns.count - 1;
  const T* w_packed = set.w_packed.data() + (g * rows + r0) * taps;
  if (taps > 0 && few_columns) {
    thread_local std::vector<T> x_rep;
    x_rep.resize(taps * kRowsPerBlock);
    for (int64_t n = 0; n < columns.count; ++n) {
      for (int64_t k = 0; k < taps; ++k) {
        std::fill_n(x_rep.data() + k * kRowsPerBlock, kRowsPerBlock, x_packed[k * width + n]);
      }
      kernels.min_sum_column(x_rep.data(), w_packed, taps, r1 - r0, min_sums.data() + n, nr);
    }
  } else if (taps > 0) {
    kernels.min_sum(x_packed.data(), w_packed, taps, r1 - r0, min_sums.data());
  }

  // The epilogue runs in double: adder sums reach -10^3 while a folded BatchNorm's shift cancels most of
  // that, so one rounding at the end keeps the fused form as exact as AdderConv followed by BatchNorm.
  const Epilogue<T>& e = job.epilogue;
  for (int64_t o = r0; o < r1; ++o) {
    const int64_t m = g * rows + o;
    const double scale = e.scale ? e.scale[m] : 1.0;
    const double shift = (e.shift ? e.shift[m] : 0.0) + scale * -set.w_offset[m];
    const T* ms = min_sums.data() + (o - r0) * nr;
    T* y = job.y + m * positions;
    const auto store = [&](int64_t n, double v) { y[y_offsets[n]] = static_cast<T>(e.relu && v < 0.0 ? 0.0 : v); };
    if (one_run) {
      T* __restrict out = y + y_offsets[0];
      for (int64_t n = 0; n < columns.count; ++n) {
        const double v = scale * (2.0 * ms[n] - col_sums[n]) + shift;
        out[n] = static_cast<T>(e.relu && v < 0.0 ? 0.0 : v);
      }
    } else {
      for (int64_t n = 0; n < columns.count; ++n) store(n, scale * (2.0 * ms[n] - col_sums[n]) + shift);
    }
    const bool row_finite = std::isfinite(set.w_offset[m]);
    if (row_finite && columns_finite) continue;
    for (int64_t n = 0; n < columns.count; ++n) {
      if (row_finite && std::isfinite(col_sums[n])) continue;
      const double sum = AbsSum(set, x_packed.data(), n, width, job.w + m * s.Taps(), s.Taps());
      store(n, scale * -sum + (e.shift ? e.shift[m] : 0.0));
    }
  }
}

template <typename T>
void ForwardItem(void* data, size_t item) {
  const auto& job = *static_cast<const ForwardJob<T>*>(data);
  const ConvShape& s = *job.shape;
  const int64_t nr = Tiles<T>().columns, rows = s.OutPerGroup();
  const int64_t split = static_cast<int64_t>(item) % job.splits;
  const int64_t tile = static_cast<int64_t>(item) / job.splits % job.tiling->tiles;
  const int64_t g = static_cast<int64_t>(item) / job.splits / job.tiling->tiles;
  const int64_t r0 = split * job.rows_per_split, r1 = std::min(rows, r0 + job.rows_per_split);
  for (int64_t pos = 0; r0 < r1 && pos < job.tiling->Passes(s); ++pos) {
    ForwardTile(job, g, ColumnsOf(s, *job.tiling, tile, pos, nr), job.tiling->TapsOf(pos), r0, r1);
  }
}

// Input gradient in two passes over O(im2col) memory: (1) per (group, tile, tap range) the gradient of
// every gathered tap, written to grad_cols (group x taps x columns); (2) per (image, group) a scatter
// of those columns back through the padding into grad_x, so no two items write the same element.
template <typename T>
struct BackwardInputJob {
  const ConvShape* shape;
  const Tiling<T>* tiling;
  const T* x;
  const T* x_batch_minor;  // by position only
  const T* grad_y;
  const T* grad_y_batch_minor;  // by position only
  T* grad_cols;
  T* grad_x;
  int64_t splits, taps_per_split;
};

// The gradients of taps [k0, k1) of group g for one tile.
template <typename T>
void GradColumnsTile(const BackwardInputJob<T>& job, int64_t g, const TileColumns& cols, const TapSet<T>& set,
                     int64_t k0, int64_t k1) {
  const ConvShape& s = *job.shape;
  const TileKernels<T>& kernels = Tiles<T>();
  const int64_t nr = kernels.columns, rows = s.OutPerGroup(), positions = s.Positions();
  const int64_t columns = s.batch * positions, taps = static_cast<int64_t>(set.taps.size());

  thread_local std::vector<T> x_packed, g_packed, grad_packed;
  x_packed.resize((k1 - k0) * nr);
  g_packed.resize(rows * nr);
  grad_packed.resize((k1 - k0) * nr);
  PackColumns(s, job.x, job.x_batch_minor, g, cols, set.taps.data(), k0, k1, nr, x_packed.data());
  for (int64_t o = 0; o < rows; ++o) {
    const int64_t m = g * rows + o;
    T* row = g_packed.data() + o * nr;
    if (job.tiling->by_position) {
      std::copy_n(job.grad_y_batch_minor + (m * positions + cols.first % positions) * s.batch + cols.first / positions,
                  cols.count, row);
    } else {
      const T* gy = job.grad_y + m * positions;
      for (int64_t n = 0; n < cols.count; ++n) {
        const int64_t col = cols.first + n;
        row[n] = gy[col / positions * s.out_channels * positions + col % positions];
      }
    }
    std::fill(row + cols.count, row + nr, T(0));
  }
  kernels.clamp_dot(x_packed.data(), set.w_transposed.data() + (g * taps + k0) * rows, g_packed.data(), k1 - k0, rows,
                    grad_packed.data());
  for (int64_t t = k0; t < k1; ++t) {
    T* out = job.grad_cols + (g * s.Taps() + set.taps[t].index) * columns + cols.first;
    const T* src = grad_packed.data() + (t - k0) * nr;
    for (int64_t n = 0; n < cols.count; ++n) out[n * cols.stride] = src[n];
  }
}

template <typename T>
void GradColumnsItem(void* data, size_t item) {
  const auto& job = *static_cast<const BackwardInputJob<T>*>(data);
  const ConvShape& s = *job.shape;
  const int64_t nr = Tiles<T>().columns;
  const int64_t split = static_cast<int64_t>(item) % job.splits;
  const int64_t tile = static_cast<int64_t>(item) / job.splits % job.tiling->tiles;
  const int64_t g = static_cast<int64_t>(item) / job.splits / job.tiling->tiles;
  for (int64_t pos = 0; pos < job.tiling->Passes(s); ++pos) {
    const TapSet<T>& set = job.tiling->TapsOf(pos);
    const int64_t k0 = split * job.taps_per_split;
    const int64_t k1 = std::min(static_cast<int64_t>(set.taps.size()), k0 + job.taps_per_split);
    if (k0 < k1) GradColumnsTile(job, g, ColumnsOf(s, *job.tiling, tile, pos, nr), set, k0, k1);
  }
}

// Only taps inside the input are read back, so grad_cols entries of padded taps are never used.
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

// Convs that read one input channel per group (depthwise convs and their stacks of bases) sum kChannelBlock
// groups side by side: tiles would pack every tap for a single row of W. Each item is one (image, block of
// groups, band of output rows): the input rows the band reads, zero-padded and channel-minor, then per filter and
// output row the direct sums |x - w| (the reference's own form, so infinities and NaN need no second pass).
constexpr int64_t kBandRows = 8;

template <typename T>
struct DepthwiseJob {
  const ConvShape* shape;
  const TileKernels<T>* kernels;
  const T* x;
  const T* w_blocked;      // [block][filter of the group][tap][kChannelBlock groups], zero past the last group
  const int64_t* offsets;  // per tap, into the channel-minor padded rows
  Epilogue<T> epilogue;
  T* y;
  int64_t blocks, bands, padded_w;
};

template <typename T>
void DepthwiseItem(void* data, size_t item) {
  const auto& job = *static_cast<const DepthwiseJob<T>*>(data);
  const ConvShape& s = *job.shape;
  const ConvAttributes& a = s.attrs;
  const int64_t band = static_cast<int64_t>(item) % job.bands;
  const int64_t block = static_cast<int64_t>(item) / job.bands % job.blocks;
  const int64_t n = static_cast<int64_t>(item) / job.bands / job.blocks;
  const int64_t g0 = block * kChannelBlock, count = std::min(kChannelBlock, a.group - g0);
  const int64_t rows = s.OutPerGroup(), taps = s.kernel_h * s.kernel_w, cb = kChannelBlock;
  const int64_t oh0 = band * kBandRows, oh1 = std::min(s.out_h, oh0 + kBandRows);
  // Padded input rows [r0, r1) feed output rows [oh0, oh1).
  const int64_t r0 = oh0 * a.strides[0], r1 = (oh1 - 1) * a.strides[0] + (s.kernel_h - 1) * a.dilations[0] + 1;
  thread_local std::vector<T> packed, sums;
  packed.assign((r1 - r0) * job.padded_w * cb, T(0));
  sums.resize(s.out_w * cb);
  for (int64_t c = 0; c < count; ++c) {
    const T* in = job.x + (n * s.in_channels + g0 + c) * s.in_h * s.in_w;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t h = r - a.pads[0];
      if (h < 0 || h >= s.in_h) continue;
      T* dst = packed.data() + ((r - r0) * job.padded_w + a.pads[1]) * cb + c;
      for (int64_t w = 0; w < s.in_w; ++w) dst[w * cb] = in[h * s.in_w + w];
    }
  }
  const Epilogue<T>& e = job.epilogue;
  for (int64_t o = 0; o < rows; ++o) {
    const T* w = job.w_blocked + (block * rows + o) * taps * cb;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const T* x = packed.data() + (oh * a.strides[0] - r0) * job.padded_w * cb;
      job.kernels->abs_sum_channels(x, job.offsets, a.strides[1] * cb, w, taps, s.out_w, sums.data());
      for (int64_t c = 0; c < count; ++c) {
        const int64_t m = (g0 + c) * rows + o;
        const double scale = e.scale ? e.scale[m] : 1.0, shift = e.shift ? e.shift[m] : 0.0;
        T* y = job.y + ((n * s.out_channels + m) * s.out_h + oh) * s.out_w;
        for (int64_t ow = 0; ow < s.out_w; ++ow) {
          const double v = scale * -static_cast<double>(sums[ow * cb + c]) + shift;
          y[ow] = static_cast<T>(e.relu && v < 0.0 ? 0.0 : v);
        }
      }
    }
  }
}

// Whether a conv takes the depthwise path: one input channel per group, enough groups to fill a quarter of a
// block, and few filters per group (many share their taps better in the tiles' register blocks, as a one-channel
// stem's do).
bool TakesDepthwisePath(const ConvShape& s) {
  return s.InPerGroup() == 1 && s.attrs.group >= kChannelBlock / 4 && s.OutPerGroup() <= kChannelBlock;
}

template <typename T>
void DepthwiseForward(const ConvShape& s, const T* x, const T* w, const Epilogue<T>& epilogue, T* y,
                      const ParallelFor& parallel) {
  const TileKernels<T>& kernels = Tiles<T>();  // on the calling thread: an unknown ISA throws here
  const ConvAttributes& a = s.attrs;
  const int64_t rows = s.OutPerGroup(), taps = s.kernel_h * s.kernel_w, cb = kChannelBlock;
  const int64_t blocks = (a.group + cb - 1) / cb, bands = (s.out_h + kBandRows - 1) / kBandRows;
  std::vector<T> w_blocked(blocks * rows * taps * cb, T(0));
  for (int64_t g = 0; g < a.group; ++g) {
    for (int64_t o = 0; o < rows; ++o) {
      for (int64_t k = 0; k < taps; ++k) {
        w_blocked[((g / cb * rows + o) * taps + k) * cb + g % cb] = w[(g * rows + o) * taps + k];
      }
    }
  }
  const int64_t padded_w = s.in_w + a.pads[1] + a.pads[3];
  std::vector<int64_t> offsets(taps);
  for (int64_t i = 0; i < s.kernel_h; ++i) {
    for (int64_t j = 0; j < s.kernel_w; ++j) {
      offsets[i * s.kernel_w + j] = (i * a.dilations[0] * padded_w + j * a.dilations[1]) * cb;
    }
  }
  DepthwiseJob<T> job{&s, &kernels, x, w_blocked.data(), offsets.data(), epilogue, y, blocks, bands, padded_w};
  parallel.Run(static_cast<size_t>(s.batch * blocks * bands), &DepthwiseItem<T>, &job);
}

}  // namespace

template <typename T>
void AdderConvForward(const ConvShape& s, const T* x, const T* w, const Epilogue<T>& epilogue, T* y,
                      const ParallelFor& parallel, WeightCache* cache) {
  if (s.batch * s.Positions() == 0) return;
  if (TakesDepthwisePath(s)) return DepthwiseForward(s, x, w, epilogue, y, parallel);
  const Tiling<T> tiling = PlanTiles(s, w, /*forward=*/true, parallel, cache);
  const int64_t rows = s.OutPerGroup();
  const int64_t splits = SplitsFor(tiling.tiles * s.attrs.group, rows, 4 * kRowsPerBlock, parallel.Threads());
  // Split boundaries fall on whole row blocks of the packed weights.
  const int64_t per_split = ((rows + splits - 1) / splits + kRowsPerBlock - 1) / kRowsPerBlock * kRowsPerBlock;
  const std::vector<T> x_batch_minor =
      tiling.by_position ? BatchMinor(x, s.batch, s.in_channels * s.in_h * s.in_w, parallel) : std::vector<T>();
  ForwardJob<T> job{&s, &tiling, x, x_batch_minor.data(), w, epilogue, y, splits, per_split};
  parallel.Run(static_cast<size_t>(s.attrs.group * tiling.tiles * splits), &ForwardItem<T>, &job);
}

template <typename T>
void AdderConvBackwardInput(const ConvShape& s, const T* x, const T* w, const T* grad_y, T* grad_x,
                            const ParallelFor& parallel) {
  const int64_t columns = s.batch * s.Positions();
  if (columns == 0) {
    std::fill(grad_x, grad_x + s.batch * s.in_channels * s.in_h * s.in_w, T(0));
    return;
  }
  const Tiling<T> tiling = PlanTiles<T>(s, w, /*forward=*/false, parallel, nullptr);
  int64_t most_taps = 0;
  for (const auto& set : tiling.tap_sets) most_taps = std::max<int64_t>(most_taps, set->taps.size());
  const int64_t splits = SplitsFor(tiling.tiles * s.attrs.group, most_taps, 32, parallel.Threads());
  const int64_t per_split = std::max<int64_t>(1, (most_taps + splits - 1) / splits);
  std::vector<T> grad_cols(s.attrs.group * s.Taps() * columns);
  std::vector<T> x_batch_minor, grad_y_batch_minor;
  if (tiling.by_position) {
    x_batch_minor = BatchMinor(x, s.batch, s.in_channels * s.in_h * s.in_w, parallel);
    grad_y_batch_minor = BatchMinor(grad_y, s.batch, s.out_channels * s.Positions(), parallel);
  }
  BackwardInputJob<T> job{
      &s,     &tiling, x,        x_batch_minor.data(), grad_y, grad_y_batch_minor.data(), grad_cols.data(),
      grad_x, splits,  per_split};
  parallel.Run(static_cast<size_t>(s.attrs.group * tiling.tiles * splits), &GradColumnsItem<T>, &job);
  parallel.Run(static_cast<size_t>(s.batch * s.attrs.group), &ScatterItem<T>, &job);
}

const char* KernelIsa() {
  return IsaNameOrError([] { return Tiles<float>().isa; });
}

template void AdderConvForward<float>(const ConvShape&, const float*, const float*, const Epilogue<float>&, float*,
                                      const ParallelFor&, WeightCache*);
template void AdderConvForward<double>(const ConvShape&, const double*, const double*, const Epilogue<double>&, double*,
                                       const ParallelFor&, WeightCache*);
template void AdderConvBackwardInput<float>(const ConvShape&, const float*, const float*, const float*, float*,
                                            const ParallelFor&);
template void AdderConvBackwardInput<double>(const ConvShape&, const double*, const double*, const double*, double*,
                                             const ParallelFor&);

}  // namespace adderconvert::cpu
