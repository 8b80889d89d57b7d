// f16 for the host emulation, through the compiler's _Float16 (IEEE
// binary16, conversions rounding to nearest even).
#pragma once
#include <cstdint>
#include <cstring>

struct __half {
    uint16_t bits;
};
struct alignas(4) __half2 {  // 4-byte aligned, as on the device
    __half x, y;
};

inline __half emu_float_to_half(float f) {
    const _Float16 h = static_cast<_Float16>(f);
    __half out;
    std::memcpy(&out.bits, &h, 2);
    return out;
}

inline float emu_to_float(__half h) {
    _Float16 v;
    std::memcpy(&v, &h.bits, 2);
    return static_cast<float>(v);
}

inline __half2 __floats2half2_rn(float lo, float hi) {
    return {emu_float_to_half(lo), emu_float_to_half(hi)};
}

inline float __half2float(__half h) { return emu_to_float(h); }
inline __half __float2half_rn(float f) { return emu_float_to_half(f); }
inline __half __ushort_as_half(unsigned short bits) { return {bits}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
