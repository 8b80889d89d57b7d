// InternViT flash attention forward for sm_90a: TMA, mbarrier pipelines,
// wgmma, warp specialisation.
//
// One CTA = 128 query rows of one (batch, head) and three warpgroups:
// - warpgroup 0, the producer: one thread loads the Q tile once and streams
//   128-key K and V tiles through a 2-stage shared-memory ring with TMA; the
//   warpgroup gives its registers back (setmaxnreg) to the math warpgroups;
// - warpgroups 1 and 2, the consumers: 64 query rows each; per K/V tile,
//   S = Q K^T (wgmma, both operands in shared memory), online softmax in
//   registers (exp2, scale * log2 e folded in), O += P V (wgmma with P from
//   registers, V MN-major). A K stage is released once its S is done, a V
//   stage once its P V is, so the producer refills K while P V still runs.
//
// Versions (all built; PERF.md has what each is predicted to run at; none
// has been measured on a GPU yet):
// - v1 (`attention_hopper_serial_*`): each wgmma batch waited for before
//   the next step;
// - v2 (`attention_hopper_*`): intra-warpgroup overlap. Tile j's S is
//   issued before tile j-1's P V, and tile j's softmax runs while that P V
//   is on the tensor cores; O is rescaled and P rewritten only after it;
// - v3 (`attention_hopper_pingpong_*`): v2 with the two consumer
//   warpgroups taking turns to issue their wgmma batches (two named
//   barriers), so one warpgroup's GEMMs run while the other's softmax does;
// - v4 (`attention_hopper_persistent_*`): v2 on a persistent grid. Each CTA
//   walks work items (query tile fastest, then head, then batch) with a
//   stride of the grid size; the producer loads the next item's Q once the
//   consumers have finished the current item's last QK^T (q_empty) and
//   streams K/V tiles across items, so the next item's first tiles land
//   while this one's last P V and stores run. The other versions run the
//   same code with one item per CTA.
//
// Tails (N = 1025 = 8*128 + 1): TMA fills rows past the sequence with
// zeros; keys past kv_len get -inf scores (zero-padded keys would score 0
// and take softmax mass); query rows past q_len are never stored, and a
// consumer warpgroup whose 64 rows all lie past q_len does no math (the
// last tile of N = 1025 runs one warpgroup, not two): in v1-v3 it leaves
// and the block's barrier counts leave it out; in v4, whose barriers serve
// every item, it passes each K/V tile's barriers as a working one would;
// a partial last K/V tile is visited first, so that only the first tile
// of a visit is masked; one of at most 16 keys runs P V on one k16 step,
// and, in v1-v3, QK^T on n16 wgmmas (before the loop: a narrow path inside
// it made ptxas serialise the wgmmas).
//
// Shared memory: every tile is made of 64-column swizzle atoms ([rows x 64]
// elements, 128-byte rows, 128-byte swizzle, 1024-byte aligned), the layout
// both TMA (SWIZZLE_128B) and the wgmma descriptors use.
#include "abi.h"
#include "common/convert.cuh"
#include "common/mbarrier.cuh"
#include "common/tma.cuh"
#include "common/wgmma.cuh"
#include <cuda_bf16.h>
#include <cuda_fp16.h>

using namespace nvlm;

namespace {

constexpr int kQueryRows = NVLM_HOPPER_ATTENTION_QUERY_ROWS;  // two consumer warpgroups of 64
constexpr int kKeyRows = 128;                                  // per K/V tile
constexpr int kStages = 2;
// The ring counters below wrap at 2^32, which keeps their values mod
// 2 * kStages (a stage and its phase) only for a power of two.
static_assert((kStages & (kStages - 1)) == 0, "kStages a power of two");
constexpr int kThreads = NVLM_HOPPER_ATTENTION_THREADS;
constexpr uint32_t kAtomRowBytes = 128;

template <int D>
struct SmemLayout {
    static constexpr int atoms = D / 64;
    static constexpr uint32_t q_atom_bytes = kQueryRows * kAtomRowBytes;
    static constexpr uint32_t kv_atom_bytes = kKeyRows * kAtomRowBytes;
    static constexpr uint32_t q_bytes = atoms * q_atom_bytes;
    static constexpr uint32_t kv_tile_bytes = atoms * kv_atom_bytes;
    static constexpr uint32_t k_offset = q_bytes;
    static constexpr uint32_t v_offset = k_offset + kStages * kv_tile_bytes;
    static constexpr uint32_t bytes = v_offset + kStages * kv_tile_bytes;
};
static_assert(SmemLayout<64>::bytes + 1024 == NVLM_HOPPER_ATTENTION_SMEM_BYTES_D64, "abi.h");
static_assert(SmemLayout<128>::bytes + 1024 == NVLM_HOPPER_ATTENTION_SMEM_BYTES_D128, "abi.h");
static_assert(kQueryRows == 128 && kThreads == 3 * 128, "two consumer warpgroups + a producer");
static_assert(NVLM_HOPPER_ATTENTION_PRODUCER_REGISTERS * 128 +
                      2 * 128 * NVLM_HOPPER_ATTENTION_CONSUMER_REGISTERS <=
                  64 * 1024,
              "setmaxnreg targets beyond the register file");

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// The tensor maps are 4-D, (d, ., ., batch), with tokens and heads in the
// order of increasing stride (packed qkv has heads inside tokens).
__device__ __forceinline__ void load_tile(void* dst, const CUtensorMap* map, uint64_t* bar,
                                          int d0, int token, int head, int batch,
                                          uint32_t tokens_inner) {
    if (tokens_inner) {
        tma_load_4d(dst, map, bar, d0, token, head, batch);
    } else {
        tma_load_4d(dst, map, bar, d0, head, token, batch);
    }
}

enum class Schedule { Serial, Overlap, PingPong };

// v3's turns: named barrier 1 + c opens consumer warpgroup c's turn to
// issue (0 is __syncthreads); both consumer warpgroups count in each.
constexpr uint32_t kTurnThreads = 256;

template <uint32_t Consumer>
__device__ __forceinline__ void wait_for_turn() {
    named_barrier_sync<1 + Consumer, kTurnThreads>();
}
template <uint32_t Consumer>
__device__ __forceinline__ void give_turn_to() {
    named_barrier_arrive<1 + Consumer, kTurnThreads>();
}

// One work item: 128 query rows of one (batch, head).
struct WorkItem {
    int q_row0, head, batch;
};

template <int D, typename T, Schedule kSchedule, bool kPersistent>
__device__ __forceinline__ void attention_forward(const CUtensorMap* q_map,
                                                  const CUtensorMap* k_map,
                                                  const CUtensorMap* v_map,
                                                  const NvlmHopperAttention& p) {
    using L = SmemLayout<D>;
    uint8_t* smem_raw = dynamic_smem();
    const uint32_t misalign = smem_addr(smem_raw) % 1024;
    uint8_t* smem = smem_raw + (misalign ? 1024 - misalign : 0);
    __shared__ __align__(8) uint64_t q_full;
    __shared__ __align__(8) uint64_t q_empty;
    __shared__ __align__(8) uint64_t k_full[kStages];
    __shared__ __align__(8) uint64_t v_full[kStages];
    __shared__ __align__(8) uint64_t k_empty[kStages];
    __shared__ __align__(8) uint64_t v_empty[kStages];

    const int q_tiles = (static_cast<int>(p.q_len) + kQueryRows - 1) / kQueryRows;
    const int items = q_tiles * static_cast<int>(p.heads) * static_cast<int>(p.batch);
    const int kv_tiles = (static_cast<int>(p.kv_len) + kKeyRows - 1) / kKeyRows;
    // The order K/V tiles are visited in (the online softmax takes any): a
    // partial last tile goes first. Then only the first tile of a visit has
    // keys to mask, so the loop's softmax has no masking, and ptxas keeps
    // v2's wait for the previous P V after the row max and part of the
    // exponentials (with the masking in the loop it hoisted the wait above
    // all of them: no overlap, 2026-11-30). A first tile of at most 16 keys
    // (N = 1025's CLS tail) also runs its narrow QK^T before the loop, with
    // no P V in flight (with the narrow path inside the loop, ptxas
    // serialised the wgmmas: C7511, C7515). Tile j of the visit is
    // `kv_tile(j)`.
    const bool tail_first = kv_tiles > 1 && static_cast<int>(p.kv_len) % kKeyRows != 0;
    const auto kv_tile = [&](int j) { return tail_first ? (j + kv_tiles - 1) % kv_tiles : j; };
    // Tile j of the visit holds at most 16 real keys (N = 1025's tail).
    const auto at_most_16_keys = [&](int j) {
        return static_cast<int>(p.kv_len) - kv_tile(j) * kKeyRows <= 16;
    };
    // v4 strides over the items by its grid size; the others' grid is
    // (query tiles, heads, batch) and each block takes its one item.
    const int first_item = kPersistent ? static_cast<int>(blockIdx.x)
                                       : static_cast<int>(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));
    const int item_stride = kPersistent ? static_cast<int>(gridDim.x) : items;
    const auto work_item = [&](int item) {
        const int bh = item / q_tiles;
        return WorkItem{(item % q_tiles) * kQueryRows, bh % static_cast<int>(p.heads),
                        bh / static_cast<int>(p.heads)};
    };
    // Consumer warpgroups with rows in an item: 1 for a last query tile
    // of at most 64 rows (N = 1025's), else 2.
    const auto active_consumers_of = [&](const WorkItem& w) {
        return (min(kQueryRows, static_cast<int>(p.q_len) - w.q_row0) + 63) / 64;
    };
    const int warpgroup = threadIdx.x / 128;

    // The consumers' releases each barrier counts: on a persistent grid
    // both consumers pass every tile, as items differ in active consumers;
    // with one item, only its active ones take part.
    const int consumer_threads = kPersistent ? 256 : 128 * active_consumers_of(work_item(first_item));
    if (threadIdx.x == 0) {
        mbarrier_init(&q_full, 1);
        mbarrier_init(&q_empty, consumer_threads);
        for (int s = 0; s < kStages; ++s) {
            mbarrier_init(&k_full[s], 1);
            mbarrier_init(&v_full[s], 1);
            mbarrier_init(&k_empty[s], consumer_threads);
            mbarrier_init(&v_empty[s], consumer_threads);
        }
        mbarrier_init_fence();
    }
    __syncthreads();

    if (warpgroup == 0) {
        warpgroup_registers_release<NVLM_HOPPER_ATTENTION_PRODUCER_REGISTERS>();
        if (threadIdx.x == 0) {
            // K/V tiles loaded so far, across items: each one's ring stage
            // and round. Unsigned: a persistent CTA may pass 2^31 tiles,
            // and the wrap keeps the stage and phase.
            uint32_t loaded = 0;
            int n = 0;
            for (int item = first_item; item < items; item += item_stride, ++n) {
                const WorkItem w = work_item(item);
                // Q's one buffer: the consumers are done with the last item's.
                if (n > 0) mbarrier_wait(&q_empty, (n - 1) & 1);
                mbarrier_arrive_expect_tx(&q_full, L::q_bytes);
                for (int a = 0; a < L::atoms; ++a) {
                    load_tile(smem + a * L::q_atom_bytes, q_map, &q_full, 64 * a, w.q_row0, w.head,
                              w.batch, p.q_tokens_inner);
                }
                // Not unrolled: the one thread's loop issues copies, and
                // unrolling it (as ptxas did for head_dim 64 once the
                // counter was unsigned) only doubles its load sites.
#pragma unroll 1
                for (int j = 0; j < kv_tiles; ++j, ++loaded) {
                    const uint32_t stage = loaded % kStages, round = loaded / kStages;
                    uint8_t* k_tile = smem + L::k_offset + stage * L::kv_tile_bytes;
                    uint8_t* v_tile = smem + L::v_offset + stage * L::kv_tile_bytes;
                    mbarrier_wait(&k_empty[stage], (round & 1) ^ 1);
                    mbarrier_arrive_expect_tx(&k_full[stage], L::kv_tile_bytes);
                    for (int a = 0; a < L::atoms; ++a) {
                        load_tile(k_tile + a * L::kv_atom_bytes, k_map, &k_full[stage], 64 * a,
                                  kv_tile(j) * kKeyRows, w.head, w.batch, p.kv_tokens_inner);
                    }
                    mbarrier_wait(&v_empty[stage], (round & 1) ^ 1);
                    mbarrier_arrive_expect_tx(&v_full[stage], L::kv_tile_bytes);
                    for (int a = 0; a < L::atoms; ++a) {
                        load_tile(v_tile + a * L::kv_atom_bytes, v_map, &v_full[stage], 64 * a,
                                  kv_tile(j) * kKeyRows, w.head, w.batch, p.kv_tokens_inner);
                    }
                }
            }
        }
        return;
    }
    const int consumer = warpgroup - 1;
    if constexpr (!kPersistent) {
        // A warpgroup with no rows in the block's one item leaves (the
        // barrier counts leave it out).
        if (consumer >= active_consumers_of(work_item(first_item))) return;
    }
    warpgroup_registers_claim<NVLM_HOPPER_ATTENTION_CONSUMER_REGISTERS>();

    const int tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
    const int quad = lane % 4;
    const float scale_log2 = p.softmax_scale * 1.4426950408889634f;  // scores to log2 units

    const uint8_t* q_rows = smem + consumer * 64 * kAtomRowBytes;
    // K/V tiles of earlier items: tile j of this item is ring slot
    // consumed + j (stage and phase as the producer counts them; unsigned,
    // as the producer's count, so both wrap alike).
    uint32_t consumed = 0;
    const auto stage_of = [&](int j) { return static_cast<int>((consumed + j) % kStages); };
    const auto phase_of = [&](int j) {
        return static_cast<int>(((consumed + j) / kStages) & 1);
    };

    // One item in which this warpgroup has rows, once its Q has landed:
    // the math and the stores.
    const auto run_item = [&](const WorkItem& w, int active_consumers) {
        // Declared per item: nothing of one item's math outlives it.
        float o[D / 2];
        // Rows 16*warp + lane/4 (h = 0) and that + 8 (h = 1): running max (in
        // log2 units) and this thread's part of the running sum.
        float row_max[2];
        float row_sum[2];
        float s[kKeyRows / 2];              // S of one K/V tile, then its P
        float s_narrow[8];                  // S of a narrow first tile
        uint32_t pa[kKeyRows / 16][4];      // P as the A operands of P V

        // Whether S = Q K^T of tile j of the visit runs n16 wgmmas, 1/8 of
        // the work: a last tile of at most 16 real keys (N = 1025's CLS
        // tail), visited first, in a call before the loop (`first`), where
        // the narrow path is compiled. v4 runs the full QK^T on it: with the
        // narrow path in its item loop ptxas serialised v4's wgmmas (C7515)
        // whichever way the n16 accumulators were held.
        const auto narrow_qk = [&](int j, bool first) {
            return first && !kPersistent && at_most_16_keys(j);
        };

        // Issues S = Q K^T for tile j of the visit as one commit group (the
        // narrow path into s_narrow, see collect_narrow_s).
        const auto issue_qk = [&](int j, bool first) {
            const int stage = stage_of(j);
            const uint8_t* k_tile = smem + L::k_offset + stage * L::kv_tile_bytes;
            // k16 step t: atom t / 4, 32 bytes per step along its rows.
            const auto q_step = [&](int t) {
                return wgmma_descriptor(q_rows + (t / 4) * L::q_atom_bytes + (t % 4) * 32, 16, 1024,
                                        WgmmaSwizzle::B128);
            };
            const auto k_step = [&](int t) {
                return wgmma_descriptor(k_tile + (t / 4) * L::kv_atom_bytes + (t % 4) * 32, 16, 1024,
                                        WgmmaSwizzle::B128);
            };
            const bool narrow = narrow_qk(j, first);
            mbarrier_wait(&k_full[stage], phase_of(j));
            // Each path commits its own group: with the commit after the join,
            // ptxas puts a warpgroup.arrive before it on every tile (C7519).
            if (narrow) {
                wgmma_fence();
#pragma unroll
                for (int t = 0; t < D / 16; ++t) wgmma_ss<16, T>(s_narrow, q_step(t), k_step(t), t > 0);
                wgmma_commit_group();
            } else {
                wgmma_fence();
#pragma unroll
                for (int t = 0; t < D / 16; ++t) {
                    wgmma_ss<kKeyRows, T>(s, q_step(t), k_step(t), t > 0);
                }
                wgmma_commit_group();
            }
        };

        // After a first tile's S is waited for: a narrow S (16 keys) into
        // s, where the softmax reads it, and zeros in s's other columns, all
        // keys past kv_len, which the softmax masks to -inf (they are
        // defined here, not at the item's start: zeroing s there drew
        // C7515). It has accumulators of its own, not an alias of s's first
        // 8: with the alias ptxas serialised the wgmmas (C7511,
        // "insufficient register resources").
        const auto collect_narrow_s = [&](int j) {
            wgmma_fence_operands(s_narrow);
            if (narrow_qk(j, true)) {
#pragma unroll
                for (int i = 0; i < kKeyRows / 2; ++i) s[i] = i < 8 ? s_narrow[i] : 0.0f;
            }
        };

        // Issues O += P V for tile j (P in pa) as one commit group. Keys past
        // kv_len have p = 0 exactly (and TMA zero-fills their V rows), so
        // k16 steps made only of them add exact zeros: a last tile of at
        // most 16 keys (N = 1025's) runs 1 step of 8, any other tile all 8.
        // Each path is straight-line: a branch between wgmmas makes ptxas
        // put a warpgroup.arrive before each (C7519), and inside the
        // persistent item loop serialise them (C7520).
        const auto issue_pv = [&](int j) {
            const int stage = stage_of(j);
            const uint8_t* v_tile = smem + L::v_offset + stage * L::kv_tile_bytes;
            const bool narrow = at_most_16_keys(j);
            // k16 step t: 16 V rows on; head_dim atoms kv_atom_bytes apart.
            const auto v_step = [&](int t) {
                return wgmma_descriptor(v_tile + t * 16 * kAtomRowBytes, L::kv_atom_bytes, 1024,
                                        WgmmaSwizzle::B128);
            };
            mbarrier_wait(&v_full[stage], phase_of(j));
            // Each path commits its own group, as in issue_qk.
            if (narrow) {
                wgmma_fence();
                wgmma_rs<D, T>(o, pa[0], v_step(0), true);
                wgmma_commit_group();
            } else {
                wgmma_fence();
#pragma unroll
                for (int t = 0; t < kKeyRows / 16; ++t) wgmma_rs<D, T>(o, pa[t], v_step(t), true);
                wgmma_commit_group();
            }
        };

        // The online softmax of tile j's S, in place (S becomes P); returns
        // through `correction` the factor O must be scaled by before this
        // tile's P V is added. Only a visit's first tile (`first`, a
        // constant at each call) can hold keys past kv_len.
        const auto softmax = [&](int j, float (&correction)[2], bool first) {
            // Scores into the log2 domain; keys past kv_len get -inf (after
            // the scaling, so any sign of scale keeps them at -inf).
            const int key0 = kv_tile(j) * kKeyRows;
            const bool key_tail = first && key0 + kKeyRows > static_cast<int>(p.kv_len);
#pragma unroll
            for (int n8 = 0; n8 < kKeyRows / 8; ++n8) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const bool masked =
                        key_tail && key0 + 8 * n8 + 2 * quad + (e & 1) >= static_cast<int>(p.kv_len);
                    s[4 * n8 + e] = masked ? -INFINITY : s[4 * n8 + e] * scale_log2;
                }
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float tile_max = -INFINITY;
#pragma unroll
                for (int n8 = 0; n8 < kKeyRows / 8; ++n8) {
                    tile_max = fmaxf(tile_max, fmaxf(s[4 * n8 + 2 * h], s[4 * n8 + 2 * h + 1]));
                }
                // The four lanes of a quad hold the same two rows.
                tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
                tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
                // Every tile has at least one real key, so this is finite.
                const float new_max = fmaxf(row_max[h], tile_max);
                correction[h] = fast_exp2(row_max[h] - new_max);
                row_max[h] = new_max;
                float tile_sum = 0.0f;
#pragma unroll
                for (int n8 = 0; n8 < kKeyRows / 8; ++n8) {
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const float prob = fast_exp2(s[4 * n8 + 2 * h + e] - new_max);
                        s[4 * n8 + 2 * h + e] = prob;
                        tile_sum += prob;
                    }
                }
                row_sum[h] = row_sum[h] * correction[h] + tile_sum;
            }
        };

        // O *= correction; P into pa. Only once no P V is in flight: it reads
        // pa and accumulates into O.
        const auto rescale_and_pack = [&](const float (&correction)[2]) {
#pragma unroll
            for (int n8 = 0; n8 < D / 8; ++n8) {
                o[4 * n8 + 0] *= correction[0];
                o[4 * n8 + 1] *= correction[0];
                o[4 * n8 + 2] *= correction[1];
                o[4 * n8 + 3] *= correction[1];
            }
            // The S accumulators of keys 16t..16t+15 are exactly the A
            // fragment of k16 step t of P V.
#pragma unroll
            for (int t = 0; t < kKeyRows / 16; ++t) {
                pa[t][0] = pack2<T>(s[8 * t + 0], s[8 * t + 1]);
                pa[t][1] = pack2<T>(s[8 * t + 2], s[8 * t + 3]);
                pa[t][2] = pack2<T>(s[8 * t + 4], s[8 * t + 5]);
                pa[t][3] = pack2<T>(s[8 * t + 6], s[8 * t + 7]);
            }
        };

#pragma unroll
        for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
        row_max[0] = row_max[1] = -INFINITY;
        row_sum[0] = row_sum[1] = 0.0f;

        // v3: the consumers issue their wgmma batches in turns, 0 first. Each
        // takes kv_tiles + 1 turns; consumer 0 passes every one on, consumer 1
        // all but its last, so with the first turn it gives, each barrier
        // completes exactly as often as its warpgroup waits on it. A tile with
        // one active consumer has no partner to take turns with.
        const bool ping_pong = kSchedule == Schedule::PingPong && active_consumers == 2;
        const auto wait_turn = [&] {
            if (!ping_pong) return;
            if (consumer == 0) {
                wait_for_turn<0>();
            } else {
                wait_for_turn<1>();
            }
        };
        const auto pass_turn = [&] {
            if (!ping_pong) return;
            if (consumer == 0) {
                give_turn_to<1>();
            } else {
                give_turn_to<0>();
            }
        };
        if (consumer == 1) pass_turn();

        // K and V stages are released apart: a K tile as soon as its S is
        // done, so the producer can refill it while P V still reads V; Q
        // once the item's last S is done, so the producer can load the next
        // item's while this one's last P V runs.
        const auto release_k = [&](int j) {
            if (j == kv_tiles - 1) mbarrier_arrive(&q_empty);
            mbarrier_arrive(&k_empty[stage_of(j)]);
        };
        float correction[2];
        if constexpr (kSchedule != Schedule::Serial) {
            // v2: tile j's S = Q K^T is issued before tile j-1's P V, and its
            // softmax runs while that P V is on the tensor cores. v3 issues
            // each batch in its turn.
            wait_turn();
            issue_qk(0, true);
            pass_turn();
            wgmma_wait_group<0>();
            wgmma_fence_operands(s);
            collect_narrow_s(0);
            release_k(0);
            softmax(0, correction, true);
            rescale_and_pack(correction);
            for (int j = 1; j < kv_tiles; ++j) {
                wait_turn();
                issue_qk(j, false);
                issue_pv(j - 1);
                pass_turn();
                wgmma_wait_group<1>();  // S of tile j (P V of j-1 may still run)
                wgmma_fence_operands(s);
                release_k(j);
                softmax(j, correction, false);
                wgmma_wait_group<0>();  // P V of tile j-1
                wgmma_fence_operands(o);
                wgmma_fence_operands(pa);
                mbarrier_arrive(&v_empty[stage_of(j - 1)]);
                rescale_and_pack(correction);
            }
            wait_turn();
            issue_pv(kv_tiles - 1);
            if (consumer == 0) pass_turn();
            wgmma_wait_group<0>();
            wgmma_fence_operands(o);
            mbarrier_arrive(&v_empty[stage_of(kv_tiles - 1)]);
        } else {
            // v1's order: each step waits for the one before. The first
            // step is peeled, as the only one that may take the narrow QK^T.
            const auto serial_step = [&](int j, bool first) {
                issue_qk(j, first);
                wgmma_wait_group<0>();
                wgmma_fence_operands(s);
                if (first) collect_narrow_s(j);
                release_k(j);
                softmax(j, correction, first);
                rescale_and_pack(correction);
                issue_pv(j);
                wgmma_wait_group<0>();
                wgmma_fence_operands(o);
                wgmma_fence_operands(pa);
                mbarrier_arrive(&v_empty[stage_of(j)]);
            };
            serial_step(0, true);
            for (int j = 1; j < kv_tiles; ++j) serial_step(j, false);
        }

        T* out = reinterpret_cast<T*>(p.o);
        float* lse = reinterpret_cast<float*>(p.lse);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float total = row_sum[h];
            total += __shfl_xor_sync(0xffffffffu, total, 1);
            total += __shfl_xor_sync(0xffffffffu, total, 2);
            const int row = w.q_row0 + consumer * 64 + 16 * warp + lane / 4 + 8 * h;
            if (row >= static_cast<int>(p.q_len)) continue;
            const float inv = 1.0f / total;
            T* out_row = out + w.batch * p.o_batch_stride + row * p.o_token_stride +
                         w.head * p.o_head_stride;
#pragma unroll
            for (int n8 = 0; n8 < D / 8; ++n8) {
                *reinterpret_cast<uint32_t*>(out_row + 8 * n8 + 2 * quad) =
                    pack2<T>(o[4 * n8 + 2 * h] * inv, o[4 * n8 + 2 * h + 1] * inv);
            }
            if (lse != nullptr && quad == 0) {
                // Natural-log LSE of the scaled scores: (max + log2 sum) * ln 2.
                lse[(static_cast<int64_t>(w.batch) * p.heads + w.head) * p.q_len + row] =
                    (row_max[h] + __log2f(total)) * 0.6931471805599453f;
            }
        }
    };

    if constexpr (!kPersistent) {
        const WorkItem w = work_item(first_item);
        mbarrier_wait(&q_full, 0);
        run_item(w, active_consumers_of(w));
    } else if (consumer == 0) {
        // Consumer 0 has rows in every item. Its own loop, without the
        // walk below: with one loop for both consumers ptxas spilled 32
        // bytes at head_dim 128 (ptxas 13.0), with two none.
        int n = 0;
        for (int item = first_item; item < items; item += item_stride, ++n, consumed += kv_tiles) {
            const WorkItem w = work_item(item);
            mbarrier_wait(&q_full, n & 1);
            run_item(w, active_consumers_of(w));
        }
    } else {
        int n = 0;
        for (int item = first_item; item < items; item += item_stride, ++n, consumed += kv_tiles) {
            const WorkItem w = work_item(item);
            mbarrier_wait(&q_full, n & 1);
            if (active_consumers_of(w) == 2) {
                run_item(w, 2);
                continue;
            }
            // No rows here (a short last query tile): pass each tile's
            // barriers, as a working warpgroup would (each waited for
            // before its release).
            mbarrier_arrive(&q_empty);
            for (int j = 0; j < kv_tiles; ++j) {
                mbarrier_wait(&k_full[stage_of(j)], phase_of(j));
                mbarrier_arrive(&k_empty[stage_of(j)]);
                mbarrier_wait(&v_full[stage_of(j)], phase_of(j));
                mbarrier_arrive(&v_empty[stage_of(j)]);
            }
        }
    }
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

}  // namespace

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define NVLM_HOPPER_BODY(D, T, SCHEDULE, PERSISTENT) \
    attention_forward<D, T, Schedule::SCHEDULE, PERSISTENT>(&q_map, &k_map, &v_map, p);
#else
#define NVLM_HOPPER_BODY(D, T, SCHEDULE, PERSISTENT) __trap();
#endif

#define NVLM_HOPPER_ENTRY(name, D, T, SCHEDULE, PERSISTENT)                                  \
    extern "C" __global__ void __launch_bounds__(kThreads, 1)                                \
        name(const __grid_constant__ CUtensorMap q_map, const __grid_constant__ CUtensorMap k_map, \
             const __grid_constant__ CUtensorMap v_map, NvlmHopperAttention p) {             \
        NVLM_HOPPER_BODY(D, T, SCHEDULE, PERSISTENT)                                         \
    }

NVLM_HOPPER_ENTRY(attention_hopper_d128_bf16, 128, __nv_bfloat16, Overlap, false)
NVLM_HOPPER_ENTRY(attention_hopper_d128_f16, 128, __half, Overlap, false)
NVLM_HOPPER_ENTRY(attention_hopper_d64_bf16, 64, __nv_bfloat16, Overlap, false)
NVLM_HOPPER_ENTRY(attention_hopper_d64_f16, 64, __half, Overlap, false)
// v1's serial order, kept to measure what the overlap buys.
NVLM_HOPPER_ENTRY(attention_hopper_serial_d128_bf16, 128, __nv_bfloat16, Serial, false)
NVLM_HOPPER_ENTRY(attention_hopper_serial_d128_f16, 128, __half, Serial, false)
NVLM_HOPPER_ENTRY(attention_hopper_serial_d64_bf16, 64, __nv_bfloat16, Serial, false)
NVLM_HOPPER_ENTRY(attention_hopper_serial_d64_f16, 64, __half, Serial, false)
// v3: v2 with the consumers' turns.
NVLM_HOPPER_ENTRY(attention_hopper_pingpong_d128_bf16, 128, __nv_bfloat16, PingPong, false)
NVLM_HOPPER_ENTRY(attention_hopper_pingpong_d128_f16, 128, __half, PingPong, false)
NVLM_HOPPER_ENTRY(attention_hopper_pingpong_d64_bf16, 64, __nv_bfloat16, PingPong, false)
NVLM_HOPPER_ENTRY(attention_hopper_pingpong_d64_f16, 64, __half, PingPong, false)
// v4: v2 on a persistent grid.
NVLM_HOPPER_ENTRY(attention_hopper_persistent_d128_bf16, 128, __nv_bfloat16, Overlap, true)
NVLM_HOPPER_ENTRY(attention_hopper_persistent_d128_f16, 128, __half, Overlap, true)
NVLM_HOPPER_ENTRY(attention_hopper_persistent_d64_bf16, 64, __nv_bfloat16, Overlap, true)
NVLM_HOPPER_ENTRY(attention_hopper_persistent_d64_f16, 64, __half, Overlap, true)
