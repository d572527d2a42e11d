// Native test of the CPU QuantizedAdderConv kernel: the forward pass against naive loops over many shapes
// (in the ISA that ADDERCONVERT_CPU_ISA selects), every ISA's micro-kernels this CPU runs against the generic
// ones, quantisation edge cases and refused parameters. Built with ASan and UBSan by
// tests/custom_ops/test_sanitizers.py. Prints "N passed, M failed" and exits non-zero on failure.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cpu/isa.h"
#include "cpu/quantized_adder_conv_cpu.h"
#include "cpu/quantized_tiles.h"
#include "quantized_adder_conv.h"
#include "tests/test_support.h"

namespace {

using adderconvert::ConvAttributes;
using adderconvert::ConvShape;
using adderconvert::cpu::QuantizedTileKernels;
using adderconvert::testing::Check;
using adderconvert::testing::failed;
using adderconvert::testing::passed;
using adderconvert::testing::TwoThreads;

// The contract as written: round half to even, add the zero point, then clamp (the kernel clamps first).
int32_t RefQuantize(float x, float x_scale, int32_t zp) {
  const float inv = 1.0f / x_scale;
  const float v = x * inv;
  if (std::isnan(v)) return zp;
  const double r = std::rint(static_cast<double>(v));  // v is a float: rint in double rounds it the same way
  const double q = std::fmin(std::fmax(r + zp, 0.0), 255.0);
  return static_cast<int32_t>(q);
}

struct Case {
  ConvShape shape;
  std::vector<float> x;
  std::vector<uint8_t> w;
  std::vector<float> alpha, beta;
  float x_scale;
  int32_t zp;
  bool relu;
};

// S by naive loops over the NCHW input.
std::vector<int64_t> RefSums(const Case& c) {
  const ConvShape& s = c.shape;
  const ConvAttributes& a = s.attrs;
  const int64_t rows = s.OutPerGroup(), cg = s.InPerGroup(), positions = s.Positions();
  std::vector<int64_t> out(s.batch * s.out_channels * positions);
  for (int64_t n = 0; n < s.batch; ++n) {
    for (int64_t m = 0; m < s.out_channels; ++m) {
      const int64_t g = m / rows;
      for (int64_t p = 0; p < positions; ++p) {
        const int64_t oh = p / s.out_w, ow = p % s.out_w;
        int64_t acc = 0;
        for (int64_t ci = 0; ci < cg; ++ci) {
          for (int64_t i = 0; i < s.kernel_h; ++i) {
            for (int64_t j = 0; j < s.kernel_w; ++j) {
              const int64_t ih = oh * a.strides[0] - a.pads[0] + i * a.dilations[0];
              const int64_t iw = ow * a.strides[1] - a.pads[1] + j * a.dilations[1];
              int32_t qx = c.zp;
              if (ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w) {
                qx = RefQuantize(c.x[((n * s.in_channels + g * cg + ci) * s.in_h + ih) * s.in_w + iw], c.x_scale, c.zp);
              }
              const int32_t wv = c.w[((m * cg + ci) * s.kernel_h + i) * s.kernel_w + j];
              acc += qx > wv ? qx - wv : wv - qx;
            }
          }
        }
        out[(n * s.out_channels + m) * positions + p] = acc;
      }
    }
  }
  return out;
}

std::vector<float> Run(const Case& c, const float* alpha, const float* beta, bool relu,
                       adderconvert::cpu::WeightCache* cache = nullptr) {
  std::vector<float> y(c.shape.batch * c.shape.out_channels * c.shape.Positions(), -12345.0f);
  const adderconvert::QuantizedAttributes q{c.x_scale, c.zp};
  const adderconvert::Epilogue<float> e{alpha, beta, relu};
  adderconvert::cpu::QuantizedAdderConvForward(c.shape, c.x.data(), c.w.data(), q, e, y.data(), TwoThreads(), cache);
  return y;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::string Describe(const ConvShape& s) {
  char text[256];
  std::snprintf(text, sizeof(text),
                "x (%lld,%lld,%lld,%lld) w (%lld,%lld,%lld,%lld) group %lld stride %lldx%lld dil %lldx%lld pads "
                "%lld,%lld,%lld,%lld",
                (long long)s.batch, (long long)s.in_channels, (long long)s.in_h, (long long)s.in_w,
                (long long)s.out_channels, (long long)s.InPerGroup(), (long long)s.kernel_h, (long long)s.kernel_w,
                (long long)s.attrs.group, (long long)s.attrs.strides[0], (long long)s.attrs.strides[1],
                (long long)s.attrs.dilations[0], (long long)s.attrs.dilations[1], (long long)s.attrs.pads[0],
                (long long)s.attrs.pads[1], (long long)s.attrs.pads[2], (long long)s.attrs.pads[3]);
  return text;
}

// One forward case: S bit-exact with alpha = 1, beta = 0; fmaf(alpha, S, beta) and ReLU exactly; the cached
// layout (filled by two concurrent calls) gives the same bits.
void CheckCase(Case& c) {
  const ConvShape& s = c.shape;
  const std::vector<int64_t> ref = RefSums(c);
  const std::vector<float> ones(s.out_channels, 1.0f), zeros(s.out_channels, 0.0f);
  const std::vector<float> sums = Run(c, ones.data(), zeros.data(), false);
  bool exact = sums.size() == ref.size();
  for (size_t i = 0; exact && i < ref.size(); ++i) exact = sums[i] == static_cast<float>(ref[i]);
  Check(exact, "S bit-exact: " + Describe(s));

  const std::vector<float> y = Run(c, c.alpha.data(), c.beta.data(), c.relu);
  bool epilogue_ok = true;
  const int64_t positions = s.Positions();
  for (size_t i = 0; i < ref.size() && epilogue_ok; ++i) {
    const int64_t m = static_cast<int64_t>(i) / positions % s.out_channels;
    float v = std::fma(c.alpha[m], static_cast<float>(ref[i]), c.beta[m]);
    if (c.relu && v < 0.0f) v = 0.0f;
    epilogue_ok = std::memcmp(&v, &y[i], sizeof(float)) == 0;
  }
  Check(epilogue_ok, std::string("epilogue fmaf") + (c.relu ? " + relu: " : ": ") + Describe(s));

  adderconvert::cpu::WeightCache cache;
  std::vector<float> first, second;
  std::thread other([&] { first = Run(c, c.alpha.data(), c.beta.data(), c.relu, &cache); });
  second = Run(c, c.alpha.data(), c.beta.data(), c.relu, &cache);
  other.join();
  const std::vector<float> third = Run(c, c.alpha.data(), c.beta.data(), c.relu, &cache);
  Check(SameBits(first, y) && SameBits(second, y) && SameBits(third, y), "cached layout: " + Describe(s));
}

bool MakeCase(std::mt19937& rng, const int64_t x_dims[4], const int64_t w_dims[4], const ConvAttributes& a, Case* c) {
  if (!adderconvert::ResolveQuantizedShape(x_dims, 4, w_dims, 4, a, &c->shape).empty()) return false;
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::uniform_int_distribution<int> byte(0, 255), coin(0, 1);
  std::uniform_real_distribution<float> scale(0.005f, 0.05f);
  c->x.resize(x_dims[0] * x_dims[1] * x_dims[2] * x_dims[3]);
  c->w.resize(w_dims[0] * w_dims[1] * w_dims[2] * w_dims[3]);
  for (auto& v : c->x) v = normal(rng);
  for (auto& v : c->w) v = static_cast<uint8_t>(byte(rng));
  c->x_scale = scale(rng);
  c->zp = byte(rng);
  c->relu = coin(rng) == 1;
  c->alpha.resize(w_dims[0]);
  c->beta.resize(w_dims[0]);
  for (auto& v : c->alpha) v = normal(rng) * 0.01f;
  for (auto& v : c->beta) v = normal(rng) * 10.0f;
  return true;
}

void RandomCases(std::mt19937& rng, int trials) {
  std::uniform_int_distribution<int> small(1, 3), size(1, 12), pick(0, 5), kernel(1, 3);
  const int channel_choices[] = {1, 2, 3, 5, 8, 9, 16, 24};
  int done = 0;
  while (done < trials) {
    ConvAttributes a;
    const int kind = pick(rng);  // 0: depthwise, 1: grouped, others: dense
    a.group = kind == 0 ? 1 + pick(rng) : kind == 1 ? small(rng) : 1;
    for (auto& st : a.strides) st = small(rng);
    for (auto& d : a.dilations) d = small(rng) == 3 ? 2 : 1;
    for (auto& p : a.pads) p = small(rng) - 1;
    const int64_t cg = kind == 0 ? 1 : channel_choices[pick(rng) + small(rng) - 1];
    const int64_t per_group_out = kind == 0 ? 1 : channel_choices[pick(rng) + small(rng) - 1] + pick(rng);
    const int64_t x_dims[4] = {small(rng), cg * a.group, size(rng) + 2, size(rng) + 2};
    const int64_t w_dims[4] = {per_group_out * a.group, cg, kernel(rng), kernel(rng)};
    Case c;
    if (!MakeCase(rng, x_dims, w_dims, a, &c)) continue;
    CheckCase(c);
    ++done;
  }
}

// Shapes named in the issue: ResNet-like 3x3 and 1x1 layers (K not a multiple of 64 as well), a 7x7 stem
// of stride 2, depthwise, one channel, batch 1, asymmetric padding, dilation.
void NamedCases(std::mt19937& rng) {
  struct Named {
    int64_t x[4], w[4], stride, dilation, pads[4], group;
  };
  const Named cases[] = {
      {{1, 64, 14, 14}, {64, 64, 3, 3}, 1, 1, {1, 1, 1, 1}, 1},
      {{2, 72, 9, 11}, {40, 72, 3, 3}, 1, 1, {1, 1, 1, 1}, 1},
      {{1, 128, 7, 7}, {24, 128, 3, 3}, 2, 1, {1, 1, 1, 1}, 1},
      {{1, 256, 5, 5}, {64, 256, 1, 1}, 1, 1, {0, 0, 0, 0}, 1},
      {{3, 40, 6, 6}, {20, 40, 1, 1}, 2, 1, {0, 0, 0, 0}, 1},
      {{1, 3, 23, 23}, {16, 3, 7, 7}, 2, 1, {3, 3, 3, 3}, 1},
      {{2, 32, 9, 9}, {32, 1, 3, 3}, 1, 1, {1, 1, 1, 1}, 32},
      {{1, 13, 10, 9}, {13, 1, 5, 5}, 2, 1, {2, 2, 2, 2}, 13},
      {{2, 16, 7, 7}, {32, 1, 3, 3}, 1, 1, {1, 1, 1, 1}, 16},
      {{1, 24, 6, 6}, {24, 1, 3, 3}, 1, 2, {2, 1, 2, 1}, 24},
      {{1, 1, 9, 9}, {3, 1, 3, 3}, 1, 1, {0, 2, 1, 0}, 1},
      {{1, 16, 10, 12}, {17, 16, 3, 2}, 1, 2, {2, 0, 1, 3}, 1},
      {{2, 48, 8, 8}, {96, 12, 3, 3}, 2, 1, {1, 0, 0, 1}, 4},
      {{1, 8, 1, 1}, {5, 8, 1, 1}, 1, 1, {0, 0, 0, 0}, 1},
      {{1, 24, 4, 4}, {8, 24, 3, 3}, 1, 1, {2, 2, 2, 2}, 1},
      {{4, 16, 3, 3}, {33, 16, 3, 3}, 1, 1, {1, 1, 1, 1}, 1},
  };
  for (const Named& n : cases) {
    ConvAttributes a;
    a.strides[0] = a.strides[1] = n.stride;
    a.dilations[0] = a.dilations[1] = n.dilation;
    for (int i = 0; i < 4; ++i) a.pads[i] = n.pads[i];
    a.group = n.group;
    Case c;
    const bool made = MakeCase(rng, n.x, n.w, a, &c);
    Check(made, "named case resolves");
    if (made) CheckCase(c);
  }
}

// The quantised image's buffer is kept on the calling thread from call to call: a smaller layer after a larger
// one (other zero point and padding, channels not a whole octet) reads none of the earlier bytes, so its sums
// are exact and equal to those of a first call on a fresh thread.
void ReusedImage(std::mt19937& rng) {
  ConvAttributes big_attrs, small_attrs;
  for (auto& p : big_attrs.pads) p = 2;
  for (auto& p : small_attrs.pads) p = 1;
  const int64_t big_x[4] = {2, 24, 13, 11}, big_w[4] = {16, 24, 3, 3};
  const int64_t small_x[4] = {1, 13, 6, 7}, small_w[4] = {9, 13, 3, 3};
  Case big, small;
  const bool made =
      MakeCase(rng, big_x, big_w, big_attrs, &big) && MakeCase(rng, small_x, small_w, small_attrs, &small);
  Check(made, "reused image cases resolve");
  if (!made) return;
  big.zp = 255;
  small.zp = 0;
  const std::vector<float> ones(small.shape.out_channels, 1.0f), zeros(small.shape.out_channels, 0.0f);
  const std::vector<float> big_ones(big.shape.out_channels, 1.0f), big_zeros(big.shape.out_channels, 0.0f);
  Run(big, big_ones.data(), big_zeros.data(), false);
  const std::vector<float> after = Run(small, ones.data(), zeros.data(), false);
  const std::vector<int64_t> ref = RefSums(small);
  bool exact = after.size() == ref.size();
  for (size_t i = 0; exact && i < ref.size(); ++i) exact = after[i] == static_cast<float>(ref[i]);
  Check(exact, "S bit-exact after a larger layer: " + Describe(small.shape));
  std::vector<float> fresh;
  std::thread other([&] { fresh = Run(small, ones.data(), zeros.data(), false); });
  other.join();
  Check(SameBits(after, fresh), "reused image equals a fresh thread's: " + Describe(small.shape));
}

// Rounding and clamping at the edges: halves round to even, NaN -> zero point, +-inf -> 255 / 0, and the
// zero points 0 and 255. The input is a 1x1 conv of one channel with W = 0, so S is qx itself.
void QuantizationEdges() {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> values = {0.0f,   -0.0f,   0.25f,   0.75f,    1.25f,   -0.25f, -0.75f, -1.25f,
                                     63.75f, 64.25f,  -64.25f, 1e30f,    -1e30f,  inf,    -inf,   nan,
                                     1e-40f, -1e-40f, 127.25f, -127.25f, 127.75f, 3.0f,   -3.0f,  0.24f};
  for (int32_t zp : {0, 1, 128, 254, 255}) {
    Case c;
    c.shape = ConvShape();
    const int64_t count = static_cast<int64_t>(values.size());
    const int64_t x_dims[4] = {1, 1, 1, count}, w_dims[4] = {1, 1, 1, 1};
    ConvAttributes a;
    adderconvert::ResolveQuantizedShape(x_dims, 4, w_dims, 4, a, &c.shape);
    c.x = values;
    c.w = {0};
    c.x_scale = 0.5f;  // x * 2: the quarter values land on halves
    c.zp = zp;
    const float one = 1.0f, zero = 0.0f;
    const std::vector<float> y = Run(c, &one, &zero, false);
    bool ok = true;
    for (int64_t i = 0; i < count; ++i) {
      const float v = values[i] * 2.0f;
      int32_t expected;
      if (std::isnan(v)) {
        expected = zp;
      } else if (v >= 1e6f) {
        expected = 255;
      } else if (v <= -1e6f) {
        expected = 0;
      } else {
        // Halves to even, written out: floor, then up when above the half or at it with an odd floor.
        const double f = std::floor(v), frac = v - f;
        double r = f + (frac > 0.5 || (frac == 0.5 && std::fmod(f, 2.0) != 0.0) ? 1.0 : 0.0);
        r += zp;
        expected = static_cast<int32_t>(r < 0 ? 0 : r > 255 ? 255 : r);
      }
      if (y[i] != static_cast<float>(expected)) {
        ok = false;
        std::printf("  zp %d: q(%g) = %g, expected %d\n", zp, values[i], y[i], expected);
      }
      ok = ok && RefQuantize(values[i], c.x_scale, zp) == expected;
    }
    Check(ok, "quantisation edges, zero point " + std::to_string(zp));
  }
}

// Every ISA's micro-kernels that this CPU runs against the generic ones, on random tiles.
void KernelsAgree(std::mt19937& rng) {
  std::vector<QuantizedTileKernels> isas;
  size_t rows = 0;
  const adderconvert::cpu::Isa* table = adderconvert::cpu::IsaTable(&rows);
  for (size_t i = 0; i + 1 < rows; ++i) {
    if (table[i].supported()) isas.push_back(table[i].int8());
  }
  const QuantizedTileKernels generic = table[rows - 1].int8();
  std::uniform_int_distribution<int> byte(0, 255), count(1, 37), taps(1, 9), octets(1, 5), channel_octets(1, 20);
  std::normal_distribution<float> normal(0.0f, 100.0f);
  for (const QuantizedTileKernels& k : isas) {
    bool sad_ok = true, sums_ok = true, lanes_ok = true, quantize_ok = true;
    for (int trial = 0; trial < 60; ++trial) {
      // Every tenth trial: sums over 360 octets of the largest differences (x 0, W 255), past what 16-bit
      // lanes hold (NEON widens them every 128 octets).
      const bool extreme = trial % 10 == 9;
      const int64_t n = count(rng), t = extreme ? 9 : taps(rng), o = extreme ? 40 : octets(rng);
      const int64_t q = channel_octets(rng);
      // Pixels at odd byte offsets, taps spread out, octets 8 bytes apart or further.
      const int64_t octet_stride = trial % 3 == 0 ? 8 : 8 + 13 * (trial % 3);
      std::vector<uint8_t> image(n * 7 + t * 37 + o * octet_stride + 64);
      for (auto& v : image) v = extreme ? 0 : static_cast<uint8_t>(byte(rng));
      std::vector<const uint8_t*> pixels(n);
      for (int64_t p = 0; p < n; ++p) pixels[p] = image.data() + 7 * p;
      std::vector<int64_t> offsets(t);
      for (int64_t i = 0; i < t; ++i) offsets[i] = 37 * i;
      const int64_t w_stride = t * o * 64 + 64 * (trial % 2);
      std::vector<uint8_t> w_storage(q * w_stride + 64);
      uint8_t* w = w_storage.data() + (64 - reinterpret_cast<uintptr_t>(w_storage.data()) % 64) % 64;
      for (int64_t i = 0; i < q * w_stride; ++i) w[i] = extreme ? 255 : static_cast<uint8_t>(byte(rng));
      // Channels: whole octets, or a last octet partly filled; y rows wider than the tile (stride n + 3).
      const int64_t channels = q * 8 - trial % 5;
      std::vector<float> alpha(q * 8), beta(q * 8);
      for (auto& v : alpha) v = normal(rng) * 1e-3f;
      for (auto& v : beta) v = normal(rng);
      std::vector<float> y_got(q * 8 * (n + 3), 3.0f), y_want(y_got.size(), 3.0f);
      adderconvert::cpu::SadTile tile{pixels.data(),
                                      n,
                                      offsets.data(),
                                      t,
                                      o,
                                      octet_stride,
                                      w,
                                      w_stride,
                                      channels,
                                      alpha.data(),
                                      beta.data(),
                                      trial % 2 == 0,
                                      y_got.data(),
                                      n + 3};
      k.sad(tile);
      tile.y = y_want.data();
      generic.sad(tile);
      sad_ok = sad_ok && SameBits(y_got, y_want);
      // With alpha = 1, beta = 0: the sums themselves.
      std::vector<float> ones(q * 8, 1.0f), zeros(q * 8, 0.0f);
      tile.alpha = ones.data();
      tile.beta = zeros.data();
      tile.relu = false;
      tile.y = y_got.data();
      k.sad(tile);
      tile.y = y_want.data();
      generic.sad(tile);
      sums_ok = sums_ok && SameBits(y_got, y_want);

      // Lanes of their own (depthwise): columns of o octets x 64 bytes, 64 bytes apart or further.
      const int64_t lane_stride = 64 + 64 * (trial % 2), lane_octets = extreme ? 200 : o;
      std::vector<uint8_t> lane_columns(n * lane_octets * lane_stride + 64);
      for (auto& v : lane_columns) v = extreme ? 0 : static_cast<uint8_t>(byte(rng));
      for (int64_t p = 0; p < n; ++p) pixels[p] = lane_columns.data() + p * lane_octets * lane_stride + (trial % 3);
      adderconvert::cpu::SadTile lanes = tile;
      lanes.octet_stride = lane_stride;
      lanes.octets = lane_octets;
      lanes.channels = 8 - trial % 4;
      lanes.alpha = alpha.data();
      lanes.beta = beta.data();
      lanes.relu = trial % 2 == 1;
      lanes.y = y_got.data();
      k.sad_lanes(lanes);
      lanes.y = y_want.data();
      generic.sad_lanes(lanes);
      lanes_ok = lanes_ok && SameBits(y_got, y_want);

      const float x_scale = 0.25f + trial, inv = 1.0f / x_scale;
      const int32_t zp = byte(rng);
      const int64_t in_channels = 1 + trial % 8, stride = n + 3;
      std::vector<float> x(8 * stride);
      for (auto& v : x) v = normal(rng);
      x[trial % x.size()] = std::numeric_limits<float>::quiet_NaN();
      x[(trial * 7) % x.size()] = trial % 2 ? std::numeric_limits<float>::infinity() : 0.5f * x_scale;
      std::vector<uint8_t> q_got(n * 8 + 8, 7), q_want(n * 8 + 8, 7);
      k.quantize_octet(x.data(), stride, in_channels, n, inv, zp, q_got.data());
      generic.quantize_octet(x.data(), stride, in_channels, n, inv, zp, q_want.data());
      quantize_ok = quantize_ok && q_got == q_want;
    }
    Check(sad_ok, std::string(k.isa) + " sad with epilogue == generic");
    Check(sums_ok, std::string(k.isa) + " sums == generic");
    Check(lanes_ok, std::string(k.isa) + " sad_lanes == generic");
    Check(quantize_ok, std::string(k.isa) + " quantize == generic");
  }
}

void Refusals() {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (float bad : {0.0f, -1.0f, inf, -inf, nan, 1e-45f}) {
    Check(!adderconvert::CheckQuantization(bad, 0).empty(), "x_scale " + std::to_string(bad) + " refused");
  }
  Check(adderconvert::CheckQuantization(0.02f, 0).empty() && adderconvert::CheckQuantization(1e30f, 255).empty(),
        "valid quantisation accepted");
  Check(!adderconvert::CheckQuantization(0.02f, -1).empty() && !adderconvert::CheckQuantization(0.02f, 256).empty(),
        "zero point out of range refused");
  ConvShape s;
  ConvAttributes a;
  const int64_t x[4] = {1, 6, 8, 8}, w[4] = {4, 3, 3, 3};
  Check(adderconvert::ResolveQuantizedShape(x, 4, w, 4, a, &s).find("QuantizedAdderConv: X has 6 channels") == 0,
        "channel mismatch refused by name");
  a.group = 4;
  Check(!adderconvert::ResolveQuantizedShape(x, 4, w, 4, a, &s).empty(), "bad group refused");
  a.group = 1;
  const int64_t tiny[4] = {1, 3, 2, 2};
  Check(!adderconvert::ResolveQuantizedShape(tiny, 4, w, 4, a, &s).empty(), "output smaller than 1 refused");
  Check(!adderconvert::ResolveQuantizedShape(x, 3, w, 4, a, &s).empty(), "rank 3 refused");
  const int64_t huge_x[4] = {1, 1 << 20, 1, 1}, huge_w[4] = {1, 1 << 20, 1, 1};
  a.pads[0] = a.pads[1] = a.pads[2] = a.pads[3] = 0;
  Check(adderconvert::ResolveQuantizedShape(huge_x, 4, huge_w, 4, a, &s).empty(), "2^20 taps accepted");
  const int64_t wide_w[4] = {1, 1 << 20, 3, 3}, wide_x[4] = {1, 1 << 20, 3, 3};
  Check(!adderconvert::ResolveQuantizedShape(wide_x, 4, wide_w, 4, a, &s).empty(), "int32 overflow refused");
}

}  // namespace

int main() {
  std::mt19937 rng(20261201);
  QuantizationEdges();
  Refusals();
  KernelsAgree(rng);
  NamedCases(rng);
  ReusedImage(rng);
  RandomCases(rng, 150);
  std::printf("%d passed, %d failed (quantized kernel isa: %s)\n", passed, failed,
              adderconvert::cpu::QuantizedKernelIsa());
  return failed == 0 ? 0 : 1;
}
