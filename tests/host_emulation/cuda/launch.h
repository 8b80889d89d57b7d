// The launch side of the host emulation: reads a launch file written by
// src/host_emulation.rs, runs the grid (one block, or one cluster of
// blocks, at a time; one std::thread per CUDA thread) in launch order and
// again in reverse, and writes the device memory back.
//
// Launch file, little-endian: "NVLMEMU2"; u64 device_base, memory_bytes,
// grid x, y, z, block x, y, z, smem_bytes, params_bytes, pointers, maps,
// guards, name_bytes; the kernel name; `pointers` u64 byte offsets into
// the params of device addresses to rebase (0 stays a null pointer); per
// tensor map 16 u64 (address, rank, element bytes, dims[4],
// strides_bytes[4], box[4], swizzle bytes); per guard band 2 u64 (byte
// offset into the memory, length); the params; the device memory.
//
// Guard bands lie between the buffers: a run that changes a byte of one
// wrote outside every buffer, and fails. Under the address sanitizer they
// are also poisoned, so that a read of one is reported where it happens.
#pragma once
#include <cuda.h>
#include "emulation.h"
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <utility>

namespace emu {

// One kernel entry: runs it for the current thread and block. `cluster_x`:
// the CTAs of a cluster along x, as the kernel's __cluster_dims__.
struct Kernel {
    std::function<void(const uint8_t* params, const CUtensorMap* maps)> run;
    uint32_t cluster_x = 1;
};

// `k` launched in clusters of `ctas` CTAs along x, which run together.
inline Kernel in_clusters_of(uint32_t ctas, Kernel k) {
    k.cluster_x = ctas;
    return k;
}

// A driver's table entry: the kernel under its own name, which the
// crate's emulation tests launch it by (and src/host_emulation.rs's test
// matches with the build's entry functions); in clusters of `ctas` CTAs.
#define EMU_KERNEL(k) {#k, emu::kernel(k)}
#define EMU_CLUSTER_KERNEL(ctas, k) {#k, emu::in_clusters_of(ctas, emu::kernel(k))}

template <typename Params>
Kernel kernel(void (*entry)(Params)) {
    return {[entry](const uint8_t* params, const CUtensorMap*) {
        Params p;
        std::memcpy(&p, params, sizeof p);
        entry(p);
    }};
}

template <typename Params>
Kernel kernel(void (*entry)(CUtensorMap, Params)) {
    return {[entry](const uint8_t* params, const CUtensorMap* maps) {
        Params p;
        std::memcpy(&p, params, sizeof p);
        entry(maps[0], p);
    }};
}

template <typename Params>
Kernel kernel(void (*entry)(CUtensorMap, CUtensorMap, Params)) {
    return {[entry](const uint8_t* params, const CUtensorMap* maps) {
        Params p;
        std::memcpy(&p, params, sizeof p);
        entry(maps[0], maps[1], p);
    }};
}

template <typename Params>
Kernel kernel(void (*entry)(CUtensorMap, CUtensorMap, CUtensorMap, Params)) {
    return {[entry](const uint8_t* params, const CUtensorMap* maps) {
        Params p;
        std::memcpy(&p, params, sizeof p);
        entry(maps[0], maps[1], maps[2], p);
    }};
}

[[noreturn]] inline void usage(const char* what) {
    std::fprintf(stderr, "launch file: %s\n", what);
    std::exit(2);
}

inline int run_launch(int argc, char** argv, const std::map<std::string, Kernel>& kernels) {
    if (argc != 3) usage("usage: EMULATOR LAUNCH_FILE OUT_FILE");
    std::ifstream in(argv[1], std::ios::binary);
    const auto u64 = [&] {
        uint64_t v = 0;
        in.read(reinterpret_cast<char*>(&v), 8);
        return v;
    };
    char magic[8];
    in.read(magic, 8);
    if (!in || std::memcmp(magic, "NVLMEMU2", 8) != 0) usage("not a launch file");
    const uint64_t device_base = u64(), memory_bytes = u64();
    Dim3 grid;
    grid.x = static_cast<uint32_t>(u64());
    grid.y = static_cast<uint32_t>(u64());
    grid.z = static_cast<uint32_t>(u64());
    Dim3 block;
    block.x = static_cast<uint32_t>(u64());
    block.y = static_cast<uint32_t>(u64());
    block.z = static_cast<uint32_t>(u64());
    const uint32_t threads = block.x * block.y * block.z;
    const uint32_t smem_bytes = static_cast<uint32_t>(u64());
    const uint64_t params_bytes = u64(), pointers = u64(), map_count = u64(), guard_count = u64(),
                   name_bytes = u64();
    std::string name(name_bytes, '\0');
    in.read(name.data(), static_cast<std::streamsize>(name_bytes));
    std::vector<uint64_t> pointer_offsets(pointers);
    for (uint64_t& o : pointer_offsets) o = u64();
    std::vector<CUtensorMap> maps(map_count);
    for (CUtensorMap& m : maps) {
        m = CUtensorMap{};
        m.address = u64();
        m.rank = static_cast<uint32_t>(u64());
        m.element_bytes = static_cast<uint32_t>(u64());
        for (uint32_t d = 0; d < 4; ++d) m.dims[d] = u64();
        for (uint32_t d = 0; d < 4; ++d) m.strides_bytes[d] = u64();
        for (uint32_t d = 0; d < 4; ++d) m.box[d] = static_cast<uint32_t>(u64());
        m.swizzle_bytes = static_cast<uint32_t>(u64());
        // cuTensorMapEncodeTiled's element types are 1, 2, 4 or 8 bytes.
        if (m.element_bytes == 0 || m.element_bytes > 8 || (m.element_bytes & (m.element_bytes - 1)))
            usage("a tensor map element of other than 1, 2, 4 or 8 bytes");
    }
    std::vector<std::pair<uint64_t, uint64_t>> guards(guard_count);
    for (auto& [offset, bytes] : guards) {
        offset = u64();
        bytes = u64();
    }
    std::vector<uint8_t> params(params_bytes);
    in.read(reinterpret_cast<char*>(params.data()), static_cast<std::streamsize>(params_bytes));
    // Exactly the launch's bytes, so the sanitizer sees any access past the end.
    std::vector<uint8_t> memory(memory_bytes);
    in.read(reinterpret_cast<char*>(memory.data()), static_cast<std::streamsize>(memory_bytes));
    if (!in) usage("short launch file");
    std::vector<std::vector<uint8_t>> guard_bytes;
    for (const auto& [offset, bytes] : guards) {
        if (offset > memory_bytes || bytes > memory_bytes - offset) usage("a guard band past the memory");
        guard_bytes.emplace_back(memory.begin() + offset, memory.begin() + offset + bytes);
    }
    const auto host = [&](uint64_t address) -> uint64_t {
        if (address < device_base || address - device_base > memory_bytes)
            usage("a device address outside the launch's memory");
        return reinterpret_cast<uint64_t>(memory.data()) + (address - device_base);
    };
    for (const uint64_t o : pointer_offsets) {
        if (o + 8 > params_bytes) usage("a pointer offset past the params");
        uint64_t address;
        std::memcpy(&address, &params[o], 8);
        if (address != 0) address = host(address);
        std::memcpy(&params[o], &address, 8);
    }
    for (CUtensorMap& m : maps) m.address = host(m.address);
    global_begin = memory.data();
    global_end = memory.data() + memory.size();

    const auto found = kernels.find(name);
    if (found == kernels.end()) usage(("no kernel " + name).c_str());
    const Kernel& kernel = found->second;
    const uint32_t cluster = kernel.cluster_x;
    // CUDA's limits, so a plan that breaks one fails here as on a GPU.
    if (threads == 0) usage("an empty block");
    if (block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024)
        usage("a block past CUDA's limits (1024 x 1024 x 64, 1024 threads)");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
        grid.z > 65535)
        usage("a grid that is empty or past CUDA's limits (2^31 - 1 x 65535 x 65535)");
    if (grid.x % cluster != 0) usage("a grid x that is not a multiple of the kernel's cluster");
    if (smem_bytes > 227 * 1024) usage("dynamic shared memory past the 227 KiB a block may have (sm_90)");
    gridDim = grid;
    blockDim = block;
    start(cluster, threads, smem_bytes);
    // The grid's clusters, x fastest, in launch order or reversed.
    const uint64_t clusters_x = grid.x / cluster;
    const uint64_t clusters = clusters_x * grid.y * grid.z;
    const auto run_grid = [&](bool reversed) {
        std::vector<std::thread> pool;
        for (uint32_t t = 0; t < cluster * threads; ++t) {
            pool.emplace_back([&, t] {
                cta_rank = t / threads;
                thread_rank = t % threads;
                threadIdx.x = thread_rank % block.x;
                threadIdx.y = thread_rank / block.x % block.y;
                threadIdx.z = thread_rank / (block.x * block.y);
                for (uint64_t n = 0; n < clusters; ++n) {
                    const uint64_t c = reversed ? clusters - 1 - n : n;
                    blockIdx.x = static_cast<uint32_t>(c % clusters_x * cluster + cta_rank);
                    blockIdx.y = static_cast<uint32_t>(c / clusters_x % grid.y);
                    blockIdx.z = static_cast<uint32_t>(c / clusters_x / grid.y);
                    if (thread_rank == 0) poison_smem();
                    cluster_barrier->wait("block start");
                    kernel.run(params.data(), maps.data());
                    for (void (*check)() : end_of_block_checks()) check();
                    cluster_barrier->wait("block end");
                    if (thread_rank == 0) check_named_barriers_idle();
                }
            });
        }
        for (std::thread& t : pool) t.join();
    };
    const auto poison_guards = [&](bool poison) {
#if defined(__SANITIZE_ADDRESS__)
        for (const auto& [offset, bytes] : guards) {
            if (poison) {
                ASAN_POISON_MEMORY_REGION(memory.data() + offset, bytes);
            } else {
                ASAN_UNPOISON_MEMORY_REGION(memory.data() + offset, bytes);
            }
        }
#else
        (void)poison;
#endif
    };
    const auto guards_intact = [&] {
        for (size_t g = 0; g < guards.size(); ++g) {
            const uint64_t offset = guards[g].first;
            for (uint64_t i = 0; i < guard_bytes[g].size(); ++i) {
                if (memory[offset + i] != guard_bytes[g][i]) {
                    std::fprintf(stderr,
                                 "emulation: %s wrote device address %#llx, in the guard band before a "
                                 "buffer: outside every buffer\n",
                                 name.c_str(), static_cast<unsigned long long>(device_base + offset + i));
                    return false;
                }
            }
        }
        return true;
    };

    // A GPU runs a grid's blocks in no set order, so a launch's result
    // must not depend on it. The grid runs in launch order, then again
    // from the same memory in reverse: a byte that ends up different is
    // one two blocks both write, or one a block reads after another
    // writes it, which blocks run one at a time cannot otherwise show.
    // One run of the grid with the guard bands poisoned; false if it wrote one.
    const auto run_guarded = [&](bool reversed) {
        poison_guards(true);
        run_grid(reversed);
        poison_guards(false);
        return guards_intact();
    };
    const std::vector<uint8_t> initial = clusters > 1 ? memory : std::vector<uint8_t>{};
    if (!run_guarded(false)) return 1;
    if (clusters > 1) {
        const std::vector<uint8_t> in_launch_order = memory;
        std::copy(initial.begin(), initial.end(), memory.begin());
        if (!run_guarded(true)) return 1;
        const auto differ = std::mismatch(memory.begin(), memory.end(), in_launch_order.begin());
        if (differ.first != memory.end()) {
            const size_t offset = static_cast<size_t>(differ.first - memory.begin());
            std::fprintf(stderr,
                         "emulation: %s: device address %#llx holds %#04x after the grid ran in launch "
                         "order and %#04x after it ran in reverse: two blocks write it, or a block "
                         "reads it after another writes it (a GPU runs blocks in no set order)\n",
                         name.c_str(), static_cast<unsigned long long>(device_base + offset),
                         in_launch_order[offset], memory[offset]);
            return 1;
        }
    }
    std::ofstream(argv[2], std::ios::binary)
        .write(reinterpret_cast<const char*>(memory.data()), static_cast<std::streamsize>(memory_bytes));
    return 0;
}

}  // namespace emu
