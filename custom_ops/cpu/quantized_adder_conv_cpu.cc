#include "cpu/quantized_adder_conv_cpu.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/isa.h"
#include "cpu/quantized_tiles.h"

namespace adderconvert::cpu {
namespace {

// The micro-kernels of the instruction set cpu/isa.h chooses. QuantizedAdderConvForward calls it first on the
// calling thread (it throws where ADDERCONVERT_CPU_ISA names no ISA); the work items run after it.
const QuantizedTileKernels& Kernels() {
  static const QuantizedTileKernels kernels = CpuIsa().int8();
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

// Room for the quantised image of one call, kept on the calling thread from call to call up to kKeptImageBytes:
// a fresh allocation of that size is mapped anew each time, and faulting its pages in cost about 100 page
// faults per call for a 1 MB image (a sixth of a 256 -> 64 1x1 layer's time at 56 x 56 on one thread).
// Every byte of the image is written before it is read, so reuse needs no clearing. Larger images are
// allocated per call (into `own`) and freed with it.
constexpr size_t kKeptImageBytes = size_t{64} << 20;

uint8_t* ImageBuffer(size_t bytes, AlignedBytes* own) {
  if (bytes > kKeptImageBytes) {
    *own = AlignedBytes(bytes);
    return own->data();
  }
  thread_local AlignedBytes kept;
  thread_local size_t kept_bytes = 0;
  if (kept_bytes < bytes) {
    kept = AlignedBytes();
    kept = AlignedBytes(bytes);
    kept_bytes = bytes;
  }
  return kept.data();
}

// W laid out for the micro-kernels (per group, octets of output channels x octets of taps x 64 bytes).
struct QuantizedWeightLayout {
  // The shape it was made for.
  int64_t group, out_per_group, in_per_group, kernel_h, kernel_w;
  bool in_place;           // taps read in place from the image, else from explicit columns
  bool depthwise;          // one channel in and out per group: a lane per group (columns of 8 groups)
  int64_t tap_octets;      // octets per tap in place; per column otherwise (one tap)
  int64_t k_octets;        // octets of taps per output channel
  int64_t channel_octets;  // octets of output channels per group (depthwise: octets of groups)
  AlignedBytes packed;     // [group][channel octet][tap octet][8 channels][8 taps] (depthwise: one group)

  int64_t bytes;
};

// A layout is fixed by W's shape.
WeightCache::Key KeyOf(const ConvShape& s) {
  return {s.attrs.group, s.OutPerGroup(), s.InPerGroup(), s.kernel_h, s.kernel_w};
}

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
  l.depthwise = !l.in_place && cg == 1 && rows == 1;
  const int64_t block = kOctet * kOctet;
  if (l.depthwise) {  // lane = group, byte = tap
    l.tap_octets = l.k_octets = RoundUpOctets(khw);
    l.channel_octets = RoundUpOctets(s.attrs.group);
    l.bytes = l.channel_octets * l.k_octets * block;
    l.packed = AlignedBytes(l.bytes);
    uint8_t* out = l.packed.data();
    for (int64_t q = 0; q < l.channel_octets; ++q) {
      for (int64_t k = 0; k < l.k_octets; ++k) {
        for (int64_t lane = 0; lane < kOctet; ++lane) {
          const int64_t g = q * kOctet + lane;
          for (int64_t b = 0; b < kOctet; ++b, ++out) {
            const int64_t t = k * kOctet + b;
            *out = g < s.attrs.group && t < khw ? w[g * khw + t] : 0;
          }
        }
      }
    }
    return layout;
  }
  l.tap_octets = l.in_place ? RoundUpOctets(cg) : RoundUpOctets(cg * khw);
  l.k_octets = l.in_place ? khw * l.tap_octets : l.tap_octets;
  l.channel_octets = RoundUpOctets(rows);
  l.bytes = s.attrs.group * l.channel_octets * l.k_octets * block;
  l.packed = AlignedBytes(l.bytes);
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

// Items of work: (image, group, block of output pixels, chunk of output-channel octets); depthwise layers
// have one group of octets of groups.
constexpr int64_t kPixelsPerItem = 64;
constexpr int64_t kChannelOctetsPerItem = 16;

// The quantised image of one input: planes of 8 channels ([group][octet][Hp][Wp][8 bytes]), padded
// spatially with the zero point; a group's channels past the last whole octet are 0 bytes.
struct Image {
  int64_t padded_h, padded_w, octets;  // octets per group
  int64_t plane_bytes, group_bytes, image_bytes;

  explicit Image(const ConvShape& s)
      : padded_h(s.in_h + s.attrs.pads[0] + s.attrs.pads[2]),
        padded_w(s.in_w + s.attrs.pads[1] + s.attrs.pads[3]),
        octets(RoundUpOctets(s.InPerGroup())),
        plane_bytes(padded_h * padded_w * kOctet),
        group_bytes(octets * plane_bytes),
        image_bytes(s.attrs.group * group_bytes) {}
};

struct ForwardJob {
  const ConvShape* shape;
  const QuantizedTileKernels* kernels;
  const QuantizedWeightLayout* layout;
  const Epilogue<float>* epilogue;
  const Image* geometry;
  const uint8_t* image;
  const std::vector<int64_t>* tap_offsets;  // within a plane
  int64_t pixel_blocks, channel_chunks;
  float* y;
};

// Depthwise: for each octet of groups, every pixel's column holds, per octet of taps, 8 groups x 8 taps
// (an 8 x 8 byte transpose of the image's 8-group pixels at the taps), the x of one VPSADBW per octet.
void DepthwiseItem(const ForwardJob& job, int64_t n, int64_t pos0, int64_t count, int64_t q0, int64_t q1) {
  const ConvShape& s = *job.shape;
  const QuantizedWeightLayout& l = *job.layout;
  const Image& im = *job.geometry;
  const ConvAttributes& a = s.attrs;
  const int64_t positions = s.Positions(), taps = static_cast<int64_t>(job.tap_offsets->size());
  const int64_t column_bytes = l.k_octets * kOctet * kOctet;
  thread_local std::vector<const uint8_t*> pixels;
  thread_local std::vector<uint8_t> storage;
  pixels.resize(count);
  storage.resize(count * column_bytes + 64);
  uint8_t* columns = storage.data() + (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64;
  const Epilogue<float>& e = *job.epilogue;
  for (int64_t q = q0; q < q1; ++q) {
    const uint8_t* plane = job.image + n * im.image_bytes + q * im.plane_bytes;
    for (int64_t p = 0; p < count; ++p) {
      const int64_t pos = pos0 + p, oh = pos / s.out_w, ow = pos % s.out_w;
      const uint8_t* base = plane + (oh * a.strides[0] * im.padded_w + ow * a.strides[1]) * kOctet;
      uint8_t* column = columns + p * column_bytes;
      for (int64_t k = 0; k < l.k_octets; ++k) {
        uint8_t* out = column + k * kOctet * kOctet;
#if defined(__SSE2__)
        __m128i r[8];
        for (int64_t b = 0; b < kOctet; ++b) {
          const int64_t t = k * kOctet + b;
          r[b] = t < taps ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(base + (*job.tap_offsets)[t]))
                          : _mm_setzero_si128();
        }
        // Rows: taps (bytes: groups) -> 8 groups x 8 taps.
        const __m128i a0 = _mm_unpacklo_epi8(r[0], r[1]), a1 = _mm_unpacklo_epi8(r[2], r[3]);
        const __m128i a2 = _mm_unpacklo_epi8(r[4], r[5]), a3 = _mm_unpacklo_epi8(r[6], r[7]);
        const __m128i b0 = _mm_unpacklo_epi16(a0, a1), b1 = _mm_unpackhi_epi16(a0, a1);
        const __m128i b2 = _mm_unpacklo_epi16(a2, a3), b3 = _mm_unpackhi_epi16(a2, a3);
        _mm_store_si128(reinterpret_cast<__m128i*>(out), _mm_unpacklo_epi32(b0, b2));
        _mm_store_si128(reinterpret_cast<__m128i*>(out) + 1, _mm_unpackhi_epi32(b0, b2));
        _mm_store_si128(reinterpret_cast<__m128i*>(out) + 2, _mm_unpacklo_epi32(b1, b3));
        _mm_store_si128(reinterpret_cast<__m128i*>(out) + 3, _mm_unpackhi_epi32(b1, b3));
#else
        for (int64_t b = 0; b < kOctet; ++b) {  // tap b of the octet: byte b of every group's 8 bytes
          const int64_t t = k * kOctet + b;
          const uint8_t* row = base + (t < taps ? (*job.tap_offsets)[t] : 0);
          for (int64_t lane = 0; lane < kOctet; ++lane) out[lane * kOctet + b] = t < taps ? row[lane] : 0;
        }
#endif
      }
      pixels[p] = column;
    }
    const int64_t m0 = q * kOctet;
    SadTile tile;
    tile.pixels = pixels.data();
    tile.count = count;
    tile.tap_offsets = nullptr;
    tile.taps = 1;
    tile.octets = l.k_octets;
    tile.octet_stride = kOctet * kOctet;
    tile.w = l.packed.data() + q * l.k_octets * kOctet * kOctet;
    tile.w_stride = 0;
    tile.channels = std::min(kOctet, s.out_channels - m0);
    tile.alpha = e.scale + m0;
    tile.beta = e.shift + m0;
    tile.relu = e.relu;
    tile.y = job.y + (n * s.out_channels + m0) * positions + pos0;
    tile.y_stride = positions;
    job.kernels->sad_lanes(tile);
  }
}

void ForwardItem(void* data, size_t item) {
  const ForwardJob& job = *static_cast<const ForwardJob*>(data);
  const ConvShape& s = *job.shape;
  const QuantizedWeightLayout& l = *job.layout;
  const Image& im = *job.geometry;
  const ConvAttributes& a = s.attrs;
  const QuantizedTileKernels& kernels = *job.kernels;
  int64_t rest = static_cast<int64_t>(item);
  const int64_t chunk = rest % job.channel_chunks;
  rest /= job.channel_chunks;
  const int64_t block = rest % job.pixel_blocks;
  rest /= job.pixel_blocks;
  const int64_t groups = l.depthwise ? 1 : a.group;  // depthwise: the groups are in the octets
  const int64_t g = rest % groups, n = rest / groups;
  const int64_t positions = s.Positions(), pos0 = block * kPixelsPerItem;
  const int64_t count = std::min(kPixelsPerItem, positions - pos0);
  const int64_t q0 = chunk * kChannelOctetsPerItem, q1 = std::min(l.channel_octets, q0 + kChannelOctetsPerItem);

  if (l.depthwise) {
    DepthwiseItem(job, n, pos0, count, q0, q1);
    return;
  }
  thread_local std::vector<const uint8_t*> pixels;
  thread_local std::vector<uint8_t> columns;
  pixels.resize(count);
  const int64_t column_bytes = l.k_octets * kOctet, cg = s.InPerGroup();
  const int64_t taps = static_cast<int64_t>(job.tap_offsets->size());
  if (!l.in_place) columns.resize(count * column_bytes + kOctet);  // the last octet may run past the column
  const uint8_t* image = job.image + n * im.image_bytes + g * im.group_bytes;
  for (int64_t p = 0; p < count; ++p) {
    const int64_t pos = pos0 + p, oh = pos / s.out_w, ow = pos % s.out_w;
    const uint8_t* base = image + (oh * a.strides[0] * im.padded_w + ow * a.strides[1]) * kOctet;
    if (l.in_place) {
      pixels[p] = base;
      continue;
    }
    // Column: taps outer, the group's channels inner, gathered from the planes a whole octet at a time;
    // the bytes past a tap's channels are overwritten by the next tap, and by zeros after the last.
    uint8_t* column = columns.data() + p * column_bytes;
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t o = 0; o < im.octets; ++o) {
        std::memcpy(column + t * cg + o * kOctet, base + (*job.tap_offsets)[t] + o * im.plane_bytes, kOctet);
      }
    }
    std::memset(column + taps * cg, 0, column_bytes - taps * cg);
    pixels[p] = column;
  }
  static const int64_t kZero = 0;
  const int64_t m0 = g * s.OutPerGroup() + q0 * kOctet;
  const Epilogue<float>& e = *job.epilogue;
  SadTile tile;
  tile.pixels = pixels.data();
  tile.count = count;
  tile.tap_offsets = l.in_place ? job.tap_offsets->data() : &kZero;
  tile.taps = l.in_place ? taps : 1;
  tile.octets = l.tap_octets;
  tile.octet_stride = l.in_place ? im.plane_bytes : kOctet;
  tile.w = l.packed.data() + (g * l.channel_octets + q0) * l.k_octets * kOctet * kOctet;
  tile.w_stride = l.k_octets * kOctet * kOctet;
  tile.channels = std::min(s.OutPerGroup(), q1 * kOctet) - q0 * kOctet;
  tile.alpha = e.scale + m0;
  tile.beta = e.shift + m0;
  tile.relu = e.relu;
  tile.y = job.y + (n * s.out_channels + m0) * positions + pos0;
  tile.y_stride = positions;
  kernels.sad(tile);
}

// Rows narrower than this are quantised as one run of the whole plane (see QuantizePlane).
constexpr int64_t kShortRow = 32;

// Quantises one plane (image, group, octet of channels) of the image, reading its 8 input planes front to
// back and writing its bytes in order.
struct QuantizeJob {
  const ConvShape* shape;
  const QuantizedTileKernels* kernels;
  const Image* geometry;
  const float* x;
  float inv_scale;
  int32_t zero_point;
  uint8_t* image;
};

void QuantizePlane(void* data, size_t item) {
  const QuantizeJob& job = *static_cast<const QuantizeJob*>(data);
  const ConvShape& s = *job.shape;
  const Image& im = *job.geometry;
  const ConvAttributes& a = s.attrs;
  const int64_t octet = static_cast<int64_t>(item) % im.octets;
  const int64_t g = static_cast<int64_t>(item) / im.octets % a.group;
  const int64_t n = static_cast<int64_t>(item) / im.octets / a.group;
  const int64_t cg = s.InPerGroup(), c = octet * kOctet, channels = std::min(kOctet, cg - c);
  const int64_t plane = s.in_h * s.in_w, row_bytes = im.padded_w * kOctet;
  // A padding pixel: the zero point for the real channels, 0 for the octet's padding.
  uint8_t pad[kOctet] = {};
  for (int64_t b = 0; b < channels; ++b) pad[b] = static_cast<uint8_t>(job.zero_point);
  uint8_t* out = job.image + n * im.image_bytes + g * im.group_bytes + octet * im.plane_bytes;
  const auto fill = [&](uint8_t* at, int64_t pixels) {
    for (int64_t p = 0; p < pixels; ++p) std::memcpy(at + p * kOctet, pad, kOctet);
  };
  fill(out, a.pads[0] * im.padded_w);
  const float* src = job.x + (n * s.in_channels + g * cg + c) * plane;
  const QuantizedTileKernels& kernels = *job.kernels;
  if (a.pads[1] == 0 && a.pads[3] == 0) {
    // No padding at the sides: the rows lie back to back, the whole plane in one call.
    kernels.quantize_octet(src, plane, channels, plane, job.inv_scale, job.zero_point, out + a.pads[0] * row_bytes);
  } else if (s.in_w < kShortRow) {
    // Short rows (a vector step is 16 pixels): the plane quantised back to back in one call, then copied row by
    // row; per row, the calls would leave most lanes idle (14 or 7 of 16 pixels at ResNet's 14 x 14 and 7 x 7).
    thread_local std::vector<uint8_t> packed;
    packed.resize(plane * kOctet);
    kernels.quantize_octet(src, plane, channels, plane, job.inv_scale, job.zero_point, packed.data());
    for (int64_t ih = 0; ih < s.in_h; ++ih) {
      uint8_t* row = out + (a.pads[0] + ih) * row_bytes;
      fill(row, a.pads[1]);
      std::memcpy(row + a.pads[1] * kOctet, packed.data() + ih * s.in_w * kOctet, s.in_w * kOctet);
      fill(row + (a.pads[1] + s.in_w) * kOctet, a.pads[3]);
    }
  } else {
    for (int64_t ih = 0; ih < s.in_h; ++ih) {
      uint8_t* row = out + (a.pads[0] + ih) * row_bytes;
      fill(row, a.pads[1]);
      kernels.quantize_octet(src + ih * s.in_w, plane, channels, s.in_w, job.inv_scale, job.zero_point,
                             row + a.pads[1] * kOctet);
      fill(row + (a.pads[1] + s.in_w) * kOctet, a.pads[3]);
    }
  }
  fill(out + (a.pads[0] + s.in_h) * row_bytes, a.pads[2] * im.padded_w);
}

}  // namespace

void QuantizedAdderConvForward(const ConvShape& s, const float* x, const uint8_t* w,
                               const QuantizedAttributes& quantization, const Epilogue<float>& epilogue, float* y,
                               const ParallelFor& parallel, WeightCache* cache) {
  const QuantizedTileKernels& kernels = Kernels();
  const int64_t positions = s.Positions();
  if (s.batch * positions == 0) return;
  std::shared_ptr<const QuantizedWeightLayout> layout;
  if (cache != nullptr) layout = cache->Find<QuantizedWeightLayout>(KeyOf(s));
  if (layout == nullptr) {
    layout = LayOutWeights(s, w);
    if (cache != nullptr) cache->Keep(KeyOf(s), layout, layout->bytes, layout->bytes);  // the first one only
  }
  const ConvAttributes& a = s.attrs;
  // Depthwise: the image of one group of all the channels, so that a plane holds 8 groups.
  ConvShape image_shape = s;
  if (layout->depthwise) image_shape.attrs.group = 1;
  const Image geometry(image_shape);
  AlignedBytes own_image;
  uint8_t* const image = ImageBuffer(static_cast<size_t>(s.batch * geometry.image_bytes), &own_image);
  const int32_t zero_point = static_cast<int32_t>(quantization.x_zero_point);
  QuantizeJob quantize{&image_shape, &kernels, &geometry, x, 1.0f / quantization.x_scale, zero_point, image};
  parallel.Run(static_cast<size_t>(s.batch * image_shape.attrs.group * geometry.octets), &QuantizePlane, &quantize);

  std::vector<int64_t> tap_offsets;
  for (int64_t i = 0; i < s.kernel_h; ++i) {
    for (int64_t j = 0; j < s.kernel_w; ++j) {
      tap_offsets.push_back((i * a.dilations[0] * geometry.padded_w + j * a.dilations[1]) * kOctet);
    }
  }
  ForwardJob job{&s,
                 &kernels,
                 layout.get(),
                 &epilogue,
                 &geometry,
                 image,
                 &tap_offsets,
                 (positions + kPixelsPerItem - 1) / kPixelsPerItem,
                 (layout->channel_octets + kChannelOctetsPerItem - 1) / kChannelOctetsPerItem,
                 y};
  parallel.Run(static_cast<size_t>(s.batch * image_shape.attrs.group * job.pixel_blocks * job.channel_chunks),
               &ForwardItem, &job);
}

const char* QuantizedKernelIsa() {
  return IsaNameOrError([] { return Kernels().isa; });
}

}  // namespace adderconvert::cpu
