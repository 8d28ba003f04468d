// Lesson 09: gradient clipping, the one-line guard against exploding gradients.
//
// When the local Jacobians of a network multiply to more than 1, or the learning rate is too
// high, an update can make the loss larger, which makes the next gradient larger, which makes the
// next update larger still: the loss runs off to infinity and then to NaN within a few steps.
// Clipping by global norm caps the length of the whole gradient vector before the update:
//
//     ‖g‖ = √(Σ over every parameter element of g²)           the global L2 norm
//     g ← g · max_norm/‖g‖      if ‖g‖ > max_norm              (max_norm = 1.0 for most LLMs)
//
// Every gradient is scaled by the same factor, so the direction is kept and only the step length
// is capped. This lesson computes it by hand, then watches it save a training run.
//
//   1. The global norm of a gradient spread over two parameter tensors.
//   2. Clipping a norm of 5 down to 1.
//   3. Clipping by value instead: the direction changes.
//   4. A run with too high a learning rate: NaN without clipping, alive with it.
//   5. Reading a logged gradient-norm trace.
//
// Run it:             make lesson N=09        (plots go to build/plots/09_*.svg)
// Grade the homework: make check N=09

#include "lesson.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

static const double pi = 3.14159265358979323846;

// A parameter tensor whose gradient we set by hand (as if backward() had filled it).
static Tensor param_with_grad(const std::vector<real>& grad) {
    Tensor p = Tensor({int(grad.size())}, std::vector<real>(grad.size(), 0));
    p.requires_grad_();
    p.grad() = grad;
    return p;
}

static void print_grads(const char* what, const std::vector<Tensor>& params) {
    std::printf("  %-24s", what);
    for (const Tensor& p : params) {
        std::printf(" [");
        for (std::size_t i = 0; i < p.grad().size(); ++i)
            std::printf("%s%7.4f", i ? ", " : "", p.grad()[i]);
        std::printf("]");
    }
    std::printf("\n");
}

// ---------------------------------------------------------------------------------------------
// 1. The global norm treats all parameters as one long vector:
//      ‖g‖² = Σ_tensors Σ_elements g²  =  Σ_tensors ‖g_tensor‖²
// For g = [0.3, −0.4, 0.5, −0.1, 0.2]: 0.09 + 0.16 + 0.25 + 0.01 + 0.04 = 0.55, ‖g‖ = 0.7416.
// ---------------------------------------------------------------------------------------------
static void global_norm() {
    heading("1. Global norm of g = [0.3, -0.4, 0.5, -0.1, 0.2], split over two tensors");
    const std::vector<Tensor> params = {param_with_grad({0.3f, -0.4f}),
                                        param_with_grad({0.5f, -0.1f, 0.2f})};
    const std::vector<double> norms = grad_norms(params);
    std::printf("%-10s  %22s  %14s  %10s\n", "tensor", "gradient", "sum of g^2", "its norm");
    std::printf("%-10s  %22s  %14.4f  %10.4f\n", "first", "[0.3, -0.4]", 0.25, norms[0]);
    std::printf("%-10s  %22s  %14.4f  %10.4f\n", "second", "[0.5, -0.1, 0.2]", 0.30, norms[1]);
    std::printf("%-10s  %22s  %14.4f  %10.4f\n", "global", "all five", 0.55, grad_norm(params));
    std::printf("\nsqrt(0.55) = %.4f = sqrt(%.4f^2 + %.4f^2): the per-tensor norms combine like\n"
                "the sides of a right triangle.\n",
                std::sqrt(0.55), norms[0], norms[1]);
}

// ---------------------------------------------------------------------------------------------
// 2. Clip by norm with max_norm = 1. A gradient of global norm 5 (2² + 4² + 1² + 2² = 25) is
// scaled by 1/5 = 0.2: a component of 2.0 becomes 0.4. A gradient already shorter than 1 is left
// alone. clip_grad_norm returns the norm before clipping, which is the number worth logging.
// ---------------------------------------------------------------------------------------------
static void clip_by_norm() {
    heading("2. Clipping by global norm, max_norm = 1");
    const std::vector<Tensor> big = {param_with_grad({2, 4}), param_with_grad({1, 2})};
    print_grads("before:", big);
    const double before = clip_grad_norm(big, 1.0);
    print_grads("after:", big);
    std::printf("  norm before %.4f, factor 1/%.0f = %.2f, norm after %.4f; 2.0 became %.2f\n\n",
                before, before, 1.0 / before, grad_norm(big), big[0].grad()[0]);

    const std::vector<Tensor> small = {param_with_grad({0.3f, -0.4f, 0.5f, -0.1f, 0.2f})};
    print_grads("before:", small);
    const double small_norm = clip_grad_norm(small, 1.0);
    print_grads("after:", small);
    std::printf("  norm %.4f is below 1: nothing changes\n", small_norm);
}

// ---------------------------------------------------------------------------------------------
// 3. Clipping by value,  g_i ← min(max(g_i, −c), c),  caps each component on its own. Large
// components are cut more than small ones, so the direction turns. We measure the turn by the
// cosine between the gradient before and after:  cos θ = (a·b)/(‖a‖·‖b‖).
// g = [3, −4, 5, −1, 2] clipped at 1 is [1, −1, 1, −1, 1] (the signs of g):
//     cos θ = (3 + 4 + 5 + 1 + 2)/(√55·√5) = 15/√275 = 0.9045, θ = 25.2 degrees.
// ---------------------------------------------------------------------------------------------
static double cosine(const std::vector<real>& a, const std::vector<real>& b) {
    double dot = 0, aa = 0, bb = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        dot += double(a[i]) * b[i];
        aa += double(a[i]) * a[i];
        bb += double(b[i]) * b[i];
    }
    return dot / std::sqrt(aa * bb);
}

static void value_against_norm() {
    heading("3. Clip by value (c = 1) against clip by norm (max_norm = 1)");
    const std::vector<real> g = {3, -4, 5, -1, 2};
    const std::vector<Tensor> by_value = {param_with_grad(g)}, by_norm = {param_with_grad(g)};
    clip_grad_value(by_value, 1.0);
    clip_grad_norm(by_norm, 1.0);
    std::printf("%9s  %10s  %10s  %10s\n", "component", "g", "by value", "by norm");
    for (std::size_t i = 0; i < g.size(); ++i)
        std::printf("%9zu  %10.4f  %10.4f  %10.4f\n", i, g[i], by_value[0].grad()[i],
                    by_norm[0].grad()[i]);
    const double cos_value = cosine(g, by_value[0].grad()), cos_norm = cosine(g, by_norm[0].grad());
    std::printf("%9s  %10.4f  %10.4f  %10.4f\n", "norm", std::sqrt(55.0), grad_norm(by_value),
                grad_norm(by_norm));
    std::printf("%9s  %10s  %10.4f  %10.4f\n", "cos", "", cos_value, cos_norm);
    auto degrees = [](double c) { return std::acos(std::min(1.0, c)) * 180 / pi; };
    std::printf("%9s  %10s  %10.1f  %10.1f\n", "angle deg", "", degrees(cos_value),
                degrees(cos_norm));
    std::printf("\nBy value, the step now points along the signs of g (25 degrees off), and it is\n"
                "longer (sqrt 5 = 2.24). By norm, it points where g pointed, with length 1.\n");
}

// ---------------------------------------------------------------------------------------------
// 4. A run that explodes. Regression of y = sin(2·x1)·cos(x2) on 256 points of [−2, 2]², with
// MLP {2, 64, 64, 1} (ReLU, He init), mean squared error and plain SGD. Three runs from the same
// initial weights:
//     lr = 0.01                         a sensible rate
//     lr = 0.12, no clipping            each step overshoots more than the last: inf, then NaN
//     lr = 0.12, clip at 1.0            a step can move the weights by at most lr·1.0
// We log ‖g‖ before clipping at every step, and stop a run at the first loss or norm that is
// not finite.
// ---------------------------------------------------------------------------------------------
struct Regression {
    Tensor x, y;   // [N, 2], [N, 1]
};

static Regression make_regression(int n) {
    Rng rng(21);
    std::vector<real> x, y;
    for (int i = 0; i < n; ++i) {
        const double a = rng.uniform(-2, 2), b = rng.uniform(-2, 2);
        x.push_back(real(a));
        x.push_back(real(b));
        y.push_back(real(std::sin(2 * a) * std::cos(b)));
    }
    return {Tensor({n, 2}, x), Tensor({n, 1}, y)};
}

struct Run {
    std::vector<double> loss, norm;   // per step, until the end or the first non-finite value
    int diverged_at = -1;             // the step whose loss or norm was NaN/inf, or −1
};

static const int run_steps = 200;
static const double too_high_lr = 0.12;

// max_norm ≤ 0 means no clipping.
static Run train(const Regression& data, double lr, double max_norm) {
    Rng rng(22);
    nn::MLP model({2, 64, 64, 1}, rng, Activation::relu, Init::he_normal);
    SGD opt(model.parameters(), lr);
    Run run;
    for (int step = 0; step < run_steps; ++step) {
        opt.zero_grad();
        const Tensor loss = mse_loss(model(data.x), data.y);
        run.loss.push_back(loss.item());
        if (!std::isfinite(loss.item())) {   // backward() refuses a loss that is NaN or inf
            run.diverged_at = step;
            break;
        }
        loss.backward();
        const double norm = max_norm > 0 ? clip_grad_norm(opt.params(), max_norm)   // norm before
                                         : grad_norm(opt.params());
        run.norm.push_back(norm);
        if (!std::isfinite(norm)) {
            run.diverged_at = step;
            break;
        }
        opt.step();
    }
    return run;
}

static std::string cell(const std::vector<double>& v, int step) {
    char buf[32];
    if (step >= int(v.size())) return "-";
    std::snprintf(buf, sizeof buf, "%.4g", v[step]);
    return buf;
}

static void exploding_run() {
    heading("4. Too high a learning rate, with and without clipping");
    const Regression data = make_regression(256);
    const Run good = train(data, 0.01, 0);
    const Run wild = train(data, too_high_lr, 0);
    const Run clipped = train(data, too_high_lr, 1.0);
    char high[16];
    std::snprintf(high, sizeof high, "lr %g", too_high_lr);
    std::printf("MLP {2, 64, 64, 1}, MSE, SGD. Columns: loss, and |g| before clipping.\n\n");
    std::printf("%5s  %11s %11s  %11s %11s  %11s %11s\n", "", "lr 0.01", "", high, "no clip", high,
                "clip 1.0");
    std::printf("%5s  %11s %11s  %11s %11s  %11s %11s\n", "step", "loss", "|g|", "loss", "|g|",
                "loss", "|g|");
    for (int step = 0; step < run_steps; ++step) {
        const bool near_blowup = step <= wild.diverged_at + 1;
        if (step % 20 != 0 && step != run_steps - 1 && !near_blowup) continue;
        std::printf("%5d  %11s %11s  %11s %11s  %11s %11s\n", step, cell(good.loss, step).c_str(),
                    cell(good.norm, step).c_str(), cell(wild.loss, step).c_str(),
                    cell(wild.norm, step).c_str(), cell(clipped.loss, step).c_str(),
                    cell(clipped.norm, step).c_str());
    }
    if (wild.diverged_at >= 0)
        std::printf("\nWithout clipping, lr %g broke down: the loss was %g at step %d, so the run\n"
                    "was stopped there. Before that the norm grew at every step, from %.3g to\n"
                    "%.3g: each step overshoots, the larger loss gives a larger gradient, and\n"
                    "that a larger step. Logged, the norm would have raised the alarm at step 1.\n",
                    too_high_lr, wild.loss.back(), wild.diverged_at, wild.norm.front(),
                    wild.norm.back());
    else std::printf("\nThe run without clipping did not diverge at this learning rate.\n");
    double smallest_norm = clipped.norm[0];
    for (double n : clipped.norm) smallest_norm = std::min(smallest_norm, n);
    std::printf("With clipping the same lr ran all %d steps. Its norm never fell below %.2f, so\n"
                "every step was clipped to length lr * 1.0 = %g: the weights cannot run away, and\n"
                "training survives, slowly. It ended at loss %.4f (lr 0.01: %.4f).\n",
                run_steps, smallest_norm, too_high_lr, clipped.loss.back(), good.loss.back());

    Plot norms("Gradient norm, before clipping", "step", "global norm |g|", Scale::log_y);
    norms.add("lr 0.01", good.norm);
    norms.add(std::string(high) + ", no clipping", wild.norm);
    norms.add(std::string(high) + ", clip at 1", clipped.norm);
    norms.save("09_grad_norm");
    Plot losses("Training loss (MSE)", "step", "loss", Scale::log_y);
    losses.add("lr 0.01", good.loss);
    losses.add(std::string(high) + ", no clipping", wild.loss);
    losses.add(std::string(high) + ", clip at 1", clipped.loss);
    losses.save("09_loss");
}

// ---------------------------------------------------------------------------------------------
// 5. Reading a norm log. A run with max_norm = 1 logged ‖g‖ every 100 steps:
//     1.2, 1.5, 1.8, 2.4, 4.1, 12.3, 89.7, NaN.
// Clipping scales by min(1, 1/‖g‖): it was active from the first entry, and the norm kept
// rising anyway. Clipping limits each step; it cannot fix a learning rate that is too high.
// ---------------------------------------------------------------------------------------------
static void reading_a_log() {
    heading("5. A logged gradient norm, max_norm = 1");
    const double logged[] = {1.2, 1.5, 1.8, 2.4, 4.1, 12.3, 89.7, NAN};
    std::printf("%6s  %8s  %14s  %8s\n", "step", "|g|", "clip factor", "clipped?");
    for (int k = 0; k < 8; ++k) {
        const double g = logged[k];
        if (!std::isfinite(g)) {
            std::printf("%6d  %8.1f  %14s  %8s\n", 100 * (k + 1), g, "-", "too late");
            continue;
        }
        std::printf("%6d  %8.1f  %14.4f  %8s\n", 100 * (k + 1), g, std::min(1.0, 1.0 / g),
                    g > 1 ? "yes" : "no");
    }
    std::printf("\nEvery logged norm is above 1, so clipping was on from the start (factor 0.83\n"
                "at step 100). A norm that keeps growing under clipping means the run is still\n"
                "diverging, only more slowly: lower the learning rate.\n");
}

static void lesson() {
    std::printf("Lesson 09: gradient clipping\n");
    global_norm();
    clip_by_norm();
    value_against_norm();
    exploding_run();
    reading_a_log();
}

// ---- Homework --------------------------------------------------------------------------------

// 09.1  The global L2 norm of the gradients of `params`: √(Σ over every tensor and every element
// of g²). A parameter whose grad() is empty (backward never reached it) contributes nothing.
double global_grad_norm(const std::vector<Tensor>& params) {
    // BEGIN EXERCISE 09.1
    throw not_implemented("09.1");
    // END EXERCISE
}

// 09.2  Clip by global norm, in place: if ‖g‖ > max_norm, multiply every gradient element of every
// parameter by max_norm/‖g‖; otherwise change nothing. Return ‖g‖ before clipping.
double clip_by_global_norm(const std::vector<Tensor>& params, double max_norm) {
    // BEGIN EXERCISE 09.2
    throw not_implemented("09.2");
    // END EXERCISE
}

// 09.3  How far does clipping by value turn a gradient? Clip each component of g to [−c, c] and
// return the cosine between g and the clipped vector: (g·h)/(‖g‖·‖h‖). Throw
// std::invalid_argument if g is empty or all zeros (no direction), or if c ≤ 0.
double value_clip_cosine(const std::vector<double>& g, double c) {
    // BEGIN EXERCISE 09.3
    throw not_implemented("09.3");
    // END EXERCISE
}

static int check_homework() {
    Homework hw("09");

    hw.check("09.1", "global gradient norm over several tensors",
             "one norm for all parameters together, ‖g‖ = √(Σ_tensors Σ_elements g²), "
             "not a sum of per-tensor norms; an empty grad adds 0",
             [] {
                 // The worked example: sqrt(0.09 + 0.16 + 0.25 + 0.01 + 0.04) = sqrt(0.55).
                 const double worked = 0.7416198487095663;
                 expect_near("[0.3, -0.4, 0.5, -0.1, 0.2] as one tensor",
                             global_grad_norm({param_with_grad({0.3f, -0.4f, 0.5f, -0.1f, 0.2f})}),
                             worked, 1e-6);
                 expect_near("the same five numbers split over two tensors",
                             global_grad_norm({param_with_grad({0.3f, -0.4f}),
                                               param_with_grad({0.5f, -0.1f, 0.2f})}),
                             worked, 1e-6);
                 Tensor untouched = Tensor({3}, {1, 2, 3});   // no backward: empty grad()
                 untouched.requires_grad_();
                 expect_near("a parameter with an empty grad() adds nothing",
                             global_grad_norm({param_with_grad({3, 4}), untouched}), 5.0, 1e-6);
             });

    hw.check(
        "09.2", "clip by global norm",
        "when ‖g‖ > max_norm, scale every element of every gradient by one factor, max_norm/‖g‖ "
        "(direction kept, new norm max_norm); return ‖g‖ as it was before",
        [] {
            // Norm 5 clipped to 1: factor 0.2, and a gradient of 2.0 becomes 0.4.
            const std::vector<Tensor> ps = {param_with_grad({2, 4}), param_with_grad({1, 2})};
            expect_near("returns the norm before clipping", clip_by_global_norm(ps, 1.0), 5.0,
                        1e-6);
            expect_near("2.0 becomes 0.4", ps[0].grad()[0], 0.4, 1e-6);
            expect_near("4.0 becomes 0.8", ps[0].grad()[1], 0.8, 1e-6);
            expect_near("1.0 becomes 0.2 (second tensor)", ps[1].grad()[0], 0.2, 1e-6);
            expect_near("2.0 becomes 0.4 (second tensor)", ps[1].grad()[1], 0.4, 1e-6);
            // Below the threshold nothing moves.
            const std::vector<Tensor> small = {param_with_grad({0.3f, -0.4f, 0.5f, -0.1f, 0.2f})};
            expect_near("norm sqrt(0.55) returned", clip_by_global_norm(small, 1.0),
                        std::sqrt(0.55), 1e-6);
            expect_near("a norm below max_norm leaves -0.4 alone", small[0].grad()[1], -0.4, 1e-7);
            // Clipping to 2: the result has norm exactly 2, along the same direction.
            const std::vector<Tensor> g = {param_with_grad({6, -8})};   // norm 10
            clip_by_global_norm(g, 2.0);
            expect_near("[6, -8] clipped to norm 2: first", g[0].grad()[0], 1.2, 1e-6);
            expect_near("[6, -8] clipped to norm 2: second", g[0].grad()[1], -1.6, 1e-6);
        });

    hw.check(
        "09.3", "cosine between a gradient and its value-clipped version",
        "clip each component alone, h_i = g_i limited to [−c, c]; cos θ = (g·h)/(‖g‖·‖h‖); "
        "an empty or zero g has no direction",
        [] {
            const std::vector<double> g = {3, -4, 5, -1, 2};
            // c = 1: h = [1, -1, 1, -1, 1], cos = 15/(sqrt 55 · sqrt 5) = 15/sqrt 275.
            expect_near("c = 1", value_clip_cosine(g, 1.0), 15 / std::sqrt(275.0), 1e-12);
            // c = 4: only the 5 is cut: h = [3, -4, 4, -1, 2], g·h = 50, |h|² = 46.
            expect_near("c = 4", value_clip_cosine(g, 4.0), 50 / std::sqrt(55.0 * 46.0), 1e-12);
            expect_near("c = 10 clips nothing: cos = 1", value_clip_cosine(g, 10.0), 1.0, 1e-12);
            expect_near("equal magnitudes are all cut alike: the direction survives",
                        value_clip_cosine({2, -2, 2}, 1.0), 1.0, 1e-12);
            expect_true("an empty gradient throws std::invalid_argument",
                        throws_invalid_argument([] { value_clip_cosine({}, 1.0); }));
            expect_true("a zero gradient throws std::invalid_argument", throws_invalid_argument([] {
                            value_clip_cosine({0, 0}, 1.0);
                        }));
            expect_true("c = 0 throws std::invalid_argument",
                        throws_invalid_argument([&] { value_clip_cosine(g, 0.0); }));
        });

    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
