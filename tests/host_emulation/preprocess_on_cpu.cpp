// Runs kernels/preprocess.cu's `preprocess_fused` source on the CPU: the
// CUDA keywords become plain C++, each block's 256 threads are std::threads
// and __syncthreads() is a barrier. With no GPU in reach, this executes the
// kernel's own indexing, chunking and barriers (a deadlock means a barrier
// some threads skip); built with -fsanitize=address it also catches reads
// and writes outside the image, tables, output and shared slab.
//
// Driven by src/preprocess/gpu.rs's tests:
//   preprocess_on_cpu LAUNCH_FILE OUT_FILE
// LAUNCH_FILE: six little-endian u64 (params bytes, blob bytes, image bytes,
// output bytes, blocks, slab bytes), then the NvlmFusedPreprocess with
// addresses as offsets (into the blob; src and out zero), the blob, the image.
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(...)
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
#define __noinline__

using std::max;
using std::min;

struct Dim3 {
    uint32_t x = 0, y = 0, z = 0;
};
thread_local Dim3 threadIdx, blockIdx;
Dim3 blockDim, gridDim;

struct uint4 {
    uint32_t x, y, z, w;
};
struct uint2 {
    uint32_t x, y;
};
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
inline uint2 make_uint2(uint32_t x, uint32_t y) { return {x, y}; }
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}

// A reusable barrier for the block's threads.
class Barrier {
  public:
    explicit Barrier(unsigned n) : n_(n) {}
    void wait() {
        std::unique_lock<std::mutex> lock(m_);
        const unsigned gen = gen_;
        if (++waiting_ == n_) {
            waiting_ = 0;
            ++gen_;
            cv_.notify_all();
        } else {
            cv_.wait(lock, [&] { return gen_ != gen; });
        }
    }

  private:
    std::mutex m_;
    std::condition_variable cv_;
    unsigned n_, waiting_ = 0, gen_ = 0;
};
Barrier* block_barrier;
inline void __syncthreads() { block_barrier->wait(); }

// The kernel's dynamic shared memory (`extern __shared__ slab[]`), sized as
// the host launches it (SLAB_BYTES in gpu.rs); one block runs at a time.
constexpr uint64_t kSlabBytes = 24 * 1024;
alignas(16) uint8_t slab[kSlabBytes];
#include "preprocess.cu"  // -I kernels

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: preprocess_on_cpu LAUNCH_FILE OUT_FILE\n");
        return 2;
    }
    std::ifstream in(argv[1], std::ios::binary);
    uint64_t sizes[6];
    in.read(reinterpret_cast<char*>(sizes), sizeof sizes);
    const uint64_t params_bytes = sizes[0], blob_bytes = sizes[1], image_bytes = sizes[2],
                   out_bytes = sizes[3], blocks = sizes[4], slab_bytes = sizes[5];
    if (params_bytes != sizeof(NvlmFusedPreprocess)) {
        std::fprintf(stderr, "params are %llu bytes, abi.h says %zu\n",
                     static_cast<unsigned long long>(params_bytes), sizeof(NvlmFusedPreprocess));
        return 2;
    }
    NvlmFusedPreprocess p;
    in.read(reinterpret_cast<char*>(&p), sizeof p);
    // Exact sizes, so ASan sees any access past an end.
    std::vector<uint8_t> blob(blob_bytes), image(image_bytes), out(out_bytes, 0xFF);
    in.read(reinterpret_cast<char*>(blob.data()), blob_bytes);
    in.read(reinterpret_cast<char*>(image.data()), image_bytes);
    if (!in) {
        std::fprintf(stderr, "short launch file\n");
        return 2;
    }
    const uint64_t base = reinterpret_cast<uint64_t>(blob.data());
    p.table += base;
    for (uint32_t i = 0; i < p.num_targets; ++i) {
        NvlmFusedTarget& t = p.target[i];
        for (uint64_t* f : {&t.first_f, &t.count_f, &t.coeffs_f, &t.first_s, &t.count_s, &t.coeffs_s}) *f += base;
    }
    p.src = reinterpret_cast<uint64_t>(image.data());
    p.out = reinterpret_cast<uint64_t>(out.data());
    if (slab_bytes != kSlabBytes) {
        std::fprintf(stderr, "slab_bytes %llu, this harness has %llu\n",
                     static_cast<unsigned long long>(slab_bytes), static_cast<unsigned long long>(kSlabBytes));
        return 2;
    }

    Barrier barrier(kFusedThreads);
    block_barrier = &barrier;
    gridDim.x = static_cast<uint32_t>(blocks);
    blockDim.x = kFusedThreads;
    std::vector<std::thread> threads;
    for (uint32_t tid = 0; tid < kFusedThreads; ++tid) {
        threads.emplace_back([&, tid] {
            threadIdx.x = tid;
            for (uint64_t b = 0; b < blocks; ++b) {
                blockIdx.x = static_cast<uint32_t>(b);
                preprocess_fused(p);
                barrier.wait();  // the block is done before the next starts
            }
        });
    }
    for (auto& t : threads) t.join();
    std::ofstream(argv[2], std::ios::binary).write(reinterpret_cast<const char*>(out.data()), out_bytes);
    return 0;
}
