// CPU AdderConv: forward (plain and fused epilogue) and the input gradient of the AdderNet rule.
//
// Work is split into independent items run through a caller-supplied parallel-for, so the same code
// runs on ONNX Runtime's intra-op thread pool and on the threads of the C API used by PyTorch.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <typeindex>
#include <vector>

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

// Layouts of one W that never changes (an ONNX Runtime initializer), shared by the FP32 and INT8 kernels: each
// layout is made on first use and kept while all kept layouts take at most the budget its caller gives; later
// ones are made per call. A layout is found by the type it has and the values (a tap window, a shape) that fix it;
// kept layouts never change. Safe to share between concurrent calls; it must only ever be used with the same W.
class WeightCache {
 public:
  using Key = std::array<int64_t, 5>;

  template <typename Layout>
  std::shared_ptr<const Layout> Find(const Key& key) const {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Entry& e : entries_) {
      if (e.type == typeid(Layout) && e.key == key) return std::static_pointer_cast<const Layout>(e.layout);
    }
    return nullptr;
  }

  // Keeps `layout` (of `bytes`) unless one is kept for its key already or the kept bytes would pass `budget`.
  template <typename Layout>
  void Keep(const Key& key, std::shared_ptr<const Layout> layout, int64_t bytes, int64_t budget) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Entry& e : entries_) {
      if (e.type == typeid(Layout) && e.key == key) return;  // another call kept it first
    }
    if (kept_bytes_ + bytes > budget) return;
    entries_.push_back({typeid(Layout), key, std::move(layout)});
    kept_bytes_ += bytes;
  }

 private:
  struct Entry {
    std::type_index type;
    Key key;
    std::shared_ptr<const void> layout;
  };
  mutable std::mutex mutex_;
  std::vector<Entry> entries_;
  int64_t kept_bytes_ = 0;
};

// y (N, M, Ho, Wo) = epilogue(-sum |x - w|). `cache`, when given, holds W's layouts across calls (at most
// kMaxWeightCopies times W's size).
constexpr int64_t kMaxWeightCopies = 6;
template <typename T>
void AdderConvForward(const ConvShape& shape, const T* x, const T* w, const Epilogue<T>& epilogue, T* y,
                      const ParallelFor& parallel, WeightCache* cache = nullptr);

// grad_x (N, C, H, W) = sum over outputs of HardTanh(w - x) * grad_y, scattered back through the padding.
template <typename T>
void AdderConvBackwardInput(const ConvShape& shape, const T* x, const T* w, const T* grad_y, T* grad_x,
                            const ParallelFor& parallel);

// Name of the instruction set the tile kernels were dispatched to (cpu/isa.h; the FP32 tiles of "avx512ifma" are
// those of "avx512"), or the error message when ADDERCONVERT_CPU_ISA holds an unknown value.
const char* KernelIsa();

}  // namespace adderconvert::cpu
