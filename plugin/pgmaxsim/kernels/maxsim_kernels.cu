// MaxSim kernels for packed variable-length documents (compiled by CuPy/NVRTC).
//
// No headers: halves travel as raw 16-bit patterns in 32-bit registers and the
// tensor-core product is inline PTX (mma.sync m16n8k16, fp16 in, fp32 out),
// so NVRTC needs no CUDA include path.
//
// Roles in the tensor-core product C = A * B (m16n8k16):
//   A (16 x 16) = 16 document tokens x 16 dims      (rows: doc tokens)
//   B (16 x 8)  = 16 dims x 8 query tokens          (cols: query tokens)
//   C (16 x 8)  = similarities, fp32
// lane = 32 * warp-local; g = lane >> 2 (group), t = lane & 3.
// PTX fragment layout (m16n8k16, .f16): A regs {a0,a1,a2,a3} hold
//   a0 = (row g,   k 2t..2t+1), a1 = (row g+8, k 2t..2t+1),
//   a2 = (row g,   k 2t+8..+9), a3 = (row g+8, k 2t+8..+9);
// B regs {b0,b1}: b0 = (k 2t..2t+1, col g), b1 = (k 2t+8..+9, col g);
// C: c0,c1 = (row g, cols 2t, 2t+1), c2,c3 = (row g+8, cols 2t, 2t+1).
//
// Permuted k (a dot product does not care about the order of its terms): in a
// "chunk" of CW = 4*W dims, lane t reads the W contiguous dims [t*W, t*W+W)
// with one 16-byte load (W = 8 halves, or W = 16 int8). Step s (0 .. W/4-1)
// of the chunk uses logical k 2t..2t+1 := dims t*W + 4s + {0,1} and logical
// k 2t+8..+9 := dims t*W + 4s + {2,3}, the same map for A and for B.
//
// Document tokens past a document's end are never read: the row index is
// clamped to the last token, and a duplicate cannot change a max. An empty
// document scores -inf. Query rows past nq are zero in shared memory and are
// left out of the sum by index, never by multiplying a max by zero.

typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ void mma16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 2 int8 (bytes 0,1 or 2,3 of x, selected by sel) -> 2 exact fp16 in one u32.
// (x ^ 0x80) | 0x6400 is the half 1024 + (x + 128); subtracting 1152 gives x.
__device__ __forceinline__ u32 i8pair_to_h2(u32 x, u32 sel) {
    u32 r;
    asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(x ^ 0x80808080u), "r"(0x64646464u), "r"(sel));
    asm("sub.f16x2 %0, %0, %1;\n" : "+r"(r) : "r"(0x64806480u));
    return r;
}
#define SEL_LO 0x4140u
#define SEL_HI 0x4342u

__device__ __forceinline__ u32 comp(const uint4& v, int i) {
    return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}

// Largest divisor of n that is <= cap (chunk-group size, a compile-time constant).
__host__ __device__ constexpr int divisor_le(int n, int cap) {
    return cap >= n ? n : (n % cap == 0 ? cap : divisor_le(n, cap - 1));
}

// Stage query rows into shared memory in B-fragment order:
// qf[((nt * NCH + c) * WQ + w) * 32 + lane] = 16 bytes of query row nt*8 + (lane>>2),
// dims c*CW + (lane&3)*W + 8w .. +8 (zeros for rows >= nrows).
template <int D, int W>
__device__ __forceinline__ void stage_query(uint4* qf, const u16* __restrict__ q, int nrows, int nqt) {
    constexpr int CW = 4 * W, NCH = D / CW, WQ = W / 8;
    const int total = nqt * NCH * WQ * 32;
    for (int i = threadIdx.x; i < total; i += blockDim.x) {
        const int l = i & 31;
        int rest = i >> 5;
        const int w = rest % WQ; rest /= WQ;
        const int c = rest % NCH;
        const int nt = rest / NCH;
        const int row = nt * 8 + (l >> 2);
        const int dim0 = c * CW + (l & 3) * W + w * 8;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (row < nrows) v = *reinterpret_cast<const uint4*>(q + (i64)row * D + dim0);
        qf[i] = v;
    }
}

// A-fragment registers of step s from one 16-byte chunk per row half.
// fp16: uint4 = dims t*8 + 0..7; step s uses comps 2s (dims 4s+{0,1}) and 2s+1 ({2,3}).
// int8: uint4 = dims t*16 + 0..15; step s uses comp s = dims 4s..4s+3.
template <bool INT8>
__device__ __forceinline__ void a_regs(const uint4& lo_row, const uint4& hi_row, int s,
                                       u32& a0, u32& a1, u32& a2, u32& a3) {
    if (INT8) {
        const u32 x = comp(lo_row, s), y = comp(hi_row, s);
        a0 = i8pair_to_h2(x, SEL_LO); a2 = i8pair_to_h2(x, SEL_HI);
        a1 = i8pair_to_h2(y, SEL_LO); a3 = i8pair_to_h2(y, SEL_HI);
    } else {
        a0 = comp(lo_row, 2 * s); a2 = comp(lo_row, 2 * s + 1);
        a1 = comp(hi_row, 2 * s); a3 = comp(hi_row, 2 * s + 1);
    }
}

// ---------------------------------------------------------------------------
// One query (nq <= 8 * NQT tokens) against n items (documents). One block per
// item; its WARPS warps take token tiles of 16*MT tokens round-robin. Item i is
// tokens [start[i], start[i] + len[i]) of the packed array.
// Shared memory: query fragments (NQT*NCH*WQ*32 uint4) + WARPS*NQT*8 floats.
template <int D, int NQT, bool INT8, int MT, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, 2)
maxsim_single(const u16* __restrict__ q, int nq,
              const unsigned char* __restrict__ tokens, const float* __restrict__ scales,
              const i64* __restrict__ item_start, const int* __restrict__ item_len,
              int n_items, float* __restrict__ out) {
    constexpr int W = INT8 ? 16 : 8;          // dims per lane per chunk
    constexpr int CW = 4 * W;                 // dims per chunk
    constexpr int NCH = D / CW;
    constexpr int WQ = W / 8;                 // query uint4 per lane per chunk
    constexpr int ESZ = INT8 ? 1 : 2;         // bytes per token element
    constexpr int CG = divisor_le(NCH, INT8 ? 2 : 4);   // chunks loaded at once
    constexpr int STEPS = W / 4;
    static_assert(D % CW == 0, "D must be a multiple of the chunk width");

    extern __shared__ uint4 smem[];
    uint4* qf = smem;
    float* wmax = reinterpret_cast<float*>(smem + NQT * NCH * WQ * 32);

    const int item = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    stage_query<D, W>(qf, q, nq, NQT);
    __syncthreads();
    if (item >= n_items) return;

    const i64 start = item_start[item];
    const int len = item_len[item];
    float rmax[NQT][2];
#pragma unroll
    for (int j = 0; j < NQT; ++j) { rmax[j][0] = NEG_INF; rmax[j][1] = NEG_INF; }

    const int ntiles = (len + 16 * MT - 1) / (16 * MT);
    for (int tile = warp; tile < ntiles; tile += WARPS) {
        const unsigned char* rowp[MT][2];
        float sc[MT][2];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                int r = tile * 16 * MT + m * 16 + g + 8 * h;
                r = r < len ? r : len - 1;
                rowp[m][h] = tokens + (start + r) * (i64)(D * ESZ) + t * W * ESZ;
                sc[m][h] = INT8 ? __ldg(scales + start + r) : 1.0f;
            }
        }
        float acc[MT][NQT][4];
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int j = 0; j < NQT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[m][j][e] = 0.0f;

#pragma unroll 1
        for (int c0 = 0; c0 < NCH; c0 += CG) {
            uint4 a[MT][2][CG];
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int cc = 0; cc < CG; ++cc)
                        a[m][h][cc] = __ldg(reinterpret_cast<const uint4*>(rowp[m][h] + (c0 + cc) * CW * ESZ));
#pragma unroll
            for (int cc = 0; cc < CG; ++cc) {
#pragma unroll
                for (int s = 0; s < STEPS; ++s) {
                    u32 av[MT][4];
#pragma unroll
                    for (int m = 0; m < MT; ++m)
                        a_regs<INT8>(a[m][0][cc], a[m][1][cc], s, av[m][0], av[m][1], av[m][2], av[m][3]);
#pragma unroll
                    for (int j = 0; j < NQT; ++j) {
                        const uint4 qv = qf[((j * NCH + c0 + cc) * WQ + (s >> 1)) * 32 + lane];
                        const u32 b0 = comp(qv, (s & 1) * 2), b1 = comp(qv, (s & 1) * 2 + 1);
#pragma unroll
                        for (int m = 0; m < MT; ++m)
                            mma16816(acc[m][j], av[m][0], av[m][1], av[m][2], av[m][3], b0, b1);
                    }
                }
            }
        }
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int j = 0; j < NQT; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e)
                    rmax[j][e] = fmaxf(rmax[j][e], fmaxf(acc[m][j][e] * sc[m][0], acc[m][j][e + 2] * sc[m][1]));
    }
    // max over the 8 groups (doc rows) of the warp
#pragma unroll
    for (int j = 0; j < NQT; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            float v = rmax[j][e];
            v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
            v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 8));
            v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 16));
            if (g == 0) wmax[warp * NQT * 8 + j * 8 + 2 * t + e] = v;
        }
    __syncthreads();
    if (warp == 0) {
        float sum = 0.0f;
        for (int col = lane; col < nq; col += 32) {
            float v = NEG_INF;
#pragma unroll
            for (int w = 0; w < WARPS; ++w) v = fmaxf(v, wmax[w * NQT * 8 + col]);
            sum += v;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (lane == 0) out[item] = len > 0 ? sum : NEG_INF;
    }
}

// ---------------------------------------------------------------------------
// A batch of queries, their nrows tokens stacked (query b = rows
// [qoff[b], qoff[b+1])), against n items. One block per item; warps take
// token tiles of 16*MT tokens round-robin, keep the tile's A fragments in
// registers (converted to fp16 once for int8) and sweep every query n-tile
// with B from shared memory. Per-warp running maxima live in shared memory
// (each warp writes only its own row), combined at the end.
// out[b * n_items + item]. Shared: NQT*NCH*WQ*32 uint4 + WARPS*NQT*8 floats.
template <int D, bool INT8, int MT, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, 1)
maxsim_batch(const u16* __restrict__ q, int nrows, const int* __restrict__ qoff, int nqueries,
             const unsigned char* __restrict__ tokens, const float* __restrict__ scales,
             const i64* __restrict__ item_start, const int* __restrict__ item_len,
             int n_items, float* __restrict__ out) {
    constexpr int W = INT8 ? 16 : 8;
    constexpr int CW = 4 * W;
    constexpr int NCH = D / CW;
    constexpr int WQ = W / 8;
    constexpr int ESZ = INT8 ? 1 : 2;
    constexpr int HCH = D / 32;               // fp16 chunks (8 halves per lane) after conversion
    static_assert(D % CW == 0, "D must be a multiple of the chunk width");

    extern __shared__ uint4 smem[];
    const int nqt = (nrows + 7) >> 3;
    uint4* qf = smem;
    float* rowmax = reinterpret_cast<float*>(smem + nqt * HCH * 32);

    const int item = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    stage_query<D, W>(qf, q, nrows, nqt);   // qf[(j*HCH + c')*32 + lane]: NCH*WQ == HCH
    for (int i = threadIdx.x; i < WARPS * nqt * 8; i += blockDim.x) rowmax[i] = NEG_INF;
    __syncthreads();
    if (item >= n_items) return;
    const i64 start = item_start[item];
    const int len = item_len[item];
    float* mymax = rowmax + warp * nqt * 8;

    const int ntiles = (len + 16 * MT - 1) / (16 * MT);
    for (int tile = warp; tile < ntiles; tile += WARPS) {
        // A fragments of the tile in fp16 form: ah[m][h][c] = dims c*32 + t*8 .. +8 of row (g + 8h).
        uint4 ah[MT][2][HCH];
        float sc[MT][2];
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                int r = tile * 16 * MT + m * 16 + g + 8 * h;
                r = r < len ? r : len - 1;
                sc[m][h] = INT8 ? __ldg(scales + start + r) : 1.0f;
                const unsigned char* rp = tokens + (start + r) * (i64)(D * ESZ);
                if (INT8) {
                    // int8 chunk c (64 dims): lane t holds dims c*64 + t*16 .. +16. As fp16,
                    // sub-chunk 2c+e holds dims c*64 + t*16 + 8e .. +8: exactly what
                    // stage_query<D, 16> put at qf[(j*HCH + 2c+e)*32 + lane].
#pragma unroll
                    for (int c = 0; c < NCH; ++c) {
                        const uint4 v = __ldg(reinterpret_cast<const uint4*>(rp + c * 64 + t * 16));
                        ah[m][h][2 * c] = make_uint4(i8pair_to_h2(v.x, SEL_LO), i8pair_to_h2(v.x, SEL_HI),
                                                     i8pair_to_h2(v.y, SEL_LO), i8pair_to_h2(v.y, SEL_HI));
                        ah[m][h][2 * c + 1] = make_uint4(i8pair_to_h2(v.z, SEL_LO), i8pair_to_h2(v.z, SEL_HI),
                                                         i8pair_to_h2(v.w, SEL_LO), i8pair_to_h2(v.w, SEL_HI));
                    }
                } else {
#pragma unroll
                    for (int c = 0; c < HCH; ++c)
                        ah[m][h][c] = __ldg(reinterpret_cast<const uint4*>(rp + (c * 32 + t * 8) * 2));
                }
            }
#pragma unroll 1
        for (int j = 0; j < nqt; ++j) {
            float acc[MT][4];
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[m][e] = 0.0f;
#pragma unroll
            for (int c = 0; c < HCH; ++c) {
                const uint4 qv = qf[(j * HCH + c) * 32 + lane];
#pragma unroll
                for (int s = 0; s < 2; ++s) {
                    const u32 b0 = comp(qv, 2 * s), b1 = comp(qv, 2 * s + 1);
#pragma unroll
                    for (int m = 0; m < MT; ++m)
                        mma16816(acc[m], comp(ah[m][0][c], 2 * s), comp(ah[m][1][c], 2 * s),
                                 comp(ah[m][0][c], 2 * s + 1), comp(ah[m][1][c], 2 * s + 1), b0, b1);
                }
            }
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float v = NEG_INF;
#pragma unroll
                for (int m = 0; m < MT; ++m) v = fmaxf(v, fmaxf(acc[m][e] * sc[m][0], acc[m][e + 2] * sc[m][1]));
                v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
                v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 8));
                v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 16));
                if (g == 0) {
                    const int col = j * 8 + 2 * t + e;
                    mymax[col] = fmaxf(mymax[col], v);
                }
            }
        }
    }
    __syncthreads();
    // combine warps: rowmax[0][r] = max_w rowmax[w][r]
    for (int r = threadIdx.x; r < nrows; r += blockDim.x) {
        float v = rowmax[r];
        for (int w = 1; w < WARPS; ++w) v = fmaxf(v, rowmax[w * nqt * 8 + r]);
        rowmax[r] = v;
    }
    __syncthreads();
    for (int b = threadIdx.x; b < nqueries; b += blockDim.x) {
        float sum = 0.0f;
        for (int r = qoff[b]; r < qoff[b + 1]; ++r) sum += rowmax[r];
        out[(i64)b * n_items + item] = len > 0 ? sum : NEG_INF;
    }
}
