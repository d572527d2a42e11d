// Quantised AdderConv micro-kernels for AVX2 and FMA (flags set in CMakeLists.txt).
// Everything here has internal linkage and uses no inline library templates, so no code built for
// AVX2 can be picked by the linker for another file.
#include <immintrin.h>

#include <cstring>

#include "cpu/quantized_tiles.h"

namespace adderconvert::cpu {
namespace {

// Register block: up to kPixels output pixels x one octet of output channels, two ymm accumulators per
// pixel (channels 0-3 and 4-7, each lane the 64-bit VPSADBW sum over its 8-byte groups of taps).
constexpr int kPixels = 6;

// Applies the epilogue to the sums of P pixels x 8 channels m0.. (lo[p], hi[p]: channels 0-3, 4-7) and
// stores them to y[m * y_stride + p].
template <int P>
inline void StoreOctet(const __m256i* lo, const __m256i* hi, const SadTile& t, int64_t p0, int64_t m0) {
  alignas(32) int32_t sums[P][8];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    // The low dwords of the 8 lanes, in order: (lo0 lo1 hi0 hi1 | lo2 lo3 hi2 hi3) -> (lo0..3 hi0..3).
    const __m256 even = _mm256_shuffle_ps(_mm256_castsi256_ps(lo[p]), _mm256_castsi256_ps(hi[p]), 0x88);
    _mm256_store_si256(reinterpret_cast<__m256i*>(sums[p]), _mm256_permute4x64_epi64(_mm256_castps_si256(even), 0xD8));
  }
  const int64_t valid = t.channels - m0 < 8 ? t.channels - m0 : 8;
  for (int64_t l = 0; l < valid; ++l) {
    const float a = t.alpha[m0 + l], b = t.beta[m0 + l];
    float* y = t.y + (m0 + l) * t.y_stride + p0;
    for (int p = 0; p < P; ++p) {
      const float v = __builtin_fmaf(a, static_cast<float>(sums[p][l]), b);
      y[p] = t.relu && v < 0.0f ? 0.0f : v;
    }
  }
}

template <int P>
void SadBlock(const SadTile& t, int64_t p0, int64_t q) {
  const uint8_t* const* pixels = t.pixels + p0;
  const int64_t* tap_offsets = t.tap_offsets;
  const int64_t taps = t.taps, octets = t.octets, octet_stride = t.octet_stride;
  const uint8_t* w = t.w + q * t.w_stride;
  __m256i lo[P], hi[P];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) lo[p] = hi[p] = _mm256_setzero_si256();
  for (int64_t k = 0; k < taps; ++k) {
    const uint8_t* x[P];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) x[p] = pixels[p] + tap_offsets[k];
    for (int64_t c = 0; c < octets; ++c, w += 64) {
      const int64_t at = c * octet_stride;
      const __m256i w_lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(w));
      const __m256i w_hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 32));
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
        long long bits;
        std::memcpy(&bits, x[p] + at, 8);
        const __m256i xv = _mm256_set1_epi64x(bits);
        lo[p] = _mm256_add_epi64(lo[p], _mm256_sad_epu8(xv, w_lo));
        hi[p] = _mm256_add_epi64(hi[p], _mm256_sad_epu8(xv, w_hi));
      }
    }
  }
  StoreOctet<P>(lo, hi, t, p0, q * 8);
}

using SadBlockFn = void (*)(const SadTile&, int64_t, int64_t);
constexpr SadBlockFn kBlocks[kPixels] = {&SadBlock<1>, &SadBlock<2>, &SadBlock<3>,
                                         &SadBlock<4>, &SadBlock<5>, &SadBlock<6>};

void Sad(const SadTile& t) {
  for (int64_t p = 0; p < t.count; p += kPixels) {
    const int64_t pixels = t.count - p < kPixels ? t.count - p : kPixels;
    for (int64_t q = 0; q * 8 < t.channels; ++q) kBlocks[pixels - 1](t, p, q);
  }
}

template <int P>
void LanesBlock(const SadTile& t, int64_t p0) {
  const uint8_t* const* pixels = t.pixels + p0;
  __m256i lo[P], hi[P];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) lo[p] = hi[p] = _mm256_setzero_si256();
  for (int64_t c = 0; c < t.octets; ++c) {
    const __m256i w_lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(t.w + c * 64));
    const __m256i w_hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(t.w + c * 64 + 32));
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const uint8_t* x = pixels[p] + c * t.octet_stride;
      lo[p] = _mm256_add_epi64(lo[p], _mm256_sad_epu8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)), w_lo));
      hi[p] =
          _mm256_add_epi64(hi[p], _mm256_sad_epu8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32)), w_hi));
    }
  }
  StoreOctet<P>(lo, hi, t, p0, 0);
}

using LanesBlockFn = void (*)(const SadTile&, int64_t);
constexpr LanesBlockFn kLanesBlocks[kPixels] = {&LanesBlock<1>, &LanesBlock<2>, &LanesBlock<3>,
                                                &LanesBlock<4>, &LanesBlock<5>, &LanesBlock<6>};

void SadLanes(const SadTile& t) {
  for (int64_t p = 0; p < t.count; p += kPixels) {
    kLanesBlocks[(t.count - p < kPixels ? t.count - p : kPixels) - 1](t, p);
  }
}

// 8 values quantised (see QuantizeValue) to int32: NaN lanes become 0 before the zero point is added.
// The conversion rounds in the MXCSR mode, round half to even by default.
inline __m256i Quantize8(__m256 x, __m256 inv, __m256 lo, __m256 hi, __m256i zero_point) {
  __m256 v = _mm256_mul_ps(x, inv);
  const __m256 ordered = _mm256_cmp_ps(v, v, _CMP_ORD_Q);
  v = _mm256_and_ps(_mm256_min_ps(_mm256_max_ps(v, lo), hi), ordered);
  return _mm256_add_epi32(_mm256_cvtps_epi32(v), zero_point);
}

void QuantizeOctet(const float* x, int64_t channel_stride, int64_t channels, int64_t count, float inv_scale,
                   int32_t zero_point, uint8_t* out) {
  const __m256 inv = _mm256_set1_ps(inv_scale);
  const __m256 lo = _mm256_set1_ps(static_cast<float>(-zero_point));
  const __m256 hi = _mm256_set1_ps(static_cast<float>(255 - zero_point));
  const __m256i zp = _mm256_set1_epi32(zero_point);
  alignas(32) float tail[8];
  alignas(32) uint8_t bytes[64];
  for (int64_t p = 0; p < count; p += 8) {
    const int64_t n = count - p < 8 ? count - p : 8;
    // Channel c's bytes go to bits 8 * (c % 4) of a dword per pixel: channels 0-3 in low, 4-7 in high.
    __m256i low = _mm256_setzero_si256(), high = _mm256_setzero_si256();
    for (int c = 0; c < 8 && c < channels; ++c) {
      const float* src = x + c * channel_stride + p;
      if (n < 8) {
        for (int i = 0; i < 8; ++i) tail[i] = i < n ? src[i] : 0.0f;
        src = tail;
      }
      const __m256i shifted = _mm256_slli_epi32(Quantize8(_mm256_loadu_ps(src), inv, lo, hi, zp), 8 * (c % 4));
      if (c < 4) {
        low = _mm256_or_si256(low, shifted);
      } else {
        high = _mm256_or_si256(high, shifted);
      }
    }
    // Qwords (0 1 | 4 5) and (2 3 | 6 7) to pixels 0-3 and 4-7.
    const __m256i a = _mm256_unpacklo_epi32(low, high), b = _mm256_unpackhi_epi32(low, high);
    const __m256i first = _mm256_permute2x128_si256(a, b, 0x20), second = _mm256_permute2x128_si256(a, b, 0x31);
    uint8_t* o = out + 8 * p;
    if (n == 8) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), first);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 32), second);
    } else {
      _mm256_store_si256(reinterpret_cast<__m256i*>(bytes), first);
      _mm256_store_si256(reinterpret_cast<__m256i*>(bytes + 32), second);
      std::memcpy(o, bytes, 8 * n);
    }
  }
}

}  // namespace

QuantizedTileKernels QuantizedTileKernelsAvx2() { return {"avx2", &Sad, &SadLanes, &QuantizeOctet}; }

}  // namespace adderconvert::cpu
