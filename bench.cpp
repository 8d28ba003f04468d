// bench.cpp: `make bench`. Times what a learner waits for, prints a table, and writes
// build/bench.csv with rows  name,threads,size,value,unit  (value = the median).
//
// Each figure is the median of several runs (min and max beside it): the median ignores the
// odd run slowed by the rest of the machine, and the spread shows how much to trust it. Every
// product is checked against a double-precision dot product before it is timed, and every GPU
// kernel against the CPU engine, so a fast wrong answer cannot make the table.

#include "engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <sys/stat.h>

struct Timing {
    double median, min, max;   // milliseconds
};

template <class F>
static Timing time_ms(F&& run, int repeats) {
    run();   // untimed: the first call also wakes OpenMP's threads and touches new memory
    std::vector<double> ms;
    for (int r = 0; r < repeats; ++r) {
        const auto start = std::chrono::steady_clock::now();
        run();
        const auto stop = std::chrono::steady_clock::now();
        ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
    }
    std::sort(ms.begin(), ms.end());
    return {ms[ms.size() / 2], ms.front(), ms.back()};
}

// A rate from a time: the fastest run gives the highest rate, so min and max swap.
static Timing rate(double gflop, Timing ms) {
    return {gflop / ms.median * 1e3, gflop / ms.max * 1e3, gflop / ms.min * 1e3};
}

// Prints the table and writes the CSV. A GFLOP/s row also shows its share of the `peak` row
// measured with the same number of threads: how close to the machine's ceiling it runs.
struct Report {
    std::ofstream csv;
    double peak_gflops[3] = {0, 0, 0};   // by thread count: the best peak run so far
    struct Rate {
        std::string name;
        int threads;
        double gflops;
    };
    std::vector<Rate> rates;   // the CPU's GFLOP/s rows, for report_highest_share
    Report() {
        ::mkdir("build", 0755);
        csv.open("build/bench.csv");
        csv << "name,threads,size,value,unit\n";
        std::printf("%-18s %7s %20s %10s %10s %10s  %-8s %s\n", "name", "threads", "size", "median",
                    "min", "max", "unit", "of peak");
    }
    // `limit`: the ceiling to compare a rate with; by default the CPU `peak` row for GFLOP/s.
    void row(const char* name, int threads, const std::string& size, Timing t, const char* unit,
             double limit = 0) {
        std::printf("%-18s %7d %20s %10.3f %10.3f %10.3f  %-8s", name, threads, size.c_str(),
                    t.median, t.min, t.max, unit);
        if (limit == 0 && std::string(unit) == "GFLOP/s" && std::string(name) != "peak" &&
            threads <= 2)
            limit = peak_gflops[threads];
        if (limit > 0) std::printf(" %5.1f%%", 100 * t.median / limit);
        if (limit == peak_gflops[threads] && limit > 0)
            rates.push_back({std::string(name) + " " + size, threads, t.median});
        std::printf("\n");
        std::fflush(stdout);
        csv << name << ',' << threads << ',' << size << ',' << t.median << ',' << unit << '\n';
    }
};

static void peak(Report& report, int threads) {
    const long iterations = 20'000'000;
    const double gflop = fma_chain_flops_per_iteration * double(iterations) * threads / 1e9;
    double sink = 0;
    const Timing t = time_ms(
        [&] {
#pragma omp parallel num_threads(threads) reduction(+ : sink)
            sink += fma_chains(iterations);
        },
        5);
    if (!(sink > 0)) throw std::runtime_error("peak: the FMA chains gave " + std::to_string(sink));
    report.row("peak", threads, "fma x" + std::to_string(fma_lanes), rate(gflop, t), "GFLOP/s");
    report.peak_gflops[threads] =
        std::max(report.peak_gflops[threads], rate(gflop, t).max);   // a ceiling: the best run
}

// The peak row should be the ceiling. The full table says how close its rows come; a virtual
// machine's speed drifts, so the best peak run counts, measured again after the other rows.
static void report_highest_share(Report& report, const std::vector<int>& thread_counts) {
    for (int threads : thread_counts) peak(report, threads);
    double highest = 0;
    for (const Report::Rate& r : report.rates)
        highest = std::max(highest, r.gflops / report.peak_gflops[r.threads]);
    std::printf("(the highest GFLOP/s row ran at %.1f%% of the best peak run)\n", 100 * highest);
}

// test-all's proof that the peak is the ceiling: runs of the matmul alternate with runs of the
// FMA chains that take about as long, and the fastest run of each counts. On a busy machine a
// longer run is more often interrupted by other processes; the fastest run of each is the one
// that was not. The matmul's best may not pass the chains' best by more than 5% (timing noise).
static void check_peak_is_ceiling(const std::vector<int>& thread_counts) {
    for (int threads : thread_counts) {
        set_num_threads(threads);
        for (int N : {256, 512}) {
            Rng rng(1);
            const Tensor a = randn({N, N}, rng), b = randn({N, N}, rng);
            const double flops = 2.0 * N * N * double(N);
            // Chains of as many FLOPs as the product, at the build's vector width.
            const long iterations = long(flops / threads / fma_chain_flops_per_iteration) + 1;
            double sink = 0, best_peak = 0, best_matmul = 0;
            for (int r = 0; r < 25; ++r) {
                const Timing chains = time_ms(
                    [&] {
#pragma omp parallel num_threads(threads) reduction(+ : sink)
                        sink += fma_chains(iterations);
                    },
                    1);
                const Timing product = time_ms([&] { matmul(a, b); }, 1);
                best_peak = std::max(best_peak, fma_chain_flops_per_iteration * double(iterations) *
                                                    threads / chains.min);
                best_matmul = std::max(best_matmul, flops / product.min);
            }
            if (!(sink > 0)) throw std::runtime_error("peak: the FMA chains gave no sum");
            const double share = best_matmul / best_peak;
            std::printf("matmul %d on %d thread(s): %.1f%% of the FMA chains (fma x%d; the fastest "
                        "of 25 runs each)\n",
                        N, threads, 100 * share, fma_lanes);
            if (share > 1.05)
                throw std::runtime_error("the peak is not the ceiling: matmul " +
                                         std::to_string(N) + " ran at " +
                                         std::to_string(100 * share) + "% of it");
        }
    }
    std::printf("(every matmul within 105%% of the peak)\n");
}

// 64 entries of C = A·B recomputed in double; one more than 1e-4 (relative) off stops the bench.
// A and B are views (engine.h), so a product with a transposed operand is checked the same way.
static void verify(const char* what, MatrixView A, MatrixView B, const std::vector<real>& C, int M,
                   int K, int N) {
    Rng rng(99);
    for (int t = 0; t < 64; ++t) {
        const int i = int(rng.below(M)), j = int(rng.below(N));
        double s = 0, size = 0;
        for (int k = 0; k < K; ++k) {
            const double term = double(A(i, k)) * B(k, j);
            s += term;
            size += std::fabs(term);   // the rounding error of a float sum scales with Σ|terms|
        }
        if (std::fabs(C[std::size_t(i) * N + j] - s) > 1e-4 * (1 + size))
            throw std::runtime_error(std::string(what) + ": C[" + std::to_string(i) + "][" +
                                     std::to_string(j) +
                                     "] = " + std::to_string(C[std::size_t(i) * N + j]) +
                                     ", expected " + std::to_string(s));
    }
}

// The three loops of engine.cpp §2.4 on one size, 1 thread: what each step of the section buys.
static void matmul_steps(Report& report, int N) {
    Rng rng(1);
    const std::vector<real> A = randn({N, N}, rng).values(), B = randn({N, N}, rng).values();
    std::vector<real> C(std::size_t(N) * N);
    const double gflop = 2.0 * N * N * double(N) / 1e9;
    const std::string size = std::to_string(N);
    auto naive = [&] {
        std::fill(C.begin(), C.end(), real(0));
        matmul_naive(N, N, N, row_major(A.data(), N), row_major(B.data(), N), C.data());
    };
    auto ikj = [&] {
        std::fill(C.begin(), C.end(), real(0));
        matmul_ikj(N, N, N, A.data(), B.data(), C.data());
    };
    naive();
    verify("matmul_naive", row_major(A.data(), N), row_major(B.data(), N), C, N, N, N);
    report.row("matmul_naive", 1, size, rate(gflop, time_ms(naive, 3)), "GFLOP/s");
    ikj();
    verify("matmul_ikj", row_major(A.data(), N), row_major(B.data(), N), C, N, N, N);
    report.row("matmul_ikj", 1, size, rate(gflop, time_ms(ikj, 5)), "GFLOP/s");
}

// Y = X·W for square N×N matrices through the engine's matmul (output allocated each time, as
// numpy's a @ b does): 2N³ floating-point operations per product.
static void matmul_square(Report& report, int threads, int N) {
    Rng rng(1);
    const Tensor a = randn({N, N}, rng), b = randn({N, N}, rng);
    verify("matmul", row_major(a.values().data(), N), row_major(b.values().data(), N),
           matmul(a, b).values(), N, N, N);
    const int repeats =
        N <= 512    ? 41
        : N <= 1024 ? 15
                    : 7;   // more runs where a run is short: medians of ≥ 0.1 s from N = 512
    report.row("matmul", threads, std::to_string(N),
               rate(2.0 * N * N * double(N) / 1e9, time_ms([&] { matmul(a, b); }, repeats)),
               "GFLOP/s");
}

// The products of an MLP 784-256-256-10 at batch 128, forward (X·W) and backward (both products).
static void matmul_mlp_shapes(Report& report, int threads) {
    Rng rng(2);
    const int shapes[3][3] = {{128, 784, 256}, {128, 256, 256}, {128, 256, 10}};
    for (const auto& s : shapes) {
        const int M = s[0], K = s[1], N = s[2];
        Tensor x = randn({M, K}, rng).requires_grad_(), w = randn({K, N}, rng).requires_grad_();
        const double gflop = 2.0 * M * K * N / 1e9;
        const std::string size =
            std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N);
        verify("matmul", row_major(x.values().data(), K), row_major(w.values().data(), N),
               matmul(x, w).values(), M, K, N);
        report.row("matmul", threads, size, rate(gflop, time_ms([&] { matmul(x, w); }, 51)),
                   "GFLOP/s");
        const Tensor y = matmul(x, w), seed = randn({M, N}, rng);
        report.row("matmul_backward", threads, size,
                   rate(2 * gflop, time_ms([&] { y.backward(seed); }, 51)),   // dX and dW
                   "GFLOP/s");
    }
}

// One training step of the lesson-10 model: MLP 784-256-256-10, batch 128, cross-entropy,
// backward, clipping at 1.0, AdamW.
static void mlp_step(Report& report, int threads) {
    Rng rng(3);
    nn::MLP model({784, 256, 256, 10}, rng);
    AdamW opt(model.parameters(), 1e-3);
    const Tensor x = uniform({128, 784}, rng, 0, 1);
    std::vector<int> labels;
    for (int i = 0; i < 128; ++i) labels.push_back(int(rng.below(10)));
    auto step = [&] {
        opt.zero_grad();
        cross_entropy(model(x), labels).backward();
        clip_grad_norm(model.parameters(), 1.0);
        opt.step();
    };
    report.row("mlp_step", threads, "784-256-256-10/b128", time_ms(step, 51), "ms");
}

// One training step of lesson 15's GPT (nanoGPT's "baby GPT": V 114, T 64, L 4, H 4, D 128),
// batch 12: forward, cross-entropy over the 768 next-token predictions, backward, clipping at
// 1.0, AdamW with weight decay 0.1 on the 2-D matrices and none on biases and gains.
// Lesson 15's step on `model`: its two AdamW groups (decay 0.1 on the 2-D matrices, none on
// biases and gains), the loss, backward, clipping at 1.0. The returned function runs one step
// and returns its loss.
static std::function<double()> gpt_training_step(const nn::GPT& model, const std::vector<int>& ids,
                                                 const std::vector<int>& targets, int B, int T) {
    std::vector<Tensor> matrices, others;
    for (const Tensor& p : model.parameters()) {
        if (p.rank() == 2) matrices.push_back(p);
        else others.push_back(p);
    }
    // Shared, because the returned function owns them and a std::function must be copyable.
    auto decayed = std::make_shared<AdamW>(matrices, 1e-3, 0.9, 0.99, 1e-8, 0.1);
    auto not_decayed = std::make_shared<AdamW>(others, 1e-3, 0.9, 0.99, 1e-8, 0);
    return [&model, &ids, &targets, B, T, decayed, not_decayed] {
        decayed->zero_grad();
        not_decayed->zero_grad();
        const Tensor loss = model.loss(ids, targets, B, T);
        loss.backward();
        clip_grad_norm(model.parameters(), 1.0);
        decayed->step();
        not_decayed->step();
        return double(loss.item());
    };
}

static void gpt_step(Report& report, int threads) {
    Rng rng(4);
    const GPTConfig config{114, 64, 4, 4, 128};
    const nn::GPT model(config, rng);
    const int B = 12, T = 64;
    std::vector<int> ids, targets;
    for (int i = 0; i < B * T; ++i) {
        ids.push_back(int(rng.below(114)));
        targets.push_back(int(rng.below(114)));
    }
    const std::function<double()> step = gpt_training_step(model, ids, targets, B, T);
    report.row("gpt_step", threads, "L4 H4 D128 T64/b12", time_ms(step, 11), "ms");
}

// micrograd's demo step: MLP(2, [16, 16, 1]) on 100 two-moons points, full batch, mean
// max-margin loss relu(1 − y·score) + 1e-4·Σ p², backward, SGD. Building, differentiating and
// freeing the ~65,000-node graph is the whole cost, exactly as in micrograd.
static void scalar_moons(Report& report) {
    Rng rng(1337);
    const Moons data = make_moons(100, 0.1, rng);
    MLP model(2, {16, 16, 1}, rng);
    const std::vector<Value> params = model.parameters();
    std::int64_t nodes = 0;
    auto step = [&] {
        Value data_loss = 0.0, l2 = 0.0;
        for (std::size_t i = 0; i < data.x.size(); ++i)
            data_loss += relu(1 - data.y[i] * model({data.x[i][0], data.x[i][1]})[0]);
        for (const Value& p : params) l2 += p * p;
        const Value loss = data_loss / double(data.x.size()) + 1e-4 * l2;
        nodes = Node::live_count;
        loss.backward();
        for (const Value& p : params) {
            p.data() -= 0.01 * p.grad();
            p.grad() = 0.0;
        }
    };
    report.row("scalar_moons_step", 1, std::to_string(nodes) + "n", time_ms(step, 51), "ms");
}

// ---- kernels.cu -----------------------------------------------------------------------------

static DeviceBuffer<float> device_random(std::size_t n, Rng& rng) {
    std::vector<float> host(n);
    for (float& v : host) v = float(rng.uniform(-1, 1));
    DeviceBuffer<float> d(n);
    cuda_copy_to_device(d.data(), host.data(), d.bytes());
    return d;
}

static std::vector<real> host_copy(const DeviceBuffer<float>& d) {
    std::vector<float> f(d.size());
    cuda_copy_to_host(f.data(), d.data(), d.bytes());
    return std::vector<real>(f.begin(), f.end());
}

// kernels.cu through the emulator (cuda_emu.h): how long one launch of the shared-memory matmul
// takes on the CPU, 64×64×64 = 4 blocks of 256 fibers. It is what `make test FILTER=cuda_` pays
// per kernel call; it says nothing about a GPU.
static void emulated_kernel(Report& report) {
    const int n = 64;
    Rng rng(4);
    const DeviceBuffer<float> A = device_random(n * n, rng), B = device_random(n * n, rng),
                              C(n * n);
    const Timing t = time_ms([&] { cuda_matmul_v2(A.data(), B.data(), C.data(), n, n, n); }, 11);
    const std::vector<real> a = host_copy(A), b = host_copy(B);
    verify("cuda_matmul_v2 (emulated)", row_major(a.data(), n), row_major(b.data(), n),
           host_copy(C), n, n, n);
    report.row("emulated_kernel", 1, "matmul_v2 64^3", t, "ms");
}

// Each kernel timed on the device with CUDA events (kernels.cu §9): 5 measurements of `repeats`
// launches each, so the table has a median, min and max like the others. Bytes and FLOPs are
// each kernel's own minimum (kernels.cu states them), compared with an H100 SXM's paper limits.
// Before a kernel is timed, its result is checked against the CPU's, as for the CPU rows: on a GPU
// this is the check of what the emulator cannot see (races it orders the same way every time).
// With `small`, sizes an emulator can run in a second (the test of this code).
constexpr double h100_gbps = 3350, h100_gflops = 67000;   // HBM3; FP32 without tensor cores

static void gpu_row(Report& report, const char* name, const std::string& size, double gb,
                    double gflop, const std::function<void()>& launch, int repeats) {
    std::vector<double> ms;
    for (int m = 0; m < 5; ++m) ms.push_back(cuda_time_ms(launch, repeats));
    std::sort(ms.begin(), ms.end());
    const Timing t{ms[2], ms[0], ms[4]};
    if (gflop > 0) report.row(name, 1, size, rate(gflop, t), "GFLOP/s", h100_gflops);
    else report.row(name, 1, size, rate(gb, t), "GB/s", h100_gbps);
}

// |got − want| <= tol·(1 + |want|) for every element, or the bench stops, naming the first miss.
static void expect_close(const char* what, const std::vector<real>& got,
                         const std::vector<real>& want, double tol) {
    if (got.size() != want.size())
        throw std::runtime_error(std::string(what) + ": " + std::to_string(got.size()) +
                                 " values, expected " + std::to_string(want.size()));
    for (std::size_t i = 0; i < want.size(); ++i)
        if (!(std::fabs(double(got[i]) - double(want[i])) <=
              tol * (1 + std::fabs(double(want[i])))))
            throw std::runtime_error(std::string(what) + ": element " + std::to_string(i) + " is " +
                                     std::to_string(got[i]) + ", expected " +
                                     std::to_string(want[i]));
}

static void gpu_vector_kernels(Report& report, int n, int repeats, Rng& rng) {
    const double floats = 4e-9 * n;   // GB in n floats
    const std::string size = std::to_string(n);
    DeviceBuffer<float> x = device_random(n, rng), y = device_random(n, rng), z(n);
    const std::vector<real> hx = host_copy(x), hy = host_copy(y);
    std::vector<real> want(hx.size());

    auto add = [&] { cuda_add_forward(x.data(), y.data(), z.data(), n, n); };
    add();
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = hx[i] + hy[i];
    expect_close("gpu_add", host_copy(z), want, 1e-6);
    gpu_row(report, "gpu_add", size, 3 * floats, 0, add, repeats);

    auto relu = [&] { cuda_relu_forward(x.data(), z.data(), n); };
    relu();
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = std::max(hx[i], real(0));
    expect_close("gpu_relu", host_copy(z), want, 0);
    gpu_row(report, "gpu_relu", size, 2 * floats, 0, relu, repeats);

    // The sums and the norm return a number to the host, so their times include what their
    // wrappers do around the kernels: a cudaMalloc and cudaFree of scratch, and a copy back.
    double sum = 0, sum_of_squares = 0,
           size_of_sum = 0;   // a float sum's rounding error scales with Σ|x|
    for (real e : hx) {
        sum += e;
        sum_of_squares += double(e) * e;
        size_of_sum += std::fabs(e);
    }
    const struct {
        const char* name;
        float (*sum)(const float* X, int n);
    } sums[] = {{"gpu_sum_v1", cuda_sum_v1}, {"gpu_sum_v2", cuda_sum_v2}};
    for (const auto& s : sums) {
        const double got = s.sum(x.data(), n);
        if (!(std::fabs(got - sum) <= 1e-5 * size_of_sum))
            throw std::runtime_error(std::string(s.name) + ": " + std::to_string(got) +
                                     ", expected " + std::to_string(sum));
        gpu_row(
            report, s.name, size, floats, 0, [&] { s.sum(x.data(), n); }, repeats);
    }
    auto norm = [&] { return cuda_grad_norm({x.data()}, {n}); };
    expect_close("gpu_grad_norm", {real(norm())}, {real(std::sqrt(sum_of_squares))}, 1e-5);
    gpu_row(report, "gpu_grad_norm", size, floats, 0, norm, repeats);

    // AdamW's first step from m = v = 0, against the engine's: w = x, g = y.
    DeviceBuffer<float> m(n), v(n);
    cuda_zero(m.data(), m.bytes());
    cuda_zero(v.data(), v.bytes());
    DeviceBuffer<float> w(n);
    cuda_copy_on_device(w.data(), x.data(), x.bytes());
    auto adamw = [&] {
        cuda_adamw_update(w.data(), y.data(), m.data(), v.data(), n, 1e-3, 0.9, 0.999, 1e-8, 0.01,
                          1);
    };
    adamw();
    Tensor p({n}, hx);
    p.requires_grad_();
    p.grad() = hy;
    AdamW(std::vector<Tensor>{p}, 1e-3, 0.9, 0.999, 1e-8, 0.01).step();
    expect_close("gpu_adamw", host_copy(w), p.values(), 1e-6);
    gpu_row(report, "gpu_adamw", size, 7 * floats, 0, adamw,
            repeats);   // reads w, g, m, v; writes w, m, v
}

// The kernels that reduce along rows or down columns of a [rows, cols] matrix: the fused
// softmax-CE, the bias gradient, layer norm forward and backward; each against the CPU engine.
static void gpu_row_kernels(Report& report, int rows, int cols, int repeats, Rng& rng) {
    const std::size_t numel = std::size_t(rows) * cols;
    const double floats = 4e-9 * double(numel);   // GB in one [rows, cols] matrix
    const std::string size = std::to_string(rows) + "x" + std::to_string(cols);
    DeviceBuffer<float> X = device_random(numel, rng), dY = device_random(numel, rng), Y(numel),
                        dX(numel);
    DeviceBuffer<float> gain = device_random(cols, rng), bias = device_random(cols, rng),
                        dgain(cols), dbias(cols);
    DeviceBuffer<float> mean(rows), rstd(rows), loss(1);
    Tensor x({rows, cols}, host_copy(X)), g({rows, cols}, host_copy(dY));
    Tensor gain_t({cols}, host_copy(gain)), bias_t({cols}, host_copy(bias));

    std::vector<int> host_labels(rows);
    for (int& l : host_labels) l = int(rng.below(cols));
    DeviceBuffer<int> labels(rows);
    cuda_copy_to_device(labels.data(), host_labels.data(), labels.bytes());
    auto cross_entropy_forward = [&] {
        cuda_softmax_cross_entropy_forward(X.data(), labels.data(), Y.data(), loss.data(), rows,
                                           cols);
    };
    cross_entropy_forward();
    // The loss is a float sum of one term per row, added in whatever order the rows finish.
    expect_close("gpu_softmax_ce (the mean loss)", host_copy(loss),
                 {cross_entropy(x, host_labels).item()}, 1e-4);
    gpu_row(report, "gpu_softmax_ce", size, 2 * floats, 0, cross_entropy_forward, repeats);

    auto bias_grad = [&] { cuda_bias_grad(dY.data(), dbias.data(), rows, cols); };
    cuda_zero(dbias.data(), dbias.bytes());
    bias_grad();
    expect_close("gpu_bias_grad", host_copy(dbias), sum(g, 0).values(), 1e-4);
    gpu_row(report, "gpu_bias_grad", size, floats, 0, bias_grad, repeats);

    auto layer_norm_forward = [&] {
        cuda_layer_norm_forward(X.data(), gain.data(), bias.data(), Y.data(), mean.data(),
                                rstd.data(), rows, cols, 1e-5f);
    };
    layer_norm_forward();
    x.requires_grad_();
    gain_t.requires_grad_();
    bias_t.requires_grad_();
    const Tensor y = layer_norm(x, gain_t, bias_t, real(1e-5));
    expect_close("gpu_layer_norm", host_copy(Y), y.values(), 1e-4);
    gpu_row(report, "gpu_layer_norm", size, 2 * floats, 0, layer_norm_forward, repeats);

    auto layer_norm_backward = [&] {
        cuda_layer_norm_backward(X.data(), gain.data(), mean.data(), rstd.data(), dY.data(),
                                 dX.data(), dgain.data(), dbias.data(), rows, cols);
    };
    for (DeviceBuffer<float>* gradient : {&dX, &dgain, &dbias})
        cuda_zero(gradient->data(), gradient->bytes());
    layer_norm_backward();
    y.backward(g);
    expect_close("gpu_layer_norm_bw (dX)", host_copy(dX), x.grad(), 1e-4);
    expect_close("gpu_layer_norm_bw (dgain)", host_copy(dgain), gain_t.grad(), 1e-4);
    expect_close("gpu_layer_norm_bw (dbias)", host_copy(dbias), bias_t.grad(), 1e-4);
    gpu_row(report, "gpu_layer_norm_bw", size, 6 * floats, 0, layer_norm_backward,
            repeats);   // kernels.cu §5
}

// The five products on N×N matrices. The backward products add into C, so C starts at 0 for
// the checked launch: dX = A·Bᵀ (A as dY, B as W), dW = Aᵀ·B (A as X, B as dY).
static void gpu_matmuls(Report& report, int N, int repeats, Rng& rng) {
    const DeviceBuffer<float> A = device_random(std::size_t(N) * N, rng),
                              B = device_random(std::size_t(N) * N, rng);
    DeviceBuffer<float> C(std::size_t(N) * N);
    const std::vector<real> a = host_copy(A), b = host_copy(B);
    const double gflop = 2.0 * N * N * double(N) / 1e9;
    const std::string size = std::to_string(N) + "^3";
    using Product = void (*)(const float*, const float*, float*, int, int, int);
    const struct {
        const char* name;
        Product product;
        bool transpose_a, transpose_b;
    } products[] = {{"gpu_matmul_v1", cuda_matmul_v1, false, false},
                    {"gpu_matmul_v2", cuda_matmul_v2, false, false},
                    {"gpu_matmul_v3", cuda_matmul_v3, false, false},
                    {"gpu_matmul_dx", cuda_matmul_backward_dx, false, true},
                    {"gpu_matmul_dw", cuda_matmul_backward_dw, true, false}};
    for (const auto& p : products) {
        auto launch = [&] { p.product(A.data(), B.data(), C.data(), N, N, N); };
        cuda_zero(C.data(), C.bytes());
        launch();
        const MatrixView a_view = p.transpose_a ? transposed(a.data(), N) : row_major(a.data(), N);
        const MatrixView b_view = p.transpose_b ? transposed(b.data(), N) : row_major(b.data(), N);
        verify(p.name, a_view, b_view, host_copy(C), N, N, N);
        gpu_row(report, p.name, size, 0, gflop, launch, repeats);
    }
}

// A GPT's own kernels (kernels.cu §10 to §13) at GPT-2 small's sizes (B 4, T 1024, H 12, d 64,
// V 50257), each checked against the CPU engine's op first: the lookup and its scatter-add, the
// tied head's transpose, and causal attention, naive and tiled, forward and backward. Attention's
// GFLOP are the model's (4·pairs·d forward, 8·pairs·d backward), whatever a kernel recomputes.
static void gpu_gpt_kernels(Report& report, bool small, int repeats, Rng& rng) {
    const int B = small ? 2 : 4, T = small ? 40 : 1024, H = small ? 2 : 12, d = small ? 8 : 64,
              D = H * d, V = small ? 50 : 50257, N = B * T;
    std::vector<int> ids(static_cast<std::size_t>(N));
    for (int& id : ids) id = int(rng.below(std::uint64_t(V)));
    DeviceBuffer<int> ids_d(ids.size());
    cuda_copy_to_device(ids_d.data(), ids.data(), ids_d.bytes());
    const DeviceBuffer<float> table = device_random(std::size_t(V) * D, rng),
                              g = device_random(std::size_t(N) * D, rng);
    DeviceBuffer<float> out(std::size_t(N) * D), dtable(std::size_t(V) * D);
    Tensor table_t({V, D}, host_copy(table));
    table_t.requires_grad_();
    const Tensor looked_up = embedding(table_t, ids);
    looked_up.backward(Tensor({N, D}, host_copy(g)));
    const double rows_gb = 4e-9 * N * D, no_flops = 0;
    const std::string size = std::to_string(N) + "x" + std::to_string(D);
    auto lookup = [&] { cuda_embedding_forward(table.data(), ids_d.data(), out.data(), N, D); };
    lookup();
    expect_close("gpu_embedding", host_copy(out), looked_up.values(), 0);
    gpu_row(report, "gpu_embedding", size, 2 * rows_gb, no_flops, lookup, repeats);
    auto scatter = [&] { cuda_embedding_backward(g.data(), ids_d.data(), dtable.data(), N, D); };
    cuda_zero(dtable.data(), dtable.bytes());
    scatter();
    expect_close("gpu_embedding_bw", host_copy(dtable), table_t.grad(), 1e-4);
    gpu_row(report, "gpu_embedding_bw", size, 3 * rows_gb, no_flops, scatter, repeats);

    DeviceBuffer<float> tableT(std::size_t(V) * D);
    auto transposed_table = [&] { cuda_transpose_forward(table.data(), tableT.data(), 1, V, D); };
    transposed_table();
    expect_close("gpu_transpose", host_copy(tableT), transpose(table_t.detach()).values(), 0);
    gpu_row(report, "gpu_transpose", std::to_string(V) + "x" + std::to_string(D), 8e-9 * V * D,
            no_flops, transposed_table, repeats);

    const DeviceBuffer<float> qkv = device_random(std::size_t(N) * 3 * D, rng),
                              dout = device_random(std::size_t(N) * D, rng);
    DeviceBuffer<float> o(std::size_t(N) * D), lse(std::size_t(B) * H * T),
        P(std::size_t(B) * H * T * T), dqkv(std::size_t(N) * 3 * D);
    Tensor x({B, T, 3 * D}, host_copy(qkv));
    x.requires_grad_();
    const Tensor attended = causal_self_attention(x, H);
    attended.backward(Tensor({B, T, D}, host_copy(dout)));
    const double pairs = double(B) * H * T * (T + 1) / 2;
    const std::string shape = "B" + std::to_string(B) + " H" + std::to_string(H) + " T" +
                              std::to_string(T) + " d" + std::to_string(d);
    auto naive = [&] { cuda_attention_naive_forward(qkv.data(), o.data(), P.data(), B, T, D, H); };
    naive();
    expect_close("gpu_attn_naive", host_copy(o), attended.values(), 1e-4);
    gpu_row(report, "gpu_attn_naive", shape, 0, 4e-9 * pairs * d, naive, repeats);
    auto naive_backward = [&] {
        cuda_attention_naive_backward(qkv.data(), P.data(), dout.data(), dqkv.data(), B, T, D, H);
    };
    cuda_zero(dqkv.data(), dqkv.bytes());
    naive_backward();
    expect_close("gpu_attn_naive_bw", host_copy(dqkv), x.grad(), 1e-4);
    gpu_row(report, "gpu_attn_naive_bw", shape, 0, 8e-9 * pairs * d, naive_backward, repeats);
    auto flash = [&] {
        cuda_flash_attention_forward(qkv.data(), o.data(), lse.data(), B, T, D, H);
    };
    flash();
    expect_close("gpu_flash_attn", host_copy(o), attended.values(), 1e-4);
    gpu_row(report, "gpu_flash_attn", shape, 0, 4e-9 * pairs * d, flash, repeats);
    auto flash_backward = [&] {
        cuda_flash_attention_backward(qkv.data(), o.data(), lse.data(), dout.data(), dqkv.data(), B,
                                      T, D, H);
    };
    cuda_zero(dqkv.data(), dqkv.bytes());
    flash_backward();
    expect_close("gpu_flash_attn_bw", host_copy(dqkv), x.grad(), 1e-4);
    gpu_row(report, "gpu_flash_attn_bw", shape, 0, 8e-9 * pairs * d, flash_backward, repeats);
}

// The training step of gpt_step (above) with the model and the batch on Device::CUDA: every op
// through kernels.cu, and the host waits for the loss once a step (loss.item(), as lesson 15
// does). Checked first: from the same weights, the first step's loss on the device must be the
// CPU's within 1e-4 (relative). GFLOP/s are the model's, 3·F per token (engine.cpp §6.2). small:
// a tiny GPT the emulator runs in seconds.
static void gpu_gpt_step(Report& report, bool small) {
    const GPTConfig config = small ? GPTConfig{20, 9, 1, 2, 16} : GPTConfig{114, 64, 4, 4, 128};
    const int B = small ? 2 : 12, T = config.context;
    Rng rng(4);
    std::vector<int> ids, targets;
    for (int i = 0; i < B * T; ++i) {
        ids.push_back(int(rng.below(std::uint64_t(config.vocab))));
        targets.push_back(int(rng.below(std::uint64_t(config.vocab))));
    }
    Rng init_cpu(6), init_device(6);
    const nn::GPT on_cpu(config, init_cpu);
    nn::GPT model(config, init_device);
    model.to(Device::CUDA);
    const std::function<double()> train = gpt_training_step(model, ids, targets, B, T);
    double loss = 0;
    auto step = [&] { loss = train(); };
    step();
    const double want = on_cpu.loss(ids, targets, B, T).item();
    if (!(std::fabs(loss - want) <= 1e-4 * want))
        throw std::runtime_error("gpu_gpt_step: the first loss is " + std::to_string(loss) +
                                 " on the device, " + std::to_string(want) + " on the cpu");
    const double gflop = 3e-9 * double(gpt_forward_flops(config, B, T));
    const std::string size = "L" + std::to_string(config.layers) + " H" +
                             std::to_string(config.heads) + " D" + std::to_string(config.width) +
                             " T" + std::to_string(T) + "/b" + std::to_string(B);
    gpu_row(report, "gpu_gpt_step", size, 0, gflop, step, small ? 1 : 20);
}

static void gpu_kernels(Report& report, bool small) {
    std::printf("(kernels.cu on the %s, timed with CUDA events; last column: share of an H100 "
                "SXM's paper limit, %.0f GB/s or %.0f GFLOP/s)\n",
                cuda_is_emulated() ? "emulator" : "GPU", h100_gbps, h100_gflops);
    Rng rng(5);
    const int repeats = small ? 1 : 20;
    gpu_vector_kernels(report, small ? 4096 : 1 << 24, repeats, rng);
    gpu_row_kernels(report, small ? 64 : 16384, small ? 100 : 1024, repeats, rng);
    gpu_matmuls(report, small ? 64 : 2048, repeats, rng);
    gpu_gpt_kernels(report, small, repeats, rng);
    gpu_gpt_step(report, small);
}

// `bench --gpu-only` runs just the kernels.cu rows (on the emulator, at small sizes: the tests
// use it). Built with nvcc (`make bench-gpu`), the full bench adds them at full size.
static int run(int argc, char** argv) {
    Report report;
    if (argc > 1 && std::string(argv[1]) == "--gpu-only") {
        gpu_kernels(report, cuda_is_emulated());
        return 0;
    }
    const int most = num_threads();   // OpenMP's default: one per core
    std::vector<int> thread_counts = {1};
    if (most >= 2) thread_counts.push_back(2);
    if (argc > 1 && std::string(argv[1]) == "--peak-check") {
        check_peak_is_ceiling(thread_counts);
        return 0;
    }
    for (int threads : thread_counts) peak(report, threads);
    set_num_threads(1);
    matmul_steps(report, 512);
    for (int threads : thread_counts) {
        set_num_threads(threads);
        for (int n : {128, 256, 512, 1024, 2048}) matmul_square(report, threads, n);
    }
    for (int threads : thread_counts) {
        set_num_threads(threads);
        matmul_mlp_shapes(report, threads);
    }
    for (int threads : thread_counts) {
        set_num_threads(threads);
        mlp_step(report, threads);
    }
    for (int threads : thread_counts) {
        set_num_threads(threads);
        gpt_step(report, threads);
    }
    report_highest_share(report, thread_counts);
    scalar_moons(report);
    if (cuda_is_emulated()) {
        emulated_kernel(report);
        std::printf("(kernels.cu runs on the emulator here, so there is no GPU to time: on a "
                    "machine with nvcc and a GPU, "
                    "`make bench` builds the GPU bench, which adds those rows)\n");
    } else {
        gpu_kernels(report, false);
    }
    std::printf("(written to build/bench.csv. The same models in PyTorch and micrograd: README, "
                "\"How fast is it, and why\")\n");
    return 0;
}

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {   // a wrong product, or a CUDA call that failed
        std::fprintf(stderr, "bench: %s\n", e.what());
        return 1;
    }
}
