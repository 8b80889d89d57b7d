// bf16 for the host emulation: the storage type and the conversions the
// kernels use, rounding to nearest even as the _rn intrinsics do.
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
    uint16_t bits;
};
struct alignas(4) __nv_bfloat162 {  // 4-byte aligned, as on the device
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

inline float __bfloat162float(__nv_bfloat16 h) { return emu_to_float(h); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return emu_float_to_bf16(f); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) { return {bits}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }
