// The exact GELU the models use (torch's nn.GELU(), approximate="none"),
// in f32: the projector's element-wise pass and the sm_90a Linear's
// epilogue compute it with this one expression.
#pragma once

namespace nvlm {

__device__ __forceinline__ float gelu_erf(float x) {
    return 0.5f * x * (1.f + erff(x * 0.70710678118654752440f));
}

}  // namespace nvlm
