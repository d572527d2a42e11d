// Helpers shared by the CPU kernels' native tests (cpu_kernel_test.cc, quantized_kernel_test.cc): a two-thread
// ParallelFor and a pass/fail tally that each test's main prints as "N passed, M failed".
#ifndef ADDERCONVERT_TESTS_TEST_SUPPORT_H_
#define ADDERCONVERT_TESTS_TEST_SUPPORT_H_

#include <cstddef>
#include <cstdio>
#include <string>
#include <thread>

#include "cpu/adder_conv_cpu.h"

namespace adderconvert::testing {

// Runs the even items on the calling thread and the odd ones on a second thread, so every kernel is exercised
// with concurrent workers (what ASan and UBSan need to see).
class TwoThreads final : public adderconvert::cpu::ParallelFor {
 public:
  void Run(size_t total, void (*fn)(void*, size_t), void* data) const override {
    std::thread other([&] {
      for (size_t i = 1; i < total; i += 2) fn(data, i);
    });
    for (size_t i = 0; i < total; i += 2) fn(data, i);
    other.join();
  }
  int Threads() const override { return 2; }
};

// The tally of Check calls.
inline int passed = 0;
inline int failed = 0;

// Counts one check; prints what failed.
inline void Check(bool ok, const std::string& what) {
  (ok ? passed : failed)++;
  if (!ok) std::printf("FAILED: %s\n", what.c_str());
}

}  // namespace adderconvert::testing

#endif  // ADDERCONVERT_TESTS_TEST_SUPPORT_H_
