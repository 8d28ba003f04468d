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
//   1. One chain: f = (3x + 2)² at x = 1 gives 30; z = 3(x² + 1) at x = 2 gives 12.
//   2. Graphs node by node: L = (a + b)² at (2, 3) gives 25, 10, 10; L = (a·b + c)² at (2, 3, 4)
//      gives L = 100 and gradients 60, 40, 20.
//   3. y = (W·x + b)² at (2, 3, 1): y = 49, gradients 42, 28, 14, against finite differences.
//   4. A one-hidden-unit ReLU network: dL/dw1 = −3.
//   5. A dead ReLU blocks the gradient of every weight before it; a leaky ReLU does not.
//   6. A node used twice receives the sum of its two gradients (x·x; a shared weight).
//   7. Three ways to a gradient: finite differences, forward mode (dual numbers) and reverse
//      mode, their passes counted and timed, for many inputs and for many outputs.
//   8. The gradient of a gradient: why backward() cannot be called on what backward() computed.
//
// Run it:             make lesson N=02
// Grade the homework: make check N=02

#include "lesson.h"

#include <algorithm>
#include <array>
#include <functional>
#include <vector>

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
    std::printf("(Another: y = x^2 + 1 and z = 3y at x = 2. y = 5, dz/dy = 3, dy/dx = 2x = 4, so\n"
                " dz/dx = 3 * 4 = 12; expanded, z = 3x^2 + 3 and dz/dx = 6x = 12.");
    {
        Value x2(2.0);
        const Value z = 3.0 * (x2 * x2 + 1.0);
        z.backward();
        std::printf(" The engine: %g.)\n\n", x2.grad());
    }
    Value x(1.0, "x");
    Value u = 3 * x + 2;
    u.set_label("u");
    Value f = pow(u, 2);
    f.set_label("f");
    f.backward();
    print_graph(f);
    std::printf("\nRead it from the bottom up: f's grad is the seed 1; u gets 1 * 10 (the local\n"
                "slope 2u); the product 3x gets 10 * 1; x gets 10 * 3 = %g.\n",
                x.grad());
    // The constants 3 and 2 are leaves too, and receive gradients (10 each) that nobody uses.
}

// ---------------------------------------------------------------------------------------------
// 2. Graphs, node by node. The smallest: L = (a + b)² at a = 2, b = 3. Forward: s = a + b = 5,
// L = s² = 25. Backward: dL/ds = 2s = 10, and the sum passes it on unchanged: dL/da = dL/db = 10.
// Then L = (a·b + c)². Forward: d = a·b, e = d + c, L = e². Backward, each line one use of
// dL/d(input) = dL/d(node) · ∂(node)/∂(input):
//     dL/dL = 1
//     dL/de = dL/dL · 2e  = 20
//     dL/dd = dL/de · 1   = 20           dL/dc = dL/de · 1 = 20
//     dL/da = dL/dd · b   = 60           dL/db = dL/dd · a = 40
// ---------------------------------------------------------------------------------------------
static void sum_squared_example() {
    Value a(2.0, "a"), b(3.0, "b");
    Value s_node = a + b;
    s_node.set_label("s=a+b");
    Value L = pow(s_node, 2);
    L.set_label("L=s^2");
    L.backward();
    print_graph(L);
    std::printf("L = %g; dL/ds = 2s = %g; dL/da = %g, dL/db = %g\n\n", L.data(), s_node.grad(),
                a.grad(), b.grad());
}

static void abc_example() {
    heading("2. L = (a + b)^2 at a = 2, b = 3; then L = (a*b + c)^2 at a = 2, b = 3, c = 4");
    sum_squared_example();
    Value a(2.0, "a"), b(3.0, "b"), c(4.0, "c");
    Value d = a * b;
    d.set_label("d=a*b");
    Value e = d + c;
    e.set_label("e=d+c");
    Value L = pow(e, 2);
    L.set_label("L=e^2");
    L.backward();
    print_graph(L);

    std::printf("\nThe same backward pass written out:\n");
    std::printf("  %-6s  %-22s  %8s\n", "node", "dL/d(node)", "value");
    std::printf("  %-6s  %-22s  %8g\n", "L", "seed", 1.0);
    std::printf("  %-6s  %-22s  %8g\n", "e", "dL/dL * 2e", 2 * e.data());
    std::printf("  %-6s  %-22s  %8g\n", "d", "dL/de * 1", 2 * e.data());
    std::printf("  %-6s  %-22s  %8g\n", "c", "dL/de * 1", 2 * e.data());
    std::printf("  %-6s  %-22s  %8g\n", "a", "dL/dd * b", 2 * e.data() * b.data());
    std::printf("  %-6s  %-22s  %8g\n", "b", "dL/dd * a", 2 * e.data() * a.data());
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
                "these parameters, raised, raises y.\n",
                L.data());
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
// 7. Three ways to a gradient, and what each costs.
//   finite differences (§1.7): nudge one input, evaluate again. The n partials of f: ℝⁿ → ℝ take
//       2n evaluations (central differences), each good to about 1e-9.
//   forward mode (engine.cpp §1.8): carry (value, tangent) pairs through one pass. One pass
//       gives the derivative along one input direction, exactly: n passes for n partials.
//   reverse mode (§1.5): one forward pass that records the graph, one backward pass over it:
//       all n partials, exactly, for about the price of two evaluations whatever n is.
// For g: ℝ → ℝᵐ (one input, m outputs) the counts turn around: one forward-mode pass carries the
// tangent of every output, while reverse mode needs one backward pass per output.
// The test functions are templates, so that double (for finite differences), Dual and Value run
// the very same code:
//     f(x) = Σᵢ xᵢ·x₍ᵢ₊₁₎ around a ring,    ∂f/∂xᵢ = x₍ᵢ₋₁₎ + x₍ᵢ₊₁₎
//     gⱼ(t) = tanh(t·j/m) for j = 1..m,   dgⱼ/dt = (j/m)·(1 − gⱼ²)
// ---------------------------------------------------------------------------------------------
template <class X>
static X ring(const std::vector<X>& x) {
    X sum = 0.0;
    for (std::size_t i = 0; i < x.size(); ++i) sum += x[i] * x[(i + 1) % x.size()];
    return sum;
}

template <class X>
static std::vector<X> ramp(const X& t, int m) {
    std::vector<X> g;
    for (int j = 1; j <= m; ++j) g.push_back(tanh(t * (double(j) / m)));
    return g;
}

// Milliseconds per call of `run`: the median of 5 timed calls (one slow call, the machine busy
// elsewhere, does not move it).
template <class F>
static double median_ms(F run) {
    std::vector<double> ms;
    for (int k = 0; k < 5; ++k) {
        const Clock::time_point start = Clock::now();
        run();
        ms.push_back(1e3 * seconds_since(start));
    }
    return median(ms);
}

struct Costs {
    long evaluations = 0, forward_passes = 0, backward_passes = 0;
    double worst_forward = 0, worst_reverse = 0,
           worst_numeric = 0;   // errors against the closed form
};

// The gradient of the ring three ways; counts the passes and compares each with x₍ᵢ₋₁₎ + x₍ᵢ₊₁₎.
static Costs ring_gradients(const std::vector<double>& x) {
    const std::size_t n = x.size();
    Costs c;
    const DualFunction f_dual = [&c](const std::vector<Dual>& v) {
        ++c.forward_passes;
        return ring(v);
    };
    const std::vector<double> forward = forward_mode_gradient(f_dual, x);
    std::vector<Value> v(x.begin(), x.end());
    ring(v).backward();   // one forward pass (it records the graph), one backward pass
    c.backward_passes = 1;
    for (std::size_t i = 0; i < n; ++i) {
        auto f_of_xi = [&](double xi) {
            ++c.evaluations;
            std::vector<double> shifted = x;
            shifted[i] = xi;
            return ring(shifted);
        };
        const double numeric = central_difference(f_of_xi, x[i], 1e-6);
        const double exact = x[(i + n - 1) % n] + x[(i + 1) % n];
        c.worst_forward = std::max(c.worst_forward, std::fabs(forward[i] - exact));
        c.worst_reverse = std::max(c.worst_reverse, std::fabs(v[i].grad() - exact));
        c.worst_numeric = std::max(c.worst_numeric, std::fabs(numeric - exact));
    }
    return c;
}

static void three_ways_many_inputs() {
    std::printf("f(x) = sum x_i * x_(i+1): n inputs, 1 output. Passes counted, times the median of "
                "5 runs.\n");
    std::printf("%7s | %-22s | %-22s | %-22s\n", "", "finite differences", "forward mode (dual)",
                "reverse mode");
    std::printf("%7s | %10s %11s | %10s %11s | %10s %11s\n", "n", "evaluations", "ms", "passes",
                "ms", "passes", "ms");
    for (int n : {1, 10, 100, 1000}) {
        std::vector<double> x;
        for (int i = 0; i < n; ++i) x.push_back(std::sin(0.1 * i));
        const Costs c = ring_gradients(x);
        const double fd_ms = median_ms([&] {
            for (int i = 0; i < n; ++i) {
                std::vector<double> up = x, down = x;
                up[i] += 1e-6;
                down[i] -= 1e-6;
                volatile double slope = (ring(up) - ring(down)) / 2e-6;
                (void)slope;
            }
        });
        const double forward_ms = median_ms(
            [&] { forward_mode_gradient([](const std::vector<Dual>& v) { return ring(v); }, x); });
        const double reverse_ms = median_ms([&] {
            std::vector<Value> v(x.begin(), x.end());
            ring(v).backward();
        });
        std::printf("%7d | %10ld %11.3f | %10ld %11.3f | %10s %11.3f\n", n, c.evaluations, fd_ms,
                    c.forward_passes, forward_ms, "1 + 1", reverse_ms);
        if (n == 100)
            std::printf("%7s   (n = 100, worst error against x_(i-1) + x_(i+1): finite differences "
                        "%.0e, forward %.0e, reverse %.0e)\n",
                        "", c.worst_numeric, c.worst_forward, c.worst_reverse);
    }
    std::printf(
        "Forward mode and finite differences grow with n; reverse mode stays at one forward\n"
        "and one backward pass. A network has millions of inputs (its weights) and one output\n"
        "(the loss): that is why every framework trains with reverse mode.\n");
}

static void three_ways_many_outputs() {
    const int m = 1000;
    const double t0 = 0.7;
    std::printf("\ng_j(t) = tanh(t * j/m) for j = 1..%d: 1 input, %d outputs, at t = %g.\n", m, m,
                t0);
    // Forward mode: one pass, and every output carries its own tangent dg_j/dt.
    long forward_passes = 0;
    std::vector<Dual> forward;
    const double forward_ms = median_ms([&] {
        forward = ramp(Dual(t0, 1.0), m);
        ++forward_passes;
    });
    // Reverse mode: one backward pass per output, each seeded at that output alone.
    long backward_passes = 0;
    std::vector<double> reverse(m);
    const double reverse_ms = median_ms([&] {
        Value t(t0);
        const std::vector<Value> g = ramp(t, m);
        for (int j = 0; j < m; ++j) {
            t.grad() = 0.0;
            g[j].backward();
            ++backward_passes;
            reverse[j] = t.grad();
        }
    });
    double worst = 0;
    for (int j = 0; j < m; ++j) {
        const double exact = (j + 1.0) / m * (1 - std::pow(std::tanh(t0 * (j + 1.0) / m), 2));
        worst =
            std::max({worst, std::fabs(forward[j].tangent - exact), std::fabs(reverse[j] - exact)});
    }
    std::printf("  forward mode: %ld pass per run, %8.3f ms\n", forward_passes / 5, forward_ms);
    std::printf("  reverse mode: %ld backward passes per run, %8.3f ms\n", backward_passes / 5,
                reverse_ms);
    std::printf("  (both exact: worst error against (j/m)(1 - g_j^2) is %.0e)\n", worst);
    std::printf(
        "Here forward mode wins: one input and many outputs is its shape. Frameworks offer\n"
        "both, as jvp (forward) and vjp (reverse), and a Jacobian [m, n] costs min(m, n) "
        "passes.\n");
}

static void three_ways() {
    heading("7. Three ways to a gradient: finite differences, forward mode, reverse mode");
    three_ways_many_inputs();
    three_ways_many_outputs();
}

// ---------------------------------------------------------------------------------------------
// 8. The gradient of a gradient. backward() leaves in every grad a plain number: it multiplies
// and adds doubles, and records no graph of its own work. So there is nothing to call backward()
// on a second time: the second derivative f''(x) is out of reach of this engine's reverse mode.
// Frameworks that offer it (PyTorch's backward(create_graph=True)) build the backward pass out
// of graph ops, so that it is itself differentiable; that keeps a second graph alive, about as big
// as the first, and costs another pass: memory and compute roughly double. Uses: second-order
// optimizers, meta-learning, penalties on gradient norms.
// Here f(x) = x³ at x = 2: f'(x) = 3x² = 12 from backward(); f''(x) = 6x = 12 needs f' as a
// graph, which we can write by hand (3·x·x), or a finite difference of backward() itself.
// ---------------------------------------------------------------------------------------------
static double slope_of_cube(double x) {
    Value v(x);
    pow(v, 3).backward();
    return v.grad();   // a double: the graph that computed it is gone
}

static void gradient_of_gradient() {
    heading("8. The gradient of a gradient: f(x) = x^3 at x = 2");
    std::printf("f'(2) from backward(): %g (3x^2 = 12); it is a double, with no graph behind it.\n",
                slope_of_cube(2.0));
    Value x(2.0);
    const Value f_prime = 3.0 * x * x;   // f' written as ops, so that it has a graph
    f_prime.backward();
    std::printf(
        "f''(2) = 6x = 12: through a graph of f' built by hand: %g; as a finite difference\n"
        "of backward()'s result: %.6f.\n",
        x.grad(), central_difference(slope_of_cube, 2.0, 1e-4));
    std::printf("A framework that differentiates backward() itself records the backward pass as a\n"
                "second graph: twice the memory and compute of one gradient.\n");
}

static void lesson() {
    std::printf("Lesson 02: the chain rule on a computational graph\n");
    one_chain();
    abc_example();
    linear_square_example();
    relu_network_example();
    dead_relu_example();
    node_used_twice();
    three_ways();
    gradient_of_gradient();
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

// 02.4  Forward mode for one more op. Write the dual-number rule of sin: given x = (value,
// tangent), return (sin of the value, its tangent). The chain rule for one op (engine.cpp §1.8):
// f(a)' = f'(a)·a'. With it, x²·sin x needs no new rule: the engine's product rule does the rest.
Dual dual_sin(const Dual& x) {
    // BEGIN EXERCISE 02.4
    throw not_implemented("02.4");
    // END EXERCISE
}

static int check_homework() {
    Homework hw("02");

    hw.check(
        "02.1", "backward of L = (sigmoid(w*x + b) - y)^2 by hand",
        "chain rule node by node, ∂L/∂(input) = ∂L/∂(node)·∂(node)/∂(input), back through L = r², "
        "r = p − y, p = σ(z), z = w·x + b; σ'(z) = σ(z)(1 − σ(z))",
        [] {
            const double points[][4] = {{0.5, 2.0, 0.1, 1.0},   // w, x, b, y
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

    hw.check(
        "02.2", "derivative of a composition f_n(...f_2(f_1(x))...)",
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
             "the same for b, where ∂d/∂b = −1",
             [] {
                 // Truth: f = a² − b², so ∂f/∂a = 2a and ∂f/∂b = −2b.
                 const double points[][2] = {{3.0, 2.0}, {-1.5, 0.5}, {0.0, -4.0}, {2.5, 2.5}};
                 for (const auto& q : points) {
                     const std::array<double, 2> g = sum_times_difference_backward(q[0], q[1]);
                     expect_near("df/da = 2a", g[0], 2 * q[0], 1e-12);
                     expect_near("df/db = -2b", g[1], -2 * q[1], 1e-12);
                 }
             });

    hw.check("02.4", "the dual-number rule of sin, and h = x^2 * sin(x) through it",
             "one op's forward-mode rule is f(a)' = f'(a)·a': the value is sin a, the tangent (d "
             "sin a/da)·a'; the product rule then gives h' = 2x·sin x + x²·cos x",
             [] {
                 for (double x : {-2.0, 0.0, 0.5, 1.3}) {
                     const Dual y = dual_sin(Dual(x, 1.0));
                     expect_near("value: sin x", y.value, std::sin(x), 1e-15);
                     expect_near("tangent: d sin x / dx", y.tangent,
                                 central_difference([](double t) { return std::sin(t); }, x, 1e-6),
                                 1e-9);
                     expect_near("a tangent of 3 scales it", dual_sin(Dual(x, 3.0)).tangent,
                                 3 * std::cos(x), 1e-9);
                     const Dual xd(x, 1.0);
                     const Dual h = xd * xd * dual_sin(xd);   // the product rule from the engine
                     expect_near("h'(x) = 2x sin x + x^2 cos x", h.tangent,
                                 2 * x * std::sin(x) + x * x * std::cos(x), 1e-12);
                 }
             });

    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
