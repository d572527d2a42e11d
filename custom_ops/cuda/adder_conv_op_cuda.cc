#include "adder_conv_op_cuda.h"

#include "adder_conv_impl.cuh"

namespace adderconvert::cuda {

OrtStatusPtr AdderConvCudaKernel::ComputeV2(OrtKernelContext* context) {
  return StatusFrom([&] {
    Ort::KernelContext ctx(context);
    const OpInputs in = ReadInputs(ctx);
    float* y = AllocateOutput(ctx, in.shape);
    auto stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
    const cudaError_t status =
        LaunchAdderConvForward(stream, in.shape, in.x, static_cast<const float*>(in.w), in.epilogue, y);
    if (status != cudaSuccess) {
      throw Ort::Exception(std::string("AdderConv CUDA launch failed: ") + cudaGetErrorString(status), ORT_FAIL);
    }
  });
}

}  // namespace adderconvert::cuda
