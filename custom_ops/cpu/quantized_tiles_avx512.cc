// Quantised AdderConv micro-kernels for AVX-512 (F, BW, VL, DQ; flags set in CMakeLists.txt).
// Everything here has internal linkage and uses no inline library templates, so no code built for
// AVX-512 can be picked by the linker for another file.
// GCC 12 warns about the deliberately undefined upper halves inside its own AVX-512 conversion intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>
#include <utility>

#include "cpu/quantized_tiles.h"

namespace adderconvert::cpu {
namespace {

// Register block: kPixels output pixels x kOctets octets of output channels, one zmm accumulator each
// (lanes: 8 output channels, each the 64-bit sum of VPSADBW over its 8-byte groups of taps).
constexpr int kPixels = 8;
constexpr int kOctets = 3;

// Applies the epilogue to the sums of P pixels x 8 channels (acc[p] lanes: channels) and stores them to
// y[m * y_stride + p]: an 8 x 8 transpose by two-source permutes leaves two channels x 8 pixels per register.
template <int P>
inline void StoreOctet(const __m512i* acc, const SadTile& t, int64_t p0, int64_t m0) {
  const __m512i zero = _mm512_setzero_si512();
  __m512i r[8];
#pragma GCC unroll 8
  for (int p = 0; p < 8; ++p) r[p] = p < P ? acc[p] : zero;
  const __m512i pairs = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
  const __m512i quads_lo = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
  const __m512i quads_hi = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  const __m512i halves_lo = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
  const __m512i halves_hi = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
  // t[k]: qword l = channel l of pixels 2k, 2k + 1.
  __m512i t2[4];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) t2[k] = _mm512_permutex2var_epi32(r[2 * k], pairs, r[2 * k + 1]);
  // Channels 0-3 / 4-7 of pixels 0-3 and 4-7, 128 bits per channel.
  const __m512i a_lo = _mm512_permutex2var_epi64(t2[0], quads_lo, t2[1]);
  const __m512i a_hi = _mm512_permutex2var_epi64(t2[0], quads_hi, t2[1]);
  const __m512i b_lo = _mm512_permutex2var_epi64(t2[2], quads_lo, t2[3]);
  const __m512i b_hi = _mm512_permutex2var_epi64(t2[2], quads_hi, t2[3]);
  // v[j]: channels 2j (low half) and 2j + 1 (high half), pixels 0-7.
  const __m512i v[4] = {
      _mm512_permutex2var_epi64(a_lo, halves_lo, b_lo), _mm512_permutex2var_epi64(a_lo, halves_hi, b_lo),
      _mm512_permutex2var_epi64(a_hi, halves_lo, b_hi), _mm512_permutex2var_epi64(a_hi, halves_hi, b_hi)};
  const int64_t valid = t.channels - m0 < 8 ? t.channels - m0 : 8;
  const __mmask8 channel_mask = static_cast<__mmask8>((1u << valid) - 1);
  const __mmask8 pixel_mask = static_cast<__mmask8>((1u << P) - 1);
  const __m512 alpha = _mm512_castps256_ps512(_mm256_maskz_loadu_ps(channel_mask, t.alpha + m0));
  const __m512 beta = _mm512_castps256_ps512(_mm256_maskz_loadu_ps(channel_mask, t.beta + m0));
  const __m512i pair_index = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  float* y = t.y + m0 * t.y_stride + p0;
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    if (2 * j >= valid) break;
    const __m512i index = _mm512_add_epi32(pair_index, _mm512_set1_epi32(2 * j));
    __m512 out = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v[j]), _mm512_permutexvar_ps(index, alpha),
                                 _mm512_permutexvar_ps(index, beta));
    if (t.relu) out = _mm512_max_ps(_mm512_setzero_ps(), out);  // max(0, NaN) is NaN
    _mm256_mask_storeu_ps(y + 2 * j * t.y_stride, pixel_mask, _mm512_castps512_ps256(out));
    if (2 * j + 1 < valid) {
      _mm256_mask_storeu_ps(y + (2 * j + 1) * t.y_stride, pixel_mask, _mm512_extractf32x8_ps(out, 1));
    }
  }
}

template <int P, int Q>
void SadBlock(const SadTile& t, int64_t p0, int64_t q0) {
  const uint8_t* const* pixels = t.pixels + p0;
  const int64_t* tap_offsets = t.tap_offsets;
  const int64_t taps = t.taps, octets = t.octets, octet_stride = t.octet_stride, w_stride = t.w_stride;
  const uint8_t* w = t.w + q0 * w_stride;
  __m512i acc[Q][P];
#pragma GCC unroll 4
  for (int q = 0; q < Q; ++q) {
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) acc[q][p] = _mm512_setzero_si512();
  }
  for (int64_t k = 0; k < taps; ++k) {
    const uint8_t* x[P];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) x[p] = pixels[p] + tap_offsets[k];
    for (int64_t c = 0; c < octets; ++c, w += 64) {
      const int64_t at = c * octet_stride;
      __m512i wv[Q];
#pragma GCC unroll 4
      for (int q = 0; q < Q; ++q) wv[q] = _mm512_load_si512(w + q * w_stride);
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
        long long bits;
        std::memcpy(&bits, x[p] + at, 8);
        const __m512i xv = _mm512_set1_epi64(bits);
#pragma GCC unroll 4
        for (int q = 0; q < Q; ++q) acc[q][p] = _mm512_add_epi64(acc[q][p], _mm512_sad_epu8(xv, wv[q]));
      }
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < Q; ++q) StoreOctet<P>(acc[q], t, p0, (q0 + q) * 8);
}

using SadBlockFn = void (*)(const SadTile&, int64_t, int64_t);

// kBlocks.rows[p - 1].fns[q - 1] = &SadBlock<p, q>: the full block and every smaller one for the edges.
struct BlockRow {
  SadBlockFn fns[kOctets];
};
struct BlockTable {
  BlockRow rows[kPixels];
};
template <int P, int... Q>
constexpr BlockRow RowOf(std::integer_sequence<int, Q...>) {
  return {{&SadBlock<P, Q + 1>...}};
}
template <int... P>
constexpr BlockTable TableOf(std::integer_sequence<int, P...>) {
  return {{RowOf<P + 1>(std::make_integer_sequence<int, kOctets>())...}};
}
constexpr BlockTable kBlocks = TableOf(std::make_integer_sequence<int, kPixels>());

void Sad(const SadTile& t) {
  const int64_t channel_octets = (t.channels + 7) / 8;
  for (int64_t p = 0; p < t.count; p += kPixels) {
    const int64_t pixels = t.count - p < kPixels ? t.count - p : kPixels;
    for (int64_t q = 0; q < channel_octets; q += kOctets) {
      const int64_t octets = channel_octets - q < kOctets ? channel_octets - q : kOctets;
      kBlocks.rows[pixels - 1].fns[octets - 1](t, p, q);
    }
  }
}

// 16 values quantised (see QuantizeValue) to int32 in 0..255: NaN lanes become 0 before the zero point is added.
inline __m512i Quantize16(__m512 x, __m512 inv, __m512 lo, __m512 hi, __m512i zero_point) {
  __m512 v = _mm512_mul_ps(x, inv);
  const __mmask16 ordered = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
  v = _mm512_maskz_min_ps(ordered, _mm512_max_ps(v, lo), hi);
  const __m512i q = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_add_epi32(q, zero_point);
}

void QuantizeOctet(const float* x, int64_t channel_stride, int64_t channels, int64_t count, float inv_scale,
                   int32_t zero_point, uint8_t* out) {
  const __m512 inv = _mm512_set1_ps(inv_scale);
  const __m512 lo = _mm512_set1_ps(static_cast<float>(-zero_point));
  const __m512 hi = _mm512_set1_ps(static_cast<float>(255 - zero_point));
  const __m512i zp = _mm512_set1_epi32(zero_point);
  // Pixels 0-7 and 8-15 from the qwords (0 1 | 4 5 | 8 9 | 12 13) and (2 3 | 6 7 | 10 11 | 14 15).
  const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
  const __m512i second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
  for (int64_t p = 0; p < count; p += 16) {
    const int64_t n = count - p < 16 ? count - p : 16;
    const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
    // Channel c's bytes go to bits 8 * (c % 4) of a dword per pixel: channels 0-3 in low, 4-7 in high.
    __m512i low = _mm512_setzero_si512(), high = _mm512_setzero_si512();
    for (int c = 0; c < 8 && c < channels; ++c) {
      const __m512i q = Quantize16(_mm512_maskz_loadu_ps(mask, x + c * channel_stride + p), inv, lo, hi, zp);
      const __m512i shifted = _mm512_slli_epi32(q, 8 * (c % 4));
      if (c < 4) {
        low = _mm512_or_si512(low, shifted);
      } else {
        high = _mm512_or_si512(high, shifted);
      }
    }
    const __m512i a = _mm512_unpacklo_epi32(low, high), b = _mm512_unpackhi_epi32(low, high);
    uint8_t* o = out + 8 * p;
    if (n == 16) {
      _mm512_storeu_si512(o, _mm512_permutex2var_epi64(a, first, b));
      _mm512_storeu_si512(o + 64, _mm512_permutex2var_epi64(a, second, b));
    } else {
      const __mmask8 m0 = static_cast<__mmask8>(n >= 8 ? 0xFF : (1u << n) - 1);
      const __mmask8 m1 = static_cast<__mmask8>(n > 8 ? (1u << (n - 8)) - 1 : 0);
      _mm512_mask_storeu_epi64(o, m0, _mm512_permutex2var_epi64(a, first, b));
      _mm512_mask_storeu_epi64(o + 64, m1, _mm512_permutex2var_epi64(a, second, b));
    }
  }
}

}  // namespace

QuantizedTileKernels QuantizedTileKernelsAvx512() { return {"avx512", &Sad, &QuantizeOctet}; }

}  // namespace adderconvert::cpu
