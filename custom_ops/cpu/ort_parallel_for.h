// ParallelFor on ONNX Runtime's intra-op thread pool, shared by the CPU kernels of the ORT library.
#pragma once

#ifndef ORT_API_MANUAL_INIT
#define ORT_API_MANUAL_INIT
#endif
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <thread>

#include "cpu/adder_conv_cpu.h"

namespace adderconvert::cpu {

// Runs work items on ORT's intra-op thread pool, so intra_op_num_threads is honoured.
class OrtParallelFor final : public ParallelFor {
 public:
  explicit OrtParallelFor(const Ort::KernelContext& ctx) : ctx_(ctx) {}
  void Run(size_t total, void (*fn)(void*, size_t), void* data) const override {
    if (total > 0) ctx_.ParallelFor(fn, total, 0, data);
  }
  // Kernels cannot query the size of ORT's intra-op pool; its default is one thread per core.
  int Threads() const override { return std::max(1u, std::thread::hardware_concurrency()); }

 private:
  const Ort::KernelContext& ctx_;
};

}  // namespace adderconvert::cpu
