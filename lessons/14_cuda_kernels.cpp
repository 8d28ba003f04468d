// Lesson 14: from a CPU loop to a CUDA kernel.
//
// Every tensor op of the engine is a loop over numbers (engine.cpp, Part 2). On a GPU the loop
// disappears: one launch starts thousands of threads, and each computes the loop's body for
// its own index. kernels.cu holds those kernels, each next to the CPU loop it replaces. This
// lesson runs them here, on the CPU, through cuda_emu.h: an emulator that runs every CUDA
// thread as a fiber and checks what a GPU would not tell you (a missing bounds check, a missing
// __syncthreads(), a deadlock). There is no GPU in this lesson, so nothing here is timed. The
// H100 figures below are NVIDIA's paper numbers, not measurements:
//
//   HBM3 bandwidth  3.35 TB/s        FP32 without tensor cores  67 TFLOP/s
//
//   1. Thread indexing: the grid, the block, a thread's global index, the bounds check.
//   2. Coalescing: the addresses one warp touches, recorded in the emulator.
//   3. Matrix multiplication v1, v2, v3: global-memory bytes per FLOP, and what they allow; why
//      they round like a loop of s = s + a·b and the engine's matmul like one of fma(a, b, s).
//   4. Reductions: a tree in shared memory, and warp shuffles.
//   5. Softmax + cross-entropy fused: one block per row.
//   6. The emulator catches a missing __syncthreads(): right in one schedule, wrong in others.
//   7. What the emulator cannot see.
//   8. The roofline of every kernel of this lesson (paper numbers).
//   9. The engine's tensors on the device: one training loop, run on cpu and on cuda.
//
// Run it:             make lesson N=14
// Grade the homework: make check N=14        (each exercise runs under several schedules)

#include "lesson.h"

#include "cuda_emu.h"   // CUDA for the CPU: __global__, __shared__, LAUNCH, cudaMalloc, ...

#include <cctype>
#include <set>
#include <string>
#include <vector>

// kernels.cu's wrappers are declared in engine.h; cuda_check needs CUDA's error type, so here.
void cuda_check(cudaError_t status, const char* call, const char* file, int line);

#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)

// "239 us", "10.3 ms": a time in the unit that reads best.
static std::string duration(double seconds) {
    char s[32];
    if (seconds < 1e-3) std::snprintf(s, sizeof s, "%.1f us", seconds * 1e6);
    else std::snprintf(s, sizeof s, "%.2f ms", seconds * 1e3);
    return s;
}

// The H100's paper numbers (NVIDIA's data sheet, H100 SXM). Not measured: there is no GPU here.
constexpr double h100_bytes_per_s = 3.35e12;   // HBM3
constexpr double h100_flops_per_s = 67e12;     // FP32, CUDA cores (no tensor cores)

// Device memory: engine.h's DeviceBuffer<T> holds T[n], allocated by cudaMalloc (through
// cuda_malloc) and freed at the end of its scope; lesson.h's to_device and to_host copy a vector
// into it and back with cudaMemcpy. A fresh one is all NaN (cuda_emu fills cudaMalloc'ed memory
// with 0xFF bytes), so a value nobody wrote shows up.

// A tensor's numbers as floats (the kernels compute in float; so does this lesson's engine).
static std::vector<float> floats(const std::vector<real>& v) {
    return std::vector<float>(v.begin(), v.end());
}

static double max_abs_diff(const std::vector<float>& a, const std::vector<real>& b) {
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        worst = std::max(worst, std::fabs(double(a[i]) - double(b[i])));
    return worst;
}
static double max_abs(const std::vector<real>& v) {
    double m = 0;
    for (real x : v) m = std::max(m, std::fabs(double(x)));
    return m;
}

// An error message with its addresses (different in every run) replaced by "0x...".
static std::string without_addresses(std::string s) {
    for (std::size_t at = s.find("0x"); at != std::string::npos; at = s.find("0x", at + 3)) {
        std::size_t end = at + 2;
        while (end < s.size() && std::isxdigit(static_cast<unsigned char>(s[end]))) ++end;
        s.replace(at, end - at, "0x...");
    }
    return s;
}

// ---------------------------------------------------------------------------------------------
// 1. Thread indexing. The CPU loop of an elementwise op (engine.cpp §2.3, unary()):
//
//     for (i = 0; i < n; ++i) o[i] = f(in[i]);
//
// becomes a kernel, the loop's body with the loop removed (kernels.cu §1.4):
//
//     __global__ void relu_kernel(const float* x, float* y, int n) {
//         const int i = blockIdx.x * blockDim.x + threadIdx.x;   // this thread's element
//         if (i < n) y[i] = x[i] > 0 ? x[i] : 0;                  // the bounds check
//     }
//     relu_kernel<<<(n + 255) / 256, 256>>>(x, y, n);            // LAUNCH(...) here
//
// A launch starts a grid of gridDim.x blocks of blockDim.x threads. A thread knows its block
// (blockIdx.x) and its place in the block (threadIdx.x); together they number the threads
// 0, 1, 2, ... across the grid. Blocks come in whole sizes, so the grid is rounded up to
// ⌈n/256⌉ blocks, and the last block's threads past n must do nothing: that is the `if (i < n)`.
// Matrices use two dimensions the same way: block (16, 16), grid (⌈N/16⌉, ⌈M/16⌉), and
// col = blockIdx.x·16 + threadIdx.x, row = blockIdx.y·16 + threadIdx.y (kernels.cu §2, v1).
// ---------------------------------------------------------------------------------------------

// Every launched thread records who it is; the ones with i < n also do the relu.
static __global__ void whoami_kernel(int* block, int* thread, const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    block[i] = blockIdx.x;   // these arrays have a slot for every thread
    thread[i] = threadIdx.x;
    if (i < n) y[i] = x[i] > 0 ? x[i] : 0.0f;
}

// The same relu without the bounds check: the last block's extra threads read and write past
// the ends of x and y. (Its n goes unused: that is the bug.)
static __global__ void relu_unchecked_kernel(const float* x, float* y, int /*n*/) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = x[i] > 0 ? x[i] : 0.0f;
}

static void thread_indexing() {
    heading("1. From a loop to a kernel: grid, block, global index, bounds check");
    const int n = 10, block = 4, grid = (n + block - 1) / block;
    std::vector<float> x(n);
    for (int i = 0; i < n; ++i) x[std::size_t(i)] = float(i % 3 == 0 ? -i : i);
    DeviceBuffer<float> X = to_device(x), Y(static_cast<std::size_t>(n));
    DeviceBuffer<int> blocks(static_cast<std::size_t>(grid * block)),
        threads(static_cast<std::size_t>(grid * block));
    LAUNCH(whoami_kernel, grid, block)(blocks.data(), threads.data(), X.data(), Y.data(), n);
    const std::vector<int> b = to_host(blocks), t = to_host(threads);
    const std::vector<float> y = to_host(Y);
    std::printf(
        "n = %d elements, blocks of %d threads: grid = ceil(%d/%d) = %d blocks, %d threads\n\n", n,
        block, n, block, grid, grid * block);
    std::printf("  %10s  %11s  %22s  %8s  %8s\n", "blockIdx.x", "threadIdx.x",
                "i = blockIdx*4 + thread", "x[i]", "y[i]");
    for (int i = 0; i < grid * block; ++i) {
        if (i < n)
            std::printf("  %10d  %11d  %22d  %8g  %8g\n", b[std::size_t(i)], t[std::size_t(i)], i,
                        double(x[std::size_t(i)]), double(y[std::size_t(i)]));
        else
            std::printf("  %10d  %11d  %22d  %8s  %8s   i >= n: does nothing\n", b[std::size_t(i)],
                        t[std::size_t(i)], i, "-", "-");
    }

    // Without the `if (i < n)`, threads 10 and 11 write y[10] and y[11], past the end of y.
    // cuda_emu guards each allocation with NaN bytes and reports a write there after the launch.
    std::printf("\nThe same kernel without `if (i < n)`:\n");
    if (cuda_emu::guard_bytes == 0) {
        std::printf("  (skipped: built with AddressSanitizer, whose redzones would stop the "
                    "program here)\n");
    } else {
        try {
            LAUNCH(relu_unchecked_kernel, grid, block)(X.data(), Y.data(), n);
            std::printf("  no error: unexpected\n");
        } catch (const std::exception& e) {
            std::printf("  %s\n", without_addresses(e.what()).c_str());
        }
    }
    std::printf(
        "A GPU often does not complain at all: the bytes past y may belong to another tensor.\n"
        "(On a GPU, NVIDIA's compute-sanitizer finds such writes.)\n");

    // The real thing: kernels.cu's relu and gelu on an odd size, against the engine's CPU loops.
    const int big = 100003, blocks_needed = (big + 255) / 256;
    Rng rng(14);
    const Tensor xt = randn({big}, rng, 3);
    DeviceBuffer<float> Xb = to_device(floats(xt.values())), Yb(static_cast<std::size_t>(big));
    std::printf(
        "\nkernels.cu on n = %d: %d blocks of 256 threads; the last block has %d threads with\n"
        "work and %d idle.\n",
        big, blocks_needed, big - (blocks_needed - 1) * 256, blocks_needed * 256 - big);
    cuda_relu_forward(Xb.data(), Yb.data(), big);
    const double relu_difference = max_abs_diff(to_host(Yb), relu(xt).values());
    std::printf("  cuda_relu_forward vs the engine's relu():  max |difference| = %.3g\n",
                relu_difference);
    cuda_gelu_forward(Xb.data(), Yb.data(), big);
    const double gelu_difference = max_abs_diff(to_host(Yb), gelu(xt).values());
    std::printf("  cuda_gelu_forward vs the engine's gelu():  max |difference| = %.3g\n",
                gelu_difference);
    if (relu_difference == 0 && gelu_difference == 0)
        std::printf(
            "Both 0: the kernel does the CPU loop's float operations in the same order. (On a "
            "GPU,\n"
            "nvcc's tanhf and its fused multiply-adds would change the last bits of gelu.)\n");
    else
        std::printf(
            "Not 0: this build rounds the kernel's float operations unlike the CPU loop.\n");
    std::printf(
        "Cost of relu: it reads 4 bytes and writes 4 per element, for 1 FLOP: 1/8 FLOP per byte.\n"
        "On an H100 (paper): n = 1e8 moves 800 MB, 800e6 / 3.35e12 = %.0f us; the FLOPs alone\n"
        "would take %.1f us. Memory decides.\n",
        8e8 / h100_bytes_per_s * 1e6, 1e8 / h100_flops_per_s * 1e6);
}

// ---------------------------------------------------------------------------------------------
// 2. Coalescing. The 32 consecutive threads of a block form a warp, and a warp issues each load
// as one instruction for all 32 lanes. The memory system serves it in 32-byte sectors (four per
// 128-byte cache line). When the 32 lanes read 32 consecutive floats, that is 128 bytes: 4
// sectors, every byte used. When neighbouring lanes read addresses far apart, each lane needs a
// sector of its own: 32 sectors, 1024 bytes moved for 128 bytes used.
// The kernels below record, for each thread, the byte offset it loads from (relative to the
// array's start; cudaMalloc'ed memory starts on a 256-byte boundary on a GPU). The host then
// counts the sectors that warp 0 of block 0 touches.
// ---------------------------------------------------------------------------------------------

static int byte_offset(const float* p, const float* base) {
    return int(reinterpret_cast<const char*>(p) - reinterpret_cast<const char*>(base));
}

// Elementwise, one thread per element (section 1): lane l reads x[i0 + l].
static __global__ void copy_traced_kernel(const float* x, float* y, int* offset, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    offset[i] = byte_offset(&x[i], x);
    y[i] = x[i];
}

// Row sums with one thread per row: the obvious port of `for r: for j: s += X[r][j]`. At each j,
// lane r reads X[r][j]: neighbouring lanes are a whole row (cols floats) apart. Offsets at j = 0.
static __global__ void row_sums_traced_kernel(const float* X, float* sums, int* offset, int rows,
                                              int cols) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    offset[r] = byte_offset(&X[r * cols], X);
    float s = 0;
    for (int j = 0; j < cols; ++j) s += X[r * cols + j];
    sums[r] = s;
}

// Column sums with one thread per column (the bias gradient, kernels.cu §1.2): at each row i,
// lane j reads X[i][j], neighbouring floats of one row. Offsets at i = 0.
static __global__ void column_sums_traced_kernel(const float* X, float* sums, int* offset, int rows,
                                                 int cols) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    offset[j] = byte_offset(&X[j], X);
    float s = 0;
    for (int i = 0; i < rows; ++i) s += X[i * cols + j];
    sums[j] = s;
}

// matmul v1's two loads at k = 0, for blocks of 16 × 16 threads (kernels.cu §2): thread
// (tx, ty) reads A[row][0] and B[0][col]. Its number in the block is ty·16 + tx, so warp 0 is
// the rows ty = 0 and ty = 1 of the block.
static __global__ void matmul_v1_traced_kernel(const float* A, const float* B, int* a_offset,
                                               int* b_offset, int M, int K, int N) {
    const int row = blockIdx.y * blockDim.y + threadIdx.y,
              col = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = threadIdx.y * blockDim.x + threadIdx.x;
    if (blockIdx.x != 0 || blockIdx.y != 0 || row >= M || col >= N || K == 0)
        return;   // block (0, 0) only
    a_offset[t] = byte_offset(&A[row * K + 0], A);
    b_offset[t] = byte_offset(&B[0 * N + col], B);
}

// One line of the table: the offsets of some lanes, then the sectors and bytes of the warp.
static void print_warp(const char* what, const std::vector<int>& offset) {
    std::set<int> sectors, floats_used;
    for (int lane = 0; lane < 32; ++lane) sectors.insert(offset[std::size_t(lane)] / 32);
    for (int lane = 0; lane < 32; ++lane) floats_used.insert(offset[std::size_t(lane)]);
    std::printf("  %-27s", what);
    for (int lane : {0, 1, 2, 15, 16, 31}) std::printf(" %5d", offset[std::size_t(lane)]);
    const int moved = int(sectors.size()) * 32;
    std::printf("  %7zu  %5d  %4zu  %8.2f\n", sectors.size(), moved, floats_used.size() * 4,
                moved / 32.0);
}

static void coalescing() {
    heading("2. Coalescing: the byte offsets one warp loads, recorded in the emulator");
    const int rows = 64, cols = 45;   // a [64, 45] matrix: rows are 180 bytes apart
    Rng rng(2);
    const Tensor xt = randn({rows, cols}, rng);
    const std::size_t count = std::size_t(rows) * cols;
    DeviceBuffer<float> X = to_device(floats(xt.values())), Y(count), sums(count);
    DeviceBuffer<int> offset(count), offset_b(count);

    std::printf("  %-27s %5s %5s %5s %5s %5s %5s  %7s  %5s  %4s  %8s\n", "load (warp 0 of block 0)",
                "lane0", "1", "2", "15", "16", "31", "sectors", "moved", "used", "per load");
    const int copy_blocks = (rows * cols + 255) / 256;
    LAUNCH(copy_traced_kernel, copy_blocks, 256)(X.data(), Y.data(), offset.data(), rows * cols);
    print_warp("elementwise x[i]", to_host(offset));
    LAUNCH(row_sums_traced_kernel, 1, 64)(X.data(), sums.data(), offset.data(), rows, cols);
    print_warp("one thread per row X[r][0]", to_host(offset));
    LAUNCH(column_sums_traced_kernel, 1, 64)(X.data(), sums.data(), offset.data(), rows, cols);
    print_warp("one thread per col X[0][j]", to_host(offset));
    // v1 on A [64, 45] times B [45, 64]: the same numbers viewed as both.
    const dim3 grid(4, 4), block(16, 16);
    float* const x = X.data();
    LAUNCH(matmul_v1_traced_kernel, grid, block)
    (x, x, offset.data(), offset_b.data(), rows, cols, rows);
    print_warp("matmul v1 A[row][k]", to_host(offset));
    print_warp("matmul v1 B[k][col]", to_host(offset_b));
    std::printf(
        "(moved: bytes the warp's load brings in, 32 per sector; used: bytes of the distinct "
        "floats\n"
        "asked for; per load: moved / 32 lanes. 4 per load is a perfect stream; 32 wastes 7/8 of\n"
        "every sector; below 4, lanes share values and one fetch serves several threads.)\n\n");
    std::printf(
        "Row sums with one thread per row fetch 8x the bytes they use: each lane's float sits in\n"
        "its own sector. The column sums read the same matrix with perfect coalescing. That is\n"
        "why kernels.cu gives each row a whole block (sections 4 and 5), whose lanes walk along\n"
        "the row together. matmul v1's A load is a broadcast (16 lanes read one float), and its B\n"
        "load is half a line read twice: both are cheap, and yet v1 is slow, for the next "
        "reason.\n");
}

// ---------------------------------------------------------------------------------------------
// 3. Matrix multiplication. C[M, N] = A[M, K]·B[K, N] does 2MKN FLOPs (a multiply-add is 2)
// on 4(MK + KN + MN) bytes of inputs and outputs: for large sizes, hundreds of FLOPs per byte.
// Whether a kernel gets there depends on how often it fetches each value again from global
// memory (kernels.cu §2):
//     v1  one thread per output: each thread reads a row of A and a column of B.
//         Loads from global memory: 2MKN floats, ¼ FLOP per byte.
//     v2  16 × 16 tiles in shared memory: the block loads a tile of A and one of B from global
//         memory once, and each value is then read by 16 threads from shared memory. Global loads
//         2MKN/16 floats: 4 FLOP/byte.
//     v3  each thread computes 4 × 4 outputs of a 64 × 64 block tile, from registers: global
//         loads MKN/32 (16 FLOP/byte), shared loads ½ per multiply-add instead of 2.
// First, are they right? Each is compared with the engine's matmul and with two plain loops
// that differ only in rounding: s = s + a·b rounds the product, then the sum (two roundings per
// step); s = fma(a, b, s), a fused multiply-add, rounds once. A float sum of the same products
// in the same order, rounded the same way, gives the same bits.
// ---------------------------------------------------------------------------------------------
// Three CPU references for the same product, each output summed over k = 0, 1, 2, ... in float:
//     separate  s = s + a·b          two roundings per step (after the multiply, after the add)
//     fused     s = fma(a, b, s)     one rounding per step: what the engine's micro-kernel does
// and, in double, the exact-ish product, to see how far each rounding leaves us from the truth.
struct References {
    std::vector<real> separate, fused;
    std::vector<double> exact;
};

static References reference_products(const Tensor& a, const Tensor& b) {
    const int M = a.dim(0), K = a.dim(1), N = b.dim(1);
    References r{std::vector<real>(std::size_t(M) * N), std::vector<real>(std::size_t(M) * N),
                 std::vector<double>(std::size_t(M) * N)};
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float separate = 0, fused = 0;
            double exact = 0;
            for (int k = 0; k < K; ++k) {
                const float x = float(a.at({i, k})), y = float(b.at({k, j}));
                separate = separate + x * y;   // -ffp-contract=off: the compiler may not fuse this
                fused = std::fma(x, y, fused);
                exact += double(x) * double(y);
            }
            r.separate[std::size_t(i) * N + j] = separate;
            r.fused[std::size_t(i) * N + j] = fused;
            r.exact[std::size_t(i) * N + j] = exact;
        }
    return r;
}

static double max_error(const std::vector<real>& v, const std::vector<double>& exact) {
    double worst = 0;
    for (std::size_t i = 0; i < v.size(); ++i)
        worst = std::max(worst, std::fabs(double(v[i]) - exact[i]));
    return worst;
}

// What the table of matmul_versions() shows, said from its numbers (a build may change which line
// applies: `make valgrind` builds the engine with two roundings per step, engine.cpp §2.4).
static void explain_matmul_roundings(double kernels_vs_separate, double kernels_vs_engine,
                                     double engine_vs_separate, double engine_vs_fused,
                                     double spacing) {
    if (kernels_vs_separate == 0)
        std::printf(
            "\nv1, v2 and v3 give the loop s = s + a*b to the last bit: each adds an output's K\n"
            "products in the order k = 0, 1, 2, ... and rounds twice per step, after the multiply\n"
            "and after the add (the zeros that pad a partial tile add 0*0 = 0, which changes\n"
            "nothing). They differ in where the operands come from, not in the arithmetic.\n");
    else
        std::printf(
            "\nv1, v2 and v3 differ from the loop s = s + a*b by up to %.3g: this build rounds\n"
            "them differently (were they compiled with fused multiply-adds?).\n",
            kernels_vs_separate);
    if (kernels_vs_engine == 0)
        std::printf(
            "They also equal the engine's matmul(), which rounds the same way in this build.\n");
    else if (engine_vs_fused == 0)
        std::printf(
            "The engine's matmul() differs from them by up to %.3g (%.1f float spacings at the\n"
            "largest |C|) because its micro-kernel (engine.cpp §2.4) does each step as std::fma:\n"
            "a*b + s with one rounding. It equals the fma loop bit for bit. Same order, one\n"
            "rounding fewer per step: that is the whole difference, and the last row shows\n"
            "both are about equally close to the exact product.\n",
            kernels_vs_engine, kernels_vs_engine / spacing);
    else
        std::printf(
            "The engine's matmul() differs from them by up to %.3g, and from both loops (%.3g\n"
            "and %.3g): this build sums in another order or rounding.\n",
            kernels_vs_engine, engine_vs_separate, engine_vs_fused);
    std::printf(
        "On a GPU, nvcc fuses a*b + s into one FMA instruction by default (its -fmad=true),\n"
        "so compiled there the kernels would round like the fma loop instead.\n");
}

static void matmul_versions() {
    heading("3. Matrix multiplication v1, v2, v3: bytes from global memory per FLOP");
    const int M = 67, K = 45, N = 81;   // no size a multiple of 16 or 64: partial tiles everywhere
    Rng rng(3);
    const Tensor a = randn({M, K}, rng), b = randn({K, N}, rng);
    const Tensor c = matmul(a, b);   // the engine's CPU matmul, engine.cpp §2.4
    const References ref = reference_products(a, b);
    const double largest = max_abs(c.values());
    const double spacing =
        double(std::nextafter(float(largest), INFINITY)) - double(float(largest));
    DeviceBuffer<float> A = to_device(floats(a.values())), B = to_device(floats(b.values())),
                        C(std::size_t(M) * N);
    std::printf(
        "C = A*B for A [%d, %d], B [%d, %d] (largest |C| = %.3g, where floats are %.3g apart).\n"
        "Largest |difference| from each CPU reference:\n\n",
        M, K, K, N, largest, spacing);
    std::printf("  %-18s  %16s  %16s  %16s   %s\n", "", "s = s + a*b", "s = fma(a, b, s)",
                "engine matmul()", "launch");
    struct Version {
        const char* name;
        void (*run)(const float*, const float*, float*, int, int, int);
        const char* grid;
    };
    const Version versions[] = {
        {"v1", cuda_matmul_v1, "6 x 5 blocks of 16 x 16 threads"},
        {"v2", cuda_matmul_v2, "6 x 5 blocks of 16 x 16 threads"},
        {"v3", cuda_matmul_v3, "2 x 2 blocks of 16 x 16 threads, 64 x 64 outputs each"}};
    double kernels_vs_separate = 0, kernels_vs_engine = 0;
    for (const Version& v : versions) {
        CUDA_CHECK(cudaMemset(C.data(), 0xFF, C.bytes()));   // NaN again: no stale results
        v.run(A.data(), B.data(), C.data(), M, K, N);
        const std::vector<float> out = to_host(C);
        const double vs_separate = max_abs_diff(out, ref.separate),
                     vs_engine = max_abs_diff(out, c.values());
        kernels_vs_separate = std::max(kernels_vs_separate, vs_separate);
        kernels_vs_engine = std::max(kernels_vs_engine, vs_engine);
        std::printf("  %-18s  %16.3g  %16.3g  %16.3g   %s\n", v.name, vs_separate,
                    max_abs_diff(out, ref.fused), vs_engine, v.grid);
    }
    const double engine_vs_separate = max_abs_diff(floats(c.values()), ref.separate);
    const double engine_vs_fused = max_abs_diff(floats(c.values()), ref.fused);
    std::printf("  %-18s  %16.3g  %16.3g  %16s\n", "engine matmul()", engine_vs_separate,
                engine_vs_fused, "-");
    std::printf("  %-18s  %16.3g  %16.3g  %16.3g\n", "exact (in double)",
                max_error(ref.separate, ref.exact), max_error(ref.fused, ref.exact),
                max_error(c.values(), ref.exact));
    explain_matmul_roundings(kernels_vs_separate, kernels_vs_engine, engine_vs_separate,
                             engine_vs_fused, spacing);

    // The counts at a size where they matter, on paper.
    const double n = 4096, mkn = n * n * n, flops = 2 * mkn;
    struct Row {
        const char* name;
        double global_bytes, shared_loads_per_fma;
    };
    const Row table[] = {{"v1", 4 * 2 * mkn, 0},
                         {"v2", 4 * 2 * mkn / 16, 2},
                         {"v3", 4 * mkn / 32, 0.5},
                         {"each value once", 4 * 3 * n * n, 0}};
    std::printf("\nM = K = N = 4096: %.3g FLOPs. H100 on paper: %.2f ms of FP32 arithmetic, and\n"
                "memory keeps up only above %.0f FLOPs per byte (67e12 / 3.35e12).\n\n",
                flops, flops / h100_flops_per_s * 1e3, h100_flops_per_s / h100_bytes_per_s);
    std::printf("  %-16s  %14s  %11s  %12s  %14s  %12s  %10s\n", "version", "global bytes",
                "bytes/FLOP", "FLOPs/byte", "shared loads", "memory time", "bound");
    std::printf("  %-16s  %14s  %11s  %12s  %14s  %12s  %10s\n", "", "", "", "", "per mult-add",
                "(paper)", "");
    for (const Row& r : table) {
        const double t_memory = r.global_bytes / h100_bytes_per_s,
                     t_compute = flops / h100_flops_per_s;
        std::printf("  %-16s  %14.3g  %11.4f  %12.1f  %14.1f  %12s  %10s\n", r.name, r.global_bytes,
                    r.global_bytes / flops, flops / r.global_bytes, r.shared_loads_per_fma,
                    duration(t_memory).c_str(), t_memory > t_compute ? "memory" : "compute");
    }
    std::printf(
        "\nThe bytes are the loads each kernel issues. v1's repeats mostly hit the L1 and L2\n"
        "caches, so a real v1 beats its line here, but it stays far behind v3. v3 at 16 FLOPs per\n"
        "byte is close to the 20 where an H100 stops waiting on memory. Libraries such as cuBLAS\n"
        "go further (bigger tiles, tensor cores).\n");
}

// ---------------------------------------------------------------------------------------------
// 4. Reductions. Σ x over n numbers: on the CPU one loop and one accumulator. On a GPU each block
// sums its share (a grid-stride loop, then the block's threads combine), and a second launch of
// one block sums the per-block results (kernels.cu §3). Within a block:
//     v1  a tree in shared memory: 256 → 128 → ... → 1, a __syncthreads() after each level.
//     v2  warp shuffles: __shfl_down_sync(mask, v, d) hands each lane the v of the lane d above
//         it, register to register. Five steps (d = 16, 8, 4, 2, 1) fold a warp's 32 values into
//         lane 0, with no shared memory and no barrier. Then lane 0 of each warp leaves its sum
//         in shared memory, one __syncthreads(), and warp 0 folds those.
// __shfl_xor_sync(mask, v, d) instead swaps v between lanes whose numbers differ in bit d: after
// the same five steps every lane holds the total (a butterfly). Softmax needs that: every thread
// of the row needs the row's max and sum.
// ---------------------------------------------------------------------------------------------

// Lane l starts with v = l; after each step of the fold every lane records its v.
static __global__ void fold_trace_kernel(float* trace) {
    const int lane = threadIdx.x;
    float v = float(lane);
    int step = 0;
    for (int d = 16; d > 0; d /= 2, ++step) {
        v += __shfl_down_sync(0xffffffffu, v, d);
        trace[step * 32 + lane] = v;
    }
}

static void reductions() {
    heading("4. Reductions: a tree in shared memory, and warp shuffles");
    DeviceBuffer<float> trace(5 * 32);
    LAUNCH(fold_trace_kernel, 1, 32)(trace.data());
    const std::vector<float> tr = to_host(trace);
    std::printf(
        "One warp, lane l holding l, folded with v += __shfl_down_sync(0xffffffff, v, d):\n\n");
    std::printf("  %8s", "after d");
    const int lanes[] = {0, 1, 2, 3, 7, 15, 16, 31};
    for (int lane : lanes) std::printf("  lane %-3d", lane);
    std::printf("\n  %8s", "start");
    for (int lane : lanes) std::printf("  %8d", lane);
    for (int step = 0, d = 16; step < 5; ++step, d /= 2) {
        std::printf("\n  %8d", d);
        for (int lane : lanes) std::printf("  %8g", double(tr[std::size_t(step * 32 + lane)]));
    }
    std::printf(
        "\nLane 0 ends with 0 + 1 + ... + 31 = 496. A lane whose partner l + d is past lane 31 "
        "gets\nits own value back; the other lanes' results are partial sums that nobody uses.\n");

    const int n = 100003;
    Rng rng(4);
    const Tensor xt = randn({n}, rng);
    const std::vector<float> x = floats(xt.values());
    DeviceBuffer<float> X = to_device(x);
    double exact = 0;
    float running = 0;   // one float accumulator, as a naive CPU loop would keep
    for (float v : x) {
        exact += v;
        running += v;
    }
    const int blocks = std::min((n + 2047) / 2048, 256);
    std::printf(
        "\nSum of n = %d normal numbers (stage 1: %d blocks of 256 threads; stage 2: 1 block):\n",
        n, blocks);
    std::printf("  %-34s  %14s  %14s\n", "", "sum", "- exact sum");
    std::printf("  %-34s  %14.6f  %14s\n", "in double, on the host (exact-ish)", exact, "");
    const double engine = sum(xt).item(), v1 = cuda_sum_v1(X.data(), n),
                 v2 = cuda_sum_v2(X.data(), n);
    std::printf("  %-34s  %14.6f  %14.3g\n", "one float running sum (CPU)", double(running),
                running - exact);
    std::printf("  %-34s  %14.6f  %14.3g\n", "engine sum() (CPU, sums in double)", engine,
                engine - exact);
    std::printf("  %-34s  %14.6f  %14.3g\n", "cuda_sum_v1 (tree, 9 barriers)", v1, v1 - exact);
    std::printf("  %-34s  %14.6f  %14.3g\n", "cuda_sum_v2 (shuffles, 1 barrier)", v2, v2 - exact);
    std::printf(
        "The kernels add in float, in another order than a loop (each thread about 8 values, then\n"
        "trees of pairs), so they round differently: here about as far off as one float running\n"
        "sum, and %.0fx further than the engine's sum(), which accumulates in double. Cost: 4 "
        "bytes\n"
        "and 1 FLOP per element. On an H100 (paper), n = 1e8 takes 400 MB / 3.35 TB/s = %.0f us:\n"
        "memory-bound.\n",
        std::fabs(v1 - exact) / std::fabs(engine - exact), 4e8 / h100_bytes_per_s * 1e6);
}

// ---------------------------------------------------------------------------------------------
// 5. Softmax + cross-entropy, fused (kernels.cu §4; the CPU loop is cross_entropy(), engine.cpp
// §2.6). Each row b needs its max m and its sum s = Σ e^(z − m): two reductions along the row.
// So each row gets one block of 128 threads. Thread t handles the columns t, t + 128, ...,
// which keeps the warp's loads coalesced; the block combines the threads' max and sum with the
// butterfly of section 4. One kernel then writes p = e^(z − m)/s and adds the row's loss
// log s + m − z_label. Separate kernels (max, exp, sum, divide) would each read the [B, C]
// matrix again from global memory; fused, it is read once and p written once.
// ---------------------------------------------------------------------------------------------
static void fused_softmax_cross_entropy() {
    heading("5. Softmax + cross-entropy fused: one block of 128 threads per row");
    const int B = 37, C = 1001;   // C > 128: each thread handles 7 or 8 columns of its row
    Rng rng(5);
    Tensor logits = randn({B, C}, rng, 3);
    std::vector<int> labels(static_cast<std::size_t>(B));
    for (int& y : labels) y = int(rng.below(std::size_t(C)));
    logits.requires_grad_();
    const Tensor loss = cross_entropy(logits, labels);   // the engine: CPU loops
    loss.backward();
    const Tensor p = softmax(logits.detach());

    DeviceBuffer<float> Z = to_device(floats(logits.values())), P(std::size_t(B) * C), L(1);
    DeviceBuffer<int> Y = to_device(labels);
    DeviceBuffer<float> dZ =
        to_device(std::vector<float>(P.size(), 0.0f));   // backward adds into dZ
    cuda_softmax_cross_entropy_forward(Z.data(), Y.data(), P.data(), L.data(), B, C);
    cuda_softmax_cross_entropy_backward(P.data(), Y.data(), dZ.data(), 1.0f, B, C);
    std::printf("logits [%d, %d], %d blocks of 128 threads, against the engine's softmax() and\n"
                "cross_entropy() with backward():\n",
                B, C, B);
    std::printf("  probabilities  max |difference| = %.3g\n", max_abs_diff(to_host(P), p.values()));
    std::printf("  mean loss      %.6f (kernel) vs %.6f (engine), |difference| = %.3g\n",
                double(to_host(L)[0]), double(loss.item()),
                std::fabs(double(to_host(L)[0]) - double(loss.item())));
    std::printf("  gradient       max |difference| = %.3g  ((p - onehot)/B, entries up to %.3g)\n",
                max_abs_diff(to_host(dZ), logits.grad()), max_abs(logits.grad()));

    // A GPT-2-sized output layer: 8 sequences of 1024 tokens, 50257 classes.
    const double rows = 8 * 1024, classes = 50257, bc = rows * classes;
    const double fused_bytes = 8 * bc, unfused_bytes = 4 * bc * (1 + 2 + 1 + 2), flops = 5 * bc;
    std::printf(
        "\nGPT-2's output layer, B = 8 x 1024 tokens, C = 50257 (paper numbers for an H100):\n");
    std::printf("  fused:   reads z, writes p: 8BC = %.2f GB for 5BC = %.2f GFLOP (%.2f "
                "FLOP/byte): %.2f ms\n",
                fused_bytes / 1e9, flops / 1e9, flops / fused_bytes,
                fused_bytes / h100_bytes_per_s * 1e3);
    std::printf(
        "  unfused: max (read), z - m and exp (read, write), sum (read), divide (read, write):\n"
        "           24BC = %.2f GB: %.2f ms, three times the traffic for the same FLOPs.\n",
        unfused_bytes / 1e9, unfused_bytes / h100_bytes_per_s * 1e3);
}

// ---------------------------------------------------------------------------------------------
// 6. A missing __syncthreads(). Threads of a block share __shared__ memory, but nothing orders
// their steps except __syncthreads(): a barrier that every thread of the block must reach before
// any goes on. Forget one, and a thread reads a value that another has not written yet, or has
// already overwritten. On a GPU that shows up sometimes, on some GPUs. cuda_emu makes it show up
// on purpose: a thread runs until it waits, and the schedule picks who runs next: seq the
// lowest-numbered thread, rev the highest, rand any (from a seed). Two bugs, each invisible under
// one schedule:
//   tree sum, no barrier inside the loop: under seq, thread 0 runs all its levels first and adds
//       partial sums that threads 1, 2, ... have not finished. Under rev the higher threads finish
//       first, which happens to be the right order.
//   shift by one (y[t] = s[t − 1]), no barrier between the write and the read: right under seq
//       (thread t − 1 has run), wrong under rev (it has not: NaN).
// ---------------------------------------------------------------------------------------------

static __global__ void tree_sum_kernel(const float* x, float* total, int barrier_in_loop) {
    __shared__ float buf[256];
    const int t = threadIdx.x;
    buf[t] = x[t];
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) buf[t] += buf[t + stride];
        if (barrier_in_loop) __syncthreads();   // the same for every thread: allowed
    }
    if (t == 0) *total = buf[0];
}

// A barrier inside a branch that only half the block takes.
static __global__ void half_barrier_kernel(float* y) {
    const int t = threadIdx.x;
    if (t < 128) __syncthreads();   // threads 128..255 never arrive
    y[t] = 1;
}

static __global__ void shift_kernel(const float* x, float* y, int with_barrier) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = x[t];
    if (with_barrier) __syncthreads();
    y[t] = t > 0 ? s[t - 1] : 0.0f;
}

struct NamedSchedule {
    const char* name;
    cuda_emu::Schedule schedule;
    std::uint64_t seed;
};
static const NamedSchedule every_schedule[] = {{"seq", cuda_emu::Schedule::seq, 1},
                                               {"rev", cuda_emu::Schedule::rev, 1},
                                               {"rand:1", cuda_emu::Schedule::rand, 1},
                                               {"rand:2", cuda_emu::Schedule::rand, 2},
                                               {"rand:3", cuda_emu::Schedule::rand, 3}};

static void missing_barrier() {
    heading("6. The emulator catches a missing __syncthreads()");
    std::vector<float> x(256);
    for (int t = 0; t < 256; ++t) x[std::size_t(t)] = float(t);
    DeviceBuffer<float> X = to_device(x), total(1), Y(256);
    std::printf("One block of 256 threads, x[t] = t. Tree sum: 0 + 1 + ... + 255 = 32640.\n\n");
    std::printf("  %-34s", "kernel");
    for (const NamedSchedule& s : every_schedule) std::printf("  %-11s", s.name);
    std::printf("\n");
    for (int barrier : {1, 0}) {
        std::printf("  %-34s", barrier ? "tree sum" : "tree sum, no barrier in the loop");
        for (const NamedSchedule& s : every_schedule) {
            cuda_emu::set_schedule(s.schedule, s.seed);
            LAUNCH(tree_sum_kernel, 1, 256)(X.data(), total.data(), barrier);
            const float got = to_host(total)[0];
            char cell[32] = "right";
            if (got != 32640) std::snprintf(cell, sizeof cell, "WRONG %g", double(got));
            std::printf("  %-11s", cell);
        }
        std::printf("\n");
    }
    for (int barrier : {1, 0}) {
        std::printf("  %-34s", barrier ? "shift by one" : "shift by one, no barrier");
        for (const NamedSchedule& s : every_schedule) {
            cuda_emu::set_schedule(s.schedule, s.seed);
            LAUNCH(shift_kernel, 1, 256)(X.data(), Y.data(), barrier);
            const std::vector<float> y = to_host(Y);
            int wrong = 0;
            for (int t = 0; t < 256; ++t)
                wrong += y[std::size_t(t)] != (t > 0 ? x[std::size_t(t - 1)] : 0.0f);
            char cell[32] = "right";
            if (wrong) std::snprintf(cell, sizeof cell, "WRONG (%d)", wrong);
            std::printf("  %-11s", cell);
        }
        std::printf("\n");
    }
    cuda_emu::set_schedule(cuda_emu::Schedule::seq);
    std::printf(
        "(WRONG (k): k of the 256 outputs are wrong.) Neither seq nor rev alone catches both\n"
        "bugs; rand catches both. So the tests (make test FILTER=cuda_) and this homework run "
        "every\nkernel under seq, rev and several rand seeds.\n");

    // A barrier that only some threads reach is undefined behaviour on a GPU: it may hang, or seem
    // to work. The emulator reports it as a deadlock, naming the barrier and a thread that left.
    std::printf("\nA barrier that only some threads reach, `if (t < 128) __syncthreads();`:\n");
    try {
        LAUNCH(half_barrier_kernel, 1, 256)(Y.data());
        std::printf("  no error: unexpected\n");
    } catch (const std::exception& e) {
        std::printf("  %s\n", e.what());
    }
}

// ---------------------------------------------------------------------------------------------
// 7. What the emulator cannot see. It switches fibers only at __syncthreads(), warp operations
// and a thread's end, so a read-modify-write such as `*total += 1` is never interrupted: a race
// that needs two threads to interleave inside it looks fine under every schedule. On a GPU the
// 32 lanes of a warp execute that load, add and store together, and most updates are lost
// (atomicAdd is the fix).
// ---------------------------------------------------------------------------------------------
static __global__ void racy_count_kernel(float* total) { *total += 1.0f; }   // a bug on a GPU

static void blind_spots() {
    heading("7. What the emulator cannot see");
    DeviceBuffer<float> total(1);
    std::printf(
        "`*total += 1` from 4 blocks of 250 threads, without atomicAdd, under each schedule:\n ");
    for (const NamedSchedule& s : every_schedule) {
        cuda_emu::set_schedule(s.schedule, s.seed);
        CUDA_CHECK(cudaMemset(total.data(), 0, sizeof(float)));
        LAUNCH(racy_count_kernel, 4, 250)(total.data());
        std::printf("  %s %g", s.name, double(to_host(total)[0]));
    }
    cuda_emu::set_schedule(cuda_emu::Schedule::seq);
    std::printf("\nAll 1000 here; on a GPU, far fewer, and a different count every run.\n\n");
    std::printf(
        "Also invisible here, because the emulator computes right answers, not speeds:\n"
        "  - coalescing: section 2 counted sectors from recorded addresses; the emulator itself\n"
        "    runs strided and contiguous loads alike.\n"
        "  - bank conflicts: the padded shared rows of kernels.cu (v3, the dX product) change\n"
        "    speed only; without the padding the results are the same.\n"
        "  - occupancy: how many blocks fit on a streaming multiprocessor at once, given their\n"
        "    registers and shared memory. Here one block runs at a time.\n"
        "  - speed: the emulator runs one thread at a time on one CPU core; how long it takes\n"
        "    says nothing about a GPU.\n"
        "  - float details: nvcc fuses a*b + c into one rounding (FMA) and its expf differs\n"
        "    from the CPU's in the last bits, so GPU results differ slightly from these.\n");
}

// ---------------------------------------------------------------------------------------------
// 8. The roofline. A kernel's time is at least max(bytes / bandwidth, FLOPs / peak). Its FLOPs
// per byte (arithmetic intensity) says which term wins: below peak/bandwidth = 20 FLOP/byte on
// an H100, memory does. Everything below is computed from kernels.cu's cost comments, on
// NVIDIA's paper numbers; none of it is measured here.
// ---------------------------------------------------------------------------------------------
static void roofline() {
    heading("8. Roofline of each kernel on an H100: paper numbers, NOT measured here");
    struct Kernel {
        const char* name;
        const char* size;
        double flops, bytes;
    };
    const double n = 1e8, mkn = 4096.0 * 4096 * 4096, bc = 8 * 1024 * 50257.0, params = 124e6;
    const Kernel kernels[] = {
        {"relu forward", "n = 1e8", n, 8 * n},
        {"gelu forward", "n = 1e8", 15 * n, 8 * n},
        {"sum (v1 or v2)", "n = 1e8", n, 4 * n},
        {"matmul v1", "4096^3", 2 * mkn, 8 * mkn},
        {"matmul v2", "4096^3", 2 * mkn, 8 * mkn / 16},
        {"matmul v3", "4096^3", 2 * mkn, 4 * mkn / 32},
        {"softmax + CE forward", "8192 x 50257", 5 * bc, 8 * bc},
        {"AdamW update", "124M params", 17 * params, 28 * params},
    };
    std::printf("  %-21s  %-13s  %10s  %10s  %10s  %11s  %11s  %8s\n", "kernel", "size", "FLOPs",
                "bytes", "FLOP/byte", "t memory", "t compute", "bound");
    for (const Kernel& k : kernels) {
        const double t_memory = k.bytes / h100_bytes_per_s, t_compute = k.flops / h100_flops_per_s;
        std::printf("  %-21s  %-13s  %10.3g  %10.3g  %10.3f  %11s  %11s  %8s\n", k.name, k.size,
                    k.flops, k.bytes, k.flops / k.bytes, duration(t_memory).c_str(),
                    duration(t_compute).c_str(), t_memory > t_compute ? "memory" : "compute");
    }
    std::printf(
        "\nOnly the tiled matmuls come near the 20 FLOP/byte ridge. Every other kernel's speed is "
        "its\n"
        "bytes divided by 3.35 TB/s, which is why fusing kernels (softmax + CE, AdamW) matters\n"
        "more than making their arithmetic faster. Real kernels reach only part of these peaks;\n"
        "measure on a GPU before you believe any of it: there `make bench` checks each kernel "
        "against\n"
        "the CPU, then times it with CUDA events. These are paper numbers: this project has never\n"
        "had a GPU to measure on.\n");
}

// ---------------------------------------------------------------------------------------------
// 9. The engine on the device. The kernels above are what the engine's own ops run when their
// tensors live on the device (engine.cpp Part 5). Moving the model and the batch there is all
// that changes: the training loop below is written once and run on both devices. Only the
// batch goes in and only the loss comes out; everything else stays in device memory.
// ---------------------------------------------------------------------------------------------
static std::vector<float> train_on(Device device) {
    Rng rng(14);
    nn::MLP model({7, 11, 5}, rng);
    const Tensor x = randn({6, 7}, rng);
    const std::vector<int> labels = {0, 4, 2, 1, 3, 2};
    model.to(device);                      // the parameters move, in place
    const Tensor batch = x.to(device);     // a copy of the batch
    AdamW opt(model.parameters(), 0.01);   // made after the move: its state lives there too
    std::vector<float> losses;
    for (int step = 0; step < 5; ++step) {
        opt.zero_grad();
        const Tensor loss = cross_entropy(model(batch), labels);
        loss.backward();
        clip_grad_norm(model.parameters(), 1.0);
        opt.step();
        losses.push_back(float(loss.item()));   // the one number that comes back
    }
    return losses;
}

static void engine_on_device() {
    heading("9. The engine's tensors on the device: one training loop, two devices");
    const std::vector<float> cpu = train_on(Device::CPU), cuda = train_on(Device::CUDA);
    std::printf("  step  loss on cpu  loss on cuda\n");
    for (std::size_t s = 0; s < cpu.size(); ++s)
        std::printf("  %4zu  %11.6f  %12.6f\n", s, double(cpu[s]), double(cuda[s]));
    std::printf(
        "\nThe same losses up to float rounding (the kernels round each multiply and add apart,\n"
        "as in section 3, and reduce in another order). On cuda every op ran its kernel:\n"
        "matmul_v3, the bias add, relu, the fused softmax-CE, their backward kernels, the\n"
        "gradient norm and AdamW. Mixing devices is an error, not a silent copy:\n");
    try {
        matmul(Tensor({1, 1}).to(Device::CUDA), Tensor({1, 1}));
    } catch (const std::exception& e) {
        std::printf("  %s\n", e.what());
    }
    std::printf(
        "\nOn a machine with a GPU, `make demo-gpu` trains the spirals demo this way, with its\n"
        "kernels compiled by nvcc.\n");
}

static void lesson() {
    std::printf(
        "Lesson 14: from a CPU loop to a CUDA kernel (run on the CPU by cuda_emu.h; no GPU)\n");
    cuda_emu::set_schedule(
        cuda_emu::Schedule::seq);   // the same output every run, whatever CUDA_EMU_SCHEDULE says
    thread_indexing();
    coalescing();
    matmul_versions();
    reductions();
    fused_softmax_cross_entropy();
    missing_barrier();
    blind_spots();
    roofline();
    engine_on_device();
}

// ---- Homework --------------------------------------------------------------------------------
// Each exercise is part of a kernel. The checks launch it through the emulator on odd sizes, under
// the schedules seq, rev, rand:1 and rand:2, and compare with the engine's CPU loops.

// 14.1  Leaky ReLU as a kernel (engine.cpp §2.3: y = x if x > 0, else slope·x), one thread per
// element. Compute this thread's global index i from blockIdx.x, blockDim.x and threadIdx.x;
// the grid is rounded up to whole blocks, so threads with i >= n must do nothing.
static __global__ void leaky_relu_kernel(const float* x, float* y, int n, float slope) {
    // BEGIN EXERCISE 14.1
    throw not_implemented("14.1");
    // END EXERCISE
}

// 14.2  A tiled matrix product, C[M, N] = A[M, K]·B[K, N] (section 3's v2, with 8 × 8 tiles).
// Blocks of 8 × 8 threads; block (blockIdx.x, blockIdx.y) owns the 8 × 8 tile of C that starts at
// row 8·blockIdx.y, column 8·blockIdx.x, and thread (tx, ty) sums C[row][col] into s, with
// row = 8·blockIdx.y + ty and col = 8·blockIdx.x + tx (declared for you). Declare two 8 × 8 tiles
// in __shared__ memory, As and Bs. Then walk along K in steps of 8 (k0 = 0, 8, 16, ...). At each
// step:
//   - every thread loads one value of each tile: As[ty][tx] = A[row][k0 + tx] and
//     Bs[ty][tx] = B[k0 + ty][col], or 0 where that index is outside A or B;
//   - __syncthreads(): the tiles are complete;
//   - s += As[ty][k]·Bs[k][tx] for k = 0..7;
//   - __syncthreads(): nobody still reads the tiles when the next step overwrites them.
// Every thread, even one outside C, must load and reach both barriers.
constexpr int hw_tile = 8;
static __global__ void matmul_tiled_kernel(const float* A, const float* B, float* C, int M, int K,
                                           int N) {
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * hw_tile + ty, col = blockIdx.x * hw_tile + tx;
    float s = 0;
    // BEGIN EXERCISE 14.2
    throw not_implemented("14.2");
    // END EXERCISE
    if (row < M && col < N) C[row * N + col] = s;
}

// 14.3  The sum of v over the 32 lanes of this thread's warp, returned to every lane: a butterfly
// of five __shfl_xor_sync(0xffffffff, v, d) steps, d = 16, 8, 4, 2, 1 (section 4). No shared
// memory, no __syncthreads().
static __device__ float warp_sum_all(float v) {
    // BEGIN EXERCISE 14.3
    throw not_implemented("14.3");
    // END EXERCISE
}

// y[i] = the sum of x over i's warp (x past n counts as 0), for every launched thread i.
static __global__ void warp_sums_kernel(const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = warp_sum_all(i < n ? x[i] : 0.0f);
}

static const NamedSchedule homework_schedules[] = {{"seq", cuda_emu::Schedule::seq, 1},
                                                   {"rev", cuda_emu::Schedule::rev, 1},
                                                   {"rand:1", cuda_emu::Schedule::rand, 1},
                                                   {"rand:2", cuda_emu::Schedule::rand, 2}};

// "what (n = 1000, schedule rev)": the context a failure message needs.
static std::string context(const std::string& what, const std::string& size,
                           const NamedSchedule& s) {
    return what + " (" + size + ", schedule " + s.name + ")";
}

static int check_homework() {
    Homework hw("14");

    hw.check(
        "14.1", "leaky ReLU, one thread per element",
        "global index = (blocks before this one)·(threads per block) + place in this block; "
        "the grid overhangs n, so a thread with i ≥ n writes nothing",
        [] {
            // x and y get 512 floats of slack past n: a thread without the bounds check
            // writes there (and is caught) instead of past the allocation.
            const int slack = 512;
            const std::pair<int, int> sizes[] = {
                {1, 32}, {31, 32}, {1000, 128}, {1025, 256}, {4099, 256}};
            Rng rng(141);
            for (const auto& [n, block] : sizes) {
                const Tensor xt = randn({n}, rng);
                const std::vector<real> want = leaky_relu(xt, real(0.1)).values();
                std::vector<float> x = floats(xt.values());
                x.resize(std::size_t(n + slack), 1.0f);
                DeviceBuffer<float> X = to_device(x), Y(static_cast<std::size_t>(n + slack));
                for (const NamedSchedule& s : homework_schedules)
                    for (int extra_blocks : {0, 1}) {   // a grid with a spare block, too
                        const unsigned grid = unsigned((n + block - 1) / block + extra_blocks);
                        CUDA_CHECK(cudaMemset(Y.data(), 0, sizeof(float) * std::size_t(n + slack)));
                        cuda_emu::set_schedule(s.schedule, s.seed);
                        LAUNCH(leaky_relu_kernel, grid, block)(X.data(), Y.data(), n, 0.1f);
                        const std::vector<float> y = to_host(Y);
                        const std::string size = "n = " + std::to_string(n) + ", " +
                                                 std::to_string(grid) + " blocks of " +
                                                 std::to_string(block);
                        for (int i = 0; i < n; ++i)
                            expect_near(context("y[" + std::to_string(i) + "]", size, s).c_str(),
                                        y[std::size_t(i)], want[std::size_t(i)], 1e-6);
                        for (int i = n; i < n + slack; ++i)
                            expect_near(context("y[" + std::to_string(i) +
                                                    "], past n: threads with i >= n must not write",
                                                size, s)
                                            .c_str(),
                                        y[std::size_t(i)], 0, 0);
                    }
            }
        });

    hw.check(
        "14.2", "a tiled matmul: shared-memory tiles and two barriers",
        "a barrier between writing a shared tile and reading it, another before overwriting it; "
        "all threads reach both, loading 0 outside A or B. Fails on some schedules: a missing "
        "barrier",
        [] {
            const int sizes[][3] = {{1, 1, 1}, {5, 0, 3}, {8, 8, 8}, {37, 29, 53}, {9, 40, 17}};
            Rng rng(142);
            for (const auto& sz : sizes) {
                const int M = sz[0], K = sz[1], N = sz[2];
                const Tensor a = randn({M, K}, rng), b = randn({K, N}, rng);
                const Tensor c = K > 0 ? matmul(a, b) : Tensor({M, N});
                DeviceBuffer<float> A(std::max<std::size_t>(1, a.numel())),
                    B(std::max<std::size_t>(1, b.numel())), C(std::size_t(M) * N);
                if (K > 0) {
                    copy_to_device(A, floats(a.values()));
                    copy_to_device(B, floats(b.values()));
                }
                const dim3 grid(unsigned((N + hw_tile - 1) / hw_tile),
                                unsigned((M + hw_tile - 1) / hw_tile));
                const dim3 block(hw_tile, hw_tile);
                const std::string size =
                    std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N);
                for (const NamedSchedule& s : homework_schedules) {
                    CUDA_CHECK(
                        cudaMemset(C.data(), 0xFF, sizeof(float) * std::size_t(M) * N));   // NaN
                    cuda_emu::set_schedule(s.schedule, s.seed);
                    LAUNCH(matmul_tiled_kernel, grid, block)(A.data(), B.data(), C.data(), M, K, N);
                    const std::vector<float> got = to_host(C);
                    for (int i = 0; i < M * N; ++i) {
                        const double want = c.values()[std::size_t(i)];
                        expect_near(context("C[" + std::to_string(i / N) + "][" +
                                                std::to_string(i % N) + "]",
                                            size, s)
                                        .c_str(),
                                    got[std::size_t(i)], want, 1e-5 * (1 + std::fabs(want)));
                    }
                }
            }
        });

    hw.check("14.3", "a warp-shuffle sum that every lane receives",
             "a butterfly: each round lane ℓ adds the value of lane ℓ XOR d, d = 16, 8, 4, 2, 1, "
             "so every lane ends with the sum (a shift-down tree leaves it in lane 0 only)",
             [] {
                 const std::pair<int, int> sizes[] = {{1, 32}, {45, 64}, {1000, 96}, {777, 256}};
                 Rng rng(143);
                 for (const auto& [n, block] : sizes) {
                     const int grid = (n + block - 1) / block, threads = grid * block;
                     const std::vector<float> x = floats(randn({n}, rng).values());
                     DeviceBuffer<float> X = to_device(x), Y(static_cast<std::size_t>(threads));
                     std::vector<double> want(std::size_t(threads / 32)), scale(want.size());
                     for (int i = 0; i < n; ++i) {
                         const std::size_t warp = std::size_t(i / 32);
                         want[warp] += x[std::size_t(i)];
                         scale[warp] += std::fabs(x[std::size_t(i)]);
                     }
                     const std::string size =
                         "n = " + std::to_string(n) + ", blocks of " + std::to_string(block);
                     for (const NamedSchedule& s : homework_schedules) {
                         cuda_emu::set_schedule(s.schedule, s.seed);
                         LAUNCH(warp_sums_kernel, grid, block)(X.data(), Y.data(), n);
                         const std::vector<float> y = to_host(Y);
                         for (int i = 0; i < threads; ++i)
                             expect_near(context("warp " + std::to_string(i / 32) + ", lane " +
                                                     std::to_string(i % 32),
                                                 size, s)
                                             .c_str(),
                                         y[std::size_t(i)], want[std::size_t(i / 32)],
                                         1e-6 * (1 + scale[std::size_t(i / 32)]));
                     }
                 }
             });

    cuda_emu::set_schedule(cuda_emu::Schedule::seq);
    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
