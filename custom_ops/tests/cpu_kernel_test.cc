// Native test of the CPU AdderConv kernel against naive loops over many shapes; built with ASan and
// UBSan by tests/custom_ops/test_sanitizers.py. Prints "N passed, M failed" and exits non-zero on failure.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu/adder_conv_cpu.h"
#include "cpu/adder_conv_cpu_tiles.h"
#include "cpu/isa.h"
#include "tests/test_support.h"

namespace {

using adderconvert::ConvAttributes;
using adderconvert::ConvShape;
using adderconvert::testing::Check;
using adderconvert::testing::failed;
using adderconvert::testing::passed;
using adderconvert::testing::TwoThreads;

template <typename T>
T XAt(const ConvShape& s, const std::vector<T>& x, int64_t n, int64_t c, int64_t ih, int64_t iw) {
  if (ih < 0 || ih >= s.in_h || iw < 0 || iw >= s.in_w) return T(0);
  return x[((n * s.in_channels + c) * s.in_h + ih) * s.in_w + iw];
}

// `small_maps`: large batches of 1-4 pixel feature maps, where the kernel tiles by output position.
// `specials`: x holds -inf and NaN and w +inf; the forward pass must give what the naive loop gives.
// `depthwise`: one input channel per group, many groups, 1-4 filters each (a depthwise conv, or its bases).
template <typename T>
bool CheckOne(std::mt19937& rng, bool fused, bool small_maps, bool specials, bool depthwise = false) {
  std::uniform_int_distribution<int> small(1, 3), chans(1, 3), size(1, 9), pick(0, 1), map(1, 4), batch(40, 130);
  std::uniform_int_distribution<int> groups(4, 40), multiplier(1, 4);
  ConvAttributes a;
  a.group = depthwise ? groups(rng) : small(rng);
  a.strides[0] = small(rng);
  a.strides[1] = small(rng);
  a.dilations[0] = small(rng);
  a.dilations[1] = small(rng);
  for (auto& p : a.pads) p = small(rng) - 1;
  const int64_t x_dims[4] = {small_maps ? batch(rng) : small(rng), (depthwise ? 1 : chans(rng)) * a.group,
                             small_maps ? map(rng) : size(rng) + 4, small_maps ? map(rng) : size(rng) + 4};
  const int64_t filters = depthwise ? multiplier(rng) : chans(rng) + pick(rng) * 5;
  const int64_t w_dims[4] = {filters * a.group, x_dims[1] / a.group, small(rng) + 2 * pick(rng),
                             small(rng) + 2 * pick(rng)};
  ConvShape s;
  if (!adderconvert::ResolveShape(x_dims, 4, w_dims, 4, a, &s).empty()) return true;  // kernel too big: skip

  std::normal_distribution<double> normal(0.0, 2.0);
  std::vector<T> x(x_dims[0] * x_dims[1] * x_dims[2] * x_dims[3]), w(w_dims[0] * w_dims[1] * w_dims[2] * w_dims[3]);
  std::vector<T> scale(s.out_channels), shift(s.out_channels);
  for (auto& v : x) v = static_cast<T>(normal(rng));
  for (auto& v : w) v = static_cast<T>(normal(rng));
  for (auto& v : scale) v = static_cast<T>(normal(rng));
  for (auto& v : shift) v = static_cast<T>(normal(rng));
  const int64_t positions = s.Positions();
  std::vector<T> y(s.batch * s.out_channels * positions), grad_y(y.size()), grad_x(x.size());
  for (auto& v : grad_y) v = static_cast<T>(normal(rng));
  if (specials) {
    x[x.size() / 3] = -std::numeric_limits<T>::infinity();
    x[x.size() / 2] = std::numeric_limits<T>::quiet_NaN();
    w[w.size() / 2] = std::numeric_limits<T>::infinity();
  }
  adderconvert::Epilogue<T> epilogue;
  if (fused) epilogue = {scale.data(), shift.data(), true};
  TwoThreads threads;
  adderconvert::cpu::AdderConvForward<T>(s, x.data(), w.data(), epilogue, y.data(), threads);
  adderconvert::cpu::AdderConvBackwardInput<T>(s, x.data(), w.data(), grad_y.data(), grad_x.data(), threads);
  // Layouts kept across calls: two concurrent calls fill the cache, a third reads it; all give y exactly.
  adderconvert::cpu::WeightCache cache;
  std::vector<std::vector<T>> cached(3, std::vector<T>(y.size()));
  auto cached_forward = [&](std::vector<T>* out) {
    adderconvert::cpu::AdderConvForward<T>(s, x.data(), w.data(), epilogue, out->data(), threads, &cache);
  };
  std::thread first(cached_forward, &cached[0]);
  cached_forward(&cached[1]);
  first.join();
  cached_forward(&cached[2]);
  // The first image alone may tile differently (so round differently): the cache gains the layouts it needs.
  ConvShape first_image = s;
  first_image.batch = 1;
  std::vector<T> y_first(s.out_channels * s.Positions()), y_first_cached(y_first.size());
  adderconvert::cpu::AdderConvForward<T>(first_image, x.data(), w.data(), epilogue, y_first.data(), threads);
  adderconvert::cpu::AdderConvForward<T>(first_image, x.data(), w.data(), epilogue, y_first_cached.data(), threads,
                                         &cache);
  const auto same = [](const std::vector<T>& a, const std::vector<T>& b) {
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i] != b[i] && !(std::isnan(a[i]) && std::isnan(b[i]))) return false;
    }
    return true;
  };
  bool cache_ok = same(y_first_cached, y_first);
  for (const auto& out : cached) cache_ok = cache_ok && same(out, y);

  const double tol = sizeof(T) == 4 ? 1e-4 : 1e-10;
  std::vector<double> ref_gx(x.size(), 0.0);
  const int64_t rows = s.OutPerGroup(), cg = s.InPerGroup();
  double max_err = 0.0, max_ref = 1.0, max_gerr = 0.0, max_gref = 1.0;
  bool specials_ok = true;
  for (int64_t n = 0; n < s.batch; ++n) {
    for (int64_t m = 0; m < s.out_channels; ++m) {
      const int64_t g = m / rows;
      for (int64_t p = 0; p < positions; ++p) {
        const int64_t oh = p / s.out_w, ow = p % s.out_w;
        double acc = 0.0;
        const double gy = grad_y[(n * s.out_channels + m) * positions + p];
        for (int64_t c = 0; c < cg; ++c) {
          for (int64_t i = 0; i < s.kernel_h; ++i) {
            for (int64_t j = 0; j < s.kernel_w; ++j) {
              const int64_t ih = oh * a.strides[0] - a.pads[0] + i * a.dilations[0];
              const int64_t iw = ow * a.strides[1] - a.pads[1] + j * a.dilations[1];
              const double xv = XAt(s, x, n, g * cg + c, ih, iw);
              const double wv = w[((m * cg + c) * s.kernel_h + i) * s.kernel_w + j];
              acc -= std::fabs(xv - wv);
              if (ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w) {
                ref_gx[((n * s.in_channels + g * cg + c) * s.in_h + ih) * s.in_w + iw] +=
                    std::fmax(-1.0, std::fmin(1.0, wv - xv)) * gy;
              }
            }
          }
        }
        if (fused) {
          acc = scale[m] * acc + shift[m];
          if (acc < 0.0) acc = 0.0;  // keeps NaN, as ReLU does
        }
        const double got = y[(n * s.out_channels + m) * positions + p];
        if (!std::isfinite(acc)) {
          specials_ok = specials_ok && (std::isnan(acc) ? std::isnan(got) : got == acc);
          continue;
        }
        max_err = std::fmax(max_err, std::fabs(got - acc));
        max_ref = std::fmax(max_ref, std::fabs(acc));
      }
    }
  }
  for (size_t i = 0; i < x.size() && !specials; ++i) {  // the input gradient: finite inputs only
    max_gerr = std::fmax(max_gerr, std::fabs(grad_x[i] - ref_gx[i]));
    max_gref = std::fmax(max_gref, std::fabs(ref_gx[i]));
  }
  const bool ok = specials_ok && cache_ok && max_err <= tol * max_ref && max_gerr <= tol * max_gref;
  if (!ok) {
    std::printf("mismatch: forward %g / %g, grad_x %g / %g, infinities and NaN %s, cached layouts %s\n", max_err,
                max_ref, max_gerr, max_gref, specials_ok ? "ok" : "differ", cache_ok ? "ok" : "differ");
  }
  return ok;
}

// Every ISA's float tiles that this CPU runs against the generic ones on random tiles, within float rounding
// (the sums run in another order). Tiles hold NR columns; generic's NR may differ, so each column is compared.
bool TilesAgree(const adderconvert::cpu::TileKernels<float>& k, const adderconvert::cpu::TileKernels<float>& generic,
                std::mt19937& rng) {
  using adderconvert::cpu::kRowsPerBlock;
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_int_distribution<int> taps_of(1, 300), rows_of(1, 23);
  double worst = 0.0;
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t taps = taps_of(rng), rows = rows_of(rng), nk = k.columns, ng = generic.columns;
    std::vector<float> column_x(taps * std::max(nk, ng)), w(rows * taps), g(rows * std::max(nk, ng));
    for (auto& v : column_x) v = normal(rng);
    for (auto& v : w) v = normal(rng);
    for (auto& v : g) v = normal(rng);
    // x packed taps x NR for each kernel: the same columns, padded with zeros.
    const auto pack = [&](int64_t nr) {
      std::vector<float> x(taps * nr, 0.0f);
      for (int64_t t = 0; t < taps; ++t) {
        for (int64_t n = 0; n < std::min(nk, ng); ++n) x[t * nr + n] = column_x[t * std::max(nk, ng) + n];
      }
      return x;
    };
    const auto pack_g = [&](int64_t nr) {
      std::vector<float> out(rows * nr, 0.0f);
      for (int64_t o = 0; o < rows; ++o) {
        for (int64_t n = 0; n < std::min(nk, ng); ++n) out[o * nr + n] = g[o * std::max(nk, ng) + n];
      }
      return out;
    };
    // w packed in row blocks ([block][k][row]), then the remaining rows ([row][k]); and transposed (taps x rows).
    std::vector<float> w_packed, w_transposed(taps * rows);
    const int64_t blocks = rows / kRowsPerBlock;
    for (int64_t b = 0; b < blocks; ++b) {
      for (int64_t t = 0; t < taps; ++t) {
        for (int64_t r = 0; r < kRowsPerBlock; ++r) w_packed.push_back(w[(b * kRowsPerBlock + r) * taps + t]);
      }
    }
    for (int64_t r = blocks * kRowsPerBlock; r < rows; ++r) {
      for (int64_t t = 0; t < taps; ++t) w_packed.push_back(w[r * taps + t]);
    }
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t o = 0; o < rows; ++o) w_transposed[t * rows + o] = w[o * taps + t];
    }
    const std::vector<float> xk = pack(nk), xg = pack(ng), gk = pack_g(nk), gg = pack_g(ng);
    std::vector<float> sums_k(rows * nk), sums_g(rows * ng), dots_k(taps * nk), dots_g(taps * ng);
    k.min_sum(xk.data(), w_packed.data(), taps, rows, sums_k.data());
    generic.min_sum(xg.data(), w_packed.data(), taps, rows, sums_g.data());
    k.clamp_dot(xk.data(), w_transposed.data(), gk.data(), taps, rows, dots_k.data());
    generic.clamp_dot(xg.data(), w_transposed.data(), gg.data(), taps, rows, dots_g.data());
    std::vector<float> x_rep(taps * kRowsPerBlock), column_k(rows), column_g(rows);
    for (int64_t t = 0; t < taps; ++t) std::fill_n(x_rep.data() + t * kRowsPerBlock, kRowsPerBlock, xk[t * nk]);
    k.min_sum_column(x_rep.data(), w_packed.data(), taps, rows, column_k.data(), 1);
    generic.min_sum_column(x_rep.data(), w_packed.data(), taps, rows, column_g.data(), 1);
    const double scale = 4.0 * taps;  // |sum| <= taps * max|x|: errors relative to that
    for (int64_t n = 0; n < std::min(nk, ng); ++n) {
      for (int64_t o = 0; o < rows; ++o)
        worst = std::max(worst, std::fabs(sums_k[o * nk + n] - sums_g[o * ng + n]) / scale);
      for (int64_t t = 0; t < taps; ++t) {
        worst = std::max(worst, std::fabs(dots_k[t * nk + n] - dots_g[t * ng + n]) / (4.0 * rows));
      }
    }
    for (int64_t o = 0; o < rows; ++o) worst = std::max(worst, std::fabs(column_k[o] - sums_g[o * ng]) / scale);
    for (int64_t o = 0; o < rows; ++o) worst = std::max(worst, std::fabs(column_g[o] - sums_g[o * ng]) / scale);
  }
  using adderconvert::cpu::kChannelBlock;  // the depthwise sums: random taps at random offsets, 1-2 columns apart
  std::uniform_int_distribution<int> count_of(1, 30), offset_of(0, 60), stride_of(1, 2), positions_of(1, 11);
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t taps = count_of(rng), positions = positions_of(rng), step = stride_of(rng) * kChannelBlock;
    std::vector<int64_t> offsets(taps);
    for (auto& o : offsets) o = offset_of(rng) * kChannelBlock;
    std::vector<float> x((61 + positions * 2) * kChannelBlock), w(taps * kChannelBlock);
    for (auto& v : x) v = normal(rng);
    for (auto& v : w) v = normal(rng);
    std::vector<float> sums_k(positions * kChannelBlock), sums_g(sums_k.size());
    k.abs_sum_channels(x.data(), offsets.data(), step, w.data(), taps, positions, sums_k.data());
    generic.abs_sum_channels(x.data(), offsets.data(), step, w.data(), taps, positions, sums_g.data());
    for (size_t i = 0; i < sums_k.size(); ++i) worst = std::max(worst, std::fabs(sums_k[i] - sums_g[i]) / (4.0 * taps));
  }
  if (worst > 1e-6) std::printf("  %s tiles differ from generic by %g (relative)\n", k.isa, worst);
  return worst <= 1e-6;
}

// One ISA choice for both kernels: the widest this CPU runs, capped by ADDERCONVERT_CPU_ISA; unknown values refused.
void IsaChoice(std::mt19937& rng) {
  size_t count = 0;
  const adderconvert::cpu::Isa* table = adderconvert::cpu::IsaTable(&count);
  Check(count >= 1 && std::string(table[count - 1].name) == "generic", "the last ISA is generic");
  size_t widest = 0;
  while (!table[widest].supported()) ++widest;
  Check(&adderconvert::cpu::ChooseIsa(nullptr) == &table[widest] && &adderconvert::cpu::ChooseIsa("") == &table[widest],
        "no cap: the widest this CPU runs");
  for (size_t i = 0; i < count; ++i) {
    const adderconvert::cpu::Isa& chosen = adderconvert::cpu::ChooseIsa(table[i].name);
    size_t expected = i;
    while (!table[expected].supported()) ++expected;
    Check(&chosen == &table[expected], std::string("cap ") + table[i].name + " gives " + table[expected].name);
    if (i + 1 < count && table[i].supported()) {
      Check(TilesAgree(table[i].fp32(), table[count - 1].fp32(), rng),
            std::string(table[i].name) + " tiles == generic");
    }
  }
  for (const char* bad : {"avx1024", "AVX2", "neon ", "sse"}) {
    bool refused = false;
    try {
      adderconvert::cpu::ChooseIsa(bad);
    } catch (const std::invalid_argument& e) {
      const std::string message = e.what();
      refused = message.find(std::string("'") + bad + "'") != std::string::npos &&
                message.find("generic") != std::string::npos;
    }
    Check(refused, std::string("ADDERCONVERT_CPU_ISA='") + bad + "' refused, naming the valid values");
  }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  IsaChoice(rng);
  for (int trial = 0; trial < 200; ++trial) {
    const bool small_maps = trial % 4 == 3, specials = trial % 5 == 4;
    const bool ok = (trial % 2 == 0) ? CheckOne<float>(rng, trial % 4 == 0, small_maps, specials)
                                     : CheckOne<double>(rng, trial % 3 == 0, small_maps, specials);
    Check(ok, "trial " + std::to_string(trial));
  }
  for (int trial = 0; trial < 80; ++trial) {  // one input channel per group: the depthwise path
    const bool small_maps = trial % 8 >= 6, specials = trial % 5 == 4;
    const bool ok = (trial % 2 == 0) ? CheckOne<float>(rng, trial % 4 == 0, small_maps, specials, true)
                                     : CheckOne<double>(rng, trial % 3 == 0, small_maps, specials, true);
    Check(ok, "depthwise trial " + std::to_string(trial));
  }
  std::printf("%d passed, %d failed (kernel isa: %s)\n", passed, failed, adderconvert::cpu::KernelIsa());
  return failed == 0 ? 0 : 1;
}
