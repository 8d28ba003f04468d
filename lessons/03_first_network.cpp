// Lesson 03: a first network, trained by gradient descent on the scalar engine.
//
// Training is four steps repeated: forward (compute the loss), zero the gradients, backward
// (dLoss/dθ for every parameter θ), update (θ ← θ − lr·dLoss/dθ). This lesson runs that loop on
// three problems of growing difficulty and then breaks it on purpose:
//
//   1. One neuron learns the AND gate; the same neuron cannot learn XOR.
//   2. A two-layer ReLU network worked by hand, every intermediate, against backward().
//   3. A small MLP learns XOR (loss below 0.01).
//   4. MLP(2, {16, 16, 1}) separates the two moons with micrograd's max-margin loss: 100%.
//   5. What goes wrong without zero_grad: gradients pile up and training never settles.
//
// Everything is deterministic: the Rng of engine.cpp §1.9 gives the same weights on every run.
// Run it:             make lesson N=03        (plots go to build/plots/03_*.svg)
// Grade the homework: make check N=03

#include "lesson.h"

#include <string>
#include <vector>

// The four inputs of a two-input logic gate, and the targets of AND and XOR.
static const double gate_inputs[4][2] = {{0, 0}, {0, 1}, {1, 0}, {1, 1}};
static const double and_targets[4] = {0, 0, 0, 1};
static const double xor_targets[4] = {0, 1, 1, 0};

// ---------------------------------------------------------------------------------------------
// 1. One neuron:  p = σ(w1·x1 + w2·x2 + b),   loss = (1/4)·Σ (p − t)²   over the 4 gate inputs.
// Gradient descent:  θ ← θ − lr·∂loss/∂θ  for θ in {w1, w2, b}.
// A neuron's decision boundary w1·x1 + w2·x2 + b = 0 is a straight line. AND's one positive
// corner can be cut off by a line; XOR's two diagonal corners cannot, and the best the neuron
// can do is answer 0.5 everywhere, a loss of exactly (0.5)² = 0.25.
// ---------------------------------------------------------------------------------------------
struct GateNeuron {
    Value w1, w2, b;
    Value operator()(double x1, double x2) const { return sigmoid(w1 * x1 + w2 * x2 + b); }
    std::vector<Value> parameters() const { return {w1, w2, b}; }
};

static Value gate_neuron_loss(const GateNeuron& neuron, const double targets[4]) {
    Value sum = 0.0;
    for (int i = 0; i < 4; ++i) {
        const Value error = neuron(gate_inputs[i][0], gate_inputs[i][1]) - targets[i];
        sum += error * error;
    }
    return sum / 4.0;
}

// Trains a fresh neuron (weights from N(0, 1), bias 0) on one gate; returns the loss curve.
static std::vector<double> train_gate_neuron(const char* gate, const double targets[4]) {
    Rng rng(42);
    GateNeuron neuron{Value(rng.normal()), Value(rng.normal()), Value(0.0)};
    const std::vector<Value> params = neuron.parameters();
    const double lr = 2.0;
    std::vector<double> curve;
    std::printf("%s:\n%6s  %10s  %8s  %8s  %8s\n", gate, "step", "loss", "w1", "w2", "b");
    for (int step = 0; step <= 500; ++step) {
        const Value loss = gate_neuron_loss(neuron, targets);   // forward
        curve.push_back(loss.data());
        if (step % 100 == 0)
            std::printf("%6d  %10.6f  %8.3f  %8.3f  %8.3f\n", step, loss.data(), neuron.w1.data(),
                        neuron.w2.data(), neuron.b.data());
        if (step == 500) break;   // report the final loss, no update
        zero_grad(params);        // forget the last step's gradients
        loss.backward();          // dloss/dθ into every θ.grad()
        for (const Value& p : params) p.data() -= lr * p.grad();   // step downhill
    }
    std::printf("%8s  %8s  %8s\n", "x1 x2", "target", "p");
    for (int i = 0; i < 4; ++i)
        std::printf("%5g %g  %8g  %8.4f\n", gate_inputs[i][0], gate_inputs[i][1], targets[i],
                    neuron(gate_inputs[i][0], gate_inputs[i][1]).data());
    return curve;
}

static void one_neuron() {
    heading("1. One sigmoid neuron, squared error, gradient descent with lr = 2");
    const std::vector<double> and_curve = train_gate_neuron("AND", and_targets);
    std::printf("\n");
    const std::vector<double> xor_curve = train_gate_neuron("XOR", xor_targets);
    std::printf(
        "\nAND is learned. On XOR the neuron ends at loss %.4f with every answer 0.5:\n"
        "no straight line puts (0,1) and (1,0) on one side and (0,0), (1,1) on the other.\n",
        xor_curve.back());

    Plot plot("One neuron: AND is learnable, XOR is not", "step", "loss", Scale::log_y);
    plot.add("AND", and_curve);
    plot.add("XOR", xor_curve);
    plot.save("03_one_neuron");
}

// ---------------------------------------------------------------------------------------------
// 2. One forward and backward pass of a two-layer network, by hand (the course texts' worked
// example). Input x = (1, 2), target y = 1, hidden layer of 2 ReLU units, linear output:
//     z1 = W1·x + b1      W1 = [[0.1, 0.2], [0.3, 0.4]],  b1 = (0.01, 0.02)    (row i: unit i)
//     a  = relu(z1)
//     z2 = W2·a + b2      W2 = [0.5, 0.6],  b2 = 0.03
//     L  = (z2 − y)²
// Backward, each line the chain rule of the forward line it undoes, last line first:
//     dL/dz2  = 2(z2 − y)
//     dL/dW2j = dL/dz2 · a_j          dL/db2 = dL/dz2
//     dL/da_j = dL/dz2 · W2j
//     dL/dz1j = dL/da_j · [z1j > 0]   (ReLU passes the gradient where it was active)
//     dL/dW1jk = dL/dz1j · x_k        dL/db1j = dL/dz1j
// Then the engine's MLP(2, {2, 1}) with these weights, and backward(): the same numbers.
// ---------------------------------------------------------------------------------------------
static const double hand_x[2] = {1.0, 2.0}, hand_y = 1.0;
static const double hand_W1[2][2] = {{0.1, 0.2}, {0.3, 0.4}}, hand_b1[2] = {0.01, 0.02};
static const double hand_W2[2] = {0.5, 0.6}, hand_b2 = 0.03;

// The gradients of the worked example, in the order of the engine's parameters(): for each
// layer, for each neuron, its weights then its bias.
static std::vector<double> two_layer_by_hand() {
    double z1[2], a[2];
    for (int j = 0; j < 2; ++j) {
        z1[j] = hand_W1[j][0] * hand_x[0] + hand_W1[j][1] * hand_x[1] + hand_b1[j];
        a[j] = std::max(0.0, z1[j]);
    }
    const double z2 = hand_W2[0] * a[0] + hand_W2[1] * a[1] + hand_b2;
    const double L = (z2 - hand_y) * (z2 - hand_y);
    std::printf("forward:   z1 = W1 x + b1 = (%.4f, %.4f)   a = relu(z1) = (%.4f, %.4f)\n", z1[0],
                z1[1], a[0], a[1]);
    std::printf("           z2 = W2 a + b2 = %.4f             L = (z2 - y)^2 = %.6f\n", z2, L);

    const double dz2 = 2 * (z2 - hand_y);
    double da[2], dz1[2];
    for (int j = 0; j < 2; ++j) {
        da[j] = dz2 * hand_W2[j];
        dz1[j] = z1[j] > 0 ? da[j] : 0.0;
    }
    std::printf("backward:  dL/dz2 = 2(z2 - y) = %.4f\n", dz2);
    std::printf("           dL/dW2 = dL/dz2 * a = (%.5f, %.5f)   dL/db2 = %.4f\n", dz2 * a[0],
                dz2 * a[1], dz2);
    std::printf("           dL/da = dL/dz2 * W2 = (%.4f, %.4f)\n", da[0], da[1]);
    std::printf("           dL/dz1 = dL/da * [z1 > 0] = (%.4f, %.4f)   (both units are on)\n",
                dz1[0], dz1[1]);
    std::printf("           dL/dW1 = dL/dz1 x^T = [[%.4f, %.4f], [%.4f, %.4f]]\n",
                dz1[0] * hand_x[0], dz1[0] * hand_x[1], dz1[1] * hand_x[0], dz1[1] * hand_x[1]);
    std::printf("           dL/db1 = dL/dz1 = (%.4f, %.4f)\n", dz1[0], dz1[1]);
    return {dz1[0] * hand_x[0], dz1[0] * hand_x[1], dz1[0],
            dz1[1] * hand_x[0], dz1[1] * hand_x[1], dz1[1],
            dz2 * a[0],         dz2 * a[1],         dz2};
}

// The engine's MLP(2, {2, 1}) (ReLU hidden layer, linear output) with the worked weights.
static MLP two_layer_model() {
    Rng rng(0);   // any seed: every weight is overwritten below
    MLP model(2, {2, 1}, rng, Activation::relu);
    for (int j = 0; j < 2; ++j) {
        Neuron& unit = model.layers[0].neurons[j];
        unit.w[0].data() = hand_W1[j][0];
        unit.w[1].data() = hand_W1[j][1];
        unit.b.data() = hand_b1[j];
    }
    Neuron& out = model.layers[1].neurons[0];
    out.w[0].data() = hand_W2[0];
    out.w[1].data() = hand_W2[1];
    out.b.data() = hand_b2;
    return model;
}

static void two_layer_worked() {
    heading("2. A two-layer ReLU network by hand: x = (1, 2), y = 1, loss (z2 - y)^2");
    const std::vector<double> hand = two_layer_by_hand();

    const MLP model = two_layer_model();
    const Value z2 = model({Value(hand_x[0]), Value(hand_x[1])})[0];
    const Value L = pow(z2 - hand_y, 2);
    L.backward();
    const std::vector<Value> params = model.parameters();
    const char* names[] = {"W1[0][0]", "W1[0][1]", "b1[0]", "W1[1][0]", "W1[1][1]",
                           "b1[1]",    "W2[0]",    "W2[1]", "b2"};
    std::printf("\nThe engine: MLP(2, {2, 1}) with these weights, L = %.6f, then backward():\n",
                L.data());
    std::printf("%-9s  %11s  %11s  %10s\n", "dL/d", "by hand", "backward()", "difference");
    double worst = 0;
    for (std::size_t i = 0; i < params.size(); ++i) {
        const double diff = params[i].grad() - hand[i];
        worst = std::max(worst, std::fabs(diff));
        std::printf("%-9s  %11.6f  %11.6f  %10.1e\n", names[i], hand[i], params[i].grad(), diff);
    }
    std::printf(
        "Largest difference %.1e: backward() does the same multiplications, in the same\n"
        "double precision. Each first-layer weight gets its unit's dL/dz1 times the input\n"
        "it multiplies, so with x = (1, 2) the second column of dL/dW1 is twice the first.\n",
        worst);
}

// ---------------------------------------------------------------------------------------------
// 3. XOR with a hidden layer:  MLP(2, {4, 1}) with tanh hidden units, output y (linear),
//    loss = (1/4)·Σ (y − t)².
// The four hidden units each draw a line; the output combines them, so the boundary can bend.
// (With only 2 hidden units, some seeds stall at a loss near 0.2 however long they train: a
// little extra width makes gradient descent far more reliable.)
// ---------------------------------------------------------------------------------------------
static Value xor_loss(const MLP& model) {
    Value sum = 0.0;
    for (int i = 0; i < 4; ++i) {
        const Value y = model({Value(gate_inputs[i][0]), Value(gate_inputs[i][1])})[0];
        sum += (y - xor_targets[i]) * (y - xor_targets[i]);
    }
    return sum / 4.0;
}

static const int xor_steps = 300;
static const double xor_lr = 0.1;

// Trains `model` on XOR for xor_steps steps of gradient descent. `zero_each_step` is the switch
// that section 5 flips; section 3 leaves it on, as it should be. Returns the loss before each
// step and, as the last entry, the loss after the final step.
static std::vector<double> train_xor(bool zero_each_step, MLP& model) {
    const std::vector<Value> params = model.parameters();
    std::vector<double> curve;
    for (int step = 0; step < xor_steps; ++step) {
        const Value loss = xor_loss(model);
        curve.push_back(loss.data());
        if (zero_each_step) zero_grad(params);
        loss.backward();
        for (const Value& p : params) p.data() -= xor_lr * p.grad();
    }
    curve.push_back(xor_loss(model).data());
    return curve;
}

static void xor_mlp() {
    heading("3. XOR with MLP(2, {4, 1}), tanh hidden units, lr = 0.1");
    Rng rng(42);
    MLP model(2, {4, 1}, rng, Activation::tanh);
    std::printf("%zu parameters (4 hidden neurons with 2 weights + bias, 1 output with 4 + 1)\n\n",
                model.parameters().size());
    const std::vector<double> curve = train_xor(true, model);
    std::printf("%6s  %12s\n", "step", "loss");
    for (int step = 0; step <= xor_steps; step += 25)
        std::printf("%6d  %12.6f\n", step, curve[step]);

    std::printf("\n%8s  %8s  %10s\n", "x1 x2", "target", "y");
    for (int i = 0; i < 4; ++i) {
        const Value y = model({Value(gate_inputs[i][0]), Value(gate_inputs[i][1])})[0];
        std::printf("%5g %g  %8g  %10.5f\n", gate_inputs[i][0], gate_inputs[i][1], xor_targets[i],
                    y.data());
    }
    std::printf("Final loss %.2e after %d steps (the goal was below 0.01).\n", curve.back(),
                xor_steps);
}

// ---------------------------------------------------------------------------------------------
// 4. Two moons with MLP(2, {16, 16, 1}) (ReLU hidden layers, linear output s = score).
// Labels are y = ±1 and the loss is micrograd's demo loss:
//     data loss  = (1/N)·Σᵢ max(0, 1 − yᵢ·sᵢ)        (hinge: zero once yᵢ·sᵢ ≥ 1, a safe margin)
//     reg loss   = 1e-4·Σ_θ θ²                        (L2: keeps the weights small)
// trained by full-batch gradient descent for 100 steps with lr = 1.0 − 0.9·k/100 at step k.
// A point is classified correctly when sᵢ has the sign of yᵢ.
// ---------------------------------------------------------------------------------------------
struct MoonsLoss {
    Value data_loss, reg_loss, total;
    int correct = 0;   // points whose score has the label's sign
};

static MoonsLoss moons_loss(const MLP& model, const Moons& moons) {
    MoonsLoss out;
    Value hinge_sum = 0.0;
    for (std::size_t i = 0; i < moons.x.size(); ++i) {
        const Value score = model({Value(moons.x[i][0]), Value(moons.x[i][1])})[0];
        hinge_sum += relu(1.0 - moons.y[i] * score);
        if ((score.data() > 0) == (moons.y[i] > 0)) ++out.correct;
    }
    out.data_loss = hinge_sum / double(moons.x.size());
    Value squares = 0.0;
    for (const Value& p : model.parameters()) squares += p * p;
    out.reg_loss = 1e-4 * squares;
    out.total = out.data_loss + out.reg_loss;
    return out;
}

// The model's sign on a grid, as text: '.' where it says +1, ' ' where −1; data points drawn as
// 'x' (label +1) and 'o' (label −1). A correct model has every x on dots, every o on blanks.
static void draw_decision_regions(const MLP& model, const Moons& moons) {
    const int cols = 64, rows = 20;
    const double x_lo = -1.5, x_hi = 2.5, y_lo = -1.0, y_hi = 1.5;
    std::vector<std::string> canvas(rows, std::string(cols, ' '));
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            const double x = x_lo + (c + 0.5) * (x_hi - x_lo) / cols;
            const double y = y_hi - (r + 0.5) * (y_hi - y_lo) / rows;   // row 0 at the top
            if (model({Value(x), Value(y)})[0].data() > 0) canvas[r][c] = '.';
        }
    for (std::size_t i = 0; i < moons.x.size(); ++i) {
        const int c = int((moons.x[i][0] - x_lo) / (x_hi - x_lo) * cols);
        const int r = int((y_hi - moons.x[i][1]) / (y_hi - y_lo) * rows);
        if (c >= 0 && c < cols && r >= 0 && r < rows) canvas[r][c] = moons.y[i] > 0 ? 'x' : 'o';
    }
    std::printf("  +%s+\n", std::string(cols, '-').c_str());
    for (const std::string& line : canvas) std::printf("  |%s|\n", line.c_str());
    std::printf("  +%s+\n", std::string(cols, '-').c_str());
    std::printf("  x from %.1f to %.1f, y from %.1f to %.1f\n", x_lo, x_hi, y_lo, y_hi);
}

static void moons_mlp() {
    heading("4. Two moons: MLP(2, {16, 16, 1}), hinge loss + 1e-4 L2, 100 steps of SGD");
    Rng rng(42);
    const Moons moons = make_moons(100, 0.1, rng);   // data first, then weights, from one Rng
    MLP model(2, {16, 16, 1}, rng);
    const std::vector<Value> params = model.parameters();
    const long positives = std::count(moons.y.begin(), moons.y.end(), 1.0);
    std::printf("%zu points (%ld labelled +1, %ld labelled -1), %zu parameters\n\n", moons.x.size(),
                positives, long(moons.x.size()) - positives, params.size());

    std::vector<double> losses, errors;
    std::printf("%6s  %7s  %10s  %10s  %10s  %9s\n", "step", "lr", "data loss", "reg loss", "total",
                "accuracy");
    for (int k = 0; k < 100; ++k) {
        const MoonsLoss loss = moons_loss(model, moons);   // forward
        zero_grad(params);
        loss.total.backward();   // backward
        const double lr = 1.0 - 0.9 * k / 100;
        for (const Value& p : params) p.data() -= lr * p.grad();   // update
        const double accuracy = double(loss.correct) / moons.x.size();
        losses.push_back(loss.total.data());
        errors.push_back(1.0 - accuracy);
        if (k % 10 == 0 || k == 99)
            std::printf("%6d  %7.3f  %10.6f  %10.6f  %10.6f  %8.0f%%\n", k, lr,
                        loss.data_loss.data(), loss.reg_loss.data(), loss.total.data(),
                        100 * accuracy);
    }
    const MoonsLoss final_loss = moons_loss(model, moons);
    int first_perfect = -1;   // the first step from which every later step was at 100%
    for (int k = 99; k >= 0 && errors[k] == 0.0; --k) first_perfect = k;
    std::printf("\nAfter 100 steps: loss %.6f, training accuracy %d/%zu", final_loss.total.data(),
                final_loss.correct, moons.x.size());
    if (first_perfect >= 0) std::printf(" (100%% at every step from step %d on)", first_perfect);
    std::printf("\n\nThe learned regions ('.' = class +1):\n");
    draw_decision_regions(model, moons);

    Plot plot("Two moons: loss and training error", "step", "value");
    plot.add("total loss", losses);
    plot.add("error rate", errors);
    plot.save("03_moons_training");
}

// ---------------------------------------------------------------------------------------------
// 5. Forgetting zero_grad. backward() adds into every leaf's grad (the `+=` of lesson 02), so
// without zeroing, the "gradient" used at step k is the sum of all gradients so far:
//     correct:    θ ← θ − lr·g_k
//     forgotten:  θ ← θ − lr·(g_1 + g_2 + … + g_k)
// Old gradients keep pushing long after they stopped being true. On L = (w − 3)² from w = 0 with
// lr = 0.1 the correct loop gives w_k = 3 − 3·0.8^k; the forgotten one obeys
//     e_{k+1} = 1.8·e_k − e_{k−1}   (e = w − 3),
// whose solutions oscillate with constant amplitude: w swings around 3 forever.
// ---------------------------------------------------------------------------------------------
static void without_zero_grad() {
    heading("5. What goes wrong without zero_grad");

    // 5a. The mechanism: three backward() calls on the same loss, no zeroing in between.
    Value w(3.0, "w");
    const Value square = w * w;   // d(w²)/dw = 2w = 6
    std::printf("L = w^2 at w = 3, dL/dw = 6. Calling backward() repeatedly:\n");
    for (int call = 1; call <= 3; ++call) {
        square.backward();
        std::printf("  after call %d: w.grad() = %g\n", call, w.grad());
    }

    // 5b. Gradient descent on (w − 3)², with and without zeroing.
    std::printf("\nMinimising (w - 3)^2 from w = 0 with lr = 0.1:\n");
    std::printf("%5s  %10s  %12s  %10s  %18s\n", "step", "w (zeroed)", "3 - 3*0.8^k", "w (forgot)",
                "its w.grad() so far");
    Value good(0.0), bad(0.0);
    std::vector<double> good_w;   // w of the zeroed run after k steps
    for (int k = 0; k <= 40; ++k) {
        good_w.push_back(good.data());
        if (k <= 10 || k % 5 == 0)
            std::printf("%5d  %10.5f  %12.5f  %10.5f  %18.5f\n", k, good.data(),
                        3 - 3 * std::pow(0.8, k), bad.data(), bad.grad());
        const Value good_loss = pow(good - 3.0, 2);
        zero_grad({good});
        good_loss.backward();
        good.data() -= 0.1 * good.grad();

        const Value bad_loss = pow(bad - 3.0, 2);
        bad_loss.backward();   // no zero_grad: adds to whatever the last steps left there
        bad.data() -= 0.1 * bad.grad();
    }
    std::printf(
        "The zeroed run converges; the other overshoots, turns back, and overshoots again.\n");

    // A course text tabulates the zeroed run as 1.9221, 2.6510, 2.9575 at steps 5, 10, 20, with
    // losses that are not (w − 3)² of its own w: typed, not run.
    std::printf(
        "\nSome course notes print w = 1.9221, 2.6510, 2.9575 after steps 5, 10, 20 of this\n"
        "run; the correct values are %.5f, %.5f, %.5f, because every step multiplies\n"
        "w - 3 by exactly 1 - 0.1*2 = 0.8, so w_k = 3 - 3*0.8^k. The notes' rows do not even\n"
        "agree with themselves: their loss at step 5 is 1.168928, but (1.9221 - 3)^2 = %.6f.\n",
        good_w[5], good_w[10], good_w[20], (1.9221 - 3) * (1.9221 - 3));

    // 5c. The XOR network of section 3, trained both ways from the same initial weights.
    Rng rng_a(42), rng_b(42);
    MLP zeroed(2, {4, 1}, rng_a, Activation::tanh), forgot(2, {4, 1}, rng_b, Activation::tanh);
    const std::vector<double> good_curve = train_xor(true, zeroed);
    const std::vector<double> bad_curve = train_xor(false, forgot);
    std::printf("\nXOR, MLP(2, {4, 1}), lr = 0.1, same initial weights:\n");
    std::printf("%6s  %14s  %14s\n", "step", "loss (zeroed)", "loss (forgot)");
    for (int step = 0; step <= xor_steps; step += 20)
        std::printf("%6d  %14.6f  %14.6f\n", step, good_curve[step], bad_curve[step]);
    std::printf("Without zero_grad the loss lurches up and down instead of settling: every step\n"
                "still carries the pushes of all the steps before it.\n");

    Plot plot("XOR training with and without zero_grad", "step", "loss", Scale::log_y);
    plot.add("zero_grad each step", good_curve);
    plot.add("zero_grad forgotten", bad_curve);
    plot.save("03_zero_grad");
}

static void lesson() {
    std::printf("Lesson 03: a first network, trained with the scalar engine\n");
    one_neuron();
    two_layer_worked();
    xor_mlp();
    moons_mlp();
    without_zero_grad();
}

// ---- Homework --------------------------------------------------------------------------------

// 03.1  Mean squared error as a Value, so backward() can differentiate it:
//     L = (1/n)·Σᵢ (predᵢ − targetᵢ)².
// Throw std::invalid_argument if the two vectors differ in length or are empty.
Value mse_loss(const std::vector<Value>& pred, const std::vector<double>& target) {
    // BEGIN EXERCISE 03.1
    throw not_implemented("03.1");
    // END EXERCISE
}

// 03.2  One step of stochastic gradient descent, after backward() has filled the gradients:
// for every parameter p, p.data ← p.data − lr·p.grad, then set p.grad to 0 so that the next
// backward() starts from a clean slate (section 5 shows what happens otherwise).
void sgd_step(const std::vector<Value>& params, double lr) {
    // BEGIN EXERCISE 03.2
    throw not_implemented("03.2");
    // END EXERCISE
}

// 03.3  Classification accuracy: the fraction of points i for which the model's predicted label
// equals data.y[i]. The predicted label is +1 when the score model(xᵢ)[0] is > 0, and −1
// otherwise (a score of exactly 0 counts as −1). Throw std::invalid_argument if data is empty.
double accuracy(const MLP& model, const Moons& data) {
    // BEGIN EXERCISE 03.3
    throw not_implemented("03.3");
    // END EXERCISE
}

// 03.4  Binary cross-entropy on raw scores (logits), the usual loss for yes/no outputs:
//     pᵢ = σ(scoreᵢ),   L = −(1/n)·Σᵢ [tᵢ·log pᵢ + (1 − tᵢ)·log(1 − pᵢ)],   tᵢ in [0, 1].
// Build it from Values (sigmoid, log, arithmetic) so backward() works. Then look at what
// backward() gives for dL/dscoreᵢ: the check compares it with (pᵢ − tᵢ)/n.
// Throw std::invalid_argument if the two vectors differ in length or are empty.
Value bce_with_logits(const std::vector<Value>& scores, const std::vector<double>& targets) {
    // BEGIN EXERCISE 03.4
    throw not_implemented("03.4");
    // END EXERCISE
}

static int check_homework() {
    Homework hw("03");

    hw.check("03.1", "mean squared error as a Value",
             "L = (1/n)·Σ_i (p_i − t_i)² built from Value operations, "
             "so that backward() gives ∂L/∂p_i = 2(p_i − t_i)/n",
             [] {
                 const std::vector<Value> pred = {Value(0.5), Value(-1.0), Value(2.0)};
                 const Value L = mse_loss(pred, {1.0, 0.0, 2.5});
                 // (0.25 + 1 + 0.25) / 3
                 expect_near("loss", L.data(), 0.5, 1e-12);
                 L.backward();
                 expect_near("dL/dpred[0] = 2(0.5 - 1)/3", pred[0].grad(), -1.0 / 3, 1e-12);
                 expect_near("dL/dpred[1] = 2(-1 - 0)/3", pred[1].grad(), -2.0 / 3, 1e-12);
                 expect_near("dL/dpred[2] = 2(2 - 2.5)/3", pred[2].grad(), -1.0 / 3, 1e-12);
                 expect_true("lengths 1 and 2 throw std::invalid_argument",
                             throws_invalid_argument([] {
                                 mse_loss({Value(1.0)}, {1.0, 2.0});
                             }));
                 expect_true("empty input throws std::invalid_argument",
                             throws_invalid_argument([] { mse_loss(std::vector<Value>{}, {}); }));
             });

    hw.check("03.2", "one SGD step: data -= lr * grad, then zero the grad",
             "gradient descent moves each parameter against its gradient, θ ← θ − lr·∂L/∂θ; "
             "backward() adds into .grad, so reset it to 0 after the step",
             [] {
                 Value a(1.0), b(-2.0);
                 a.grad() = 0.5;
                 b.grad() = -4.0;
                 sgd_step({a, b}, 0.1);
                 expect_near("a after the step: 1 - 0.1*0.5", a.data(), 0.95, 1e-12);
                 expect_near("b after the step: -2 - 0.1*(-4)", b.data(), -1.6, 1e-12);
                 expect_near("a's grad is zeroed", a.grad(), 0.0, 0.0);
                 expect_near("b's grad is zeroed", b.grad(), 0.0, 0.0);

                 // 20 steps on (w − 3)² from w = 0 with lr = 0.1: w_k = 3 − 3·0.8^k exactly
                 // (each step multiplies w − 3 by 1 − 0.1·2). Only right if grads are zeroed.
                 Value w(0.0);
                 for (int k = 0; k < 20; ++k) {
                     pow(w - 3.0, 2).backward();
                     sgd_step({w}, 0.1);
                 }
                 expect_near("w after 20 steps on (w - 3)^2", w.data(), 3 - 3 * std::pow(0.8, 20),
                             1e-12);
             });

    hw.check("03.3", "accuracy of a classifier on a dataset",
             "accuracy = #{i : ŷ_i = y_i} / n with ŷ_i = sign(score_i), "
             "a score of exactly 0 counting as −1",
             [] {
                 // One linear neuron with weights set by hand: score = x0 − 0.5.
                 Rng rng(1);
                 MLP model(2, {1}, rng);
                 Neuron& n = model.layers[0].neurons[0];
                 n.w[0].data() = 1.0;
                 n.w[1].data() = 0.0;
                 n.b.data() = -0.5;
                 Moons data;
                 // scores: −0.3 (says −1), 0.3 (+1), −3.5 (−1), 0 (exactly 0: says −1)
                 data.x = {{0.2, 5.0}, {0.8, -1.0}, {-3.0, 0.0}, {0.5, 0.0}};
                 data.y = {-1, +1, +1, -1};   // the third is wrong: 3 of 4 correct
                 expect_near("3 of 4 correct", accuracy(model, data), 0.75, 1e-12);
                 data.y = {+1, -1, -1, +1};   // now only the third is right
                 expect_near("1 of 4 correct", accuracy(model, data), 0.25, 1e-12);
                 expect_true("an empty dataset throws std::invalid_argument",
                             throws_invalid_argument([&] { accuracy(model, Moons{}); }));
             });

    hw.check("03.4", "binary cross-entropy on logits, and its gradient p - t",
             "L = −(1/n)·Σ_i [t_i·log σ(s_i) + (1 − t_i)·log(1 − σ(s_i))] from Value operations; "
             "backward() should then give ∂L/∂s_i = (σ(s_i) − t_i)/n",
             [] {
                 const std::vector<double> s = {-2.0, 0.5, 3.0, 0.0}, t = {0.0, 1.0, 1.0, 0.3};
                 std::vector<Value> scores(s.begin(), s.end());
                 const Value L = bce_with_logits(scores, t);
                 // Each term in closed form:
                 //     −[t·log σ(s) + (1 − t)·log(1 − σ(s))] = log(1 + eˢ) − t·s
                 double truth = 0;
                 for (std::size_t i = 0; i < s.size(); ++i)
                     truth += std::log1p(std::exp(s[i])) - t[i] * s[i];
                 expect_near("loss", L.data(), truth / s.size(), 1e-12);
                 L.backward();
                 for (std::size_t i = 0; i < s.size(); ++i) {
                     const double p = 1.0 / (1.0 + std::exp(-s[i]));
                     expect_near("dL/dscore_i = (p_i - t_i)/n", scores[i].grad(),
                                 (p - t[i]) / s.size(), 1e-12);
                 }
                 expect_true("lengths 2 and 1 throw std::invalid_argument",
                             throws_invalid_argument([] {
                                 bce_with_logits({Value(1.0), Value(2.0)}, {1.0});
                             }));
             });

    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
