// Lesson 07: learning-rate schedules, and how to find the learning rate in the first place.
//
// Every optimizer step has the form θ ← θ − lr·(update direction), and lr decides how far it
// goes. Too small and training crawls; too large and it bounces around or blows up. LLM training
// does not keep lr fixed: it ramps it up from 0 (warmup), then lets it fall along a cosine to a
// floor. This lesson computes those schedules, checks them against worked numbers, and then
// finds a good peak lr the way practitioners do, with a sweep.
//
//   1. Warmup + cosine decay, step by step, against the worked numbers of the course texts.
//   2. Four schedules side by side: constant, warmup-cosine, inverse square root, step decay;
//      how long the cosine stays near its peak (a fifth of the decay, not most of it).
//   3. What warmup costs in tokens, for a LLaMA-3-sized run and for a small one.
//   4. A learning-rate sweep: an MLP on three spirals, AdamW, lr from 1e-1 down to 1e-5.
//   5. The schedule in a training loop: constant lr against warmup + cosine at the same peak.
//
// Run it:             make lesson N=07        (plots go to build/plots/07_*.svg)
// Grade the homework: make check N=07

#include "lesson.h"

#include <cmath>
#include <functional>
#include <vector>

static const double pi = 3.14159265358979323846;

// ---------------------------------------------------------------------------------------------
// 1. Warmup + cosine (engine.cpp §2.10, warmup_cosine_lr):
//      step < warmup            lr = lr_max · step/warmup                          linear ramp
//      warmup ≤ step ≤ total    p  = (step − warmup)/(total − warmup)              progress 0 → 1
//                               lr = lr_min + ½·(lr_max − lr_min)·(1 + cos πp)     cosine decay
//      step > total             lr = lr_min                                        the floor
// At p = ½ the cosine is cos(π/2) = 0, so the lr there is exactly (lr_max + lr_min)/2; and the
// curve is symmetric about that point: lr(p) + lr(1 − p) = lr_max + lr_min. This is the
// schedule of the LLM recipe (lesson 06 §5), typically with about 2000 warmup steps.
// ---------------------------------------------------------------------------------------------
struct WorkedLr {
    long step;
    double expected;
    const char* why;
};

static void print_worked(long warmup, long total, double lr_max, double lr_min,
                         const std::vector<WorkedLr>& rows) {
    std::printf("%7s  %12s  %12s  %s\n", "step", "engine lr", "worked", "how");
    for (const WorkedLr& r : rows)
        std::printf("%7ld  %12.5e  %12.5e  %s\n", r.step,
                    warmup_cosine_lr(r.step, warmup, total, lr_max, lr_min), r.expected, r.why);
}

static void warmup_cosine() {
    heading("1. Warmup to 3e-4 over 2000 steps, cosine down to 3e-5 at step 10000");
    const double lr_max = 3e-4, lr_min = 3e-5, span = lr_max - lr_min;   // span = 2.7e-4
    print_worked(2000, 10000, lr_max, lr_min,
                 {{0, 0.0, "warmup starts at 0"},
                  {500, 7.5e-5, "3e-4 * 500/2000: a quarter of the way up"},
                  {1000, 1.5e-4, "3e-4 * 1000/2000: half way up"},
                  {2000, 3e-4, "p = 0: the peak"},
                  {4000, lr_min + span * (1 + std::cos(pi / 4)) / 2, "p = 1/4: cos(pi/4) = 0.7071"},
                  {6000, 1.65e-4, "p = 1/2: (3e-4 + 3e-5)/2, the midpoint"},
                  {8000, lr_min + span * (1 + std::cos(3 * pi / 4)) / 2, "p = 3/4: cos = -0.7071"},
                  {10000, 3e-5, "p = 1: cos(pi) = -1 leaves lr_min"},
                  {12000, 3e-5, "after the end: stays on the floor"}});
    std::printf("Symmetry: lr(4000) + lr(8000) = %.5e = lr_max + lr_min.\n",
                warmup_cosine_lr(4000, 2000, 10000, lr_max, lr_min) +
                    warmup_cosine_lr(8000, 2000, 10000, lr_max, lr_min));

    std::printf("\nA shorter run, warmup 100 and total 1000, same lr_max and lr_min:\n");
    print_worked(100, 1000, lr_max, lr_min,
                 {{50, 1.5e-4, "half of warmup: half the peak"},
                  {100, 3e-4, "end of warmup: the peak"},
                  {550, 1.65e-4, "p = 450/900 = 1/2: the midpoint again"},
                  {1000, 3e-5, "the floor"}});
}

// ---------------------------------------------------------------------------------------------
// 2. Four schedules with the same peak 3e-4 over 10000 steps:
//      constant         lr = 3e-4
//      warmup-cosine    as in section 1
//      inverse sqrt     linear warmup over 2000 steps, then lr = 3e-4·√(2000/step)
//                       (the original Transformer's schedule: it never reaches a floor)
//      step decay       lr = 3e-4 · 0.5^⌊step/2500⌋   (halve every 2500 steps)
// The mean lr over the run is a rough measure of how far the weights are allowed to travel.
// ---------------------------------------------------------------------------------------------
struct Schedule {
    const char* name;
    std::function<double(long)> lr;
};

static std::vector<Schedule> four_schedules() {
    return {
        {"constant", [](long) { return constant_lr(0, 3e-4); }},
        {"warmup-cosine", [](long s) { return warmup_cosine_lr(s, 2000, 10000, 3e-4, 3e-5); }},
        {"inverse sqrt", [](long s) { return inverse_sqrt_lr(s, 2000, 3e-4); }},
        {"step decay", [](long s) { return step_decay_lr(s, 3e-4, 2500, 0.5); }},
    };
}

// How long does the cosine stay near its peak? With lr_min = 0, lr = ½·lr_max·(1 + cos πp) is
// at least 0.9·lr_max only while cos πp ≥ 0.8, that is p ≤ acos(0.8)/π = 0.205; it is above
// half the peak for p < ½ and below it for p > ½ (the curve is symmetric); and its slope,
// −½·lr_max·π·sin(πp), is steepest at p = ½, not at the end. Counted here step by step with
// the engine's schedule, on a course text's setup: peak 3e-4, warmup 500, 10000 steps, floor 0.
static void cosine_near_peak() {
    const long warmup = 500, total = 10000;
    const double peak = 3e-4;
    long near_peak = 0, above_half = 0, steepest = warmup;
    double biggest_drop = 0;
    for (long s = warmup; s < total; ++s) {
        const double lr = warmup_cosine_lr(s, warmup, total, peak, 0.0);
        const double drop = lr - warmup_cosine_lr(s + 1, warmup, total, peak, 0.0);
        if (lr >= 0.9 * peak) ++near_peak;
        if (lr > 0.5 * peak) ++above_half;
        if (drop > biggest_drop) {
            biggest_drop = drop;
            steepest = s;
        }
    }
    const double decay_steps = double(total - warmup);
    std::printf(
        "\nThe cosine on peak 3e-4, warmup 500, 10000 steps, floor 0: of the %ld decay steps,\n"
        "%.1f%% have lr >= 0.9 peak and %.1f%% have lr > peak/2; the steepest fall is from\n"
        "step %ld to %ld, the midpoint.\n",
        total - warmup, 100 * near_peak / decay_steps, 100 * above_half / decay_steps, steepest,
        steepest + 1);
    std::printf(
        "Some course notes say the cosine spends most of training near the peak and decays\n"
        "sharply only at the end; the correct share of the decay within 10%% of the peak\n"
        "is %.1f%%, because 1 + cos(pi p) stays above 1.8 only for p < acos(0.8)/pi = %.3f;\n"
        "the lr spends as long below half the peak as above it, and falls fastest at the\n"
        "midpoint. (Against a linear decay, cosine is higher in the first half of the run\n"
        "and lower in the second.)\n",
        100 * near_peak / decay_steps, std::acos(0.8) / pi);
}

static void four_schedules_compared() {
    heading("2. Four schedules, peak 3e-4, 10000 steps");
    const std::vector<Schedule> schedules = four_schedules();
    std::printf("%7s", "step");
    for (const Schedule& s : schedules) std::printf("  %13s", s.name);
    std::printf("\n");
    for (long step : {0L, 500L, 1000L, 2000L, 2500L, 4000L, 5000L, 6000L, 7500L, 8000L, 10000L}) {
        std::printf("%7ld", step);
        for (const Schedule& s : schedules) std::printf("  %13.4e", s.lr(step));
        std::printf("\n");
    }

    Plot plot("Four learning-rate schedules (peak 3e-4)", "step", "learning rate");
    std::printf("%7s", "mean");
    for (const Schedule& s : schedules) {
        std::vector<double> steps, lrs;
        double total = 0;
        for (long step = 0; step <= 10000; ++step) {
            total += s.lr(step);
            if (step % 50 == 0) {
                steps.push_back(double(step));
                lrs.push_back(s.lr(step));
            }
        }
        std::printf("  %13.4e", total / 10001);
        plot.add(s.name, steps, lrs);
    }
    std::printf("\n\nWarmup-cosine and inverse sqrt share the ramp. After it the cosine falls\n"
                "slowly, then fast around the midpoint, then slowly again into its floor; inverse\n"
                "sqrt drops fast at first and then keeps a long tail (%.2e at step 10000).\n"
                "Step decay makes its descent in jumps, whose timing is one more thing to tune.\n",
                inverse_sqrt_lr(10000, 2000, 3e-4));
    plot.save("07_schedules");
    cosine_near_peak();
}

// ---------------------------------------------------------------------------------------------
// 3. Tokens seen during warmup = warmup steps × tokens per step.
// LLaMA 3 70B: 2000 warmup steps at a batch of 4M tokens (4 × 1024² = 4,194,304), out of 15T.
// A small run: 10B tokens at 512 sequences × 1024 tokens per step, with the same 2000 steps.
// ---------------------------------------------------------------------------------------------
static void warmup_tokens() {
    heading("3. What warmup costs: tokens seen while the lr ramps up");
    struct Run {
        const char* name;
        double tokens_per_step, total_tokens;
        long warmup;
    };
    const Run runs[] = {{"LLaMA 3 70B", 4194304.0, 15e12, 2000},
                        {"small (512 x 1024)", 512.0 * 1024, 10e9, 2000}};
    std::printf("%-20s  %14s  %12s  %16s  %11s\n", "run", "tokens/step", "total steps",
                "warmup tokens", "share");
    for (const Run& r : runs) {
        const double steps = r.total_tokens / r.tokens_per_step;
        const double warm = r.warmup * r.tokens_per_step;
        std::printf("%-20s  %14.0f  %12.0f  %16.4g  %10.3f%%\n", r.name, r.tokens_per_step, steps,
                    warm, 100 * warm / r.total_tokens);
    }
    std::printf("\nThe big run spends 8.4 billion tokens (0.056%% of its data) on warmup; the\n"
                "small one spends about a tenth of its run there. Warmup is counted in steps, not\n"
                "tokens: it is there for the optimizer's statistics to settle, and those need\n"
                "steps.\n");
}

// ---------------------------------------------------------------------------------------------
// 4. A learning-rate sweep. Data: three spiral arms in the plane, one class per arm. Point i of
// arm c has radius r = (i + 1)/n and angle θ = 2πc/3 + 4r (plus Gaussian noise on θ), so each
// arm winds about two thirds of a turn and the classes interleave: no straight line separates them.
// Model: an MLP with six hidden ReLU layers of width 32, He init, the same initial weights for
// every run. Loss: cross-entropy on the 3 logits (ln 3 = 1.0986 for a model that knows nothing).
// Optimizer: AdamW on minibatches of 32 points, 300 steps, the same minibatches in every run.
// We sweep lr over half-decades from 1e-1 to 1e-5 and record the loss on all 300 points at the end.
// (Adam moves every weight by about lr per step whatever the gradient's size; in a deep stack
// those moves compound from layer to layer, which is what makes a large lr fail here.)
// ---------------------------------------------------------------------------------------------
struct Spirals {
    std::vector<real> coords;   // x₀, y₀, x₁, y₁, ...
    std::vector<int> label;     // one of 0, 1, 2 per point
    Tensor all() const { return Tensor({int(label.size()), 2}, coords); }
};

static Spirals make_spirals(int per_class, double noise, Rng& rng) {
    Spirals data;
    for (int c = 0; c < 3; ++c)
        for (int i = 0; i < per_class; ++i) {
            const double r = double(i + 1) / per_class;
            const double theta = 2 * pi * c / 3 + 4 * r + noise * rng.normal();
            data.coords.push_back(real(r * std::cos(theta)));
            data.coords.push_back(real(r * std::sin(theta)));
            data.label.push_back(c);
        }
    return data;
}

// `size` points drawn at random (with replacement) from the data.
static Spirals minibatch(const Spirals& data, int size, Rng& rng) {
    Spirals batch;
    for (int k = 0; k < size; ++k) {
        const std::size_t i = rng.below(data.label.size());
        batch.coords.push_back(data.coords[2 * i]);
        batch.coords.push_back(data.coords[2 * i + 1]);
        batch.label.push_back(data.label[i]);
    }
    return batch;
}

static const int sweep_steps = 300, batch_size = 32, eval_every = 10;

// The loss on the whole data set, measured every eval_every steps.
struct Curve {
    std::vector<double> step, loss;
    double last() const { return loss.back(); }
    double at(int s) const { return loss[s / eval_every]; }
};

// Trains a fresh MLP (seed 7: every call starts from the same weights and sees the same
// minibatches) for sweep_steps steps of AdamW, taking the lr of step k from `schedule`.
// A loss that is NaN or infinite ends the training: the remaining entries are NaN.
static Curve train_spirals(const Spirals& data, const std::function<double(long)>& schedule) {
    Rng init_rng(7), batch_rng(9);
    nn::MLP model({2, 32, 32, 32, 32, 32, 32, 3}, init_rng, Activation::relu, Init::he_normal);
    AdamW opt(model.parameters(), schedule(0));
    const Tensor everything = data.all();
    Curve curve;
    bool diverged = false;
    for (long step = 0; step <= sweep_steps; ++step) {
        if (step % eval_every == 0) {
            curve.step.push_back(double(step));
            curve.loss.push_back(diverged ? NAN
                                          : cross_entropy(model(everything), data.label).item());
            diverged = !std::isfinite(curve.loss.back());
        }
        if (diverged || step == sweep_steps) continue;
        const Spirals batch = minibatch(data, batch_size, batch_rng);
        const Tensor loss = cross_entropy(model(batch.all()), batch.label);   // forward
        if (!std::isfinite(loss.item())) {   // backward() refuses a NaN or infinite loss
            diverged = true;
            continue;
        }
        opt.zero_grad();
        loss.backward();   // backward
        opt.lr = schedule(step);
        opt.step();   // update
    }
    return curve;
}

static std::vector<double> sweep_lrs() {
    std::vector<double> lrs;
    for (int k = 2; k <= 10; ++k) lrs.push_back(std::pow(10.0, -0.5 * k));   // 1e-1 ... 1e-5
    return lrs;
}

// Returns the lr of the sweep with the lowest final loss.
static double lr_sweep(const Spirals& data) {
    heading("4. Learning-rate sweep: 6 x 32 ReLU MLP on three spirals, AdamW, 300 steps of 32");
    std::printf("%zu points, 3 classes; a model that knows nothing has loss ln 3 = %.4f.\n"
                "Losses are on all %zu points.\n\n",
                data.label.size(), std::log(3.0), data.label.size());
    const std::vector<double> lrs = sweep_lrs();
    std::vector<double> final_loss;
    Plot curves("Spirals: training loss for each lr (AdamW)", "step", "loss", Scale::log_y);
    std::printf("%10s  %12s  %12s  %12s\n", "lr", "loss @ 10", "loss @ 100", "final loss");
    for (double lr : lrs) {
        const Curve curve = train_spirals(data, [lr](long) { return lr; });
        final_loss.push_back(curve.last());
        std::printf("%10.1e  %12.5f  %12.5f  %12.5f\n", lr, curve.at(10), curve.at(100),
                    curve.last());
        char label[32];
        std::snprintf(label, sizeof label, "lr %.0e", lr);
        const bool whole_decade = std::lround(2 * std::log10(lr)) % 2 == 0;
        if (whole_decade) curves.add(label, curve.step, curve.loss);
    }
    std::size_t best = 0;   // a NaN loss compares false with everything, so it never wins
    double best_loss = INFINITY;
    for (std::size_t i = 0; i < lrs.size(); ++i)
        if (final_loss[i] < best_loss) {
            best = i;
            best_loss = final_loss[i];
        }
    std::printf("\nLowest final loss %.5f at lr = %.1e. Small lrs crawl: 1e-5 ends about where a\n"
                "model that knows nothing starts. The largest make fast progress, then bounce\n"
                "out of it again. The final loss against lr is a U (07_lr_sweep plots it).\n",
                final_loss[best], lrs[best]);

    Plot u("LR sweep: final loss after 300 AdamW steps", "learning rate", "final loss",
           Scale::log_log);
    u.add("final loss", lrs, final_loss);
    u.save("07_lr_sweep");
    curves.save("07_sweep_curves");
    return lrs[best];
}

// ---------------------------------------------------------------------------------------------
// 5. The schedule in a training loop. Same data, model, minibatches and steps as section 4; at
// three peaks (the best lr of the sweep, √10× it and 10× it) we train once with a constant lr
// and once with
//     warmup_cosine_lr(step, warmup = 30, total = 300, lr_max = peak, lr_min = peak/10).
// ---------------------------------------------------------------------------------------------
// What the three rows show, said from their numbers: final losses at 1, √10 and 10 times the
// best lr, with a constant lr and with the schedule.
static void explain_schedule_rows(const double constant[3], const double cosine[3]) {
    if (cosine[0] > constant[0])
        std::printf(
            "\nAt the best lr the schedule ends a little behind (%.5f against %.5f): its average\n"
            "lr is about half the peak, and this short run needs all the movement it can get.\n",
            cosine[0], constant[0]);
    else
        std::printf("\nAt the best lr the schedule ends level or ahead (%.5f against %.5f).\n",
                    cosine[0], constant[0]);
    if (constant[1] > cosine[1] && constant[2] > cosine[2])
        std::printf(
            "Above it the constant lr ends %.1fx (at sqrt(10)x) and %.1fx (at 10x) higher than "
            "the\n"
            "schedule: the warmup keeps the first steps small while Adam's statistics settle,\n"
            "and the decay lets the last steps stop bouncing. A schedule buys room for error in\n"
            "the one number that matters most.\n",
            constant[1] / cosine[1], constant[2] / cosine[2]);
    else
        std::printf(
            "Above it the schedule did not end lower at both peaks on this run: %.5f against\n"
            "%.5f at sqrt(10)x, %.5f against %.5f at 10x.\n",
            cosine[1], constant[1], cosine[2], constant[2]);
}

static void schedule_in_training(const Spirals& data, double best_lr) {
    heading("5. Constant lr against warmup + cosine (warmup 30, total 300, floor peak/10)");
    Plot plot("Spirals: constant lr against warmup + cosine", "step", "loss", Scale::log_y);
    std::printf("%10s  %16s  %16s\n", "peak lr", "constant: final", "cosine: final");
    const double factors[] = {1.0, std::sqrt(10.0), 10.0};
    double constant_final[3], cosine_final[3];
    for (int k = 0; k < 3; ++k) {
        const double peak = best_lr * factors[k];
        const Curve constant = train_spirals(data, [peak](long) { return peak; });
        const Curve cosine = train_spirals(
            data, [peak](long s) { return warmup_cosine_lr(s, 30, sweep_steps, peak, peak / 10); });
        std::printf("%10.1e  %16.5f  %16.5f\n", peak, constant.last(), cosine.last());
        constant_final[k] = constant.last();
        cosine_final[k] = cosine.last();
        if (k == 1) continue;   // plot the two ends only
        char label[48];
        std::snprintf(label, sizeof label, "constant %.0e", peak);
        plot.add(label, constant.step, constant.loss);
        std::snprintf(label, sizeof label, "cosine %.0e", peak);
        plot.add(label, cosine.step, cosine.loss);
    }
    explain_schedule_rows(constant_final, cosine_final);
    plot.save("07_schedule_training");
}

static void lesson() {
    std::printf("Lesson 07: learning-rate schedules and the learning-rate sweep\n");
    warmup_cosine();
    four_schedules_compared();
    warmup_tokens();
    Rng rng(3);
    const Spirals data = make_spirals(100, 0.2, rng);
    const double best_lr = lr_sweep(data);
    schedule_in_training(data, best_lr);
}

// ---- Homework --------------------------------------------------------------------------------

// 07.1  Warmup + cosine by hand, without calling the engine's warmup_cosine_lr:
//     step < warmup:            lr_max · step / warmup
//     warmup ≤ step ≤ total:    lr_min + ½·(lr_max − lr_min)·(1 + cos πp),
//                               p = (step − warmup)/(total − warmup)
//     step > total:             lr_min
double my_warmup_cosine(long step, long warmup, long total, double lr_max, double lr_min) {
    // BEGIN EXERCISE 07.1
    throw not_implemented("07.1");
    // END EXERCISE
}

// 07.2  The inverse-square-root schedule: linear warmup from 0 to lr_max over `warmup` steps,
// then lr_max·√(warmup/step). (Step 0 gives 0; step = warmup gives lr_max.)
double my_inverse_sqrt(long step, long warmup, double lr_max) {
    // BEGIN EXERCISE 07.2
    throw not_implemented("07.2");
    // END EXERCISE
}

// 07.3  Read a sweep: given the learning rates tried and the final loss of each, return the lr
// with the lowest final loss. A run that diverged has a final loss of NaN or ±inf: it can never
// be the best. Throw std::invalid_argument if the two vectors differ in length, are empty, or
// if every run diverged.
double best_learning_rate(const std::vector<double>& lrs, const std::vector<double>& final_losses) {
    // BEGIN EXERCISE 07.3
    throw not_implemented("07.3");
    // END EXERCISE
}

static int check_homework() {
    Homework hw("07");

    hw.check("07.1", "warmup + cosine learning rate",
             "a linear ramp lr_max·step/warmup, then lr_min + ½(lr_max − lr_min)(1 + cos πp) with "
             "p = (step − warmup)/(total − warmup) as a real number, not integer division; lr_min "
             "past total",
             [] {
                 auto lr = [](long s) { return my_warmup_cosine(s, 2000, 10000, 3e-4, 3e-5); };
                 // The worked numbers of the course texts.
                 expect_near("step 0: warmup starts at 0", lr(0), 0.0, 1e-15);
                 expect_near("step 500 of a 2000-step warmup to 3e-4", lr(500), 7.5e-5, 1e-12);
                 expect_near("step 2000: the peak", lr(2000), 3e-4, 1e-12);
                 expect_near("step 6000: the cosine midpoint (3e-4 + 3e-5)/2", lr(6000), 1.65e-4,
                             1e-12);
                 expect_near("step 10000: the floor", lr(10000), 3e-5, 1e-12);
                 expect_near("step 25000, after the end: still the floor", lr(25000), 3e-5, 1e-12);
                 // Properties of the cosine half: symmetric about the midpoint, falling throughout.
                 for (long s = 2000; s <= 6000; s += 250)
                     expect_near("lr(6000 - d) + lr(6000 + d) = lr_max + lr_min",
                                 lr(s) + lr(12000 - s), 3.3e-4, 1e-12);
                 for (long s = 2000; s < 10000; s += 100)
                     expect_true("the lr falls during the decay", lr(s + 100) < lr(s));
                 // The second worked example: warmup 100, total 1000.
                 expect_near("warmup 100, step 50: half the peak",
                             my_warmup_cosine(50, 100, 1000, 3e-4, 3e-5), 1.5e-4, 1e-12);
                 expect_near("warmup 100, total 1000, step 550: the midpoint",
                             my_warmup_cosine(550, 100, 1000, 3e-4, 3e-5), 1.65e-4, 1e-12);
             });

    hw.check(
        "07.2", "inverse square root schedule with linear warmup",
        "a linear ramp lr_max·step/warmup up to warmup, then lr_max·√(warmup/step); "
        "divide as reals (warmup/step on integers truncates)",
        [] {
            expect_near("step 0", my_inverse_sqrt(0, 4000, 1e-3), 0.0, 1e-15);
            expect_near("a quarter of warmup", my_inverse_sqrt(1000, 4000, 1e-3), 2.5e-4, 1e-12);
            expect_near("end of warmup: the peak", my_inverse_sqrt(4000, 4000, 1e-3), 1e-3, 1e-12);
            expect_near("4 x warmup: half the peak", my_inverse_sqrt(16000, 4000, 1e-3), 5e-4,
                        1e-12);
            expect_near("100 x warmup: a tenth of the peak", my_inverse_sqrt(400000, 4000, 1e-3),
                        1e-4, 1e-12);
            // "Attention is all you need" writes it as d^-0.5 · min(step^-0.5, step·w^-1.5)
            // with d = 512, w = 4000; its peak is d^-0.5 · w^-0.5 = 7.0e-4.
            const double d = 512, w = 4000, peak = 1 / std::sqrt(d * w);
            for (long s : {1L, 100L, 2000L, 3999L, 4000L, 4001L, 10000L, 100000L}) {
                const double t = double(s);
                const double paper =
                    std::pow(d, -0.5) * std::min(std::pow(t, -0.5), t * std::pow(w, -1.5));
                expect_near("the Transformer paper's formula", my_inverse_sqrt(s, 4000, peak),
                            paper, 1e-12);
            }
        });

    hw.check("07.3", "pick the best lr from a sweep, skipping diverged runs",
             "the argmin over finite losses only: NaN compares false with everything and −inf "
             "beats every real loss, so rule out both first; if none is finite, throw",
             [] {
                 const std::vector<double> lrs = {1e-1, 1e-2, 1e-3, 1e-4, 1e-5};
                 expect_near("a plain U: the minimum is at 1e-3",
                             best_learning_rate(lrs, {0.9, 0.2, 0.05, 0.4, 1.0}), 1e-3, 0);
                 expect_near("a diverged first run (NaN) must not win",
                             best_learning_rate(lrs, {NAN, 0.08, 0.05, 0.4, 1.0}), 1e-3, 0);
                 expect_near("an infinite loss is a diverged run too",
                             best_learning_rate(lrs, {0.3, -INFINITY, 0.06, 0.04, 1.0}), 1e-4, 0);
                 expect_near("the minimum may be at the end of the sweep",
                             best_learning_rate(lrs, {NAN, INFINITY, 0.9, 0.5, 0.1}), 1e-5, 0);
                 expect_true("lengths 5 and 4 throw std::invalid_argument",
                             throws_invalid_argument([&] {
                                 best_learning_rate(lrs, {0.1, 0.2, 0.3, 0.4});
                             }));
                 expect_true("an empty sweep throws std::invalid_argument",
                             throws_invalid_argument([] { best_learning_rate({}, {}); }));
                 expect_true("a sweep where every run diverged throws std::invalid_argument",
                             throws_invalid_argument([] {
                                 best_learning_rate({1.0, 0.1}, {NAN, INFINITY});
                             }));
             });

    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
