#include "cpu/adder_conv_op_cpu.h"

#include <algorithm>
#include <thread>

#include "cpu/isa.h"
#include "cpu/quantized_adder_conv_cpu.h"

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

AdderConvCpuKernel::AdderConvCpuKernel(const OrtKernelInfo* info, OpForm form) : AdderConvKernelBase(info, form) {
  try {
    CpuIsa();  // an unknown ADDERCONVERT_CPU_ISA fails the session, not its first run
  } catch (const std::exception& e) {
    Refuse(op_, e.what());
  }
  if (constant_w_ != nullptr) w_layouts_ = std::make_unique<WeightCache>();
}

OrtStatusPtr AdderConvCpuKernel::ComputeV2(OrtKernelContext* context) {
  return StatusFrom([&] {
    Ort::KernelContext ctx(context);
    const OpInputs in = ReadInputs(ctx);
    float* y = AllocateOutput(ctx, in.shape);
    // The kept layouts belong to the constant W; any other W is laid out for this call only.
    WeightCache* cache = IsConstantW(in.w) ? w_layouts_.get() : nullptr;
    if (form_ == OpForm::kQuantized) {
      QuantizedAdderConvForward(in.shape, in.x, static_cast<const uint8_t*>(in.w), quantization_, in.epilogue, y,
                                OrtParallelFor(ctx), cache);
    } else {
      AdderConvForward<float>(in.shape, in.x, static_cast<const float*>(in.w), in.epilogue, y, OrtParallelFor(ctx),
                              cache);
    }
  });
}

}  // namespace adderconvert::cpu
