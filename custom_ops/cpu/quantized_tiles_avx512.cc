// Quantised AdderConv micro-kernels for AVX-512 (F, BW, VL, DQ; flags set in CMakeLists.txt).
// Everything here has internal linkage and uses no inline library templates, so no code built for
// AVX-512 can be picked by the linker for another file.
// GCC 12 warns about the deliberately undefined upper halves inside its own AVX-512 conversion intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

#include "cpu/quantized_tiles.h"

namespace adderconvert::cpu {
namespace {

// Register block: kPixels output pixels x kOctets octets of output channels, one zmm accumulator each
// (lanes: 8 output channels, each the 64-bit sum of VPSADBW over its 8-byte groups of taps).
constexpr int kPixels = 8;
constexpr int kOctets = 3;

template <int P, int Q>
void SadBlock(const uint8_t* const* pixels, const int64_t* tap_offsets, int64_t taps, int64_t octets, const uint8_t* w,
              int64_t w_stride, int32_t* out, int64_t out_stride) {
  __m512i acc[P][Q];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) acc[p][q] = _mm512_setzero_si512();
  }
  for (int64_t t = 0; t < taps; ++t) {
    const uint8_t* x[P];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) x[p] = pixels[p] + tap_offsets[t];
    for (int64_t c = 0; c < octets; ++c, w += 64) {
      __m512i wv[Q];
#pragma GCC unroll 4
      for (int q = 0; q < Q; ++q) wv[q] = _mm512_load_si512(w + q * w_stride);
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
        long long bits;
        std::memcpy(&bits, x[p] + c * 8, 8);
        const __m512i xv = _mm512_set1_epi64(bits);
#pragma GCC unroll 4
        for (int q = 0; q < Q; ++q) acc[p][q] = _mm512_add_epi64(acc[p][q], _mm512_sad_epu8(xv, wv[q]));
      }
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + p * out_stride + q * 8), _mm512_cvtepi64_epi32(acc[p][q]));
    }
  }
}

using SadBlockFn = void (*)(const uint8_t* const*, const int64_t*, int64_t, int64_t, const uint8_t*, int64_t, int32_t*,
                            int64_t);

template <int P>
struct Row {
  static constexpr SadBlockFn fns[kOctets] = {&SadBlock<P, 1>, &SadBlock<P, 2>, &SadBlock<P, 3>};
};

constexpr const SadBlockFn* kBlocks[kPixels] = {Row<1>::fns, Row<2>::fns, Row<3>::fns, Row<4>::fns,
                                                Row<5>::fns, Row<6>::fns, Row<7>::fns, Row<8>::fns};

void Sad(const SadTile& t) {
  for (int64_t p = 0; p < t.count; p += kPixels) {
    const int64_t pixels = t.count - p < kPixels ? t.count - p : kPixels;
    for (int64_t q = 0; q < t.channel_octets; q += kOctets) {
      const int64_t octets = t.channel_octets - q < kOctets ? t.channel_octets - q : kOctets;
      kBlocks[pixels - 1][octets - 1](t.pixels + p, t.tap_offsets, t.taps, t.octets, t.w + q * t.w_stride, t.w_stride,
                                      t.out + p * t.out_stride + q * 8, t.out_stride);
    }
  }
}

// 16 values quantised to bytes (see QuantizeValue): NaN lanes become 0 before the zero point is added.
inline __m128i Quantize16(__m512 x, __m512 inv, __m512 lo, __m512 hi, __m512i zero_point) {
  __m512 v = _mm512_mul_ps(x, inv);
  const __mmask16 ordered = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
  v = _mm512_maskz_min_ps(ordered, _mm512_max_ps(v, lo), hi);
  const __m512i q = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_cvtepi32_epi8(_mm512_add_epi32(q, zero_point));
}

void QuantizeOctet(const float* x, int64_t channel_stride, int64_t channels, int64_t count, float inv_scale,
                   int32_t zero_point, uint8_t* out, int64_t out_stride) {
  const __m512 inv = _mm512_set1_ps(inv_scale);
  const __m512 lo = _mm512_set1_ps(static_cast<float>(-zero_point));
  const __m512 hi = _mm512_set1_ps(static_cast<float>(255 - zero_point));
  const __m512i zp = _mm512_set1_epi32(zero_point);
  for (int64_t p = 0; p < count; p += 16) {
    const int64_t n = count - p < 16 ? count - p : 16;
    const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
    __m128i r[8];
    for (int c = 0; c < 8; ++c) {
      r[c] = c < channels ? Quantize16(_mm512_maskz_loadu_ps(mask, x + c * channel_stride + p), inv, lo, hi, zp)
                          : _mm_setzero_si128();
    }
    // 8 channels x 16 pixels of bytes to 16 pixels x 8 channels.
    __m128i a[8], b[8], d[8];
    for (int k = 0; k < 4; ++k) {
      a[2 * k] = _mm_unpacklo_epi8(r[2 * k], r[2 * k + 1]);
      a[2 * k + 1] = _mm_unpackhi_epi8(r[2 * k], r[2 * k + 1]);
    }
    // b: (pixels 0-3, 4-7, 8-11, 12-15) of channels 0-3, then of channels 4-7
    b[0] = _mm_unpacklo_epi16(a[0], a[2]);
    b[1] = _mm_unpackhi_epi16(a[0], a[2]);
    b[2] = _mm_unpacklo_epi16(a[1], a[3]);
    b[3] = _mm_unpackhi_epi16(a[1], a[3]);
    b[4] = _mm_unpacklo_epi16(a[4], a[6]);
    b[5] = _mm_unpackhi_epi16(a[4], a[6]);
    b[6] = _mm_unpacklo_epi16(a[5], a[7]);
    b[7] = _mm_unpackhi_epi16(a[5], a[7]);
    for (int k = 0; k < 4; ++k) {  // d[2k], d[2k+1]: pixels 4k..4k+3, two per register
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

QuantizedTileKernels QuantizedTileKernelsAvx512() { return {"avx512", &Sad, &QuantizeOctet, &Epilogue}; }

}  // namespace adderconvert::cpu
