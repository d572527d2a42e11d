// Native test of the CPU AdderConv kernel against naive loops over many shapes; built with ASan and
// UBSan by tests/custom_ops/test_sanitizers.py. Prints "N passed, M failed" and exits non-zero on failure.
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cpu/adder_conv_cpu.h"
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
template <typename T>
bool CheckOne(std::mt19937& rng, bool fused, bool small_maps, bool specials) {
  std::uniform_int_distribution<int> small(1, 3), chans(1, 3), size(1, 9), pick(0, 1), map(1, 4), batch(40, 130);
  ConvAttributes a;
  a.group = small(rng);
  a.strides[0] = small(rng);
  a.strides[1] = small(rng);
  a.dilations[0] = small(rng);
  a.dilations[1] = small(rng);
  for (auto& p : a.pads) p = small(rng) - 1;
  const int64_t x_dims[4] = {small_maps ? batch(rng) : small(rng), chans(rng) * a.group,
                             small_maps ? map(rng) : size(rng) + 4, small_maps ? map(rng) : size(rng) + 4};
  const int64_t w_dims[4] = {(chans(rng) + pick(rng) * 5) * a.group, x_dims[1] / a.group, small(rng), small(rng)};
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
  if (fused) epilogue = {nullptr, scale.data(), shift.data(), true};
  TwoThreads threads;
  adderconvert::cpu::AdderConvForward<T>(s, x.data(), w.data(), epilogue, y.data(), threads);
  adderconvert::cpu::AdderConvBackwardInput<T>(s, x.data(), w.data(), grad_y.data(), grad_x.data(), threads);
  // Layouts kept across calls: two concurrent calls fill the cache, a third reads it; all give y exactly.
  adderconvert::cpu::WeightLayoutCache<T> cache;
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

}  // namespace

int main() {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 200; ++trial) {
    const bool small_maps = trial % 4 == 3, specials = trial % 5 == 4;
    const bool ok = (trial % 2 == 0) ? CheckOne<float>(rng, trial % 4 == 0, small_maps, specials)
                                     : CheckOne<double>(rng, trial % 3 == 0, small_maps, specials);
    Check(ok, "trial " + std::to_string(trial));
  }
  std::printf("%d passed, %d failed (kernel isa: %s)\n", passed, failed, adderconvert::cpu::KernelIsa());
  return failed == 0 ? 0 : 1;
}
