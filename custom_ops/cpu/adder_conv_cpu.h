// CPU AdderConv: forward (plain and fused epilogue) and the input gradient of the AdderNet rule.
//
// Work is split into independent items run through a caller-supplied parallel-for, so the same code
// runs on ONNX Runtime's intra-op thread pool and on the threads of the C API used by PyTorch.
#pragma once

#include <cstddef>

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

// y (N, M, Ho, Wo) = epilogue(-sum |x - w|).
template <typename T>
void AdderConvForward(const ConvShape& shape, const T* x, const T* w, const Epilogue<T>& epilogue, T* y,
                      const ParallelFor& parallel);

// grad_x (N, C, H, W) = sum over outputs of HardTanh(w - x) * grad_y, scattered back through the padding.
template <typename T>
void AdderConvBackwardInput(const ConvShape& shape, const T* x, const T* w, const T* grad_y, T* grad_x,
                            const ParallelFor& parallel);

// Name of the instruction set the tile kernels were dispatched to ("avx512", "avx2" or "generic").
const char* KernelIsa();

}  // namespace adderconvert::cpu
