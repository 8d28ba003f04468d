// Lesson 13: precision and memory, the two budgets of training at scale.
//
// A float has 32 bits. Halving that to 16 halves the memory of every activation and doubles
// what a GPU's tensor cores compute per second, but 16 bits hold fewer digits and a narrower
// range, and training notices. And whatever the precision, training holds far more than the
// weights: gradients, optimizer state and, mostly, activations. This lesson measures both,
// with the engine's tools (engine.cpp §4.1, §4.5–4.7):
//
//   1. float16 and bfloat16: the formats, converted by hand with round-to-nearest-even.
//   2. Products with 16-bit inputs: why the sum must be kept in fp32.
//   3. Loss scaling: a gradient of 1e-9 is 0 in float16, and survives when the loss is scaled.
//   4. Mixed-precision training on the two moons: no scaling, a fixed scale, a dynamic scaler,
//      bfloat16, and 16-bit weights without fp32 master weights.
//   5. Memory per parameter (16 bytes for fp32 Adam, 14 + 2 mixed), for this lesson's model
//      and a 7B model, beside the engine's measured peak.
//   6. Gradient accumulation: the same gradient as the large batch, in less memory.
//   7. Activation checkpointing: the same gradient again, a lower peak, one more forward pass.
//
// Run it:             make lesson N=13        (plots go to build/plots/13_*.svg)
// Grade the homework: make check N=13

#include "lesson.h"

#include <chrono>
#include <cstring>
#include <vector>

static void heading(const char* title) { std::printf("\n== %s\n\n", title); }

using Clock = std::chrono::steady_clock;
static double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

static double max_difference(const std::vector<real>& a, const std::vector<real>& b) {
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::fabs(a[i] - b[i])));
    return worst;
}

// The engine counts tensor bytes and matmul FLOPs through small hooks in Part 2 (engine.cpp
// §4.1). Where they are missing, the measured columns say n/a instead of showing zeros.
static bool bytes_are_counted() {
    reset_peak_tensor_bytes();
    const std::size_t before = current_tensor_bytes();
    const Tensor probe({256});
    return current_tensor_bytes() == before + 256 * sizeof(real);
}

static bool matmul_flops_are_counted() {
    reset_counted_flops();
    matmul(Tensor({2, 2}), Tensor({2, 2}));
    return counted_flops() == 16;
}

static std::string megabytes(double bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3f MB", bytes / 1e6);
    return buf;
}

// ---------------------------------------------------------------------------------------------
// 1. The formats (engine.cpp §4.5). A number is sign · significand · 2^exponent; the exponent
// bits set the range, the fraction bits the precision (the spacing between neighbours is
// 2^−fraction_bits relative to the number):
//     fp32:  8 exponent bits, 23 fraction bits      about 7 decimal digits, up to 3.4e38
//     fp16:  5 exponent bits, 10 fraction bits      about 3 digits, up to 65504
//     bf16:  8 exponent bits,  7 fraction bits      about 2 digits, up to 3.4e38
// Below the smallest normal number come the subnormals, evenly spaced down to the smallest
// positive value; below half of that, 0. Rounding is to the nearest value, ties to the even
// one: 2049 lies halfway between the float16 values 2048 and 2050 and becomes 2048.
// ---------------------------------------------------------------------------------------------
static void formats() {
    heading("1. float32, float16, bfloat16");
    std::printf("%-6s  %12s  %14s  %18s  %14s\n", "format", "largest", "smallest normal", "smallest subnormal",
                "spacing at 1");
    std::printf("%-6s  %12.5g  %14.5g  %18.5g  %14.5g\n", "fp32", double(std::numeric_limits<float>::max()),
                double(std::numeric_limits<float>::min()), double(std::numeric_limits<float>::denorm_min()),
                double(std::numeric_limits<float>::epsilon()));
    std::printf("%-6s  %12.5g  %14.5g  %18.5g  %14.5g\n", "fp16", double(half_to_float(0x7bff)),
                double(half_to_float(0x0400)), double(half_to_float(0x0001)), double(half_to_float(0x3c01)) - 1);
    std::printf("%-6s  %12.5g  %14.5g  %18.5g  %14.5g\n", "bf16", double(bfloat16_to_float(0x7f7f)),
                double(bfloat16_to_float(0x0080)), double(bfloat16_to_float(0x0001)),
                double(bfloat16_to_float(0x3f81)) - 1);

    std::printf("\n%12s  %6s  %14s  %9s    %6s  %14s  %9s\n", "x", "fp16", "value", "rel. err", "bf16", "value",
                "rel. err");
    for (float x : {0.1f, 1.0f / 3, 3.14159265f, 2049.0f, 2051.0f, 65504.0f, 65520.0f, 1e5f, 1e-5f, 1e-8f, 1e-9f}) {
        const std::uint16_t h = float_to_half(x), b = float_to_bfloat16(x);
        const double vh = half_to_float(h), vb = bfloat16_to_float(b);
        std::printf("%12.6g  0x%04x  %14.8g  %9.1e    0x%04x  %14.8g  %9.1e\n", double(x), h, vh,
                    std::fabs(vh - x) / x, b, vb, std::fabs(vb - x) / x);
    }
    std::printf("65520 is halfway between 65504 and the next step, 65536, which float16 cannot hold:\n"
                "it overflows to inf. 1e-5 is a float16 subnormal (fewer digits: relative error\n"
                "above 1e-4); 1e-8 is below half the smallest subnormal and becomes 0. bfloat16 keeps\n"
                "every one of them, to 2-3 digits. (The tests check every one of the 65,536 patterns\n"
                "of both formats, and every rounding tie.)\n");
}

// ---------------------------------------------------------------------------------------------
// 2. A matrix product with 16-bit inputs. The products of two float16 numbers are exact in
// fp32 (11 + 11 bits fit in 24); what matters is where the running sum lives. A float16 sum
// keeps 11 bits: once it is 2048, adding a 1 rounds back to 2048. Inputs uniform in [0, 1]
// make sums that grow with K, the worst case. The error is against the exact product of the
// unrounded inputs, computed in double.
// ---------------------------------------------------------------------------------------------
static void low_precision_products() {
    heading("2. [16, K]x[K, 16] with 16-bit inputs: where the sum is kept");
    struct Config {
        const char* name;
        Precision inputs, accumulator;
    };
    const Config configs[] = {{"fp32 in, fp32 sum", Precision::fp32, Precision::fp32},
                              {"fp16 in, fp32 sum", Precision::fp16, Precision::fp32},
                              {"fp16 in, fp16 sum", Precision::fp16, Precision::fp16},
                              {"bf16 in, fp32 sum", Precision::bf16, Precision::fp32},
                              {"bf16 in, bf16 sum", Precision::bf16, Precision::bf16}};
    std::printf("%6s", "K");
    for (const Config& c : configs) std::printf("  %18s", c.name);
    std::printf("\n");
    Plot plot("Relative error of a product with 16-bit inputs", "K", "largest relative error", Scale::log_log);
    std::vector<double> ks;
    std::vector<std::vector<double>> errors(5);
    Rng rng(2);
    for (int K : {16, 64, 256, 1024, 4096, 16384}) {
        const Tensor a = uniform({16, K}, rng, 0, 1), b = uniform({K, 16}, rng, 0, 1);
        std::vector<double> exact(256, 0.0);
        for (int i = 0; i < 16; ++i)
            for (int j = 0; j < 16; ++j)
                for (int k = 0; k < K; ++k) exact[i * 16 + j] += double(a.at({i, k})) * double(b.at({k, j}));
        std::printf("%6d", K);
        ks.push_back(K);
        for (int c = 0; c < 5; ++c) {
            const Tensor out = matmul_in_precision(a, b, configs[c].inputs, configs[c].accumulator);
            double worst = 0;
            for (int i = 0; i < 256; ++i) worst = std::max(worst, std::fabs(out.values()[i] - exact[i]) / exact[i]);
            std::printf("  %18.1e", worst);
            errors[c].push_back(worst);
        }
        std::printf("\n");
    }
    for (int c = 0; c < 5; ++c) plot.add(configs[c].name, ks, errors[c]);
    plot.save("13_matmul_precision");
    const Tensor ones_row = Tensor::full({1, 4096}, 1), ones_column = Tensor::full({4096, 1}, 1);
    std::printf("\nWith an fp32 sum, 16-bit inputs cost only their own rounding (about 2^-11 for fp16,\n"
                "2^-8 for bf16), whatever K is. With a 16-bit sum the error grows with K until the sum\n"
                "stops moving: 4096 ones add up to %g in fp16 and %g in bf16. That is why tensor cores\n"
                "take 16-bit inputs but accumulate in fp32.\n",
                double(matmul_in_precision(ones_row, ones_column, Precision::fp16, Precision::fp16).item()),
                double(matmul_in_precision(ones_row, ones_column, Precision::bf16, Precision::bf16).item()));
}

// ---------------------------------------------------------------------------------------------
// 3. Loss scaling. float16's smallest positive value is 2^−24 ≈ 6e-8, so a gradient of 1e-9 is
// stored as 0. Multiply the loss by S = 65536 = 2^16 and every gradient is multiplied by S too
// (backward is linear in its seed): 1e-9·65536 = 6.55e-5, above the smallest normal float16
// (6.1e-5), so it keeps all 11 bits. Divide by S in fp32 before the optimizer step, and 1e-9
// comes back. (S is a power of two, so scaling and unscaling are exact.)
// ---------------------------------------------------------------------------------------------
static void loss_scaling() {
    heading("3. A gradient of 1e-9 in float16, with and without loss scaling");
    const float g = 1e-9f, S = 65536;
    const float plain = round_to_precision(g, Precision::fp16);
    const float scaled = round_to_precision(g * S, Precision::fp16);
    std::printf("  1e-9 stored in fp16:                 %g\n", double(plain));
    std::printf("  1e-9 x 65536 = %.6g stored in fp16: %.6g (bits 0x%04x, a normal number)\n", double(g * S),
                double(scaled), float_to_half(g * S));
    std::printf("  divided by 65536 in fp32:            %.6g (relative error %.1e)\n", double(scaled / S),
                std::fabs(scaled / S - g) / g);
    std::printf("  1e-9 stored in bf16, unscaled:       %.6g\n",
                double(round_to_precision(g, Precision::bf16)));
    std::printf("bfloat16 has float's exponent range, so it needs no scaling; only float16 does.\n");
}

// ---------------------------------------------------------------------------------------------
// 4. Mixed-precision training, simulated with casts (engine.cpp §4.6). Every tensor that a
// 16-bit run would hold in 16 bits goes through cast(): the input, the weights (cast down from
// the fp32 master copy each step), every layer's output. A cast rounds going forward and rounds
// the gradient coming back, so the backward pass sees float16 gradients exactly where a real
// run would. The products accumulate in fp32 (the engine's float), as on tensor cores; the
// loss is computed in fp32.
// The model: MLP 2 → 32 → 32 → 2 on the two moons, SGD with momentum, 150 steps. To put the
// gradients where a large model's are, the loss is multiplied by 2^−18 and the learning rate
// by 2^18: an fp32 run is then the same run, but its gradients are 262,144 times smaller.
// Recipes (each step: scale the loss, backward, unscale, skip the step if anything overflowed):
//     fp32                    no casts
//     fp16, no scaling        S = 1
//     fp16, S = 65536         a fixed scale
//     fp16, dynamic           DynamicLossScaler from S = 2^40, halved on overflow, doubled
//                             after 25 good steps in a row
//     bf16, no scaling
// and then, at a small learning rate (small updates, as late in training), S = 65536 with the
// fp32 master weights against weights that are themselves rounded to fp16 after every step.
// ---------------------------------------------------------------------------------------------
struct Moons2 {
    Tensor x;
    std::vector<int> labels;
};

static Moons2 moons(int n) {
    Rng rng(4);
    const Moons m = make_moons(n, 0.1, rng);
    Moons2 d{Tensor({n, 2}), {}};
    for (int i = 0; i < n; ++i) {
        d.x.at({i, 0}) = real(m.x[i][0]), d.x.at({i, 1}) = real(m.x[i][1]);
        d.labels.push_back(m.y[i] > 0);
    }
    return d;
}

// The MLP's forward pass with every 16-bit tensor cast to precision p.
static Tensor forward_in(const nn::MLP& model, const Tensor& x, Precision p) {
    Tensor h = cast(x, p);
    for (std::size_t l = 0; l < model.layers.size(); ++l) {
        const nn::Linear& layer = model.layers[l];
        h = cast(matmul(h, cast(layer.W, p)) + cast(layer.b, p), p);
        if (l + 1 < model.layers.size()) h = cast(relu(h), p);
    }
    return h;   // logits, in p
}

struct Recipe {
    const char* name;
    Precision precision;
    double scale;            // the loss scale to start with (1: none)
    bool dynamic;            // a DynamicLossScaler adapts it
    bool fp32_master;        // false: the weights are rounded to `precision` after every step
};

struct MixedRun {
    std::vector<double> loss, log2_scale;
    double zero_gradients = -1;   // the fraction of gradient numbers exactly 0 (first finite step)
    long skipped = 0;
};

static const double loss_factor = std::ldexp(1.0, -18);

static MixedRun train_mixed(const Recipe& recipe, const Moons2& data, double lr) {
    Rng rng(13);
    nn::MLP model({2, 32, 32, 2}, rng);
    const std::vector<Tensor> params = model.parameters();
    SGD opt(params, lr / loss_factor, 0.9);
    DynamicLossScaler scaler(recipe.scale, 25);
    MixedRun run;
    for (int step = 0; step < 150; ++step) {
        opt.zero_grad();
        const Tensor loss = cross_entropy(forward_in(model, data.x, recipe.precision), data.labels) * real(loss_factor);
        run.loss.push_back(loss.item() / loss_factor);
        scaler.scale_loss(loss).backward();
        const bool finite = scaler.unscale_gradients(params);
        if (finite && run.zero_gradients < 0) {   // the first step that did not overflow
            std::size_t zeros = 0, total = 0;
            for (const Tensor& p : params)
                for (real g : p.grad()) zeros += g == 0, ++total;
            run.zero_gradients = double(zeros) / double(total);
        }
        if (finite) opt.step();
        if (recipe.dynamic) scaler.update(finite);
        else if (!finite) ++run.skipped;
        if (!recipe.fp32_master)
            for (const Tensor& p : params)
                for (real& w : p.values()) w = round_to_precision(w, recipe.precision);
        run.log2_scale.push_back(std::log2(scaler.scale()));
    }
    if (recipe.dynamic) run.skipped = scaler.skipped_steps();
    return run;
}

static void print_run(const char* name, const MixedRun& run, double scale) {
    std::printf("%-26s  %11.1f%%  %9.4f  %9.4f  %9.4f  %8ld  %8s\n", name, 100 * run.zero_gradients, run.loss[0],
                run.loss[50], run.loss.back(), run.skipped,
                scale == 1 ? "-" : ("2^" + std::to_string(int(run.log2_scale.back()))).c_str());
}

static void mixed_precision_training() {
    heading("4. Mixed-precision training: MLP 2-32-32-2 on the moons, gradients x 2^-18");
    const Moons2 data = moons(128);
    const Recipe recipes[] = {
        {"fp32", Precision::fp32, 1, false, true},
        {"fp16, no scaling", Precision::fp16, 1, false, true},
        {"fp16, S = 65536", Precision::fp16, 65536, false, true},
        {"fp16, dynamic S", Precision::fp16, std::ldexp(1.0, 40), true, true},
        {"bf16, no scaling", Precision::bf16, 1, false, true},
    };
    std::printf("%-26s  %12s  %9s  %9s  %9s  %8s  %8s\n", "recipe (lr 0.05)", "zero grads", "loss 0", "loss 50",
                "loss 149", "skipped", "final S");
    Plot losses("Mixed-precision training (gradients x 2^-18)", "step", "loss", Scale::log_y);
    std::vector<MixedRun> runs;
    for (const Recipe& r : recipes) {
        runs.push_back(train_mixed(r, data, 0.05));
        print_run(r.name, runs.back(), r.scale);
        losses.add(r.name, runs.back().loss);
    }
    losses.save("13_mixed_precision_loss");
    Plot scale("The dynamic loss scale", "step", "log2(S)");
    scale.add("fp16, dynamic S", runs[3].log2_scale);
    scale.save("13_dynamic_loss_scale");
    std::printf(
        "\n(zero grads: gradient numbers exactly 0 at the first step that did not overflow; in fp32\n"
        "these are ReLU units that no example activates.)\n"
        "fp16 without scaling: %.0f%% of the gradients underflow to 0, and the loss does not move.\n"
        "A fixed S = 65536 lifts them into float16's normal range: the run follows fp32.\n"
        "The dynamic scaler starts far too high, at 2^40: its first %ld steps overflow, are skipped\n"
        "  and halve S. After that it doubles S after every 25 good steps in a row and halves it\n"
        "  when a step overflows: S climbs as training makes the gradients smaller (the plot).\n"
        "bfloat16 needs no scaling (its range is float's); it rounds more coarsely, and trains.\n",
        100 * runs[1].zero_gradients, runs[3].skipped);

    // fp32 master weights. A small learning rate makes small updates, as late in training.
    const Recipe master = {"fp16, S = 65536, master", Precision::fp16, 65536, false, true};
    const Recipe no_master = {"fp16, S = 65536, fp16 w", Precision::fp16, 65536, false, false};
    std::printf("\n%-26s  %12s  %9s  %9s  %9s  %8s  %8s\n", "recipe (lr 0.0001)", "zero grads", "loss 0", "loss 50",
                "loss 149", "skipped", "final S");
    const MixedRun with_master = train_mixed(master, data, 0.0001), without = train_mixed(no_master, data, 0.0001);
    print_run("fp32 master weights", with_master, 65536);
    print_run("fp16 weights, no master", without, 65536);
    float in_fp16 = 1, in_bf16 = 1, in_fp32 = 1;
    for (int step = 0; step < 10000; ++step) {
        in_fp16 = round_to_precision(in_fp16 + 1e-4f, Precision::fp16);
        in_bf16 = round_to_precision(in_bf16 + 1e-4f, Precision::bf16);
        in_fp32 += 1e-4f;
    }
    std::printf("With the weights themselves in fp16 the run falls behind (loss %.4f against %.4f): an\n"
                "update smaller than half the spacing between neighbouring float16 values is rounded\n"
                "away, and here that hits the larger weights. The extreme case, 10,000 updates of +1e-4\n"
                "to a weight of 1: fp32 %.4f, fp16 %.4f, bf16 %.4f (near 1 the fp16 spacing is\n"
                "2^-10 = 0.00098, so 1.0001 rounds back to 1 every time). Hence the fp32 master copy.\n",
                without.loss.back(), with_master.loss.back(), double(in_fp32), double(in_fp16), double(in_bf16));
}

// ---------------------------------------------------------------------------------------------
// 5. Memory per parameter. Training with Adam keeps, for every parameter:
//     fp32:   weight 4 + gradient 4 + m 4 + v 4                                = 16 bytes
//     mixed:  fp16 weight 2 + fp16 gradient 2 + fp32 master 4 + m 4 + v 4      = 16 bytes
// The texts' "14 bytes per parameter" for mixed precision counts weight, master and Adam
// (2 + 4 + 4 + 4) and leaves out the 16-bit gradient. Inference needs the weights only: 2
// bytes in fp16. Then come the activations, which scale with batch × sequence × width × layers
// instead of with the parameters, and are kept from the forward pass until the backward pass
// has used them.
// This lesson's model, MLP 784 → 256 → 256 → 10 with batch 128 and Adam in fp32, counted by
// formula and measured by the engine. The engine keeps, for each layer, x·W, x·W + b and the
// ReLU of that (3 tensors [B, width]; 2 for the last layer), then the loss; and during backward
// a gradient of the same size for each of them (PyTorch frees those as it goes; this engine
// keeps them until the graph is freed).
// ---------------------------------------------------------------------------------------------
static void memory_per_parameter() {
    heading("5. Memory: parameters, gradients, optimizer state, activations");
    const double seven_b = 7e9, GB = 1e9;
    std::printf("%-52s  %9s  %12s\n", "", "bytes", "7B model");
    std::printf("%-52s  %9d  %9.0f GB\n", "fp32 + Adam: weight, gradient, m, v", 16, 16 * seven_b / GB);
    std::printf("%-52s  %9d  %9.0f GB\n", "mixed + Adam: fp16 weight, fp32 master, m, v (texts)", 14,
                14 * seven_b / GB);
    std::printf("%-52s  %9d  %9.0f GB\n", "  ... and the fp16 gradient", 16, 16 * seven_b / GB);
    std::printf("%-52s  %9d  %9.0f GB\n", "  of which Adam's m and v", 8, 8 * seven_b / GB);
    std::printf("%-52s  %9d  %9.0f GB\n", "inference: fp16 weights", 2, 2 * seven_b / GB);
    const double layer_numbers = 4.0 * 32 * 2048 * 4096, GiB = 1024.0 * 1024 * 1024;
    std::printf("\nActivations of one transformer layer, batch 32 x 2048 tokens x d = 4096, about 4 tensors\n"
                "of [B*T, d] (the texts' estimate): %.2e numbers, %.0f GiB in fp32, %.0f GiB in fp16: 16-bit\n"
                "activations save %.0f GiB per layer, %.0f GiB over 32 layers. Activations, not weights, are\n"
                "what limits the batch and the sequence length.\n",
                layer_numbers, layer_numbers * 4 / GiB, layer_numbers * 2 / GiB, layer_numbers * 2 / GiB,
                32 * layer_numbers * 2 / GiB);

    const bool counted = bytes_are_counted();
    Rng rng(5);
    const int B = 128;
    nn::MLP model({784, 256, 256, 10}, rng);
    Adam opt(model.parameters());
    const Tensor x = uniform({B, 784}, rng, 0, 1);
    std::vector<int> labels;
    for (int i = 0; i < B; ++i) labels.push_back(i % 10);
    auto step = [&] {
        opt.zero_grad();
        const Tensor loss = cross_entropy(model(x), labels);
        loss.backward();
        opt.step();
    };
    step();   // the first step creates the gradients and Adam's state
    std::size_t n_params = 0;
    for (const Tensor& p : model.parameters()) n_params += p.numel();
    const std::size_t r = sizeof(real);
    const std::size_t activations = std::size_t(B) * (3 * 256 + 3 * 256 + 2 * 10) * r + r;   // + the loss
    reset_peak_tensor_bytes();
    const std::size_t start = current_tensor_bytes(), held_before = tensor_bytes();
    std::size_t held_after_forward = 0;
    {
        opt.zero_grad();
        const Tensor loss = cross_entropy(model(x), labels);
        held_after_forward = tensor_bytes() - held_before;
        loss.backward();
        opt.step();
    }
    const std::size_t peak = peak_tensor_bytes() - start;

    // Inference: the same weights without requires_grad, so no graph keeps anything alive.
    nn::MLP frozen = model;
    for (nn::Linear& layer : frozen.layers) layer.W = layer.W.detach(), layer.b = layer.b.detach();
    reset_peak_tensor_bytes();
    const std::size_t inference_start = current_tensor_bytes();
    frozen(x);
    const std::size_t inference_peak = peak_tensor_bytes() - inference_start;

    std::printf("\nMLP 784-256-256-10, %zu parameters, batch %d, Adam, fp32:\n", n_params, B);
    std::printf("  %-44s  %12s\n", "weights (4 bytes each)", megabytes(4.0 * n_params).c_str());
    std::printf("  %-44s  %12s\n", "gradients", megabytes(4.0 * n_params).c_str());
    std::printf("  %-44s  %12s  (state_bytes(): %s)\n", "Adam's m and v", megabytes(8.0 * n_params).c_str(),
                megabytes(double(opt.state_bytes())).c_str());
    std::printf("  %-44s  %12s  (measured: %s)\n", "activations after the forward pass, estimated",
                megabytes(double(activations)).c_str(), megabytes(double(held_after_forward)).c_str());
    std::printf("  %-44s  %12s  (measured peak: %s)\n", "... with their gradients during backward",
                megabytes(2.0 * activations).c_str(), counted ? megabytes(double(peak)).c_str() : "n/a");
    std::printf("  %-44s  %12s  (measured peak: %s)\n", "inference, no graph: about 2 layers at a time",
                megabytes(double(B) * (2 * 256 + 256) * r).c_str(),
                counted ? megabytes(double(inference_peak)).c_str() : "n/a");
    std::printf("The measured peaks count what a step adds to the tensors already held (weights, their\n"
                "gradients, the input; Adam's state is kept outside the tensors). At batch %d a training\n"
                "step's activations and their gradients already outweigh the weights; they grow with the\n"
                "batch, while weights, gradients and Adam's state do not.\n", B);
    if (!counted) std::printf("(n/a: this engine.cpp lacks the byte-counting hooks of §4.1.)\n");
}

// ---------------------------------------------------------------------------------------------
// 6. Gradient accumulation. The loss of a batch is the mean over its examples, so the gradient
// of the batch is the mean of the micro-batches' gradients: run backward() on each micro-batch's
// loss divided by the number of micro-batches, let the gradients add up (the += of lesson 02),
// and step once. Only one micro-batch's activations exist at a time. (With BatchNorm this is no
// longer exact: its statistics come from the micro-batch; lesson 11.)
// Effective batch = micro-batch × accumulation steps × GPUs: 4 × 8 × 4 = 128 examples; with
// sequences, 2 × 4096 tokens × 16 steps × 8 GPUs = 1,048,576 tokens per optimizer step.
// ---------------------------------------------------------------------------------------------
static void gradient_accumulation() {
    heading("6. Gradient accumulation: batch 512 at once, or 8 micro-batches of 64");
    const bool counted = bytes_are_counted();
    Rng rng(6);
    nn::MLP model({64, 256, 256, 10}, rng);
    const Tensor x = randn({512, 64}, rng);
    std::vector<int> labels;
    for (int i = 0; i < 512; ++i) labels.push_back(int(rng.below(10)));
    std::vector<std::vector<real>> grads[2];
    std::size_t peak[2];
    cross_entropy(model(x), labels).backward();   // the parameters' gradients exist from here on
    for (int micro = 0; micro < 2; ++micro) {
        for (const Tensor& p : model.parameters()) p.zero_grad();
        reset_peak_tensor_bytes();
        const std::size_t start = current_tensor_bytes();
        const int parts = micro ? 8 : 1, rows = 512 / parts;
        for (int k = 0; k < parts; ++k) {
            const std::vector<int> part(labels.begin() + k * rows, labels.begin() + (k + 1) * rows);
            (cross_entropy(model(slice(x, 0, k * rows, (k + 1) * rows)), part) / real(parts)).backward();
        }
        peak[micro] = peak_tensor_bytes() - start;
        for (const Tensor& p : model.parameters()) grads[micro].push_back(p.grad());
    }
    double worst = 0, largest = 0;
    for (std::size_t i = 0; i < grads[0].size(); ++i) {
        worst = std::max(worst, max_difference(grads[0][i], grads[1][i]));
        for (real g : grads[0][i]) largest = std::max(largest, double(std::fabs(g)));
    }
    std::printf("largest |difference| between the two gradients: %.1e (the largest gradient is %.1e).\n",
                worst, largest);
    if (worst == 0)
        std::printf("Equal to the last bit: the batch's mean divides by 512, each micro-batch's by 64 and\n"
                    "then by 8 (powers of two: exact), and matmul's backward adds the rows into the\n"
                    "gradient one by one, in the same order either way. In general expect float rounding.\n");
    if (counted)
        std::printf("measured peak of the step: %s at once, %s in 8 micro-batches (%.1fx less)\n",
                    megabytes(double(peak[0])).c_str(), megabytes(double(peak[1])).c_str(),
                    double(peak[0]) / double(peak[1]));
    else
        std::printf("measured peak: n/a (this engine.cpp lacks the byte-counting hooks of §4.1)\n");
    std::printf("Only one micro-batch's activations (and their gradients) exist at a time.\n");
}

// ---------------------------------------------------------------------------------------------
// 7. Activation checkpointing (engine.cpp §4.7). A 24-layer tanh MLP, width 128, batch 64, cut
// into s checkpointed segments: each segment keeps only its input during the forward pass and
// runs again during the backward pass. Peak memory first falls with s (fewer layers' activations
// at once) and then rises again (more segment inputs kept): about √24 ≈ 5 segments is the
// classic choice. The cost: one more forward pass, a step of 4 forward passes' FLOPs instead of 3.
// ---------------------------------------------------------------------------------------------
struct DeepTanh {
    std::vector<nn::Linear> layers;
    DeepTanh(int depth, int width, Rng& rng) {
        for (int l = 0; l < depth; ++l) layers.emplace_back(width, width, rng, Init::xavier_normal);
    }
    Tensor run(Tensor h, int from, int to) const {
        for (int l = from; l < to; ++l) h = tanh(layers[l](h));
        return h;
    }
    Tensor operator()(const Tensor& x, int segments) const {   // 0: no checkpointing
        const int depth = int(layers.size());
        if (segments == 0) return run(x, 0, depth);
        Tensor h = x;
        for (int s = 0; s < segments; ++s) {
            const int from = depth * s / segments, to = depth * (s + 1) / segments;
            std::vector<Tensor> params;
            for (int l = from; l < to; ++l)
                for (const Tensor& p : layers[l].parameters()) params.push_back(p);
            h = activation_checkpoint([this, from, to](const Tensor& in) { return run(in, from, to); }, h, params);
        }
        return h;
    }
    std::vector<Tensor> parameters() const {
        std::vector<Tensor> p;
        for (const nn::Linear& l : layers)
            for (const Tensor& t : l.parameters()) p.push_back(t);
        return p;
    }
};

static void activation_checkpointing() {
    heading("7. Activation checkpointing: 24 tanh layers of width 128, batch 64");
    const bool counted = bytes_are_counted(), flops_counted = matmul_flops_are_counted();
    Rng rng(7);
    const DeepTanh net(24, 128, rng);
    const Tensor x = randn({64, 128}, rng);
    std::printf("%9s  %16s  %18s  %12s  %9s\n", "segments", "measured peak", "FLOPs of the step", "vs plain",
                "time");
    std::vector<real> plain_grad;
    double plain_flops = 0;
    std::vector<double> xs, peaks;
    bool identical = true;
    mean(net(x, 0)).backward();   // the parameters' gradients exist from here on
    for (int segments : {0, 1, 2, 4, 6, 8, 12, 24}) {
        for (const Tensor& p : net.parameters()) p.zero_grad();
        reset_peak_tensor_bytes();
        reset_counted_flops();
        const std::size_t start = current_tensor_bytes();
        const auto t0 = Clock::now();
        mean(net(x, segments)).backward();
        const double seconds = seconds_since(t0);
        const std::size_t peak = peak_tensor_bytes() - start;
        const double flops = double(counted_flops());
        if (segments == 0) plain_grad = net.layers[0].W.grad(), plain_flops = flops;
        else identical = identical && std::vector<real>(net.layers[0].W.grad()) == plain_grad;
        char name[16];
        std::snprintf(name, sizeof name, segments ? "%d" : "none", segments);
        char flops_text[32] = "n/a", ratio_text[32] = "n/a";
        if (flops_counted) {
            std::snprintf(flops_text, sizeof flops_text, "%.4g", flops);
            std::snprintf(ratio_text, sizeof ratio_text, "%.2fx", flops / plain_flops);
        }
        std::printf("%9s  %16s  %18s  %12s  %6.0f ms\n", name, counted ? megabytes(double(peak)).c_str() : "n/a",
                    flops_text, ratio_text, 1e3 * seconds);
        if (segments > 0) xs.push_back(segments), peaks.push_back(double(peak));
    }
    std::printf("\nThe first layer's weight gradient is %s with every number of segments: the\n"
                "recomputation runs the same ops on the same numbers.\n",
                identical ? "bit-for-bit the same" : "NOT the same");
    if (!flops_counted) std::printf("(FLOPs: this engine.cpp's matmul does not count them; see §4.1.)\n");
    if (!counted) std::printf("(peaks: this engine.cpp lacks the byte-counting hooks of §4.1.)\n");
    std::printf("One segment saves nothing (it is recomputed whole); a segment per layer keeps all 24\n"
                "inputs. The step costs 4/3 of a plain one: the FLOPs of one more forward pass (the\n"
                "first segment's input needs no gradient, hence slightly less).\n");
    if (counted) {
        Plot plot("Peak memory of a step against checkpointed segments (24 layers)", "segments",
                  "measured peak bytes");
        plot.add("checkpointed", xs, peaks);
        plot.save("13_checkpoint_peak");
    }
}

static void lesson() {
    std::printf("Lesson 13: precision and memory\n");
    formats();
    low_precision_products();
    loss_scaling();
    mixed_precision_training();
    memory_per_parameter();
    gradient_accumulation();
    activation_checkpointing();
}

// ---- Homework --------------------------------------------------------------------------------

// 13.1  float → bfloat16 by hand: the top 16 bits of the float, rounded to nearest with ties
// to even (look at the low 16 bits: above 0x8000 round up, below round down, exactly 0x8000
// round to make the result even). A NaN must stay a NaN: if its top half would read as inf
// (all its payload in the low half), set bit 6 (0x40) of the result. Use std::memcpy to get
// the bits of x.
std::uint16_t to_bfloat16(float x) {
    // BEGIN EXERCISE 13.1
    throw not_implemented("13.1");
    // END EXERCISE
}

// 13.2  The dynamic loss scaler's rule, after one step's gradients were checked:
//     an inf or NaN:  scale ← scale·0.5, good_steps ← 0
//     all finite:     good_steps ← good_steps + 1; when it reaches growth_interval,
//                     scale ← scale·2 and good_steps ← 0
void update_loss_scale(double& scale, int& good_steps, bool gradients_finite, int growth_interval) {
    // BEGIN EXERCISE 13.2
    throw not_implemented("13.2");
    // END EXERCISE
}

// 13.3  Bytes per parameter of training with an optimizer that keeps `states` numbers per
// parameter (Adam: 2) in fp32. fp32 training: weight 4, gradient 4, no master copy. Mixed
// precision: 16-bit weight 2 and gradient 2, plus an fp32 master copy 4.
struct BytesPerParameter {
    int weight = 0, gradient = 0, master = 0, optimizer = 0;
    int total() const { return weight + gradient + master + optimizer; }
};

BytesPerParameter training_bytes(bool mixed_precision, int states) {
    // BEGIN EXERCISE 13.3
    throw not_implemented("13.3");
    // END EXERCISE
}

// 13.4  The bytes of activations the engine keeps after the forward pass of an nn::MLP with
// layer sizes `sizes` on a batch of `batch` rows, followed by cross_entropy: for every layer
// its output x·W + b, [batch, out] (nn::Linear computes it as one fused op, engine.cpp §2.4);
// for every layer but the last also the activation [batch, out]; and the loss, one number.
// Each number is sizeof(real) bytes.
std::size_t mlp_activation_bytes(const std::vector<int>& sizes, int batch) {
    // BEGIN EXERCISE 13.4
    throw not_implemented("13.4");
    // END EXERCISE
}

static int check_homework() {
    Homework hw("13");

    hw.check("13.1", "float to bfloat16 by hand",
             "round to nearest, ties to even, on the bits: keep the top 16, round up if the low 16 "
             "are > 0x8000, or = 0x8000 with an odd top half; a NaN must not come out as inf",
             [] {
                 expect_true("1.0 -> 0x3f80", to_bfloat16(1.0f) == 0x3f80);
                 expect_true("1 + 2^-8 (a tie) -> 0x3f80 (even)", to_bfloat16(1 + std::ldexp(1.0f, -8)) == 0x3f80);
                 expect_true("1 + 3*2^-8 (a tie) -> 0x3f82 (even)", to_bfloat16(1 + std::ldexp(3.0f, -8)) == 0x3f82);
                 expect_true("the largest float rounds up to inf, 0x7f80",
                             to_bfloat16(std::numeric_limits<float>::max()) == 0x7f80);
                 expect_true("-inf -> 0xff80", to_bfloat16(-INFINITY) == 0xff80);
                 std::uint32_t bits = 0x7f800001;   // a NaN whose payload is only in the low half
                 float nan_low;
                 std::memcpy(&nan_low, &bits, sizeof nan_low);
                 expect_true("a NaN stays a NaN", std::isnan(bfloat16_to_float(to_bfloat16(nan_low))));
                 for (int p = 0; p < 65536; ++p) {   // every bfloat16 converts back to itself
                     const float f = bfloat16_to_float(std::uint16_t(p));
                     if (to_bfloat16(f) != p) expect_true("every bfloat16 value converts back to its own bits", false);
                 }
                 Rng rng(131);
                 for (int i = 0; i < 200000; ++i) {   // random bit patterns, against the engine
                     const std::uint32_t random = std::uint32_t(rng.next_u64());
                     float f;
                     std::memcpy(&f, &random, sizeof f);
                     if (!std::isnan(f) && to_bfloat16(f) != float_to_bfloat16(f))
                         expect_true("200,000 random floats: the same bits as the engine's float_to_bfloat16", false);
                 }
             });

    hw.check("13.2", "the dynamic loss scale", "on overflow halve and restart the count; count good steps, double at growth_interval",
             [] {
                 double scale = 65536;
                 int good = 0;
                 update_loss_scale(scale, good, false, 3);
                 expect_near("an overflow halves the scale", scale, 32768, 0);
                 for (int i = 1; i <= 3; ++i) update_loss_scale(scale, good, true, 3);
                 expect_near("3 good steps in a row double it", scale, 65536, 0);
                 expect_near("and restart the count", good, 0, 0);
                 Rng rng(132);
                 DynamicLossScaler engine(1024, 5);
                 scale = 1024, good = 0;
                 for (int step = 0; step < 500; ++step) {
                     const bool finite = rng.uniform() > 0.1;
                     engine.update(finite);
                     update_loss_scale(scale, good, finite, 5);
                     expect_near("500 random steps: the scale, against DynamicLossScaler", scale, engine.scale(), 0);
                     expect_near("and the count of good steps", good, engine.good_steps_in_a_row(), 0);
                 }
             });

    hw.check("13.3", "training memory per parameter",
             "total = weight + gradient + master copy + optimizer state; fp32 is 4 bytes, 16-bit is 2; "
             "the state stays fp32 in both modes, the master copy exists only in mixed precision",
             [] {
                 const BytesPerParameter adam32 = training_bytes(false, 2), mixed = training_bytes(true, 2);
                 expect_near("fp32 Adam: 16 bytes per parameter", adam32.total(), 16, 0);
                 expect_near("mixed Adam without the 16-bit gradient: the texts' 14 bytes",
                             mixed.total() - mixed.gradient, 14, 0);
                 expect_near("mixed Adam, gradient included", mixed.total(), 16, 0);
                 expect_near("a 7B model's Adam state in GB (the texts: 56)", 7e9 * mixed.optimizer / 1e9, 56, 1e-9);
                 expect_near("fp32 SGD without momentum: 8 bytes", training_bytes(false, 0).total(), 8, 0);
                 expect_near("mixed SGD with momentum: 12 bytes", training_bytes(true, 1).total(), 12, 0);
                 expect_near("no master copy in fp32", training_bytes(false, 2).master, 0, 0);
             });

    hw.check("13.4", "activation bytes of an MLP's forward pass",
             "bytes = (bytes of one real)·(1 + Σ_l k_l·batch·out_l): the 1 is the loss; "
             "k_l = 2 for a hidden layer (x·W + b, then its activation), 1 for the output layer",
             [] {
                 const std::vector<std::vector<int>> shapes = {{4, 8, 3}, {784, 256, 256, 10}, {2, 5}, {3, 16, 16, 16, 2}};
                 for (const std::vector<int>& sizes : shapes)
                     for (int batch : {1, 7, 32}) {
                         Rng rng(133);
                         nn::MLP model(sizes, rng);
                         const Tensor x = randn({batch, sizes[0]}, rng);
                         std::vector<int> labels(batch, 0);
                         const std::size_t before = tensor_bytes();
                         const Tensor loss = cross_entropy(model(x), labels);
                         expect_near("against the bytes the engine holds after the forward pass (tensor_bytes)",
                                     double(mlp_activation_bytes(sizes, batch)), double(tensor_bytes() - before), 0);
                     }
             });

    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
