// Lesson 02: the chain rule on a graph, which is all that backpropagation is.
//
// The engine records every operation as a node of a graph: its value, its inputs, and the local
// derivative ∂(node)/∂(input) of each input. backward() then walks the graph from the output
// back to the inputs, and at each node applies the chain rule
//
//     dL/d(input) += dL/d(node) · ∂(node)/∂(input)
//
// This lesson prints those graphs node by node for worked examples, checks the gradients
// against hand derivations and finite differences, and shows two rules that fall out:
//
//   1. f = (3x + 2)² at x = 1: one chain, df/dx = 30.
//   2. L = (a·b + c)² at (2, 3, 4): L = 100, gradients 60, 40, 20, one node at a time.
//   3. y = (W·x + b)² at (2, 3, 1): y = 49, gradients 42, 28, 14, against finite differences.
//   4. A one-hidden-unit ReLU network: dL/dw1 = −3.
//   5. A dead ReLU blocks the gradient of every weight before it; a leaky ReLU does not.
//   6. A node used twice receives the sum of its two gradients (x·x; a shared weight).
//   7. Why reverse mode: one backward pass gives all n partial derivatives.
//
// Run it:             make lesson N=02
// Grade the homework: make check N=02

#include "lesson.h"

#include <array>
#include <functional>
#include <vector>

static void heading(const char* title) { std::printf("\n== %s\n\n", title); }

// Prints a graph as engine.cpp's graph_to_string lays it out: one node a line, inputs first,
// with its value (data), dL/d(node) (grad), and each input with its local derivative.
static void print_graph(const Value& root) { std::printf("%s", graph_to_string(root).c_str()); }

// One row of a "by hand versus engine versus finite difference" table.
static void compare_row(const char* what, double by_hand, double engine, double numeric) {
    std::printf("  %-8s  %10g  %12g  %16.8f\n", what, by_hand, engine, numeric);
}
static void compare_header() {
    std::printf("  %-8s  %10s  %12s  %16s\n", "", "by hand", "backward()", "central diff");
}

// ---------------------------------------------------------------------------------------------
// 1. The chain rule for one chain:  if f = g(u) and u = u(x), then df/dx = df/du · du/dx.
// f = (3x + 2)²:  u = 3x + 2 = 5,  df/du = 2u = 10,  du/dx = 3,  so df/dx = 30 at x = 1.
// ---------------------------------------------------------------------------------------------
static void one_chain() {
    heading("1. f = (3x + 2)^2 at x = 1: df/dx = df/du * du/dx = 2u * 3 = 30");
    Value x(1.0, "x");
    Value u = 3 * x + 2;
    u.set_label("u");
    Value f = pow(u, 2);
    f.set_label("f");
    f.backward();
    print_graph(f);
    std::printf("\nRead it from the bottom up: f's grad is the seed 1; u gets 1 * 10 (the local\n"
                "slope 2u); the product 3x gets 10 * 1; x gets 10 * 3 = %g.\n", x.grad());
    // The constants 3 and 2 are leaves too, and receive gradients (10 each) that nobody uses.
}

// ---------------------------------------------------------------------------------------------
// 2. L = (a·b + c)², node by node. Forward: e = a·b, d = e + c, L = d².
// Backward, each line one use of  dL/d(input) = dL/d(node) · ∂(node)/∂(input):
//     dL/dL = 1
//     dL/dd = dL/dL · 2d  = 20
//     dL/de = dL/dd · 1   = 20           dL/dc = dL/dd · 1 = 20
//     dL/da = dL/de · b   = 60           dL/db = dL/de · a = 40
// ---------------------------------------------------------------------------------------------
static void abc_example() {
    heading("2. L = (a*b + c)^2 at a = 2, b = 3, c = 4");
    Value a(2.0, "a"), b(3.0, "b"), c(4.0, "c");
    Value e = a * b;
    e.set_label("e=a*b");
    Value d = e + c;
    d.set_label("d=e+c");
    Value L = pow(d, 2);
    L.set_label("L=d^2");
    L.backward();
    print_graph(L);

    std::printf("\nThe same backward pass written out:\n");
    std::printf("  %-6s  %-22s  %8s\n", "node", "dL/d(node)", "value");
    std::printf("  %-6s  %-22s  %8g\n", "L", "seed", 1.0);
    std::printf("  %-6s  %-22s  %8g\n", "d", "dL/dL * 2d", 2 * d.data());
    std::printf("  %-6s  %-22s  %8g\n", "e", "dL/dd * 1", 2 * d.data());
    std::printf("  %-6s  %-22s  %8g\n", "c", "dL/dd * 1", 2 * d.data());
    std::printf("  %-6s  %-22s  %8g\n", "a", "dL/de * b", 2 * d.data() * b.data());
    std::printf("  %-6s  %-22s  %8g\n", "b", "dL/de * a", 2 * d.data() * a.data());
    std::printf("L = %g; engine: dL/da = %g, dL/db = %g, dL/dc = %g\n", L.data(), a.grad(),
                b.grad(), c.grad());
}

// ---------------------------------------------------------------------------------------------
// 3. y = (W·x + b)²: the same shape, now checked against central differences.
// u = W·x = 6, v = u + b = 7, y = v² = 49;  dy/dv = 2v = 14,  dy/dW = 14·x = 42,
// dy/dx = 14·W = 28,  dy/db = 14.  Expanding by hand agrees: dy/dW = 2(Wx + b)·x = 2·7·3 = 42.
// ---------------------------------------------------------------------------------------------
static void linear_square_example() {
    heading("3. y = (W*x + b)^2 at W = 2, x = 3, b = 1");
    Value W(2.0, "W"), x(3.0, "x"), b(1.0, "b");
    Value u = W * x;
    u.set_label("u=W*x");
    Value v = u + b;
    v.set_label("v=u+b");
    Value y = pow(v, 2);
    y.set_label("y=v^2");
    y.backward();
    print_graph(y);

    // gradcheck (engine.cpp §1.7) rebuilds y with each input nudged by ±h.
    auto y_of = [](const std::vector<Value>& in) { return pow(in[0] * in[1] + in[2], 2); };
    const GradcheckResult check = gradcheck(y_of, {2.0, 3.0, 1.0});
    std::printf("\n");
    compare_header();
    compare_row("dy/dW", 2 * 7 * 3, W.grad(), check.numeric[0]);
    compare_row("dy/dx", 2 * 7 * 2, x.grad(), check.numeric[1]);
    compare_row("dy/db", 2 * 7, b.grad(), check.numeric[2]);
    std::printf("y = %g; worst gradient error against finite differences: %.1e\n", y.data(),
                check.worst_error);
}

// ---------------------------------------------------------------------------------------------
// 4. A network with one hidden unit:  y = w2·ReLU(w1·x + b1) + b2,  L = (y − t)².
// At w1 = 2, b1 = −1, w2 = 3, b2 = 0.5, x = 1, t = 4:
//     z = 2·1 − 1 = 1,   h = ReLU(1) = 1,   y = 3·1 + 0.5 = 3.5,   L = (3.5 − 4)² = 0.25
//     dL/dy = 2(y − t) = −1
//     dL/dh = dL/dy · w2 = −3,   dL/dz = dL/dh · ReLU'(z) = −3 · 1,   dL/dw1 = dL/dz · x = −3
// Negative: raising w1 raises y toward the target 4 and lowers the loss.
// ---------------------------------------------------------------------------------------------
static void relu_network_example() {
    heading("4. One hidden ReLU unit: y = w2*ReLU(w1*x + b1) + b2, L = (y - 4)^2");
    Value w1(2.0, "w1"), b1(-1.0, "b1"), w2(3.0, "w2"), b2(0.5, "b2");
    const double x = 1.0, target = 4.0;
    Value z = w1 * x + b1;
    z.set_label("z");
    Value h = relu(z);
    h.set_label("h=relu(z)");
    Value y = w2 * h + b2;
    y.set_label("y");
    Value L = pow(y - target, 2);
    L.set_label("L");
    L.backward();
    print_graph(L);

    auto L_of = [&](const std::vector<Value>& p) {
        return pow(p[2] * relu(p[0] * x + p[1]) + p[3] - target, 2);
    };
    const GradcheckResult check = gradcheck(L_of, {2.0, -1.0, 3.0, 0.5});
    std::printf("\n");
    compare_header();
    compare_row("dL/dw1", -1 * 3 * 1 * x, w1.grad(), check.numeric[0]);   // dL/dy·w2·ReLU'·x
    compare_row("dL/db1", -1 * 3 * 1, b1.grad(), check.numeric[1]);       // dL/dy·w2·ReLU'
    compare_row("dL/dw2", -1 * 1, w2.grad(), check.numeric[2]);           // dL/dy·h
    compare_row("dL/db2", -1, b2.grad(), check.numeric[3]);               // dL/dy
    std::printf("L = %g. Every gradient is negative: y = 3.5 is below the target, and each of\n"
                "these parameters, raised, raises y.\n", L.data());
}

// ---------------------------------------------------------------------------------------------
// 5. A dead ReLU:  y = w3·ReLU(w2·ReLU(w1·x)) at w1 = 2, w2 = −3, w3 = 4, x = 1.
//     z1 = 2, h1 = 2, z2 = −6, h2 = ReLU(−6) = 0, y = 0.
// ReLU'(−6) = 0 sits in the middle of the product  dy/dw1 = w3 · ReLU'(z2) · w2 · ReLU'(z1) · x,
// so dy/dw1 = dy/dw2 = 0, and dy/dw3 = h2 = 0 too. One negative pre-activation silences every
// weight upstream of it. A leaky ReLU (slope 0.01 for z < 0) lets a small gradient through:
//     dy/dw1 = 4 · 0.01 · (−3) · 1 · 1 = −0.12.
// ---------------------------------------------------------------------------------------------
static void dead_relu_example() {
    heading("5. A dead ReLU: y = w3*ReLU(w2*ReLU(w1*x)) at w1 = 2, w2 = -3, w3 = 4, x = 1");
    Value w1(2.0, "w1"), w2(-3.0, "w2"), w3(4.0, "w3");
    Value z1 = w1 * 1.0;
    z1.set_label("z1");
    Value h1 = relu(z1);
    h1.set_label("h1");
    Value z2 = w2 * h1;
    z2.set_label("z2");
    Value h2 = relu(z2);
    h2.set_label("h2");
    Value y = w3 * h2;
    y.set_label("y");
    y.backward();
    print_graph(y);

    // The same network with leaky ReLU, whose slope is 0.01 instead of 0 for negative inputs.
    Value v1(2.0), v2(-3.0), v3(4.0);
    Value y_leaky = v3 * leaky_relu(v2 * leaky_relu(v1 * 1.0, 0.01), 0.01);
    y_leaky.backward();
    std::printf("\n  %-6s  %10s  %12s\n", "", "ReLU", "leaky ReLU");
    std::printf("  %-6s  %10g  %12g\n", "y", y.data(), y_leaky.data());
    std::printf("  %-6s  %10g  %12g\n", "dy/dw1", w1.grad(), v1.grad());
    std::printf("  %-6s  %10g  %12g\n", "dy/dw2", w2.grad(), v2.grad());
    std::printf("  %-6s  %10g  %12g\n", "dy/dw3", w3.grad(), v3.grad());
    std::printf("With ReLU no weight gets a signal, so gradient descent can never revive it.\n");
}

// ---------------------------------------------------------------------------------------------
// 6. The multivariable chain rule: when x feeds several nodes n₁, n₂, …, their terms add:
//     dL/dx = Σₖ dL/dnₖ · ∂nₖ/∂x
// In the engine this sum is the `+=` of backward(). For y = x·x the multiply node lists x twice,
// with local derivative x each time: 3 + 3 = 6 = 2x. With `=` instead of `+=` we would get 3.
// ---------------------------------------------------------------------------------------------
static void node_used_twice() {
    heading("6. A node used twice: y = x*x at x = 3, dy/dx = 3 + 3 = 2x = 6");
    Value x(3.0, "x");
    Value y = x * x;
    y.set_label("y=x*x");
    y.backward();
    print_graph(y);
    std::printf("x appears twice as an input of y; dy/dx = %g.\n", x.grad());

    // A weight shared by two examples:  L = (w·x1 − t1)² + (w·x2 − t2)²,  at w = 1,
    // (x1, t1) = (1, 2), (x2, t2) = (2, 1). Each use contributes 2(w·xᵢ − tᵢ)·xᵢ.
    std::printf("\nA weight shared by two examples: L = (w*1 - 2)^2 + (w*2 - 1)^2 at w = 1\n");
    Value w(1.0, "w");
    Value L = pow(w * 1.0 - 2.0, 2) + pow(w * 2.0 - 1.0, 2);
    L.backward();
    const double first = 2 * (1.0 * 1 - 2) * 1, second = 2 * (1.0 * 2 - 1) * 2;
    std::printf("  %-28s  %6g\n", "term of example 1: 2(w-2)*1", first);
    std::printf("  %-28s  %6g\n", "term of example 2: 2(2w-1)*2", second);
    std::printf("  %-28s  %6g\n", "sum", first + second);
    std::printf("  %-28s  %6g\n", "w.grad() after backward()", w.grad());
    std::printf("This is how a batch works: every example that uses a weight adds its share.\n");
}

// ---------------------------------------------------------------------------------------------
// 7. Why reverse mode. For a loss of n inputs, finite differences need one extra evaluation per
// input (n + 1 for forward differences, 2n for central ones), each a full forward pass. Reverse
// mode needs one forward pass to build the graph and one backward pass over it, which costs one
// multiply-add per edge: about the price of the forward pass, whatever n is.
// Test function: f(x) = Σᵢ xᵢ·x₍ᵢ₊₁₎ mod n (a ring),  ∂f/∂xᵢ = x₍ᵢ₋₁₎ + x₍ᵢ₊₁₎.
// ---------------------------------------------------------------------------------------------
static Value ring(const std::vector<Value>& x) {
    Value sum = 0.0;
    for (std::size_t i = 0; i < x.size(); ++i) sum += x[i] * x[(i + 1) % x.size()];
    return sum;
}

static void why_reverse_mode() {
    heading("7. Cost of a full gradient of f(x_1..x_n) = sum x_i * x_(i+1)");
    std::printf("%8s  %10s  %18s  %18s  %22s\n", "n", "graph size", "forward diff", "central diff",
                "reverse mode");
    std::printf("%8s  %10s  %18s  %18s  %22s\n", "", "(nodes)", "(forward passes)",
                "(forward passes)", "(passes)");
    for (int n : {1, 10, 100, 1000, 10000}) {
        std::vector<Value> x;
        for (int i = 0; i < n; ++i) x.emplace_back(0.01 * i);
        const Value f = ring(x);
        const std::size_t nodes = topological_order(f.node()).size();
        std::printf("%8d  %10zu  %18d  %18d  %22s\n", n, nodes, n + 1, 2 * n,
                    "1 forward + 1 backward");
    }

    // Check that the one backward pass really gives every partial derivative, for n = 100.
    const int n = 100;
    std::vector<double> point;
    for (int i = 0; i < n; ++i) point.push_back(std::sin(0.1 * i));
    const GradcheckResult check = gradcheck(ring, point);
    double worst_closed_form = 0;
    for (int i = 0; i < n; ++i) {
        const double by_hand = point[(i + n - 1) % n] + point[(i + 1) % n];
        worst_closed_form =
            std::max(worst_closed_form, std::fabs(check.analytic[i] - by_hand));
    }
    std::printf("\nn = 100: one backward() gave all 100 partials; worst difference from\n"
                "x_(i-1) + x_(i+1) is %.1e, from 200 central differences %.1e.\n",
                worst_closed_form, check.worst_error);
    std::printf("A network has millions of inputs (its weights) and one output (the loss):\n"
                "that asymmetry is why every framework trains with reverse mode.\n");
}

static void lesson() {
    std::printf("Lesson 02: the chain rule on a computational graph\n");
    one_chain();
    abc_example();
    linear_square_example();
    relu_network_example();
    dead_relu_example();
    node_used_twice();
    why_reverse_mode();
}

// ---- Homework --------------------------------------------------------------------------------

// 02.1  A backward pass by hand, with plain doubles (no Value). For
//     L = (σ(w·x + b) − y)²,     σ(z) = 1/(1 + e⁻ᶻ),
// do the forward pass (z = w·x + b, p = σ(z), r = p − y, L = r²), then walk back node by node
// and return {dL/dw, dL/db}. Remember σ'(z) = σ(z)·(1 − σ(z)).
std::array<double, 2> sigmoid_square_loss_backward(double w, double x, double b, double y) {
    // BEGIN EXERCISE 02.1
    throw not_implemented("02.1");
    // END EXERCISE
}

// 02.2  The chain rule for a whole chain. `chain` lists functions f₁, f₂, …, fₙ, each with its
// derivative; the composition is F(x) = fₙ(…f₂(f₁(x))…). Return F'(x). An empty chain is the
// identity, F(x) = x. (Forward: keep every intermediate value. Backward: multiply the local
// derivatives, each taken at that link's own input.)
struct Link {
    std::function<double(double)> f;    // the function
    std::function<double(double)> df;   // its derivative
};
double chain_derivative(const std::vector<Link>& chain, double x) {
    // BEGIN EXERCISE 02.2
    throw not_implemented("02.2");
    // END EXERCISE
}

// 02.3  The backward pass of f(a, b) = (a + b)·(a − b), by hand through its graph
//     s = a + b,   d = a − b,   f = s·d.
// Return {∂f/∂a, ∂f/∂b}. Both a and b feed two nodes, so each receives two terms (section 6).
std::array<double, 2> sum_times_difference_backward(double a, double b) {
    // BEGIN EXERCISE 02.3
    throw not_implemented("02.3");
    // END EXERCISE
}

static int check_homework() {
    Homework hw("02");

    hw.check("02.1", "backward of L = (sigmoid(w*x + b) - y)^2 by hand",
             "chain rule node by node, ∂L/∂(input) = ∂L/∂(node)·∂(node)/∂(input), back through L = r², "
             "r = p − y, p = σ(z), z = w·x + b; σ'(z) = σ(z)(1 − σ(z))",
             [] {
                 const double points[][4] = {{0.5, 2.0, 0.1, 1.0},     // w, x, b, y
                                             {-1.2, 0.7, 0.3, 0.0},
                                             {2.0, -1.5, -0.4, 0.25}};
                 for (const auto& q : points) {
                     const double w = q[0], x = q[1], b = q[2], y = q[3];
                     auto L = [&](double w_, double b_) {
                         const double p = 1.0 / (1.0 + std::exp(-(w_ * x + b_)));
                         return (p - y) * (p - y);
                     };
                     // Truth: central differences in w and in b.
                     const double dw = central_difference([&](double t) { return L(t, b); }, w, 1e-6);
                     const double db = central_difference([&](double t) { return L(w, t); }, b, 1e-6);
                     const std::array<double, 2> g = sigmoid_square_loss_backward(w, x, b, y);
                     expect_near("dL/dw", g[0], dw, 1e-8);
                     expect_near("dL/db", g[1], db, 1e-8);
                 }
             });

    hw.check("02.2", "derivative of a composition f_n(...f_2(f_1(x))...)",
             "store x, f1(x), f2(f1(x)), ...; multiply df_k evaluated at the INPUT of link k", [] {
                 const Link affine{[](double x) { return 3 * x + 2; }, [](double) { return 3.0; }};
                 const Link square{[](double u) { return u * u; }, [](double u) { return 2 * u; }};
                 expect_near("(3x + 2)^2 at x = 1", chain_derivative({affine, square}, 1.0), 30.0,
                             1e-12);
                 expect_near("empty chain (identity)", chain_derivative({}, 0.7), 1.0, 0.0);

                 // e^(sin(x²)): by hand 2x · cos(x²) · e^(sin(x²)).
                 const Link sin_link{[](double u) { return std::sin(u); },
                                     [](double u) { return std::cos(u); }};
                 const Link exp_link{[](double u) { return std::exp(u); },
                                     [](double u) { return std::exp(u); }};
                 for (double x : {-1.3, 0.4, 0.9, 2.0}) {
                     const double by_hand = 2 * x * std::cos(x * x) * std::exp(std::sin(x * x));
                     expect_near("d/dx e^(sin(x^2))", chain_derivative({square, sin_link, exp_link}, x),
                                 by_hand, 1e-12 * std::max(1.0, std::fabs(by_hand)));
                 }

                 // Four sigmoids in a row, against a central difference of the composition.
                 auto s = [](double u) { return 1.0 / (1.0 + std::exp(-u)); };
                 const Link sig{s, [s](double u) { return s(u) * (1 - s(u)); }};
                 auto four = [s](double u) { return s(s(s(s(u)))); };
                 expect_near("four sigmoids at x = 0.3", chain_derivative({sig, sig, sig, sig}, 0.3),
                             central_difference(four, 0.3, 1e-5), 1e-9);
             });

    hw.check("02.3", "backward of f(a, b) = (a + b)(a - b) by hand",
             "a variable that feeds two nodes adds both paths: ∂f/∂a = ∂f/∂s·∂s/∂a + ∂f/∂d·∂d/∂a; "
             "the same for b, where ∂d/∂b = −1", [] {
                 // Truth: f = a² − b², so ∂f/∂a = 2a and ∂f/∂b = −2b.
                 const double points[][2] = {{3.0, 2.0}, {-1.5, 0.5}, {0.0, -4.0}, {2.5, 2.5}};
                 for (const auto& q : points) {
                     const std::array<double, 2> g = sum_times_difference_backward(q[0], q[1]);
                     expect_near("df/da = 2a", g[0], 2 * q[0], 1e-12);
                     expect_near("df/db = -2b", g[1], -2 * q[1], 1e-12);
                 }
             });

    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
