// The warp-level tensor-core path (sm_80 and newer): cp.async copies into
// shared memory, ldmatrix fragment loads and mma.sync m16n8k16.
//
// Fragments of m16n8k16 per lane (g = lane / 4, q = lane % 4; two 16-bit
// elements per register, the lower column in the low half):
//   A (16 x 16, row): a0 = (g, 2q..), a1 = (g + 8, 2q..), a2 = (g, 2q + 8..),
//                     a3 = (g + 8, 2q + 8..)
//   B (16 x 8, col):  b0 = (k 2q.., n g), b1 = (k 2q + 8.., n g)
//   C (16 x 8, f32):  c0, c1 = (g, 2q..), c2, c3 = (g + 8, 2q..)
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace nvlm {

// 16 bytes global -> shared, bypassing L1; `valid == false` writes zeros
// and reads nothing (src-size 0).
__device__ __forceinline__ void cp_async_16(uint32_t smem, const void* global, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(global),
                 "r"(src_bytes)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most `kPending` of this thread's cp.async groups are in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8x8 matrices of 16-bit elements; lane 8i + j gives the address of
// row j of matrix i, and register i receives this lane's A/B-style pair of
// matrix i: (row g, columns 2q, 2q + 1).
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], uint32_t smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem)
                 : "memory");
}

// As ldmatrix_x4, each matrix transposed: register i receives (rows 2q,
// 2q + 1, column g) of matrix i.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], uint32_t smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem)
                 : "memory");
}

// c (16 x 8, f32) += A (16 x 16) * B (16 x 8).
template <typename T>
__device__ void mma_m16n8k16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_m16n8k16<__nv_bfloat16>(float c[4], const uint32_t a[4],
                                                            uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_m16n8k16<__half>(float c[4], const uint32_t a[4], uint32_t b0,
                                                     uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace nvlm
