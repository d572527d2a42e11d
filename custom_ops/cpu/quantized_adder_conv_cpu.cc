#include "cpu/quantized_adder_conv_cpu.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/quantized_tiles.h"
#include "quantized_adder_conv.h"

namespace adderconvert::cpu {
namespace {

// The widest instruction set this processor has; ADDERCONVERT_CPU_ISA=avx2|generic caps it (for tests).
const QuantizedTileKernels& Kernels() {
  static const QuantizedTileKernels kernels = [] {
    const char* cap = std::getenv("ADDERCONVERT_CPU_ISA");
    const std::string limit = cap != nullptr ? cap : "";
    __builtin_cpu_init();
    if ((limit.empty() || limit == "avx512") && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq")) {
      return QuantizedTileKernelsAvx512();
    }
    if (limit != "generic" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return QuantizedTileKernelsAvx2();
    }
    return QuantizedTileKernelsGeneric();
  }();
  return kernels;
}

// A 64-byte aligned byte buffer (vector loads of W and of the image stay within cache lines).
class AlignedBytes {
 public:
  AlignedBytes() = default;
  explicit AlignedBytes(size_t size)
      : data_(static_cast<uint8_t*>(std::aligned_alloc(64, std::max<size_t>(64, (size + 63) / 64 * 64)))) {
    if (data_ == nullptr) throw std::bad_alloc();
  }
  uint8_t* data() const { return data_.get(); }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> data_;
};

int64_t RoundUpOctets(int64_t n) { return (n + kOctet - 1) / kOctet; }

}  // namespace

struct QuantizedWeightLayout {
  // The shape it was made for.
  int64_t group, out_per_group, in_per_group, kernel_h, kernel_w;
  bool in_place;           // taps read in place from the image, else from explicit columns
  int64_t tap_octets;      // octets per tap in place; per column otherwise (one tap)
  int64_t k_octets;        // octets of taps per output channel
  int64_t channel_octets;  // octets of output channels per group
  AlignedBytes packed;     // [group][channel octet][tap octet][8 channels][8 taps]

  bool Fits(const ConvShape& s) const {
    return group == s.attrs.group && out_per_group == s.OutPerGroup() && in_per_group == s.InPerGroup() &&
           kernel_h == s.kernel_h && kernel_w == s.kernel_w;
  }
};

namespace {

std::shared_ptr<QuantizedWeightLayout> LayOutWeights(const ConvShape& s, const uint8_t* w) {
  auto layout = std::make_shared<QuantizedWeightLayout>();
  QuantizedWeightLayout& l = *layout;
  const int64_t cg = s.InPerGroup(), rows = s.OutPerGroup(), khw = s.kernel_h * s.kernel_w;
  l.group = s.attrs.group;
  l.out_per_group = rows;
  l.in_per_group = cg;
  l.kernel_h = s.kernel_h;
  l.kernel_w = s.kernel_w;
  l.in_place = cg % kOctet == 0 || khw == 1;
  l.tap_octets = l.in_place ? RoundUpOctets(cg) : RoundUpOctets(cg * khw);
  l.k_octets = l.in_place ? khw * l.tap_octets : l.tap_octets;
  l.channel_octets = RoundUpOctets(rows);
  const int64_t block = kOctet * kOctet;
  l.packed = AlignedBytes(s.attrs.group * l.channel_octets * l.k_octets * block);
  uint8_t* out = l.packed.data();
  for (int64_t g = 0; g < s.attrs.group; ++g) {
    for (int64_t q = 0; q < l.channel_octets; ++q) {
      for (int64_t k = 0; k < l.k_octets; ++k) {
        for (int64_t lane = 0; lane < kOctet; ++lane) {
          const int64_t m = q * kOctet + lane;
          for (int64_t b = 0; b < kOctet; ++b, ++out) {
            int64_t c, t;  // input channel and kernel tap (i * kW + j) of this byte
            if (l.in_place) {
              t = k / l.tap_octets;
              c = (k % l.tap_octets) * kOctet + b;
            } else {
              const int64_t index = k * kOctet + b;  // in the column: taps outer, channels inner
              t = index / cg;
              c = t < khw ? index % cg : cg;
            }
            *out = m < rows && c < cg ? w[((g * rows + m) * cg + c) * khw + t] : 0;
          }
        }
      }
    }
  }
  return layout;
}

// Items of work: (image, group, block of output pixels, chunk of output-channel octets).
constexpr int64_t kPixelsPerItem = 64;
constexpr int64_t kChannelOctetsPerItem = 16;

struct ForwardJob {
  const ConvShape* shape;
  const QuantizedWeightLayout* layout;
  const QuantizedEpilogue* epilogue;
  const uint8_t* image;  // N x (Hp, Wp, channels_padded)
  int64_t image_bytes, padded_w, channels_padded, group_bytes;
  const std::vector<int64_t>* tap_offsets;
  int64_t pixel_blocks, channel_chunks;
  float* y;
};

void ForwardItem(void* data, size_t item) {
  const ForwardJob& job = *static_cast<const ForwardJob*>(data);
  const ConvShape& s = *job.shape;
  const QuantizedWeightLayout& l = *job.layout;
  const ConvAttributes& a = s.attrs;
  const QuantizedTileKernels& kernels = Kernels();
  int64_t rest = static_cast<int64_t>(item);
  const int64_t chunk = rest % job.channel_chunks;
  rest /= job.channel_chunks;
  const int64_t block = rest % job.pixel_blocks;
  rest /= job.pixel_blocks;
  const int64_t g = rest % a.group, n = rest / a.group;
  const int64_t positions = s.Positions(), pos0 = block * kPixelsPerItem;
  const int64_t count = std::min(kPixelsPerItem, positions - pos0);
  const int64_t q0 = chunk * kChannelOctetsPerItem, q1 = std::min(l.channel_octets, q0 + kChannelOctetsPerItem);

  thread_local std::vector<const uint8_t*> pixels;
  thread_local std::vector<int32_t> sums;
  thread_local std::vector<uint8_t> columns;
  pixels.resize(count);
  sums.resize(count * (q1 - q0) * kOctet);
  const int64_t column_bytes = l.k_octets * kOctet, cg = s.InPerGroup();
  if (!l.in_place) columns.resize(count * column_bytes);
  const uint8_t* image = job.image + n * job.image_bytes + g * job.group_bytes;
  for (int64_t p = 0; p < count; ++p) {
    const int64_t pos = pos0 + p, oh = pos / s.out_w, ow = pos % s.out_w;
    const uint8_t* base = image + (oh * a.strides[0] * job.padded_w + ow * a.strides[1]) * job.channels_padded;
    if (l.in_place) {
      pixels[p] = base;
      continue;
    }
    uint8_t* column = columns.data() + p * column_bytes;
    const int64_t taps = static_cast<int64_t>(job.tap_offsets->size());
    for (int64_t t = 0; t < taps; ++t) std::memcpy(column + t * cg, base + (*job.tap_offsets)[t], cg);
    std::memset(column + taps * cg, 0, column_bytes - taps * cg);
    pixels[p] = column;
  }
  static const int64_t kZero = 0;
  SadTile tile;
  tile.pixels = pixels.data();
  tile.count = count;
  tile.tap_offsets = l.in_place ? job.tap_offsets->data() : &kZero;
  tile.taps = l.in_place ? static_cast<int64_t>(job.tap_offsets->size()) : 1;
  tile.octets = l.tap_octets;
  tile.w = l.packed.data() + (g * l.channel_octets + q0) * l.k_octets * kOctet * kOctet;
  tile.w_stride = l.k_octets * kOctet * kOctet;
  tile.channel_octets = q1 - q0;
  tile.out = sums.data();
  tile.out_stride = (q1 - q0) * kOctet;
  kernels.sad(tile);

  const int64_t m0 = g * s.OutPerGroup() + q0 * kOctet;
  const int64_t channels = std::min(s.OutPerGroup(), q1 * kOctet) - q0 * kOctet;
  const QuantizedEpilogue& e = *job.epilogue;
  kernels.epilogue(sums.data(), tile.out_stride, count, channels, e.alpha + m0, e.beta + m0, e.relu,
                   job.y + (n * s.out_channels + m0) * positions + pos0, positions);
}

// Quantises one padded row (image n, padded row r) of the NHWC image.
struct QuantizeJob {
  const ConvShape* shape;
  const float* x;
  float inv_scale;
  int32_t zero_point;
  uint8_t* image;
  int64_t image_bytes, padded_h, padded_w, channels_padded, group_bytes;
  const std::vector<uint8_t>* pad_pixel;  // the bytes of one padding pixel
};

void QuantizeRow(void* data, size_t item) {
  const QuantizeJob& job = *static_cast<const QuantizeJob*>(data);
  const ConvShape& s = *job.shape;
  const QuantizedTileKernels& kernels = Kernels();
  const int64_t n = static_cast<int64_t>(item) / job.padded_h, r = static_cast<int64_t>(item) % job.padded_h;
  const int64_t ih = r - s.attrs.pads[0], pixel = job.channels_padded;
  uint8_t* row = job.image + n * job.image_bytes + r * job.padded_w * pixel;
  const uint8_t* pad = job.pad_pixel->data();
  const bool inside = ih >= 0 && ih < s.in_h;
  const int64_t left = s.attrs.pads[1], right = left + s.in_w;
  for (int64_t iw = 0; iw < job.padded_w; ++iw) {
    if (!inside || iw < left || iw >= right) std::memcpy(row + iw * pixel, pad, pixel);
  }
  if (!inside) return;
  const int64_t cg = s.InPerGroup(), plane = s.in_h * s.in_w;
  for (int64_t g = 0; g < s.attrs.group; ++g) {
    for (int64_t c = 0; c < cg; c += kOctet) {
      const float* src = job.x + ((n * s.in_channels + g * cg + c) * s.in_h + ih) * s.in_w;
      kernels.quantize_octet(src, plane, std::min(kOctet, cg - c), s.in_w, job.inv_scale, job.zero_point,
                             row + left * pixel + g * job.group_bytes + c, pixel);
    }
  }
}

}  // namespace

QuantizedWeightCache::QuantizedWeightCache() = default;
QuantizedWeightCache::~QuantizedWeightCache() = default;

std::shared_ptr<const QuantizedWeightLayout> QuantizedWeightCache::Get(const ConvShape& shape, const uint8_t* w) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (layout_ != nullptr && layout_->Fits(shape)) return layout_;
  std::shared_ptr<const QuantizedWeightLayout> made = LayOutWeights(shape, w);
  if (layout_ == nullptr) layout_ = made;
  return made;
}

void QuantizedAdderConvForward(const ConvShape& s, const float* x, const uint8_t* w, const QuantizedEpilogue& epilogue,
                               float* y, const ParallelFor& parallel, QuantizedWeightCache* cache) {
  const int64_t positions = s.Positions();
  if (s.batch * positions == 0) return;
  const std::shared_ptr<const QuantizedWeightLayout> layout =
      cache != nullptr ? cache->Get(s, w) : std::shared_ptr<const QuantizedWeightLayout>(LayOutWeights(s, w));
  const ConvAttributes& a = s.attrs;
  const int64_t cg = s.InPerGroup(), group_bytes = RoundUpOctets(cg) * kOctet;
  const int64_t channels_padded = a.group * group_bytes;
  const int64_t padded_h = s.in_h + a.pads[0] + a.pads[2], padded_w = s.in_w + a.pads[1] + a.pads[3];
  const int64_t image_bytes = padded_h * padded_w * channels_padded;
  AlignedBytes image(s.batch * image_bytes);

  std::vector<uint8_t> pad_pixel(channels_padded, 0);
  for (int64_t g = 0; g < a.group; ++g) {
    std::fill_n(pad_pixel.begin() + g * group_bytes, cg, static_cast<uint8_t>(epilogue.x_zero_point));
  }
  QuantizeJob quantize{&s,       x,        1.0f / epilogue.x_scale, epilogue.x_zero_point, image.data(), image_bytes,
                       padded_h, padded_w, channels_padded,         group_bytes,           &pad_pixel};
  parallel.Run(static_cast<size_t>(s.batch * padded_h), &QuantizeRow, &quantize);

  std::vector<int64_t> tap_offsets;
  for (int64_t i = 0; i < s.kernel_h; ++i) {
    for (int64_t j = 0; j < s.kernel_w; ++j) {
      tap_offsets.push_back((i * a.dilations[0] * padded_w + j * a.dilations[1]) * channels_padded);
    }
  }
  ForwardJob job{&s,
                 layout.get(),
                 &epilogue,
                 image.data(),
                 image_bytes,
                 padded_w,
                 channels_padded,
                 group_bytes,
                 &tap_offsets,
                 (positions + kPixelsPerItem - 1) / kPixelsPerItem,
                 (layout->channel_octets + kChannelOctetsPerItem - 1) / kChannelOctetsPerItem,
                 y};
  parallel.Run(static_cast<size_t>(s.batch * a.group * job.pixel_blocks * job.channel_chunks), &ForwardItem, &job);
}

const char* QuantizedKernelIsa() { return Kernels().isa; }

}  // namespace adderconvert::cpu
