// Lesson 11: normalization, and what it does for deep networks.
//
// Lesson 08 chose the scale of the initial weights so that signals neither shrink nor grow
// through the layers. That holds at step 0 only: once training moves the weights, the scale
// drifts again. A normalization layer fixes the scale at every step instead, by measuring it:
//
//     BatchNorm:  each feature, over the examples of the batch       (engine.cpp §4.2)
//     LayerNorm:  each example, over its features                    (engine.cpp §2.7)
//     RMSNorm:    each example, divided by its root mean square      (engine.cpp §2.7)
//
// Each is followed by a learned gain γ and shift β, so the network can undo it where it must.
//
//   1. BatchNorm, the worked example: x = [2, 1, 3, 4], γ = 2, β = 1, ε = 0.
//   2. The backward pass, and gradient checks of all three layers.
//   3. Running statistics and evaluation mode (momentum 0.1: 0.25, 0.525, 0.6725); PyTorch's
//      momentum against Keras's decay, which some notes mix up (2.0925).
//   4. Why a batch of one breaks BatchNorm, and what LayerNorm does instead.
//   5. LayerNorm and RMSNorm: RMSNorm of [3, 4] is [0.8485, 1.1314]; what each ignores.
//   6. A 16-layer MLP trained plain, with BatchNorm, with LayerNorm, with residual connections,
//      and with both: gradient norm per layer, and the loss curves.
//
// Run it:             make lesson N=11        (plots go to build/plots/11_*.svg)
// Grade the homework: make check N=11

#include "lesson.h"

#include <functional>
#include <memory>
#include <vector>

static void print_row(const char* name, const std::vector<real>& v) {
    std::printf("  %-18s", name);
    for (real x : v) std::printf("  %9.4f", double(x));
    std::printf("\n");
}

// ---------------------------------------------------------------------------------------------
// 1. BatchNorm on one feature of a batch of four, ε = 0 (the course text's example):
//     μ = (2 + 1 + 3 + 4)/4 = 2.5
//     σ² = (0.25 + 2.25 + 0.25 + 2.25)/4 = 1.25        (÷ N: the batch's own variance)
//     x̂ = (x − μ)/√σ² = (x − 2.5)/1.1180
//     y = γ·x̂ + β = 2·x̂ + 1                             → 0.1056 for the first value
// The engine takes x as [N, C]: N examples in rows, C features in columns; here [4, 1].
// ---------------------------------------------------------------------------------------------
static void worked_example() {
    heading("1. BatchNorm by hand and by the engine: x = [2, 1, 3, 4], gamma 2, beta 1, eps 0");
    const std::vector<real> x = {2, 1, 3, 4};
    double mu = 0, var = 0;
    for (real v : x) mu += v / 4.0;
    for (real v : x) var += (v - mu) * (v - mu) / 4.0;
    std::vector<real> x_hat, y;
    for (real v : x) {
        x_hat.push_back(real((v - mu) / std::sqrt(var)));
        y.push_back(real(2 * x_hat.back() + 1));
    }
    std::printf("  mean %.4f, variance %.4f, standard deviation %.4f\n\n", mu, var, std::sqrt(var));
    print_row("x", x);
    print_row("x_hat by hand", x_hat);
    print_row("y by hand", y);
    const Tensor engine = batch_norm(Tensor({4, 1}, x), Tensor({1}, {2}), Tensor({1}, {1}), 0);
    print_row("y = batch_norm", engine.values());
    std::printf(
        "\nx_hat has mean 0 and variance 1; gamma and beta then give y mean 1 and standard\n"
        "deviation 2. Whatever scale the layer below produces, the layer above sees this.\n");
}

// ---------------------------------------------------------------------------------------------
// 2. The backward pass. From engine.cpp §4.2, per column, with ĝ = g·γ and r = 1/√(σ² + ε):
//     dβ = Σ_n g,   dγ = Σ_n g·x̂,   dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))
// The two means remove from ĝ whatever would shift or scale the whole column, because x̂ cannot
// change under those: so the gradient of a column sums to 0. Below, every element of every
// gradient is compared with a central difference (h = 0.01, in float; the tests repeat this in
// double precision to 1e-6).
// ---------------------------------------------------------------------------------------------
using TensorFunction = std::function<Tensor(const std::vector<Tensor>&)>;

// The largest |backward() − central difference| over every element of every input, for the
// loss L = Σ f(inputs)·R with fixed random weights R.
static double gradcheck_error(const TensorFunction& f, std::vector<Tensor> inputs) {
    for (Tensor& t : inputs) t = t.detach().requires_grad_();
    Rng rng(11);
    const Tensor weights = uniform(f(inputs).shape(), rng, 0.5, 1.5);
    auto loss = [&] { return double(sum(f(inputs) * weights).item()); };
    sum(f(inputs) * weights).backward();
    double worst = 0;
    const double h = 1e-2;
    for (Tensor& t : inputs)
        for (std::size_t i = 0; i < t.numel(); ++i) {
            const real saved = t.values()[i];
            t.values()[i] = real(saved + h);
            const double up = loss();
            t.values()[i] = real(saved - h);
            const double down = loss();
            t.values()[i] = saved;
            worst = std::max(worst, std::fabs((up - down) / (2 * h) - t.grad()[i]));
        }
    return worst;
}

static void backward_checks() {
    heading("2. Backward: every gradient against central differences (float, h = 0.01)");
    Rng rng(2);
    const Tensor x = randn({6, 4}, rng, 2), gain = uniform({4}, rng, 0.5, 2),
                 bias = randn({4}, rng);
    std::printf("  %-40s  %s\n", "layer (inputs x [6, 4], gain, bias)",
                "largest |backward - central difference|");
    std::printf(
        "  %-40s  %.1e\n", "batch_norm(x, gamma, beta)",
        gradcheck_error([](const std::vector<Tensor>& v) { return batch_norm(v[0], v[1], v[2]); },
                        {x, gain, bias}));
    std::printf(
        "  %-40s  %.1e\n", "layer_norm(x, gain, bias)",
        gradcheck_error([](const std::vector<Tensor>& v) { return layer_norm(v[0], v[1], v[2]); },
                        {x, gain, bias}));
    std::printf("  %-40s  %.1e\n", "rms_norm(x, gain)",
                gradcheck_error([](const std::vector<Tensor>& v) { return rms_norm(v[0], v[1]); },
                                {x, gain}));

    Tensor xs = x.detach().requires_grad_();
    batch_norm(xs, gain, bias).backward(randn({6, 4}, rng));
    std::printf(
        "\nThe gradient dL/dx of batch_norm, summed down each column (a random upstream g):\n ");
    for (int c = 0; c < 4; ++c) {
        double total = 0;
        for (int n = 0; n < 6; ++n) total += xs.grad()[n * 4 + c];
        std::printf("  %10.2e", total);
    }
    std::printf(
        "\nZero up to float rounding: adding a constant to a column changes no output, so no\n"
        "gradient can point that way. (The errors above are the O(h^2) of the central\n"
        "difference and float rounding, not the backward.)\n");
}

// ---------------------------------------------------------------------------------------------
// 3. Running statistics. Training normalizes with the batch's own μ and σ²; evaluation must not
// (one image should not change another's prediction), so training also keeps averages, PyTorch's
// way with momentum m = 0.1:
//     running_mean ← (1 − m)·running_mean + m·μ_B          (keep 90% of the old value)
//     running_var  ← (1 − m)·running_var + m·σ²_B·N/(N − 1)  (the unbiased variance)
// Starting at 0 with batch means 2.5, 3.0, 2.0:  0.25, then 0.9·0.25 + 0.3 = 0.525, then
// 0.9·0.525 + 0.2 = 0.6725. It takes about 1/m = 10 batches to forget the start.
// Two conventions share the word "momentum". PyTorch's (and nn::BatchNorm's) m is the weight of
// the new batch. Keras's is the weight of the old average, a decay d (its default 0.99):
//     running ← d·running + (1 − d)·μ_B
// The same average either way when d = 1 − m: Keras's 0.9 is PyTorch's 0.1. Mixing them up,
// d = 0.1, keeps only 10% of the past: 2.25, then 0.225 + 2.7 = 2.925, then 0.2925 + 1.8 = 2.0925,
// nearly the last batch's mean alone.
// ---------------------------------------------------------------------------------------------

// One update of a running average in each convention.
static double pytorch_update(double running, double batch_mean, double momentum) {
    return (1 - momentum) * running + momentum * batch_mean;
}
static double keras_update(double running, double batch_mean, double decay) {
    return decay * running + (1 - decay) * batch_mean;
}

static void running_statistics() {
    heading("3. Running statistics (momentum 0.1) and evaluation mode");
    nn::BatchNorm bn(1);
    const std::vector<std::vector<real>> batches = {{2, 1, 3, 4}, {3, 3.5, 2.5, 3}, {1, 3, 2, 2}};
    double pytorch = 0, keras_09 = 0, keras_01 = 0, mu = 0;
    std::printf("%6s  %6s  %14s  %12s  %14s  %14s  %14s\n", "batch", "mean", "nn::BatchNorm",
                "running var", "PyTorch m 0.1", "Keras d 0.9", "Keras d 0.1");
    for (std::size_t t = 0; t < batches.size(); ++t) {
        bn(Tensor({4, 1}, batches[t]));
        mu = 0;
        for (real v : batches[t]) mu += v / 4.0;
        pytorch = pytorch_update(pytorch, mu, 0.1);
        keras_09 = keras_update(keras_09, mu, 0.9);
        keras_01 = keras_update(keras_01, mu, 0.1);
        std::printf("%6zu  %6.2f  %14.4f  %12.4f  %14.4f  %14.4f  %14.4f\n", t + 1, mu,
                    double(bn.running_mean[0]), double(bn.running_var[0]), pytorch, keras_09,
                    keras_01);
    }
    std::printf(
        "\nSome course notes print %.4f here, from running = 0.1*running + 0.9*batch mean, and "
        "call\n"
        "it PyTorch's rule. PyTorch's convention (and nn::BatchNorm's) gives %.4f, because its\n"
        "momentum 0.1 is the weight of the new batch: running = 0.9*running + 0.1*batch mean.\n"
        "The notes' formula is Keras's convention, where momentum is a decay, the weight of the\n"
        "old average; there PyTorch's 0.1 is written 0.9 (the column Keras d 0.9: %.4f again).\n"
        "With 0.1 read as a decay the average keeps 10%% of the past and mostly follows the\n"
        "last batch (mean %.1f). Check which convention a library uses before copying a value.\n",
        keras_01, pytorch, keras_09, mu);

    // Many batches from one distribution: the running statistics find its mean and variance.
    Rng rng(3);
    nn::BatchNorm layer(2);
    std::vector<double> means, variances;
    for (int t = 0; t < 100; ++t) {
        Tensor x = randn({16, 2}, rng);
        for (int n = 0; n < 16; ++n) {
            x.at({n, 0}) = 3 + 2 * x.at({n, 0});
            x.at({n, 1}) = -1 + 0.5 * x.at({n, 1});
        }
        layer(x);
        means.push_back(layer.running_mean[0]);
        variances.push_back(layer.running_var[0]);
    }
    std::printf(
        "\nAfter 100 batches of 16 from N(3, 2^2) and N(-1, 0.5^2): running means %.3f and %.3f,\n"
        "running variances %.3f and %.3f (the true values 3, -1, 4 and 0.25, up to sampling "
        "noise).\n",
        double(layer.running_mean[0]), double(layer.running_mean[1]), double(layer.running_var[0]),
        double(layer.running_var[1]));

    const Tensor probe({2, 2}, {3, -1, 5, -0.5});
    const Tensor in_training = batch_norm(probe, layer.gamma, layer.beta);
    layer.eval();
    const Tensor in_eval = layer(probe);
    std::printf("\nThe batch [[3, -1], [5, -0.5]] in training mode (its own statistics) and in "
                "eval mode:\n");
    print_row("training", in_training.values());
    print_row("eval", in_eval.values());
    std::printf(
        "In eval the first feature is (x - %.3f)/sqrt(%.3f): 3 -> %.2f and 5 -> %.2f, as for any\n"
        "batch. In training the two rows become -1 and +1 whatever they hold. Forgetting eval()\n"
        "at test time is a classic bug: predictions then depend on the batch.\n",
        double(layer.running_mean[0]), double(layer.running_var[0]), double(in_eval.values()[0]),
        double(in_eval.values()[2]));

    Plot plot("BatchNorm running statistics, momentum 0.1", "batch", "value");
    plot.add("running mean (true 3)", means);
    plot.add("running variance (true 4)", variances);
    plot.save("11_running_statistics");
}

// ---------------------------------------------------------------------------------------------
// 4. A batch of one. Then μ = x, so x − μ = 0, x̂ = 0 and y = β for every input: the layer
// erases its input, and its gradient with respect to x is exactly 0. The engine refuses, as
// PyTorch does. A batch of two is barely better: each column becomes x̂ = ±1 (times
// √(σ²/(σ² + ε))), so the output says only which of the two was larger.
// LayerNorm computes its statistics inside each example, so it behaves the same for a batch of
// one as for a batch of a thousand: the reason transformers, which often run on one sequence
// at a time, use it.
// ---------------------------------------------------------------------------------------------
static void batch_of_one() {
    heading("4. Why a batch of one breaks BatchNorm");
    const Tensor gamma = Tensor::full({3}, 1), beta = Tensor({3});
    try {
        batch_norm(Tensor({1, 3}, {0.5, -2, 7}), gamma, beta);
    } catch (const std::invalid_argument& e) {
        std::printf("batch_norm on one example:\n  %s\n\n", e.what());
    }
    const Tensor one({1, 3}, {0.5, -2, 7});
    const Tensor centred = one - mean(one, 0, true);   // what BatchNorm would compute first
    print_row("x", one.values());
    print_row("x - batch mean", centred.values());
    std::printf("  so x_hat = 0 and y = beta, whatever x is.\n\n");

    const Tensor two({2, 3}, {1, 100, -3, 2, -50, -3.5});
    print_row("two examples", two.values());
    print_row("batch_norm", batch_norm(two, gamma, beta).values());
    std::printf("  Every column becomes -1 and +1 (times sqrt(var/(var + eps))): only the order is "
                "left.\n\n");

    print_row("layer_norm of x", layer_norm(one, gamma, beta).values());
    std::printf("LayerNorm uses the example's own three features: fine for a batch of one.\n");
}

// ---------------------------------------------------------------------------------------------
// 5. LayerNorm and RMSNorm, per example over its D features:
//     LayerNorm:  x̂ = (x − mean(x))/√(var(x) + ε),   y = γ·x̂ + β
//     RMSNorm:    y = γ·x/√(mean(x²) + ε)              no centring, no β (LLaMA)
// RMSNorm of [3, 4]: mean(x²) = (9 + 16)/2 = 12.5, RMS = 3.5355, y = [0.8485, 1.1314]. It skips
// one reduction and has half the parameters, and trains as well in practice.
// What each ignores: LayerNorm gives the same output for a·x + c (any a > 0, any c); RMSNorm only
// for a·x: a shift changes its output.
// ---------------------------------------------------------------------------------------------
static void layer_and_rms_norm() {
    heading("5. LayerNorm and RMSNorm: RMSNorm of [3, 4]");
    const Tensor x({1, 2}, {3, 4});
    print_row("rms_norm([3, 4])", rms_norm(x, Tensor::full({2}, 1)).values());
    std::printf("  by hand: 3/sqrt(12.5) = %.4f, 4/sqrt(12.5) = %.4f\n", 3 / std::sqrt(12.5),
                4 / std::sqrt(12.5));
    print_row("layer_norm([3, 4])", layer_norm(x, Tensor::full({2}, 1), Tensor({2})).values());
    std::printf("  by hand: (3 - 3.5)/sqrt(0.25 + 1e-5) = %.4f (eps keeps it just short of -1)\n\n",
                -0.5 / std::sqrt(0.25 + 1e-5));

    const Tensor row({1, 4}, {1, 2, 3, 4}), changed = row * real(10) + real(5);
    const Tensor ones = Tensor::full({4}, 1), zeros({4});
    print_row("x", row.values());
    print_row("10x + 5", changed.values());
    print_row("layer_norm(x)", layer_norm(row, ones, zeros).values());
    print_row("layer_norm(10x+5)", layer_norm(changed, ones, zeros).values());
    print_row("rms_norm(x)", rms_norm(row, ones).values());
    print_row("rms_norm(10x+5)", rms_norm(changed, ones).values());
    print_row("rms_norm(10x)", rms_norm(row * real(10), ones).values());
    std::printf("LayerNorm ignores both the scale and the shift; RMSNorm only the scale.\n");
}

// ---------------------------------------------------------------------------------------------
// 6. A deep MLP on the two moons: input layer 2 → 32, then 16 hidden layers 32 → 32, then
// 32 → 2, ReLU, cross-entropy, SGD with momentum 0.9 and lr 0.01, full batch of 128, 150 steps.
// The weights start with PyTorch's default for a linear layer, U(−1/√fan_in, 1/√fan_in): a
// variance of 1/(3·fan_in), a sixth of He's 2/fan_in (lesson 08). So each plain ReLU layer
// shrinks the signal's mean square about 6×, and after 16 of them almost nothing arrives:
// the logits are the last bias alone, the loss sits at ln 2, and every gradient is tiny. Five
// versions of the same network, each hidden layer being:
//     plain              h ← relu(h·W + b)
//     BatchNorm          h ← relu(BN(h·W + b))
//     LayerNorm          h ← relu(LN(h·W + b))
//     residual           h ← h + relu(h·W + b)             the identity path carries the signal
//     residual + LN      h ← h + relu(LN(h)·W + b)         pre-norm, as in a transformer block
// We record ‖dL/dW_l‖ for every hidden layer at step 0, and the loss at every step.
// ---------------------------------------------------------------------------------------------
enum class Block { plain, batch_norm, layer_norm, residual, residual_layer_norm };

static const char* block_name(Block b) {
    switch (b) {
    case Block::plain:
        return "plain";
    case Block::batch_norm:
        return "BatchNorm";
    case Block::layer_norm:
        return "LayerNorm";
    case Block::residual:
        return "residual";
    case Block::residual_layer_norm:
        return "residual + LN";
    }
    return "";
}

// nn::Linear with PyTorch's default initialization: W and b uniform in ±1/√in.
static nn::Linear default_linear(int in, int out, Rng& rng) {
    nn::Linear layer(in, out, rng);
    const real bound = real(1 / std::sqrt(double(in)));
    layer.W.values() = uniform({in, out}, rng, -bound, bound).values();
    layer.b.values() = uniform({out}, rng, -bound, bound).values();
    return layer;
}

struct DeepMLP {
    Block block;
    nn::Linear input, output;
    std::vector<nn::Linear> hidden;
    std::vector<nn::BatchNorm> batch_norms;
    std::vector<Tensor> ln_gain, ln_bias;

    DeepMLP(Block b, int depth, int width, Rng& rng)
        : block(b), input(default_linear(2, width, rng)), output(default_linear(width, 2, rng)) {
        for (int l = 0; l < depth; ++l) {
            hidden.push_back(default_linear(width, width, rng));
            batch_norms.emplace_back(width);
            ln_gain.push_back(Tensor::full({width}, 1).requires_grad_());
            ln_bias.push_back(Tensor({width}).requires_grad_());
        }
    }

    Tensor operator()(const Tensor& x) {
        Tensor h = relu(input(x));
        for (std::size_t l = 0; l < hidden.size(); ++l) {
            switch (block) {
            case Block::plain:
                h = relu(hidden[l](h));
                break;
            case Block::batch_norm:
                h = relu(batch_norms[l](hidden[l](h)));
                break;
            case Block::layer_norm:
                h = relu(layer_norm(hidden[l](h), ln_gain[l], ln_bias[l]));
                break;
            case Block::residual:
                h = h + relu(hidden[l](h));
                break;
            case Block::residual_layer_norm:
                h = h + relu(hidden[l](layer_norm(h, ln_gain[l], ln_bias[l])));
                break;
            }
        }
        return output(h);
    }

    std::vector<Tensor> parameters() const {
        std::vector<Tensor> p = input.parameters();
        for (std::size_t l = 0; l < hidden.size(); ++l) {
            for (const Tensor& t : hidden[l].parameters()) p.push_back(t);
            if (block == Block::batch_norm)
                for (const Tensor& t : batch_norms[l].parameters()) p.push_back(t);
            if (block == Block::layer_norm || block == Block::residual_layer_norm) {
                p.push_back(ln_gain[l]);
                p.push_back(ln_bias[l]);
            }
        }
        for (const Tensor& t : output.parameters()) p.push_back(t);
        return p;
    }
};

struct MoonsBatch {
    Tensor x;
    std::vector<int> labels;
};

static MoonsBatch moons_batch(int n) {
    Rng rng(3);
    const Moons m = make_moons(n, 0.1, rng);
    MoonsBatch batch{Tensor({n, 2}), {}};
    for (int i = 0; i < n; ++i) {
        batch.x.at({i, 0}) = real(m.x[i][0]);
        batch.x.at({i, 1}) = real(m.x[i][1]);
        batch.labels.push_back(m.y[i] > 0 ? 1 : 0);
    }
    return batch;
}

struct DeepRun {
    std::vector<double> grad_norm_per_layer;   // at step 0
    std::vector<double> loss;
    double accuracy = 0;
};

static DeepRun train_deep(Block block, const MoonsBatch& data) {
    const int depth = 16, width = 32, steps = 150;
    Rng rng(5);   // the same weights for every version
    DeepMLP model(block, depth, width, rng);
    SGD opt(model.parameters(), 0.01, 0.9);
    DeepRun run;
    for (int step = 0; step < steps; ++step) {
        opt.zero_grad();
        const Tensor loss = cross_entropy(model(data.x), data.labels);
        run.loss.push_back(loss.item());
        if (!std::isfinite(run.loss.back())) break;   // diverged
        loss.backward();
        if (step == 0)
            for (const nn::Linear& layer : model.hidden)
                run.grad_norm_per_layer.push_back(grad_norm({layer.W}));
        opt.step();
    }
    for (nn::BatchNorm& bn : model.batch_norms) bn.eval();
    const Tensor logits = model(data.x);
    int correct = 0;
    for (int i = 0; i < logits.dim(0); ++i)
        correct += (logits.at({i, 1}) > logits.at({i, 0})) == (data.labels[i] == 1);
    run.accuracy = double(correct) / logits.dim(0);
    return run;
}

static void deep_network() {
    heading("6. A 16-layer MLP on the two moons: plain, normalized, residual");
    const MoonsBatch data = moons_batch(128);
    const Block blocks[] = {Block::plain, Block::batch_norm, Block::layer_norm, Block::residual,
                            Block::residual_layer_norm};
    std::vector<DeepRun> runs;
    for (Block b : blocks) runs.push_back(train_deep(b, data));

    std::printf("||dL/dW_l|| at step 0, per hidden layer:\n%6s", "layer");
    for (Block b : blocks) std::printf("  %13s", block_name(b));
    std::printf("\n");
    for (int l = 0; l < 16; ++l) {
        std::printf("%6d", l + 1);
        for (const DeepRun& r : runs) std::printf("  %13.2e", r.grad_norm_per_layer[l]);
        std::printf("\n");
    }
    std::printf("\n%-14s  %12s  %12s  %12s  %9s\n", "", "loss step 0", "step 50", "step 150",
                "accuracy");
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const DeepRun& r = runs[k];
        std::printf("%-14s  %12.4f  %12.4f  %12.4f  %8.0f%%\n", block_name(blocks[k]), r.loss[0],
                    r.loss[50], r.loss.back(), 100 * r.accuracy);
    }
    const std::vector<double>& plain = runs[0].grad_norm_per_layer;
    std::printf(
        "\nplain: the gradient vanishes on its way down, from %.1e at layer 16 to %.1e at layer "
        "1:\n  every layer shrinks the backward signal as it shrinks the forward one. The input\n"
        "  barely reaches the logits, the loss stays at ln 2 = 0.6931 and the accuracy at 50%%.\n"
        "BatchNorm and LayerNorm restore the scale at every layer: gradients of order 1 all the\n"
        "  way down, and the network learns. (BatchNorm's grow toward the bottom. LayerNorm,\n"
        "  which normalizes each example over only 32 features, stalls here: loss %.2f, %.0f%%.)\n"
        "residual: h + f(h) passes h on whatever f does, so signal and gradient both arrive;\n"
        "  but every block adds to h, so the logits start large (loss %.2f, not ln 2).\n"
        "residual + LN, the transformer's arrangement, has both: level gradients and a sane\n"
        "  start, and the lowest loss. (Adam, which divides each gradient by its own running\n"
        "  size, would rescue even the plain network; plain SGD shows the problem as it is.)\n",
        plain.back(), plain.front(), runs[2].loss.back(), 100 * runs[2].accuracy, runs[3].loss[0]);

    Plot grads("Gradient norm per layer at step 0 (16-layer MLP)", "hidden layer", "||dL/dW||",
               Scale::log_y);
    std::vector<double> layers;
    for (int l = 1; l <= 16; ++l) layers.push_back(l);
    for (std::size_t k = 0; k < runs.size(); ++k)
        grads.add(block_name(blocks[k]), layers, runs[k].grad_norm_per_layer);
    grads.save("11_gradient_norm_per_layer");
    Plot losses("Training loss, 16-layer MLP, SGD lr 0.01", "step", "loss", Scale::log_y);
    for (std::size_t k = 0; k < runs.size(); ++k) losses.add(block_name(blocks[k]), runs[k].loss);
    losses.save("11_deep_mlp_loss");
}

static void lesson() {
    std::printf("Lesson 11: normalization\n");
    worked_example();
    backward_checks();
    running_statistics();
    batch_of_one();
    layer_and_rms_norm();
    deep_network();
}

// ---- Homework --------------------------------------------------------------------------------

// 11.1  BatchNorm (training mode) of one feature over a batch: with μ and σ² the mean and the
// biased variance (÷ N) of x, return  γ·(x − μ)/√(σ² + ε) + β  for every value.
std::vector<double> batch_norm_feature(const std::vector<double>& x, double gamma, double beta,
                                       double eps) {
    // BEGIN EXERCISE 11.1
    throw not_implemented("11.1");
    // END EXERCISE
}

// 11.2  One update of the running statistics, PyTorch's rule, from a batch of one feature:
//     mean ← (1 − momentum)·mean + momentum·μ_B
//     var  ← (1 − momentum)·var + momentum·(Σ (x − μ_B)²)/(N − 1)
void update_running_statistics(double& running_mean, double& running_var,
                               const std::vector<double>& batch, double momentum) {
    // BEGIN EXERCISE 11.2
    throw not_implemented("11.2");
    // END EXERCISE
}

// 11.3  The backward pass of 11.1 with respect to x: given dy = dL/dy for every value, return
// dL/dx. With x̂ = (x − μ)/√(σ² + ε), ĝ = dy·γ and r = 1/√(σ² + ε):
//     dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))
std::vector<double> batch_norm_feature_backward(const std::vector<double>& x,
                                                const std::vector<double>& dy, double gamma,
                                                double eps) {
    // BEGIN EXERCISE 11.3
    throw not_implemented("11.3");
    // END EXERCISE
}

// The engine's batch_norm on one feature column, for comparison: values, and dL/dx for dy.
static std::vector<double> engine_column(const std::vector<double>& x, double gamma, double beta,
                                         double eps, const std::vector<double>& dy,
                                         std::vector<double>* dx) {
    const int n = int(x.size());
    Tensor xt({n, 1}, std::vector<real>(x.begin(), x.end()));
    xt.requires_grad_();
    const Tensor y =
        batch_norm(xt, Tensor({1}, {real(gamma)}), Tensor({1}, {real(beta)}), real(eps));
    if (dx) {
        y.backward(Tensor({n, 1}, std::vector<real>(dy.begin(), dy.end())));
        dx->assign(xt.grad().begin(), xt.grad().end());
    }
    return std::vector<double>(y.values().begin(), y.values().end());
}

static std::vector<double> random_values(Rng& rng, int n, double scale, double shift) {
    std::vector<double> v(n);
    for (double& x : v) x = shift + scale * rng.normal();
    return v;
}

static int check_homework() {
    Homework hw("11");

    hw.check(
        "11.1", "BatchNorm of one feature",
        "mean and variance with / N; then gamma*(x - mean)/sqrt(var + eps) + beta", [] {
            const std::vector<double> y = batch_norm_feature({2, 1, 3, 4}, 2, 1, 0);
            expect_true("four outputs", y.size() == 4);
            expect_near("y for x = 2 (the text: 0.1056)", y[0], 1 - 1 / std::sqrt(1.25), 1e-12);
            expect_near("y for x = 4", y[3], 1 + 3 / std::sqrt(1.25), 1e-12);
            Rng rng(111);
            for (int n : {2, 5, 33}) {
                const std::vector<double> x = random_values(rng, n, 3, 1);
                const std::vector<double> mine = batch_norm_feature(x, 0.7, -0.2, 1e-5);
                const std::vector<double> engine = engine_column(x, 0.7, -0.2, 1e-5, {}, nullptr);
                for (int i = 0; i < n; ++i)
                    expect_near("against the engine's batch_norm", mine[i], engine[i], 1e-5);
            }
        });

    hw.check("11.2", "running statistics, PyTorch's momentum",
             "mean: keep (1 - momentum) of the old value; var: divide by N - 1", [] {
                 double mean = 0, var = 1;
                 const std::vector<std::vector<double>> batches = {
                     {2, 1, 3, 4}, {3, 3.5, 2.5, 3}, {1, 3, 2, 2}};
                 const double expected[] = {0.25, 0.525, 0.6725};
                 for (int t = 0; t < 3; ++t) {
                     update_running_statistics(mean, var, batches[t], 0.1);
                     expect_near("running mean after batches of mean 2.5, 3.0, 2.0", mean,
                                 expected[t], 1e-12);
                 }
                 expect_near("running variance (unbiased batch variances 5/3, 1/6, 2/3)", var,
                             0.9 * (0.9 * (0.9 + 0.1 * 5.0 / 3) + 0.1 * (0.5 / 3)) +
                                 0.1 * (2.0 / 3),
                             1e-12);
                 Rng rng(112);
                 nn::BatchNorm bn(1, real(0.3));
                 mean = 0;
                 var = 1;
                 for (int t = 0; t < 20; ++t) {
                     const std::vector<double> x = random_values(rng, 8, 2, -1);
                     bn(Tensor({8, 1}, std::vector<real>(x.begin(), x.end())));
                     update_running_statistics(mean, var, x, 0.3);
                 }
                 expect_near("mean against nn::BatchNorm (momentum 0.3, 20 batches)", mean,
                             bn.running_mean[0], 1e-5);
                 expect_near("variance against nn::BatchNorm", var, bn.running_var[0], 1e-5);
             });

    hw.check("11.3", "BatchNorm backward for one feature",
             "the two means remove the shift and the scale; multiply by r last", [] {
                 Rng rng(113);
                 for (int n : {2, 4, 17}) {
                     const std::vector<double> x = random_values(rng, n, 2, 0.5),
                                               dy = random_values(rng, n, 1, 0);
                     const std::vector<double> mine = batch_norm_feature_backward(x, dy, 1.5, 1e-5);
                     std::vector<double> engine;
                     engine_column(x, 1.5, 0, 1e-5, dy, &engine);
                     expect_true("one gradient per value", mine.size() == std::size_t(n));
                     double total = 0;
                     for (int i = 0; i < n; ++i) {
                         expect_near("dx against the engine's backward", mine[i], engine[i], 1e-4);
                         total += mine[i];
                     }
                     expect_near("the gradient sums to 0 over the batch", total, 0.0, 1e-9);
                 }
                 // A constant upstream gradient: y shifts as a whole, which x_hat cannot do.
                 const std::vector<double> flat =
                     batch_norm_feature_backward({1, 5, 2}, {3, 3, 3}, 2, 0);
                 for (double g : flat) expect_near("dy constant -> dx = 0", g, 0.0, 1e-12);
             });

    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
