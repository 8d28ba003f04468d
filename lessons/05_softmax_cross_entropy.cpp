// Lesson 05: softmax and cross-entropy, the output layer of every classifier and language model.
//
// A network ends with one raw score (a logit) z_i per class. Softmax turns them into
// probabilities, and cross-entropy scores the probability given to the right class y:
//
//     p_i = e^{z_i} / Σ_j e^{z_j}          L = −log p_y = log Σ_j e^{z_j} − z_y
//
// Together they have the simplest gradient in deep learning, dL/dz = p − onehot(y). This lesson
// computes all of it on the course's worked numbers and then looks at what goes wrong around it:
//
//   1. z = [2.0, 1.0, 0.1], class 0: p ≈ [0.659, 0.242, 0.099], L ≈ 0.417.
//   2. The gradient p − onehot ≈ [−0.341, 0.242, 0.099], which sums to 0.
//   3. Softmax's own Jacobian diag(p) − p·pᵀ, and how the loss cancels it down to p − onehot.
//   4. Overflow: e^1000 is inf, so softmax subtracts the largest logit first (log-sum-exp).
//   5. Applying softmax before the loss (probabilities as logits): the wrong loss, a weaker
//      gradient, and a floor the loss can never go below.
//   6. Perplexity e^L: "as unsure as a uniform choice among e^L classes".
//   7. Label smoothing: a target of 0.9333 instead of 1 keeps the logits finite.
//
// Run it:             make lesson N=05        (plots go to build/plots/05_*.svg)
// Grade the homework: make check N=05

#include "lesson.h"

#include <vector>

static const std::vector<double> worked_logits = {2.0, 1.0, 0.1};   // true class 0

// A logits row as a [1, C] tensor (one example of a batch), and back.
static Tensor row_tensor(const std::vector<double>& z) {
    return Tensor({1, int(z.size())}, std::vector<real>(z.begin(), z.end()));
}

// The loss in double precision, written straight from the definition. Fine for logits of
// moderate size (section 4 shows what goes wrong for large ones); our reference for finite
// differences. target is a probability vector (onehot, or smoothed in section 7).
static double cross_entropy_double(const std::vector<double>& z,
                                   const std::vector<double>& target) {
    double sum_exp = 0;
    for (double v : z) sum_exp += std::exp(v);
    double loss = 0;
    for (std::size_t i = 0; i < z.size(); ++i) loss -= target[i] * (z[i] - std::log(sum_exp));
    return loss;
}
static std::vector<double> onehot(int label, int classes) {
    std::vector<double> t(classes, 0.0);
    t[label] = 1.0;
    return t;
}

// dL/dz_i by central differences of cross_entropy_double (double precision, h = 1e-6).
static double ce_central_difference(std::vector<double> z, const std::vector<double>& target,
                                    std::size_t i) {
    const double zi = z[i];
    return central_difference(
        [&](double v) {
            z[i] = v;
            const double loss = cross_entropy_double(z, target);
            z[i] = zi;
            return loss;
        },
        zi, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// 1. Forward:  p_i = e^{z_i} / Σ_j e^{z_j},   L = −log p_y.
// e² = 7.389, e¹ = 2.718, e^0.1 = 1.105, sum 11.212; so p₀ = 7.389/11.212 = 0.659, L = 0.417.
// −log is steep near 0: a confident wrong answer (p_y → 0) costs without bound.
// ---------------------------------------------------------------------------------------------
static void forward() {
    heading("1. Softmax and cross-entropy of z = [2.0, 1.0, 0.1], true class 0");
    const Tensor z = row_tensor(worked_logits);
    const Tensor p = softmax(z);
    double sum_exp = 0;
    for (double v : worked_logits) sum_exp += std::exp(v);
    std::printf("%3s  %6s  %10s  %12s  %14s\n", "i", "z_i", "e^z_i", "p_i by hand",
                "engine softmax");
    for (int i = 0; i < 3; ++i)
        std::printf("%3d  %6.1f  %10.4f  %12.6f  %14.6f\n", i, worked_logits[i],
                    std::exp(worked_logits[i]), std::exp(worked_logits[i]) / sum_exp,
                    double(p.values()[i]));
    std::printf("%3s  %6s  %10.4f  %12.6f\n", "sum", "", sum_exp, 1.0);

    const double by_hand = -std::log(std::exp(worked_logits[0]) / sum_exp);
    std::printf("\nL = -log p_0 = %.6f by hand, %.6f from the engine's cross_entropy(z, {0})\n",
                by_hand, double(cross_entropy(z, {0}).item()));

    std::printf("\nThe loss for other values of the true class's probability:\n");
    std::printf("%8s  %10s\n", "p_y", "-log p_y");
    for (double py : {0.99, 0.9, 0.659, 0.5, 0.1, 0.01, 0.001})
        std::printf("%8g  %10.4f\n", py, -std::log(py));
}

// ---------------------------------------------------------------------------------------------
// 2. Backward:  dL/dz_i = p_i − 1[i = y].
// Raise the true class's logit (its gradient is negative) and lower all others, each in
// proportion to the probability it wrongly holds. Σ_i p_i = 1, so the components sum to 0.
// With a batch of B rows averaged, each row's gradient is divided by B.
// ---------------------------------------------------------------------------------------------
static void gradient() {
    heading("2. The gradient dL/dz = p - onehot(y)");
    Tensor z = row_tensor(worked_logits);
    z.requires_grad_();
    cross_entropy(z, {0}).backward();
    const Tensor p = softmax(z.detach());
    const std::vector<double> y = onehot(0, 3);
    std::printf("%3s  %10s  %12s  %14s\n", "i", "p - onehot", "backward()", "central diff");
    double total = 0;
    for (int i = 0; i < 3; ++i) {
        const double by_hand = p.values()[i] - y[i];
        total += z.grad()[i];
        std::printf("%3d  %10.6f  %12.6f  %14.6f\n", i, by_hand, double(z.grad()[i]),
                    ce_central_difference(worked_logits, y, i));
    }
    std::printf("sum of the gradient: %.2g (zero up to float rounding)\n", total);

    // A batch of two rows: the loss is the mean, so each row's gradient carries a factor 1/2.
    Tensor batch({2, 3}, {2.0, 1.0, 0.1, 2.0, 1.0, 0.1});
    batch.requires_grad_();
    cross_entropy(batch, {0, 0}).backward();
    std::printf(
        "\nThe same row twice in a batch of B = 2: row 0's gradient is now [%.6f, %.6f, %.6f],"
        "\nhalf of the above, because cross_entropy averages over the batch.\n",
        double(batch.grad()[0]), double(batch.grad()[1]), double(batch.grad()[2]));
}

// ---------------------------------------------------------------------------------------------
// 3. Softmax alone has a dense Jacobian: every p_i depends on every z_j.
//     ∂p_i/∂z_j = p_i·(δ_ij − p_j),    J = diag(p) − p·pᵀ     (symmetric; rows sum to 0)
// The loss's own gradient dL/dp has one nonzero entry, −1/p_y at y, and the chain rule gives
//     dL/dz_j = Σ_i dL/dp_i · J[i][j] = −(1/p_y)·p_y·(δ_yj − p_j) = p_j − δ_yj.
// The 1/p_y cancels: that is why the fused gradient is so simple, and stays finite even when
// p_y is tiny.
// ---------------------------------------------------------------------------------------------
static void jacobian() {
    heading("3. The softmax Jacobian J = diag(p) - p p^T, and the cancellation");
    Tensor z = row_tensor(worked_logits);
    z.requires_grad_();
    const Tensor p_tensor = softmax(z);
    const ValuesView p = p_tensor.values();

    std::printf("J[i][j] = p_i(delta_ij - p_j), by hand | row i from backward() with seed e_i\n");
    for (int i = 0; i < 3; ++i) {
        Tensor seed({1, 3});
        seed.values()[i] = 1;
        z.zero_grad();
        p_tensor.backward(seed);   // z.grad() = Jᵀ·e_i = row i of J (J is symmetric)
        std::printf("  [");
        for (int j = 0; j < 3; ++j) std::printf(" %9.6f", p[i] * ((i == j) - double(p[j])));
        std::printf(" ]   [");
        for (int j = 0; j < 3; ++j) std::printf(" %9.6f", double(z.grad()[j]));
        std::printf(" ]\n");
    }
    std::printf("Each row sums to 0: raising one logit takes probability from the others, and the\n"
                "total stays 1.\n");

    // The cancellation, with numbers: dL/dp = (−1/p_0, 0, 0), then Jᵀ·dL/dp.
    const double dL_dp0 = -1.0 / p[0];
    std::printf("\ndL/dp = [%.4f, 0, 0]; J^T * dL/dp = [", dL_dp0);
    for (int j = 0; j < 3; ++j)
        std::printf("%s%.6f", j ? ", " : "", dL_dp0 * p[0] * ((j == 0) - double(p[j])));
    std::printf("] = p - onehot(0)\n");
}

// ---------------------------------------------------------------------------------------------
// 4. Overflow. e^x overflows double above x ≈ 709.8 and float above x ≈ 88.7, giving inf, and
// inf/inf is NaN. Underflow is the mirror image: e^{−1000} is 0 and 0/0 is NaN. The cure uses
// softmax's shift invariance, softmax(z − c) = softmax(z) for any c (the e^{−c} cancels).
// With c = m = max_j z_j every exponent is ≤ 0, so nothing overflows and the largest term is 1:
//     p_i = e^{z_i − m} / Σ_j e^{z_j − m},     log Σ_j e^{z_j} = m + log Σ_j e^{z_j − m}
// The second line is log-sum-exp (LSE); the loss is L = LSE(z) − z_y.
// ---------------------------------------------------------------------------------------------
template <class T>                                             // float or double
static double naive_softmax0(const std::vector<double>& z) {   // p_0 straight from the formula
    T sum = 0;
    for (double v : z) sum += std::exp(T(v));
    return double(std::exp(T(z[0])) / sum);
}

// printf shows a NaN's sign bit ("-nan" for inf/inf on some systems); we print every NaN alike.
static double plain_nan(double v) { return std::isnan(v) ? std::fabs(v) : v; }

static void overflow() {
    heading("4. Large logits: naive softmax overflows, max subtraction does not");
    const std::vector<double> big = {1000, 999};
    std::printf("z = [1000, 999]:\n");
    const double n0 = std::exp(big[0]), n1 = std::exp(big[1]);
    std::printf("  naive:   e^z = [%g, %g], sum %g, p = e^z/sum = [%g, %g]\n", n0, n1, n0 + n1,
                plain_nan(n0 / (n0 + n1)), plain_nan(n1 / (n0 + n1)));
    const double m = 1000, e0 = std::exp(big[0] - m), e1 = std::exp(big[1] - m);
    std::printf("  stable:  m = %g, z - m = [%g, %g], e^(z-m) = [%g, %.6f], sum %.6f,\n"
                "           p = [%.6f, %.6f], LSE = m + log(sum) = %.6f\n",
                m, big[0] - m, big[1] - m, e0, e1, e0 + e1, e0 / (e0 + e1), e1 / (e0 + e1),
                m + std::log(e0 + e1));
    const Tensor zt = row_tensor(big);
    const Tensor p = softmax(zt);
    std::printf("  engine:  softmax = [%.6f, %.6f], cross_entropy(z, {0}) = LSE - z_0 = %.6f\n",
                double(p.values()[0]), double(p.values()[1]),
                double(cross_entropy(zt, {0}).item()));
    try {
        const Tensor e = exp(zt);   // the naive formula with the engine's ops
        std::printf("  exp(z) with the engine: %s\n", e.str().c_str());
    } catch (const std::domain_error& error) {
        std::printf("  exp(z) with the engine's ops refuses, loudly:\n    %s\n", error.what());
    }

    // Shift invariance: z + c has the same softmax for every c. The naive formula disagrees.
    std::printf("\np_0 of softmax(z + c) for z = [2.0, 1.0, 0.1]; the true value is 0.659001 "
                "for every c\n");
    std::printf("%7s  %13s  %13s  %13s\n", "c", "naive double", "naive float", "engine");
    for (double c : {0.0, 50.0, 87.0, 100.0, 700.0, 1000.0, -100.0, -1000.0}) {
        std::vector<double> z = worked_logits;
        for (double& v : z) v += c;
        std::printf("%7g  %13.6f  %13.6f  %13.6f\n", c, plain_nan(naive_softmax0<double>(z)),
                    plain_nan(naive_softmax0<float>(z)),
                    double(softmax(row_tensor(z)).values()[0]));
    }
    std::printf(
        "Float breaks first: e^89 is already beyond its largest number, 3.4e38; and at\n"
        "c = -100, e^-98 is so small that float keeps only a few digits of it. The engine's\n"
        "last digit moves at |c| >= 700 for another reason: a float near 700 is stored in\n"
        "steps of 6e-5, so the shifted logits themselves are rounded.\n");
}

// ---------------------------------------------------------------------------------------------
// 5. Softmax before the loss. cross_entropy takes logits and applies softmax itself. Handing it
// probabilities p instead applies softmax twice: the loss becomes −log softmax(p)_y. Since every
// p_i is in [0, 1], softmax(p) can never be confident: its best case, p = onehot(y), gives
//     softmax(onehot)_y = e / (e + C − 1),    so L ≥ log((e + C − 1)/e),
// nearly log C for a large vocabulary: the loss stays flat near its starting value log C. And
// the gradient now passes through the softmax Jacobian of section 3, which vanishes as p
// saturates, so learning also slows down.
// ---------------------------------------------------------------------------------------------

// Gradient descent on the three logits of one example (class 0), from z = 0. With
// softmax_first, the loss is cross_entropy(softmax(z)). Returns the loss before each step.
static std::vector<double> train_logits(bool softmax_first, real smoothing, int steps,
                                        std::vector<double>* gaps = nullptr) {
    Tensor z({1, 3});
    z.requires_grad_();
    std::vector<double> losses;
    for (int step = 0; step <= steps; ++step) {
        const Tensor loss = softmax_first ? cross_entropy(softmax(z), {0}, smoothing)
                                          : cross_entropy(z, {0}, smoothing);
        losses.push_back(loss.item());
        if (gaps) gaps->push_back(z.values()[0] - z.values()[1]);
        if (step == steps) break;
        z.zero_grad();
        loss.backward();
        for (std::size_t i = 0; i < 3; ++i) z.values()[i] -= 1.0f * z.grad()[i];   // lr = 1
    }
    return losses;
}

static void softmax_first() {
    heading("5. Softmax applied before the loss (probabilities passed as logits)");
    Tensor z = row_tensor(worked_logits), z2 = row_tensor(worked_logits);
    z.requires_grad_();
    z2.requires_grad_();
    const Tensor right = cross_entropy(z, {0}), wrong = cross_entropy(softmax(z2), {0});
    right.backward();
    wrong.backward();
    std::printf("z = [2.0, 1.0, 0.1], class 0:\n");
    std::printf("%-30s  %8s  %30s\n", "", "loss", "dL/dz");
    std::printf("%-30s  %8.4f  [%8.4f, %8.4f, %8.4f]\n", "cross_entropy(z)", double(right.item()),
                double(z.grad()[0]), double(z.grad()[1]), double(z.grad()[2]));
    std::printf("%-30s  %8.4f  [%8.4f, %8.4f, %8.4f]\n", "cross_entropy(softmax(z))",
                double(wrong.item()), double(z2.grad()[0]), double(z2.grad()[1]),
                double(z2.grad()[2]));
    std::printf("The wrong version reports almost twice the loss and pushes about half as hard.\n");

    const int steps = 300;
    const std::vector<double> good = train_logits(false, 0, steps),
                              bad = train_logits(true, 0, steps);
    std::printf("\nTraining the three logits of this one example from z = 0, gradient descent, "
                "lr = 1:\n");
    std::printf("%6s  %16s  %26s\n", "step", "cross_entropy(z)", "cross_entropy(softmax(z))");
    for (int step : {0, 10, 50, 100, 200, 300})
        std::printf("%6d  %16.6f  %26.6f\n", step, good[step], bad[step]);
    const double floor_c3 = std::log((std::exp(1.0) + 2) / std::exp(1.0));   // C = 3
    std::printf("The right loss heads to 0. The wrong one stalls above log((e + 2)/e) = %.6f.\n",
                floor_c3);

    std::printf("\nThe floor log((e + C - 1)/e) against the loss log C of a uniform guess:\n");
    std::printf("%8s  %12s  %10s\n", "C", "floor", "log C");
    for (double C : {2.0, 3.0, 10.0, 1000.0, 50000.0})
        std::printf("%8g  %12.4f  %10.4f\n", C, std::log((std::exp(1.0) + C - 1) / std::exp(1.0)),
                    std::log(C));
    std::printf("With a 50,000-token vocabulary the loss can fall by at most 1 from log C: a loss\n"
                "that stays flat near log C is the symptom.\n");

    Plot plot("Softmax before the loss: a floor it cannot cross", "step", "loss", Scale::log_y);
    plot.add("CE(z)", good);
    plot.add("CE(softmax(z))", bad);
    plot.add("its floor", std::vector<double>(good.size(), floor_c3));
    plot.save("05_softmax_twice");
}

// ---------------------------------------------------------------------------------------------
// 6. Perplexity = e^L, with L the mean cross-entropy in nats. A model that spreads its
// probability evenly over k classes has L = log k and perplexity k, so perplexity reads as "as
// unsure as a fair choice among this many". Perfect: 1. Uniform over C classes: C.
// ---------------------------------------------------------------------------------------------
static void perplexity() {
    heading("6. Perplexity = e^L");
    std::printf("%-34s  %10s  %12s\n", "", "loss L", "e^L");
    const double worked = cross_entropy(row_tensor(worked_logits), {0}).item();
    std::printf("%-34s  %10.4f  %12.4f\n", "worked example (p_y = 0.659)", worked,
                std::exp(worked));
    std::printf("%-34s  %10.4f  %12.4f\n", "a language model at 2.5 nats/token", 2.5,
                std::exp(2.5));
    for (int C : {3, 10, 50000}) {
        const Tensor uniform_logits({1, C});   // all zero: every class gets 1/C
        const double L = cross_entropy(uniform_logits, {0}).item();
        char name[48];
        std::snprintf(name, sizeof name, "uniform over C = %d (engine)", C);
        std::printf("%-34s  %10.4f  %12.1f\n", name, L, std::exp(L));
    }
    std::printf("An untrained language model starts near L = log(vocabulary size): that is the\n"
                "expected first loss, not a bug.\n");
}

// ---------------------------------------------------------------------------------------------
// 7. Label smoothing with ε: the target is t = (1 − ε)·onehot + ε/C, and
//     L = −Σ_i t_i·log p_i,      dL/dz = p − t.
// For ε = 0.1, C = 3: t = [0.9333, 0.0333, 0.0333]. Without smoothing the loss only reaches 0
// as z_y − z_other → ∞, so the logits grow forever and the model grows overconfident. With it,
// the minimum is at p = t, which fixes the gap at log(t_y/t_other) = log 28 = 3.332, and the
// smallest possible loss is the target's entropy −Σ t_i log t_i = 0.2911, not 0.
// ---------------------------------------------------------------------------------------------
static void label_smoothing() {
    heading("7. Label smoothing, eps = 0.1");
    const double eps = 0.1;
    std::vector<double> target(3, eps / 3);
    target[0] += 1 - eps;
    Tensor z = row_tensor(worked_logits);
    z.requires_grad_();
    const Tensor loss = cross_entropy(z, {0}, real(eps));
    loss.backward();
    const Tensor p = softmax(z.detach());
    std::printf("z = [2.0, 1.0, 0.1], class 0. Loss %.6f by hand, %.6f from the engine\n",
                cross_entropy_double(worked_logits, target), double(loss.item()));
    std::printf("%3s  %8s  %8s  %10s  %12s  %14s\n", "i", "t_i", "p_i", "p_i - t_i", "backward()",
                "central diff");
    for (int i = 0; i < 3; ++i)
        std::printf("%3d  %8.4f  %8.4f  %10.6f  %12.6f  %14.6f\n", i, target[i],
                    double(p.values()[i]), p.values()[i] - target[i], double(z.grad()[i]),
                    ce_central_difference(worked_logits, target, i));

    const int steps = 1000;
    std::vector<double> gap_plain, gap_smooth;
    const std::vector<double> plain = train_logits(false, 0, steps, &gap_plain);
    const std::vector<double> smooth = train_logits(false, real(eps), steps, &gap_smooth);
    std::printf(
        "\nTraining from z = 0 (gradient descent, lr = 1): the gap z_0 - z_1 and the loss\n");
    std::printf("%6s  %12s  %12s  %14s  %14s\n", "step", "gap, eps=0", "loss, eps=0",
                "gap, eps=0.1", "loss, eps=0.1");
    for (int step : {0, 10, 50, 100, 200, 500, 1000})
        std::printf("%6d  %12.4f  %12.6f  %14.4f  %14.6f\n", step, gap_plain[step], plain[step],
                    gap_smooth[step], smooth[step]);
    std::printf(
        "Without smoothing the gap keeps growing (like log of the step count); with it, the\n"
        "gap settles at log 28 = %.4f and the loss at the target's entropy %.4f.\n",
        std::log(28.0), cross_entropy_double({std::log(28.0), 0, 0}, target));

    Plot plot("Logit gap z_0 - z_1 while training one example", "step", "z_0 - z_1");
    plot.add("no smoothing", gap_plain);
    plot.add("label smoothing 0.1", gap_smooth);
    plot.save("05_label_smoothing");
}

static void lesson() {
    std::printf("Lesson 05: softmax and cross-entropy\n");
    forward();
    gradient();
    jacobian();
    overflow();
    softmax_first();
    perplexity();
    label_smoothing();
}

// ---- Homework --------------------------------------------------------------------------------

// 05.1  Log-sum-exp without overflow: return log Σ_i e^{z_i}, computed as m + log Σ_i e^{z_i − m}
// with m = max_i z_i (section 4). It must give finite answers for z = [1000, 999] and
// z = [−1000, −1001]. Throw std::invalid_argument if z is empty.
double log_sum_exp(const std::vector<double>& z) {
    // BEGIN EXERCISE 05.1
    throw not_implemented("05.1");
    // END EXERCISE
}

// 05.2  The gradient of cross-entropy for one row of logits, with label smoothing ε:
//     p = softmax(z) (computed stably),  t = (1 − ε)·onehot(label) + ε/C,  return p − t.
// (ε = 0 gives the plain p − onehot.) Throw std::invalid_argument if label is not in [0, C).
std::vector<double> cross_entropy_grad(const std::vector<double>& logits, int label,
                                       double smoothing) {
    // BEGIN EXERCISE 05.2
    throw not_implemented("05.2");
    // END EXERCISE
}

// 05.3  The softmax Jacobian: return the C×C matrix J with J[i][j] = ∂p_i/∂z_j = p_i·(δ_ij − p_j),
// where p = softmax(z) computed stably.
std::vector<std::vector<double>> softmax_jacobian(const std::vector<double>& z) {
    // BEGIN EXERCISE 05.3
    throw not_implemented("05.3");
    // END EXERCISE
}

// Softmax from the definition, for the checks' finite differences (moderate logits only).
static std::vector<double> softmax_double(const std::vector<double>& z) {
    double sum = 0;
    for (double v : z) sum += std::exp(v);
    std::vector<double> p;
    for (double v : z) p.push_back(std::exp(v) / sum);
    return p;
}

static int check_homework() {
    Homework hw("05");

    hw.check(
        "05.1", "log-sum-exp, stable for large and small logits",
        "factor out the largest term: log Σ_i e^(z_i) = m + log Σ_i e^(z_i − m), m = max_i z_i, "
        "so no exponent is positive",
        [] {
            // Small logits: straight from the definition.
            const double direct = std::log(std::exp(2.0) + std::exp(1.0) + std::exp(0.1));
            expect_near("LSE([2, 1, 0.1])", log_sum_exp(worked_logits), direct, 1e-12);
            // log(e^1000 + e^999) = 1000 + log(1 + e^−1), by factoring out e^1000.
            expect_near("LSE([1000, 999])", log_sum_exp({1000, 999}),
                        1000 + std::log1p(std::exp(-1.0)), 1e-9);
            expect_near("LSE([-1000, -1001])", log_sum_exp({-1000, -1001}),
                        -1000 + std::log1p(std::exp(-1.0)), 1e-9);
            expect_near("LSE of one logit is the logit", log_sum_exp({-3.5}), -3.5, 1e-12);
            expect_near("LSE of 50000 zeros is log 50000",
                        log_sum_exp(std::vector<double>(50000, 0.0)), std::log(50000.0), 1e-9);
            // Shift rule: LSE(z + c) = LSE(z) + c.
            Rng rng(51);
            std::vector<double> z(6);
            for (double& v : z) v = rng.normal();
            double sum_of_exps = 0;
            for (double v : z) sum_of_exps += std::exp(v);
            const double base = std::log(sum_of_exps);
            for (double c : {750.0, -2000.0}) {
                std::vector<double> shifted = z;
                for (double& v : shifted) v += c;
                expect_near("LSE(z + c) = LSE(z) + c", log_sum_exp(shifted), base + c, 1e-9);
            }
            expect_true("empty z throws std::invalid_argument",
                        throws_invalid_argument([] { log_sum_exp({}); }));
        });

    hw.check("05.2", "the cross-entropy gradient p - t for one row",
             "∂L/∂z_i = p_i − t_i with t_i = ε/C + (1 − ε)·[i = label], and p = softmax(z − max z) "
             "so that large logits stay finite",
             [] {
                 // The course's worked numbers, to their 3 printed digits.
                 const std::vector<double> g = cross_entropy_grad(worked_logits, 0, 0.0);
                 expect_true("one entry per class", g.size() == 3);
                 expect_near("dL/dz_0", g[0], -0.341, 5e-4);
                 expect_near("dL/dz_1", g[1], 0.242, 5e-4);
                 expect_near("dL/dz_2", g[2], 0.099, 5e-4);
                 expect_near("the gradient sums to 0", g[0] + g[1] + g[2], 0.0, 1e-12);
                 // Against central differences of the loss −Σ t_i·log p_i, with and without
                 // smoothing, on random logits.
                 Rng rng(52);
                 for (double eps : {0.0, 0.1, 0.3}) {
                     std::vector<double> z(5);
                     for (double& v : z) v = 2 * rng.normal();
                     const int label = int(rng.below(5));
                     std::vector<double> t(5, eps / 5);
                     t[label] += 1 - eps;
                     const std::vector<double> mine = cross_entropy_grad(z, label, eps);
                     for (std::size_t i = 0; i < z.size(); ++i)
                         expect_near("dL/dz_i vs central difference", mine[i],
                                     ce_central_difference(z, t, i), 1e-7);
                 }
                 // Large logits: p = [1, e^−1000, 0] without NaN; label 1 gives [1, −1, 0].
                 const std::vector<double> big = cross_entropy_grad({1000, 0, -1000}, 1, 0.0);
                 expect_near("large logits, dL/dz_0", big[0], 1.0, 1e-12);
                 expect_near("large logits, dL/dz_1", big[1], -1.0, 1e-12);
                 expect_near("large logits, dL/dz_2", big[2], 0.0, 1e-12);
                 expect_true("label 3 of 3 classes throws std::invalid_argument",
                             throws_invalid_argument([] {
                                 cross_entropy_grad({1, 2, 3}, 3, 0.0);
                             }));
                 expect_true("label -1 throws std::invalid_argument", throws_invalid_argument([] {
                                 cross_entropy_grad({1, 2}, -1, 0.0);
                             }));
             });

    hw.check("05.3", "the softmax Jacobian diag(p) - p p^T",
             "∂p_i/∂z_j = p_i·(δ_ij − p_j), δ_ij = 1 on the diagonal and 0 elsewhere; "
             "take p = softmax(z − max z) so that large logits stay finite",
             [] {
                 const std::vector<std::vector<double>> J = softmax_jacobian(worked_logits);
                 expect_true("3 rows of 3", J.size() == 3 && J[0].size() == 3 && J[2].size() == 3);
                 // p_0(1 − p_0) with p_0 = e²/(e² + e + e^0.1).
                 const double p0 = softmax_double(worked_logits)[0];
                 expect_near("J[0][0] = p_0 (1 - p_0)", J[0][0], p0 * (1 - p0), 1e-12);
                 // Column j against central differences of the softmax in z_j.
                 Rng rng(53);
                 for (int n : {2, 4, 5}) {
                     std::vector<double> z(n);
                     for (double& v : z) v = rng.normal();
                     const std::vector<std::vector<double>> Jz = softmax_jacobian(z);
                     expect_true("C rows", int(Jz.size()) == n);
                     for (int j = 0; j < n; ++j) {
                         std::vector<double> up = z, down = z;
                         up[j] += 1e-6;
                         down[j] -= 1e-6;
                         const std::vector<double> pu = softmax_double(up),
                                                   pd = softmax_double(down);
                         for (int i = 0; i < n; ++i)
                             expect_near("dp_i/dz_j vs central difference", Jz[i][j],
                                         (pu[i] - pd[i]) / 2e-6, 1e-8);
                     }
                 }
                 // Stable for large logits: p = [σ(1), 1 − σ(1)], J[0][1] = −p_0·p_1.
                 const std::vector<std::vector<double>> Jb = softmax_jacobian({1000, 999});
                 const double s = 1 / (1 + std::exp(-1.0));
                 expect_near("J[0][1] for z = [1000, 999]", Jb[0][1], -s * (1 - s), 1e-12);
             });

    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
