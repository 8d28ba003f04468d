// Lesson 06: optimizers, the rule that turns a gradient into a step.
//
// backward() says which way is downhill for every weight; the optimizer decides how far to go.
// Plain SGD steps lr·g. Momentum keeps a running sum of past gradients. Adam divides a running
// mean of the gradient by a running root-mean-square of it, so that every weight moves about
// lr per step, whatever its gradient's scale. AdamW adds weight decay the right way. This
// lesson runs the engine's optimizers (engine.cpp §2.9) on small problems where every number
// can be checked:
//
//   1. An ill-conditioned valley f(x, y) = ½(x² + 50y²): SGD zigzags, momentum and Adam glide.
//   2. The worked examples, through the engine: momentum 1.0 → 0.95 → 0.935, Adam 1.0 → 0.99
//      → 0.9873 (a hand-set gradient on a one-element parameter); momentum's two textbook
//      forms, which are one method with the learning rate scaled by 1 − β.
//   3. Adam's bias correction: m̂₃ = 2.745 and v̂₃ = 18.67 for gradients 4, −2, 6, and what its
//      absence does to the first steps (they are too big, not too small).
//   4. Adam + L2 against AdamW: with L2, weights with large gradients are barely decayed.
//   5. The LLM recipe (AdamW, β₂ = 0.95, λ = 0.1, clipping at 1): why β₂ is lowered, measured
//      on a gradient spike.
//   6. Memory: the optimizer's state per parameter, from state_bytes(), up to a 7B model; and
//      AdaFactor's factored second moment, n + m numbers for an n × m matrix.
//
// Run it:             make lesson N=06        (plots go to build/plots/06_*.svg)
// Grade the homework: make check N=06

#include "lesson.h"

#include <functional>
#include <memory>
#include <vector>

// A one-element parameter whose gradient we set by hand, as if backward() had produced it.
static Tensor scalar_parameter(double w) {
    Tensor t({1}, {real(w)});
    t.requires_grad_();
    return t;
}
static void set_grad(const Tensor& p, const std::vector<double>& g) {
    p.grad() = std::vector<real>(g.begin(), g.end());
}

// ---------------------------------------------------------------------------------------------
// 1. The valley  f(x, y) = ½·(x² + 50·y²),  gradient (x, 50y),  minimum 0 at (0, 0).
// Its curvature is 1 along x and 50 along y (condition number 50). SGD multiplies x by (1 − lr)
// and y by (1 − 50·lr) each step, so it diverges unless lr < 2/50 = 0.04, and even at lr = 0.035
// the flat x direction shrinks only 3.5% per step while y flips sign every step (zigzag).
//   momentum:  v ← 0.9·v + g,  w ← w − lr·v       the x pushes add up (up to 1/(1 − 0.9) = 10×),
//                                                 the alternating y pushes cancel
//   Adam:      w ← w − lr·m̂/(√v̂ + ε)              each coordinate is divided by its own gradient
//                                                 scale: steps of about lr in x and y alike
// Adam's lr is a step length in units of w, not a multiple of the gradient, so its good values
// differ from SGD's; we give each optimizer its own.
// ---------------------------------------------------------------------------------------------
struct Run {
    std::vector<double> loss, x, y;   // before each step, and after the last
    // The loss at `step`; a run that overflowed stopped early (backward() refuses an infinite
    // loss) and counts as infinite from then on.
    double loss_at(int step) const { return step < int(loss.size()) ? loss[step] : INFINITY; }
};

// `steps` optimizer steps on scale·f from (x, y) = (−8, 1).
static Run run_valley(const std::function<std::unique_ptr<Optimizer>(const Tensor&)>& make,
                      double scale, int steps) {
    Tensor w({2}, {-8, 1});
    w.requires_grad_();
    const Tensor curvature({2}, {1, 50});
    std::unique_ptr<Optimizer> opt = make(w);
    Run run;
    for (int step = 0; step <= steps; ++step) {
        const Tensor f = real(0.5 * scale) * sum(curvature * w * w);
        run.loss.push_back(f.item());
        run.x.push_back(w.values()[0]);
        run.y.push_back(w.values()[1]);
        if (step == steps || !std::isfinite(run.loss.back())) break;
        opt->zero_grad();
        f.backward();
        opt->step();
    }
    return run;
}

static std::unique_ptr<Optimizer> make_sgd(const Tensor& w, double lr) {
    return std::make_unique<SGD>(std::vector<Tensor>{w}, lr);
}
static std::unique_ptr<Optimizer> make_momentum(const Tensor& w) {
    return std::make_unique<SGD>(std::vector<Tensor>{w}, 0.035, 0.9);
}
static std::unique_ptr<Optimizer> make_adam(const Tensor& w) {
    return std::make_unique<Adam>(std::vector<Tensor>{w}, 0.3);
}

static void valley() {
    heading("1. The valley f = (x^2 + 50 y^2)/2 from (-8, 1), 200 steps");
    const int steps = 200;
    const Run sgd = run_valley([](const Tensor& w) { return make_sgd(w, 0.035); }, 1, steps);
    const Run too_big = run_valley([](const Tensor& w) { return make_sgd(w, 0.041); }, 1, steps);
    const Run momentum = run_valley(make_momentum, 1, steps);
    const Run adam = run_valley(make_adam, 1, steps);
    std::printf("%6s  %14s  %14s  %20s  %14s\n", "step", "SGD lr 0.035", "SGD lr 0.041",
                "momentum lr 0.035", "Adam lr 0.3");
    for (int step : {0, 1, 2, 3, 10, 25, 50, 100, 150, 200})
        std::printf("%6d  %14.4e  %14.4e  %20.4e  %14.4e\n", step, sgd.loss_at(step),
                    too_big.loss_at(step), momentum.loss_at(step), adam.loss_at(step));
    std::printf(
        "SGD at lr 0.041 > 2/50 diverges along y (y is multiplied by 1 - 50*0.041 = -1.05\n"
        "each step). Below the limit, SGD's pace along x is set by the *steep* y axis.\n"
        "Momentum overshoots and spirals in (see the paths plot) but still wins by 1000x.\n");

    std::printf("\nThe first steps of y (the steep coordinate):\n%6s  %12s  %12s  %12s\n", "step",
                "SGD", "momentum", "Adam");
    for (int step = 0; step <= 6; ++step)
        std::printf("%6d  %12.5f  %12.5f  %12.5f\n", step, sgd.y[step], momentum.y[step],
                    adam.y[step]);

    // Adam does not care about the scale of the loss: multiplying f by 100 multiplies every
    // gradient by 100, and m̂/√v̂ is unchanged. SGD's limit on lr moves down 100×.
    const Run sgd100 = run_valley([](const Tensor& w) { return make_sgd(w, 0.035); }, 100, steps);
    const Run adam100 = run_valley(make_adam, 100, steps);
    std::printf(
        "\nThe same problem scaled to 100*f (final loss divided by 100, to compare with f):\n");
    std::printf("%-12s  %14s  %14s\n", "", "on f", "on 100*f");
    std::printf("%-12s  %14.4e  %14.4e\n", "SGD lr 0.035", sgd.loss_at(steps),
                sgd100.loss_at(steps) / 100);
    std::printf("%-12s  %14.4e  %14.4e\n", "Adam lr 0.3", adam.loss_at(steps),
                adam100.loss_at(steps) / 100);
    std::printf("SGD on 100*f overflowed to inf after %zu steps (y grows 174x per step).\n",
                sgd100.loss.size() - 1);
    std::printf(
        "SGD would need a new learning rate; Adam follows the same path (up to rounding).\n");

    Plot paths("Paths through the valley (x^2 + 50 y^2)/2", "x", "y");
    paths.equal_axes = true;   // one unit of y as long as one of x: the valley as it really is
    paths.add("SGD lr 0.035", sgd.x, sgd.y);
    paths.add("momentum 0.9", momentum.x, momentum.y);
    paths.add("Adam lr 0.3", adam.x, adam.y);
    paths.save("06_valley_paths");
    Plot curves("Loss in the valley", "step", "f(x, y)", Scale::log_y);
    curves.add("SGD lr 0.035", sgd.loss);
    curves.add("momentum 0.9", momentum.loss);
    curves.add("Adam lr 0.3", adam.loss);
    curves.save("06_valley_loss");
}

// ---------------------------------------------------------------------------------------------
// 2. The worked examples, through the engine's optimizers, with the gradients set by hand.
// Momentum (PyTorch's form), w = 1.0, lr = 0.1, β = 0.9, gradients 0.5 then −0.3:
//     v₁ = 0.9·0 + 0.5 = 0.5,       w₁ = 1.0 − 0.1·0.5 = 0.95
//     v₂ = 0.9·0.5 − 0.3 = 0.15,    w₂ = 0.95 − 0.1·0.15 = 0.935
// The second gradient points the other way, yet w keeps going down: v remembers the first.
//
// Momentum has a second textbook form, an exponential moving average (EMA) of the gradients:
//     PyTorch:  v ← β·v + g,             w ← w − lr·v          (v is a running sum)
//     EMA:      v ← β·v + (1 − β)·g,     w ← w − lr_ema·v      (v is a running average)
// Both v start at 0, and the EMA's v is the sum's v times (1 − β) at every step: if
// v_ema = (1 − β)·v_pt, then β·v_ema + (1 − β)·g = (1 − β)·(β·v_pt + g). So the two walk the
// same path when lr_ema·(1 − β) = lr, i.e. lr_ema = lr/(1 − β): 0.1/(1 − 0.9) = 1.0 here.
// The same lr in both is a 10× smaller step in the EMA form.
//
// Adam, w = 1.0, lr = 0.01, β₁ = 0.9, β₂ = 0.999, ε = 1e-8, gradients 0.4 then −0.2:
//     m = β₁m + (1 − β₁)g,  v = β₂v + (1 − β₂)g²,  m̂ = m/(1 − β₁ᵗ),  v̂ = v/(1 − β₂ᵗ),
//     w ← w − lr·m̂/(√v̂ + ε)
// ---------------------------------------------------------------------------------------------
// The two momentum forms on the worked example's gradients, and two more of our own.
static void momentum_forms() {
    const double beta = 0.9, grads[] = {0.5, -0.3, 0.2, 0.4};
    const Tensor w = scalar_parameter(1.0);
    SGD sgd({w}, 0.1, beta);
    double v_ema = 0, w_ema = 1.0, v_same = 0, w_same = 1.0;
    std::printf("\nThe two momentum forms, beta = 0.9 (gradients 3 and 4 are ours):\n");
    std::printf("%3s  %6s  %20s  %20s  %20s\n", "t", "g", "PyTorch, lr 0.1", "EMA, lr 0.1/(1-b)",
                "EMA, lr 0.1");
    std::printf("%3s  %6s  %20s  %20s  %20s\n", "", "", "(engine SGD)", "= 1.0, by hand",
                "by hand");
    for (int t = 1; t <= 4; ++t) {
        const double g = grads[t - 1];
        set_grad(w, {g});
        sgd.step();
        v_ema = beta * v_ema + (1 - beta) * g;
        w_ema -= 0.1 / (1 - beta) * v_ema;
        v_same = beta * v_same + (1 - beta) * g;
        w_same -= 0.1 * v_same;
        std::printf("%3d  %6.2f  %20.6f  %20.6f  %20.6f\n", t, g, double(w.item()), w_ema, w_same);
    }
    std::printf(
        "Same path when lr_ema = lr/(1 - beta). Homework 06.1 asks for PyTorch's form and\n"
        "expects 0.95 after the first step; the EMA form with the same lr 0.1 gives %.3f.\n",
        1.0 - 0.1 * (1 - beta) * grads[0]);
}

static void worked_examples() {
    heading("2. The worked examples, run through SGD(momentum) and Adam");
    const Tensor w = scalar_parameter(1.0);
    SGD sgd({w}, 0.1, 0.9);
    const double grads[] = {0.5, -0.3};
    double v = 0, w_hand = 1.0;
    std::printf("Momentum, lr = 0.1, beta = 0.9:\n%3s  %6s  %14s  %14s  %12s\n", "t", "g",
                "v by hand", "w by hand", "w engine");
    for (int t = 1; t <= 2; ++t) {
        set_grad(w, {grads[t - 1]});
        sgd.step();
        v = 0.9 * v + grads[t - 1];
        w_hand -= 0.1 * v;
        std::printf("%3d  %6.2f  %14.6f  %14.6f  %12.6f\n", t, grads[t - 1], v, w_hand,
                    double(w.item()));
    }
    momentum_forms();

    const Tensor u = scalar_parameter(1.0);
    Adam adam({u}, 0.01);
    const double adam_grads[] = {0.4, -0.2};
    double m = 0, s = 0, u_hand = 1.0;
    std::printf(
        "\nAdam, lr = 0.01, betas 0.9 and 0.999:\n%3s  %6s  %9s  %11s  %9s  %9s  %10s  %10s\n", "t",
        "g", "m", "v", "m_hat", "v_hat", "w by hand", "w engine");
    for (int t = 1; t <= 2; ++t) {
        const double g = adam_grads[t - 1];
        set_grad(u, {g});
        adam.step();
        m = 0.9 * m + 0.1 * g;
        s = 0.999 * s + 0.001 * g * g;
        const double m_hat = m / (1 - std::pow(0.9, t)), v_hat = s / (1 - std::pow(0.999, t));
        u_hand -= 0.01 * m_hat / (std::sqrt(v_hat) + 1e-8);
        std::printf("%3d  %6.2f  %9.6f  %11.8f  %9.5f  %9.5f  %10.6f  %10.6f\n", t, g, m, s, m_hat,
                    v_hat, u_hand, double(u.item()));
    }
    std::printf("Step 1 moves w by exactly lr = 0.01: m_hat/sqrt(v_hat) = g/|g| = 1 at t = 1.\n");
}

// ---------------------------------------------------------------------------------------------
// 3. Bias correction. m and v start at 0, so after t steps of a constant gradient g,
//     m_t = (1 − β₁ᵗ)·g        v_t = (1 − β₂ᵗ)·g²           (too small by exactly 1 − βᵗ)
// and dividing by 1 − βᵗ gives back m̂ = g, v̂ = g²: the step is lr·g/|g|, exactly lr. Leaving a
// correction out changes the step to lr times:
//     neither corrected:  (1 − β₁ᵗ)/√(1 − β₂ᵗ)   3.16 at t = 1, about 6.6 near t = 12, → 1
//     only m corrected:   1/√(1 − β₂ᵗ)           31.6 at t = 1: far too big
//     only v corrected:   1 − β₁ᵗ                0.1 at t = 1: far too small
// So "without bias correction the first steps are too small" is true only when m's correction
// alone is missing; dropping both (the usual bug) makes the early steps several times too BIG,
// because v (β₂ = 0.999) starts much further below its true value than m (β₁ = 0.9) does.
// Either way the error lasts for hundreds of steps: 1 − 0.999ᵗ reaches 0.63 only at t = 1000.
//
// First the course texts' example with three different gradients, 4, −2, 6 (β₁ = 0.9,
// β₂ = 0.999): m₃ and v₃ by hand and from the engine's Adam state, and their corrections.
// ---------------------------------------------------------------------------------------------
static void three_gradients() {
    const double b1 = 0.9, b2 = 0.999, grads[] = {4.0, -2.0, 6.0};
    const Tensor w = scalar_parameter(0.0);
    Adam adam({w}, 1e-3, b1, b2);
    double m = 0, v = 0;
    std::printf("Gradients 4, -2, 6 with beta1 = 0.9, beta2 = 0.999:\n");
    std::printf("%3s  %5s  %9s  %9s  %10s  %10s  %9s  %9s\n", "t", "g", "m", "m engine", "v",
                "v engine", "m_hat", "v_hat");
    for (int t = 1; t <= 3; ++t) {
        const double g = grads[t - 1];
        set_grad(w, {g});
        adam.step();
        m = b1 * m + (1 - b1) * g;
        v = b2 * v + (1 - b2) * g * g;
        const double m_engine = adam.state()[0][0][0], v_engine = adam.state()[0][1][0];
        std::printf("%3d  %5g  %9.6f  %9.6f  %10.7f  %10.7f  %9.4f  %9.4f\n", t, g, m, m_engine, v,
                    v_engine, m / (1 - std::pow(b1, t)), v / (1 - std::pow(b2, t)));
    }
    const double c1 = 1 - std::pow(b1, 3), c2 = 1 - std::pow(b2, 3);
    std::printf(
        "m_hat_3 = %.4f / %.3f = %.3f (m_3 alone is %.2fx too small); v_hat_3 = %.6f / %.6f\n"
        "= %.2f (%.1fx). With beta2 this close to 1, v_hat_3 is nearly the plain mean of g^2,\n"
        "(16 + 4 + 36)/3 = %.2f; m_hat_3 leans toward the latest gradients (plain mean %.3f).\n\n",
        m, c1, m / c1, 1 / c1, v, c2, v / c2, 1 / c2, (16.0 + 4 + 36) / 3, (4.0 - 2 + 6) / 3);
}

static void bias_correction() {
    heading(
        "3. Adam's bias correction: m_hat and v_hat, and the step size for a constant gradient");
    three_gradients();
    const double b1 = 0.9, b2 = 0.999;
    // The engine's Adam (bias-corrected) on g = 1 for 3000 steps: record every step's length.
    const Tensor w = scalar_parameter(0.0);
    Adam adam({w}, 1e-3);
    std::vector<double> engine_step;
    for (int t = 1; t <= 3000; ++t) {
        const double before = w.item();
        set_grad(w, {1.0});
        adam.step();
        engine_step.push_back((before - double(w.item())) / 1e-3);
    }
    std::printf("%6s  %12s  %12s  %14s  %14s  %14s\n", "t", "engine Adam", "corrected", "neither",
                "only m corr.", "only v corr.");
    std::vector<double> ts, neither, only_m, only_v, corrected;
    for (int t = 1; t <= 3000; ++t) {
        const double c1 = 1 - std::pow(b1, t), c2 = 1 - std::pow(b2, t);
        ts.push_back(t);
        corrected.push_back(1.0);
        neither.push_back(c1 / std::sqrt(c2));
        only_m.push_back(1 / std::sqrt(c2));
        only_v.push_back(c1);
    }
    for (int t : {1, 2, 3, 5, 12, 30, 100, 300, 1000, 3000})
        std::printf("%6d  %12.4f  %12.4f  %14.4f  %14.4f  %14.4f\n", t, engine_step[t - 1],
                    corrected[t - 1], neither[t - 1], only_m[t - 1], only_v[t - 1]);
    std::printf("(The engine's steps are measured on w in float, hence the 4th-digit noise.)\n");
    std::printf(
        "\nSome course notes say Adam without bias correction takes 'severely underscaled'\n"
        "first steps (below lr); the correct first step is %.2f lr, too big, because\n"
        "m_1 = (1 - beta1) g and v_1 = (1 - beta2) g^2 make the uncorrected m_1/sqrt(v_1)\n"
        "= (1 - beta1)/sqrt(1 - beta2) sign(g) = 0.1/%.4f. The first steps are too small\n"
        "only when m alone goes uncorrected (%.2f lr at t = 1).\n",
        neither[0], std::sqrt(1 - b2), only_v[0]);

    // The worked example's first step without any correction: m₁ = 0.04, v₁ = 0.00016.
    std::printf("\nThe worked example's first step: corrected 0.01 * 0.4/sqrt(0.16) = 0.0100;\n"
                "uncorrected 0.01 * 0.04/sqrt(0.00016) = %.4f, %.2f times too big.\n",
                0.01 * 0.04 / std::sqrt(0.00016), 0.04 / std::sqrt(0.00016));

    Plot plot("Adam's step for a constant gradient, in units of lr", "step t", "step / lr",
              Scale::log_log);
    plot.add("bias-corrected", ts, corrected);
    plot.add("no correction", ts, neither);
    plot.add("only m corrected", ts, only_m);
    plot.add("only v corrected", ts, only_v);
    plot.save("06_bias_correction");
}

// ---------------------------------------------------------------------------------------------
// 4. Weight decay: L2 inside Adam versus decoupled (AdamW), with decay λ.
//     Adam + L2:  g ← g + λ·w, then the Adam step: the decay λ·w is divided by √v̂ like the rest
//     AdamW:      w ← w − lr·λ·w, then the Adam step on g alone
// √v̂ is about the gradient's RMS σ. Under L2 a weight drifts toward 0 at about lr·λ·w/σ per
// step: quickly when σ is small, hardly at all when σ is large. Under AdamW every weight shrinks
// by the factor (1 − lr·λ) per step, whatever its gradient.
// The test: six weights, all starting at 1, whose gradients are pure noise of size σ (here
// +σ, −σ, +σ, ... so the run is exactly repeatable). The data never pulls them anywhere, so
// decay alone decides where they end. lr = 0.01, λ = 0.1, 1000 steps: AdamW should give
// (1 − 0.001)^1000 = 0.368 for all six, plus a small offset from Adam's first few steps.
// ---------------------------------------------------------------------------------------------
static void weight_decay() {
    heading("4. Adam + L2 versus AdamW (decoupled decay), lr = 0.01, lambda = 0.1");
    const std::vector<double> sigmas = {0.001, 0.01, 0.1, 1, 10, 100};
    const int n = int(sigmas.size()), steps = 1000;
    Tensor w_l2 = Tensor::full({n}, 1), w_decoupled = Tensor::full({n}, 1);
    w_l2.requires_grad_();
    w_decoupled.requires_grad_();
    Adam l2({w_l2}, 0.01, 0.9, 0.999, 1e-8, 0.1);
    AdamW decoupled({w_decoupled}, 0.01, 0.9, 0.999, 1e-8, 0.1);
    std::vector<std::vector<double>> path_l2(n), path_decoupled(n);
    for (int t = 1; t <= steps; ++t) {
        std::vector<double> g(n);
        for (int i = 0; i < n; ++i) g[i] = (t % 2 ? -1 : 1) * sigmas[i];
        set_grad(w_l2, g);
        set_grad(w_decoupled, g);
        l2.step();
        decoupled.step();
        for (int i = 0; i < n; ++i) {
            path_l2[i].push_back(w_l2.values()[i]);
            path_decoupled[i].push_back(w_decoupled.values()[i]);
        }
    }
    std::printf("%10s  %16s  %14s  %22s\n", "gradient", "Adam + L2", "AdamW", "lr*lambda*w/sigma");
    std::printf("%10s  %16s  %14s  %22s\n", "size sigma", "w after 1000", "w after 1000",
                "(L2 drift at w = 1)");
    for (int i = 0; i < n; ++i)
        std::printf("%10g  %16.5f  %14.5f  %22.2e\n", sigmas[i], double(w_l2.values()[i]),
                    double(w_decoupled.values()[i]), 0.01 * 0.1 / sigmas[i]);
    std::printf("AdamW: (1 - lr*lambda)^1000 = %.5f, times about 1.017: Adam's first few steps\n"
                "(-sigma first, and m_hat not yet averaged out) push every weight up by 0.0176.\n",
                std::pow(1 - 0.01 * 0.1, 1000));
    std::printf("Under L2 the weights with small gradients are decayed to 0 (the drift is capped\n"
                "near lr per step, Adam's largest step) and the ones with large gradients keep\n"
                "their value: the regularization depends on gradient noise. AdamW decays all six\n"
                "alike.\n");

    Plot plot("Weights with pure-noise gradients: L2 vs decoupled decay", "step", "w");
    for (int i : {1, 2, 4, 5}) {
        char name[48];
        std::snprintf(name, sizeof name, "Adam+L2, sigma %g", sigmas[i]);
        plot.add(name, path_l2[i]);
    }
    plot.add("AdamW, every sigma", path_decoupled[5]);
    plot.save("06_weight_decay");
}

// ---------------------------------------------------------------------------------------------
// 5. The LLM recipe. GPT-3, LLaMA and most large language models since train with
//     AdamW(lr, β₁ = 0.9, β₂ = 0.95, ε = 1e-8, λ = 0.1)
//     gradients clipped to a global norm of 1.0 (clip_grad_norm, lesson 09)
//     lr from warmup + cosine decay (warmup_cosine_lr, lesson 07)
// In this engine, one step of it reads:
//     loss.backward(); clip_grad_norm(params, 1.0); opt.lr = warmup_cosine_lr(...); opt.step();
// Why β₂ = 0.95 rather than Adam's default 0.999? v averages g² with weights that fall by β₂
// per step: a gradient k steps old counts β₂ᵏ, half as much as a new one after
// ln 2/(−ln β₂) steps, the half-life. LLM gradients are not stationary (the data mix changes
// from batch to batch, and a rare batch gives a spike), and v is only useful if it describes
// the gradients of now. The test: the engine's Adam on one weight, 3000 steps of g = 0.01, one
// spike g = 1 (a norm of 1, so clipping at 1.0 leaves it alone; clipping bounds how big a
// spike can get, not how long v remembers it), then g = 0.01 again. We measure each step's
// length in units of lr. (λ = 0 here, so that the length is Adam's step alone.)
// ---------------------------------------------------------------------------------------------
struct SpikeRun {
    std::vector<double> step_over_lr;   // after the spike: [0] is the spike's own step
    double before = 0;                  // the step just before the spike
    int recovered = 0;                  // steps after the spike until it stays within 10% of lr
};

static SpikeRun spike_run(double beta2) {
    const double lr = 1e-3;
    const int calm = 3000, after = 6000;
    const Tensor w = scalar_parameter(0.0);
    Adam adam({w}, lr, 0.9, beta2);
    SpikeRun run;
    for (int t = 0; t < calm + after; ++t) {
        const double g = t == calm ? 1.0 : 0.01;
        const double before = w.item();
        set_grad(w, {g});
        clip_grad_norm({w}, 1.0);   // the recipe's clipping: no change for norms up to 1
        adam.step();
        const double length = (before - double(w.item())) / lr;
        if (t == calm - 1) run.before = length;
        if (t < calm) continue;
        run.step_over_lr.push_back(length);
        if (std::fabs(length - 1) > 0.1) run.recovered = t - calm + 1;   // not settled yet
    }
    return run;
}

static void llm_recipe() {
    heading("5. The LLM recipe: AdamW(beta2 = 0.95, lambda = 0.1), clip at 1.0; why beta2 = 0.95");
    const double betas[] = {0.999, 0.95};
    const SpikeRun runs[] = {spike_run(betas[0]), spike_run(betas[1])};
    std::printf("%-40s  %13s  %13s\n", "Adam on one weight, g = 0.01, one spike 1.0",
                "beta2 = 0.999", "beta2 = 0.95");
    std::printf("%-40s  %13.1f  %13.1f\n", "half-life of v, ln 2/(-ln beta2), steps",
                std::log(2.0) / -std::log(betas[0]), std::log(2.0) / -std::log(betas[1]));
    std::printf("%-40s  %13.3f  %13.3f\n", "step / lr just before the spike", runs[0].before,
                runs[1].before);
    std::printf("%-40s  %13.3f  %13.3f\n", "step / lr at the spike", runs[0].step_over_lr[0],
                runs[1].step_over_lr[0]);
    for (int k : {10, 100, 1000, 3000}) {
        char row[48];
        std::snprintf(row, sizeof row, "step / lr %d steps after the spike", k);
        std::printf("%-40s  %13.3f  %13.3f\n", row, runs[0].step_over_lr[k],
                    runs[1].step_over_lr[k]);
    }
    std::printf("%-40s  %13d  %13d\n", "steps until it stays within 10% of lr", runs[0].recovered,
                runs[1].recovered);
    std::printf(
        "\nWith beta2 = 0.999, v hardly moves at the spike: m jumps, so the spike itself\n"
        "gets a %.1fx step; then v stays inflated, and the steps more than 10%% short, for\n"
        "%d steps after the spike has passed. With 0.95, v takes the spike in at once (a\n"
        "%.2fx step) and has forgotten it %d steps later: the second moment describes the\n"
        "gradients of now, not of a thousand steps ago.\n",
        runs[0].step_over_lr[0], runs[0].recovered, runs[1].step_over_lr[0], runs[1].recovered);
}

// ---------------------------------------------------------------------------------------------
// 6. Memory. Each optimizer keeps state_per_param() numbers for every parameter number: SGD 0,
// momentum 1 (v), RMSProp 1, Adam and AdamW 2 (m and v), Lion 1 (m). In float that is 4 bytes
// each. Training with Adam in float32 therefore holds 16 bytes per parameter: the weight, its
// gradient, m and v.
// ---------------------------------------------------------------------------------------------
// AdaFactor (Shazeer and Stern, 2018) shrinks the second moment. For a weight matrix [n, m] it
// keeps, instead of v's n·m numbers, the row sums and column sums of g² (running averages of
// them, with β₂, as Adam averages v), n + m numbers:
//     R_i = Σ_j g²_ij,    C_j = Σ_i g²_ij,    and rebuilds    v̂_ij = R_i·C_j / Σ_i R_i.
// When g² is an outer product, g²_ij = a_i·b_j (rank 1), this is exact: R_i = a_i·Σb,
// C_j = b_j·Σa and Σ R = Σa·Σb. Otherwise it is the rank-1 matrix with the same row and column
// sums as g², and a lone large entry is smeared over its row and column. (AdaFactor usually
// drops m as well, keeping no first moment at all.)
using Matrix = std::vector<std::vector<double>>;

static Matrix factored_second_moment(const Matrix& g2) {
    const std::size_t n = g2.size(), m = g2[0].size();
    std::vector<double> R(n, 0.0), C(m, 0.0);
    double total = 0;
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < m; ++j) {
            R[i] += g2[i][j];
            C[j] += g2[i][j];
            total += g2[i][j];
        }
    Matrix v_hat(n, std::vector<double>(m));
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < m; ++j) v_hat[i][j] = R[i] * C[j] / total;
    return v_hat;
}

static void print_matrix(const char* name, const Matrix& a) {
    for (std::size_t i = 0; i < a.size(); ++i) {
        std::printf("  %-7s", i == 0 ? name : "");
        for (double x : a[i]) std::printf("  %8.4f", x);
        std::printf("\n");
    }
}

static double largest_gap(const Matrix& a, const Matrix& b) {
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        for (std::size_t j = 0; j < a[i].size(); ++j)
            worst = std::max(worst, std::fabs(a[i][j] - b[i][j]));
    return worst;
}

static void adafactor() {
    const double n = 4096, m = 11008;   // LLaMA-7B's MLP matrices are 4096 x 11008
    std::printf("\nAdaFactor's factored second moment, for one 4096 x 11008 matrix in float32:\n");
    std::printf(
        "  Adam's v: n*m = %.0f numbers = %.1f MB;  row + column sums: n + m = %.0f numbers\n"
        "  = %.1f KB, %.0fx fewer.\n",
        n * m, n * m * 4 / 1e6, n + m, (n + m) * 4 / 1e3, n * m / (n + m));
    std::printf(
        "Some course notes give AdaFactor's state as ~2/rank of W per parameter; the correct\n"
        "count is (n + m)/(n*m) = 1/n + 1/m = %.3g here, because it keeps one number per row\n"
        "and one per column whatever the rank (2/rank matches only a full-rank square\n"
        "matrix; here it would be at least 2/4096 = %.3g).\n",
        (n + m) / (n * m), 2 / 4096.0);

    // g = a_i·b_j, so g² = a_i²·b_j²: rank 1.
    const double a[3] = {1.0, -2.0, 0.5}, b[4] = {0.4, -1.0, 2.0, 0.1};
    Matrix g2(3, std::vector<double>(4));
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 4; ++j) g2[i][j] = (a[i] * b[j]) * (a[i] * b[j]);
    std::printf("\nA 3 x 4 gradient g_ij = a_i b_j, a = (1, -2, 0.5), b = (0.4, -1, 2, 0.1):\n");
    print_matrix("g^2", g2);
    const Matrix v_hat = factored_second_moment(g2);
    print_matrix("v_hat", v_hat);
    std::printf("  largest |v_hat - g^2| = %.1e: rank 1 is rebuilt exactly from 3 + 4 numbers.\n",
                largest_gap(v_hat, g2));
    g2[0][0] = 1.0;   // one entry of g jumps from 0.4 to 1: g² is no longer rank 1
    const Matrix v_spike = factored_second_moment(g2);
    std::printf("The same with g_00 = 1 instead of 0.4:\n");
    print_matrix("g^2", g2);
    print_matrix("v_hat", v_spike);
    std::printf("  largest |v_hat - g^2| = %.4f: the jump is shared out over row 0 and column 0.\n",
                largest_gap(v_spike, g2));
}

static void state_memory() {
    heading("6. Optimizer state per parameter (state_bytes()), and AdaFactor's factored v");
    Rng rng(6);
    nn::MLP model({784, 256, 10}, rng);
    const std::vector<Tensor> params = model.parameters();
    std::size_t count = 0;
    for (const Tensor& p : params) count += p.numel();
    std::printf("MLP 784 -> 256 -> 10: %zu parameters, %zu bytes of weights (%zu-byte floats)\n\n",
                count, count * sizeof(real), sizeof(real));

    struct Entry {
        const char* name;
        std::unique_ptr<Optimizer> opt;
    };
    std::vector<Entry> entries;
    entries.push_back({"SGD", std::make_unique<SGD>(params, 0.1)});
    entries.push_back({"SGD + momentum", std::make_unique<SGD>(params, 0.1, 0.9)});
    entries.push_back({"RMSProp", std::make_unique<RMSProp>(params)});
    entries.push_back({"Adam", std::make_unique<Adam>(params)});
    entries.push_back({"AdamW", std::make_unique<AdamW>(params)});
    entries.push_back({"Lion", std::make_unique<Lion>(params)});
    const double billion = 7e9;
    std::printf("%-16s  %10s  %14s  %16s  %18s\n", "optimizer", "per param", "state_bytes()",
                "x weight bytes", "at 7B params (GB)");
    for (const Entry& e : entries) {
        const std::size_t bytes = e.opt->state_bytes();
        std::printf("%-16s  %10d  %14zu  %16.1f  %18.0f\n", e.name, e.opt->state_per_param(), bytes,
                    double(bytes) / double(count * sizeof(real)),
                    billion * e.opt->state_per_param() * 4 / 1e9);
    }
    std::printf(
        "\nA 7B model in float32: weights %.0f GB, gradients %.0f GB, Adam's m and v %.0f GB:\n"
        "%.0f GB to train (16 bytes per parameter), against %.0f GB of 16-bit weights to\n"
        "serve it. Lion's single state saves a quarter of that.\n",
        billion * 4 / 1e9, billion * 4 / 1e9, billion * 8 / 1e9, billion * 16 / 1e9,
        billion * 2 / 1e9);
    adafactor();
}

static void lesson() {
    std::printf("Lesson 06: optimizers\n");
    valley();
    worked_examples();
    bias_correction();
    weight_decay();
    llm_recipe();
    state_memory();
}

// ---- Homework --------------------------------------------------------------------------------

// 06.1  One step of SGD with momentum, PyTorch's form, on a single weight:
//     velocity ← beta·velocity + grad,   w ← w − lr·velocity
// Update both w and velocity in place.
void momentum_step(double& w, double& velocity, double grad, double lr, double beta) {
    // BEGIN EXERCISE 06.1
    throw not_implemented("06.1");
    // END EXERCISE
}

// 06.2  One Adam step on a single weight, with bias correction. t is the step number, starting
// at 1 for the first step; m and v hold the running moments (both 0 before step 1):
//     m ← β₁m + (1 − β₁)g,   v ← β₂v + (1 − β₂)g²,   m̂ = m/(1 − β₁ᵗ),   v̂ = v/(1 − β₂ᵗ),
//     w ← w − lr·m̂/(√v̂ + ε)
// Update w, m and v in place.
void adam_step(double& w, double& m, double& v, double grad, long t, double lr, double beta1,
               double beta2, double eps) {
    // BEGIN EXERCISE 06.2
    throw not_implemented("06.2");
    // END EXERCISE
}

// 06.3  One AdamW step: decoupled weight decay λ, then the Adam step of 06.2 on the gradient
// alone (the decay never enters m or v):
//     w ← w − lr·λ·w,   then Adam with g
void adamw_step(double& w, double& m, double& v, double grad, long t, double lr, double beta1,
                double beta2, double eps, double weight_decay) {
    // BEGIN EXERCISE 06.3
    throw not_implemented("06.3");
    // END EXERCISE
}

static int check_homework() {
    Homework hw("06");

    hw.check("06.1", "one step of SGD with momentum",
             "PyTorch's momentum adds the whole gradient, v ← β·v + g (no (1 − β) factor), "
             "then steps with the new v: w ← w − lr·v",
             [] {
                 // The worked example.
                 double w = 1.0, v = 0.0;
                 momentum_step(w, v, 0.5, 0.1, 0.9);
                 expect_near("w after step 1", w, 0.95, 1e-12);
                 expect_near("velocity after step 1", v, 0.5, 1e-12);
                 momentum_step(w, v, -0.3, 0.1, 0.9);
                 expect_near("w after step 2", w, 0.935, 1e-12);
                 expect_near("velocity after step 2", v, 0.15, 1e-12);
                 // A constant gradient g for k steps: v_k = g(1 − βᵏ)/(1 − β), a geometric sum,
                 // and w_k = w_0 − lr·Σ_{i≤k} v_i = w_0 − lr·g/(1 − β)·(k − β(1 − βᵏ)/(1 − β)).
                 const double g = 2.0, lr = 0.05, beta = 0.8;
                 const int k = 25;
                 w = 3.0;
                 v = 0.0;
                 for (int i = 0; i < k; ++i) momentum_step(w, v, g, lr, beta);
                 expect_near("velocity after 25 equal gradients", v,
                             g * (1 - std::pow(beta, k)) / (1 - beta), 1e-12);
                 const double sum_of_v =
                     g / (1 - beta) * (k - beta * (1 - std::pow(beta, k)) / (1 - beta));
                 expect_near("w after 25 equal gradients", w, 3.0 - lr * sum_of_v, 1e-10);
                 // Random gradients, against the engine's SGD(momentum) (which stores float).
                 Rng rng(61);
                 const Tensor p = scalar_parameter(0.7);
                 SGD sgd({p}, 0.03, 0.9);
                 w = 0.7;
                 v = 0.0;
                 for (int i = 0; i < 50; ++i) {
                     const double gi = rng.normal();
                     set_grad(p, {gi});
                     sgd.step();
                     momentum_step(w, v, gi, 0.03, 0.9);
                 }
                 expect_near("w after 50 random steps vs the engine's SGD", w, p.item(), 1e-5);
             });

    hw.check("06.2", "one Adam step with bias correction",
             "update m and v first, then divide them by (1 - beta^t); t starts at 1", [] {
                 // The worked example, to the digits the course text prints.
                 double w = 1.0, m = 0.0, v = 0.0;
                 adam_step(w, m, v, 0.4, 1, 0.01, 0.9, 0.999, 1e-8);
                 expect_near("m after step 1", m, 0.04, 1e-12);
                 expect_near("v after step 1", v, 0.00016, 1e-12);
                 expect_near("w after step 1", w, 0.99, 1e-9);
                 adam_step(w, m, v, -0.2, 2, 0.01, 0.9, 0.999, 1e-8);
                 expect_near("m after step 2", m, 0.016, 1e-12);
                 expect_near("v after step 2", v, 0.00019984, 1e-12);
                 expect_near("w after step 2 (text: 0.9873)", w, 0.9873, 1e-4);
                 // The first step has length lr·|g|/(|g| + ε), whatever g: m̂₁ = g, v̂₁ = g².
                 for (double g : {1e-3, -0.7, 250.0}) {
                     w = 0.0;
                     m = 0.0;
                     v = 0.0;
                     adam_step(w, m, v, g, 1, 0.02, 0.9, 0.999, 1e-8);
                     expect_near("first step = -lr*g/(|g| + eps)", w,
                                 -0.02 * g / (std::fabs(g) + 1e-8), 1e-12);
                 }
                 // Random gradients, against the engine's Adam (which stores float).
                 Rng rng(62);
                 const Tensor p = scalar_parameter(-0.4);
                 Adam adam({p}, 0.01, 0.8, 0.99, 1e-8);
                 w = -0.4;
                 m = 0.0;
                 v = 0.0;
                 for (long t = 1; t <= 50; ++t) {
                     const double g = rng.normal() + 0.3;
                     set_grad(p, {g});
                     adam.step();
                     adam_step(w, m, v, g, t, 0.01, 0.8, 0.99, 1e-8);
                 }
                 expect_near("w after 50 random steps vs the engine's Adam", w, p.item(), 1e-5);
             });

    hw.check(
        "06.3", "AdamW: decay the weight, then the Adam step",
        "decoupled decay: shrink the weight first, w ← w − lr·λ·w, then the Adam step of 06.2; "
        "m and v see only the raw g, never λ·w",
        [] {
            // One step of the worked example with λ = 0.1: w·(1 − 0.001) − 0.01 = 0.989.
            double w = 1.0, m = 0.0, v = 0.0;
            adamw_step(w, m, v, 0.4, 1, 0.01, 0.9, 0.999, 1e-8, 0.1);
            expect_near("w after one step", w, 0.989, 1e-9);
            expect_near("m holds the raw gradient's share only", m, 0.04, 1e-12);
            // No gradient at all: m = v = 0 and the Adam part is 0, so each step is
            // w ← w(1 − lr·λ) and after T steps w = w₀(1 − lr·λ)ᵀ.
            w = 2.0;
            m = 0.0;
            v = 0.0;
            for (long t = 1; t <= 300; ++t)
                adamw_step(w, m, v, 0.0, t, 0.05, 0.9, 0.999, 1e-8, 0.2);
            expect_near("w after 300 gradient-free steps", w, 2.0 * std::pow(1 - 0.05 * 0.2, 300),
                        1e-12);
            // Random gradients, against the engine's AdamW.
            Rng rng(63);
            const Tensor p = scalar_parameter(1.5);
            AdamW adamw({p}, 0.02, 0.9, 0.999, 1e-8, 0.1);
            w = 1.5;
            m = 0.0;
            v = 0.0;
            for (long t = 1; t <= 50; ++t) {
                const double g = 3 * rng.normal();
                set_grad(p, {g});
                adamw.step();
                adamw_step(w, m, v, g, t, 0.02, 0.9, 0.999, 1e-8, 0.1);
            }
            expect_near("w after 50 random steps vs the engine's AdamW", w, p.item(), 1e-5);
        });

    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
