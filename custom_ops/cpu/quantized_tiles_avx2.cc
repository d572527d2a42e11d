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

template <int P>
void SadBlock(const uint8_t* const* pixels, const int64_t* tap_offsets, int64_t taps, int64_t octets, const uint8_t* w,
              int32_t* out, int64_t out_stride) {
  __m256i lo[P], hi[P];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) lo[p] = hi[p] = _mm256_setzero_si256();
  for (int64_t t = 0; t < taps; ++t) {
    const uint8_t* x[P];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) x[p] = pixels[p] + tap_offsets[t];
    for (int64_t c = 0; c < octets; ++c, w += 64) {
      const __m256i w_lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(w));
      const __m256i w_hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 32));
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
        long long bits;
        std::memcpy(&bits, x[p] + c * 8, 8);
        const __m256i xv = _mm256_set1_epi64x(bits);
        lo[p] = _mm256_add_epi64(lo[p], _mm256_sad_epu8(xv, w_lo));
        hi[p] = _mm256_add_epi64(hi[p], _mm256_sad_epu8(xv, w_hi));
      }
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    // The low dwords of the 8 lanes, in order: (lo0 lo1 hi0 hi1 | lo2 lo3 hi2 hi3) -> (lo0..3 hi0..3).
    const __m256 even = _mm256_shuffle_ps(_mm256_castsi256_ps(lo[p]), _mm256_castsi256_ps(hi[p]), 0x88);
    const __m256i sums = _mm256_permute4x64_epi64(_mm256_castps_si256(even), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + p * out_stride), sums);
  }
}

using SadBlockFn = void (*)(const uint8_t* const*, const int64_t*, int64_t, int64_t, const uint8_t*, int32_t*, int64_t);
constexpr SadBlockFn kBlocks[kPixels] = {&SadBlock<1>, &SadBlock<2>, &SadBlock<3>,
                                         &SadBlock<4>, &SadBlock<5>, &SadBlock<6>};

void Sad(const SadTile& t) {
  for (int64_t p = 0; p < t.count; p += kPixels) {
    const int64_t pixels = t.count - p < kPixels ? t.count - p : kPixels;
    for (int64_t q = 0; q < t.channel_octets; ++q) {
      kBlocks[pixels - 1](t.pixels + p, t.tap_offsets, t.taps, t.octets, t.w + q * t.w_stride,
                          t.out + p * t.out_stride + q * 8, t.out_stride);
    }
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
                   int32_t zero_point, uint8_t* out, int64_t out_stride) {
  const __m256 inv = _mm256_set1_ps(inv_scale);
  const __m256 lo = _mm256_set1_ps(static_cast<float>(-zero_point));
  const __m256 hi = _mm256_set1_ps(static_cast<float>(255 - zero_point));
  const __m256i zp = _mm256_set1_epi32(zero_point);
  alignas(32) float tail[16];
  for (int64_t p = 0; p < count; p += 16) {
    const int64_t n = count - p < 16 ? count - p : 16;
    __m128i r[8];
    for (int c = 0; c < 8; ++c) {
      if (c >= channels) {
        r[c] = _mm_setzero_si128();
        continue;
      }
      const float* src = x + c * channel_stride + p;
      if (n < 16) {
        for (int i = 0; i < 16; ++i) tail[i] = i < n ? src[i] : 0.0f;
        src = tail;
      }
      const __m256i q0 = Quantize8(_mm256_loadu_ps(src), inv, lo, hi, zp);
      const __m256i q1 = Quantize8(_mm256_loadu_ps(src + 8), inv, lo, hi, zp);
      const __m256i words = _mm256_permute4x64_epi64(_mm256_packus_epi32(q0, q1), 0xD8);
      r[c] = _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
    }
    // 8 channels x 16 pixels of bytes to 16 pixels x 8 channels.
    __m128i a[8], b[8], d[8];
    for (int k = 0; k < 4; ++k) {
      a[2 * k] = _mm_unpacklo_epi8(r[2 * k], r[2 * k + 1]);
      a[2 * k + 1] = _mm_unpackhi_epi8(r[2 * k], r[2 * k + 1]);
    }
    b[0] = _mm_unpacklo_epi16(a[0], a[2]);
    b[1] = _mm_unpackhi_epi16(a[0], a[2]);
    b[2] = _mm_unpacklo_epi16(a[1], a[3]);
    b[3] = _mm_unpackhi_epi16(a[1], a[3]);
    b[4] = _mm_unpacklo_epi16(a[4], a[6]);
    b[5] = _mm_unpackhi_epi16(a[4], a[6]);
    b[6] = _mm_unpacklo_epi16(a[5], a[7]);
    b[7] = _mm_unpackhi_epi16(a[5], a[7]);
    for (int k = 0; k < 4; ++k) {
      d[2 * k] = _mm_unpacklo_epi32(b[k], b[k + 4]);
      d[2 * k + 1] = _mm_unpackhi_epi32(b[k], b[k + 4]);
    }
    uint8_t* o = out + p * out_stride;
    for (int k = 0; k < 8 && 2 * k < n; ++k) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(o + 2 * k * out_stride), d[k]);
      if (2 * k + 1 < n) {
        const long long high = _mm_extract_epi64(d[k], 1);
        std::memcpy(o + (2 * k + 1) * out_stride, &high, 8);
      }
    }
  }
}

void Epilogue(const int32_t* s, int64_t s_stride, int64_t count, int64_t channels, const float* alpha,
              const float* beta, bool relu, float* y, int64_t y_stride) {
  for (int64_t m = 0; m < channels; ++m) {
    const float a = alpha[m], b = beta[m];
    float* ym = y + m * y_stride;
    for (int64_t p = 0; p < count; ++p) {
      const float v = __builtin_fmaf(a, static_cast<float>(s[p * s_stride + m]), b);
      ym[p] = relu && v < 0.0f ? 0.0f : v;
    }
  }
}

}  // namespace

QuantizedTileKernels QuantizedTileKernelsAvx2() { return {"avx2", &Sad, &QuantizeOctet, &Epilogue}; }

}  // namespace adderconvert::cpu
