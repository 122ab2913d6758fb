// M = 1 GEMV over the planar transposed layout in CUDA C, for scripts/cuda_gemv_ab.py (experiment of
// run 14; it was not faster than gemv1_kernel, docs/kernels.md says by how much and why).
//
// y[n] = sum_k (x[k] / cs[k]) * (code[n, k] * S[n, g] + Z[n, g]),  one slice of BITS = 2 or 4, group 64.
// What Triton cannot express and this tries: the K splits of one column block form a thread-block
// cluster and add their partial rows through distributed shared memory (no global atomics, no
// counter) when the cluster holds every split; otherwise the clusters add with atomics.
//
// Compile-time parameters (-D):
//   BITS       2 or 4
//   TX, TK     threads across columns (4 columns each) and across the CTA's groups
//   GPC, CL    groups per CTA, CTAs per cluster along K
//   PIPE       groups in flight per thread in registers (default: all of its groups)
//   BULK       1: the CTA's tile goes to shared memory by bulk copies instead, with
//              GPC * (WG * BN * 4 + BN * 4 + 8) bytes of dynamic shared memory
//   X_FIRST    1: x and cs are loaded before the weight (else after it, in the x' phase)
//   READ_ONLY  1: only read words, S and Z and reduce over K (the read ceiling; wrong sums)
// Grid: (N / (4 TX), K / (64 GPC)); block: TX * TK threads.

#ifndef READ_ONLY
#define READ_ONLY 0
#endif
#ifndef BULK
#define BULK 0
#endif
#ifndef X_FIRST
#define X_FIRST 0
#endif

#define GROUP 64
#define WG (GROUP * BITS / 32)   // words per group and column
#define CPW (32 / BITS)          // codes per word
#define NP (CPW / 2)             // fp16 pairs per word: field p with field p + NP
#define MID (1 << (BITS - 1))
#define BN (4 * TX)
#define NT (TX * TK)
#define GPT (GPC / TK)           // groups per thread
#ifndef PIPE
#define PIPE GPT                 // groups in flight per thread
#endif
#define XITER ((GPC + NT / 32 - 1) / (NT / 32))  // groups of the x' phase per warp

typedef unsigned int u32;
typedef unsigned short u16;

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

__device__ __forceinline__ u16 f32_to_bf16(float f) {  // round to nearest even (no NaN inputs here)
    u32 u = __float_as_uint(f);
    return (u16)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float pair_total(u32 p) {  // lo + hi of an fp16 pair, in fp32
    u16 lo, hi;
    asm("mov.b32 {%0, %1}, %2;" : "=h"(lo), "=h"(hi) : "r"(p));
    return f16_to_f32(lo) + f16_to_f32(hi);
}

__device__ __forceinline__ u32 lop3_and_or(u32 a, u32 mask, u32 magic) {  // (a & mask) | magic
    u32 d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(mask), "r"(magic));
    return d;
}

__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 d;
    asm("sub.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

__device__ __forceinline__ int4 load_stream(const int* p) {  // 16 bytes, read once: skip L1
    int4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.s32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ uint2 load_stream8(const u16* p) {  // 4 fp16 of S or Z
    uint2 v;
    asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}

__device__ __forceinline__ u32 cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

__device__ __forceinline__ float load_cluster(const float* local, u32 rank) {  // rank's copy of *local
    u32 a = (u32)__cvta_generic_to_shared(local), r;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(r) : "memory");
    return v;
}

__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ bool barrier_done(u32 bar) {  // phase 0 of an mbarrier completed?
    u32 ok;
    asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0;\n\t"
                 "selp.u32 %0, 1, 0, p;\n\t}" : "=r"(ok) : "r"(bar) : "memory");
    return ok;
}

__device__ __forceinline__ void bulk_copy(void* dst, const void* src, u32 bytes, u32 bar) {  // global -> shared
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 :: "r"(smem_addr(dst)), "l"(src), "r"(bytes), "r"(bar) : "memory");
}

// bit position of pair p's low field inside a 16-bit half, after the word is shifted right by 8
// when the field would end above fp16's 10-bit mantissa
__device__ __forceinline__ constexpr int field_bit(int p) { return p * BITS + BITS > 10 ? p * BITS - 8 : p * BITS; }

extern "C" __global__ void __cluster_dims__(1, CL, 1) __launch_bounds__(NT)
gemv1_cuda(const int* __restrict__ words, const u16* __restrict__ S, const u16* __restrict__ Z,
           const u16* __restrict__ x, const float* __restrict__ cs, u16* __restrict__ y,
           float* __restrict__ ws, u32* __restrict__ counters, int N) {
    __shared__ __align__(16) u16 xp[GPC * WG * NP * 2];  // x'' pairs, (group, word row, pair, half)
    __shared__ float gstat[GPC][2];                       // |max| and sum of x' per group
    __shared__ float red[TK][BN];
    __shared__ float part[BN];
    __shared__ u32 last;

    const int tid = threadIdx.x, tx = tid % TX, tk = tid / TX;
    const int n0 = blockIdx.x * BN, n = n0 + 4 * tx;
    const int g0 = blockIdx.y * GPC;

#if X_FIRST && !READ_ONLY
    // x and cs for the x' phase are loaded before the weight, so that they do not queue behind it
    u16 xr[XITER][2];
    float cr[XITER][2];
#pragma unroll
    for (int it = 0; it < XITER; ++it) {
        const int gi = tid / 32 + it * (NT / 32), k = (g0 + gi) * GROUP + tid % 32;
#pragma unroll
        for (int h = 0; h < 2; ++h)
            if (gi < GPC) xr[it][h] = x[k + 32 * h], cr[it][h] = cs[k + 32 * h];
    }
#endif

#if BULK
    // the CTA's whole tile is requested at once by warp 0 with bulk copies (one per word row and
    // per S / Z row), one mbarrier per group: no registers hold loads in flight, and each group's
    // arithmetic starts as soon as its rows have landed
    extern __shared__ __align__(128) unsigned char dyn[];
    int* wsm = reinterpret_cast<int*>(dyn);                     // (GPC, WG, BN)
    u16* ssm = reinterpret_cast<u16*>(wsm + GPC * WG * BN);     // (GPC, BN)
    u16* zsm = ssm + GPC * BN;                                  // (GPC, BN)
    unsigned long long* bar = reinterpret_cast<unsigned long long*>(zsm + GPC * BN);
    if (tid == 0) {
        for (int g = 0; g < GPC; ++g) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(smem_addr(bar + g)));
        asm volatile("fence.mbarrier_init.release.cluster;\n\tfence.proxy.async.shared::cta;" ::: "memory");
        for (int g = 0; g < GPC; ++g)
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;"
                         :: "r"(smem_addr(bar + g)), "r"((u32)(WG * BN * 4 + 2 * BN * 2)) : "memory");
    }
    __syncthreads();  // the barriers exist before any thread waits on one
    if (tid < 32) {
        for (int c = tid; c < GPC * (WG + 2); c += 32) {
            const int g = c / (WG + 2), r = c % (WG + 2), gg = g0 + g;
            const u32 b = smem_addr(bar + g);
            if (r < WG) bulk_copy(wsm + (g * WG + r) * BN, words + (size_t)(gg * WG + r) * N + n0, BN * 4, b);
            else if (r == WG) bulk_copy(ssm + g * BN, S + (size_t)gg * N + n0, BN * 2, b);
            else bulk_copy(zsm + g * BN, Z + (size_t)gg * N + n0, BN * 2, b);
        }
    }
#else
    // a ring of PIPE groups in registers: the first PIPE groups' loads go out before anything waits,
    // and each computed group's slot is refilled with the group PIPE steps ahead
    int4 wv[PIPE][WG];
    uint2 sv[PIPE], zv[PIPE];
    auto load_group = [&](int t) {
        const int g = g0 + tk * GPT + t, slot = t % PIPE;
#pragma unroll
        for (int j = 0; j < WG; ++j) wv[slot][j] = load_stream(words + (size_t)(g * WG + j) * N + n);
        sv[slot] = load_stream8(S + (size_t)g * N + n);
        zv[slot] = load_stream8(Z + (size_t)g * N + n);
    };
#pragma unroll
    for (int t = 0; t < PIPE; ++t) load_group(t);
#endif
    // group t of this thread: its index in the CTA, its words (4 columns) and S, Z
#if BULK
#define GROUP_OF(t) ((t) * TK + tk)  // thread rows take groups in the order they land
#define FETCH(t)                                                                               \
    const int gi = GROUP_OF(t);                                                                \
    while (!barrier_done(smem_addr(bar + gi))) {}                                              \
    int4 wl[WG];                                                                               \
    _Pragma("unroll") for (int j = 0; j < WG; ++j)                                             \
        wl[j] = *reinterpret_cast<const int4*>(wsm + (gi * WG + j) * BN + 4 * tx);             \
    const uint2 sl = *reinterpret_cast<const uint2*>(ssm + gi * BN + 4 * tx);                  \
    const uint2 zl = *reinterpret_cast<const uint2*>(zsm + gi * BN + 4 * tx);
#define REFILL(t)
#else
#define GROUP_OF(t) (tk * GPT + (t))
#define FETCH(t)                                                                               \
    const int gi = GROUP_OF(t), slot = (t) % PIPE;                                             \
    int4 (&wl)[WG] = wv[slot];                                                                 \
    const uint2 sl = sv[slot], zl = zv[slot];
#define REFILL(t) if ((t) + PIPE < GPT) load_group((t) + PIPE);
#endif

    float res[4] = {0.f, 0.f, 0.f, 0.f};
#if READ_ONLY
#pragma unroll
    for (int t = 0; t < GPT; ++t) {
        FETCH(t)
        int b = gi;
#pragma unroll
        for (int j = 0; j < WG; ++j) b ^= wl[j].x ^ wl[j].y ^ wl[j].z ^ wl[j].w;
        res[0] += (float)b + __uint_as_float(sl.x ^ zl.x) + __uint_as_float(sl.y ^ zl.y);
        REFILL(t)
    }
#else
    // x' = x / cs for the CTA's groups, one warp per group: its |max| and sum, then the fp16 pairs
    // x' / |max| * 2^-bit laid out to meet the two halves of a word
#pragma unroll
    for (int it = 0; it < XITER; ++it) {
        const int gi = tid / 32 + it * (NT / 32);
        if (gi < GPC) {  // the same for the whole warp
            const int lane = tid % 32, kb = (g0 + gi) * GROUP;
            float v[2];
            float amax = 0.f, sum = 0.f;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
#if X_FIRST
                v[h] = bf16_to_f32(xr[it][h]) / cr[it][h];
#else
                v[h] = bf16_to_f32(x[kb + lane + 32 * h]) / cs[kb + lane + 32 * h];
#endif
                amax = fmaxf(amax, fabsf(v[h]));
                sum += v[h];
            }
#pragma unroll
            for (int o = 16; o; o >>= 1) {
                amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
                sum += __shfl_xor_sync(0xffffffffu, sum, o);
            }
            const float a = amax > 0.f ? amax : 1.f;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int pos = lane + 32 * h, i = pos / WG, j = pos % WG, p = i % NP;
                const float val = v[h] / a * __int_as_float((127 - field_bit(p)) << 23);
                xp[((gi * WG + j) * NP + p) * 2 + (i >= NP)] = f32_to_f16(val);
            }
            if (lane == 0) {
                gstat[gi][0] = a;
                gstat[gi][1] = sum;
            }
        }
    }
    __syncthreads();

#pragma unroll
    for (int t = 0; t < GPT; ++t) {
        FETCH(t)
        u32 acc[4] = {0u, 0u, 0u, 0u};
#pragma unroll
        for (int j = 0; j < WG; ++j) {
            const u32* xr = reinterpret_cast<const u32*>(xp) + (gi * WG + j) * NP;
            u32 xq[NP];
#pragma unroll
            for (int q = 0; q < NP; q += 4) {
                const uint4 v4 = *reinterpret_cast<const uint4*>(xr + q);
                xq[q] = v4.x; xq[q + 1] = v4.y; xq[q + 2] = v4.z; xq[q + 3] = v4.w;
            }
            const u32 wc[4] = {(u32)wl[j].x, (u32)wl[j].y, (u32)wl[j].z, (u32)wl[j].w};
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const u32 w = wc[c], w8 = w >> 8;
#pragma unroll
                for (int p = 0; p < NP; ++p) {
                    const int b = field_bit(p);
                    const u32 m = ((1u << BITS) - 1u) << b;
                    const u32 h = lop3_and_or(p * BITS + BITS > 10 ? w8 : w, m | (m << 16), 0x64006400u);
                    const u32 off = 0x6400u | (u32)(MID << b);  // fp16 1024 + mid * 2^b
                    acc[c] = hfma2(hsub2(h, off | (off << 16)), xq[p], acc[c]);
                }
            }
        }
        const float a = gstat[gi][0], sum = gstat[gi][1];
        const u16* sh = reinterpret_cast<const u16*>(&sl);
        const u16* zh = reinterpret_cast<const u16*>(&zl);
        float sf[4], zf[4];
#pragma unroll
        for (int c = 0; c < 4; ++c) sf[c] = f16_to_f32(sh[c]), zf[c] = f16_to_f32(zh[c]);
        REFILL(t)  // the slot's registers are free from here
#pragma unroll
        for (int c = 0; c < 4; ++c) res[c] += sf[c] * a * pair_total(acc[c]) + (sf[c] * MID + zf[c]) * sum;
    }
#endif

    // the CTA's partial row: its TK thread rows added in shared memory
#pragma unroll
    for (int c = 0; c < 4; ++c) red[tk][4 * tx + c] = res[c];
    __syncthreads();
    for (int i = tid; i < BN; i += NT) {
        float s = 0.f;
#pragma unroll
        for (int r = 0; r < TK; ++r) s += red[r][i];
        part[i] = s;
    }
    // the cluster's partial row: rank r adds slice r of every CTA's row through DSMEM
    cluster_sync();
    const u32 rank = cluster_rank();
    const int lo = rank * (BN / CL), hi = lo + BN / CL;
    float tot[(BN / CL + NT - 1) / NT];
#pragma unroll
    for (int q = 0; q < (BN / CL + NT - 1) / NT; ++q) {
        const int i = lo + tid + q * NT;
        float s = 0.f;
        if (i < hi) {
#pragma unroll
            for (int r = 0; r < CL; ++r) s += load_cluster(&part[i], r);
        }
        tot[q] = s;
    }
    cluster_sync();  // no CTA leaves while another still reads its shared memory

    if (gridDim.y == CL) {  // the cluster holds every K split: its row is y
#pragma unroll
        for (int q = 0; q < (BN / CL + NT - 1) / NT; ++q) {
            const int i = lo + tid + q * NT;
            if (i < hi) y[n0 + i] = f32_to_bf16(tot[q]);
        }
        return;
    }
    // several clusters per column block: atomics into the fp32 workspace, the last CTA writes y
#pragma unroll
    for (int q = 0; q < (BN / CL + NT - 1) / NT; ++q) {
        const int i = lo + tid + q * NT;
        if (i < hi) atomicAdd(ws + n0 + i, tot[q]);
    }
    __threadfence();
    __syncthreads();
    if (tid == 0) last = atomicAdd(counters + blockIdx.x, 1u) == gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int i = tid; i < BN; i += NT) {
        y[n0 + i] = f32_to_bf16(__ldcg(ws + n0 + i));
        ws[n0 + i] = 0.f;
    }
    if (tid == 0) counters[blockIdx.x] = 0u;
}
