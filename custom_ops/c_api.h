// Helpers shared by the C entry points of the libraries: the C APIs of the CPU and CUDA kernels
// (cpu/c_api.cc, cuda/c_api.cc, declared for Python in adderconvert/nn/_kernels.py) and register.cc.
#pragma once

#include <algorithm>
#include <cstdio>
#include <string>

#include "adder_conv.h"

// Marks a C entry point the library exports (the build hides every other symbol).
#define ADDERCONVERT_EXPORT extern "C" __attribute__((visibility("default")))

namespace adderconvert {

// Writes `message` to the caller's buffer and returns the failure status 1.
inline int CApiFail(char* error, size_t error_len, const std::string& message) {
  if (error != nullptr && error_len > 0) std::snprintf(error, error_len, "%s", message.c_str());
  return 1;
}

// Checks the arrays a C API call received (x_dims and w_dims: 4 values, strides and dilations: 2, pads: 4)
// and fills `shape`; returns 0, or 1 with the reason in `error`.
inline int CApiResolve(const int64_t* x_dims, const int64_t* w_dims, const int64_t* strides, const int64_t* pads,
                       const int64_t* dilations, int64_t group, ConvShape* shape, char* error, size_t error_len) {
  ConvAttributes attrs;
  std::copy(strides, strides + 2, attrs.strides);
  std::copy(pads, pads + 4, attrs.pads);
  std::copy(dilations, dilations + 2, attrs.dilations);
  attrs.group = group;
  const std::string message = ResolveShape(x_dims, 4, w_dims, 4, attrs, shape);
  return message.empty() ? 0 : CApiFail(error, error_len, message);
}

}  // namespace adderconvert
