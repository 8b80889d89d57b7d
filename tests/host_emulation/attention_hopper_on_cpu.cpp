// Runs kernels/attention_hopper.cu on the CPU: the kernel's own source over
// emulated Hopper primitives (tests/host_emulation/hopper), 384 std::threads
// per block, blocks one after another. With no GPU in reach this executes
// the kernel's pipeline (mbarrier phases, expected bytes, stage reuse),
// its shared-memory and descriptor arithmetic, tails and output indexing;
// built with -fsanitize=address it also catches out-of-bounds accesses on
// the host side of the emulation, and with -fsanitize=thread, accesses the
// pipeline does not order.
//
// Driven by src/attention/hopper.rs's tests, on a staged copy of the
// kernel source where tests/host_emulation/hopper replaces kernels/common:
//   attention_hopper_on_cpu LAUNCH_FILE OUT_FILE
// LAUNCH_FILE, little-endian: "NVLMHOP1"; u64 device_base, memory_bytes,
// grid x, y, z, threads, smem_bytes, params_bytes, name_bytes; the kernel
// name; per input (q, k, v) 16 u64: address, rank, element bytes, dims[4],
// strides_bytes[4], box[4], swizzle bytes; the NvlmHopperAttention; the
// device memory (memory_bytes from device_base). OUT_FILE gets the device
// memory after the run.
#include "emulation.h"
#include "attention_hopper.cu"

#include <fstream>
#include <string>
#include <thread>

namespace {

using Entry = void (*)(CUtensorMap, CUtensorMap, CUtensorMap, NvlmHopperAttention);

Entry entry(const std::string& name) {
    if (name == "attention_hopper_d128_bf16") return attention_hopper_d128_bf16;
    if (name == "attention_hopper_d128_f16") return attention_hopper_d128_f16;
    if (name == "attention_hopper_d64_bf16") return attention_hopper_d64_bf16;
    if (name == "attention_hopper_d64_f16") return attention_hopper_d64_f16;
    std::fprintf(stderr, "no kernel %s\n", name.c_str());
    std::exit(2);
}

uint64_t read_u64(std::ifstream& in) {
    uint64_t v = 0;
    in.read(reinterpret_cast<char*>(&v), 8);
    return v;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: attention_hopper_on_cpu LAUNCH_FILE OUT_FILE\n");
        return 2;
    }
    std::ifstream in(argv[1], std::ios::binary);
    char magic[8];
    in.read(magic, 8);
    if (!in || std::memcmp(magic, "NVLMHOP1", 8) != 0) {
        std::fprintf(stderr, "not a launch file\n");
        return 2;
    }
    const uint64_t device_base = read_u64(in), memory_bytes = read_u64(in);
    Dim3 grid;
    grid.x = static_cast<uint32_t>(read_u64(in));
    grid.y = static_cast<uint32_t>(read_u64(in));
    grid.z = static_cast<uint32_t>(read_u64(in));
    const uint32_t threads = static_cast<uint32_t>(read_u64(in));
    const uint32_t smem_bytes = static_cast<uint32_t>(read_u64(in));
    const uint64_t params_bytes = read_u64(in), name_bytes = read_u64(in);
    std::string name(name_bytes, '\0');
    in.read(name.data(), static_cast<std::streamsize>(name_bytes));
    CUtensorMap maps[3] = {};
    for (CUtensorMap& m : maps) {
        m.address = read_u64(in);
        m.rank = static_cast<uint32_t>(read_u64(in));
        m.element_bytes = static_cast<uint32_t>(read_u64(in));
        for (uint64_t& d : m.dims) d = 0;
        for (uint32_t d = 0; d < 4; ++d) m.dims[d] = read_u64(in);
        for (uint32_t d = 0; d < 4; ++d) m.strides_bytes[d] = read_u64(in);
        for (uint32_t d = 0; d < 4; ++d) m.box[d] = static_cast<uint32_t>(read_u64(in));
        m.swizzle_bytes = static_cast<uint32_t>(read_u64(in));
    }
    if (params_bytes != sizeof(NvlmHopperAttention)) {
        std::fprintf(stderr, "params are %llu bytes, abi.h says %zu\n",
                     static_cast<unsigned long long>(params_bytes), sizeof(NvlmHopperAttention));
        return 2;
    }
    NvlmHopperAttention p;
    in.read(reinterpret_cast<char*>(&p), sizeof p);
    // Exactly the launch's bytes, so the sanitizer sees any access past the end.
    std::vector<uint8_t> memory(memory_bytes);
    in.read(reinterpret_cast<char*>(memory.data()), static_cast<std::streamsize>(memory_bytes));
    if (!in) {
        std::fprintf(stderr, "short launch file\n");
        return 2;
    }
    const auto host = [&](uint64_t device_address) -> uint64_t {
        if (device_address < device_base || device_address - device_base > memory_bytes) {
            std::fprintf(stderr, "address %#llx is outside the launch's memory\n",
                         static_cast<unsigned long long>(device_address));
            std::exit(2);
        }
        return reinterpret_cast<uint64_t>(memory.data()) + (device_address - device_base);
    };
    for (CUtensorMap& m : maps) m.address = host(m.address);
    p.o = host(p.o);
    if (p.lse != 0) p.lse = host(p.lse);
    emu::global_begin = memory.data();
    emu::global_end = memory.data() + memory.size();

    const Entry kernel = entry(name);
    gridDim = grid;
    blockDim.x = threads;
    blockDim.y = blockDim.z = 1;
    emu::start(threads, smem_bytes);
    std::vector<std::thread> pool;
    for (uint32_t tid = 0; tid < threads; ++tid) {
        pool.emplace_back([&, tid] {
            threadIdx.x = tid;
            for (uint32_t z = 0; z < grid.z; ++z) {
                for (uint32_t y = 0; y < grid.y; ++y) {
                    for (uint32_t x = 0; x < grid.x; ++x) {
                        blockIdx.x = x;
                        blockIdx.y = y;
                        blockIdx.z = z;
                        if (tid == 0) emu::poison_smem();
                        emu::block.all->wait("block start");
                        kernel(maps[0], maps[1], maps[2], p);
                        emu::check_nothing_in_flight();
                        emu::block.all->wait("block end");
                    }
                }
            }
        });
    }
    for (std::thread& t : pool) t.join();
    std::ofstream(argv[2], std::ios::binary)
        .write(reinterpret_cast<const char*>(memory.data()), static_cast<std::streamsize>(memory_bytes));
    return 0;
}
