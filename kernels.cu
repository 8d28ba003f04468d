// kernels.cu: CUDA kernels for the engine's tensor ops. Read each one next to the CPU loop it
// replaces (engine.cpp, Part 2). The same file runs on a GPU (built by nvcc) and on any CPU
// (built by g++ or clang++, with cuda_emu.h standing in for CUDA); the tests use the CPU build.
//
//   nvcc -arch=sm_90 -c kernels.cu -o kernels.o          for an NVIDIA GPU (sm_90: H100)
//   g++ -std=c++17 -O2 -x c++ -c kernels.cu -o kernels.o for the CPU, through cuda_emu.h
//
// Contents
//   0  Checking every CUDA call; launching
//   1  Elementwise ops, forward and backward: add (with a broadcast bias) and the bias gradient,
//      mul, relu, gelu, sigmoid, tanh
//   2  Matrix multiplication: v1 one thread per output, v2 shared-memory tiles, v3 register
//      blocking; the backward products dX = dY·Wᵀ and dW = Xᵀ·dY
//   3  Reductions: a tree in shared memory, and warp shuffles
//   4  Softmax + cross-entropy, fused, forward and backward
//   5  Layer norm, forward and backward
//   6  AdamW: the whole update in one kernel
//   7  The global gradient norm (a two-stage reduction) and clipping by it
//   8  Device memory for the engine's tensors
//   9  Timing kernels with CUDA events
//  10  Embeddings: the lookup and its scatter-add backward (atomics), token + position fused
//  11  Transpose through shared memory (the tied head's wteᵀ)
//  12  Causal attention, naive: scores, softmax and P·V as separate kernels, P in memory
//  13  Causal attention, tiled (FlashAttention): online softmax, the log-sum-exp for the backward
//  (The rest of a GPT step is above: GELU §1.4, the residual add §1.1, layer norm §5,
//  softmax-CE §4, AdamW §6 (once per weight-decay group), the gradient norm §7.)
//
// Each kernel states which CPU loop it replaces, how its threads map onto the data, and what it
// costs: the bytes it moves to and from global memory (floats are 4 bytes), and its FLOPs (a
// multiply-add counts as 2). The ratio of FLOPs to bytes tells you which limit a kernel runs into.
// An H100 (SXM) moves about 3.35 TB/s and does about 67 TFLOP/s in FP32 without tensor cores
// (NVIDIA's figures), so any kernel below about 20 FLOPs per byte waits on memory. Every
// elementwise op here is far below that; only the tiled matmuls get above it.
//
// How a thread finds its work: a launch runs a grid of blocks, and each block runs up to 1024
// threads. Each thread reads blockIdx (its block's position in the grid), threadIdx (its own
// position in the block) and blockDim/gridDim (the sizes). 32 consecutive threads of a block form
// a warp, which the hardware schedules as one; a warp's loads are fast ("coalesced") when its 32
// threads read consecutive addresses.
//
// Conventions. Every pointer a wrapper takes is device memory (from cudaMalloc): float, row-major,
// contiguous. Forward kernels write their outputs. Backward kernels add into gradients (+=), as
// the CPU loops do, so a tensor that is used twice collects both terms. Sizes are int, as in the
// CPU loops, so products such as M·K must stay below 2³¹. Wrappers check every CUDA call and do
// not wait for the GPU, except the ones that return a number (their cudaMemcpy waits).
// Kernels are static: only the wrappers in this file launch them.

#ifdef __CUDACC__
#include <cuda_runtime.h>
#define LAUNCH(kernel, grid, block) kernel<<<grid, block>>>
#else
#include "cuda_emu.h"   // defines LAUNCH, and everything CUDA that the kernels use, for the CPU
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

// =============================================================================================
// 0. Checking every CUDA call; launching
//
// Every CUDA runtime call returns a cudaError_t. A launch returns nothing; its errors (an invalid
// configuration, say) are picked up by the cudaGetLastError() that follows it. An error inside a
// running kernel (an out-of-bounds address) surfaces at the next call that waits for the GPU.
// (Under cuda_emu, launch errors and kernel deadlocks are exceptions thrown by the launch itself.)
// LAUNCH(kernel, grid, block)(args...) is kernel<<<grid, block>>>(args...): the macro lets the
// same line compile with g++, where <<< >>> does not exist.
// =============================================================================================

void cuda_check(cudaError_t status, const char* call, const char* file, int line) {
    if (status != cudaSuccess)
        throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + call +
                                 " failed: " + cudaGetErrorString(status));
}
#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)

// A wrapper's sizes or step out of range: std::invalid_argument, as the engine's ops throw.
static void check_arguments(bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(std::string("kernels.cu: ") + what);
}

// Blocks of `per_block` threads needed to cover n items: ⌈n / per_block⌉.
static unsigned blocks_for(int n, int per_block) {
    return unsigned((static_cast<long long>(n) + per_block - 1) / per_block);
}

// Device memory for a wrapper's intermediate results, freed when the wrapper returns (also when
// a CUDA_CHECK throws). A real program would allocate it once and reuse it.
struct DeviceScratch {
    float* p = nullptr;
    explicit DeviceScratch(int n) { CUDA_CHECK(cudaMalloc(&p, sizeof(float) * std::size_t(n))); }
    ~DeviceScratch() { cudaFree(p); }   // a destructor must not throw, so this one is unchecked
    DeviceScratch(const DeviceScratch&) = delete;
    DeviceScratch& operator=(const DeviceScratch&) = delete;
};

// =============================================================================================
// 1. Elementwise ops
//
// One thread per element: thread i = blockIdx.x·blockDim.x + threadIdx.x handles element i, and
// the last block's threads past n do nothing. Neighbouring threads touch neighbouring addresses,
// so every load and store is coalesced. Each op does a few FLOPs per 8 to 28 bytes it moves, so
// these kernels are all limited by memory bandwidth. (Fusing them into their neighbours, as §4 to
// §6 do, is what saves time.)
// =============================================================================================

constexpr int elementwise_block = 256;   // threads per block: 8 warps

// 1.1 add: Y = A + B, where B has A's shape (nb = n) or is one row of nb values repeated over
// every row of A (a bias: A [n/nb, nb] + B [nb]). Replaces elementwise() with
// for_each_broadcast() (engine.cpp §2.2) for `+`. i % nb is the broadcast: B's stride along the
// rows is 0. Cost: reads 2n floats (a broadcast B is much smaller and stays in cache), writes n:
// 12n bytes for n FLOPs.
static __global__ void add_forward_kernel(const float* A, const float* B, float* Y, int n, int nb) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) Y[i] = A[i] + B[i % nb];
}

// 1.2 add backward: ∂Y/∂A = ∂Y/∂B = 1, so dA += dY, and dB += dY when B has A's shape. Replaces
// the backward closure of elementwise() for `+`. Cost: reads 2n, writes n: 12n bytes, n FLOPs.
static __global__ void accumulate_kernel(const float* dY, float* dA, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dA[i] += dY[i];
}

// The bias gradient: a broadcast B was used by every row, so its gradient sums dY over the rows,
// db[j] += Σ_i dY[i][j]. This is a column reduction. On the CPU it is the `gb[ib] += g[i]` of
// elementwise() where many i share one ib. It is also the bias gradient of a linear layer
// Y = X·W + b.
// Mapping: a block of 32 × 8 threads owns a strip of 32 columns. threadIdx.x picks the column, so
// a warp reads 32 neighbouring floats of one row (coalesced). threadIdx.y picks one of 8 row lanes:
// lane y sums rows y, y + 8, y + 16, ... Then the 8 partial sums of each column meet in shared
// memory. Grid: ⌈N/32⌉ blocks.
// Cost: reads M·N floats, reads and writes N: about 4MN bytes for M·N FLOPs.
constexpr int strip_width = 32, strip_rows = 8;
static __global__ void bias_grad_kernel(const float* dY, float* db, int M, int N) {
    __shared__ float partial[strip_rows][strip_width];
    const int x = threadIdx.x, y = threadIdx.y, j = blockIdx.x * strip_width + x;
    float s = 0;
    if (j < N)
        for (int i = y; i < M; i += strip_rows) s += dY[i * N + j];
    partial[y][x] = s;
    __syncthreads();   // every row lane has written its partial sum
    if (y == 0 && j < N) {
        for (int k = 1; k < strip_rows; ++k) s += partial[k][x];
        db[j] += s;
    }
}

// 1.3 mul: Y = A·B elementwise (same shapes). Backward: ∂Y/∂A = B, ∂Y/∂B = A, so
// dA += dY·B and dB += dY·A. Replaces elementwise() for `*`.
// Cost forward: 12n bytes, n FLOPs. Backward: reads dY, A, B, dA, dB and writes dA, dB: 28n bytes
// for 4n FLOPs.
static __global__ void mul_forward_kernel(const float* A, const float* B, float* Y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) Y[i] = A[i] * B[i];
}
static __global__ void mul_backward_kernel(const float* A, const float* B, const float* dY,
                                           float* dA, float* dB, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    dA[i] += dY[i] * B[i];
    dB[i] += dY[i] * A[i];
}

// 1.4 activations: Y = f(X), backward dX += dY·f'(X). Replaces unary() (engine.cpp §2.3) for
// relu, gelu, sigmoid and tanh. Each activation is a struct holding f and f' side by side. As in
// engine.cpp, f' is written with the input x and the output y = f(x), whichever is handier.
// Cost forward: reads n, writes n: 8n bytes. Backward: reads X, Y, dY, dX, writes dX: 20n bytes.
// FLOPs: 1 (relu) to about 15 (gelu, counting tanh as one) per element.
struct Relu {   // max(0, x); f' = 1 where x > 0, else 0 (written so that a NaN stays NaN)
    static __device__ float f(float x) { return x < 0 ? 0.0f : x; }
    static __device__ float df(float x, float) { return x > 0 ? 1.0f : 0.0f; }
};
// GELU: ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³); f' = ½(1 + tanh u) + ½x(1 − tanh²u)·du/dx
struct Gelu {
    static __device__ float u(float x) { return 0.7978845608f * (x + 0.044715f * x * x * x); }
    static __device__ float f(float x) { return 0.5f * x * (1 + tanhf(u(x))); }
    static __device__ float df(float x, float) {
        const float t = tanhf(u(x));
        return 0.5f * (1 + t) +
               0.5f * x * (1 - t * t) * 0.7978845608f * (1 + 3 * 0.044715f * x * x);
    }
};
struct GeluExact {   // x·Φ(x) = ½x(1 + erf(x/√2)); f' = Φ(x) + x·φ(x), φ(x) = e^(−x²/2)/√(2π)
    static __device__ float f(float x) { return 0.5f * x * (1 + erff(x * 0.7071067812f)); }
    static __device__ float df(float x, float) {
        return 0.5f * (1 + erff(x * 0.7071067812f)) + x * 0.3989422804f * expf(-0.5f * x * x);
    }
};
struct Sigmoid {   // 1/(1 + e⁻ˣ), with no overflow for large |x|; f' = y(1 − y)
    static __device__ float f(float x) {
        return x >= 0 ? 1 / (1 + expf(-x)) : expf(x) / (1 + expf(x));
    }
    static __device__ float df(float, float y) { return y * (1 - y); }
};
struct Tanh {   // tanh x; f' = 1 − y²
    static __device__ float f(float x) { return tanhf(x); }
    static __device__ float df(float, float y) { return 1 - y * y; }
};

template <class Act>
static __global__ void activation_forward_kernel(const float* X, float* Y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) Y[i] = Act::f(X[i]);
}
template <class Act>
static __global__ void activation_backward_kernel(const float* X, const float* Y, const float* dY,
                                                  float* dX, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dX[i] += dY[i] * Act::df(X[i], Y[i]);
}

// Wrappers. Grid: ⌈n/256⌉ blocks of 256 threads (the bias gradient: ⌈N/32⌉ blocks of 32 × 8).
void cuda_add_forward(const float* A, const float* B, float* Y, int n, int nb) {
    check_arguments(n >= 0 && nb > 0 && n % nb == 0, "add: B's size nb must divide A's size n");
    if (n == 0) return;
    LAUNCH(add_forward_kernel, blocks_for(n, elementwise_block), elementwise_block)(A, B, Y, n, nb);
    CUDA_CHECK(cudaGetLastError());
}

// db[N] += Σ_rows dY[M, N]
void cuda_bias_grad(const float* dY, float* db, int M, int N) {
    check_arguments(M >= 0 && N >= 0, "bias_grad: sizes must be >= 0");
    if (N == 0) return;
    LAUNCH(bias_grad_kernel, blocks_for(N, strip_width), dim3(strip_width, strip_rows))
    (dY, db, M, N);
    CUDA_CHECK(cudaGetLastError());
}

// dA += dY; dB += dY (nb = n) or dB[j] += Σ_rows dY[·][j] (nb < n: B was a broadcast row).
void cuda_add_backward(const float* dY, float* dA, float* dB, int n, int nb) {
    check_arguments(n >= 0 && nb > 0 && n % nb == 0, "add: B's size nb must divide A's size n");
    if (n == 0) return;
    LAUNCH(accumulate_kernel, blocks_for(n, elementwise_block), elementwise_block)(dY, dA, n);
    CUDA_CHECK(cudaGetLastError());
    if (nb == n) {
        LAUNCH(accumulate_kernel, blocks_for(n, elementwise_block), elementwise_block)(dY, dB, n);
        CUDA_CHECK(cudaGetLastError());
    } else {
        cuda_bias_grad(dY, dB, n / nb, nb);
    }
}

void cuda_mul_forward(const float* A, const float* B, float* Y, int n) {
    if (n <= 0) return;
    LAUNCH(mul_forward_kernel, blocks_for(n, elementwise_block), elementwise_block)(A, B, Y, n);
    CUDA_CHECK(cudaGetLastError());
}
void cuda_mul_backward(const float* A, const float* B, const float* dY, float* dA, float* dB,
                       int n) {
    if (n <= 0) return;
    LAUNCH(mul_backward_kernel, blocks_for(n, elementwise_block), elementwise_block)
    (A, B, dY, dA, dB, n);
    CUDA_CHECK(cudaGetLastError());
}

template <class Act>
static void activation_forward(const float* X, float* Y, int n) {
    if (n <= 0) return;
    LAUNCH(activation_forward_kernel<Act>, blocks_for(n, elementwise_block), elementwise_block)
    (X, Y, n);
    CUDA_CHECK(cudaGetLastError());
}
template <class Act>
static void activation_backward(const float* X, const float* Y, const float* dY, float* dX, int n) {
    if (n <= 0) return;
    LAUNCH(activation_backward_kernel<Act>, blocks_for(n, elementwise_block), elementwise_block)
    (X, Y, dY, dX, n);
    CUDA_CHECK(cudaGetLastError());
}
void cuda_relu_forward(const float* X, float* Y, int n) { activation_forward<Relu>(X, Y, n); }
void cuda_gelu_forward(const float* X, float* Y, int n) { activation_forward<Gelu>(X, Y, n); }
void cuda_gelu_exact_forward(const float* X, float* Y, int n) {
    activation_forward<GeluExact>(X, Y, n);
}
void cuda_sigmoid_forward(const float* X, float* Y, int n) { activation_forward<Sigmoid>(X, Y, n); }
void cuda_tanh_forward(const float* X, float* Y, int n) { activation_forward<Tanh>(X, Y, n); }
void cuda_relu_backward(const float* X, const float* Y, const float* dY, float* dX, int n) {
    activation_backward<Relu>(X, Y, dY, dX, n);
}
void cuda_gelu_backward(const float* X, const float* Y, const float* dY, float* dX, int n) {
    activation_backward<Gelu>(X, Y, dY, dX, n);
}
void cuda_gelu_exact_backward(const float* X, const float* Y, const float* dY, float* dX, int n) {
    activation_backward<GeluExact>(X, Y, dY, dX, n);
}
void cuda_sigmoid_backward(const float* X, const float* Y, const float* dY, float* dX, int n) {
    activation_backward<Sigmoid>(X, Y, dY, dX, n);
}
void cuda_tanh_backward(const float* X, const float* Y, const float* dY, float* dX, int n) {
    activation_backward<Tanh>(X, Y, dY, dX, n);
}

// =============================================================================================
// 2. Matrix multiplication: C[M, N] = A[M, K]·B[K, N], C[i][j] = Σ_k A[i][k]·B[k][j]
//
// All three versions replace matmul_blocked (engine.cpp §2.4), run into a zeroed C; they write C
// instead of adding to it. Every version does 2·M·K·N FLOPs and must read A and B and write C at
// least once: 4(MK + KN + MN) bytes. What differs is how often each value is fetched again: a
// version's speed depends on how many FLOPs it gets from each fetch from global memory (the
// slowest) and from shared memory (fast, but not free).
// =============================================================================================

constexpr int tile = 16;   // v1, v2 and the backward products: blocks of 16 × 16 threads

// v1: one thread per output. Thread (tx, ty) of block (bx, by) computes C[row][col], where
// row = by·16 + ty and col = bx·16 + tx. Grid: ⌈N/16⌉ × ⌈M/16⌉ blocks of 16 × 16 threads.
// threadIdx.x runs along a row of C. So at each k, 16 neighbouring threads read 16 neighbouring
// B[k][col] (coalesced) and the same A[row][k] (one value, broadcast).
// Cost: each thread reads a row of A and a column of B: 2MNK loads in all, 8MNK bytes requested
// for 2MNK FLOPs. That is ¼ FLOP per byte, unless the caches catch the repeats.
static __global__ void matmul_v1_kernel(const float* A, const float* B, float* C, int M, int K,
                                        int N) {
    const int row = blockIdx.y * blockDim.y + threadIdx.y,
              col = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= M || col >= N) return;
    float s = 0;
    for (int k = 0; k < K; ++k) s += A[row * K + k] * B[k * N + col];
    C[row * N + col] = s;
}

// v2: shared-memory tiles. The block computes a 16 × 16 tile of C, the same mapping as v1. It
// walks along K in steps of 16. At each step all 256 threads load together a 16 × 16 tile of A and
// one of B into shared memory, one value per thread. Then every thread reads the 16 values it
// needs from there. A value that v1 fetched from global memory 16 times is now fetched once per
// block. Out-of-range entries load as 0, which adds nothing. Threads outside C still load and
// reach both barriers: a __syncthreads() must be reached by every thread of the block.
// Grid: ⌈N/16⌉ × ⌈M/16⌉ blocks of 16 × 16 threads.
// Cost: global loads 2MNK/16 floats (16 times fewer than v1). Shared loads: 2 per multiply-add.
static __global__ void matmul_v2_kernel(const float* A, const float* B, float* C, int M, int K,
                                        int N) {
    __shared__ float As[tile][tile], Bs[tile][tile];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * tile + ty, col = blockIdx.x * tile + tx;
    float s = 0;
    for (int k0 = 0; k0 < K; k0 += tile) {
        As[ty][tx] = row < M && k0 + tx < K ? A[row * K + k0 + tx] : 0.0f;
        Bs[ty][tx] = k0 + ty < K && col < N ? B[(k0 + ty) * N + col] : 0.0f;
        __syncthreads();   // both tiles are complete
        for (int k = 0; k < tile; ++k) s += As[ty][k] * Bs[k][tx];
        __syncthreads();   // everyone is done with the tiles before the next step overwrites them
    }
    if (row < M && col < N) C[row * N + col] = s;
}

// v3: register blocking. The block computes a 64 × 64 tile of C with 16 × 16 threads, so each
// thread computes 4 × 4 outputs. Thread (tx, ty) owns rows ty + 16m and columns tx + 16n
// (m, n = 0..3) of the tile, interleaved so that neighbouring threads still touch neighbouring
// columns. At each step of 8 along K, the block stages a 64 × 8 slice of A and an 8 × 64 slice of B
// in shared memory. Each thread then loads 4 values of A and 4 of B into registers and does
// 4 × 4 = 16 multiply-adds with them (an outer product).
// The A slice is stored transposed (As[k][i]), so a thread's 4 values of A for one k lie in one
// row. Its rows are padded to 68 floats: the 8 threads that store the 8 k's of one row of A then
// hit 8 different banks, not the same one (shared memory serves 32 banks of 4 bytes at a time).
// Grid: ⌈N/64⌉ × ⌈M/64⌉ blocks of 16 × 16 threads.
// Cost: global loads MNK(1/64 + 1/64) = MNK/32 floats, 4 times fewer than v2. Shared loads:
// 8 per 16 multiply-adds, i.e. ½ per multiply-add instead of 2.
constexpr int BM = 64, BN = 64, BK = 8, TM = 4, TN = 4;   // block tile, K step, outputs per thread
static __global__ void matmul_v3_kernel(const float* A, const float* B, float* C, int M, int K,
                                        int N) {
    __shared__ float As[BK][BM + 4], Bs[BK][BN];
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    float acc[TM][TN] = {};
    for (int k0 = 0; k0 < K; k0 += BK) {
        for (int e = tid; e < BM * BK; e += 256) {   // 512 values of A, 2 per thread
            const int i = e / BK, k = e % BK;        // 8 neighbouring threads read one row's 8 k's
            As[k][i] = row0 + i < M && k0 + k < K ? A[(row0 + i) * K + k0 + k] : 0.0f;
        }
        for (int e = tid; e < BK * BN; e += 256) {   // 512 values of B: 64 neighbours per row
            const int k = e / BN, j = e % BN;
            Bs[k][j] = k0 + k < K && col0 + j < N ? B[(k0 + k) * N + col0 + j] : 0.0f;
        }
        __syncthreads();   // the slices are complete
        for (int k = 0; k < BK; ++k) {
            float a[TM], b[TN];
            for (int m = 0; m < TM; ++m) a[m] = As[k][ty + 16 * m];
            for (int n = 0; n < TN; ++n) b[n] = Bs[k][tx + 16 * n];
            for (int m = 0; m < TM; ++m)
                for (int n = 0; n < TN; ++n) acc[m][n] += a[m] * b[n];
        }
        __syncthreads();   // done with the slices before the next step overwrites them
    }
    for (int m = 0; m < TM; ++m)
        for (int n = 0; n < TN; ++n) {
            const int row = row0 + ty + 16 * m, col = col0 + tx + 16 * n;
            if (row < M && col < N) C[row * N + col] = acc[m][n];
        }
}

// Backward of Y = X·W (X [M, K], W [K, N], Y [M, N]): the two products of engine.cpp §2.4,
// tiled like v2.
//
// dX[M, K] += dY[M, N]·Wᵀ, i.e. dX[i][k] += Σ_j dY[i][j]·W[k][j]. Replaces matmul_blocked with
// a transposed W (matmul's backward). Both operands are read along rows (j is the contiguous
// index of both), so both tile loads are coalesced. Thread (tx, ty) computes
// dX[by·16 + ty][bx·16 + tx]. In the inner loop, the threads of a row read Ws[tx][j], 16 different
// rows of the tile at once. Padding each row to 17 floats
// puts those 16 reads in 16 different banks. Unpadded, they would fall on only 2 banks (a stride of
// 16 floats), an 8-way bank conflict.
// Grid: ⌈K/16⌉ × ⌈M/16⌉ blocks of 16 × 16. Cost: 2MNK FLOPs, global loads 2MNK/16 floats.
static __global__ void matmul_backward_dx_kernel(const float* dY, const float* W, float* dX, int M,
                                                 int K, int N) {
    __shared__ float Gs[tile][tile], Ws[tile][tile + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int i = blockIdx.y * tile + ty, k = blockIdx.x * tile + tx,
              w_row = blockIdx.x * tile + ty;
    float s = 0;
    for (int j0 = 0; j0 < N; j0 += tile) {
        Gs[ty][tx] = i < M && j0 + tx < N ? dY[i * N + j0 + tx] : 0.0f;
        Ws[ty][tx] = w_row < K && j0 + tx < N ? W[w_row * N + j0 + tx] : 0.0f;
        __syncthreads();
        for (int j = 0; j < tile; ++j) s += Gs[ty][j] * Ws[tx][j];
        __syncthreads();
    }
    if (i < M && k < K) dX[i * K + k] += s;
}

// dW[K, N] += Xᵀ·dY, i.e. dW[k][j] += Σ_i X[i][k]·dY[i][j]: the batch axis M is summed away.
// Replaces matmul_blocked with a transposed X (matmul's backward). The block walks down the rows
// i of both X and dY. Thread (tx, ty) computes dW[by·16 + ty][bx·16 + tx]. Xs[i][ty] is one value
// per row of threads (a broadcast), and Gs[i][tx] is 16 neighbours, so neither needs padding.
// Grid: ⌈N/16⌉ × ⌈K/16⌉ blocks of 16 × 16. Cost: 2MNK FLOPs, global loads 2MNK/16 floats.
static __global__ void matmul_backward_dw_kernel(const float* X, const float* dY, float* dW, int M,
                                                 int K, int N) {
    __shared__ float Xs[tile][tile], Gs[tile][tile];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int k = blockIdx.y * tile + ty, j = blockIdx.x * tile + tx,
              x_col = blockIdx.y * tile + tx;
    float s = 0;
    for (int i0 = 0; i0 < M; i0 += tile) {
        Xs[ty][tx] = i0 + ty < M && x_col < K ? X[(i0 + ty) * K + x_col] : 0.0f;
        Gs[ty][tx] = i0 + ty < M && j < N ? dY[(i0 + ty) * N + j] : 0.0f;
        __syncthreads();
        for (int i = 0; i < tile; ++i) s += Xs[i][ty] * Gs[i][tx];
        __syncthreads();
    }
    if (k < K && j < N) dW[k * N + j] += s;
}

// Wrappers. v1, v2 and the backward products use 16 × 16 threads per block; v3 uses 16 × 16
// threads per 64 × 64 tile.
void cuda_matmul_v1(const float* A, const float* B, float* C, int M, int K, int N) {
    check_arguments(M >= 0 && K >= 0 && N >= 0, "matmul: sizes must be >= 0");
    if (M == 0 || N == 0) return;
    LAUNCH(matmul_v1_kernel, dim3(blocks_for(N, tile), blocks_for(M, tile)), dim3(tile, tile))
    (A, B, C, M, K, N);
    CUDA_CHECK(cudaGetLastError());
}
void cuda_matmul_v2(const float* A, const float* B, float* C, int M, int K, int N) {
    check_arguments(M >= 0 && K >= 0 && N >= 0, "matmul: sizes must be >= 0");
    if (M == 0 || N == 0) return;
    LAUNCH(matmul_v2_kernel, dim3(blocks_for(N, tile), blocks_for(M, tile)), dim3(tile, tile))
    (A, B, C, M, K, N);
    CUDA_CHECK(cudaGetLastError());
}
void cuda_matmul_v3(const float* A, const float* B, float* C, int M, int K, int N) {
    check_arguments(M >= 0 && K >= 0 && N >= 0, "matmul: sizes must be >= 0");
    if (M == 0 || N == 0) return;
    LAUNCH(matmul_v3_kernel, dim3(blocks_for(N, BN), blocks_for(M, BM)), dim3(16, 16))
    (A, B, C, M, K, N);
    CUDA_CHECK(cudaGetLastError());
}
// dX[M, K] += dY[M, N]·Wᵀ, with W [K, N]
void cuda_matmul_backward_dx(const float* dY, const float* W, float* dX, int M, int K, int N) {
    check_arguments(M >= 0 && K >= 0 && N >= 0, "matmul backward: sizes must be >= 0");
    if (M == 0 || K == 0) return;
    LAUNCH(matmul_backward_dx_kernel, dim3(blocks_for(K, tile), blocks_for(M, tile)),
           dim3(tile, tile))
    (dY, W, dX, M, K, N);
    CUDA_CHECK(cudaGetLastError());
}
// dW[K, N] += Xᵀ·dY, with X [M, K], dY [M, N]
void cuda_matmul_backward_dw(const float* X, const float* dY, float* dW, int M, int K, int N) {
    check_arguments(M >= 0 && K >= 0 && N >= 0, "matmul backward: sizes must be >= 0");
    if (K == 0 || N == 0) return;
    LAUNCH(matmul_backward_dw_kernel, dim3(blocks_for(N, tile), blocks_for(K, tile)),
           dim3(tile, tile))
    (X, dY, dW, M, K, N);
    CUDA_CHECK(cudaGetLastError());
}

// =============================================================================================
// 3. Reductions
//
// Summing n numbers on a GPU takes two stages. Stage 1: each block reduces its share to one
// number. Stage 2: one block reduces those partial sums. (A single block would leave the rest of
// the GPU idle, and blocks cannot wait for each other within one launch.) Within a block there
// are two ways to combine the threads' values: a tree in shared memory with a __syncthreads()
// between levels (v1), or warp shuffles, where the 32 threads of a warp read each other's
// registers directly without shared memory or barriers (v2). Both replace loops like the sums in
// grad_norms() (engine.cpp §2.11).
// Cost of a sum over n floats: 4n bytes and n FLOPs, so it is bound by memory. In stage 1, each
// thread first sums every (gridDim.x·blockDim.x)-th element (a grid-stride loop), so a bounded
// number of blocks covers any n, and each thread loads several values before the block combines.
// =============================================================================================

constexpr int reduce_block = 256;        // threads per block (a power of 2, as the tree needs)
constexpr int reduce_per_thread = 8;     // stage 1 gives each thread at least 8 elements,
constexpr int reduce_max_blocks = 256;   // in at most 256 blocks (about 2 per SM on an H100)

static unsigned reduce_blocks(int n) {
    return std::min(blocks_for(n, reduce_block * reduce_per_thread), unsigned(reduce_max_blocks));
}

// A tree in shared memory: at each level, the lower half of the active threads adds in the
// upper half (256 → 128 → ... → 1). That is 8 levels and 8 barriers. The result is in thread 0.
static __device__ float block_sum_tree(float v) {
    __shared__ float buf[reduce_block];
    const int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) buf[t] += buf[t + stride];
        __syncthreads();   // this level is done before the next one reads it
    }
    return buf[0];
}

// __shfl_down_sync(mask, v, d) hands each lane the v of the lane d above it. Halving d from 16
// folds the warp in 5 steps, and lane 0 ends with the sum of all 32 lanes.
static __device__ float warp_sum(float v) {
    for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d);
    return v;
}

// v1: X[n] → partial[gridDim.x], one sum per block, by the tree.
static __global__ void sum_v1_kernel(const float* X, float* partial, int n) {
    float s = 0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        s += X[i];
    s = block_sum_tree(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// v2: the same with shuffles. Each warp sums its 32 values; lane 0 of each of the 8 warps leaves
// its sum in shared memory; warp 0 sums those 8. One barrier instead of eight.
static __global__ void sum_v2_kernel(const float* X, float* partial, int n) {
    __shared__ float warp_sums[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float s = 0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        s += X[i];
    s = warp_sum(s);
    if (lane == 0) warp_sums[warp] = s;
    __syncthreads();
    if (warp == 0) {
        s = warp_sum(lane < int(blockDim.x / 32) ? warp_sums[lane] : 0.0f);
        if (lane == 0) partial[blockIdx.x] = s;
    }
}

// For the row kernels below (§4, §5, §7): every thread of the block needs the result (the row's
// max, its sum), so they use a butterfly, not a fold. __shfl_xor_sync(mask, v, d) swaps v between
// lanes whose numbers differ in bit d. After the 5 steps d = 16, 8, 4, 2, 1, every lane holds the
// combination of all 32. Each warp reduces its values and lane 0 leaves the result in shared
// memory; then every warp reduces those (at most 32) results again, so all threads end with the
// total. blockDim.x must be a multiple of 32.
enum class Reduce { sum, max };
static __device__ float combine(float a, float b, Reduce op) {
    return op == Reduce::sum ? a + b : fmaxf(a, b);
}
static __device__ float warp_all_reduce(float v, Reduce op) {
    for (int d = 16; d > 0; d /= 2) v = combine(v, __shfl_xor_sync(0xffffffffu, v, d), op);
    return v;
}
static __device__ float block_all_reduce(float v, Reduce op) {
    __shared__ float per_warp[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_all_reduce(v, op);
    if (lane == 0) per_warp[warp] = v;
    __syncthreads();   // every warp's result is in shared memory
    v = warp_all_reduce(lane < warps ? per_warp[lane] : (op == Reduce::sum ? 0.0f : -INFINITY), op);
    __syncthreads();   // everyone has read per_warp before a next call overwrites it
    return v;
}

// Σ X[n], returned to the host. Stage 1: min(⌈n/2048⌉, 256) blocks of 256 threads; stage 2: one
// block of 256 over the partial sums.
static float sum_two_stage(const float* X, int n, bool shuffles) {
    check_arguments(n >= 0, "sum: n must be >= 0");
    if (n == 0) return 0;
    const unsigned blocks = reduce_blocks(n);
    DeviceScratch partial(int(blocks) + 1);   // the partial sums, then the total
    if (shuffles) {
        LAUNCH(sum_v2_kernel, blocks, reduce_block)(X, partial.p, n);
        CUDA_CHECK(cudaGetLastError());
        LAUNCH(sum_v2_kernel, 1, reduce_block)(partial.p, partial.p + blocks, int(blocks));
    } else {
        LAUNCH(sum_v1_kernel, blocks, reduce_block)(X, partial.p, n);
        CUDA_CHECK(cudaGetLastError());
        LAUNCH(sum_v1_kernel, 1, reduce_block)(partial.p, partial.p + blocks, int(blocks));
    }
    CUDA_CHECK(cudaGetLastError());
    float total = 0;
    CUDA_CHECK(cudaMemcpy(&total, partial.p + blocks, sizeof total, cudaMemcpyDeviceToHost));
    return total;
}
float cuda_sum_v1(const float* X, int n) { return sum_two_stage(X, n, false); }
float cuda_sum_v2(const float* X, int n) { return sum_two_stage(X, n, true); }

// =============================================================================================
// 4. Softmax + cross-entropy, fused
//
// Replaces cross_entropy() (engine.cpp §2.6) without label smoothing. For the row b of logits
// z [B, C] and its label y:
//     m = max_c z_c,   s = Σ_c e^(z_c − m),   p_c = e^(z_c − m)/s,
//     loss_b = −log p_y = log s + m − z_y
// and the loss is the mean over the rows. Subtracting the max makes every exponent ≤ 0, so
// nothing overflows. The gradient is dL/dz_c = (p_c − [c = y])/B, times the upstream gradient.
// Mapping: one block of 128 threads per row. Thread t handles the columns t, t + 128, ... of
// its row. The max and the sum are block reductions (§3). Labels must lie in [0, C): the engine
// checks them on the host.
// Cost forward: reads the B·C logits and writes the B·C probabilities, 8BC bytes (the second
// pass over a row and the rescaling of p hit the cache, unless rows are very long); about 5BC
// FLOPs, counting each exp as one. The loss is added atomically, once per row. Backward: reads p,
// reads and writes dz: 12BC bytes, 3BC FLOPs.
// =============================================================================================

constexpr int row_block = 128;   // threads per row: 4 warps

static __global__ void softmax_cross_entropy_forward_kernel(const float* logits, const int* labels,
                                                            float* probs, float* loss, int B,
                                                            int C) {
    const int b = blockIdx.x;
    const float* z = logits + b * C;
    float* p = probs + b * C;
    float m = -INFINITY;
    for (int c = threadIdx.x; c < C; c += blockDim.x) m = fmaxf(m, z[c]);
    m = block_all_reduce(m, Reduce::max);
    float s = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        p[c] = expf(z[c] - m);
        s += p[c];
    }
    s = block_all_reduce(s, Reduce::sum);
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        p[c] /= s;   // this thread wrote these p[c] itself
    // The rows finish in any order, and float addition is not associative, so the last bits of
    // the mean loss can differ from run to run on a GPU.
    if (threadIdx.x == 0) atomicAdd(loss, (logf(s) + m - z[labels[b]]) / B);
}

// dz[b][c] += dloss·(p[b][c] − [c = label_b])/B, one block per row as in the forward.
static __global__ void softmax_cross_entropy_backward_kernel(const float* probs, const int* labels,
                                                             float* dlogits, float dloss, int B,
                                                             int C) {
    const int b = blockIdx.x, y = labels[b];
    const float scale = dloss / B;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        dlogits[b * C + c] += scale * (probs[b * C + c] - (c == y ? 1.0f : 0.0f));
}

// logits [B, C], labels [B] (device ints) → probs [B, C] (kept for the backward) and *loss (one
// device float) = the mean loss. Grid: B blocks of 128 threads.
void cuda_softmax_cross_entropy_forward(const float* logits, const int* labels, float* probs,
                                        float* loss, int B, int C) {
    check_arguments(B >= 0 && C > 0, "softmax_cross_entropy: needs B >= 0 and C > 0");
    CUDA_CHECK(cudaMemset(loss, 0, sizeof(float)));
    if (B == 0) return;
    LAUNCH(softmax_cross_entropy_forward_kernel, B, row_block)(logits, labels, probs, loss, B, C);
    CUDA_CHECK(cudaGetLastError());
}
// dlogits [B, C] += dloss·(probs − onehot)/B, where dloss is the upstream gradient (1 for the
// loss itself). Grid: B blocks of 128 threads.
void cuda_softmax_cross_entropy_backward(const float* probs, const int* labels, float* dlogits,
                                         float dloss, int B, int C) {
    check_arguments(B >= 0 && C > 0, "softmax_cross_entropy: needs B >= 0 and C > 0");
    if (B == 0) return;
    LAUNCH(softmax_cross_entropy_backward_kernel, B, row_block)
    (probs, labels, dlogits, dloss, B, C);
    CUDA_CHECK(cudaGetLastError());
}

// =============================================================================================
// 5. Layer norm over the last axis (D features of a row)
//
// Replaces layer_norm() (engine.cpp §2.7):
//     μ = mean(x),  σ² = mean((x − μ)²),  r = 1/√(σ² + ε),  x̂ = (x − μ)·r,  y = γ·x̂ + β
// The forward keeps μ and r per row (2 floats, not a copy of x̂); the backward recomputes x̂.
// Backward, with ĝ = g·γ:
//     dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)),   dγ = Σ_rows g·x̂,   dβ = Σ_rows g
// dx needs reductions along its row: one block per row, as in §4. dγ and dβ need reductions down
// the columns: a second kernel with the strip layout of bias_grad_kernel (§1.2).
// Cost forward: reads x and writes y, 8·rows·D bytes (the three passes over a row hit the cache
// after the first; γ and β are shared by all rows); about 8·rows·D FLOPs. Backward: the dx kernel
// reads x and dy and reads and writes dx (16·rows·D bytes), the dγ, dβ kernel reads x and dy
// again (8·rows·D): 24·rows·D bytes for about 20·rows·D FLOPs.
// =============================================================================================

// Grid: one block per row, of 128 threads, or of ⌈D/32⌉ warps when D < 128: a GPT's rows can be
// short (D = 32 in lesson 15's --cuda), and the threads past D would only wait at the barriers.
static unsigned layer_norm_threads(int D) {
    return std::min(unsigned(row_block), 32 * blocks_for(D, 32));
}

static __global__ void layer_norm_forward_kernel(const float* X, const float* gain,
                                                 const float* bias, float* Y, float* mean,
                                                 float* rstd, int D, float eps) {
    const int r = blockIdx.x;
    const float* x = X + r * D;
    float s = 0;
    for (int j = threadIdx.x; j < D; j += blockDim.x) s += x[j];
    const float mu = block_all_reduce(s, Reduce::sum) / D;
    float v =
        0;   // the variance from the deviations, as on the CPU: no cancellation as in E[x²] − μ²
    for (int j = threadIdx.x; j < D; j += blockDim.x) v += (x[j] - mu) * (x[j] - mu);
    const float rs = rsqrtf(block_all_reduce(v, Reduce::sum) / D + eps);
    for (int j = threadIdx.x; j < D; j += blockDim.x)
        Y[r * D + j] = gain[j] * (x[j] - mu) * rs + bias[j];
    if (threadIdx.x == 0) {
        mean[r] = mu;
        rstd[r] = rs;
    }
}

// dx, one block per row as in the forward.
static __global__ void layer_norm_backward_dx_kernel(const float* X, const float* gain,
                                                     const float* mean, const float* rstd,
                                                     const float* dY, float* dX, int D) {
    const int r = blockIdx.x;
    const float mu = mean[r], rs = rstd[r];
    float a = 0, b = 0;   // Σ ĝ and Σ ĝ·x̂ over this thread's columns
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        const float gh = dY[r * D + j] * gain[j], xh = (X[r * D + j] - mu) * rs;
        a += gh;
        b += gh * xh;
    }
    const float mean_gh = block_all_reduce(a, Reduce::sum) / D,
                mean_gh_xh = block_all_reduce(b, Reduce::sum) / D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        const float gh = dY[r * D + j] * gain[j], xh = (X[r * D + j] - mu) * rs;
        dX[r * D + j] += rs * (gh - mean_gh - xh * mean_gh_xh);
    }
}

// dγ and dβ: column sums over the rows, with the strip layout of bias_grad_kernel: 32 × 8 threads
// per strip of 32 columns, ⌈D/32⌉ blocks.
static __global__ void layer_norm_backward_params_kernel(const float* X, const float* mean,
                                                         const float* rstd, const float* dY,
                                                         float* dgain, float* dbias, int rows,
                                                         int D) {
    __shared__ float partial_gain[strip_rows][strip_width], partial_bias[strip_rows][strip_width];
    const int x = threadIdx.x, y = threadIdx.y, j = blockIdx.x * strip_width + x;
    float sg = 0, sb = 0;
    if (j < D)
        for (int r = y; r < rows; r += strip_rows) {
            const float g = dY[r * D + j];
            sg += g * (X[r * D + j] - mean[r]) * rstd[r];
            sb += g;
        }
    partial_gain[y][x] = sg;
    partial_bias[y][x] = sb;
    __syncthreads();
    if (y == 0 && j < D) {
        for (int k = 1; k < strip_rows; ++k) {
            sg += partial_gain[k][x];
            sb += partial_bias[k][x];
        }
        dgain[j] += sg;
        dbias[j] += sb;
    }
}

// X [rows, D], gain and bias [D] → Y [rows, D], and mean, rstd [rows] for the backward.
void cuda_layer_norm_forward(const float* X, const float* gain, const float* bias, float* Y,
                             float* mean, float* rstd, int rows, int D, float eps) {
    check_arguments(rows >= 0 && D > 0, "layer_norm: needs rows >= 0 and D > 0");
    if (rows == 0) return;
    LAUNCH(layer_norm_forward_kernel, rows, layer_norm_threads(D))
    (X, gain, bias, Y, mean, rstd, D, eps);
    CUDA_CHECK(cudaGetLastError());
}
// dX [rows, D] += ..., dgain and dbias [D] += ...
void cuda_layer_norm_backward(const float* X, const float* gain, const float* mean,
                              const float* rstd, const float* dY, float* dX, float* dgain,
                              float* dbias, int rows, int D) {
    check_arguments(rows >= 0 && D > 0, "layer_norm: needs rows >= 0 and D > 0");
    if (rows == 0) return;
    LAUNCH(layer_norm_backward_dx_kernel, rows, layer_norm_threads(D))
    (X, gain, mean, rstd, dY, dX, D);
    CUDA_CHECK(cudaGetLastError());
    LAUNCH(layer_norm_backward_params_kernel, blocks_for(D, strip_width),
           dim3(strip_width, strip_rows))
    (X, mean, rstd, dY, dgain, dbias, rows, D);
    CUDA_CHECK(cudaGetLastError());
}

// =============================================================================================
// 6. AdamW, fused
//
// Replaces Adam::update (engine.cpp §2.9) with decoupled weight decay (AdamW). For every element,
// with the bias corrections c₁ = 1 − β₁ᵗ and c₂ = 1 − β₂ᵗ:
//     w ← w − lr·λ·w,   m ← β₁m + (1 − β₁)g,   v ← β₂v + (1 − β₂)g²,
//     m̂ = m/c₁,   v̂ = v/c₂,   w ← w − lr·m̂/(√v̂ + ε)
// Run as separate elementwise kernels, these steps would read and write w, m and v several
// times. Fused, each element is read once (w, g, m, v: 16 bytes) and written once (w, m, v:
// 12 bytes): 28n bytes for about 17n FLOPs (a square root or a division counted as one). It
// computes in float, as the CPU loop does in a float build, with the same constants (1/c₁ and 1/c₂
// among them, multiplied rather than divided by), each formed on the host in double and rounded
// to float once: the two give the same bits.
// Grid: ⌈n/256⌉ blocks of 256 threads, one element each.
// Weight-decay groups (a GPT decays its matrices, not its biases and gains: lesson 15 §3) need
// nothing more: each group is an optimizer of its own, and every launch takes its tensor's λ
// (0 for the group without decay).
// =============================================================================================

struct AdamWConstants {
    float b1, b2, one_minus_b1, one_minus_b2, inv_c1, inv_c2, rate, decay, epsilon;
};

static __global__ void adamw_kernel(float* W, const float* G, float* m, float* v, int n,
                                    AdamWConstants k) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = G[i];
    m[i] = k.b1 * m[i] + k.one_minus_b1 * g;
    v[i] = k.b2 * v[i] + k.one_minus_b2 * g * g;
    const float m_hat = m[i] * k.inv_c1;
    const float v_hat = v[i] * k.inv_c2;
    W[i] = W[i] - k.decay * W[i] - k.rate * m_hat / (sqrtf(v_hat) + k.epsilon);
}

// One step (step = 1, 2, ...) for W, m, v [n] with gradient G [n].
void cuda_adamw_update(float* W, const float* G, float* m, float* v, int n, double lr, double beta1,
                       double beta2, double eps, double weight_decay, long step) {
    check_arguments(n >= 0 && step >= 1, "adamw: needs n >= 0 and step >= 1");
    if (n == 0) return;
    const AdamWConstants k = {float(beta1),
                              float(beta2),
                              float(1 - beta1),
                              float(1 - beta2),
                              float(1 / (1 - std::pow(beta1, double(step)))),
                              float(1 / (1 - std::pow(beta2, double(step)))),
                              float(lr),
                              float(lr * weight_decay),
                              float(eps)};
    LAUNCH(adamw_kernel, blocks_for(n, elementwise_block), elementwise_block)(W, G, m, v, n, k);
    CUDA_CHECK(cudaGetLastError());
}

// =============================================================================================
// 7. The global gradient norm, and clipping by it
//
// Replaces grad_norm() and clip_grad_norm() (engine.cpp §2.11): ‖g‖ = √(Σ over all parameters of
// Σ g²), and if ‖g‖ > max_norm, every gradient is scaled by max_norm/‖g‖. It is a two-stage
// reduction (§3) over several tensors at once. Stage 1 runs once per tensor, and its block k adds
// its share into partial[k]: each block owns its slot, so no atomics are needed. Stage 2 is one
// block that turns the 256 slots (the unused ones stay 0) into the norm and the clip scale. The
// scaling kernels then read the scale from device memory, so the host need not wait between
// computing the norm and applying it.
// Cost: stage 1 reads every gradient once (4n bytes, 2n FLOPs); the scaling reads and writes
// them (8n bytes, n FLOPs).
// =============================================================================================

// Stage 1, for one tensor: partial[blockIdx.x] += Σ of this block's share of g².
static __global__ void sum_squares_kernel(const float* G, int n, float* partial) {
    float s = 0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        s += G[i] * G[i];
    s = block_all_reduce(s, Reduce::sum);
    if (threadIdx.x == 0) partial[blockIdx.x] += s;
}

// Stage 2, one block: out[0] = ‖g‖ = √(Σ partial); out[1] = the scale: max_norm/‖g‖ if
// ‖g‖ > max_norm, else 1.
static __global__ void norm_and_clip_scale_kernel(const float* partial, int count, float max_norm,
                                                  float* out) {
    float s = 0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    s = block_all_reduce(s, Reduce::sum);
    if (threadIdx.x == 0) {
        const float norm = sqrtf(s);
        out[0] = norm;
        out[1] = norm > max_norm ? max_norm / norm : 1.0f;
    }
}

// g ← g·scale, one thread per element.
static __global__ void scale_kernel(float* G, int n, const float* scale) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) G[i] *= *scale;
}

// Both stages into out[0] (the norm) and out[1] (the clip scale for max_norm).
static void grad_norm_on_device(const std::vector<const float*>& grads,
                                const std::vector<int>& sizes, float max_norm, float* out) {
    check_arguments(grads.size() == sizes.size(), "grad_norm: one size per gradient");
    DeviceScratch partial(reduce_max_blocks);
    CUDA_CHECK(cudaMemset(partial.p, 0, sizeof(float) * reduce_max_blocks));   // 0 bytes are 0.0f
    for (std::size_t k = 0; k < grads.size(); ++k) {
        check_arguments(sizes[k] >= 0, "grad_norm: sizes must be >= 0");
        if (sizes[k] == 0) continue;
        LAUNCH(sum_squares_kernel, reduce_blocks(sizes[k]), reduce_block)
        (grads[k], sizes[k], partial.p);
        CUDA_CHECK(cudaGetLastError());
    }
    LAUNCH(norm_and_clip_scale_kernel, 1, reduce_block)
    (partial.p, reduce_max_blocks, max_norm, out);
    CUDA_CHECK(cudaGetLastError());
}

// ‖g‖ over all the gradients (grads[k] holds sizes[k] floats), returned to the host.
float cuda_grad_norm(const std::vector<const float*>& grads, const std::vector<int>& sizes) {
    DeviceScratch out(2);
    grad_norm_on_device(grads, sizes, INFINITY, out.p);
    float norm = 0;
    CUDA_CHECK(cudaMemcpy(&norm, out.p, sizeof norm, cudaMemcpyDeviceToHost));
    return norm;
}

// Scales every gradient by max_norm/‖g‖ when ‖g‖ > max_norm; returns ‖g‖ before clipping.
float cuda_clip_grad_norm(const std::vector<float*>& grads, const std::vector<int>& sizes,
                          float max_norm) {
    check_arguments(max_norm > 0, "clip_grad_norm: max_norm must be > 0");
    DeviceScratch out(2);
    grad_norm_on_device(std::vector<const float*>(grads.begin(), grads.end()), sizes, max_norm,
                        out.p);
    for (std::size_t k = 0; k < grads.size(); ++k) {
        if (sizes[k] == 0) continue;
        LAUNCH(scale_kernel, blocks_for(sizes[k], elementwise_block), elementwise_block)
        (grads[k], sizes[k], out.p + 1);
        CUDA_CHECK(cudaGetLastError());
    }
    float norm = 0;
    CUDA_CHECK(cudaMemcpy(&norm, out.p, sizeof norm, cudaMemcpyDeviceToHost));
    return norm;
}

// =============================================================================================
// 8. Device memory for the engine's tensors
//
// engine.cpp (Part 5) keeps a CUDA tensor's numbers in memory from these functions. They live
// here, beside the kernels, so that engine.cpp includes no CUDA header and links the same way
// with or without a GPU. Each CUDA call is checked. A copy between host and device waits for
// the kernels launched before it to finish, so what a copy to the host reads is final.
// =============================================================================================

void* cuda_malloc(std::size_t bytes) {
    void* p = nullptr;
    if (bytes != 0) CUDA_CHECK(cudaMalloc(&p, bytes));
    return p;
}

// Called by destructors, which must not throw: a failure is reported and stops the program
// (it means a pointer that cudaMalloc never returned, or a GPU already in an error state).
void cuda_free(void* p) {
    const cudaError_t status = p ? cudaFree(p) : cudaSuccess;
    if (status == cudaSuccess) return;
    std::fprintf(stderr, "%s:%d: cudaFree(p) failed: %s\n", __FILE__, __LINE__,
                 cudaGetErrorString(status));
    std::abort();
}

void cuda_copy_to_device(void* dst, const void* src, std::size_t bytes) {
    if (bytes != 0) CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void cuda_copy_to_host(void* dst, const void* src, std::size_t bytes) {
    if (bytes != 0) CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void cuda_copy_on_device(void* dst, const void* src, std::size_t bytes) {
    if (bytes != 0) CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}
void cuda_zero(void* p, std::size_t bytes) {   // all-zero bytes are 0.0f
    if (bytes != 0) CUDA_CHECK(cudaMemset(p, 0, bytes));
}

// =============================================================================================
// 9. Timing kernels with CUDA events
//
// A launch returns before its kernel runs, so a host clock around it times only the launch.
// An event is a time stamp the GPU records when its stream reaches it; the time between two
// events is the time of the kernels launched between them. The first launch is a warm-up (it
// pays for loading the module); the rest are averaged.
// =============================================================================================

namespace {
struct Event {   // created and destroyed with checks, also when a launch throws
    cudaEvent_t e;
    Event() { CUDA_CHECK(cudaEventCreate(&e)); }
    ~Event() {
        cudaEventDestroy(e);
    }   // unchecked, as in DeviceScratch: a destructor must not throw
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;
};
}   // namespace

double cuda_time_ms(const std::function<void()>& launch, int repeats) {
    if (repeats < 1)
        throw std::invalid_argument("cuda_time_ms: needs repeats >= 1, got " +
                                    std::to_string(repeats));
    Event start, stop;
    launch();
    CUDA_CHECK(cudaEventRecord(start.e));
    for (int r = 0; r < repeats; ++r) launch();
    CUDA_CHECK(cudaEventRecord(stop.e));
    CUDA_CHECK(cudaEventSynchronize(stop.e));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start.e, stop.e));
    return double(ms) / repeats;
}

bool cuda_is_emulated() {
#ifdef __CUDACC__
    return false;
#else
    return true;
#endif
}

// =============================================================================================
// 10. Embeddings: the lookup, its scatter-add backward, and token + position in one kernel
//
// Replaces embedding() (engine.cpp §2.7): out[k] = table[ids[k]] for N ids, rows of D floats. The
// ids are ints in device memory, checked against [0, V) on the host (the engine does that before
// it copies them in). A GPT's input (engine.cpp §6.2) adds the position's row to the token's:
//     x[b][t] = wte[ids[b·T + t]] + wpe[t]
// The engine builds that from two lookups and §1.1's broadcast add (wpe's rows 0..T−1 are one
// [T, D] block added to each of the B sequences: nb = T·D). gpt_embed_forward fuses the two
// here, as llm.c's encoder does: one pass over x instead of three.
// Mapping: one thread per output number: thread i does row k = i / D, column j = i % D, so a
// warp reads consecutive floats of one table row (coalesced within the row).
// Cost: the lookup reads N·D floats and N ids and writes N·D: about 8·N·D bytes, no FLOPs. The
// fused forward reads wpe too: 12·B·T·D bytes, B·T·D FLOPs.
//
// The backward is a scatter: dtable[ids[k]] += dout[k]. Two positions with the same token (an
// 'e' at k and at k') add into the same row, and their threads may run at the same moment. A
// plain `+=` is a read, an add and a write: both threads read the old value, both write old + their
// own share, and one share is lost. atomicAdd(p, v) does the read-add-write as one indivisible
// step in the memory system, so concurrent adds to one address all land. The price: the adds
// land in whatever order the threads arrive, and float addition is not associative, so the last
// bits of dtable can differ from run to run on a GPU. (The deterministic alternative sorts the
// positions by id and lets one thread sum each id's rows in a fixed order; it costs a sort per
// step. cuda_emu switches threads only at barriers and warp operations, so its `+=` never
// races: the emulator cannot show the lost update, only the right sum.)
// Cost: reads dout (4·N·D bytes) and does N·D atomic adds on dtable, N·D FLOPs. dwpe of the fused
// backward is a column sum over the B sequences, bias_grad_kernel's job (§1.2), M = B, N = T·D.
// =============================================================================================

static __global__ void embedding_forward_kernel(const float* table, const int* ids, float* out,
                                                int N, int D) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N * D) out[i] = table[ids[i / D] * D + i % D];
}

static __global__ void gpt_embed_forward_kernel(const float* wte, const float* wpe, const int* ids,
                                                float* x, int BT, int T, int D) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= BT * D) return;
    const int k = i / D, j = i % D, t = k % T;   // row k is position t of its sequence
    x[i] = wte[ids[k] * D + j] + wpe[t * D + j];
}

static __global__ void embedding_backward_kernel(const float* dout, const int* ids, float* dtable,
                                                 int N, int D) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N * D) atomicAdd(&dtable[ids[i / D] * D + i % D], dout[i]);
}

// out [N, D] = table[ids]: table [V, D], ids [N] (device ints, each in [0, V)).
void cuda_embedding_forward(const float* table, const int* ids, float* out, int N, int D) {
    check_arguments(N >= 0 && D > 0 && std::int64_t(N) * D < (std::int64_t(1) << 31),
                    "embedding: needs N >= 0, D > 0 and N·D < 2^31");
    if (N == 0) return;
    LAUNCH(embedding_forward_kernel, blocks_for(N * D, elementwise_block), elementwise_block)
    (table, ids, out, N, D);
    CUDA_CHECK(cudaGetLastError());
}
// dtable [V, D] += the rows of dout [N, D], row k into row ids[k]
void cuda_embedding_backward(const float* dout, const int* ids, float* dtable, int N, int D) {
    check_arguments(N >= 0 && D > 0 && std::int64_t(N) * D < (std::int64_t(1) << 31),
                    "embedding: needs N >= 0, D > 0 and N·D < 2^31");
    if (N == 0) return;
    LAUNCH(embedding_backward_kernel, blocks_for(N * D, elementwise_block), elementwise_block)
    (dout, ids, dtable, N, D);
    CUDA_CHECK(cudaGetLastError());
}
// x [B·T, D] = wte[ids] + wpe[t], for ids [B·T] (row b·T + t is position t of sequence b).
void cuda_gpt_embed_forward(const float* wte, const float* wpe, const int* ids, float* x, int B,
                            int T, int D) {
    check_arguments(B >= 0 && T > 0 && D > 0 && std::int64_t(B) * T * D < (std::int64_t(1) << 31),
                    "gpt_embed: needs B >= 0, T > 0, D > 0 and B·T·D < 2^31");
    if (B == 0) return;
    LAUNCH(gpt_embed_forward_kernel, blocks_for(B * T * D, elementwise_block), elementwise_block)
    (wte, wpe, ids, x, B * T, T, D);
    CUDA_CHECK(cudaGetLastError());
}
// dwte += the scatter of dx by ids; dwpe [T, D] += Σ_b dx[b] (a column sum over B rows of T·D).
void cuda_gpt_embed_backward(const float* dx, const int* ids, float* dwte, float* dwpe, int B,
                             int T, int D) {
    cuda_embedding_backward(dx, ids, dwte, B * T, D);
    cuda_bias_grad(dx, dwpe, B, T * D);
}

// =============================================================================================
// 11. Transpose: Y[t][c][r] = X[t][r][c] for each of `batch` matrices [R, C]
//
// Replaces transpose() (engine.cpp §2.5); a GPT's tied head multiplies by wteᵀ. Its backward is
// a transpose too, added: dX[t][r][c] += dY[t][c][r]. No FLOPs, 8n bytes; the question is only
// how to move them fast. Copied naively, either the reads or the writes walk down a column,
// C (or R) floats apart: every thread of a warp hits another memory segment. So a block copies a
// 32 × 32 tile into shared memory with coalesced reads along X's rows, and writes it out with
// coalesced writes along Y's rows, reading the tile by columns. The tile's rows are padded to 33
// floats: a column then falls on 32 different banks (§2 v3), not all on one.
// Mapping: blocks of 32 × 8 threads, each thread moving 4 numbers of the tile (rows y, y + 8, ...);
// grid ⌈C/32⌉ × ⌈R/32⌉ × batch.
// =============================================================================================

constexpr int transpose_tile = 32, transpose_rows = 8;
static __global__ void transpose_kernel(const float* X, float* Y, int R, int C, bool accumulate) {
    __shared__ float tile_[transpose_tile][transpose_tile + 1];
    const std::size_t matrix = std::size_t(blockIdx.z) * R * C;
    const int c0 = blockIdx.x * transpose_tile, r0 = blockIdx.y * transpose_tile;
    for (int y = threadIdx.y; y < transpose_tile; y += transpose_rows) {   // rows of X
        const int r = r0 + y, c = c0 + threadIdx.x;
        if (r < R && c < C) tile_[y][threadIdx.x] = X[matrix + std::size_t(r) * C + c];
    }
    __syncthreads();   // the whole tile is in before any thread reads it by columns
    for (int y = threadIdx.y; y < transpose_tile; y += transpose_rows) {   // rows of Y
        const int c = c0 + y, r = r0 + threadIdx.x;
        if (r >= R || c >= C) continue;
        float& out = Y[matrix + std::size_t(c) * R + r];
        out = accumulate ? out + tile_[threadIdx.x][y] : tile_[threadIdx.x][y];
    }
}

static void transpose(const float* X, float* Y, int batch, int R, int C, bool accumulate) {
    check_arguments(batch >= 0 && R >= 0 && C >= 0 && batch <= 65535,
                    "transpose: needs sizes >= 0 and batch <= 65535");
    if (batch == 0 || R == 0 || C == 0) return;
    LAUNCH(transpose_kernel,
           dim3(blocks_for(C, transpose_tile), blocks_for(R, transpose_tile), unsigned(batch)),
           dim3(transpose_tile, transpose_rows))
    (X, Y, R, C, accumulate);
    CUDA_CHECK(cudaGetLastError());
}
// Y [batch, C, R] = Xᵀ of each X [batch, R, C]
void cuda_transpose_forward(const float* X, float* Y, int batch, int R, int C) {
    transpose(X, Y, batch, R, C, false);
}
// dX [batch, R, C] += dYᵀ of each dY [batch, C, R]
void cuda_transpose_backward(const float* dY, float* dX, int batch, int R, int C) {
    transpose(dY, dX, batch, C, R, true);
}

// =============================================================================================
// 12. Causal attention, naive: the scores in memory
//
// Replaces causal_self_attention() (engine.cpp §4.4) with the formulas of §4.3. The input is the
// engine's [q | k | v] of shape [B, T, 3D], read where it lies: head h of sequence b has its
// query i at qkv[b][i][h·d .. h·d + d − 1], its key D further and its value 2D further (d = D/H,
// rows 3D apart). The output [B, T, D] takes head h's o_i at columns h·d ... of row i. So no
// kernel has to cut qkv into per-head tensors [B, H, T, d] first: each kernel computes its row's
// address (qkv_row below), and the backward writes dq, dk, dv into dqkv at the same places. The
// cost is strided access (rows 3D floats apart), which the tiled kernels of §13 turn into one
// coalesced load per tile anyway.
// Per (b, h), with s = 1/√d:
//     S_ij = s·q_i·k_j    P_ij = softmax_j(S_ij) over j ≤ i (0 above the diagonal)
//     o_i = Σ_j P_ij·v_j
// Backward, with dO given:
//     dV = Pᵀ·dO    dP = dO·Vᵀ    dS_ij = P_ij·(dP_ij − Σ_j' P_ij'·dP_ij')
//     dQ = s·dS·K   dK = s·dSᵀ·Q
// Step by step, one kernel for each formula, P [B·H, T, T] materialized in device memory: the
// version to read first and the oracle of §13. Its memory is its problem: P has T² numbers per
// head where q, k, v have T·d, and every step writes or reads all of them (T = 1024, d = 64: P is
// 16 times the size of q, k and v together).
// Cost, with pairs = B·H·T(T + 1)/2: forward 4·pairs·d FLOPs for S and P·V. P's traffic: the
// scores kernel writes all T² entries, the softmax reads and writes the lower half, P·V reads
// it: about 10·B·H·T² bytes. Backward 8·pairs·d FLOPs (dV, dP, dQ, dK) and about 16·B·H·T²
// bytes of P and dP (dP written whole; P and dP read, dS written, dS read twice: lower halves).
// =============================================================================================

constexpr int head_dim_max = 64;   // §13 keeps a row of d numbers per thread in registers

// Where row t of sequence b starts in [B, T, 3D] (q at +h·d, k at +D + h·d, v at +2D + h·d)
static __device__ std::size_t qkv_row(int b, int t, int T, int D) {
    return (std::size_t(b) * T + t) * 3 * D;
}

// S, then P in place. Thread (x, y) of block (bx, by, u) computes S_ij for i = by·16 + y,
// j = bx·16 + x of the pair u = b·H + h. Entries above the diagonal get 0 (they stay 0 in P).
static __global__ void attention_scores_kernel(const float* qkv, float* P, int T, int D, int H,
                                               float scale) {
    const int i = blockIdx.y * tile + threadIdx.y, j = blockIdx.x * tile + threadIdx.x;
    const int u = blockIdx.z, b = u / H, d = D / H, h = u % H;
    if (i >= T || j >= T) return;
    float s = 0;
    if (j <= i) {
        const float *q = qkv + qkv_row(b, i, T, D) + h * d,
                    *k = qkv + qkv_row(b, j, T, D) + D + h * d;
        for (int c = 0; c < d; ++c) s += q[c] * k[c];
        s *= scale;
    }
    P[(std::size_t(u) * T + i) * T + j] = s;
}

// Softmax of row i of pair u over its keys j ≤ i, in place: one warp (32 threads) per row, with
// §3's butterfly for the max and the sum. Grid: B·H·T blocks.
static __global__ void attention_softmax_kernel(float* P, int T) {
    const int row = blockIdx.x, i = row % T;
    float* p = P + std::size_t(row) * T;
    float m = -INFINITY;
    for (int j = threadIdx.x; j <= i; j += 32) m = fmaxf(m, p[j]);
    m = warp_all_reduce(m, Reduce::max);
    float sum = 0;
    for (int j = threadIdx.x; j <= i; j += 32) sum += expf(p[j] - m);
    sum = warp_all_reduce(sum, Reduce::sum);
    for (int j = threadIdx.x; j <= i; j += 32) p[j] = expf(p[j] - m) / sum;
}

// o_i = Σ_{j ≤ i} P_ij·v_j: thread (x, y) of block (bx, by, u) computes feature c = bx·16 + x of
// row i = by·16 + y.
static __global__ void attention_pv_kernel(const float* qkv, const float* P, float* out, int T,
                                           int D, int H) {
    const int i = blockIdx.y * tile + threadIdx.y, c = blockIdx.x * tile + threadIdx.x;
    const int u = blockIdx.z, b = u / H, d = D / H, h = u % H;
    if (i >= T || c >= d) return;
    const float* p = P + (std::size_t(u) * T + i) * T;
    float o = 0;
    for (int j = 0; j <= i; ++j) o += p[j] * qkv[qkv_row(b, j, T, D) + 2 * D + h * d + c];
    out[(std::size_t(b) * T + i) * D + h * d + c] = o;
}

// dV and dK, one thread per (key j, feature c): dv_j += Σ_{i ≥ j} P_ij·do_i and
// dk_j += s·Σ_{i ≥ j} dS_ij·q_i. (dS is ready when dk runs: the wrapper launches this twice.)
static __global__ void attention_dkv_kernel(const float* qkv, const float* P, const float* dS,
                                            const float* dout, float* dqkv, int T, int D, int H,
                                            float scale) {
    const int j = blockIdx.y * tile + threadIdx.y, c = blockIdx.x * tile + threadIdx.x;
    const int u = blockIdx.z, b = u / H, d = D / H, h = u % H;
    if (j >= T || c >= d) return;
    float acc = 0;
    for (int i = j; i < T; ++i) {
        const std::size_t ij = (std::size_t(u) * T + i) * T + j;
        acc += dS ? dS[ij] * qkv[qkv_row(b, i, T, D) + h * d + c]
                  : P[ij] * dout[(std::size_t(b) * T + i) * D + h * d + c];
    }
    dqkv[qkv_row(b, j, T, D) + (dS ? D : 2 * D) + h * d + c] += dS ? scale * acc : acc;
}

// dP_ij = do_i·v_j for j ≤ i, the mapping of the scores kernel.
static __global__ void attention_dp_kernel(const float* qkv, const float* dout, float* dP, int T,
                                           int D, int H) {
    const int i = blockIdx.y * tile + threadIdx.y, j = blockIdx.x * tile + threadIdx.x;
    const int u = blockIdx.z, b = u / H, d = D / H, h = u % H;
    if (i >= T || j >= T) return;
    float s = 0;
    if (j <= i) {
        const float *g = dout + (std::size_t(b) * T + i) * D + h * d,
                    *v = qkv + qkv_row(b, j, T, D) + 2 * D + h * d;
        for (int c = 0; c < d; ++c) s += g[c] * v[c];
    }
    dP[(std::size_t(u) * T + i) * T + j] = s;
}

// dS = P ∘ (dP − rowsum(P ∘ dP)) in place of dP: softmax's backward, a warp per row.
static __global__ void attention_softmax_backward_kernel(const float* P, float* dP, int T) {
    const int row = blockIdx.x, i = row % T;
    const float* p = P + std::size_t(row) * T;
    float* g = dP + std::size_t(row) * T;
    float dot = 0;
    for (int j = threadIdx.x; j <= i; j += 32) dot += p[j] * g[j];
    dot = warp_all_reduce(dot, Reduce::sum);
    for (int j = threadIdx.x; j <= i; j += 32) g[j] = p[j] * (g[j] - dot);
}

// dq_i += s·Σ_{j ≤ i} dS_ij·k_j, one thread per (query i, feature c).
static __global__ void attention_dq_kernel(const float* qkv, const float* dS, float* dqkv, int T,
                                           int D, int H, float scale) {
    const int i = blockIdx.y * tile + threadIdx.y, c = blockIdx.x * tile + threadIdx.x;
    const int u = blockIdx.z, b = u / H, d = D / H, h = u % H;
    if (i >= T || c >= d) return;
    const float* g = dS + (std::size_t(u) * T + i) * T;
    float acc = 0;
    for (int j = 0; j <= i; ++j) acc += g[j] * qkv[qkv_row(b, j, T, D) + D + h * d + c];
    dqkv[qkv_row(b, i, T, D) + h * d + c] += scale * acc;
}

static void check_attention_sizes(int B, int T, int D, int H, const char* what) {
    check_arguments(B >= 0 && T > 0 && H > 0 && D > 0 && D % H == 0,
                    (std::string(what) + ": needs B >= 0, T > 0, H > 0 and H dividing D").c_str());
    check_arguments(std::int64_t(B) * T * 3 * D < (std::int64_t(1) << 31) && B * H <= 65535,
                    (std::string(what) + ": needs B·T·3D < 2^31 and B·H <= 65535").c_str());
}

// The grid of the per-pair kernels: 16 × 16 tiles of a [rows, cols] matrix, for each of B·H pairs.
static dim3 pair_tiles(int rows, int cols, int pairs) {
    return dim3(blocks_for(cols, tile), blocks_for(rows, tile), unsigned(pairs));
}

// qkv [B, T, 3D] → out [B, T, D], and P [B·H, T, T] for the backward.
void cuda_attention_naive_forward(const float* qkv, float* out, float* P, int B, int T, int D,
                                  int H) {
    check_attention_sizes(B, T, D, H, "attention_naive");
    check_arguments(std::int64_t(B) * H * T * T < (std::int64_t(1) << 31),
                    "attention_naive: P needs B·H·T² < 2^31");
    if (B == 0) return;
    const int d = D / H;
    const float scale = 1 / std::sqrt(float(d));
    LAUNCH(attention_scores_kernel, pair_tiles(T, T, B * H), dim3(tile, tile))
    (qkv, P, T, D, H, scale);
    CUDA_CHECK(cudaGetLastError());
    LAUNCH(attention_softmax_kernel, unsigned(B * H * T), 32)(P, T);
    CUDA_CHECK(cudaGetLastError());
    LAUNCH(attention_pv_kernel, pair_tiles(T, d, B * H), dim3(tile, tile))(qkv, P, out, T, D, H);
    CUDA_CHECK(cudaGetLastError());
}

// dqkv [B, T, 3D] += the gradients of q, k and v, from dout [B, T, D] and the forward's P.
void cuda_attention_naive_backward(const float* qkv, const float* P, const float* dout, float* dqkv,
                                   int B, int T, int D, int H) {
    check_attention_sizes(B, T, D, H, "attention_naive");
    if (B == 0) return;
    const int d = D / H;
    const float scale = 1 / std::sqrt(float(d));
    DeviceScratch dS(B * H * T * T);
    const dim3 per_feature = pair_tiles(T, d, B * H), threads(tile, tile);
    LAUNCH(attention_dkv_kernel, per_feature, threads)
    (qkv, P, nullptr, dout, dqkv, T, D, H, scale);   // dV
    CUDA_CHECK(cudaGetLastError());
    LAUNCH(attention_dp_kernel, pair_tiles(T, T, B * H), threads)(qkv, dout, dS.p, T, D, H);
    CUDA_CHECK(cudaGetLastError());
    LAUNCH(attention_softmax_backward_kernel, unsigned(B * H * T), 32)(P, dS.p, T);
    CUDA_CHECK(cudaGetLastError());
    LAUNCH(attention_dq_kernel, per_feature, threads)(qkv, dS.p, dqkv, T, D, H, scale);
    CUDA_CHECK(cudaGetLastError());
    LAUNCH(attention_dkv_kernel, per_feature, threads)
    (qkv, P, dS.p, dout, dqkv, T, D, H, scale);   // dK
    CUDA_CHECK(cudaGetLastError());
}

// =============================================================================================
// 13. Causal attention, tiled (FlashAttention): P never leaves the chip
//
// The same function as §12, and the same layout of qkv, out and dqkv, without P in memory.
// Forward: a block owns a tile of 32 queries of one (b, h), one query per thread, and walks over
// the keys in tiles of 32: the block loads a tile of K and of V into shared memory (coalesced:
// consecutive threads read consecutive features of a row), then each thread scores its query
// against the tile's keys and folds them into a running ("online") softmax. For query i, after
// the keys seen so far, it keeps m (the largest score), l = Σ_j e^(S_ij − m) and
// o = Σ_j e^(S_ij − m)·v_j, unnormalized. A new tile with largest score m̃ changes them to
//     m' = max(m, m̃),   l' = e^(m − m')·l + Σ_tile e^(S_ij − m'),
//     o' = e^(m − m')·o + Σ_tile e^(S_ij − m')·v_j
// (multiplying by e^(m − m') re-expresses the old sums relative to the new max: nothing is
// recomputed, nothing overflows). At the end o_i = o/l, and the row's log-sum-exp
// L_i = m + log l = log Σ_j e^(S_ij) is saved: [B·H, T] numbers instead of P's [B·H, T, T].
// Causal masking costs nothing extra: a query tile stops at the key tile that holds its last
// query (the tiles above the diagonal are never loaded), and inside the diagonal tile thread i
// scores keys j ≤ i only. A tile that T does not fill loads zeros and its threads past T only
// help load and wait at the barriers (every thread must reach each __syncthreads()).
// Backward: P_ij = e^(S_ij − L_i) is rebuilt from Q, K and L, tile by tile. Softmax's backward
// needs rowsum(P ∘ dP) per row; since dP = dO·Vᵀ and O = P·V, that sum is Σ_j P_ij·(do_i·v_j) =
// do_i·o_i: D_i = rowsum(dO ∘ O), one dot product per row, computed first. Then
//     dS_ij = P_ij·(do_i·v_j − D_i),   dq_i = s·Σ_j dS_ij·k_j,   dk_j = s·Σ_i dS_ij·q_i,
//     dv_j = Σ_i P_ij·do_i
// dq sums over keys and dk, dv over queries, so one pass cannot own both without atomics
// (FlashAttention-2 adds dq with atomicAdd). Here two kernels each own what they write: dq by
// query tiles (as the forward), dk and dv by key tiles, walking the query tiles at or below the
// diagonal. Both recompute S and dP: more FLOPs, no atomics, the same bits on every run.
// Threads keep a row of d ≤ 64 numbers (q, o, dq, k, v, ...) in arrays; d = 64 is GPT-2's.
// Indexed up to a d known only at run time, those arrays live in local memory (nvcc -Xptxas -v:
// a stack frame of 640 bytes for the forward, 1 KB for dk/dv; no spills), served by the L1
// cache. A kernel for one d (a template) would keep them in registers.
// Cost, pairs = B·H·T(T + 1)/2: forward 4·pairs·d FLOPs (and one exp per pair). With
// n = B·H·T·d, it reads q and writes o once, and reads each key tile (K and V) once per query
// tile at or below it, T/64 times on average: about 4n(2 + T/32) bytes requested, the re-reads
// mostly served by the L2 cache. §12 moves about 10·B·H·T² bytes of P besides its own reads of
// q, k, v; at T = 1024 and d = 64 the two request bytes of the same order, but here no T² array
// exists (memory O(T) per head, not O(T²)) and what is re-read is cached. Bigger query tiles (64
// to 128 rows, as FlashAttention uses) divide the re-reads. Backward: the dq kernel 6·pairs·d
// FLOPs (S, dP, dq), the dk/dv kernel 8·pairs·d (S, dv, dP, dk): 14·pairs·d against §12's 8,
// the price of not storing P.
// =============================================================================================

constexpr int flash_tile = 32;   // queries per block and keys per tile: one warp per block

// std::min and std::max are host functions to nvcc: these two are for the kernels.
static __device__ int smaller(int a, int b) { return a < b ? a : b; }
static __device__ int larger(int a, int b) { return a > b ? a : b; }

static __global__ void flash_attention_forward_kernel(const float* qkv, float* out, float* lse,
                                                      int T, int D, int H, float scale) {
    __shared__ float Ks[flash_tile][head_dim_max], Vs[flash_tile][head_dim_max];
    const int u = blockIdx.y, b = u / H, h = u % H, d = D / H;
    const int i0 = blockIdx.x * flash_tile, i = i0 + threadIdx.x;
    const bool active = i < T;
    float q[head_dim_max], o[head_dim_max];
    for (int c = 0; c < d; ++c) {   // s folded into q: S_ij = (s·q_i)·k_j
        q[c] = active ? scale * qkv[qkv_row(b, i, T, D) + h * d + c] : 0.0f;
        o[c] = 0;
    }
    float m = -INFINITY, l = 0;
    const int keys_end =
        smaller(T, i0 + flash_tile);   // the block's last query sees keys < keys_end
    for (int j0 = 0; j0 < keys_end; j0 += flash_tile) {
        for (int e = threadIdx.x; e < flash_tile * d; e += flash_tile) {
            const int r = e / d, c = e % d, j = j0 + r;
            Ks[r][c] = j < T ? qkv[qkv_row(b, j, T, D) + D + h * d + c] : 0.0f;
            Vs[r][c] = j < T ? qkv[qkv_row(b, j, T, D) + 2 * D + h * d + c] : 0.0f;
        }
        __syncthreads();                                                 // the tiles are complete
        const int keys = active ? smaller(flash_tile, i - j0 + 1) : 0;   // j = j0 + r ≤ i
        if (keys > 0) {
            float s[flash_tile], tile_max = -INFINITY;
            for (int r = 0; r < keys; ++r) {
                s[r] = 0;
                for (int c = 0; c < d; ++c) s[r] += q[c] * Ks[r][c];
                tile_max = fmaxf(tile_max, s[r]);
            }
            const float m_new = fmaxf(m, tile_max), rescale = expf(m - m_new);   // e^−∞ = 0
            l *= rescale;
            for (int c = 0; c < d; ++c) o[c] *= rescale;
            for (int r = 0; r < keys; ++r) {
                const float p = expf(s[r] - m_new);
                l += p;
                for (int c = 0; c < d; ++c) o[c] += p * Vs[r][c];
            }
            m = m_new;
        }
        __syncthreads();   // done with the tiles before the next ones overwrite them
    }
    if (!active) return;
    for (int c = 0; c < d; ++c) out[(std::size_t(b) * T + i) * D + h * d + c] = o[c] / l;
    lse[std::size_t(u) * T + i] = m + logf(l);
}

// D_i = do_i·o_i for every row i of every pair u = b·H + h: one thread per row.
static __global__ void flash_attention_rowdot_kernel(const float* out, const float* dout,
                                                     float* Drow, int B, int T, int D, int H) {
    const int row = blockIdx.x * blockDim.x + threadIdx.x;   // u·T + i
    if (row >= B * H * T) return;
    const int u = row / T, i = row % T, b = u / H, h = u % H, d = D / H;
    const std::size_t at = (std::size_t(b) * T + i) * D + h * d;
    float s = 0;
    for (int c = 0; c < d; ++c) s += dout[at + c] * out[at + c];
    Drow[row] = s;
}

// dq_i += s·Σ_{j ≤ i} dS_ij·k_j: the forward's mapping, one query per thread.
static __global__ void flash_attention_dq_kernel(const float* qkv, const float* dout,
                                                 const float* lse, const float* Drow, float* dqkv,
                                                 int T, int D, int H, float scale) {
    __shared__ float Ks[flash_tile][head_dim_max], Vs[flash_tile][head_dim_max];
    const int u = blockIdx.y, b = u / H, h = u % H, d = D / H;
    const int i0 = blockIdx.x * flash_tile, i = i0 + threadIdx.x;
    const bool active = i < T;
    float q[head_dim_max], g[head_dim_max], dq[head_dim_max];
    for (int c = 0; c < d; ++c) {
        q[c] = active ? scale * qkv[qkv_row(b, i, T, D) + h * d + c] : 0.0f;
        g[c] = active ? dout[(std::size_t(b) * T + i) * D + h * d + c] : 0.0f;
        dq[c] = 0;
    }
    const float L = active ? lse[std::size_t(u) * T + i] : 0.0f,
                Di = active ? Drow[std::size_t(u) * T + i] : 0.0f;
    const int keys_end = smaller(T, i0 + flash_tile);
    for (int j0 = 0; j0 < keys_end; j0 += flash_tile) {
        for (int e = threadIdx.x; e < flash_tile * d; e += flash_tile) {
            const int r = e / d, c = e % d, j = j0 + r;
            Ks[r][c] = j < T ? qkv[qkv_row(b, j, T, D) + D + h * d + c] : 0.0f;
            Vs[r][c] = j < T ? qkv[qkv_row(b, j, T, D) + 2 * D + h * d + c] : 0.0f;
        }
        __syncthreads();
        const int keys = active ? smaller(flash_tile, i - j0 + 1) : 0;
        for (int r = 0; r < keys; ++r) {
            float s = 0, dp = 0;
            for (int c = 0; c < d; ++c) {
                s += q[c] * Ks[r][c];
                dp += g[c] * Vs[r][c];
            }
            const float ds = expf(s - L) * (dp - Di);   // dS_ij = P_ij·(dP_ij − D_i)
            for (int c = 0; c < d; ++c) dq[c] += ds * Ks[r][c];
        }
        __syncthreads();
    }
    if (!active) return;
    for (int c = 0; c < d; ++c) dqkv[qkv_row(b, i, T, D) + h * d + c] += scale * dq[c];
}

// dk_j += s·Σ_{i ≥ j} dS_ij·q_i and dv_j += Σ_{i ≥ j} P_ij·do_i: one key per thread; the block
// walks the query tiles from its own (the diagonal) down to T.
static __global__ void flash_attention_dkv_kernel(const float* qkv, const float* dout,
                                                  const float* lse, const float* Drow, float* dqkv,
                                                  int T, int D, int H, float scale) {
    __shared__ float Qs[flash_tile][head_dim_max], Gs[flash_tile][head_dim_max];
    __shared__ float Ls[flash_tile], Ds[flash_tile];
    const int u = blockIdx.y, b = u / H, h = u % H, d = D / H;
    const int j0 = blockIdx.x * flash_tile, j = j0 + threadIdx.x;
    const bool active = j < T;
    float k[head_dim_max], v[head_dim_max], dk[head_dim_max], dv[head_dim_max];
    for (int c = 0; c < d; ++c) {
        k[c] = active ? qkv[qkv_row(b, j, T, D) + D + h * d + c] : 0.0f;
        v[c] = active ? qkv[qkv_row(b, j, T, D) + 2 * D + h * d + c] : 0.0f;
        dk[c] = dv[c] = 0;
    }
    for (int i0 = j0; i0 < T; i0 += flash_tile) {
        for (int e = threadIdx.x; e < flash_tile * d; e += flash_tile) {
            const int r = e / d, c = e % d, i = i0 + r;
            Qs[r][c] = i < T ? scale * qkv[qkv_row(b, i, T, D) + h * d + c] : 0.0f;
            Gs[r][c] = i < T ? dout[(std::size_t(b) * T + i) * D + h * d + c] : 0.0f;
        }
        const int i = i0 + int(threadIdx.x);
        Ls[threadIdx.x] = i < T ? lse[std::size_t(u) * T + i] : 0.0f;
        Ds[threadIdx.x] = i < T ? Drow[std::size_t(u) * T + i] : 0.0f;
        __syncthreads();
        const int first = active ? larger(0, j - i0) : flash_tile;   // queries i = i0 + r ≥ j
        const int last = smaller(flash_tile, T - i0);                // and i < T
        for (int r = first; r < last; ++r) {
            float s = 0, dp = 0;
            for (int c = 0; c < d; ++c) {
                s += Qs[r][c] * k[c];
                dp += Gs[r][c] * v[c];
            }
            const float p = expf(s - Ls[r]), ds = p * (dp - Ds[r]);
            for (int c = 0; c < d; ++c) {
                dv[c] += p * Gs[r][c];
                dk[c] += ds * Qs[r][c];   // Qs holds s·q: dk_j = s·Σ dS_ij·q_i
            }
        }
        __syncthreads();
    }
    if (!active) return;
    for (int c = 0; c < d; ++c) {
        dqkv[qkv_row(b, j, T, D) + D + h * d + c] += dk[c];
        dqkv[qkv_row(b, j, T, D) + 2 * D + h * d + c] += dv[c];
    }
}

static void check_flash_sizes(int B, int T, int D, int H) {
    check_attention_sizes(B, T, D, H, "flash_attention");
    check_arguments(D / H <= head_dim_max, "flash_attention: needs a head size D/H <= 64");
}

// qkv [B, T, 3D] → out [B, T, D] and lse [B·H, T] (each row's log Σ_j e^(S_ij), for the backward).
void cuda_flash_attention_forward(const float* qkv, float* out, float* lse, int B, int T, int D,
                                  int H) {
    check_flash_sizes(B, T, D, H);
    if (B == 0) return;
    const float scale = 1 / std::sqrt(float(D / H));
    LAUNCH(flash_attention_forward_kernel, dim3(blocks_for(T, flash_tile), unsigned(B * H)),
           flash_tile)
    (qkv, out, lse, T, D, H, scale);
    CUDA_CHECK(cudaGetLastError());
}

// dqkv [B, T, 3D] += the gradients of q, k, v, from the forward's out and lse and dout [B, T, D].
void cuda_flash_attention_backward(const float* qkv, const float* out, const float* lse,
                                   const float* dout, float* dqkv, int B, int T, int D, int H) {
    check_flash_sizes(B, T, D, H);
    if (B == 0) return;
    const float scale = 1 / std::sqrt(float(D / H));
    DeviceScratch Drow(B * H * T);
    LAUNCH(flash_attention_rowdot_kernel, blocks_for(B * H * T, elementwise_block),
           elementwise_block)
    (out, dout, Drow.p, B, T, D, H);
    CUDA_CHECK(cudaGetLastError());
    const dim3 grid(blocks_for(T, flash_tile), unsigned(B * H));
    LAUNCH(flash_attention_dq_kernel, grid, flash_tile)
    (qkv, dout, lse, Drow.p, dqkv, T, D, H, scale);
    CUDA_CHECK(cudaGetLastError());
    LAUNCH(flash_attention_dkv_kernel, grid, flash_tile)
    (qkv, dout, lse, Drow.p, dqkv, T, D, H, scale);
    CUDA_CHECK(cudaGetLastError());
}
