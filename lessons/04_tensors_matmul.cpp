// Lesson 04: tensors, and the backward pass of a matrix product.
//
// From here on the engine computes on tensors: one graph node holds a whole array of numbers,
// and a whole layer is one op. The most important op is the matrix product Z = X·W, and its
// backward pass is two more matrix products:
//
//     dX = dZ·Wᵀ        dW = Xᵀ·dZ        (d· means dL/d· for the scalar loss L)
//
// This lesson works through that on real numbers:
//
//   1. A tensor is a flat array plus a shape; row-major layout decides where (i, j) lives.
//   2. The worked example: X (2×3) times W (3×2) gives Z = [[4, 5], [10, 11]]; then ReLU.
//   3. Backward with an upstream gradient: dX and dW by formula, by backward(), and by
//      finite differences, entry by entry.
//   4. The bias: broadcast to every row going forward, summed over the rows going back.
//   5. A gradient has the shape of its parameter: Linear(768, 3072) on a batch of 32.
//   6. Counting the cost: 2·M·K·N flops per product, three products per layer per step.
//   7. Finite differences in float: how close they can get (a plot), and why the tests build
//      the engine in double precision.
//   8. In-place writes: backward() reads what the forward pass left, so it checks that none of
//      it was written over in between.
//
// Run it:             make lesson N=04        (the plot goes to build/plots/04_*.svg)
// Grade the homework: make check N=04

#include "lesson.h"

#include <functional>
#include <string>
#include <vector>

// Prints a rows×cols block of row-major numbers (a tensor's values or its grad), indented.
static void print_matrix(const char* name, const std::vector<real>& v, int rows, int cols) {
    for (int i = 0; i < rows; ++i) {
        std::printf("  %-12s [", i == 0 ? name : "");
        for (int j = 0; j < cols; ++j)
            std::printf("%s%7.3g", j ? " " : "", double(v[i * cols + j]));
        std::printf(" ]\n");
    }
}
static void print_matrix(const char* name, const Tensor& t) {
    print_matrix(name, t.values(), t.dim(0), t.dim(1));
}

// dL/d(element i of t) by central differences: move that one stored number by ±h, rerun the
// forward pass `loss`, put it back. In float, (x + h) − (x − h) is not exactly 2h, so we divide
// by the step that was actually taken.
static double central_difference_at(const Tensor& t, std::size_t i,
                                    const std::function<double()>& loss, double h) {
    real& x = t.values()[i];
    const real saved = x, up = real(saved + h), down = real(saved - h);
    x = up;
    const double loss_up = loss();
    x = down;
    const double loss_down = loss();
    x = saved;
    return (loss_up - loss_down) / (double(up) - double(down));
}

// The worked example of the course text, used by sections 2–4 and by the homework checks.
static Tensor example_X() { return Tensor({2, 3}, {1, 2, 3, 4, 5, 6}); }
static Tensor example_W() { return Tensor({3, 2}, {1, 0, 0, 1, 1, 1}); }
// An upstream gradient dL/dA for A = ReLU(X·W), chosen by us: as if the layers above had
// handed it down. Any numbers would do.
static Tensor example_upstream() { return Tensor({2, 2}, {1, -1, 0.5, 2}); }

// ---------------------------------------------------------------------------------------------
// 1. Row-major layout. A tensor of shape [R, C] stores its R·C numbers in one flat array, row
// after row:
//     element (i, j)     lives at  offset = i·C + j
//     element (i, j, k)  of [A, B, C] lives at  (i·B + j)·C + k
// The last axis is contiguous. reshape keeps the flat array and changes the shape; transpose
// must move the numbers, because the new rows are the old columns.
// ---------------------------------------------------------------------------------------------
static void layout() {
    heading("1. A tensor is a flat array plus a shape (row-major)");
    const Tensor X = example_X();
    std::printf("X: shape %s, rank %d, %zu elements\n  %s\n\n", shape_str(X.shape()).c_str(),
                X.rank(), X.numel(), X.str().c_str());
    std::printf("%8s  %12s  %14s  %10s\n", "(i, j)", "i*3 + j", "values()[off]", "at({i,j})");
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j)
            std::printf("  (%d, %d)  %12d  %14g  %10g\n", i, j, i * 3 + j,
                        double(X.values()[i * 3 + j]), double(X.at({i, j})));

    std::printf("\nSame numbers, other shapes:\n");
    std::printf("  reshape to [3, 2]:  %s\n", reshape(X, {3, 2}).str().c_str());
    std::printf("  reshape to [6]:     %s\n", reshape(X, {6}).str().c_str());
    std::printf("  transpose [3, 2]:   %s   (the numbers moved)\n", transpose(X).str().c_str());

    // Three axes: the flat offset of (1, 2, 3) in a [2, 3, 4] tensor holding 0, 1, 2, ...
    Tensor T({2, 3, 4});
    for (std::size_t k = 0; k < T.numel(); ++k) T.values()[k] = real(k);
    std::printf("\nA [2, 3, 4] tensor holding 0, 1, ..., 23: element (1, 0, 2) is at offset "
                "(1*3 + 0)*4 + 2 = %d,\nand at({1, 0, 2}) = %g. One step along an axis skips "
                "12, 4 or 1 numbers (its stride).\n",
                (1 * 3 + 0) * 4 + 2, double(T.at({1, 0, 2})));
}

// ---------------------------------------------------------------------------------------------
// 2. The forward pass of the worked example:  Z = X·W,  A = ReLU(Z).
//     Z[i][j] = Σ_k X[i][k]·W[k][j]      (row i of X dotted with column j of W)
// [2, 3]·[3, 2] = [2, 2]: the inner sizes (3) must agree and disappear.
// ---------------------------------------------------------------------------------------------
static void forward_example() {
    heading("2. Forward: Z = X*W for X = [[1,2,3],[4,5,6]], W = [[1,0],[0,1],[1,1]]");
    const Tensor X = example_X(), W = example_W();
    const Tensor Z = matmul(X, W), A = relu(Z);
    print_matrix("X", X);
    print_matrix("W", W);
    std::printf("\n%8s  %-28s  %6s\n", "Z[i][j]", "sum_k X[i][k]*W[k][j]", "value");
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) {
            std::string terms;
            for (int k = 0; k < 3; ++k)
                terms += (k ? " + " : "") + std::to_string(int(X.at({i, k}))) + "*" +
                         std::to_string(int(W.at({k, j})));
            std::printf("  Z[%d][%d]  %-28s  %6g\n", i, j, terms.c_str(), double(Z.at({i, j})));
        }
    std::printf("\n");
    print_matrix("A = ReLU(Z)", A);
    std::printf(
        "Every Z is positive, so the ReLU passes everything: its mask 1[Z > 0] is all ones.\n");
}

// ---------------------------------------------------------------------------------------------
// 3. The backward pass. Say the layers above hand us G = dL/dA. (We make it concrete with the
// loss L = Σ G ⊙ A, whose gradient with respect to A is exactly G.) Then, in reverse order:
//     A = ReLU(Z)   →  dZ = G ⊙ 1[Z > 0]
//     Z = X·W       →  dX = dZ·Wᵀ   [2,2]·[2,3] = [2,3]       dW = Xᵀ·dZ   [3,2]·[2,2] = [3,2]
// If you forget where the transpose goes, match the shapes: only one product comes out right.
// We compute each gradient three ways: the formula (with the engine's forward ops), backward(),
// and central differences on L.
// ---------------------------------------------------------------------------------------------

// One table row per element: name, formula, backward(), central difference.
static void compare_gradients(const char* name, const Tensor& param, const Tensor& formula,
                              const std::function<double()>& loss) {
    const int cols = param.dim(1);
    for (std::size_t i = 0; i < param.numel(); ++i) {
        char label[64];
        std::snprintf(label, sizeof label, "%s[%zu][%zu]", name, i / cols, i % cols);
        std::printf("  %-8s  %9.4f  %11.4f  %13.5f\n", label, double(formula.values()[i]),
                    double(param.grad()[i]), central_difference_at(param, i, loss, 1e-2));
    }
}

static void backward_example() {
    heading("3. Backward: dZ = G * 1[Z > 0], dX = dZ*W^T, dW = X^T*dZ");
    Tensor X = example_X(), W = example_W();
    X.requires_grad_();
    W.requires_grad_();
    const Tensor G = example_upstream();
    const Tensor Z = matmul(X, W), A = relu(Z);
    A.backward(G);   // seed dL/dA = G and run the chain rule down to X and W

    // The formula, step by step, with forward ops on plain (non-parameter) tensors.
    Tensor mask(Z.shape());
    for (std::size_t i = 0; i < mask.numel(); ++i) mask.values()[i] = Z.values()[i] > 0 ? 1 : 0;
    const Tensor Xc = X.detach(), Wc = W.detach();
    const Tensor dZ = G * mask;
    const Tensor dX = matmul(dZ, transpose(Wc)), dW = matmul(transpose(Xc), dZ);
    print_matrix("G = dL/dA", G);
    print_matrix("1[Z > 0]", mask);
    print_matrix("dZ", dZ);
    std::printf("\n");
    print_matrix("dX = dZ*W^T", dX);
    print_matrix("dW = X^T*dZ", dW);

    auto loss = [&] { return double(sum(G * relu(matmul(X, W))).item()); };
    std::printf("\n  %-8s  %9s  %11s  %13s\n", "", "formula", "backward()", "central diff");
    compare_gradients("dX", X, dX, loss);
    compare_gradients("dW", W, dW, loss);
    std::printf("All three agree. (The central differences, h = 0.01 in float, agree to about\n"
                "1e-4: section 7 shows why.) Read dW = X^T*dZ as a sum over the batch:\n"
                "dW[k][j] = sum_i X[i][k]*dZ[i][j], one term per example row,\n"
                "e.g. dW[0][1] = 1*(-1) + 4*2 = 7.\n");
}

// ---------------------------------------------------------------------------------------------
// 4. The bias. Y = X·W + b with b of shape [N] is broadcast: the same b is added to each of the
// B rows. So b is used B times, and (the `+=` of lesson 02) its gradient collects one term per
// use:
//     db[j] = Σ_i dY[i][j]          a sum over the batch rows, not a mean
// (if the loss is a mean over the batch, the 1/B is already inside dY). A ReLU after the sum
// zeroes the rows' terms where the unit was off.
// ---------------------------------------------------------------------------------------------
static void bias_example() {
    heading("4. The bias: db = sum over the batch rows of dY");
    const Tensor X = example_X(), G = example_upstream();
    Tensor W = example_W();
    W.requires_grad_();

    // 4a. No activation: Y = X·W + b, dL/dY = G.
    Tensor b({2}, {0.5, -0.5});
    b.requires_grad_();
    (matmul(X, W) + b).backward(G);
    std::printf("Y = X*W + b, b = [0.5, -0.5], upstream dL/dY = G:\n");
    print_matrix("G", G);
    print_matrix("sum(G, 0)", sum(G, 0).values(), 1, 2);
    print_matrix("b.grad()", b.grad(), 1, 2);
    std::printf("Column sums of G: 1 + 0.5 = 1.5 and -1 + 2 = 1, one term per row of the batch.\n");

    // 4b. With a ReLU and b = [−5, 0]: Z[0][0] = 4 − 5 = −1 < 0, so that unit is off for row 0.
    Tensor b2({2}, {-5, 0});
    b2.requires_grad_();
    W.zero_grad();
    const Tensor Z = matmul(X, W) + b2;
    relu(Z).backward(G);
    std::printf("\nWith b = [-5, 0] and a ReLU, A = ReLU(X*W + b):\n");
    print_matrix("Z", Z);
    print_matrix("db", b2.grad(), 1, 2);
    print_matrix("dW", W.grad(), 3, 2);
    std::printf("Row 0's unit 0 is off (Z = -1), so its upstream 1 never arrives: db[0] = 0 + 0.5\n"
                "instead of 1.5, and dW's column 0 loses row 0's share: [2, 2.5, 3] instead of\n"
                "[3, 4.5, 6].\n");
}

// ---------------------------------------------------------------------------------------------
// 5. Shapes. Every gradient has exactly the shape of the tensor it belongs to: dW = Xᵀ·dY is
// [in, B]·[B, out] = [in, out]. The batch size B is summed away, so a bigger batch gives a
// better estimate of the same-shaped gradient, not a bigger gradient.
// ---------------------------------------------------------------------------------------------
static void gradient_shapes() {
    heading("5. A gradient has its parameter's shape: Linear(768, 3072), batch 32");
    Rng rng(4);
    nn::Linear layer(768, 3072, rng);
    const Tensor X = randn({32, 768}, rng);
    const Tensor Y = layer(X);
    mean(Y).backward();
    std::printf("%-6s  %-12s  %12s  %-12s  %12s\n", "tensor", "shape", "elements", "grad shape",
                "grad elems");
    auto row = [](const char* name, const Tensor& t) {
        const std::string grad_shape = t.grad().empty() ? "(none)" : shape_str(t.shape());
        std::printf("%-6s  %-12s  %12zu  %-12s  %12zu\n", name, shape_str(t.shape()).c_str(),
                    t.numel(), grad_shape.c_str(), t.grad().size());
    };
    row("X", X);
    row("W", layer.W);
    row("b", layer.b);
    row("Y", Y);
    std::printf("(X is data, not a parameter: no gradient is computed for it.)\n");

    // One transformer layer at d = 768: four [d, d] attention matrices and a [d, 4d], [4d, d] MLP.
    const long d = 768;
    const long attention = 4 * d * d, mlp = 2 * d * 4 * d;
    std::printf("\nOne transformer layer, d = 768: W_Q, W_K, W_V, W_O are [768, 768], the MLP has\n"
                "[768, 3072] and [3072, 768]. Gradient elements per backward pass:\n");
    std::printf("  %-24s  %12ld\n  %-24s  %12ld\n  %-24s  %12ld\n", "attention 4 x 768^2",
                attention, "MLP 2 x 768 x 3072", mlp, "total (= parameters)", attention + mlp);

    // What backward needs to keep: dW = Xᵀ·dY needs the layer's input X.
    const double bytes = 32.0 * 512 * 768 * 4;
    std::printf(
        "\nTo compute dW = X^T*dY later, the forward pass must keep X. For batch 32 of\n"
        "512 tokens, X is [16384, 768] floats: %.0f bytes = %.1f MB (%.0f MiB), per layer.\n",
        bytes, bytes / 1e6, bytes / (1 << 20));
}

// ---------------------------------------------------------------------------------------------
// 6. Cost. Each of the M·N outputs of [M, K]·[K, N] is a dot product of length K: K multiplies
// and K adds, so 2·M·K·N floating-point operations (flops). Backward does two products of the
// same size (dX and dW), so a training step of a linear layer costs 3× its forward pass:
// 2 + 4 = 6 flops per parameter per example row (per token, in a language model).
// ---------------------------------------------------------------------------------------------
static double matmul_flops(double M, double K, double N) { return 2 * M * K * N; }

static void flop_count() {
    heading("6. Cost: 2*M*K*N flops per matrix product, x3 for a training step");
    // Count the operations of the textbook triple loop, to see where 2·M·K·N comes from.
    const int M = 2, K = 3, N = 2;
    long multiplies = 0, adds = 0;
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j)
            for (int k = 0; k < K; ++k) {   // s += X[i][k]·W[k][j]: one multiply, one add
                ++multiplies;
                ++adds;
            }
    std::printf("The worked example [2,3]*[3,2], counted in a loop: %ld multiplies + %ld adds = %ld"
                " = 2*2*3*2\n\n",
                multiplies, adds, multiplies + adds);

    struct Case {
        const char* name;
        double M, K, N;
    };
    const Case cases[] = {{"worked example", 2, 3, 2},
                          {"Linear(768,3072), B=32", 32, 768, 3072},
                          {"same, 32 x 512 tokens", 32 * 512, 768, 3072}};
    std::printf("%-24s  %14s  %16s  %14s\n", "product [M,K]*[K,N]", "forward", "backward dX+dW",
                "training step");
    for (const Case& c : cases) {
        const double f = matmul_flops(c.M, c.K, c.N);
        std::printf("%-24s  %14.4g  %16.4g  %14.4g\n", c.name, f, 2 * f, 3 * f);
    }
    // The 6-flops rule scaled up: N parameters trained on D tokens cost about 6·N·D flops.
    const double params = 125e6, tokens = 10e9;
    std::printf(
        "\nSo training costs about 6 flops per parameter per token: a 125M-parameter model\n"
        "on 10B tokens needs 6 * 125e6 * 10e9 = %.2g flops.\n",
        6 * params * tokens);
}

// ---------------------------------------------------------------------------------------------
// 7. How good are finite differences in float? Lesson 01 measured the central difference in
// double precision: error ≈ h²·|f'''|/6 + ε·|f|/h with ε = 2.2e-16, best near h = 1e-5, good to
// about 1e-10. The engine computes in float, ε = 1.2e-7: the rounding term is half a billion
// times larger, the best h moves up to about 1e-2 (it grows like ε^(1/3)), and the best error
// to roughly 1e-5 (like ε^(2/3)). That is why tests.cpp builds the engine with -DENGINE_DOUBLE,
// and why section 3's differences agree only to about 1e-4.
// ---------------------------------------------------------------------------------------------
static void float_differences() {
    heading("7. Central differences in float: error against h");
    Rng rng(7);
    const Tensor X = randn({4, 5}, rng), G = randn({4, 3}, rng);
    Tensor W = randn({5, 3}, rng, 0.5);
    W.requires_grad_();
    auto loss = [&] { return double(sum(G * tanh(matmul(X, W))).item()); };   // curved in W
    const Tensor L = sum(G * tanh(matmul(X, W)));
    L.backward();
    const double exact = W.grad()[0];   // backward()'s float rounding is ~1e-7, far below the rest
    const double eps = 1.1920929e-7;    // float's machine epsilon, 2^-23

    std::vector<double> hs, errors, rounding;
    for (int j = 0; j <= 24; ++j) hs.push_back(std::pow(10.0, -0.25 * j));   // 1 down to 1e-6
    for (double h : hs) {
        errors.push_back(std::fabs(central_difference_at(W, 0, loss, h) - exact));
        rounding.push_back(eps * std::fabs(L.item()) / h);
    }
    std::printf("dL/dW[0][0] for L = sum(G * tanh(X*W)), random X [4,5], W [5,3]: backward() says "
                "%.6f\n\n",
                exact);
    std::printf("%10s  %14s  %16s\n", "h", "|error|", "eps_float*|L|/h");
    for (std::size_t k = 0; k < hs.size(); k += 4)
        std::printf("%10.0e  %14.3e  %16.3e\n", hs[k], errors[k], rounding[k]);
    std::size_t best = 0;
    for (std::size_t k = 1; k < hs.size(); ++k)
        if (errors[k] < errors[best]) best = k;
    std::printf(
        "Smallest error %.1e at h = %.1e. Below that, rounding (the eps/h line) dominates.\n",
        errors[best], hs[best]);

    Plot plot("Central difference of a matmul gradient, in float", "step h", "|error|",
              Scale::log_log);
    plot.add("measured", hs, errors);
    plot.add("eps_float*|L|/h", hs, rounding);
    plot.save("04_float_differences");
}

// ---------------------------------------------------------------------------------------------
// 8. In-place writes. backward() reads numbers the forward pass left behind: the backward of
// Z = X·W needs X (dW = Xᵀ·dZ) and W (dX = dZ·Wᵀ). Write over W between the two and the backward
// would mix the old forward with the new W. Example: x = [1, 2], w = [3, 4], L = Σ xᵢ·wᵢ = 11.
// The right dL/dx is the w that L was computed with, [3, 4]; write w = [30, 40] in place before
// backward() and an engine that did not notice would answer [30, 40]. Every tensor counts its
// in-place writes (engine.cpp §2.1), and backward() refuses instead, naming the op. The usual way
// to meet this: calling backward() again on an old loss after opt.step() changed the weights.
// An op whose backward reads none of its inputs (a + b: both Jacobians are 1) does not mind.
// ---------------------------------------------------------------------------------------------
static void in_place_writes() {
    heading("8. In-place writes: backward() checks that what it reads was not written over");
    const Tensor x = Tensor({2}, {1, 2}).requires_grad_(), w = Tensor({2}, {3, 4}).requires_grad_();
    const Tensor loss = sum(x * w);
    std::printf("L = sum(x * w) = %g with x = [1, 2], w = [3, 4]; the right dL/dx is w = [3, 4].\n",
                loss.item());
    w.values() = {30, 40};
    std::printf(
        "Now w.values() = {30, 40}, in place. The backward of * would read w = [30, 40].\n");
    try {
        loss.backward();
        std::printf("backward() ran: dL/dx = [%g, %g]\n", x.grad()[0], x.grad()[1]);
    } catch (const std::invalid_argument& e) {
        std::printf("backward() refused:\n  %s\n", e.what());
    }
    const Tensor a = Tensor({2}, {1, 2}).requires_grad_(), b = Tensor({2}, {3, 4}).requires_grad_();
    const Tensor s = a + b;
    a.values() = {10, 20};
    s.backward(Tensor({2}, {1, 1}));
    std::printf("s = a + b, then a written in place: backward() runs, dL/da = [%g, %g]: the sum's\n"
                "backward reads no input, so nothing it needs has changed.\n",
                a.grad()[0], a.grad()[1]);
}

static void lesson() {
    std::printf("Lesson 04: tensors, and the backward pass of a matrix product\n");
    layout();
    forward_example();
    backward_example();
    bias_example();
    gradient_shapes();
    flop_count();
    float_differences();
    in_place_writes();
}

// ---- Homework --------------------------------------------------------------------------------

// 04.1  A matrix product with three loops. A is [M, K], B is [K, N], both row-major; return the
// [M, N] tensor C with C[i][j] = Σ_k A[i][k]·B[k][j]. Read the numbers with values() and the
// offsets of section 1 (A[i][k] is A.values()[i·K + k]). Throw std::invalid_argument unless
// both are 2-D and the inner sizes agree.
Tensor matmul_loops(const Tensor& A, const Tensor& B) {
    // BEGIN EXERCISE 04.1
    throw not_implemented("04.1");
    // END EXERCISE
}

// 04.2  The backward pass of Z = X·W. Given X [M, K], W [K, N] and the upstream gradient
// dZ = dL/dZ [M, N], return dX = dZ·Wᵀ [M, K] and dW = Xᵀ·dZ [K, N]. Write the sums out with
// loops (no matmul or transpose): dX[i][k] = Σ_j dZ[i][j]·W[k][j], dW[k][j] = Σ_i X[i][k]·dZ[i][j].
struct MatmulGrads {
    Tensor dX, dW;
};
MatmulGrads matmul_backward(const Tensor& X, const Tensor& W, const Tensor& dZ) {
    // BEGIN EXERCISE 04.2
    throw not_implemented("04.2");
    // END EXERCISE
}

// 04.3  The bias gradient. Y = X·W + b adds b [N] to every row of Y [B, N]. Given dY [B, N],
// return db [N] with db[j] = Σ_i dY[i][j].
Tensor bias_grad(const Tensor& dY) {
    // BEGIN EXERCISE 04.3
    throw not_implemented("04.3");
    // END EXERCISE
}

// Every element of `got` within `tolerance` of `expected`, and the same shape.
static void expect_tensor_near(const char* what, const Tensor& got, const Tensor& expected,
                               double tolerance) {
    expect_true((std::string(what) + ": shape " + shape_str(expected.shape())).c_str(),
                got.defined() && got.shape() == expected.shape());
    for (std::size_t i = 0; i < expected.numel(); ++i)
        expect_near(what, got.values()[i], expected.values()[i], tolerance);
}

// 04.4  An SGD step that autograd can see. For every parameter p that has a gradient, set its
// numbers to p − lr·dL/dp by assigning the whole new vector at once (p.values() = updated): a
// whole assignment counts as an in-place write (section 8), so a graph built from the old numbers
// can no longer be differentiated by mistake. A parameter without a gradient stays as it is.
// (Writing p.values()[i] one element at a time changes the same numbers, behind autograd's back.)
void sgd_step_seen_by_autograd(const std::vector<Tensor>& params, double lr) {
    // BEGIN EXERCISE 04.4
    throw not_implemented("04.4");
    // END EXERCISE
}

static int check_homework() {
    Homework hw("04");

    hw.check(
        "04.1", "a matrix product with three loops",
        "C_ij = Σ_k A_ik·B_kj; row-major, entry (r, c) of a matrix with n columns is at offset r·n "
        "+ c; the inner sizes must agree",
        [] {
            expect_tensor_near("worked example X*W", matmul_loops(example_X(), example_W()),
                               Tensor({2, 2}, {4, 5, 10, 11}), 0);
            // Random shapes, against the engine's matmul.
            Rng rng(41);
            const int shapes[][3] = {{3, 4, 5}, {1, 7, 1}, {6, 1, 3}, {5, 8, 2}};
            for (const auto& s : shapes) {
                const Tensor A = randn({s[0], s[1]}, rng), B = randn({s[1], s[2]}, rng);
                expect_tensor_near("random product vs engine matmul", matmul_loops(A, B),
                                   matmul(A, B), 1e-5);
            }
            expect_true("[2,3]*[2,3] throws std::invalid_argument", throws_invalid_argument([] {
                            matmul_loops(Tensor({2, 3}), Tensor({2, 3}));
                        }));
            expect_true("a 1-D operand throws std::invalid_argument", throws_invalid_argument([] {
                            matmul_loops(Tensor({3}), Tensor({3, 2}));
                        }));
        });

    hw.check(
        "04.2", "dX = dZ*W^T and dW = X^T*dZ with loops",
        "dX has X's shape [M,K], dW has W's shape [K,N]; each element is a sum over the "
        "axis that the other two share",
        [] {
            // The worked numbers of section 3 (the ReLU mask there is all ones).
            const MatmulGrads g = matmul_backward(example_X(), example_W(), example_upstream());
            expect_tensor_near("worked dX", g.dX, Tensor({2, 3}, {1, -1, 0, 0.5, 2, 2.5}), 1e-6);
            expect_tensor_near("worked dW", g.dW, Tensor({3, 2}, {3, 7, 4.5, 8, 6, 9}), 1e-6);

            // Random shapes: against backward() and against central differences of
            // L = Σ dZ ⊙ (X·W), whose gradient with respect to X·W is dZ.
            Rng rng(42);
            const int shapes[][3] = {{3, 4, 2}, {1, 5, 3}, {4, 2, 1}};
            for (const auto& s : shapes) {
                Tensor X = randn({s[0], s[1]}, rng), W = randn({s[1], s[2]}, rng);
                const Tensor dZ = randn({s[0], s[2]}, rng);
                const MatmulGrads mine = matmul_backward(X, W, dZ);
                X.requires_grad_();
                W.requires_grad_();
                matmul(X, W).backward(dZ);
                expect_tensor_near("dX vs backward()", mine.dX, Tensor(X.shape(), X.grad()), 1e-5);
                expect_tensor_near("dW vs backward()", mine.dW, Tensor(W.shape(), W.grad()), 1e-5);
                auto loss = [&] { return double(sum(dZ * matmul(X, W)).item()); };
                for (std::size_t i = 0; i < X.numel(); ++i)
                    expect_near("dX vs central difference", mine.dX.values()[i],
                                central_difference_at(X, i, loss, 1e-2), 2e-3);
                for (std::size_t i = 0; i < W.numel(); ++i)
                    expect_near("dW vs central difference", mine.dW.values()[i],
                                central_difference_at(W, i, loss, 1e-2), 2e-3);
            }
        });

    hw.check(
        "04.3", "the bias gradient: a sum over the batch rows",
        "b is added to every row, so every row sends its gradient back to it: db_j = Σ_i dY_ij "
        "(a sum over the batch, not a mean)",
        [] {
            expect_tensor_near("worked db", bias_grad(example_upstream()), Tensor({2}, {1.5, 1}),
                               1e-6);
            // Random batches: against backward() through the broadcast, and against central
            // differences of L = Σ dY ⊙ (X·W + b).
            Rng rng(43);
            const int shapes[][3] = {{5, 3, 4}, {1, 2, 3}, {8, 4, 1}};
            for (const auto& s : shapes) {
                const Tensor X = randn({s[0], s[1]}, rng), W = randn({s[1], s[2]}, rng);
                const Tensor dY = randn({s[0], s[2]}, rng);
                Tensor b = randn({s[2]}, rng);
                const Tensor mine = bias_grad(dY);
                b.requires_grad_();
                (matmul(X, W) + b).backward(dY);
                expect_tensor_near("db vs backward()", mine, Tensor(b.shape(), b.grad()), 1e-5);
                auto loss = [&] { return double(sum(dY * (matmul(X, W) + b)).item()); };
                for (std::size_t j = 0; j < b.numel(); ++j)
                    expect_near("db vs central difference", mine.values()[j],
                                central_difference_at(b, j, loss, 1e-2), 2e-3);
            }
        });

    hw.check(
        "04.4", "an SGD step that the in-place check sees",
        "θ ← θ − lr·∂L/∂θ, built in a new vector and assigned to the tensor whole; only a whole "
        "assignment counts as an in-place write",
        [] {
            const Tensor w = Tensor({2, 1}, {0.5, -1}).requires_grad_(),
                         b = Tensor({1}, {0.25}).requires_grad_();
            const Tensor unused = Tensor({3}, {7, 8, 9}).requires_grad_();
            const Tensor x({3, 2}, {1, 2, 3, 4, 5, 6});
            const Tensor loss =
                mean(linear(x, w, b));   // dL/dw = column means of x = [3, 4]; dL/db = 1
            loss.backward();
            sgd_step_seen_by_autograd({w, b, unused}, 0.1);
            expect_near("w[0] = 0.5 - 0.1 * 3", w.values()[0], 0.2, 1e-6);
            expect_near("w[1] = -1 - 0.1 * 4", w.values()[1], -1.4, 1e-6);
            expect_near("b = 0.25 - 0.1 * 1", b.values()[0], 0.15, 1e-6);
            expect_near("a parameter without a gradient is unchanged", unused.values()[2], 9, 0);
            expect_true("backward() on the old loss is refused (the write was seen)",
                        throws_invalid_argument([&] { loss.backward(); }));
            w.zero_grad();
            mean(linear(x, w, b)).backward();   // a fresh forward pass is fine
            expect_near("a new backward() works: dL/dw[0]", w.grad()[0], 3, 1e-6);
        });

    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
