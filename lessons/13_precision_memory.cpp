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
//  3b. The order of a step: unscale, then clip (clipping first is S times too small), and skip
//      the step when a scaled gradient overflowed.
//   4. Mixed-precision training on the two moons: no scaling, a fixed scale, a dynamic scaler,
//      bfloat16, and 16-bit weights without fp32 master weights.
//   5. Memory per parameter (16 bytes for fp32 Adam, 14 + 2 mixed), for this lesson's model
//      and a 7B model, beside the engine's measured peak; ZeRO stages 0-3 (FSDP) sharding it
//      over 8 and 64 devices, for 7B and 70B.
//   6. Gradient accumulation: the same gradient as the large batch, in less memory.
//   7. Activation checkpointing: the same gradient again, a lower peak, one more forward pass.
//   8. Planning a run: 6·N·D FLOPs, hours and dollars (the texts' 125M model on 10B tokens).
//
// Run it:             make lesson N=13        (plots go to build/plots/13_*.svg)
// Grade the homework: make check N=13

#include "lesson.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

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
    std::printf("%-6s  %12s  %14s  %18s  %14s\n", "format", "largest", "smallest normal",
                "smallest subnormal", "spacing at 1");
    std::printf(
        "%-6s  %12.5g  %14.5g  %18.5g  %14.5g\n", "fp32", double(std::numeric_limits<float>::max()),
        double(std::numeric_limits<float>::min()), double(std::numeric_limits<float>::denorm_min()),
        double(std::numeric_limits<float>::epsilon()));
    std::printf("%-6s  %12.5g  %14.5g  %18.5g  %14.5g\n", "fp16", double(half_to_float(0x7bff)),
                double(half_to_float(0x0400)), double(half_to_float(0x0001)),
                double(half_to_float(0x3c01)) - 1);
    std::printf("%-6s  %12.5g  %14.5g  %18.5g  %14.5g\n", "bf16", double(bfloat16_to_float(0x7f7f)),
                double(bfloat16_to_float(0x0080)), double(bfloat16_to_float(0x0001)),
                double(bfloat16_to_float(0x3f81)) - 1);

    std::printf("\n%12s  %6s  %14s  %9s    %6s  %14s  %9s\n", "x", "fp16", "value", "rel. err",
                "bf16", "value", "rel. err");
    for (float x : {0.1f, 1.0f / 3, 3.14159265f, 2049.0f, 2051.0f, 65504.0f, 65520.0f, 1e5f, 1e-5f,
                    1e-8f, 1e-9f}) {
        const std::uint16_t h = float_to_half(x), b = float_to_bfloat16(x);
        const double vh = half_to_float(h), vb = bfloat16_to_float(b);
        std::printf("%12.6g  0x%04x  %14.8g  %9.1e    0x%04x  %14.8g  %9.1e\n", double(x), h, vh,
                    std::fabs(vh - x) / x, b, vb, std::fabs(vb - x) / x);
    }
    std::printf(
        "65520 is halfway between 65504 and the next step, 65536, which float16 cannot hold:\n"
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
    Plot plot("Relative error of a product with 16-bit inputs", "K", "largest relative error",
              Scale::log_log);
    std::vector<double> ks;
    std::vector<std::vector<double>> errors(5);
    Rng rng(2);
    for (int K : {16, 64, 256, 1024, 4096, 16384}) {
        const Tensor a = uniform({16, K}, rng, 0, 1), b = uniform({K, 16}, rng, 0, 1);
        std::vector<double> exact(256, 0.0);
        for (int i = 0; i < 16; ++i)
            for (int j = 0; j < 16; ++j)
                for (int k = 0; k < K; ++k)
                    exact[i * 16 + j] += double(a.at({i, k})) * double(b.at({k, j}));
        std::printf("%6d", K);
        ks.push_back(K);
        for (int c = 0; c < 5; ++c) {
            const Tensor out = matmul_in_precision(a, b, configs[c].inputs, configs[c].accumulator);
            double worst = 0;
            for (int i = 0; i < 256; ++i)
                worst = std::max(worst, std::fabs(out.values()[i] - exact[i]) / exact[i]);
            std::printf("  %18.1e", worst);
            errors[c].push_back(worst);
        }
        std::printf("\n");
    }
    for (int c = 0; c < 5; ++c) plot.add(configs[c].name, ks, errors[c]);
    plot.save("13_matmul_precision");
    const Tensor ones_row = Tensor::full({1, 4096}, 1), ones_column = Tensor::full({4096, 1}, 1);
    std::printf(
        "\nWith an fp32 sum, 16-bit inputs cost only their own rounding (about 2^-11 for fp16,\n"
        "2^-8 for bf16), whatever K is. With a 16-bit sum the error grows with K until the sum\n"
        "stops moving: 4096 ones add up to %g in fp16 and %g in bf16. That is why tensor cores\n"
        "take 16-bit inputs but accumulate in fp32.\n",
        double(matmul_in_precision(ones_row, ones_column, Precision::fp16, Precision::fp16).item()),
        double(
            matmul_in_precision(ones_row, ones_column, Precision::bf16, Precision::bf16).item()));
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
    std::printf("  1e-9 x 65536 = %.6g stored in fp16: %.6g (bits 0x%04x, a normal number)\n",
                double(g * S), double(scaled), float_to_half(g * S));
    std::printf("  divided by 65536 in fp32:            %.6g (relative error %.1e)\n",
                double(scaled / S), std::fabs(scaled / S - g) / g);
    std::printf("  1e-9 stored in bf16, unscaled:       %.6g\n",
                double(round_to_precision(g, Precision::bf16)));
    std::printf(
        "bfloat16 has float's exponent range, so it needs no scaling; only float16 does.\n");
}

// ---------------------------------------------------------------------------------------------
// 3b. The order of one mixed-precision step: scale the loss, backward, unscale, clip, step.
// After backward every gradient is S times too big, and so is their norm. clip_grad_norm
// multiplies g by max_norm/‖g‖ when ‖g‖ > max_norm, so it has to see the true gradient: unscale
// first. Clip the scaled gradient instead and it is cut to the norm max_norm in scaled units,
// max_norm/S once unscaled. The wrong order is clipping the true gradient at max_norm/S:
//     right order: ‖update‖ = min(‖g‖, max_norm)        wrong order: min(‖g‖, max_norm/S)
// A gradient with a true norm above max_norm comes out S times too small; one between
// max_norm/S and max_norm is clipped when it should not be; only one below max_norm/S escapes.
// The loss Σ c·w has the gradient c, and c = 2^k·(2, −4, 1, 2) has the norm 5·2^k (k = 0 is the
// texts' example: norm 5 clipped to 1 by the factor 1/5, a gradient of 2.0 becomes 0.4). Small
// integers times powers of two: float16 holds them and S = 1024 scales them exactly, so every
// difference below comes from the order alone. If a scaled gradient overflowed it holds inf:
// unscale_gradients says so, the step is skipped, and clipping (after that check) never runs.
// ---------------------------------------------------------------------------------------------

// The gradient of the loss Σ c·w, w a parameter that the forward pass casts to float16, with
// the loss multiplied by the scaler's S: S·c, rounded to float16 by the cast's backward.
static Tensor scaled_gradient(const std::vector<real>& c, const DynamicLossScaler& scaler) {
    const Shape shape = {int(c.size())};
    Tensor w(shape);
    w.requires_grad_();
    scaler.scale_loss(sum(cast(w, Precision::fp16) * Tensor(shape, c))).backward();
    return w;
}

// The reference: fp32 throughout, no scaling, clipped at max_norm.
static std::vector<real> fp32_clipped(const std::vector<real>& c, double max_norm) {
    const Shape shape = {int(c.size())};
    Tensor w(shape);
    w.requires_grad_();
    sum(w * Tensor(shape, c)).backward();
    clip_grad_norm({w}, max_norm);
    return w.grad();
}

// scale → backward → unscale → clip: the gradient the optimizer gets (empty: a skipped step).
static std::vector<real> unscale_then_clip(const std::vector<real>& c, double S, double max_norm) {
    const DynamicLossScaler scaler(S);
    const Tensor w = scaled_gradient(c, scaler);
    if (!scaler.unscale_gradients({w})) return {};   // inf or NaN: no step at all
    clip_grad_norm({w}, max_norm);
    return w.grad();
}

// scale → backward → clip → unscale: the mistake. The norm clip_grad_norm sees is S·‖g‖.
static std::vector<real> clip_then_unscale(const std::vector<real>& c, double S, double max_norm) {
    const DynamicLossScaler scaler(S);
    const Tensor w = scaled_gradient(c, scaler);
    clip_grad_norm({w}, max_norm);
    scaler.unscale_gradients({w});
    return w.grad();
}

static double norm_of(const std::vector<real>& g) {
    double s = 0;
    for (real v : g) s += double(v) * double(v);
    return std::sqrt(s);
}

static std::string vector_text(const std::vector<real>& g) {
    std::string text = "[";
    for (std::size_t i = 0; i < g.size(); ++i) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%s%.6g", i ? ", " : "", double(g[i]));
        text += buf;
    }
    return text + "]";
}

// The dynamic scaler on a gradient that overflows float16 at its first S: the steps it skips
// (halving S each time) before one goes through. At most 64 tries, in case nothing ever fits.
static long skipped_until_finite(const std::vector<real>& c, DynamicLossScaler& scaler) {
    for (int tries = 0; tries < 64; ++tries) {
        const Tensor w = scaled_gradient(c, scaler);
        const bool finite = scaler.unscale_gradients({w});
        scaler.update(finite);
        if (finite) break;
    }
    return scaler.skipped_steps();
}

// The gradients that overflowed, given to clip_grad_norm before the check: what it does.
static std::string clipping_an_overflow(const std::vector<real>& c, double S) {
    const DynamicLossScaler scaler(S);
    const Tensor w = scaled_gradient(c, scaler);
    try {
        const double norm = clip_grad_norm({w}, 1.0);
        return "returns the norm " + std::to_string(norm) + " and leaves " + vector_text(w.grad());
    } catch (const std::exception&) {
        return "stops with an error: it refuses non-finite gradients";
    }
}

// The entry of g with the largest magnitude (the first to overflow when g is scaled).
static real largest_entry(const std::vector<real>& g) {
    real largest = 0;
    for (real v : g)
        if (std::fabs(v) > std::fabs(largest)) largest = v;
    return largest;
}

struct ClipRow {
    double norm, reference, right, wrong;
    bool right_is_reference;
};

static ClipRow clip_both_ways(const std::vector<real>& c, double S, double max_norm) {
    const std::vector<real> reference = fp32_clipped(c, max_norm),
                            right = unscale_then_clip(c, S, max_norm),
                            wrong = clip_then_unscale(c, S, max_norm);
    return {norm_of(c), norm_of(reference), norm_of(right), norm_of(wrong), right == reference};
}

static void print_clip_rows(const std::vector<ClipRow>& rows, double S) {
    std::printf("%10s  %9s  %13s  %14s  %8s  %14s  %12s\n", "true norm", "S x norm", "fp32 clipped",
                "unscale, clip", "= fp32?", "clip, unscale", "fp32 / wrong");
    for (const ClipRow& r : rows)
        std::printf("%10.4g  %9.4g  %13.4g  %14.4g  %8s  %14.4g  %11.4gx\n", r.norm, S * r.norm,
                    r.reference, r.right, r.right_is_reference ? "bitwise" : "NO", r.wrong,
                    r.reference / r.wrong);
}

// What the table's rows show, said from their numbers: rows[0] has a true norm above max_norm,
// rows[1] one between max_norm/S and max_norm, rows[2] one below max_norm/S.
static void explain_clip_rows(const std::vector<ClipRow>& rows, double S, double max_norm) {
    bool all_bitwise = true;
    for (const ClipRow& r : rows) all_bitwise = all_bitwise && r.right_is_reference;
    std::printf("Unscaling first gives the fp32 run's clipped gradient %s.\n",
                all_bitwise ? "bit for bit in every row\n(S is a power of two)"
                            : "only up to rounding");
    std::printf(
        "Clipping first cuts the scaled norm to %g, which is %.3g once unscaled. At norm %g\n"
        "the step comes out %gx too small (S = %g); at norm %g, which should pass whole,\n"
        "it is cut %gx; at norm %.3g, below max_norm/S = %.3g, it is left alone (%gx).\n",
        max_norm, max_norm / S, rows[0].norm, rows[0].reference / rows[0].wrong, S, rows[1].norm,
        rows[1].reference / rows[1].wrong, rows[2].norm, max_norm / S,
        rows[2].reference / rows[2].wrong);
}

static void overflow_skips_the_step(const std::vector<real>& c, double S, double max_norm) {
    DynamicLossScaler scaler(S);
    const long skipped = skipped_until_finite(c, scaler);
    const double largest = double(largest_entry(c)), fp16_max = double(half_to_float(0x7bff));
    std::printf(
        "\nOverflow: with S = %g the entry %g becomes %g, beyond float16's %g: inf.\n"
        "unscale_gradients finds it and returns false, and the step is skipped: no clipping, no\n"
        "update.\nGiven those gradients, clip_grad_norm %s.\n"
        "The dynamic scaler skips %ld steps, halving S each time, down to %g, where %g x %g = %g\n"
        "fits; that step's clipped gradient is %s, the fp32 one.\n",
        S, largest, largest * S, fp16_max, clipping_an_overflow(c, S).c_str(), skipped,
        scaler.scale(), largest, scaler.scale(), largest * scaler.scale(),
        vector_text(unscale_then_clip(c, scaler.scale(), max_norm)).c_str());
}

static void clip_after_unscaling() {
    const double S = 1024, max_norm = 1;
    char title[96];
    std::snprintf(title, sizeof title,
                  "3b. The order of a step: scale the loss, backward, unscale, clip, step (S = %g)",
                  S);
    heading(title);
    const std::vector<real> direction = {2, -4, 1, 2};   // norm 5
    std::vector<ClipRow> rows;
    for (int k : {0, -3, -14}) {   // norms 5, 0.625 and 5·2^-14 ≈ 3e-4: above, between, below
        std::vector<real> c;
        for (real d : direction) c.push_back(real(std::ldexp(double(d), k)));
        rows.push_back(clip_both_ways(c, S, max_norm));
    }
    std::printf("Clipped at max_norm = %g; the columns are gradient norms after unscaling.\n",
                max_norm);
    print_clip_rows(rows, S);
    std::printf("\nThe texts' gradient, norm 5:\n  fp32, clipped:               %s\n"
                "  scaled, unscaled, clipped:   %s\n  scaled, clipped, unscaled:   %s\n",
                vector_text(fp32_clipped(direction, max_norm)).c_str(),
                vector_text(unscale_then_clip(direction, S, max_norm)).c_str(),
                vector_text(clip_then_unscale(direction, S, max_norm)).c_str());
    explain_clip_rows(rows, S, max_norm);
    overflow_skips_the_step(direction, 65536, max_norm);
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
        d.x.at({i, 0}) = real(m.x[i][0]);
        d.x.at({i, 1}) = real(m.x[i][1]);
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
    double scale;       // the loss scale to start with (1: none)
    bool dynamic;       // a DynamicLossScaler adapts it
    bool fp32_master;   // false: the weights are rounded to `precision` after every step
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
        const Tensor loss =
            cross_entropy(forward_in(model, data.x, recipe.precision), data.labels) *
            real(loss_factor);
        run.loss.push_back(loss.item() / loss_factor);
        scaler.scale_loss(loss).backward();
        const bool finite = scaler.unscale_gradients(params);
        if (finite && run.zero_gradients < 0) {   // the first step that did not overflow
            std::size_t zeros = 0, total = 0;
            for (const Tensor& p : params)
                for (real g : p.grad()) {
                    if (g == 0) ++zeros;
                    ++total;
                }
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
    std::printf("%-26s  %11.1f%%  %9.4f  %9.4f  %9.4f  %8ld  %8s\n", name, 100 * run.zero_gradients,
                run.loss[0], run.loss[50], run.loss.back(), run.skipped,
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
    std::printf("%-26s  %12s  %9s  %9s  %9s  %8s  %8s\n", "recipe (lr 0.05)", "zero grads",
                "loss 0", "loss 50", "loss 149", "skipped", "final S");
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
        "\n(zero grads: gradient numbers exactly 0 at the first step that did not overflow; in "
        "fp32\nthese are ReLU units that no example activates.)\n"
        "fp16 without scaling: %.0f%% of the gradients underflow to 0, and the loss does not "
        "move.\nA fixed S = 65536 lifts them into float16's normal range: the run follows fp32.\n"
        "The dynamic scaler starts far too high, at 2^40: its first %ld steps overflow, are "
        "skipped\n"
        "  and halve S. After that it doubles S after every 25 good steps in a row and halves it\n"
        "  when a step overflows: S climbs as training makes the gradients smaller (the plot).\n"
        "bfloat16 needs no scaling (its range is float's); it rounds more coarsely, and trains.\n",
        100 * runs[1].zero_gradients, runs[3].skipped);

    // fp32 master weights. A small learning rate makes small updates, as late in training.
    const Recipe master = {"fp16, S = 65536, master", Precision::fp16, 65536, false, true};
    const Recipe no_master = {"fp16, S = 65536, fp16 w", Precision::fp16, 65536, false, false};
    std::printf("\n%-26s  %12s  %9s  %9s  %9s  %8s  %8s\n", "recipe (lr 0.0001)", "zero grads",
                "loss 0", "loss 50", "loss 149", "skipped", "final S");
    const MixedRun with_master = train_mixed(master, data, 0.0001),
                   without = train_mixed(no_master, data, 0.0001);
    print_run("fp32 master weights", with_master, 65536);
    print_run("fp16 weights, no master", without, 65536);
    float in_fp16 = 1, in_bf16 = 1, in_fp32 = 1;
    for (int step = 0; step < 10000; ++step) {
        in_fp16 = round_to_precision(in_fp16 + 1e-4f, Precision::fp16);
        in_bf16 = round_to_precision(in_bf16 + 1e-4f, Precision::bf16);
        in_fp32 += 1e-4f;
    }
    std::printf(
        "With the weights themselves in fp16 the run falls behind (loss %.4f against %.4f): an\n"
        "update smaller than half the spacing between neighbouring float16 values is rounded\n"
        "away, and here that hits the larger weights. The extreme case, 10,000 updates of +1e-4\n"
        "to a weight of 1: fp32 %.4f, fp16 %.4f, bf16 %.4f (near 1 the fp16 spacing is\n"
        "2^-10 = 0.00098, so 1.0001 rounds back to 1 every time). Hence the fp32 master copy.\n",
        without.loss.back(), with_master.loss.back(), double(in_fp32), double(in_fp16),
        double(in_bf16));
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
// The bytes per parameter above are lesson.h's adam_bytes, which lesson 16 uses too.
static void print_7b_row(const char* what, int bytes) {
    const double seven_b = 7e9, GB = 1e9;
    std::printf("%-52s  %9d  %9.0f GB\n", what, bytes, bytes * seven_b / GB);
}

// ZeRO (Rajbhandari et al., 2020) and FSDP: lesson.h gives each stage's bytes per device
// (sharded_bytes, bytes_per_device, stage_formula), the formulas shared with lesson 16.

// The fewest devices on which a stage fits in `capacity` bytes; 0: no number of devices does
// (what every device keeps whole is already too much).
static long fewest_devices(double params, int stage, double capacity) {
    const double replicated = params * (adam_bytes::mixed - sharded_bytes(stage)),
                 sharded = params * sharded_bytes(stage);
    if (sharded == 0) return replicated <= capacity;   // the same on any number of devices
    if (replicated >= capacity) return 0;
    // The smallest N with replicated + sharded/N <= capacity.
    return std::max(1L, long(std::ceil(sharded / (capacity - replicated))));
}

// The lowest stage at which a model fits in `capacity` on some number of devices (4: none).
static int lowest_stage_that_fits(double params, double capacity) {
    int stage = 0;
    while (stage < 4 && fewest_devices(params, stage, capacity) == 0) ++stage;
    return stage;
}

static std::string fewest_text(double params, int stage, double capacity) {
    const long n = fewest_devices(params, stage, capacity);
    return n ? std::to_string(n) : "never";
}

// Some course notes: a 7B model needs at least 2 GPUs with ZeRO stage 2. Checked against the
// table's count (the notes count 14 bytes, without the gradient; 16 only makes fitting harder).
static void explain_seven_b_claim(double capacity) {
    const double GB = 1e9, stage1 = bytes_per_device(7e9, 1, 2),
                 stage2 = bytes_per_device(7e9, 2, 2);
    std::printf("Some course notes say a 7B model needs at least 2 GPUs with ZeRO stage 2.\n");
    if (fewest_devices(7e9, 2, capacity) == 2) std::printf("Two is right. ");
    if (stage1 <= capacity)
        std::printf("But stage 1 already fits on 2: %.1f GB, leaving %.1f GB for activations\n"
                    "(stage 2: %.1f GB, leaving %.1f).\n",
                    stage1 / GB, (capacity - stage1) / GB, stage2 / GB, (capacity - stage2) / GB);
    else
        std::printf(
            "Stage 1 on 2 devices needs %.1f GB, more than %.0f: stage 2 (%.1f GB) is the lowest\n"
            "that fits.\n",
            stage1 / GB, capacity / GB, stage2 / GB);
}

static void zero_sharding() {
    const double GB = 1e9, capacity = 80 * GB, models[] = {7e9, 70e9};
    const int devices[] = {8, 64};
    const char* stages[] = {"0 plain data parallel", "1 + optimizer state", "2 + gradients",
                            "3 + weights (FSDP)"};
    std::printf(
        "\nZeRO / FSDP: GB per device with the %d bytes above sharded over N devices (P\n"
        "parameters; activations not included; * fits in %.0f GB; fewest: the fewest devices on\n"
        "which it fits):\n",
        adam_bytes::mixed, capacity / GB);
    std::printf("%-22s  %-11s", "stage, shards also", "per device");
    for (double params : models) {
        for (int n : devices) {
            char column[32];
            if (n == devices[0])
                std::snprintf(column, sizeof column, "%.0fB, N=%d", params / 1e9, n);
            else std::snprintf(column, sizeof column, "N=%d", n);
            std::printf("  %9s", column);
        }
        std::printf("  %7s", "fewest");
    }
    std::printf("\n");
    for (int stage = 0; stage < 4; ++stage) {
        std::printf("%-22s  %-11s", stages[stage], stage_formula(stage).c_str());
        for (double params : models) {
            for (int n : devices) {
                const double bytes = bytes_per_device(params, stage, n);
                std::printf("  %8.2f%s", bytes / GB, bytes <= capacity ? "*" : " ");
            }
            std::printf("  %7s", fewest_text(params, stage, capacity).c_str());
        }
        std::printf("\n");
    }
    explain_seven_b_claim(capacity);
    for (double params : models) {
        const int stage = lowest_stage_that_fits(params, capacity);
        if (stage == 4) std::printf("%.0fB parameters: no stage fits.\n", params / 1e9);
        else
            std::printf(
                "%.0fB parameters: the lowest stage that fits is %d, on %ld devices or more.\n",
                params / 1e9, stage, fewest_devices(params, stage, capacity));
    }
}

static void memory_per_parameter() {
    heading("5. Memory: parameters, gradients, optimizer state, activations");
    using namespace adam_bytes;
    std::printf("%-52s  %9s  %12s\n", "", "bytes", "7B model");
    print_7b_row("fp32 + Adam: weight, gradient, m, v", fp32_training);
    print_7b_row("mixed + Adam: fp16 weight, fp32 master, m, v (texts)", mixed - gradient);
    print_7b_row("  ... and the fp16 gradient", mixed);
    print_7b_row("  of which Adam's m and v", fp32 + fp32);
    print_7b_row("inference: fp16 weights", weight);
    zero_sharding();
    const double layer_numbers = 4.0 * 32 * 2048 * 4096, GiB = 1024.0 * 1024 * 1024;
    std::printf("\nActivations of one transformer layer, batch 32 x 2048 tokens x d = 4096, about "
                "4 tensors\n"
                "of [B*T, d] (the texts' estimate): %.2e numbers, %.0f GiB in fp32, %.0f GiB in "
                "fp16: 16-bit\n"
                "activations save %.0f GiB per layer, %.0f GiB over 32 layers. Activations, not "
                "weights, are\nwhat limits the batch and the sequence length.\n",
                layer_numbers, layer_numbers * 4 / GiB, layer_numbers * 2 / GiB,
                layer_numbers * 2 / GiB, 32 * layer_numbers * 2 / GiB);

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
    const std::size_t activations =
        std::size_t(B) * (3 * 256 + 3 * 256 + 2 * 10) * r + r;   // + the loss
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
    for (nn::Linear& layer : frozen.layers) {
        layer.W = layer.W.detach();
        layer.b = layer.b.detach();
    }
    reset_peak_tensor_bytes();
    const std::size_t inference_start = current_tensor_bytes();
    frozen(x);
    const std::size_t inference_peak = peak_tensor_bytes() - inference_start;

    std::printf("\nMLP 784-256-256-10, %zu parameters, batch %d, Adam, fp32:\n", n_params, B);
    std::printf("  %-44s  %12s\n", "weights (4 bytes each)", megabytes(4.0 * n_params).c_str());
    std::printf("  %-44s  %12s\n", "gradients", megabytes(4.0 * n_params).c_str());
    std::printf("  %-44s  %12s  (state_bytes(): %s)\n", "Adam's m and v",
                megabytes(8.0 * n_params).c_str(), megabytes(double(opt.state_bytes())).c_str());
    std::printf("  %-44s  %12s  (measured: %s)\n", "activations after the forward pass, estimated",
                megabytes(double(activations)).c_str(),
                megabytes(double(held_after_forward)).c_str());
    std::printf("  %-44s  %12s  (measured peak: %s)\n", "... with their gradients during backward",
                megabytes(2.0 * activations).c_str(),
                counted ? megabytes(double(peak)).c_str() : "n/a");
    std::printf("  %-44s  %12s  (measured peak: %s)\n",
                "inference, no graph: about 2 layers at a time",
                megabytes(double(B) * (2 * 256 + 256) * r).c_str(),
                counted ? megabytes(double(inference_peak)).c_str() : "n/a");
    std::printf(
        "The measured peaks count what a step adds to the tensors already held (weights, their\n"
        "gradients, the input; Adam's state is kept outside the tensors). At batch %d a training\n"
        "step's activations and their gradients already outweigh the weights; they grow with the\n"
        "batch, while weights, gradients and Adam's state do not.\n",
        B);
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
            (cross_entropy(model(slice(x, 0, k * rows, (k + 1) * rows)), part) / real(parts))
                .backward();
        }
        peak[micro] = peak_tensor_bytes() - start;
        for (const Tensor& p : model.parameters()) grads[micro].push_back(p.grad());
    }
    double worst = 0, largest = 0;
    for (std::size_t i = 0; i < grads[0].size(); ++i) {
        worst = std::max(worst, max_difference(grads[0][i], grads[1][i]));
        for (real g : grads[0][i]) largest = std::max(largest, double(std::fabs(g)));
    }
    std::printf(
        "largest |difference| between the two gradients: %.1e (the largest gradient is %.1e).\n",
        worst, largest);
    if (worst == 0)
        std::printf(
            "Equal to the last bit: the batch's mean divides by 512, each micro-batch's by 64 and\n"
            "then by 8 (powers of two: exact), and matmul's backward adds the rows into the\n"
            "gradient one by one, in the same order either way. In general expect float "
            "rounding.\n");
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
            h = activation_checkpoint(
                [this, from, to](const Tensor& in) { return run(in, from, to); }, h, params);
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

// The time column, said from its numbers: the checkpointed steps' time relative to the plain
// one's lies between `fewest` and `most`.
static void explain_checkpoint_times(double fewest, double most) {
    std::printf(
        "Time (median of 7 steps on one thread): the checkpointed steps took %.2f-%.2fx the\n"
        "plain one's.",
        fewest, most);
    if (fewest > 4.0 / 3)
        std::printf(
            " More than the FLOPs say: they count only the matrix products, and the\n"
            "recomputed forward pass also redoes every tanh and bias add and allocates its\n"
            "tensors again.\n");
    else if (fewest > 1)
        std::printf(
            " Every one is slower than the plain step, as the extra forward pass predicts.\n");
    else
        std::printf(
            " Some came out no slower than the plain step on this run: at this\n"
            "size timings on a busy machine still overlap. The FLOPs are the dependable count.\n");
}

static void activation_checkpointing() {
    heading("7. Activation checkpointing: 24 tanh layers of width 128, batch 64");
    const bool counted = bytes_are_counted(), flops_counted = matmul_flops_are_counted();
    Rng rng(7);
    const DeepTanh net(24, 128, rng);
    const Tensor x = randn({64, 128}, rng);
    const std::vector<int> settings = {0, 1, 2, 4, 6, 8, 12, 24};
    mean(net(x, 0)).backward();   // the parameters' gradients exist from here on
    // A step with each number of segments, the settings taking turns: the median of 7 rounds on
    // one thread, which the text below can rest on (lesson.h says why one thread and the median).
    std::vector<std::function<void()>> steps;
    for (int segments : settings)
        steps.push_back([&net, &x, segments] { mean(net(x, segments)).backward(); });
    const std::vector<double> ms = median_ms_one_thread(steps, 7);
    std::printf("%9s  %14s  %18s  %9s  %14s  %9s\n", "segments", "measured peak",
                "FLOPs of the step", "vs plain", "time (median)", "vs plain");
    std::vector<real> plain_grad;
    double plain_flops = 0, fewest = 1e300, most = 0;
    std::vector<double> xs, peaks;
    bool identical = true;
    for (std::size_t i = 0; i < settings.size(); ++i) {
        const int segments = settings[i];
        for (const Tensor& p : net.parameters()) p.zero_grad();
        reset_peak_tensor_bytes();
        reset_counted_flops();
        const std::size_t start = current_tensor_bytes();
        mean(net(x, segments)).backward();
        const std::size_t peak = peak_tensor_bytes() - start;
        const double flops = double(counted_flops());
        if (segments == 0) {
            plain_grad = net.layers[0].W.grad();
            plain_flops = flops;
        } else {
            identical = identical && std::vector<real>(net.layers[0].W.grad()) == plain_grad;
            xs.push_back(segments);
            peaks.push_back(double(peak));
            fewest = std::min(fewest, ms[i] / ms[0]);
            most = std::max(most, ms[i] / ms[0]);
        }
        char name[16];
        std::snprintf(name, sizeof name, segments ? "%d" : "none", segments);
        char flops_text[32] = "n/a", ratio_text[32] = "n/a";
        if (flops_counted) {
            std::snprintf(flops_text, sizeof flops_text, "%.4g", flops);
            std::snprintf(ratio_text, sizeof ratio_text, "%.2fx", flops / plain_flops);
        }
        std::printf("%9s  %14s  %18s  %9s  %11.2f ms  %8.2fx\n", name,
                    counted ? megabytes(double(peak)).c_str() : "n/a", flops_text, ratio_text,
                    ms[i], ms[i] / ms[0]);
    }
    std::printf("\nThe first layer's weight gradient is %s with every number of segments: the\n"
                "recomputation runs the same ops on the same numbers.\n",
                identical ? "bit-for-bit the same" : "NOT the same");
    if (!flops_counted)
        std::printf("(FLOPs: this engine.cpp's matmul does not count them; see §4.1.)\n");
    if (!counted) std::printf("(peaks: this engine.cpp lacks the byte-counting hooks of §4.1.)\n");
    std::printf(
        "One segment saves nothing (it is recomputed whole); a segment per layer keeps all 24\n"
        "inputs. The step costs 4/3 of a plain one in FLOPs: one more forward pass (the first\n"
        "segment's input needs no gradient, hence slightly less).\n");
    explain_checkpoint_times(fewest, most);
    if (counted) {
        Plot plot("Peak memory of a step against checkpointed segments (24 layers)", "segments",
                  "measured peak bytes");
        plot.add("checkpointed", xs, peaks);
        plot.save("13_checkpoint_peak");
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Planning a run. Training costs about 6 FLOPs per parameter per token: every weight takes
// part in one multiply-add (2 FLOPs) per token in the forward pass and two in the backward pass
// (one for the gradient of its input, one for its own gradient: 4 FLOPs), as matmul's counted
// FLOPs show. So a model of N parameters trained on D tokens costs 6·N·D FLOPs (attention's
// products between tokens, which grow with the context, are left out). The time is that divided
// by what the GPUs deliver: their count × peak FLOP/s × the utilization reached (MFU, the model
// FLOPs utilization). The cost is the time × GPUs × the price of a GPU-hour.
// The texts' worked example: N = 125M, D = 10B tokens, 8 A100s at 150 TFLOP/s effective each,
// $2.50 per GPU-hour; they print 7.5e18 FLOPs, 1.74 hours and ~$35. 150 TFLOP/s is 48% of the
// A100's peak for bf16 inputs on its tensor cores, 312 TFLOP/s (NVIDIA's data sheet, dense).
// ---------------------------------------------------------------------------------------------
struct RunPlan {
    double parameters, tokens;
    int gpus;
    double peak_flops, utilization, dollars_per_gpu_hour;
};

static double run_flops(const RunPlan& r) { return 6 * r.parameters * r.tokens; }   // 6·N·D
static double run_flops_per_second(const RunPlan& r) {
    return r.gpus * r.peak_flops * r.utilization;
}
static double run_hours(const RunPlan& r) { return run_flops(r) / run_flops_per_second(r) / 3600; }
static double run_gpu_hours(const RunPlan& r) { return run_hours(r) * r.gpus; }
static double run_dollars(const RunPlan& r) { return run_gpu_hours(r) * r.dollars_per_gpu_hour; }

// 13.9, 77.8K, 11.7M: three digits and a suffix.
static std::string short_amount(double v) {
    char buf[32];
    if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.3gM", v / 1e6);
    else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.3gK", v / 1e3);
    else std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

static const double a100_peak = 312e12;   // FLOP/s, bf16 tensor cores, dense (data sheet)

// Measured: the counted FLOPs of one layer's forward and backward, per weight per token. The
// layer's input needs a gradient too, as every layer's but the first does. (0: not counted.)
static double counted_flops_per_weight_per_token(int tokens, int in, int out) {
    if (!matmul_flops_are_counted()) return 0;
    Rng rng(8);
    const Tensor x = randn({tokens, in}, rng).requires_grad_(),
                 W = randn({in, out}, rng).requires_grad_();
    reset_counted_flops();
    sum(matmul(x, W)).backward();
    return double(counted_flops()) / (double(tokens) * in * out);
}

static void print_derivation(const RunPlan& r) {
    std::printf("N = %.4g parameters, D = %.4g tokens\n", r.parameters, r.tokens);
    std::printf("FLOPs   = 6 x N x D = 6 x %.4g x %.4g = %.4g   (the texts: 7.5e18)\n",
                r.parameters, r.tokens, run_flops(r));
    std::printf(
        "per GPU = %.0f TFLOP/s peak x %.1f%% utilization = %.0f TFLOP/s   (the texts: 150)\n",
        r.peak_flops / 1e12, 100 * r.utilization, r.peak_flops * r.utilization / 1e12);
    std::printf("%d GPUs  = %.4g FLOP/s\n", r.gpus, run_flops_per_second(r));
    std::printf("time    = %.4g / %.4g = %.0f s = %.3f hours   (the texts: 1.74 h)\n", run_flops(r),
                run_flops_per_second(r), run_hours(r) * 3600, run_hours(r));
    std::printf("cost    = %.3f h x %d GPUs = %.2f GPU-hours x $%.2f = $%.2f   (the texts: ~$35)\n",
                run_hours(r), r.gpus, run_gpu_hours(r), r.dollars_per_gpu_hour, run_dollars(r));
    const double rounded_hours = std::round(run_hours(r) * 100) / 100;   // the texts' 1.74
    const double rounded_dollars = r.gpus * rounded_hours * r.dollars_per_gpu_hour;
    std::printf(
        "          (from the rounded %.2f h: %d x %.2f x $%.2f = $%.2f; both round to $%.0f)\n",
        rounded_hours, r.gpus, rounded_hours, r.dollars_per_gpu_hour, rounded_dollars,
        std::round(run_dollars(r)));
}

// The texts' larger runs, at the worked example's GPU, utilization and price.
static void print_scaled_runs(const RunPlan& base) {
    struct Run {
        const char* name;
        double parameters, tokens;
        const char* texts_say;
    };
    const Run runs[] = {{"125M, 10B tokens", 125e6, 10e9, "~$35"},
                        {"7B, 1T tokens", 7e9, 1e12, "~$200K"},
                        {"LLaMA 3 70B, 15T tokens", 70e9, 15e12, "~30 million GPU-hours"},
                        {"LLaMA 3 405B, 15T tokens", 405e9, 15e12, "$100M+"}};
    std::printf("\n%-26s  %10s  %10s  %10s  %s\n", "150 TFLOP/s/GPU, $2.50/h", "6ND FLOPs",
                "GPU-hours", "dollars", "the texts");
    for (const Run& run : runs) {
        RunPlan r = base;
        r.parameters = run.parameters;
        r.tokens = run.tokens;
        const std::string gpu_hours = short_amount(run_gpu_hours(r));
        const std::string dollars = "$" + short_amount(run_dollars(r));
        std::printf("%-26s  %10.3g  %10s  %10s  %s\n", run.name, run_flops(r), gpu_hours.c_str(),
                    dollars.c_str(), run.texts_say);
    }
    RunPlan llama70 = base;
    llama70.parameters = runs[2].parameters;
    llama70.tokens = runs[2].tokens;
    const double quoted_gpu_hours = 30e6, implied = run_flops(llama70) / (quoted_gpu_hours * 3600);
    std::printf(
        "Some course notes quote ~30 million GPU-hours for the 70B model on 15T tokens; 6·N·D\n"
        "at their own 150 TFLOP/s per GPU gives %.3g million. 30 million would mean %.0f TFLOP/s\n"
        "per GPU, %.0f%% of an A100's peak: the estimate is only as good as the utilization put\n"
        "into it.\n",
        run_gpu_hours(llama70) / 1e6, implied / 1e12, 100 * implied / a100_peak);
}

static void run_planning() {
    heading("8. Planning a run: 6·N·D FLOPs, hours and dollars");
    const double per_token = counted_flops_per_weight_per_token(64, 128, 96);
    if (per_token > 0)
        std::printf(
            "Counted by matmul: one layer's forward and backward take %.2f FLOPs per weight per\n"
            "token.\n\n",
            per_token);
    const RunPlan plan = {125e6, 10e9, 8, a100_peak, 150e12 / a100_peak, 2.50};
    print_derivation(plan);
    const double tokens_per_step = 512.0 * 1024,
                 gigabytes = plan.parameters * adam_bytes::mixed / 1e9;
    std::printf(
        "Steps at 512 sequences of 1024 tokens: %.0f tokens per step, %.4g / %.0f = %.0f steps.\n"
        "Memory: %.4g x %d bytes = %.2f GB of weights, gradients and Adam state on each GPU\n"
        "(plain data parallel), %.1f%% of an 80 GB GPU: the %d GPUs are there for speed, not\n"
        "memory.\n",
        tokens_per_step, plan.tokens, tokens_per_step, plan.tokens / tokens_per_step,
        plan.parameters, adam_bytes::mixed, gigabytes, 100 * gigabytes / 80, plan.gpus);
    print_scaled_runs(plan);
}

static void lesson() {
    std::printf("Lesson 13: precision and memory\n");
    formats();
    low_precision_products();
    loss_scaling();
    clip_after_unscaling();
    mixed_precision_training();
    memory_per_parameter();
    gradient_accumulation();
    activation_checkpointing();
    run_planning();
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

    hw.check(
        "13.1", "float to bfloat16 by hand",
        "round to nearest, ties to even, on the bits: keep the top 16, round up if the low 16 "
        "are > 0x8000, or = 0x8000 with an odd top half; a NaN must not come out as inf",
        [] {
            expect_true("1.0 -> 0x3f80", to_bfloat16(1.0f) == 0x3f80);
            expect_true("1 + 2^-8 (a tie) -> 0x3f80 (even)",
                        to_bfloat16(1 + std::ldexp(1.0f, -8)) == 0x3f80);
            expect_true("1 + 3*2^-8 (a tie) -> 0x3f82 (even)",
                        to_bfloat16(1 + std::ldexp(3.0f, -8)) == 0x3f82);
            expect_true("the largest float rounds up to inf, 0x7f80",
                        to_bfloat16(std::numeric_limits<float>::max()) == 0x7f80);
            expect_true("-inf -> 0xff80", to_bfloat16(-INFINITY) == 0xff80);
            std::uint32_t bits = 0x7f800001;   // a NaN whose payload is only in the low half
            float nan_low;
            std::memcpy(&nan_low, &bits, sizeof nan_low);
            expect_true("a NaN stays a NaN", std::isnan(bfloat16_to_float(to_bfloat16(nan_low))));
            for (int p = 0; p < 65536; ++p) {   // every bfloat16 converts back to itself
                const float f = bfloat16_to_float(std::uint16_t(p));
                if (to_bfloat16(f) != p)
                    expect_true("every bfloat16 value converts back to its own bits", false);
            }
            Rng rng(131);
            for (int i = 0; i < 200000; ++i) {   // random bit patterns, against the engine
                const std::uint32_t random = std::uint32_t(rng.next_u64());
                float f;
                std::memcpy(&f, &random, sizeof f);
                if (!std::isnan(f) && to_bfloat16(f) != float_to_bfloat16(f))
                    expect_true(
                        "200,000 random floats: the same bits as the engine's float_to_bfloat16",
                        false);
            }
        });

    hw.check(
        "13.2", "the dynamic loss scale",
        "on overflow halve and restart the count; count good steps, double at growth_interval", [] {
            double scale = 65536;
            int good = 0;
            update_loss_scale(scale, good, false, 3);
            expect_near("an overflow halves the scale", scale, 32768, 0);
            for (int i = 1; i <= 3; ++i) update_loss_scale(scale, good, true, 3);
            expect_near("3 good steps in a row double it", scale, 65536, 0);
            expect_near("and restart the count", good, 0, 0);
            Rng rng(132);
            DynamicLossScaler engine(1024, 5);
            scale = 1024;
            good = 0;
            for (int step = 0; step < 500; ++step) {
                const bool finite = rng.uniform() > 0.1;
                engine.update(finite);
                update_loss_scale(scale, good, finite, 5);
                expect_near("500 random steps: the scale, against DynamicLossScaler", scale,
                            engine.scale(), 0);
                expect_near("and the count of good steps", good, engine.good_steps_in_a_row(), 0);
            }
        });

    hw.check(
        "13.3", "training memory per parameter",
        "total = weight + gradient + master copy + optimizer state; fp32 is 4 bytes, 16-bit is 2; "
        "the state stays fp32 in both modes, the master copy exists only in mixed precision",
        [] {
            const BytesPerParameter adam32 = training_bytes(false, 2),
                                    mixed = training_bytes(true, 2);
            expect_near("fp32 Adam: 16 bytes per parameter", adam32.total(), 16, 0);
            expect_near("mixed Adam without the 16-bit gradient: the texts' 14 bytes",
                        mixed.total() - mixed.gradient, 14, 0);
            expect_near("mixed Adam, gradient included", mixed.total(), 16, 0);
            expect_near("a 7B model's Adam state in GB (the texts: 56)",
                        7e9 * mixed.optimizer / 1e9, 56, 1e-9);
            expect_near("fp32 SGD without momentum: 8 bytes", training_bytes(false, 0).total(), 8,
                        0);
            expect_near("mixed SGD with momentum: 12 bytes", training_bytes(true, 1).total(), 12,
                        0);
            expect_near("no master copy in fp32", training_bytes(false, 2).master, 0, 0);
        });

    hw.check(
        "13.4", "activation bytes of an MLP's forward pass",
        "bytes = (bytes of one real)·(1 + Σ_l k_l·batch·out_l): the 1 is the loss; "
        "k_l = 2 for a hidden layer (x·W + b, then its activation), 1 for the output layer",
        [] {
            const std::vector<std::vector<int>> shapes = {
                {4, 8, 3}, {784, 256, 256, 10}, {2, 5}, {3, 16, 16, 16, 2}};
            for (const std::vector<int>& sizes : shapes)
                for (int batch : {1, 7, 32}) {
                    Rng rng(133);
                    nn::MLP model(sizes, rng);
                    const Tensor x = randn({batch, sizes[0]}, rng);
                    std::vector<int> labels(batch, 0);
                    const std::size_t before = tensor_bytes();
                    const Tensor loss = cross_entropy(model(x), labels);
                    expect_near(
                        "against the bytes the engine holds after the forward pass (tensor_bytes)",
                        double(mlp_activation_bytes(sizes, batch)), double(tensor_bytes() - before),
                        0);
                }
        });

    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
