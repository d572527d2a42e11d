// Entry point ONNX Runtime calls when the library is registered: one table of every op and provider.

#include <mutex>
#include <vector>

#include "adder_conv_op.h"
#include "c_api.h"
#include "cpu/adder_conv_cpu.h"
#include "cpu/adder_conv_op_cpu.h"
#include "cpu/quantized_adder_conv_cpu.h"
#ifdef ADDERCONVERT_WITH_CUDA
#include "cuda/adder_conv_op_cuda.h"
#endif

namespace {

constexpr uint32_t kOrtApiVersion = 21;

using adderconvert::AdderConvOp;
using adderconvert::OpForm;

const std::vector<const OrtCustomOp*>& OpTable() {
  static AdderConvOp<adderconvert::cpu::AdderConvCpuKernel> cpu_plain(OpForm::kPlain, nullptr);
  static AdderConvOp<adderconvert::cpu::AdderConvCpuKernel> cpu_fused(OpForm::kFused, nullptr);
  static AdderConvOp<adderconvert::cpu::AdderConvCpuKernel> cpu_quantized(OpForm::kQuantized, nullptr);
#ifdef ADDERCONVERT_WITH_CUDA
  static AdderConvOp<adderconvert::cuda::AdderConvCudaKernel> cuda_plain(OpForm::kPlain,
                                                                         adderconvert::cuda::kCudaProvider);
  static AdderConvOp<adderconvert::cuda::AdderConvCudaKernel> cuda_fused(OpForm::kFused,
                                                                         adderconvert::cuda::kCudaProvider);
#endif
  static const std::vector<const OrtCustomOp*> table{
      &cpu_plain,  &cpu_fused,  &cpu_quantized,
#ifdef ADDERCONVERT_WITH_CUDA
      &cuda_plain, &cuda_fused,
#endif
  };
  return table;
}

}  // namespace

ADDERCONVERT_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(kOrtApiVersion);
  if (api == nullptr) {
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, "adderconvert ops need ONNX Runtime 1.21 or newer (C API 21)");
  }
  Ort::InitApi(api);
  return adderconvert::StatusFrom([&] {
    // Domains must outlive every session that uses them.
    static std::mutex mutex;
    static std::vector<Ort::CustomOpDomain> domains;
    Ort::CustomOpDomain domain(adderconvert::kDomain);
    for (const OrtCustomOp* op : OpTable()) domain.Add(op);
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(mutex);
    domains.push_back(std::move(domain));
  });
}

// Space-separated key=value pairs describing how the library was built, for `adderconvert doctor`.
ADDERCONVERT_EXPORT const char* AdderConvertBuildInfo() { return ADDERCONVERT_BUILD_INFO; }

ADDERCONVERT_EXPORT const char* AdderConvertCpuIsa() { return adderconvert::cpu::KernelIsa(); }

ADDERCONVERT_EXPORT const char* AdderConvertQuantizedCpuIsa() { return adderconvert::cpu::QuantizedKernelIsa(); }
