#include "adder_conv_op_cpu.h"

#include <algorithm>
#include <thread>

#include "adder_conv_cpu.h"

namespace adderconvert::cpu {
namespace {

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

}  // namespace

OrtStatusPtr AdderConvCpuKernel::ComputeV2(OrtKernelContext* context) {
  return StatusFrom([&] {
    Ort::KernelContext ctx(context);
    const AdderConvInputs in = ReadInputs(ctx, attrs_, form_);
    float* y = AllocateOutput(ctx, in.shape);
    Epilogue<float> epilogue{in.bias, in.scale, in.shift, relu_};
    AdderConvForward<float>(in.shape, in.x, in.w, epilogue, y, OrtParallelFor(ctx));
  });
}

}  // namespace adderconvert::cpu
