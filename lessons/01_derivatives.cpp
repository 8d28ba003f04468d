// Lesson 01: derivatives, and how a computer estimates them.
//
// A derivative answers one question: nudge the input by a tiny amount, how much does the output
// move per unit of nudge? Training a network asks that question of every weight. This lesson
// computes derivatives the direct way, from the definition, and measures how good that is.
//
//   1. The limit definition: secant slopes closing in on the tangent slope.
//   2. Forward and central differences on x³ and sin x.
//   3. Their error as h shrinks: O(h) and O(h²) at first, then rounding error takes over.
//   4. The product rule on x²·sin x, checked by a finite difference and by backward().
//   5. Partial derivatives and the gradient of a function of two variables.
//   6. The sigmoid's slope is at most 0.25, and what 0.25^L does to a deep network.
//
// Run it:             make lesson N=01
// Grade the homework: make check N=01

#include "lesson.h"

#include <cfloat>
#include <functional>
#include <vector>

// The two test functions of this lesson, with their derivatives worked out by hand.
static double cube(double x) { return x * x * x; }   // f(x) = x³, f'(x) = 3x², f''(x) = 6x
static double sigma(double x) { return 1.0 / (1.0 + std::exp(-x)); }   // σ(x) = 1/(1 + e⁻ˣ)

// ---------------------------------------------------------------------------------------------
// 1. The limit definition:  f'(x) = lim_{h→0} (f(x + h) − f(x)) / h
//
// (f(x + h) − f(x)) / h is the slope of the line through two points of the curve (a secant).
// For f(x) = x³ at x = 2 it is exactly 12 + 6h + h², so it tends to f'(2) = 3·2² = 12.
// ---------------------------------------------------------------------------------------------
static void limit_definition() {
    heading("1. The limit definition: secant slopes of x^3 at x = 2 tend to f'(2) = 12");
    std::printf("%10s  %14s  %16s  %14s  %14s\n", "h", "f(2 + h)", "secant slope", "slope - 12",
                "6h + h^2");
    for (double h : {1.0, 0.1, 0.01, 0.001, 0.0001}) {
        const double slope = (cube(2.0 + h) - cube(2.0)) / h;
        std::printf("%10g  %14.8f  %16.10f  %14.3e  %14.3e\n", h, cube(2.0 + h), slope,
                    slope - 12.0, 6 * h + h * h);
    }
    std::printf("\nThe slope closes in on 12; its excess is the 6h + h^2 that algebra predicts.\n");
}

// ---------------------------------------------------------------------------------------------
// 2. Two finite-difference formulas (engine.cpp §1.7):
//      forward  (f(x + h) − f(x)) / h           Taylor: error ≈ h·f''(x)/2     (order h)
//      central  (f(x + h) − f(x − h)) / (2h)    Taylor: error ≈ h²·f'''(x)/6   (order h²)
// The central one looks both ways, so the f'' terms of the two Taylor series cancel.
// ---------------------------------------------------------------------------------------------
static void two_formulas() {
    heading("2. Forward and central differences with h = 1e-5");
    const double h = 1e-5, x = 2.0;
    struct Case {
        const char* name;
        std::function<double(double)> f;
        double exact;   // f'(2), by hand
    };
    const Case cases[] = {
        {"x^3", cube, 3 * x * x},                                       // 3x² = 12
        {"sin x", [](double t) { return std::sin(t); }, std::cos(x)},   // cos 2 = −0.416147
    };
    std::printf("%-6s  %12s  %14s  %14s  %12s  %12s\n", "f", "exact f'(2)", "forward", "central",
                "fwd error", "central err");
    for (const Case& c : cases) {
        const double fwd = forward_difference(c.f, x, h);
        const double ctr = central_difference(c.f, x, h);
        std::printf("%-6s  %12.8f  %14.10f  %14.10f  %12.2e  %12.2e\n", c.name, c.exact, fwd, ctr,
                    std::fabs(fwd - c.exact), std::fabs(ctr - c.exact));
    }
    // For x³ at 2: f'' = 12 and f''' = 6, so the predictions are 1e-5·12/2 and (1e-5)²·6/6.
    std::printf(
        "\nTaylor predicts for x^3: forward error h*f''/2 = %.1e, central h^2*f'''/6 = %.1e\n",
        h * 12 / 2, h * h * 6 / 6);

    // A course text prints 12.000030 for this forward difference. For a cubic the expansion is
    // exact: ((x + h)³ − x³)/h = 3x² + 3xh + h², so the excess at x = 2 is 6h + h², not 3h.
    const double fwd = forward_difference(cube, x, h);
    std::printf("\nSome course notes print 12.000030 for the forward difference of x^3 at 2 with\n"
                "h = 1e-5; the correct value is %.6f, because for x^3 the forward difference is\n"
                "exactly 3x^2 + 3xh + h^2, so at x = 2 the excess is 6h + h^2 = %.1e (the notes\n"
                "show half of it).\n",
                fwd, 6 * h + h * h);
}

// ---------------------------------------------------------------------------------------------
// 3. Error against h. Two errors pull in opposite directions:
//      truncation  (the Taylor terms the formula drops)   shrinks with h: h·|f''|/2 or h²·|f'''|/6
//      rounding    (each f is off by about ε·|f|, ε = 2.2e-16, and we divide by h)  ≈ ε·|f|/h
// On a log-log plot truncation is a straight line of slope 1 (forward) or 2 (central), and
// rounding is a line of slope −1 that wins once h is small enough.
// ---------------------------------------------------------------------------------------------
static void error_against_h() {
    heading("3. Error of each formula for x^3 at x = 2 as h shrinks (exact f'(2) = 12)");
    std::printf("%8s  %12s  %12s  %12s  %12s  %12s\n", "h", "forward err", "h*f''/2", "central err",
                "h^2*f'''/6", "eps*|f|/h");
    for (int k = 1; k <= 13; ++k) {
        const double h = std::pow(10.0, -k);
        const double fwd = std::fabs(forward_difference(cube, 2.0, h) - 12.0);
        const double ctr = std::fabs(central_difference(cube, 2.0, h) - 12.0);
        std::printf("%8.0e  %12.3e  %12.3e  %12.3e  %12.3e  %12.3e\n", h, fwd, h * 12 / 2, ctr,
                    h * h * 6 / 6, DBL_EPSILON * 8 / h);
    }

    // The same errors on a finer grid, four points per decade, for the plot and the minimum.
    Plot plot("Finite-difference error for x^3 at x = 2", "step h", "|estimate - 12|",
              Scale::log_log);
    std::vector<double> hs, fwd_err, ctr_err;
    for (int j = 4; j <= 52; ++j) hs.push_back(std::pow(10.0, -0.25 * j));
    for (double h : hs) {
        fwd_err.push_back(std::fabs(forward_difference(cube, 2.0, h) - 12.0));
        ctr_err.push_back(std::fabs(central_difference(cube, 2.0, h) - 12.0));
    }
    plot.add("forward", hs, fwd_err);
    plot.add("central", hs, ctr_err);
    std::printf("\n");
    plot.save("01_difference_error");

    // Where on the grid each formula did best.
    auto best = [&](const std::vector<double>& err) {
        std::size_t i = 0;
        for (std::size_t j = 1; j < err.size(); ++j)
            if (err[j] < err[i]) i = j;
        std::printf("  smallest error %.1e at h = %.1e\n", err[i], hs[i]);
    };
    std::printf("forward:");
    best(fwd_err);
    std::printf("central:");
    best(ctr_err);
    std::printf("Smaller h is not better forever: each best h sits where the falling truncation\n"
                "line meets the rising rounding line, near sqrt(eps) = 1.5e-8 for forward and\n"
                "cbrt(eps) = 6e-6 for central (homework 01.3 finds the exact spot). Central\n"
                "differences with h around 1e-6 to 1e-5 are good to about 1e-10: that is why\n"
                "gradient checks use them.\n");
}

// ---------------------------------------------------------------------------------------------
// 4. The product rule:  (f·g)' = f'·g + f·g'.
// Nudge x by h: the product changes because f moved (by about f'·h, times g) and because g moved
// (by about g'·h, times f); the cross term f'·g'·h² vanishes in the limit. For h(x) = x²·sin x:
//      h'(x) = 2x·sin x + x²·cos x.
// Three independent answers at x = 0.5, 1, 1.5, 2: the formula, a central difference, and
// backward() of the scalar engine (lesson 02 opens it up). The engine has no sin, so we add one
// here: an op is its value and its local derivative, d(sin u)/du = cos u (engine.cpp §1.2 does
// the same for +, *, exp, ...). backward() knows nothing of the product rule: the * node hands
// each factor the other factor as its slope, and the contributions that reach x add up.
// ---------------------------------------------------------------------------------------------
static Value sine(const Value& u) {
    return Value::from_op(std::sin(u.data()), "sin", u, std::cos(u.data()));
}

static double x2_sin(double x) { return x * x * std::sin(x); }

static void product_rule() {
    heading("4. The product rule on h(x) = x^2 sin x:  h'(x) = 2x sin x + x^2 cos x");
    std::printf("%5s  %11s  %11s  %12s  %13s  %13s  %11s\n", "x", "2x sin x", "x^2 cos x",
                "sum = h'(x)", "central diff", "backward()", "worst diff");
    for (double x0 : {0.5, 1.0, 1.5, 2.0}) {
        const double f_prime_g = 2 * x0 * std::sin(x0), f_g_prime = x0 * x0 * std::cos(x0);
        const double by_rule = f_prime_g + f_g_prime;
        const double numeric = central_difference(x2_sin, x0, 1e-5);
        const Value x(x0, "x");
        const Value product = x * x * sine(x);   // h(x) as a graph: x·x, then times sin x
        product.backward();
        const double worst = std::max(std::fabs(numeric - by_rule), std::fabs(x.grad() - by_rule));
        std::printf("%5g  %11.7f  %11.7f  %12.7f  %13.7f  %13.7f  %11.1e\n", x0, f_prime_g,
                    f_g_prime, by_rule, numeric, x.grad(), worst);
    }
    std::printf(
        "\nThe three agree to about 1e-10, the central difference's own error at h = 1e-5.\n"
        "Both terms matter: at x = 2 the second one, x^2 cos x = %.4f, is negative and\n"
        "almost as large as the total.\n",
        4 * std::cos(2.0));
}

// ---------------------------------------------------------------------------------------------
// 5. Partial derivatives:  ∂f/∂xᵢ = lim_{h→0} (f(…, xᵢ + h, …) − f(…, xᵢ, …)) / h
// Hold every other input fixed and differentiate along one. For f(x, y) = 3x² + 2xy + y³:
//      ∂f/∂x = 6x + 2y          ∂f/∂y = 2x + 3y²          at (1, 2): 10 and 14.
// The gradient ∇f = (∂f/∂x, ∂f/∂y) points in the direction in which f rises fastest.
// ---------------------------------------------------------------------------------------------
static double f_xy(double x, double y) { return 3 * x * x + 2 * x * y + y * y * y; }

static void partial_derivatives() {
    heading("5. Partial derivatives of f(x, y) = 3x^2 + 2xy + y^3 at (1, 2)");
    const double x = 1.0, y = 2.0, h = 1e-5;
    const double dfdx = central_difference([&](double t) { return f_xy(t, y); }, x, h);
    const double dfdy = central_difference([&](double t) { return f_xy(x, t); }, y, h);
    std::printf("%-6s  %-12s  %10s  %14s\n", "", "by hand", "= at (1,2)", "central diff");
    std::printf("%-6s  %-12s  %10g  %14.8f\n", "df/dx", "6x + 2y", 6 * x + 2 * y, dfdx);
    std::printf("%-6s  %-12s  %10g  %14.8f\n", "df/dy", "2x + 3y^2", 2 * x + 3 * y * y, dfdy);

    // Step a distance 0.01 in several directions: the rise is largest along the gradient,
    // and is about 0.01·|∇f|·cos(angle between the step and ∇f).
    const double gx = 6 * x + 2 * y, gy = 2 * x + 3 * y * y, pi = std::acos(-1.0);
    const double grad_angle = std::atan2(gy, gx) * 180 / pi;
    std::printf("\nA step of length 0.01 from (1, 2); the gradient (10, 14) points at %.1f deg\n",
                grad_angle);
    std::printf("%10s  %14s  %22s\n", "direction", "f(step) - f", "0.01*|grad|*cos(diff)");
    for (double deg : {0.0, 45.0, grad_angle, 90.0, 180.0, 180.0 + grad_angle, 270.0}) {
        const double rad = deg * pi / 180;
        const double rise = f_xy(x + 0.01 * std::cos(rad), y + 0.01 * std::sin(rad)) - f_xy(x, y);
        const double predicted =
            0.01 * std::hypot(gx, gy) * std::cos((deg - grad_angle) * pi / 180);
        std::printf("%6.1f deg  %14.6f  %22.6f\n", deg, rise, predicted);
    }
    std::printf("Uphill fastest along the gradient, downhill fastest against it: gradient\n"
                "descent steps along -grad.\n");
}

// ---------------------------------------------------------------------------------------------
// 6. The sigmoid's derivative:  σ'(x) = σ(x)·(1 − σ(x)),  largest at x = 0 where σ'(0) = 0.25.
// Backpropagation multiplies one such factor per sigmoid layer, so through L layers the gradient
// is scaled by at most 0.25^L. ReLU's slope is exactly 1 where it is active: 1^L = 1.
// ---------------------------------------------------------------------------------------------
static void sigmoid_slope() {
    heading("6. The sigmoid's slope s(x)(1 - s(x)) and vanishing gradients");
    std::printf("%6s  %10s  %14s  %14s\n", "x", "s(x)", "s(x)(1-s(x))", "central diff");
    for (double x : {-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0}) {
        const double s = sigma(x);
        std::printf("%6g  %10.6f  %14.8f  %14.8f\n", x, s, s * (1 - s),
                    central_difference(sigma, x, 1e-5));
    }
    std::printf("\nBest case, every sigmoid at x = 0: the gradient reaching layer 1 of L layers\n");
    std::printf("%4s  %16s  %10s\n", "L", "sigmoid 0.25^L", "ReLU 1^L");
    for (int L : {1, 2, 5, 10, 20, 50})
        std::printf("%4d  %16.3e  %10.1f\n", L, std::pow(0.25, L), 1.0);
    std::printf(
        "Ten sigmoid layers already shrink the signal a million times (0.25^10 = 9.5e-7).\n");
}

static void lesson() {
    std::printf("Lesson 01: derivatives from the definition, and their numerical error\n");
    limit_definition();
    two_formulas();
    error_against_h();
    product_rule();
    partial_derivatives();
    sigmoid_slope();
}

// ---- Homework --------------------------------------------------------------------------------

// 01.1  The gradient of a function of n variables by central differences.
// Return the vector g with g[i] = (f(x + h·eᵢ) − f(x − h·eᵢ)) / (2h), where eᵢ is the i-th unit
// vector: move input i alone by ±h, keep the others where they are. g has as many entries as x.
std::vector<double> numerical_gradient(const std::function<double(const std::vector<double>&)>& f,
                                       const std::vector<double>& x, double h) {
    // BEGIN EXERCISE 01.1
    throw not_implemented("01.1");
    // END EXERCISE
}

// 01.2  A derivative by hand. Return p'(x) for the polynomial p(x) = x³ − 5x² + 3x + 7.
// (Then, on paper: where is p'(x) = 0? Those x are where p has a local maximum or minimum.)
double cubic_polynomial_slope(double x) {
    // BEGIN EXERCISE 01.2
    throw not_implemented("01.2");
    // END EXERCISE
}

// 01.3  The best step for a central difference. Section 3 modelled its total error as
//     E(h) = h²·|f'''(x)|/6  +  ε·|f(x)|/h,        ε = DBL_EPSILON = 2⁻⁵² ≈ 2.2e-16.
// Given f(x) and f'''(x), return the h > 0 that minimises E(h). (Set dE/dh = 0 and solve.)
double best_central_step(double f_at_x, double f_third_at_x) {
    // BEGIN EXERCISE 01.3
    throw not_implemented("01.3");
    // END EXERCISE
}

static int check_homework() {
    Homework hw("01");

    hw.check("01.1", "central-difference gradient of f(x_1, ..., x_n)",
             "central, not forward: ∂f/∂x_i ≈ (f(x + h·e_i) − f(x − h·e_i)) / 2h, "
             "where x ± h·e_i moves input i alone",
             [] {
                 // f(x, y) = 3x² + 2xy + y³ at (1, 2): the worked (10, 14) of section 5.
                 auto f = [](const std::vector<double>& v) {
                     return 3 * v[0] * v[0] + 2 * v[0] * v[1] + v[1] * v[1] * v[1];
                 };
                 const std::vector<double> g = numerical_gradient(f, {1.0, 2.0}, 1e-5);
                 expect_true("two inputs give two partial derivatives", g.size() == 2);
                 expect_near("df/dx at (1, 2)", g[0], 10.0, 1e-6);
                 expect_near("df/dy at (1, 2)", g[1], 14.0, 1e-6);

                 // Four inputs, partials by hand: f = a·b + sin c + a·eᵈ.
                 auto f4 = [](const std::vector<double>& v) {
                     return v[0] * v[1] + std::sin(v[2]) + v[0] * std::exp(v[3]);
                 };
                 const double a = 0.5, b = -1.5, c = 2.0, d = 0.3;
                 const std::vector<double> g4 = numerical_gradient(f4, {a, b, c, d}, 1e-5);
                 expect_true("four inputs give four partial derivatives", g4.size() == 4);
                 expect_near("df/da = b + e^d", g4[0], b + std::exp(d), 1e-8);
                 expect_near("df/db = a", g4[1], a, 1e-8);
                 expect_near("df/dc = cos c", g4[2], std::cos(c), 1e-8);
                 expect_near("df/dd = a e^d", g4[3], a * std::exp(d), 1e-8);

                 // Central, not forward: for x³ at 2 the central estimate is exactly 12 + h²,
                 // the forward one 12 + 6h + h² (12.006001 for h = 1e-3).
                 auto f1 = [](const std::vector<double>& v) { return v[0] * v[0] * v[0]; };
                 expect_near("d(x^3)/dx at 2 with h = 1e-3 (central gives 12 + h^2)",
                             numerical_gradient(f1, {2.0}, 1e-3)[0], 12.000001, 1e-9);
             });

    hw.check("01.2", "p'(x) for p(x) = x^3 - 5x^2 + 3x + 7, by hand",
             "power rule, term by term: d/dx x^n = n x^(n-1), and a constant has slope 0", [] {
                 auto p = [](double x) { return x * x * x - 5 * x * x + 3 * x + 7; };
                 for (double x : {-2.0, 0.0, 1.0 / 3.0, 1.0, 2.5, 3.0, 10.0}) {
                     const double numeric = central_difference(p, x, 1e-5);
                     expect_near("p'(x) against a central difference", cubic_polynomial_slope(x),
                                 numeric, 1e-6 * std::max(1.0, std::fabs(numeric)));
                 }
             });

    hw.check("01.3", "the h that minimises the central-difference error",
             "dE/dh = h|f'''|/3 - eps|f|/h^2 = 0 gives h^3 = 3 eps |f| / |f'''|", [] {
                 // Independent truth: minimise E(h) by brute force over a fine logarithmic grid.
                 auto scan = [](double f, double f3) {
                     double best_h = 0, best_e = INFINITY;
                     for (int j = 0; j <= 20000; ++j) {   // h from 1e-12 to 1e-1
                         const double h = std::pow(10.0, -12.0 + 11.0 * j / 20000);
                         const double e =
                             h * h * std::fabs(f3) / 6 + DBL_EPSILON * std::fabs(f) / h;
                         if (e < best_e) {
                             best_e = e;
                             best_h = h;
                         }
                     }
                     return best_h;
                 };
                 // x³ at x = 2 (f = 8, f''' = 6); sin at 1 (f''' = −cos 1, a negative slope);
                 // eˣ at 3.
                 const double cases[][2] = {
                     {8.0, 6.0}, {std::sin(1.0), -std::cos(1.0)}, {std::exp(3.0), std::exp(3.0)}};
                 for (const auto& c : cases) {
                     const double truth = scan(c[0], c[1]);
                     expect_near("best h (relative to a grid search)",
                                 best_central_step(c[0], c[1]) / truth, 1.0, 2e-3);
                 }
             });

    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
