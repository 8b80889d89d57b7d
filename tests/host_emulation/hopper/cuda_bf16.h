// bf16 for the host emulation: the storage type and the one conversion the
// kernels use, rounding to nearest even as __floats2bfloat162_rn does.
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
    uint16_t bits;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

inline __nv_bfloat16 emu_float_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40)};  // NaN
    u += 0x7fffu + ((u >> 16) & 1);
    return {static_cast<uint16_t>(u >> 16)};
}

inline float emu_to_float(__nv_bfloat16 h) {
    const uint32_t u = static_cast<uint32_t>(h.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return {emu_float_to_bf16(lo), emu_float_to_bf16(hi)};
}
