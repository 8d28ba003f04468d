// Lesson 08: weight initialization, and why gradients vanish in deep networks.
//
// Before the first step, every weight needs a value. Two things can go wrong. If the weights are
// all equal, every unit of a layer computes the same thing and gets the same gradient, so they
// stay equal forever (symmetry). If their scale is off, the signal shrinks or grows by a constant
// factor per layer, and after ten layers there is nothing left, or far too much. Good schemes
// draw random weights with a variance chosen from the layer's fan-in (and fan-out):
//
//     Xavier (Glorot):  Var(w) = 2/(fan_in + fan_out)     for tanh and sigmoid
//     He (Kaiming):     Var(w) = 2/fan_in                  for ReLU, which zeroes half its inputs
//     GPT-2:            N(0, 0.02²), and 0.02/√(2L) for projections into the residual stream
//
//   1. The sigmoid bound: through L sigmoids a gradient shrinks by at least 4^L.
//   2. Ten layers of width 256: activation and gradient spread per layer, for zero, Xavier and
//      He init with sigmoid, tanh and ReLU.
//   3. Scale, seen as histograms: tanh layers with weights too small, right, and too large.
//   4. Symmetry: equal initial weights give hidden units that stay identical.
//   5. Dead ReLUs: units that are never active, and what makes them so.
//   6. GPT-2's residual scaling: the stream's variance no longer grows with depth.
//
// Run it:             make lesson N=08        (plots go to build/plots/08_*.svg)
// Grade the homework: make check N=08

#include "lesson.h"

#include <algorithm>
#include <cmath>
#include <vector>

// The standard deviation of all the numbers in v (the population formula, over every element).
static double stddev(const std::vector<real>& v) {
    double mean = 0, square = 0;
    for (real x : v) mean += x;
    mean /= double(v.size());
    for (real x : v) square += (x - mean) * (x - mean);
    return std::sqrt(square / double(v.size()));
}

static std::vector<double> to_double(const std::vector<real>& v) {
    return std::vector<double>(v.begin(), v.end());
}

// ---------------------------------------------------------------------------------------------
// 1. Backpropagation through y = σ(σ(…σ(x)…)) multiplies the slopes:
//        dy/dx = σ'(z_L) · … · σ'(z_2) · σ'(z_1),    and σ'(z) = σ(z)(1 − σ(z)) ≤ σ'(0) = 0.25,
// so |dy/dx| ≤ 0.25^L. The chain is measured here with the scalar engine, starting at x = 0.
// Only the first sigmoid sees z = 0; the next see 0.5, 0.62, … rising to 0.66, where the slope
// is 0.22.
// tanh'(0) = 1 and tanh(0) = 0, so a chain of tanh at 0 keeps a slope of exactly 1.
// ---------------------------------------------------------------------------------------------
static double chain_slope(int depth, Activation act) {
    Value x(0.0);
    Value y = x;
    for (int k = 0; k < depth; ++k) y = activate(y, act);
    y.backward();
    return x.grad();
}

static void sigmoid_bound() {
    heading("1. A gradient through L sigmoids: at most 0.25^L");
    std::printf("%4s  %12s  %16s  %12s  %12s\n", "L", "0.25^L", "sigmoid chain", "tanh chain",
                "0.9^L");
    for (int L : {1, 2, 5, 10, 20, 50})
        std::printf("%4d  %12.3e  %16.3e  %12.3e  %12.3e\n", L, std::pow(0.25, L),
                    chain_slope(L, Activation::sigmoid), chain_slope(L, Activation::tanh),
                    std::pow(0.9, L));
    double z = 0;   // the sigmoid chain's inputs settle at the fixed point z = σ(z)
    for (int k = 0; k < 200; ++k) z = 1 / (1 + std::exp(-z));
    std::printf("\nThe sigmoid chain settles at z = s(z) = %.4f, where the slope is z(1 - z) =\n"
                "%.4f, below the 0.25 bound. Even a gentle 0.9 per layer leaves 0.9^50 = %.4f\n"
                "after 50 layers: the first layers would learn about 200 times slower than the\n"
                "last.\n",
                z, z * (1 - z), std::pow(0.9, 50));
}

// ---------------------------------------------------------------------------------------------
// 2. A stack of `depth` layers  h_l = act(h_{l−1}·W_l),  W_l of shape [256, 256], on a batch of
// 64 inputs x ~ N(0, 1). (Biases start at 0, so they change nothing at initialization.)
// Instead of a loss we seed backward() with dL/dh_10 ~ N(0, 1) and record, per layer,
//     the spread of the activations h_l           forward signal
//     the spread of dL/dh_l                       backward signal (backward() fills the grad of
//                                                 every intermediate tensor too)
//     the spread of the weight gradients dL/dW_l  what the optimizer gets: h_{l−1}ᵀ·dL/dz_l
// Variance bookkeeping for one layer, z = h·W with fan_in = n and Var(w) = v:
//     Var(z) = n · v · E[h²]          (a sum of n independent terms)
// Xavier sets n·v = 1 (with fan_in = fan_out = n): right for tanh, which is linear near 0.
// ReLU keeps half of z, so E[relu(z)²] = Var(z)/2; He's n·v = 2 makes up for exactly that.
// The backward pass obeys the same rule with fan_out in place of fan_in.
// ---------------------------------------------------------------------------------------------
struct StackStats {
    std::vector<double> act_std, back_std, weight_grad_std;   // per layer 1..depth
    std::vector<Tensor> activations;                          // h_1 … h_depth
};

static const int stack_depth = 10, stack_width = 256, stack_batch = 64;

// weight_std > 0 draws every W from N(0, weight_std²) and ignores `init`.
static StackStats deep_stack(Activation act, Init init, double weight_std = 0) {
    Rng data_rng(1), weight_rng(2);   // the same inputs and seed gradient for every run
    Tensor h = randn({stack_batch, stack_width}, data_rng);
    const Tensor seed = randn({stack_batch, stack_width}, data_rng);
    StackStats stats;
    std::vector<Tensor> weights;
    for (int l = 0; l < stack_depth; ++l) {
        const Shape shape = {stack_width, stack_width};
        Tensor W = weight_std > 0 ? randn(shape, weight_rng, real(weight_std))
                                  : init_weight(shape, stack_width, stack_width, init, weight_rng);
        W.requires_grad_();
        h = activate(matmul(h, W), act);
        weights.push_back(W);
        stats.activations.push_back(h);
    }
    h.backward(seed);
    for (int l = 0; l < stack_depth; ++l) {
        stats.act_std.push_back(stddev(stats.activations[l].values()));
        stats.back_std.push_back(stddev(stats.activations[l].grad()));
        stats.weight_grad_std.push_back(stddev(weights[l].grad()));
    }
    return stats;
}

static std::vector<double> layer_numbers() {
    std::vector<double> layers;
    for (int l = 1; l <= stack_depth; ++l) layers.push_back(l);
    return layers;
}

// Zero init in one line: which layers' weights get any gradient at all.
static void print_zero_init(Activation act) {
    const StackStats zero = deep_stack(act, Init::zeros);
    std::printf("  zero init: std of h_l is %g in every layer; dL/dW_l is nonzero in layers:",
                *std::max_element(zero.act_std.begin(), zero.act_std.end()));
    int nonzero = 0;
    for (int l = 0; l < stack_depth; ++l)
        if (zero.weight_grad_std[l] > 0) {
            std::printf(" %d", l + 1);
            ++nonzero;
        }
    std::printf("%s\n", nonzero ? "" : " none");
}

static void deep_stack_statistics() {
    heading("2. Ten layers of width 256: forward and backward signals, layer by layer");
    struct Act {
        const char* name;
        Activation act;
    };
    const Act acts[] = {
        {"sigmoid", Activation::sigmoid}, {"tanh", Activation::tanh}, {"relu", Activation::relu}};
    Plot act_plot("Activation std per layer (width 256)", "layer", "std of h", Scale::log_y);
    Plot back_plot("Backward signal per layer (width 256)", "layer", "std of dL/dh", Scale::log_y);
    Plot weight_plot("Weight-gradient std per layer (width 256)", "layer", "std of dL/dW",
                     Scale::log_y);
    for (const Act& a : acts) {
        const StackStats xavier = deep_stack(a.act, Init::xavier_normal);
        const StackStats he = deep_stack(a.act, Init::he_normal);
        std::printf("%-7s  %20s    %20s    %20s\n", a.name, "std of h_l", "std of dL/dh_l",
                    "std of dL/dW_l");
        std::printf("%7s  %9s  %9s    %9s  %9s    %9s  %9s\n", "layer", "Xavier", "He", "Xavier",
                    "He", "Xavier", "He");
        for (int l = 0; l < stack_depth; ++l)
            std::printf("%7d  %9.2e  %9.2e    %9.2e  %9.2e    %9.2e  %9.2e\n", l + 1,
                        xavier.act_std[l], he.act_std[l], xavier.back_std[l], he.back_std[l],
                        xavier.weight_grad_std[l], he.weight_grad_std[l]);
        print_zero_init(a.act);
        std::printf("\n");
        for (const StackStats* st : {&xavier, &he}) {
            const std::string label = std::string(a.name) + (st == &xavier ? " Xavier" : " He");
            act_plot.add(label, layer_numbers(), st->act_std);
            back_plot.add(label, layer_numbers(), st->back_std);
            weight_plot.add(label, layer_numbers(), st->weight_grad_std);
        }
    }
    std::printf(
        "sigmoid: under Xavier dL/dh shrinks about 4x per layer going back, the 0.25^L of\n"
        "  section 1, and layer 1's weights get a gradient 10^4 (He) to 10^5 (Xavier) times\n"
        "  smaller than layer 10's. No choice of variance fixes a slope of at most 0.25.\n"
        "tanh: under Xavier the backward signal changes less than 3x over nine layers and the\n"
        "  weight gradients stay level; the forward signal shrinks slowly, as tanh bends\n"
        "  large inputs down.\n"
        "relu: Xavier halves the variance per layer in both directions (std x 0.71); the\n"
        "  weight gradients look level, but only because a shrinking h meets a shrinking dL/dz:\n"
        "  all of them are about sqrt(2^9) = 23 times smaller than under He, which keeps every\n"
        "  signal level.\n"
        "zero: all units of a layer are equal (0, or 0.5 for sigmoid) and only the last\n"
        "  layer of the sigmoid stack gets a weight gradient: nothing else can learn.\n"
        "(Zero init is not plotted: a log axis has no place for 0.)\n");
    act_plot.save("08_activation_std");
    back_plot.save("08_backward_std");
    weight_plot.save("08_weight_grad_std");
}

// ---------------------------------------------------------------------------------------------
// 3. The scale of the weights, seen in the distribution of tanh activations. Same stack, tanh,
// weights N(0, s²) with s = 0.01 (too small), s = 1/√256 = 0.0625 (Xavier), s = 1 (too large).
//   too small:  Var(z) = 256·s²·E[h²] = 0.0256·E[h²]: each layer shrinks the signal 6x
//   too large:  Var(z) = 256·E[h²]: z is huge and tanh saturates at ±1, where its slope
//               1 − h² is 0; but the few units that are not saturated pass dL/dh back through
//               weights of size 1 from 256 inputs each, and that is more than enough.
// ---------------------------------------------------------------------------------------------
static double saturated_fraction(const Tensor& h) {
    double n = 0;
    for (real v : h.values()) n += std::fabs(v) > 0.99 ? 1 : 0;
    return n / double(h.numel());
}

static void weight_scale() {
    heading("3. tanh with weights N(0, s^2): too small, Xavier, too large");
    const double scales[] = {0.01, 0.0625, 1.0};
    StackStats stats[3];
    for (int i = 0; i < 3; ++i) stats[i] = deep_stack(Activation::tanh, Init::zeros, scales[i]);
    std::printf("%5s  %30s    %30s  %10s\n", "", "std of h_l", "std of dL/dh_l", "|h| > 0.99");
    std::printf("%5s  %8s  %9s  %9s    %8s  %9s  %9s  %10s\n", "layer", "s = 0.01", "0.0625", "1",
                "s = 0.01", "0.0625", "1", "(s = 1)");
    for (int l = 0; l < stack_depth; ++l)
        std::printf("%5d  %8.2e  %9.2e  %9.2e    %8.2e  %9.2e  %9.2e  %9.1f%%\n", l + 1,
                    stats[0].act_std[l], stats[1].act_std[l], stats[2].act_std[l],
                    stats[0].back_std[l], stats[1].back_std[l], stats[2].back_std[l],
                    100 * saturated_fraction(stats[2].activations[l]));
    std::printf("\nToo small: the forward signal collapses 6x per layer, and so does the backward\n"
                "one: layer 1 hears nothing from the loss. Too large: 87%% of the activations sit\n"
                "at -1 or +1, and the backward signal explodes instead of vanishing. Xavier keeps\n"
                "both in between. The histogram plot shows layer 5 of each run.\n");

    Plot plot("tanh activations at layer 5, weights N(0, s^2)", "activation h",
              "fraction of values");
    const char* labels[] = {"s = 0.01", "s = 0.0625 (Xavier)", "s = 1"};
    for (int i = 0; i < 3; ++i)
        plot.series.push_back(
            histogram(labels[i], to_double(stats[i].activations[4].values()), 50, -1.0, 1.0));
    plot.save("08_tanh_histograms");
}

// ---------------------------------------------------------------------------------------------
// 4. Symmetry. Hidden unit j of a layer computes tanh(x·W[:, j] + b[j]). If every column of W
// and every b[j] start equal, all units compute the same value; the output weights are equal
// too, so each unit receives the same gradient, gets the same update, and stays equal: the
// layer behaves like one unit however wide it is. Biases, by contrast, may start at 0: once
// the weights are random, each unit's bias gets its own gradient from the first step.
// Data: the two moons (labels 0/1). Model: MLP {2, 4, 1} with tanh, bce_with_logits, SGD.
// ---------------------------------------------------------------------------------------------
struct Moons01 {
    Tensor x, t;   // x [N, 2], targets t [N, 1] in {0, 1}
};

static Moons01 moons_tensors(int n) {
    Rng rng(11);
    const Moons moons = make_moons(n, 0.1, rng);
    std::vector<real> x, t;
    for (std::size_t i = 0; i < moons.x.size(); ++i) {
        x.push_back(real(moons.x[i][0]));
        x.push_back(real(moons.x[i][1]));
        t.push_back(moons.y[i] > 0 ? 1 : 0);
    }
    return {Tensor({n, 2}, x), Tensor({n, 1}, t)};
}

static double accuracy(const Tensor& logits, const Tensor& t) {
    double correct = 0;
    for (std::size_t i = 0; i < t.numel(); ++i)
        correct += (logits.values()[i] > 0) == (t.values()[i] > 0.5) ? 1 : 0;
    return correct / double(t.numel());
}

// The largest difference between hidden unit j's incoming weights W[:, j] and unit 0's.
static double unit_spread(const Tensor& W) {
    double spread = 0;
    for (int i = 0; i < W.dim(0); ++i)
        for (int j = 1; j < W.dim(1); ++j)
            spread = std::max(spread, double(std::fabs(W.at({i, j}) - W.at({i, 0}))));
    return spread;
}

static void print_unit_columns(const char* what, const Tensor& W) {
    std::printf("  %-22s", what);
    for (int j = 0; j < W.dim(1); ++j) std::printf("  (%7.4f, %7.4f)", W.at({0, j}), W.at({1, j}));
    std::printf("\n");
}

// Trains MLP {2, 4, 1} (tanh) for 300 steps of SGD with lr 0.5; `fill` < 0 keeps the random He
// init, otherwise every weight starts at `fill` and every bias at 0.
static void train_symmetry(const char* name, double fill, const Moons01& data) {
    Rng rng(4);
    nn::MLP model({2, 4, 1}, rng, Activation::tanh, Init::he_normal);
    if (fill >= 0)
        for (nn::Linear& layer : model.layers) {
            for (real& w : layer.W.values()) w = real(fill);
            for (real& b : layer.b.values()) b = 0;
        }
    SGD opt(model.parameters(), 0.5);
    const Tensor& W1 = model.layers[0].W;
    std::printf("%s:\n", name);
    double spread = 0;
    for (int step = 0; step < 300; ++step) {
        opt.zero_grad();
        bce_with_logits(model(data.x), data.t).backward();
        if (step == 0) {
            print_unit_columns("step 0, dL/dW1 columns", Tensor(W1.shape(), W1.grad()));
            std::printf("  %-22s", "step 0, dL/db1");
            for (real g : model.layers[0].b.grad()) std::printf("  %18.4e", g);
            std::printf("\n");
        }
        opt.step();
        spread = std::max(spread, unit_spread(W1));
    }
    const Tensor logits = model(data.x);
    print_unit_columns("after 300, W1 columns", W1);
    std::printf("  largest difference between two units' weights during training: %.3g\n", spread);
    std::printf("  final loss %.4f, accuracy %.0f%%\n\n", bce_with_logits(logits, data.t).item(),
                100 * accuracy(logits, data.t));
}

static void symmetry() {
    heading("4. Symmetry: MLP {2, 4, 1} (tanh) on the two moons, 300 SGD steps, lr 0.5");
    const Moons01 data = moons_tensors(200);
    std::printf("Hidden unit j is shown as its two incoming weights (W1[0][j], W1[1][j]).\n\n");
    train_symmetry("every weight 0.5, biases 0", 0.5, data);
    train_symmetry("every weight 0 (zero init)", 0.0, data);
    train_symmetry("random He init, biases 0", -1.0, data);
    std::printf("Equal weights stay equal to the last bit: four units do the work of one. With\n"
                "zero init no gradient reaches W1 at all and the loss stays at ln 2 = %.4f, the\n"
                "loss of a coin flip. Random weights break the tie on the first step, zero biases\n"
                "and all.\n",
                std::log(2.0));
}

// ---------------------------------------------------------------------------------------------
// 5. Dead ReLUs. relu'(z) = 0 for z < 0, so a unit whose pre-activation z is negative on every
// input passes no gradient to its weights or bias: nothing can ever bring it back. We count,
// per hidden layer of MLP {2, 32, 32, 1} (ReLU, He init) on the moons, the units whose z is
// ≤ 0 for all 200 inputs. Two ways to kill units: a large negative bias, and a step so large
// that it throws the biases (or weights) far into the negative.
// ---------------------------------------------------------------------------------------------
// Which units (columns of z [N, units]) have z ≤ 0 on every input: the dead ones.
static std::vector<bool> dead_units(const Tensor& z) {
    std::vector<bool> dead(z.dim(1), true);
    for (int i = 0; i < z.dim(0); ++i)
        for (int j = 0; j < z.dim(1); ++j)
            if (z.at({i, j}) > 0) dead[j] = false;
    return dead;
}

struct DeadCount {
    int dead[2] = {0, 0};
    int width[2] = {0, 0};
};

// Counts the dead units of both hidden layers of a {2, h, h, 1} ReLU MLP on the inputs x.
static DeadCount count_dead(const nn::MLP& model, const Tensor& x) {
    DeadCount c;
    Tensor h = x;
    for (int l = 0; l < 2; ++l) {
        const Tensor z = model.layers[l](h);
        const std::vector<bool> dead = dead_units(z);
        c.width[l] = int(dead.size());
        c.dead[l] = int(std::count(dead.begin(), dead.end(), true));
        h = relu(z);
    }
    return c;
}

static void print_dead(const char* what, const DeadCount& c, double loss) {
    std::printf("%-40s  %7d/%d  %7d/%d  %10.4f\n", what, c.dead[0], c.width[0], c.dead[1],
                c.width[1], loss);
}

static void dead_relus() {
    heading("5. Dead ReLUs: units of MLP {2, 32, 32, 1} that are never active on the moons");
    const Moons01 data = moons_tensors(200);
    std::printf("%-40s  %9s  %9s  %10s\n", "model", "dead, L1", "dead, L2", "loss");

    Rng rng(6);
    nn::MLP fresh({2, 32, 32, 1}, rng, Activation::relu, Init::he_normal);
    print_dead("He init, biases 0", count_dead(fresh, data.x),
               bce_with_logits(fresh(data.x), data.t).item());

    Rng rng_b(6);
    nn::MLP biased({2, 32, 32, 1}, rng_b, Activation::relu, Init::he_normal);
    for (real& b : biased.layers[0].b.values()) b = -3;
    print_dead("same weights, layer-1 biases -3", count_dead(biased, data.x),
               bce_with_logits(biased(data.x), data.t).item());

    // A dead unit's gradient is exactly zero, so training cannot revive it.
    bce_with_logits(biased(data.x), data.t).backward();
    const nn::Linear& first = biased.layers[0];
    const std::vector<bool> dead = dead_units(first(data.x));
    double dead_grad = 0, live_grad = 0;
    for (int j = 0; j < first.W.dim(1); ++j) {
        const double g = std::fabs(first.W.grad()[j]) +                    // dL/dW1[0][j]
                         std::fabs(first.W.grad()[first.W.dim(1) + j]) +   // dL/dW1[1][j]
                         std::fabs(first.b.grad()[j]);                     // dL/db1[j]
        if (dead[j]) dead_grad += g;
        else live_grad += g;
    }
    std::printf("  sum of |dL/dW1| + |dL/db1| over its dead layer-1 units: %g (over the live\n"
                "  ones: %.3g)\n\n",
                dead_grad, live_grad);

    for (double lr : {0.1, 1.0, 3.0, 10.0}) {
        Rng r(6);
        nn::MLP model({2, 32, 32, 1}, r, Activation::relu, Init::he_normal);
        SGD opt(model.parameters(), lr);
        for (int step = 0; step < 100; ++step) {
            opt.zero_grad();
            bce_with_logits(model(data.x), data.t).backward();
            opt.step();
        }
        char what[64];
        std::snprintf(what, sizeof what, "He init, 100 SGD steps with lr %g", lr);
        print_dead(what, count_dead(model, data.x), bce_with_logits(model(data.x), data.t).item());
    }
    std::printf("\nA dead unit of layer 1 sees the fixed data and stays dead for good. A unit of\n"
                "layer 2 sees layer 1's outputs, which keep changing, so it may wake up again (5\n"
                "dead at the start, 3 after training at lr 0.1). Too high a learning rate kills\n"
                "units by the dozen: at lr 10 the network has almost none left and does worse\n"
                "than a coin flip (ln 2 = 0.693). Cures: He init, a smaller learning rate, or an\n"
                "activation with a slope below zero (leaky ReLU, GELU), so a unit can recover.\n");
}

// ---------------------------------------------------------------------------------------------
// 6. GPT-2. A transformer keeps a residual stream x and every block adds to it: 2 writes per
// layer (attention, then MLP), each roughly  x ← x + LN(x)·W,  where LN(x) has unit variance.
// One write with W ~ N(0, σ²) adds variance d·σ²; after 2L writes
//     Var(x) ≈ 1 + 2L·d·σ².
// GPT-2 uses σ = 0.02 everywhere, except for these projections: σ = 0.02/√(2L). Then
//     Var(x) ≈ 1 + 2L·d·0.02²/(2L) = 1 + d·0.02²,   the same for every depth.
// Below: d = 256 (so d·0.02² = 0.1024), 16 rows, embeddings x ~ N(0, 1).
// ---------------------------------------------------------------------------------------------
static double residual_stream_std(int n_layers, bool scaled) {
    const int d = 256, rows = 16;
    Rng rng(5);
    Tensor x = randn({rows, d}, rng);
    const Tensor gain = Tensor::full({d}, 1), bias = Tensor({d});
    for (int write = 0; write < 2 * n_layers; ++write) {
        const Tensor W = scaled ? gpt2_residual_weight({d, d}, n_layers, rng)
                                : init_weight({d, d}, d, d, Init::gpt2, rng);
        x = x + matmul(layer_norm(x, gain, bias), W);
    }
    return stddev(x.values());
}

static void gpt2_residual() {
    heading("6. GPT-2: N(0, 0.02^2) weights, and 0.02/sqrt(2L) for residual projections");
    const double d = 256, s2 = 0.02 * 0.02;
    std::printf("%8s  %11s  %14s  %12s  %14s  %12s\n", "layers L", "0.02/sqrt2L", "std, plain",
                "predicted", "std, scaled", "predicted");
    for (int L : {1, 2, 6, 12, 24, 48})
        std::printf("%8d  %11.5f  %14.4f  %12.4f  %14.4f  %12.4f\n", L, 0.02 / std::sqrt(2.0 * L),
                    residual_stream_std(L, false), std::sqrt(1 + 2 * L * d * s2),
                    residual_stream_std(L, true), std::sqrt(1 + d * s2));
    std::printf("\nWith plain N(0, 0.02^2) the stream grows like sqrt(L); with the 1/sqrt(2L)\n"
                "factor it stays near sqrt(1.1024) = 1.05 at any depth. (GPT-2 small has L = 12:\n"
                "its residual projections get std 0.02/sqrt(24) = 0.00408.)\n");
}

static void lesson() {
    std::printf("Lesson 08: initialization, vanishing gradients, symmetry and dead units\n");
    sigmoid_bound();
    deep_stack_statistics();
    weight_scale();
    symmetry();
    dead_relus();
    gpt2_residual();
}

// ---- Homework --------------------------------------------------------------------------------

// 08.1  He (Kaiming) normal init: the standard deviation of N(0, σ²) with Var = 2/fan_in.
double he_std(int fan_in) {
    // BEGIN EXERCISE 08.1
    throw not_implemented("08.1");
    // END EXERCISE
}

// 08.2  Xavier (Glorot) uniform init draws w from U(−a, a). Return the bound a for which the
// variance of U(−a, a), which is a²/3, equals Xavier's 2/(fan_in + fan_out).
double xavier_uniform_bound(int fan_in, int fan_out) {
    // BEGIN EXERCISE 08.2
    throw not_implemented("08.2");
    // END EXERCISE
}

// 08.3  Measure what one ReLU layer does to the signal: for inputs x [N, n] and weights W [n, m],
// return  mean(relu(x·W)²) / mean(x²),  each mean over every element. (Use mean squares, not
// variances: ReLU outputs are never centred, and the mean square is what the next layer's
// Var(z) = n·v·E[h²] needs.) Under He init this ratio is 1; under Xavier (n = m) it is 1/2.
double relu_mean_square_ratio(const Tensor& x, const Tensor& W) {
    // BEGIN EXERCISE 08.3
    throw not_implemented("08.3");
    // END EXERCISE
}

static int check_homework() {
    Homework hw("08");

    hw.check("08.1", "He normal standard deviation",
             "Var(w) = 2/fan_in, so σ = √(2/fan_in); on ints, 2/fan_in divides as integers", [] {
                 expect_near("fan_in 2", he_std(2), 1.0, 1e-15);
                 expect_near("fan_in 8", he_std(8), 0.5, 1e-15);
                 expect_near("fan_in 512", he_std(512), 0.0625, 1e-15);
                 expect_near("fan_in 256", he_std(256), 0.08838834764831845, 1e-15);
                 for (int n : {1, 3, 100, 768, 4096})
                     expect_near("fan_in * sigma^2 = 2 (the factor that offsets ReLU's halving)",
                                 n * he_std(n) * he_std(n), 2.0, 1e-12);
                 // The spread of 65536 weights drawn by the engine's He init.
                 Rng rng(8);
                 const Tensor W = init_weight({256, 256}, 256, 256, Init::he_normal, rng);
                 expect_near("std of init_weight(he_normal) samples / he_std(256)",
                             stddev(W.values()) / he_std(256), 1.0, 0.02);
             });

    hw.check("08.2", "Xavier uniform bound",
             "match the variances: a²/3 = 2/(fan_in + fan_out) gives a = √(6/(fan_in + fan_out)); "
             "divide as reals, not ints",
             [] {
                 expect_near("fan_in 3, fan_out 3", xavier_uniform_bound(3, 3), 1.0, 1e-15);
                 expect_near("fan_in 100, fan_out 50", xavier_uniform_bound(100, 50), 0.2, 1e-15);
                 expect_near("fan_in 256, fan_out 256", xavier_uniform_bound(256, 256),
                             0.10825317547305482, 1e-15);
                 for (int in : {1, 10, 784})
                     for (int out : {1, 10, 3072}) {
                         const double a = xavier_uniform_bound(in, out);
                         expect_near("variance a^2/3 equals 2/(fan_in + fan_out)", a * a / 3,
                                     2.0 / (in + out), 1e-15);
                     }
                 // The engine's uniform samples fill (−a, a) right up to the edges.
                 Rng rng(9);
                 const Tensor W = init_weight({256, 256}, 256, 256, Init::xavier_uniform, rng);
                 double largest = 0;
                 for (real w : W.values()) largest = std::max(largest, double(std::fabs(w)));
                 const double a = xavier_uniform_bound(256, 256);
                 expect_true("every init_weight(xavier_uniform) sample lies within the bound",
                             largest <= a * (1 + 1e-6));
                 expect_true("and the largest comes within 0.1% of it", largest > 0.999 * a);
             });

    hw.check("08.3", "mean-square ratio across one ReLU layer",
             "ratio = mean(ReLU(x·W)²) / mean(x²), each mean over every element of its own tensor: "
             "mean squares, not variances",
             [] {
                 // By hand: x·W = [1 − 2, 0.5 + 2] = [−1, 2.5]; relu: [0, 2.5];
                 // mean square 6.25/2 = 3.125 against (1 + 4)/2 = 2.5: ratio 1.25.
                 const Tensor x({1, 2}, {1, -2}), W({2, 2}, {1, 0.5, 1, -1});
                 expect_near("a 1 x 2 input through a 2 x 2 layer", relu_mean_square_ratio(x, W),
                             1.25, 1e-6);
                 // Random: He's Var = 2/n keeps the mean square; Xavier's 1/n halves it.
                 Rng rng(10);
                 const int n = 512;
                 const Tensor xs = randn({400, n}, rng);
                 const Tensor he = randn({n, n}, rng, real(std::sqrt(2.0 / n)));
                 const Tensor xavier = randn({n, n}, rng, real(std::sqrt(1.0 / n)));
                 expect_near("He init (Var 2/n): the ratio is about 1",
                             relu_mean_square_ratio(xs, he), 1.0, 0.05);
                 expect_near("Xavier init (Var 1/n): the ratio is about 1/2",
                             relu_mean_square_ratio(xs, xavier), 0.5, 0.03);
             });

    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
