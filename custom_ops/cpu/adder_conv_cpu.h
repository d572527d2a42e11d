// CPU AdderConv: forward (plain and fused epilogue) and the input gradient of the AdderNet rule.
//
// Work is split into independent items run through a caller-supplied parallel-for, so the same code
// runs on ONNX Runtime's intra-op thread pool and on the threads of the C API used by PyTorch.
#pragma once

#include <cstddef>
#include <memory>

#include "adder_conv.h"

namespace adderconvert::cpu {

// Runs fn(data, i) for every i in [0, total), possibly concurrently.
class ParallelFor {
 public:
  virtual ~ParallelFor() = default;
  virtual void Run(size_t total, void (*fn)(void*, size_t), void* data) const = 0;
  // How many threads Run may use (work is split to keep them busy).
  virtual int Threads() const = 0;
};

// The layouts of one W that never changes (an ONNX Runtime initializer) for the forward pass, kept
// across calls. Each set of taps that the inputs' shapes need is laid out on first use and kept while
// all kept layouts take at most kMaxCopies times W's size; later ones are laid out per call.
// Safe to share between concurrent calls; it must only ever be used with the same W.
template <typename T>
class WeightLayoutCache {
 public:
  static constexpr int64_t kMaxCopies = 6;
  struct Entries;  // defined in adder_conv_cpu.cc

  WeightLayoutCache();
  ~WeightLayoutCache();
  WeightLayoutCache(const WeightLayoutCache&) = delete;
  WeightLayoutCache& operator=(const WeightLayoutCache&) = delete;
  Entries& entries() const { return *entries_; }

 private:
  std::unique_ptr<Entries> entries_;
};

// y (N, M, Ho, Wo) = epilogue(-sum |x - w|). `cache`, when given, holds W's layouts across calls.
template <typename T>
void AdderConvForward(const ConvShape& shape, const T* x, const T* w, const Epilogue<T>& epilogue, T* y,
                      const ParallelFor& parallel, WeightLayoutCache<T>* cache = nullptr);

// grad_x (N, C, H, W) = sum over outputs of HardTanh(w - x) * grad_y, scattered back through the padding.
template <typename T>
void AdderConvBackwardInput(const ConvShape& shape, const T* x, const T* w, const T* grad_y, T* grad_x,
                            const ParallelFor& parallel);

// Name of the instruction set the tile kernels were dispatched to ("avx512", "avx2" or "generic").
const char* KernelIsa();

}  // namespace adderconvert::cpu
