// tests.cpp: the engine's tests and their tiny harness (no framework).
//
//   build/tests            run everything
//   build/tests WORD       run the tests whose "group/name" contains WORD (make test FILTER=WORD)
//   build/tests --list     list the tests
//
// Every gradient is compared with an independent truth: a central finite difference in double
// precision, a closed form, or a worked number from the course texts. A test ends in one of
//   pass, FAIL (expected vs got, at file:line), TODO (an exercise stub threw not_implemented),
//   SKIP (with the reason).
// The output is one line per test that did not pass, a table per group, and last
// `N passed, M failed` (then the TODO and SKIP counts when there are any).

#include "engine.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <dirent.h>
#include <fstream>
#include <map>
#include <sstream>
#include <iterator>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

// =============================================================================================
// The harness
// =============================================================================================

struct TestFailure : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct TestSkipped : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct TestCase {
    std::string group, name;
    std::function<void()> body;
};

static std::vector<TestCase>& registry() {
    static std::vector<TestCase> tests;
    return tests;
}

struct RegisterTest {
    RegisterTest(const char* group, const char* name, void (*body)()) {
        registry().push_back({group, name, body});
    }
};

#define TEST_JOIN2(a, b) a##b
#define TEST_JOIN(a, b) TEST_JOIN2(a, b)
#define TEST(group, name)                                                                    \
    static void TEST_JOIN(test_body_, __LINE__)();                                           \
    static RegisterTest TEST_JOIN(test_register_, __LINE__)(group, name,                     \
                                                            TEST_JOIN(test_body_, __LINE__)); \
    static void TEST_JOIN(test_body_, __LINE__)()

[[noreturn]] static void fail_at(const char* file, int line, const std::string& what) {
    throw TestFailure(std::string(file) + ":" + std::to_string(line) + ": " + what);
}

template <class T>
static std::string show(const T& v) {
    std::ostringstream s;
    s.precision(17);
    s << v;
    return s.str();
}

static void expect_near_at(const char* file, int line, const char* expr, double got,
                           double expected, double tolerance) {
    if (std::fabs(got - expected) <= tolerance) return;   // false for NaN: a NaN always fails
    fail_at(file, line, std::string(expr) + ": expected " + show(expected) + ", got " + show(got) +
                            " (tolerance " + show(tolerance) + ")");
}

template <class A, class B>
static void expect_eq_at(const char* file, int line, const char* expr, const A& got,
                         const B& expected) {
    if (got == expected) return;
    fail_at(file, line, std::string(expr) + ": expected " + show(expected) + ", got " + show(got));
}

#define EXPECT_NEAR(got, expected, tol) expect_near_at(__FILE__, __LINE__, #got, got, expected, tol)
#define EXPECT_EQ(got, expected) expect_eq_at(__FILE__, __LINE__, #got, got, expected)
#define EXPECT_TRUE(cond) \
    ((cond) ? (void)0 : fail_at(__FILE__, __LINE__, "expected true: " #cond))
// The statement must throw std::exception whose message contains `fragment` (the op's name, the
// bad value): an error a learner can act on. A stub's not_implemented passes through as TODO.
#define EXPECT_THROWS(statement, fragment)                                                     \
    do {                                                                                       \
        std::string caught_;                                                                   \
        try {                                                                                  \
            statement;                                                                         \
        } catch (const not_implemented&) {                                                     \
            throw;                                                                             \
        } catch (const std::exception& e_) {                                                   \
            caught_ = e_.what();                                                               \
            if (caught_.empty()) caught_ = "(empty message)";                                  \
        }                                                                                      \
        if (caught_.empty()) fail_at(__FILE__, __LINE__, "expected an exception from: " #statement); \
        if (caught_.find(fragment) == std::string::npos)                                       \
            fail_at(__FILE__, __LINE__, "the message \"" + caught_ + "\" should mention \"" +  \
                                            std::string(fragment) + "\"");                     \
    } while (0)
#define SKIP(reason) throw TestSkipped(reason)

enum class Outcome { pass, fail, todo, skip };

static Outcome run_one(const TestCase& t, std::string& detail) {
    try {
        t.body();
        return Outcome::pass;
    } catch (const not_implemented& e) {
        detail = e.what();
        return Outcome::todo;
    } catch (const TestSkipped& e) {
        detail = e.what();
        return Outcome::skip;
    } catch (const TestFailure& e) {
        detail = e.what();
        return Outcome::fail;
    } catch (const std::exception& e) {
        detail = std::string("unexpected exception: ") + e.what();
        return Outcome::fail;
    }
}

static void register_homework_tests();
static std::string training_losses();

int main(int argc, char** argv) {
    const std::string filter = argc > 1 ? argv[1] : "";
    if (filter == "--losses") {   // for the determinism test: the losses of a fixed run
        std::printf("%s", training_losses().c_str());
        return 0;
    }
    register_homework_tests();
    if (filter == "--list") {
        for (const TestCase& t : registry()) std::printf("%s/%s\n", t.group.c_str(), t.name.c_str());
        return 0;
    }
    const char* tag[] = {"pass", "FAIL", "TODO", "SKIP"};
    std::vector<std::string> group_order;
    std::map<std::string, std::array<int, 4>> per_group;
    std::array<int, 4> total{};
    for (const TestCase& t : registry()) {
        const std::string full = t.group + "/" + t.name;
        if (full.find(filter) == std::string::npos) continue;
        std::string detail;
        const Outcome o = run_one(t, detail);
        if (!per_group.count(t.group)) group_order.push_back(t.group);
        ++per_group[t.group][int(o)];
        ++total[int(o)];
        if (o != Outcome::pass)
            std::printf("%s  %s\n      %s\n", tag[int(o)], full.c_str(), detail.c_str());
    }
    std::printf("\n%-28s %5s %5s %5s %5s\n", "group", "pass", "FAIL", "TODO", "SKIP");
    for (const std::string& g : group_order) {
        const auto& c = per_group[g];
        std::printf("%-28s %5d %5d %5d %5d\n", g.c_str(), c[0], c[1], c[2], c[3]);
    }
    std::printf("%d passed, %d failed", total[0], total[1]);
    if (total[2]) std::printf(", %d todo", total[2]);
    if (total[3]) std::printf(", %d skipped", total[3]);
    std::printf("\n");
    return total[1] == 0 ? 0 : 1;
}

// =============================================================================================
// Helpers for the tests
// =============================================================================================

// Runs a command (another build of the tests, a lesson's homework check) and keeps its output.
struct CommandResult {
    int exit_code = -1;
    std::string output;
};

static CommandResult run_command(const std::string& command) {
    CommandResult r;
    FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
    if (!pipe) return r;
    char buf[4096];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, pipe)) r.output.append(buf, n);
    const int status = ::pclose(pipe);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

static bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

static void require_binary(const std::string& path) {
    if (!file_exists(path)) SKIP(path + " is not built (run the tests with `make test`)");
}

// Every input's gradient must match central differences to 1e-7 (doubles, h = 1e-6).
static void expect_gradcheck_at(const char* file, int line, const ScalarFunction& f,
                                const std::vector<double>& inputs) {
    const GradcheckResult r = gradcheck(f, inputs);
    if (r.worst_error <= 1e-7) return;
    const std::size_t i = r.worst_input;
    fail_at(file, line, "gradient of input " + std::to_string(i) + " at x = " + show(inputs[i]) +
                            ": backward gave " + show(r.analytic[i]) +
                            ", central difference gave " + show(r.numeric[i]));
}
#define EXPECT_GRADCHECK(f, ...) expect_gradcheck_at(__FILE__, __LINE__, f, __VA_ARGS__)

// Unary op: check at several points, kept away from any kink.
static void expect_unary_gradcheck_at(const char* file, int line, Value (*op)(const Value&),
                                      const std::vector<double>& points) {
    for (double x : points)
        expect_gradcheck_at(file, line, [op](const std::vector<Value>& v) { return op(v[0]); }, {x});
}
#define EXPECT_UNARY_GRADCHECK(op, ...) expect_unary_gradcheck_at(__FILE__, __LINE__, op, __VA_ARGS__)

// =============================================================================================
// 01 derivatives: finite differences and gradient checking
// =============================================================================================

static double cube(double x) { return x * x * x; }

TEST("01 derivatives", "forward difference of x^3 at 2 has O(h) error: 6h + h^2") {
    // (f(x+h) − f(x))/h = 3x² + 3xh + h² exactly, so the error at x = 2 is 6h + h².
    for (double h : {1e-1, 1e-2, 1e-3})
        EXPECT_NEAR(forward_difference(cube, 2.0, h) - 12.0, 6 * h + h * h, 1e-9);
}

TEST("01 derivatives", "central difference of x^3 at 2 has O(h^2) error: exactly h^2") {
    // (f(x+h) − f(x−h))/(2h) = 3x² + h² exactly for a cubic.
    for (double h : {1e-1, 1e-2, 1e-3})
        EXPECT_NEAR(central_difference(cube, 2.0, h) - 12.0, h * h, 1e-9);
}

TEST("01 derivatives", "central difference of sin at 2 gives cos 2 = -0.416147") {
    const double d = central_difference([](double x) { return std::sin(x); }, 2.0, 1e-5);
    EXPECT_NEAR(d, std::cos(2.0), 1e-10);
    EXPECT_NEAR(d, -0.416147, 5e-7);
}

TEST("01 derivatives", "gradient_error is relative for big gradients, absolute for small") {
    EXPECT_NEAR(gradient_error(1000.0, 1001.0), 1.0 / 1001.0, 1e-15);
    EXPECT_NEAR(gradient_error(1e-12, 0.0), 1e-12, 1e-24);
    EXPECT_NEAR(gradient_error(-3.0, -3.0), 0.0, 0.0);
}

TEST("01 derivatives", "partial derivatives of 3x^2 + 2xy + y^3 at (1, 2) are 10 and 14") {
    const GradcheckResult r = gradcheck(
        [](const std::vector<Value>& v) {
            const Value &x = v[0], &y = v[1];
            return 3 * pow(x, 2) + 2 * x * y + pow(y, 3);
        },
        {1.0, 2.0});
    EXPECT_NEAR(r.analytic[0], 10.0, 1e-12);
    EXPECT_NEAR(r.analytic[1], 14.0, 1e-12);
    EXPECT_TRUE(r.worst_error < 1e-8);
}

TEST("01 derivatives", "gradcheck catches a wrong derivative and names the input") {
    // An op whose recorded slope is wrong on purpose: out = 3·b, but it claims ∂out/∂b = 2.
    auto buggy = [](const std::vector<Value>& v) {
        return v[0] + Value::from_op(3 * v[1].data(), "buggy", v[1], 2.0);
    };
    const GradcheckResult r = gradcheck(buggy, {1.0, 1.0});
    EXPECT_EQ(r.worst_input, std::size_t(1));
    EXPECT_NEAR(r.analytic[1], 2.0, 0.0);
    EXPECT_NEAR(r.numeric[1], 3.0, 1e-8);
    EXPECT_NEAR(r.worst_error, 1.0 / 3.0, 1e-8);
    EXPECT_NEAR(r.error[0], 0.0, 1e-9);
}

// =============================================================================================
// ops: every scalar op against central differences
// =============================================================================================

TEST("ops", "a + b, a - b, a * b, a / b match finite differences") {
    const std::vector<std::vector<double>> points = {{2.0, 3.0}, {-1.5, 0.7}, {0.3, -4.0}};
    for (const auto& p : points) {
        EXPECT_GRADCHECK([](const std::vector<Value>& v) { return v[0] + v[1]; }, p);
        EXPECT_GRADCHECK([](const std::vector<Value>& v) { return v[0] - v[1]; }, p);
        EXPECT_GRADCHECK([](const std::vector<Value>& v) { return v[0] * v[1]; }, p);
        EXPECT_GRADCHECK([](const std::vector<Value>& v) { return v[0] / v[1]; }, p);
    }
}

TEST("ops", "values of + - * / and unary minus") {
    const Value a(6.0), b(-4.0);
    EXPECT_NEAR((a + b).data(), 2.0, 0.0);
    EXPECT_NEAR((a - b).data(), 10.0, 0.0);
    EXPECT_NEAR((a * b).data(), -24.0, 0.0);
    EXPECT_NEAR((a / b).data(), -1.5, 0.0);
    EXPECT_NEAR((-a).data(), -6.0, 0.0);
}

TEST("ops", "unary minus has slope -1") {
    EXPECT_UNARY_GRADCHECK([](const Value& x) { return -x; }, {-2.0, 0.5});
    Value x(3.0);
    (-x).backward();
    EXPECT_NEAR(x.grad(), -1.0, 0.0);
}

TEST("ops", "plain doubles mix on either side: 2*a, a+1, 1-a, 3/a, a/2") {
    EXPECT_GRADCHECK([](const std::vector<Value>& v) {
        const Value& a = v[0];
        return 2 * a + (a + 1) * (1 - a) + 3 / a + a / 2;
    }, {1.7});
    const Value a(4.0);
    EXPECT_NEAR((2 * a).data(), 8.0, 0.0);
    EXPECT_NEAR((a + 1).data(), 5.0, 0.0);
    EXPECT_NEAR((1 - a).data(), -3.0, 0.0);
    EXPECT_NEAR((3 / a).data(), 0.75, 0.0);
    EXPECT_NEAR((a / 2).data(), 2.0, 0.0);
}

TEST("ops", "compound assignment builds new nodes: s += x*x over 3 terms") {
    Value x(1.5);
    Value s = 0.0;
    for (int i = 0; i < 3; ++i) s += x * x;   // s = 3x²  →  ds/dx = 6x = 9
    s -= x;                                   // s = 3x² − x  →  8
    s *= 2.0;                                 // 16
    s /= 4.0;                                 // 4
    s.backward();
    EXPECT_NEAR(s.data(), (3 * 1.5 * 1.5 - 1.5) * 2 / 4, 1e-15);
    EXPECT_NEAR(x.grad(), 4.0, 1e-15);
}

TEST("ops", "pow(x, k) for k = 2, 3, 0.5, -1, -2.5 and negative x with whole k") {
    for (double k : {2.0, 3.0, 0.5, -1.0, -2.5})
        EXPECT_GRADCHECK([k](const std::vector<Value>& v) { return pow(v[0], k); }, {1.3});
    for (double k : {2.0, 3.0, -1.0})
        EXPECT_GRADCHECK([k](const std::vector<Value>& v) { return pow(v[0], k); }, {-0.8});
    EXPECT_NEAR(pow(Value(-2.0), 3).data(), -8.0, 0.0);
}

TEST("ops", "exp and log: values and finite differences") {
    EXPECT_UNARY_GRADCHECK(exp, {-2.0, 0.0, 1.5});
    EXPECT_UNARY_GRADCHECK(log, {0.1, 1.0, 7.0});
    EXPECT_NEAR(exp(Value(1.0)).data(), 2.718281828459045, 1e-15);
    EXPECT_NEAR(log(Value(1.0)).data(), 0.0, 0.0);
}

TEST("ops", "tanh, sigmoid: values and finite differences") {
    EXPECT_UNARY_GRADCHECK(tanh, {-2.0, -0.3, 0.0, 0.8, 3.0});
    EXPECT_UNARY_GRADCHECK(sigmoid, {-4.0, -0.5, 0.0, 0.5, 4.0});
    EXPECT_NEAR(sigmoid(Value(0.0)).data(), 0.5, 0.0);
    EXPECT_NEAR(tanh(Value(0.5)).data(), std::tanh(0.5), 0.0);
}

TEST("ops", "sigmoid of -800 and +800 is 0 and 1 without overflow or NaN") {
    Value lo(-800.0), hi(800.0);
    const Value s_lo = sigmoid(lo), s_hi = sigmoid(hi);
    EXPECT_NEAR(s_lo.data(), 0.0, 1e-300);
    EXPECT_NEAR(s_hi.data(), 1.0, 0.0);
    (s_lo + s_hi).backward();
    EXPECT_NEAR(lo.grad(), 0.0, 1e-300);
    EXPECT_NEAR(hi.grad(), 0.0, 0.0);
}

TEST("ops", "relu and leaky_relu away from the kink; slope 0 (or the leak) at x <= 0") {
    EXPECT_UNARY_GRADCHECK(relu, {-1.5, -0.1, 0.2, 2.0});
    EXPECT_UNARY_GRADCHECK([](const Value& x) { return leaky_relu(x, 0.1); }, {-1.5, -0.1, 0.2, 2.0});
    Value z(0.0);
    relu(z).backward();
    EXPECT_NEAR(z.grad(), 0.0, 0.0);   // PyTorch's choice of subgradient at exactly 0
    Value n(-2.0);
    const Value out = leaky_relu(n);
    out.backward();
    EXPECT_NEAR(out.data(), -0.02, 1e-17);
    EXPECT_NEAR(n.grad(), 0.01, 0.0);
}

TEST("ops", "bad inputs throw errors naming the op and the value") {
    EXPECT_THROWS(log(Value(0.0)), "log");
    EXPECT_THROWS(log(Value(-2.0)), "-2");
    EXPECT_THROWS(Value(1.0) / Value(0.0), "division");
    EXPECT_THROWS(pow(Value(-2.0), 0.5), "pow");
    EXPECT_THROWS(pow(Value(0.0), -1.0), "pow");
    EXPECT_THROWS(exp(Value(1000.0)), "exp");
}

// =============================================================================================
// gelu: the engine exercise `make exercise E=gelu`
// =============================================================================================

TEST("gelu", "gelu matches finite differences on both sides of 0") {
    EXPECT_UNARY_GRADCHECK(gelu, {-3.0, -1.0, -0.2, 0.0, 0.4, 1.0, 2.5});
}

TEST("gelu", "gelu(1) = 0.8411920, gelu(-1) = -0.1588080, gelu(0) = 0, gelu'(0) = 0.5") {
    // Closed form of the tanh approximation, evaluated independently here.
    auto closed = [](double x) {
        return 0.5 * x * (1 + std::tanh(std::sqrt(2 / 3.141592653589793) * (x + 0.044715 * x * x * x)));
    };
    EXPECT_NEAR(gelu(Value(1.0)).data(), closed(1.0), 1e-15);
    EXPECT_NEAR(gelu(Value(1.0)).data(), 0.841192, 1e-6);
    EXPECT_NEAR(gelu(Value(-1.0)).data(), -0.158808, 1e-6);
    Value x(0.0);
    const Value y = gelu(x);
    y.backward();
    EXPECT_NEAR(y.data(), 0.0, 0.0);
    EXPECT_NEAR(x.grad(), 0.5, 1e-15);
}

// =============================================================================================
// 02 chain rule: the worked examples of the course texts
// =============================================================================================

TEST("02 chain rule", "L = (a*b + c)^2 at a=2, b=3, c=4: L = 100, grads 60, 40, 20") {
    Value a(2.0), b(3.0), c(4.0);
    const Value L = pow(a * b + c, 2);
    L.backward();
    EXPECT_NEAR(L.data(), 100.0, 0.0);
    EXPECT_NEAR(a.grad(), 60.0, 0.0);
    EXPECT_NEAR(b.grad(), 40.0, 0.0);
    EXPECT_NEAR(c.grad(), 20.0, 0.0);
}

TEST("02 chain rule", "y = (W*x + b)^2 at W=2, x=3, b=1: y = 49, grads 42, 28, 14") {
    Value W(2.0), x(3.0), b(1.0);
    const Value v = W * x + b;
    const Value y = v * v;
    y.backward();
    EXPECT_NEAR(y.data(), 49.0, 0.0);
    EXPECT_NEAR(W.grad(), 42.0, 0.0);
    EXPECT_NEAR(x.grad(), 28.0, 0.0);
    EXPECT_NEAR(b.grad(), 14.0, 0.0);
    EXPECT_NEAR(v.grad(), 14.0, 0.0);   // dy/dv = 2v, the interior gradient
}

TEST("02 chain rule", "f = (3x + 2)^2 at x = 1: f = 25, f' = 30") {
    Value x(1.0);
    const Value f = pow(3 * x + 2, 2);
    f.backward();
    EXPECT_NEAR(f.data(), 25.0, 0.0);
    EXPECT_NEAR(x.grad(), 30.0, 0.0);
}

TEST("02 chain rule", "one-hidden-unit ReLU net, target 4: L = 0.25, dL/dw1 = -3") {
    Value w1(2.0), b1(-1.0), w2(3.0), b2(0.5);
    const double x = 1.0, target = 4.0;
    const Value y = w2 * relu(w1 * x + b1) + b2;   // z = 1, a = 1, y = 3.5
    const Value L = pow(y - target, 2);
    L.backward();
    EXPECT_NEAR(y.data(), 3.5, 0.0);
    EXPECT_NEAR(L.data(), 0.25, 0.0);
    EXPECT_NEAR(w1.grad(), -3.0, 0.0);   // 2(y−t) · w2 · 1 · x = −1 · 3 · 1 · 1
    EXPECT_NEAR(w2.grad(), -1.0, 0.0);   // 2(y−t) · a
    EXPECT_NEAR(b2.grad(), -1.0, 0.0);
    EXPECT_GRADCHECK([x, target](const std::vector<Value>& p) {
        return pow(p[2] * relu(p[0] * x + p[1]) + p[3] - target, 2);
    }, {2.0, -1.0, 3.0, 0.5});
}

TEST("02 chain rule", "dead ReLU chain w1=2, w2=-3, w3=4, x=1: y = 0 and dy/dw1 = 0") {
    Value w1(2.0), w2(-3.0), w3(4.0);
    const double x = 1.0;
    const Value y = w3 * relu(w2 * relu(w1 * x));   // z1 = 2, a1 = 2, z2 = −6, a2 = 0
    y.backward();
    EXPECT_NEAR(y.data(), 0.0, 0.0);
    EXPECT_NEAR(w1.grad(), 0.0, 0.0);
    EXPECT_NEAR(w2.grad(), 0.0, 0.0);
    EXPECT_NEAR(w3.grad(), 0.0, 0.0);   // a2 = 0: even the last weight learns nothing
}

TEST("02 chain rule", "sigma'(0) = 0.25, the largest slope sigmoid has") {
    Value z(0.0);
    sigmoid(z).backward();
    EXPECT_NEAR(z.grad(), 0.25, 0.0);
    for (double x : {-2.0, -0.5, 0.5, 2.0}) {
        Value v(x);
        sigmoid(v).backward();
        EXPECT_TRUE(v.grad() < 0.25);
    }
}

TEST("02 chain rule", "a value used twice gets both terms: d(x*x)/dx = 2x") {
    Value x(3.0);
    (x * x).backward();
    EXPECT_NEAR(x.grad(), 6.0, 0.0);
}

TEST("02 chain rule", "a shared weight sums its terms over every use") {
    // L = Σᵢ (w·xᵢ − yᵢ)²  →  dL/dw = Σᵢ 2(w·xᵢ − yᵢ)·xᵢ
    const double xs[] = {1.0, 2.0, -1.0}, ys[] = {2.0, 3.0, 0.5};
    Value w(0.7);
    Value L = 0.0;
    double expected = 0.0;
    for (int i = 0; i < 3; ++i) {
        L += pow(w * xs[i] - ys[i], 2);
        expected += 2 * (0.7 * xs[i] - ys[i]) * xs[i];
    }
    L.backward();
    EXPECT_NEAR(w.grad(), expected, 1e-14);
}

TEST("02 chain rule", "gradients accumulate across two backward() calls, until zero_grad") {
    Value a(2.0), b(3.0), c(4.0);
    const Value L = pow(a * b + c, 2);
    L.backward();
    L.backward();   // leaves add a second copy; interior nodes restart
    EXPECT_NEAR(a.grad(), 120.0, 0.0);
    EXPECT_NEAR(b.grad(), 80.0, 0.0);
    EXPECT_NEAR(c.grad(), 40.0, 0.0);
    zero_grad({a, b, c});
    L.backward();
    EXPECT_NEAR(a.grad(), 60.0, 0.0);
}

TEST("02 chain rule", "backward() of a leaf gives it gradient 1 (and accumulates)") {
    Value x(5.0);
    x.backward();
    EXPECT_NEAR(x.grad(), 1.0, 0.0);
    x.backward();
    EXPECT_NEAR(x.grad(), 2.0, 0.0);
}

TEST("02 chain rule", "graph_to_string lists every node with op, data and grad") {
    Value a(2.0, "a"), b(3.0, "b");
    Value L = a * b + 1.0;
    L.set_label("L");
    L.backward();
    const std::string g = graph_to_string(L);
    std::istringstream lines(g);
    std::string line;
    int count = 0;
    while (std::getline(lines, line)) ++count;
    EXPECT_EQ(count, 5);   // a, b, a*b, the constant 1, L
    // Squeeze runs of spaces so the check does not depend on column widths.
    std::string squeezed;
    for (char ch : g)
        if (!(ch == ' ' && !squeezed.empty() && squeezed.back() == ' ')) squeezed += ch;
    EXPECT_TRUE(squeezed.find("L + data=7 grad=1 ") != std::string::npos);
    EXPECT_TRUE(squeezed.find("a leaf data=2 grad=3 ") != std::string::npos);
    EXPECT_TRUE(squeezed.find("b leaf data=3 grad=2 ") != std::string::npos);
}

// =============================================================================================
// topo_sort: the engine exercise `make exercise E=topo_sort`
// =============================================================================================

TEST("topo_sort", "every node comes after its inputs, each exactly once (diamond graph)") {
    Value x(1.5);
    const Value left = x * 2.0, right = exp(x);
    const Value top = left * right + left;   // `left` is reached on two paths
    const std::vector<Node*> order = topological_order(top.node());
    std::map<const Node*, std::size_t> position;
    for (std::size_t i = 0; i < order.size(); ++i) position[order[i]] = i;
    EXPECT_EQ(position.size(), order.size());   // no duplicates
    EXPECT_EQ(order.size(), std::size_t(6));    // x, the constant 2, left, right, left·right, top
    EXPECT_TRUE(order.back() == top.node());
    for (const Node* n : order)
        for (int i = 0; i < n->n_parents; ++i)
            EXPECT_TRUE(position.at(n->parents[i]) < position.at(n));
}

TEST("topo_sort", "diamond graph gradient: d/dx (2x·e^x + 2x) = 2e^x(1 + x) + 2") {
    Value x(1.5);
    const Value left = x * 2.0;
    const Value top = left * exp(x) + left;
    top.backward();
    EXPECT_NEAR(x.grad(), 2 * std::exp(1.5) * (1 + 1.5) + 2, 1e-12);
}

TEST("topo_sort", "a chain of 10^6 nodes: backward and freeing need no deep recursion") {
    const std::int64_t before = Node::live_count;
    {
        Value x(1.0);
        Value y = x;
        const int n = 1000000;
        for (int i = 0; i < n; ++i) y = y * 1.000001;   // y = x · 1.000001ⁿ
        y.backward();
        EXPECT_NEAR(x.grad(), std::pow(1.000001, n), 1e-9);
        EXPECT_EQ(Node::live_count - before, std::int64_t(2 * n + 1));
    }   // 2·10⁶ nodes freed here, through the iterative ~Node
    EXPECT_EQ(Node::live_count, before);
}

TEST("topo_sort", "one node used 1000 times gets 1000 terms") {
    Value w(0.5);
    Value s = 0.0;
    for (int i = 1; i <= 1000; ++i) s += w * double(i);   // ds/dw = Σ i = 500500
    s.backward();
    EXPECT_NEAR(w.grad(), 500500.0, 0.0);
}

// =============================================================================================
// engine: memory
// =============================================================================================

TEST("engine", "a graph is freed when its last handle goes; parameters stay") {
    const std::int64_t before = Node::live_count;
    Rng rng(1);
    {
        MLP model(3, {4, 1}, rng);
        const std::int64_t with_model = Node::live_count;
        EXPECT_EQ(with_model - before, std::int64_t(model.parameters().size()));
        for (int step = 0; step < 3; ++step) {
            const Value loss = pow(model({1.0, -2.0, 0.5})[0] - 1.0, 2);
            loss.backward();
        }   // each step's graph dies with `loss`
        EXPECT_EQ(Node::live_count, with_model);
    }
    EXPECT_EQ(Node::live_count, before);
}

TEST("engine", "copies of a Value share one node") {
    Value a(1.0);
    Value b = a;
    b.data() = 7.0;
    EXPECT_NEAR(a.data(), 7.0, 0.0);
    EXPECT_TRUE(a.node() == b.node());
}

// =============================================================================================
// rng: the same numbers everywhere
// =============================================================================================

TEST("rng", "SplitMix64 from seed 0 gives the published first outputs") {
    Rng r(0);
    EXPECT_EQ(r.next_u64(), 0xE220A8397B1DCDAFull);
    EXPECT_EQ(r.next_u64(), 0x6E789E6AA1B965F4ull);
    EXPECT_EQ(r.next_u64(), 0x06C45D188009454Full);
}

TEST("rng", "same seed, same numbers; different seed, different numbers") {
    Rng a(42), b(42), c(43);
    for (int i = 0; i < 100; ++i) {
        const double x = a.uniform();
        EXPECT_EQ(x, b.uniform());
        EXPECT_TRUE(x != c.uniform());
    }
}

TEST("rng", "uniform has mean 1/2, variance 1/12; normal has mean 0, variance 1") {
    // With n = 200,000 samples the standard error of a mean is σ/√n: tolerances are 5 of those.
    Rng r(7);
    const int n = 200000;
    double su = 0, su2 = 0, sn = 0, sn2 = 0, lo = 1, hi = 0;
    for (int i = 0; i < n; ++i) {
        const double u = r.uniform(), z = r.normal();
        su += u, su2 += u * u, sn += z, sn2 += z * z;
        lo = std::min(lo, u), hi = std::max(hi, u);
    }
    EXPECT_NEAR(su / n, 0.5, 5 * std::sqrt(1.0 / 12 / n));
    EXPECT_NEAR(su2 / n - (su / n) * (su / n), 1.0 / 12, 5 * 0.0745 / std::sqrt(n));
    EXPECT_NEAR(sn / n, 0.0, 5 / std::sqrt(n));
    EXPECT_NEAR(sn2 / n, 1.0, 5 * std::sqrt(2.0 / n));
    EXPECT_TRUE(lo >= 0.0 && hi < 1.0);
}

TEST("rng", "below(n) covers 0..n-1 evenly") {
    Rng r(3);
    int counts[6] = {};
    for (int i = 0; i < 60000; ++i) ++counts[r.below(6)];
    for (int c : counts) EXPECT_NEAR(c, 10000.0, 500.0);   // ≈ 5σ, σ = √(60000·(1/6)(5/6)) ≈ 91
}

// =============================================================================================
// 03 first network: Neuron, Layer, MLP, two moons, training
// =============================================================================================

TEST("03 first network", "a neuron computes act(w.x + b)") {
    Rng rng(5);
    Neuron n(3, Activation::tanh, rng);
    n.b.data() = 0.25;
    const std::vector<double> x = {0.5, -1.0, 2.0};
    double z = 0.25;
    for (int i = 0; i < 3; ++i) z += n.w[i].data() * x[i];
    EXPECT_NEAR(n({x[0], x[1], x[2]}).data(), std::tanh(z), 1e-15);
    EXPECT_THROWS(n({1.0, 2.0}), "expected 3 inputs, got 2");
}

TEST("03 first network", "MLP(2, {16, 16, 1}) has 337 parameters, the same for the same seed") {
    Rng r1(9), r2(9);
    const MLP a(2, {16, 16, 1}, r1), b(2, {16, 16, 1}, r2);
    const std::vector<Value> pa = a.parameters(), pb = b.parameters();
    EXPECT_EQ(pa.size(), std::size_t(2 * 16 + 16 + 16 * 16 + 16 + 16 + 1));
    for (std::size_t i = 0; i < pa.size(); ++i) EXPECT_EQ(pa[i].data(), pb[i].data());
}

TEST("03 first network", "MLP parameter gradients match finite differences") {
    Rng rng(11);
    MLP model(3, {5, 4, 2}, rng, Activation::tanh);
    const std::vector<Value> params = model.parameters();
    auto loss_value = [&] {
        const std::vector<Value> out = model({0.3, -0.7, 1.1});
        return pow(out[0] - 0.5, 2) + pow(out[1] + 0.25, 2);
    };
    loss_value().backward();
    const double h = 1e-6;
    for (const Value& p : params) {
        const double saved = p.data();
        p.data() = saved + h;
        const double up = loss_value().data();
        p.data() = saved - h;
        const double down = loss_value().data();
        p.data() = saved;
        EXPECT_NEAR(p.grad(), (up - down) / (2 * h), 1e-8);
    }
}

TEST("03 first network", "make_moons: balanced labels; with noise 0 points lie on the arcs") {
    Rng rng(0);
    const Moons m = make_moons(101, 0.0, rng);
    EXPECT_EQ(m.x.size(), std::size_t(101));
    int upper = 0;
    for (std::size_t i = 0; i < m.x.size(); ++i) {
        const double x0 = m.x[i][0], x1 = m.x[i][1];
        if (m.y[i] < 0) {
            ++upper;
            EXPECT_NEAR(x0 * x0 + x1 * x1, 1.0, 1e-12);   // on the unit circle, upper half
            EXPECT_TRUE(x1 >= -1e-12);
        } else {
            EXPECT_NEAR((x0 - 1) * (x0 - 1) + (x1 - 0.5) * (x1 - 0.5), 1.0, 1e-12);
            EXPECT_TRUE(x1 <= 0.5 + 1e-12);
        }
    }
    EXPECT_EQ(upper, 50);
}

// Plain gradient descent on the parameters: p ← p − lr·dL/dp, then zero the gradient.
static void sgd_step(const std::vector<Value>& params, double lr) {
    for (const Value& p : params) {
        p.data() -= lr * p.grad();
        p.grad() = 0.0;
    }
}

TEST("03 first network", "an MLP learns XOR to a mean squared error below 0.01") {
    Rng rng(1);
    MLP model(2, {4, 1}, rng, Activation::tanh);
    const double X[4][2] = {{0, 0}, {0, 1}, {1, 0}, {1, 1}}, Y[4] = {0, 1, 1, 0};
    double last = 0.0;
    for (int step = 0; step < 500; ++step) {
        Value loss = 0.0;
        for (int i = 0; i < 4; ++i) loss += pow(model({X[i][0], X[i][1]})[0] - Y[i], 2);
        loss = loss / 4.0;
        loss.backward();
        sgd_step(model.parameters(), 0.2);
        last = loss.data();
    }
    EXPECT_TRUE(last < 0.01);
}

TEST("03 first network", "micrograd's demo: MLP(2,{16,16,1}) fits 100 moons to 100%") {
    Rng rng(42);   // as in lesson 03 (5 of the 6 seeds we tried reach 100%; 1337 stops at 99%)
    const Moons data = make_moons(100, 0.1, rng);
    MLP model(2, {16, 16, 1}, rng);
    const std::vector<Value> params = model.parameters();
    for (int step = 0; step < 100; ++step) {
        // mean max-margin loss relu(1 − y·score) + 1e-4·Σ p², SGD with a decaying rate
        Value data_loss = 0.0, l2 = 0.0;
        for (std::size_t i = 0; i < data.x.size(); ++i)
            data_loss += relu(1 - data.y[i] * model({data.x[i][0], data.x[i][1]})[0]);
        for (const Value& p : params) l2 += p * p;
        const Value loss = data_loss / double(data.x.size()) + 1e-4 * l2;
        loss.backward();
        sgd_step(params, 1.0 - 0.9 * step / 100);
    }
    int correct = 0;
    for (std::size_t i = 0; i < data.x.size(); ++i)
        correct += (model({data.x[i][0], data.x[i][1]})[0].data() > 0) == (data.y[i] > 0);
    EXPECT_EQ(correct, 100);
}

// =============================================================================================
// Part 2: tensors. The engine is built here with real = double (make: -DENGINE_DOUBLE).
// =============================================================================================

static_assert(sizeof(real) == sizeof(double), "tests.cpp needs the engine built with -DENGINE_DOUBLE");

using TensorFunction = std::function<Tensor(const std::vector<Tensor>&)>;

// Checks every element of every input's gradient against central differences (h = 1e-6).
// A non-scalar output is first reduced with fixed random weights R: L = Σ f(x)·R. An all-ones
// seed would hide bugs (softmax's backward of a constant gradient is exactly 0).
static void expect_tensor_gradcheck_at(const char* file, int line, const TensorFunction& f,
                                       std::vector<Tensor> inputs) {
    for (Tensor& x : inputs) x = x.detach().requires_grad_();   // fresh leaves: no old gradients
    Rng rng(99);
    const Tensor out = f(inputs);
    const Tensor weights = uniform(out.shape(), rng, 0.5, 1.5);
    auto loss_of = [&](const std::vector<Tensor>& xs) { return sum(f(xs) * weights); };
    loss_of(inputs).backward();
    const double h = 1e-6;
    for (std::size_t k = 0; k < inputs.size(); ++k) {
        std::vector<real>& x = inputs[k].values();
        for (std::size_t i = 0; i < x.size(); ++i) {
            const real saved = x[i];
            x[i] = saved + h;
            const double up = loss_of(inputs).item();
            x[i] = saved - h;
            const double down = loss_of(inputs).item();
            x[i] = saved;
            const double numeric = (up - down) / (2 * h), analytic = inputs[k].grad()[i];
            if (gradient_error(analytic, numeric) > 1e-6)
                fail_at(file, line, "input " + std::to_string(k) + " " + shape_str(inputs[k].shape()) +
                                        " element " + std::to_string(i) + ": backward gave " +
                                        show(analytic) + ", central difference gave " + show(numeric));
        }
    }
}
#define EXPECT_TENSOR_GRADCHECK(f, ...) expect_tensor_gradcheck_at(__FILE__, __LINE__, f, __VA_ARGS__)

// Random values in ±[0.2, 1.5]: away from 0, where relu, leaky_relu and |x| have kinks.
static Tensor away_from_zero(Shape shape, Rng& rng) {
    Tensor t(std::move(shape));
    for (real& v : t.values()) v = real(rng.uniform(0.2, 1.5) * (rng.uniform() < 0.5 ? -1 : 1));
    return t;
}

static void expect_values_at(const char* file, int line, const Tensor& t,
                             const std::vector<double>& expected, double tol) {
    if (t.numel() != expected.size())
        fail_at(file, line, "expected " + std::to_string(expected.size()) + " values, got " + t.str());
    for (std::size_t i = 0; i < expected.size(); ++i)
        if (!(std::fabs(t.values()[i] - expected[i]) <= tol))
            fail_at(file, line, "element " + std::to_string(i) + ": expected " + show(expected[i]) +
                                    ", got " + show(t.values()[i]) + " in " + t.str(12));
}
#define EXPECT_VALUES(t, ...) expect_values_at(__FILE__, __LINE__, t, __VA_ARGS__)

static void expect_grad_at(const char* file, int line, const Tensor& t,
                           const std::vector<double>& expected, double tol) {
    expect_values_at(file, line, Tensor(t.shape(), t.grad()), expected, tol);
}
#define EXPECT_GRAD(t, ...) expect_grad_at(__FILE__, __LINE__, t, __VA_ARGS__)

// ---- 04 tensors ------------------------------------------------------------------------------

TEST("04 tensors", "matmul worked example: X[2x3]·W[3x2] = [[4, 5], [10, 11]]") {
    Tensor X({2, 3}, {1, 2, 3, 4, 5, 6}), W({3, 2}, {1, 0, 0, 1, 1, 1});
    X.requires_grad_(), W.requires_grad_();
    const Tensor Z = matmul(X, W);
    EXPECT_TRUE(Z.shape() == Shape({2, 2}));
    EXPECT_VALUES(Z, {4, 5, 10, 11}, 0.0);
    Z.backward(Tensor::full({2, 2}, 1));   // dZ = ones
    EXPECT_GRAD(X, {1, 1, 2, 1, 1, 2}, 0.0);      // dX = dZ·Wᵀ
    EXPECT_GRAD(W, {5, 5, 7, 7, 9, 9}, 0.0);      // dW = Xᵀ·dZ
}

TEST("04 tensors", "matmul 2-D, batched 3-D and 3-D x 2-D match finite differences") {
    Rng rng(1);
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return matmul(x[0], x[1]); },
                            {randn({3, 5}, rng), randn({5, 2}, rng)});
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return matmul(x[0], x[1]); },
                            {randn({2, 3, 4}, rng), randn({2, 4, 3}, rng)});
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return matmul(x[0], x[1]); },
                            {randn({2, 3, 4}, rng), randn({4, 5}, rng)});
}

TEST("04 tensors", "matmul equals the naive triple loop on odd shapes") {
    Rng rng(2);
    const Tensor a = randn({7, 5}, rng), b = randn({5, 3}, rng), c = matmul(a, b);
    for (int i = 0; i < 7; ++i)
        for (int j = 0; j < 3; ++j) {
            double s = 0;
            for (int k = 0; k < 5; ++k) s += a.at({i, k}) * b.at({k, j});
            EXPECT_NEAR(c.at({i, j}), s, 1e-12);
        }
}

TEST("04 tensors", "+ - * / broadcast: same shape, scalar, row vector, column vector, 3-D") {
    Rng rng(3);
    const std::vector<std::pair<Shape, Shape>> shapes = {
        {{3, 5}, {3, 5}}, {{3, 5}, {1}}, {{3, 5}, {5}}, {{3, 5}, {3, 1}}, {{1}, {2, 3}},
        {{2, 3, 4}, {4}}, {{2, 3, 4}, {3, 1}}, {{2, 1, 4}, {3, 1}}};
    for (const auto& [sa, sb] : shapes) {
        const Tensor a = away_from_zero(sa, rng), b = away_from_zero(sb, rng);
        EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return x[0] + x[1]; }, {a, b});
        EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return x[0] - x[1]; }, {a, b});
        EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return x[0] * x[1]; }, {a, b});
        EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return x[0] / x[1]; }, {a, b});
    }
}

TEST("04 tensors", "bias gradient is the sum over rows: db = sum_rows dY") {
    Tensor Y({3, 2}, {1, 2, 3, 4, 5, 6}), b({2}, {10, 20});
    b.requires_grad_();
    const Tensor out = Y + b;
    EXPECT_VALUES(out, {11, 22, 13, 24, 15, 26}, 0.0);
    out.backward(Tensor({3, 2}, {1, 2, 3, 4, 5, 6}));
    EXPECT_GRAD(b, {1 + 3 + 5, 2 + 4 + 6}, 0.0);
}

TEST("04 tensors", "scalar operands on either side: 2*x, x+1, 1-x, 3/x, x/2, -x") {
    Rng rng(4);
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) {
        return 2.0 * x[0] + (x[0] + 1.0) * (1.0 - x[0]) + 3.0 / x[0] + x[0] / 2.0 - x[0];
    }, {away_from_zero({2, 3}, rng)});
}

TEST("04 tensors", "transpose, reshape (with -1), sum and mean over all or one axis") {
    Rng rng(5);
    const Tensor x = randn({2, 3, 4}, rng);
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& v) { return transpose(v[0]); }, {x});
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& v) { return reshape(v[0], {4, -1}); }, {x});
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& v) { return sum(v[0]); }, {x});
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& v) { return mean(v[0]); }, {x});
    for (int axis : {0, 1, 2, -1}) {
        EXPECT_TENSOR_GRADCHECK([axis](const std::vector<Tensor>& v) { return sum(v[0], axis); }, {x});
        EXPECT_TENSOR_GRADCHECK([axis](const std::vector<Tensor>& v) { return mean(v[0], axis, true); }, {x});
    }
    const Tensor m({2, 3}, {1, 2, 3, 4, 5, 6});
    EXPECT_VALUES(transpose(m), {1, 4, 2, 5, 3, 6}, 0.0);
    EXPECT_VALUES(sum(m, 0), {5, 7, 9}, 0.0);
    EXPECT_VALUES(mean(m, 1), {2, 5}, 1e-15);
    EXPECT_TRUE(reshape(m, {-1}).shape() == Shape({6}));
    EXPECT_TRUE(sum(m, 1, true).shape() == Shape({2, 1}));
}

TEST("04 tensors", "exp, log, sqrt, pow, relu, leaky_relu, gelu, sigmoid, tanh") {
    Rng rng(6);
    const Tensor any = away_from_zero({3, 4}, rng), positive = uniform({3, 4}, rng, 0.2, 2.0);
    const std::vector<std::pair<const char*, Tensor (*)(const Tensor&)>> ops = {
        {"exp", exp}, {"relu", relu}, {"gelu", gelu}, {"sigmoid", sigmoid}, {"tanh", tanh}};
    for (const auto& [name, op] : ops)
        EXPECT_TENSOR_GRADCHECK([op = op](const std::vector<Tensor>& x) { return op(x[0]); }, {any});
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return leaky_relu(x[0], 0.1); }, {any});
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return log(x[0]); }, {positive});
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return sqrt(x[0]); }, {positive});
    for (double k : {2.0, 3.0, 0.5, -1.5})
        EXPECT_TENSOR_GRADCHECK([k](const std::vector<Tensor>& x) { return pow(x[0], k); }, {positive});
    // The tensor ops agree with the scalar engine of Part 1 on values.
    EXPECT_NEAR(gelu(Tensor::scalar(1.0)).item(), gelu(Value(1.0)).data(), 1e-15);
    EXPECT_NEAR(sigmoid(Tensor::scalar(-800)).item(), 0.0, 1e-300);
}

TEST("04 tensors", "concat and slice along an inner axis") {
    Rng rng(7);
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return concat({x[0], x[1]}, 1); },
                            {randn({2, 3, 2}, rng), randn({2, 1, 2}, rng)});
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return slice(x[0], 1, 1, 3); },
                            {randn({2, 4, 3}, rng)});
    const Tensor m({2, 3}, {1, 2, 3, 4, 5, 6});
    EXPECT_VALUES(slice(m, 1, 1, 3), {2, 3, 5, 6}, 0.0);
    EXPECT_VALUES(concat({m, slice(m, 1, 0, 1)}, 1), {1, 2, 3, 1, 4, 5, 6, 4}, 0.0);
}

TEST("04 tensors", "shape errors name the op and both shapes") {
    const Tensor a({2, 3}), b({4}), c({3, 2});
    EXPECT_THROWS(a + b, "+: shapes [2, 3] and [4] do not broadcast");
    EXPECT_THROWS(a - b, "-: shapes [2, 3] and [4] do not broadcast");
    EXPECT_THROWS(a * Tensor({3, 3}), "*: shapes [2, 3] and [3, 3] do not broadcast (axis 0: 2 vs 3)");
    EXPECT_THROWS(a / c, "/: shapes [2, 3] and [3, 2] do not broadcast");
    EXPECT_THROWS(matmul(a, a), "matmul: inner dimensions differ: [2, 3] · [2, 3]");
    EXPECT_THROWS(matmul(b, c), "matmul: supports [M,K]·[K,N], [B,M,K]·[B,K,N] and [B,M,K]·[K,N]; got [4] · [3, 2]");
    EXPECT_THROWS(exp(Tensor({1}, {1000})), "exp(x): e^x overflows");
    EXPECT_THROWS(matmul(Tensor({2, 2, 3}), Tensor({3, 2, 2})), "batch sizes differ");
    EXPECT_THROWS(reshape(a, {4, 2}), "cannot reshape [2, 3] (6 elements) to [4, 2]");
    EXPECT_THROWS(sum(a, 2), "axis 2 out of range for [2, 3]");
    EXPECT_THROWS(Tensor({2, 2}, {1, 2, 3}), "holds 4 values, got 3");
    EXPECT_THROWS(a / Tensor({3}, {1, 0, 2}), "contains 0");
    EXPECT_THROWS(log(Tensor({2}, {1, -1})), "log(x): x must be > 0, got -1");
    EXPECT_THROWS(slice(a, 1, 2, 5), "slice");
    EXPECT_THROWS(concat({a, b}, 0), "concat");
}

TEST("04 tensors", "backward needs a scalar or a seed, and a finite loss") {
    Tensor w = Tensor({2, 2}, {1, 2, 3, 4}).requires_grad_();
    const Tensor y = w * 2.0;
    EXPECT_THROWS(y.backward(), "backward() without a seed needs a scalar loss, got shape [2, 2]");
    EXPECT_THROWS(y.backward(Tensor({3})), "seed has shape [3]");
    EXPECT_THROWS(sum(Tensor({2}, {1, 2})).backward(), "does not depend on any parameter");
    Tensor big = Tensor({1}, {1e308}).requires_grad_();
    EXPECT_THROWS((big * 10.0).backward(), "the loss is inf");
}

TEST("04 tensors", "gradients accumulate across backward() calls; interior nodes restart") {
    Tensor w = Tensor({2}, {1, 2}).requires_grad_();
    const Tensor h = w * w;
    const Tensor L = sum(h * 3.0);   // dL/dw = 6w
    L.backward();
    L.backward();
    EXPECT_GRAD(w, {12, 24}, 0.0);
    EXPECT_GRAD(h, {3, 3}, 0.0);   // this pass only
    w.zero_grad();
    L.backward();
    EXPECT_GRAD(w, {6, 12}, 0.0);
}

TEST("04 tensors", "data without requires_grad builds no graph") {
    const Tensor x({2, 2}, {1, 2, 3, 4});
    const Tensor y = relu(matmul(x, x) + 1.0);
    EXPECT_TRUE(!y.requires_grad());
    EXPECT_EQ(y.node()->n_inputs(), 0);
}

TEST("04 tensors", "tensor graphs are freed; a chain of 100,000 ops needs no deep recursion") {
    const std::int64_t before = TensorNode::live_count;
    {
        Tensor x = Tensor({1}, {1.0}).requires_grad_();
        Tensor y = x;
        for (int i = 0; i < 100000; ++i) y = y * 1.00001;
        y.backward();
        EXPECT_NEAR(x.grad()[0], std::pow(1.00001, 100000), 1e-9);
    }
    EXPECT_EQ(TensorNode::live_count, before);
}

// ---- 05 losses -------------------------------------------------------------------------------

TEST("05 losses", "softmax-CE worked example: logits [2, 1, 0.1], class 0") {
    Tensor z = Tensor({1, 3}, {2.0, 1.0, 0.1}).requires_grad_();
    const Tensor p = softmax(z);
    EXPECT_VALUES(p, {0.659, 0.242, 0.099}, 5e-4);
    const Tensor L = cross_entropy(z, {0});
    EXPECT_NEAR(L.item(), 0.417, 5e-4);
    EXPECT_NEAR(L.item(), -std::log(p.values()[0]), 1e-12);
    L.backward();
    EXPECT_GRAD(z, {-0.341, 0.242, 0.099}, 5e-4);
    EXPECT_NEAR(z.grad()[0] + z.grad()[1] + z.grad()[2], 0.0, 1e-15);   // p − onehot sums to 0
}

TEST("05 losses", "softmax, log_softmax, cross_entropy (with smoothing) match finite differences") {
    Rng rng(8);
    const Tensor z = randn({4, 5}, rng, 2.0);
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return softmax(x[0]); }, {z});
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return log_softmax(x[0]); }, {z});
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return softmax(x[0]); }, {randn({2, 3, 4}, rng)});
    for (double smoothing : {0.0, 0.1})
        EXPECT_TENSOR_GRADCHECK([smoothing](const std::vector<Tensor>& x) {
            return cross_entropy(x[0], {1, 0, 4, 2}, smoothing);
        }, {z});
}

TEST("05 losses", "cross_entropy equals -mean(log_softmax at the label); smoothing formula") {
    Rng rng(9);
    const Tensor z = randn({3, 4}, rng);
    const std::vector<int> labels = {3, 0, 1};
    const Tensor lp = log_softmax(z);
    double nll = 0, uniform_part = 0;
    for (int b = 0; b < 3; ++b) {
        nll -= lp.at({b, labels[b]});
        for (int c = 0; c < 4; ++c) uniform_part -= lp.at({b, c}) / 4;
    }
    EXPECT_NEAR(cross_entropy(z, labels).item(), nll / 3, 1e-12);
    EXPECT_NEAR(cross_entropy(z, labels, 0.2).item(), (0.8 * nll + 0.2 * uniform_part) / 3, 1e-12);
}

TEST("05 losses", "softmax of [1000, 999] is stable: [0.731, 0.269], no inf or NaN") {
    const Tensor p = softmax(Tensor({1, 2}, {1000, 999}));
    EXPECT_VALUES(p, {1 / (1 + std::exp(-1.0)), 1 / (1 + std::exp(1.0))}, 1e-13);
    EXPECT_NEAR(cross_entropy(Tensor({1, 2}, {1000, -1000}), {1}).item(), 2000.0, 1e-9);
}

TEST("05 losses", "mse_loss and bce_with_logits: values and finite differences") {
    Rng rng(10);
    const Tensor p = randn({3, 2}, rng), t = randn({3, 2}, rng);
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return mse_loss(x[0], x[1]); }, {p, t});
    const Tensor targets = uniform({3, 2}, rng, 0.0, 1.0);
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& x) { return bce_with_logits(x[0], x[1]); },
                            {away_from_zero({3, 2}, rng), targets});
    EXPECT_NEAR(mse_loss(Tensor({2}, {1, 3}), Tensor({2}, {0, 1})).item(), (1.0 + 4.0) / 2, 0.0);
    // z = 0, t = 1: −log σ(0) = ln 2;  z = 800, t = 0: 800 (no overflow)
    EXPECT_NEAR(bce_with_logits(Tensor({1}, {0}), Tensor({1}, {1})).item(), std::log(2.0), 1e-15);
    EXPECT_NEAR(bce_with_logits(Tensor({1}, {800}), Tensor({1}, {0})).item(), 800.0, 1e-9);
}

TEST("05 losses", "bad labels and targets give clear errors") {
    const Tensor z({2, 3});
    EXPECT_THROWS(cross_entropy(z, {0, 3}), "label 3 at row 1 is outside [0, 3)");
    EXPECT_THROWS(cross_entropy(z, {0, -1}), "label -1");
    EXPECT_THROWS(cross_entropy(z, {0}), "need 2 labels, got 1");
    EXPECT_THROWS(cross_entropy(Tensor({6}), {0}), "logits must be [batch, classes], got [6]");
    EXPECT_THROWS(mse_loss(z, Tensor({3, 2})), "mse_loss: prediction [2, 3] and target [3, 2]");
}

// ---- layers: normalization, embedding, dropout -----------------------------------------------

TEST("layers", "layer_norm and rms_norm match finite differences (x, gain, bias)") {
    Rng rng(11);
    const Tensor x = randn({3, 5}, rng), gain = uniform({5}, rng, 0.5, 1.5), bias = randn({5}, rng);
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& v) { return layer_norm(v[0], v[1], v[2]); },
                            {x, gain, bias});
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& v) { return rms_norm(v[0], v[1]); }, {x, gain});
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& v) { return layer_norm(v[0], v[1], v[2]); },
                            {randn({2, 2, 4}, rng), uniform({4}, rng, 0.5, 1.5), randn({4}, rng)});
}

TEST("layers", "layer_norm rows have mean 0, variance 1; rms_norm of [3, 4] = [0.8485, 1.1314]") {
    Rng rng(12);
    const Tensor y = layer_norm(randn({4, 8}, rng, 3.0), Tensor::full({8}, 1), Tensor({8}), 0);
    for (int r = 0; r < 4; ++r) {
        double m = 0, v = 0;
        for (int j = 0; j < 8; ++j) m += y.at({r, j}) / 8;
        for (int j = 0; j < 8; ++j) v += (y.at({r, j}) - m) * (y.at({r, j}) - m) / 8;
        EXPECT_NEAR(m, 0.0, 1e-12);
        EXPECT_NEAR(v, 1.0, 1e-12);
    }
    // rms = √((9 + 16)/2) = √12.5
    EXPECT_VALUES(rms_norm(Tensor({1, 2}, {3, 4}), Tensor::full({2}, 1), 0),
                  {3 / std::sqrt(12.5), 4 / std::sqrt(12.5)}, 1e-15);
    EXPECT_NEAR(3 / std::sqrt(12.5), 0.8485, 1e-4);
}

TEST("layers", "embedding picks rows; a repeated id gets both gradients") {
    Tensor table = Tensor({3, 2}, {1, 2, 3, 4, 5, 6}).requires_grad_();
    const Tensor e = embedding(table, {2, 0, 2});
    EXPECT_VALUES(e, {5, 6, 1, 2, 5, 6}, 0.0);
    e.backward(Tensor({3, 2}, {1, 1, 2, 2, 3, 3}));
    EXPECT_GRAD(table, {2, 2, 0, 0, 1 + 3, 1 + 3}, 0.0);
    Rng rng(13);
    EXPECT_TENSOR_GRADCHECK([](const std::vector<Tensor>& v) { return embedding(v[0], {1, 1, 0}); },
                            {randn({2, 3}, rng)});
    EXPECT_THROWS(embedding(table, {0, 3}), "id 3 at position 1 is outside [0, 3)");
}

TEST("layers", "dropout: identity in eval; in training zeros about p, keeps the mean") {
    Rng rng(14);
    const Tensor x = Tensor::full({100000}, 1.0);
    EXPECT_TRUE(dropout(x, 0.3, rng, false).node() == x.node());
    const Tensor y = dropout(x, 0.3, rng, true);
    std::size_t zeros = 0;
    double total = 0;
    for (real v : y.values()) zeros += v == 0, total += v;
    EXPECT_NEAR(zeros / 1e5, 0.3, 0.01);   // σ ≈ 0.0014
    EXPECT_NEAR(total / 1e5, 1.0, 0.02);   // survivors scaled by 1/(1 − p)
    EXPECT_THROWS(dropout(x, 1.0, rng, true), "p must be in [0, 1)");
    Rng r1(5), r2(5);   // the same mask twice, so finite differences see a fixed function
    Tensor w = randn({4, 3}, rng).requires_grad_();
    const Tensor out = dropout(w, 0.5, r1, true);
    sum(out * out).backward();
    const Tensor mask = dropout(Tensor::full({4, 3}, 1.0), 0.5, r2, true);
    for (std::size_t i = 0; i < 12; ++i)
        EXPECT_NEAR(w.grad()[i], 2 * w.values()[i] * mask.values()[i] * mask.values()[i], 1e-12);
}

// ---- nn and 08 init --------------------------------------------------------------------------

TEST("08 init", "He, Xavier and GPT-2 initializers have the standard deviations they promise") {
    Rng rng(15);
    auto stddev = [](const Tensor& t) {
        double s = 0, s2 = 0;
        for (real v : t.values()) s += v, s2 += v * v;
        const double n = double(t.numel());
        return std::sqrt(s2 / n - (s / n) * (s / n));
    };
    const int fan_in = 256, fan_out = 128;
    const Shape shape = {fan_in, fan_out};   // 32,768 samples: relative error of a std ≈ 0.4%
    EXPECT_NEAR(stddev(init_weight(shape, fan_in, fan_out, Init::he_normal, rng)), std::sqrt(2.0 / 256), 0.02 * std::sqrt(2.0 / 256));
    EXPECT_NEAR(stddev(init_weight(shape, fan_in, fan_out, Init::he_uniform, rng)), std::sqrt(2.0 / 256), 0.02 * std::sqrt(2.0 / 256));
    EXPECT_NEAR(stddev(init_weight(shape, fan_in, fan_out, Init::xavier_normal, rng)), std::sqrt(2.0 / 384), 0.02 * std::sqrt(2.0 / 384));
    EXPECT_NEAR(stddev(init_weight(shape, fan_in, fan_out, Init::xavier_uniform, rng)), std::sqrt(2.0 / 384), 0.02 * std::sqrt(2.0 / 384));
    EXPECT_NEAR(stddev(init_weight(shape, fan_in, fan_out, Init::gpt2, rng)), 0.02, 0.0004);
    EXPECT_NEAR(stddev(gpt2_residual_weight(shape, 12, rng)), 0.02 / std::sqrt(24.0), 0.02 * 0.02 / std::sqrt(24.0));
    const Tensor he_u = init_weight(shape, fan_in, fan_out, Init::he_uniform, rng);
    const real bound = *std::max_element(he_u.values().begin(), he_u.values().end());
    EXPECT_TRUE(bound <= std::sqrt(6.0 / 256) && bound > 0.99 * std::sqrt(6.0 / 256));
    const Tensor zeros = init_weight({3, 3}, 3, 3, Init::zeros, rng);
    for (real v : zeros.values()) EXPECT_EQ(v, 0.0);
}

TEST("08 init", "nn::Linear: Y = X·W + b with W [in, out], b = 0; gradients by finite differences") {
    Rng rng(16);
    nn::Linear layer(4, 3, rng);
    EXPECT_TRUE(layer.W.shape() == Shape({4, 3}) && layer.b.shape() == Shape({3}));
    for (real v : layer.b.values()) EXPECT_EQ(v, 0.0);
    EXPECT_TENSOR_GRADCHECK([&layer](const std::vector<Tensor>& v) {
        nn::Linear l = layer;   // the same parameters, now given by the checker
        l.W = v[0], l.b = v[1];
        return l(v[2]);
    }, {layer.W.detach(), randn({3}, rng), randn({5, 4}, rng)});
}

TEST("08 init", "nn::MLP: same seed, same network; dropout only in training") {
    Rng r1(17), r2(17);
    nn::MLP a({4, 8, 3}, r1, Activation::relu, Init::he_normal, 0.5), b({4, 8, 3}, r2, Activation::relu, Init::he_normal, 0.5);
    EXPECT_EQ(a.parameters().size(), std::size_t(4));
    const Tensor x = Tensor::full({2, 4}, 0.5);
    a.eval(), b.eval();
    const std::vector<real> from_a = a(x).values(), from_b = b(x).values(), again = a(x).values();
    EXPECT_TRUE(from_a == from_b);
    EXPECT_TRUE(from_a == again);
    a.train();
    EXPECT_TRUE(a(x).values() != a(x).values());   // a fresh dropout mask each call
}

// ---- 06 optimizers ---------------------------------------------------------------------------

// One 1-element parameter whose gradient the test sets by hand, as in the worked examples.
static Tensor scalar_param(double w) { return Tensor({1}, {real(w)}).requires_grad_(); }
static void set_grad(const Tensor& p, double g) { p.grad() = {real(g)}; }

TEST("06 optimizers", "two momentum steps: 1.0 -> 0.95 -> 0.935 (lr 0.1, mu 0.9, g 0.5, -0.3)") {
    const Tensor w = scalar_param(1.0);
    SGD opt({w}, 0.1, 0.9);
    set_grad(w, 0.5);
    opt.step();
    EXPECT_NEAR(w.item(), 0.95, 1e-15);
    set_grad(w, -0.3);
    opt.step();
    EXPECT_NEAR(w.item(), 0.935, 1e-15);
}

TEST("06 optimizers", "two Adam steps: 1.0 -> 0.99 -> 0.9873 (lr 0.01, g 0.4, -0.2)") {
    const Tensor w = scalar_param(1.0);
    Adam opt({w}, 0.01);
    set_grad(w, 0.4);
    opt.step();
    EXPECT_NEAR(w.item(), 0.99, 1e-9);
    set_grad(w, -0.2);
    opt.step();
    EXPECT_NEAR(w.item(), 0.9873, 5e-5);
    EXPECT_EQ(opt.step_count, 2L);
    EXPECT_EQ(opt.state_bytes(), 2 * sizeof(real));
}

// A fixed problem for trajectory tests: L(w) = Σ aᵢwᵢ² + bᵢwᵢ, so g = 2aw + b, computed here.
static const double quad_a[3] = {0.5, 2.0, 0.1}, quad_b[3] = {-1.0, 0.5, 0.3};
static const double quad_w0[3] = {1.0, -0.5, 2.0};

static double quad_grad(int i, double w) { return 2 * quad_a[i] * w + quad_b[i]; }

// Runs `opt` for 6 steps through the engine (forward, backward, step) and compares each step
// with `rule`, which updates plain doubles with the optimizer's formula written out here.
template <class Rule>
static void expect_trajectory_at(const char* file, int line, Optimizer& opt, const Tensor& w, Rule rule) {
    const Tensor a({3}, {real(quad_a[0]), real(quad_a[1]), real(quad_a[2])});
    const Tensor b({3}, {real(quad_b[0]), real(quad_b[1]), real(quad_b[2])});
    double expected[3] = {quad_w0[0], quad_w0[1], quad_w0[2]};
    for (int t = 1; t <= 6; ++t) {
        opt.zero_grad();
        sum(a * w * w + b * w).backward();
        opt.step();
        for (int i = 0; i < 3; ++i) {
            rule(i, t, expected[i], quad_grad(i, expected[i]));
            if (std::fabs(w.values()[i] - expected[i]) > 1e-12)
                fail_at(file, line, "step " + std::to_string(t) + ", w[" + std::to_string(i) +
                                        "]: expected " + show(expected[i]) + ", got " + show(w.values()[i]));
        }
    }
}
#define EXPECT_TRAJECTORY(opt, w, ...) expect_trajectory_at(__FILE__, __LINE__, opt, w, __VA_ARGS__)

static Tensor quad_start() { return Tensor({3}, {real(quad_w0[0]), real(quad_w0[1]), real(quad_w0[2])}).requires_grad_(); }

TEST("06 optimizers", "SGD, momentum, Nesterov and weight decay follow their update rules") {
    {
        const Tensor w = quad_start();
        SGD opt({w}, 0.1);
        EXPECT_TRAJECTORY(opt, w, [](int, int, double& x, double g) { x -= 0.1 * g; });
    }
    for (bool nesterov : {false, true}) {
        const Tensor w = quad_start();
        SGD opt({w}, 0.1, 0.9, nesterov, 0.01);
        double v[3] = {0, 0, 0};
        EXPECT_TRAJECTORY(opt, w, [&](int i, int, double& x, double g) {
            g += 0.01 * x;
            v[i] = 0.9 * v[i] + g;
            x -= 0.1 * (nesterov ? g + 0.9 * v[i] : v[i]);
        });
    }
}

TEST("06 optimizers", "RMSProp follows its update rule") {
    const Tensor w = quad_start();
    RMSProp opt({w}, 0.01, 0.99, 1e-8);
    double s[3] = {0, 0, 0};
    EXPECT_TRAJECTORY(opt, w, [&](int i, int, double& x, double g) {
        s[i] = 0.99 * s[i] + 0.01 * g * g;
        x -= 0.01 * g / (std::sqrt(s[i]) + 1e-8);
    });
}

TEST("06 optimizers", "Adam (L2 decay) and AdamW (decoupled decay) follow their update rules") {
    for (bool decoupled : {false, true}) {
        const Tensor w = quad_start();
        std::unique_ptr<Optimizer> opt;
        if (decoupled) opt = std::make_unique<AdamW>(std::vector<Tensor>{w}, 0.05, 0.9, 0.95, 1e-8, 0.1);
        else opt = std::make_unique<Adam>(std::vector<Tensor>{w}, 0.05, 0.9, 0.95, 1e-8, 0.1);
        double m[3] = {0, 0, 0}, v[3] = {0, 0, 0};
        EXPECT_TRAJECTORY(*opt, w, [&](int i, int t, double& x, double g) {
            if (decoupled) x -= 0.05 * 0.1 * x;
            else g += 0.1 * x;
            m[i] = 0.9 * m[i] + 0.1 * g;
            v[i] = 0.95 * v[i] + 0.05 * g * g;
            const double m_hat = m[i] / (1 - std::pow(0.9, t)), v_hat = v[i] / (1 - std::pow(0.95, t));
            x -= 0.05 * m_hat / (std::sqrt(v_hat) + 1e-8);
        });
    }
}

TEST("06 optimizers", "Lion follows its update rule: every step moves each weight by lr") {
    const Tensor w = quad_start();
    Lion opt({w}, 0.01, 0.9, 0.99, 0.1);
    double m[3] = {0, 0, 0};
    EXPECT_TRAJECTORY(opt, w, [&](int i, int, double& x, double g) {
        const double c = 0.9 * m[i] + 0.1 * g;
        x -= 0.01 * ((c > 0) - (c < 0) + 0.1 * x);
        m[i] = 0.99 * m[i] + 0.01 * g;
    });
}

TEST("06 optimizers", "state bytes per parameter; bad construction is refused") {
    const Tensor w = Tensor({10}).requires_grad_();
    EXPECT_EQ(SGD({w}, 0.1).state_bytes(), std::size_t(0));
    EXPECT_EQ(SGD({w}, 0.1, 0.9).state_bytes(), 10 * sizeof(real));
    EXPECT_EQ(AdamW({w}).state_bytes(), 20 * sizeof(real));
    EXPECT_EQ(Lion({w}).state_bytes(), 10 * sizeof(real));
    EXPECT_THROWS(SGD({}, 0.1), "SGD: no parameters to optimize");
    EXPECT_THROWS(Adam({w}, -1.0), "Adam: the learning rate must be >= 0, got -1");
    EXPECT_THROWS(SGD({Tensor({2})}, 0.1), "parameter 0 does not require grad");
    SGD sgd({w}, 0.1);
    w.grad() = {1.0};   // set by hand, with the wrong length
    EXPECT_THROWS(sgd.step(), "SGD: parameter 0 has 10 values but a gradient of 1");
    EXPECT_EQ(sgd.step_count, 0L);
}

// ---- 07 schedules ----------------------------------------------------------------------------

TEST("07 schedules", "warmup-cosine: 0 at step 0, 7.5e-5 at 500, peak, midpoint 1.65e-4, floor") {
    auto lr = [](long step) { return warmup_cosine_lr(step, 2000, 10000, 3e-4, 3e-5); };
    EXPECT_NEAR(lr(0), 0.0, 0.0);
    EXPECT_NEAR(lr(500), 7.5e-5, 1e-18);
    EXPECT_NEAR(lr(2000), 3e-4, 1e-18);
    EXPECT_NEAR(lr(6000), 1.65e-4, 1e-17);
    EXPECT_NEAR(lr(10000), 3e-5, 1e-18);
    EXPECT_NEAR(lr(20000), 3e-5, 1e-18);
    for (long s = 2000; s < 10000; s += 500) EXPECT_TRUE(lr(s + 500) < lr(s));
    EXPECT_THROWS(warmup_cosine_lr(0, 200, 100, 1e-3, 0), "needs 0 <= warmup <= total, got warmup 200 and total 100");
}

TEST("07 schedules", "inverse square root, step decay and constant") {
    EXPECT_NEAR(inverse_sqrt_lr(50, 100, 1e-3), 5e-4, 1e-18);
    EXPECT_NEAR(inverse_sqrt_lr(100, 100, 1e-3), 1e-3, 1e-18);
    EXPECT_NEAR(inverse_sqrt_lr(400, 100, 1e-3), 5e-4, 1e-18);
    EXPECT_NEAR(step_decay_lr(25, 0.1, 10, 0.5), 0.025, 1e-17);
    EXPECT_NEAR(constant_lr(123, 0.3), 0.3, 0.0);
    EXPECT_THROWS(step_decay_lr(1, 0.1, 0, 0.5), "step_size must be > 0");
}

// ---- 09 clipping -----------------------------------------------------------------------------

TEST("09 clipping", "global norm of [0.3, -0.4, 0.5, -0.1, 0.2] is sqrt(0.55)") {
    const Tensor a = Tensor({2}).requires_grad_(), b = Tensor({3}).requires_grad_();
    a.grad() = {0.3, -0.4};
    b.grad() = {0.5, -0.1, 0.2};
    EXPECT_NEAR(grad_norm({a, b}), std::sqrt(0.55), 1e-15);
    EXPECT_NEAR(grad_norm({a, b}), 0.7416, 1e-4);
    const std::vector<double> per = grad_norms({a, b});
    EXPECT_NEAR(per[0], 0.5, 1e-15);
    EXPECT_NEAR(per[1], std::sqrt(0.3), 1e-15);
}

TEST("09 clipping", "clip_grad_norm scales a norm of 5 to 1 (a gradient of 2 becomes 0.4)") {
    const Tensor p = Tensor({3}).requires_grad_();
    p.grad() = {2.0, 3.0, std::sqrt(12.0)};   // ‖g‖ = √(4 + 9 + 12) = 5
    EXPECT_NEAR(clip_grad_norm({p}, 1.0), 5.0, 1e-15);
    EXPECT_GRAD(p, {0.4, 0.6, std::sqrt(12.0) / 5}, 1e-15);
    EXPECT_NEAR(grad_norm({p}), 1.0, 1e-15);
    EXPECT_NEAR(clip_grad_norm({p}, 2.0), 1.0, 1e-15);   // below max_norm: unchanged
    EXPECT_GRAD(p, {0.4, 0.6, std::sqrt(12.0) / 5}, 1e-15);
    EXPECT_THROWS(clip_grad_norm({p}, 0.0), "max_norm must be > 0, got 0");
    clip_grad_value({p}, 0.5);
    EXPECT_GRAD(p, {0.4, 0.5, 0.5}, 1e-15);
}

TEST("09 clipping", "gradient accumulation: 4 micro-batches of loss/4 equal one batch of 4x") {
    Rng rng(18);
    nn::MLP model({3, 5, 2}, rng, Activation::tanh);
    const Tensor x = randn({8, 3}, rng);
    const std::vector<int> labels = {0, 1, 1, 0, 1, 0, 0, 1};
    cross_entropy(model(x), labels).backward();
    std::vector<std::vector<real>> full;
    for (const Tensor& p : model.parameters()) full.push_back(p.grad()), p.zero_grad();
    for (int k = 0; k < 4; ++k) {
        const Tensor xb = slice(x, 0, 2 * k, 2 * k + 2);
        const std::vector<int> yb(labels.begin() + 2 * k, labels.begin() + 2 * k + 2);
        (cross_entropy(model(xb), yb) / 4.0).backward();   // accumulates: no zero_grad between
    }
    const std::vector<Tensor> params = model.parameters();
    for (std::size_t k = 0; k < params.size(); ++k)
        for (std::size_t i = 0; i < full[k].size(); ++i) EXPECT_NEAR(params[k].grad()[i], full[k][i], 1e-14);
}

TEST("09 clipping", "an MLP trains on a toy problem; its tensor graphs do not pile up") {
    Rng rng(19);
    nn::MLP model({2, 16, 3}, rng);
    AdamW opt(model.parameters(), 0.02);
    Tensor x({6, 2}, {0, 1, 1, 0, -1, 0, 0, -1, 1, 1, -1, -1});
    const std::vector<int> labels = {0, 1, 2, 0, 1, 2};
    const std::int64_t before = TensorNode::live_count;
    double first = 0, last = 0;
    for (int step = 0; step < 200; ++step) {
        opt.zero_grad();
        const Tensor loss = cross_entropy(model(x), labels);
        loss.backward();
        clip_grad_norm(model.parameters(), 1.0);
        opt.step();
        (step == 0 ? first : last) = loss.item();
    }
    EXPECT_EQ(TensorNode::live_count, before);
    EXPECT_TRUE(last < 0.01 * first);
}

// =============================================================================================
// Part 3: IDX files and checkpoints, on small files the tests write themselves
// =============================================================================================

// A fresh directory under /tmp for one test's files, removed when the test ends.
struct TempDir {
    std::string path;
    TempDir() {
        char name[] = "/tmp/engine-tests-XXXXXX";
        if (!::mkdtemp(name)) throw std::runtime_error("mkdtemp failed");
        path = name;
    }
    ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
    std::string file(const std::string& name) const { return path + "/" + name; }
};

static void write_bytes(const std::string& path, const std::vector<unsigned char>& bytes) {
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

static std::vector<unsigned char> read_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// An IDX file of unsigned bytes, written byte by byte from the format's definition.
static std::vector<unsigned char> idx_bytes(const std::vector<int>& dims, const std::vector<unsigned char>& data) {
    std::vector<unsigned char> b = {0, 0, 0x08, static_cast<unsigned char>(dims.size())};
    for (int d : dims)
        for (int shift : {24, 16, 8, 0}) b.push_back(static_cast<unsigned char>((unsigned(d) >> shift) & 0xff));
    b.insert(b.end(), data.begin(), data.end());
    return b;
}

TEST("10 data", "IDX round trip: dims and bytes come back; images scale to [0, 1]") {
    TempDir dir;
    std::vector<unsigned char> pixels;
    for (int i = 0; i < 3 * 2 * 2; ++i) pixels.push_back(static_cast<unsigned char>(i * 20));
    write_bytes(dir.file("images"), idx_bytes({3, 2, 2}, pixels));
    write_bytes(dir.file("labels"), idx_bytes({3}, {2, 0, 1}));
    const IdxArray a = read_idx(dir.file("images"));
    EXPECT_TRUE(a.dims == std::vector<int>({3, 2, 2}));
    EXPECT_TRUE(a.bytes == pixels);
    const Dataset d = load_idx_dataset(dir.file("images"), dir.file("labels"));
    EXPECT_TRUE(d.images.shape() == Shape({3, 4}));
    EXPECT_NEAR(d.images.at({2, 3}), 220 / 255.0, 1e-15);
    EXPECT_TRUE(d.labels == std::vector<int>({2, 0, 1}));
    EXPECT_EQ(d.classes, 3);
    EXPECT_VALUES(gather_rows(d.images, {2, 0}), {160 / 255.0, 180 / 255.0, 200 / 255.0, 220 / 255.0, 0, 20 / 255.0, 40 / 255.0, 60 / 255.0}, 1e-15);
}

TEST("10 data", "every kind of corrupt IDX file is rejected with its own message") {
    TempDir dir;
    const std::vector<unsigned char> good = idx_bytes({2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
    auto rejects = [&](std::vector<unsigned char> bytes, const char* message) {
        write_bytes(dir.file("bad"), bytes);
        EXPECT_THROWS(read_idx(dir.file("bad")), message);
    };
    EXPECT_THROWS(read_idx(dir.file("missing")), "cannot open");
    rejects({}, "too short for an IDX header");
    rejects({0x1f, 0x8b, 8, 0}, "gzip");
    std::vector<unsigned char> b = good;
    b[1] = 1;
    rejects(b, "bad magic number");
    b = good, b[2] = 0x0D;
    rejects(b, "element type 0x0D is not supported");
    b = good, b[3] = 7;
    rejects(b, "rank 7 is not in 1..4");
    rejects(std::vector<unsigned char>(good.begin(), good.begin() + 9), "truncated header");
    rejects(std::vector<unsigned char>(good.begin(), good.end() - 3), "truncated: the header promises 8 bytes of data, the file has 5");
    b = good, b.push_back(0);
    rejects(b, "1 unexpected bytes after the data");
    rejects(idx_bytes({2, 0, 2}, {}), "dimension 1 has size 0");
    write_bytes(dir.file("images"), good);
    write_bytes(dir.file("labels"), idx_bytes({3}, {0, 1, 2}));
    EXPECT_THROWS(load_idx_dataset(dir.file("images"), dir.file("labels")), "has 2 images but");
    EXPECT_THROWS(load_idx_dataset(dir.file("labels"), dir.file("labels")), "expected images [count, rows, cols]");
}

// A small training run whose every random choice comes from `data_rng`, so that a checkpoint
// with that generator's state can continue it exactly.
struct ToyRun {
    Rng init_rng{21}, data_rng{22};
    nn::MLP model{{3, 8, 4}, init_rng, Activation::tanh};
    AdamW opt{model.parameters(), 0.01};
    Tensor x = randn({32, 3}, init_rng);
    std::vector<int> labels = std::vector<int>(32);
    std::int64_t step = 0;
    ToyRun() {
        for (int i = 0; i < 32; ++i) labels[i] = i % 4;
    }
    double train_step() {   // a random batch of 8, one AdamW step
        std::vector<int> rows, batch_labels;
        for (int k = 0; k < 8; ++k) {
            rows.push_back(int(data_rng.below(32)));
            batch_labels.push_back(labels[rows.back()]);
        }
        opt.lr = warmup_cosine_lr(step, 5, 40, 0.05, 0.001);
        opt.zero_grad();
        const Tensor loss = cross_entropy(model(gather_rows(x, rows)), batch_labels);
        loss.backward();
        opt.step();
        ++step;
        return loss.item();
    }
    TrainingState state() { return {model.named_parameters(), &opt, {&data_rng}, step}; }
};

TEST("10 data", "checkpoint: save, load into a fresh run, continue: the same losses bit for bit") {
    TempDir dir;
    ToyRun uninterrupted, first_half;
    std::vector<double> expected;
    for (int i = 0; i < 20; ++i) expected.push_back(uninterrupted.train_step());
    for (int i = 0; i < 10; ++i) first_half.train_step();
    save_checkpoint(dir.file("run.ckpt"), first_half.state());
    ToyRun resumed;   // fresh weights, fresh optimizer, fresh data order
    TrainingState state = resumed.state();
    load_checkpoint(dir.file("run.ckpt"), state);
    resumed.step = state.step;
    EXPECT_EQ(resumed.step, std::int64_t(10));
    EXPECT_EQ(resumed.opt.step_count, 10L);
    for (int i = 10; i < 20; ++i) EXPECT_EQ(resumed.train_step(), expected[i]);
}

TEST("10 data", "a damaged or mismatched checkpoint is rejected and changes nothing") {
    TempDir dir;
    ToyRun run;
    for (int i = 0; i < 3; ++i) run.train_step();
    const std::string path = dir.file("run.ckpt");
    save_checkpoint(path, run.state());
    const std::vector<unsigned char> good = read_bytes(path);

    ToyRun other;
    const std::vector<real> before = other.model.layers[0].W.values();
    auto rejects = [&](const std::vector<unsigned char>& bytes, const char* message) {
        write_bytes(dir.file("bad.ckpt"), bytes);
        TrainingState s = other.state();
        EXPECT_THROWS(load_checkpoint(dir.file("bad.ckpt"), s), message);
        EXPECT_TRUE(other.model.layers[0].W.values() == before);   // nothing changed
        EXPECT_EQ(other.opt.step_count, 0L);
    };
    std::vector<unsigned char> flipped = good;
    flipped[good.size() / 2] ^= 0x10;
    rejects(flipped, "checksum mismatch: the file is damaged");
    rejects(std::vector<unsigned char>(good.begin(), good.begin() + good.size() / 2), "checksum mismatch");
    rejects({'h', 'e', 'l', 'l', 'o', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, "not a checkpoint (bad magic)");
    rejects({}, "not a checkpoint");

    Rng rng(5);   // another model: the shapes differ
    nn::MLP wider({3, 9, 4}, rng, Activation::tanh);
    AdamW opt(wider.parameters());
    TrainingState s{wider.named_parameters(), &opt, {&run.data_rng}, 0};
    EXPECT_THROWS(load_checkpoint(path, s), "tensor 'layers.0.W' has shape [3, 8], the model's is [3, 9]");
    SGD sgd(run.model.parameters(), 0.1);
    TrainingState t{run.model.named_parameters(), &sgd, {&run.data_rng}, 0};
    EXPECT_THROWS(load_checkpoint(path, t), "optimizer 'AdamW' where the run has 'SGD'");
}

TEST("10 data", "a save that fails leaves the previous checkpoint intact") {
    TempDir dir;
    ToyRun run;
    const std::string path = dir.file("run.ckpt");
    save_checkpoint(path, run.state());
    const std::vector<unsigned char> old = read_bytes(path);
    run.train_step();
    ::mkdir((path + ".tmp").c_str(), 0755);   // the temporary file cannot be created
    EXPECT_THROWS(save_checkpoint(path, run.state()), "cannot write");
    EXPECT_TRUE(read_bytes(path) == old);
    ::rmdir((path + ".tmp").c_str());
    save_checkpoint(path, run.state());   // and a save that works replaces it
    EXPECT_TRUE(read_bytes(path) != old);
}

// ---- memory stays flat -----------------------------------------------------------------------

TEST("memory", "training for 20,000 steps: live tensors and bytes return to the same value every step") {
    Rng rng(23);
    nn::MLP model({4, 16, 16, 3}, rng);
    AdamW opt(model.parameters(), 0.01);
    const Tensor x = randn({8, 4}, rng);
    const std::vector<int> labels = {0, 1, 2, 0, 1, 2, 0, 1};
    auto step = [&] {
        opt.zero_grad();
        const Tensor loss = cross_entropy(model(x), labels);
        loss.backward();
        clip_grad_norm(model.parameters(), 1.0);
        opt.step();
    };
    step();   // the first step creates the gradients and the optimizer state
    const std::int64_t count = TensorNode::live_count;
    const std::size_t bytes = tensor_bytes();
    for (int i = 0; i < 20000; ++i) {
        step();
        if (TensorNode::live_count != count || tensor_bytes() != bytes)
            fail_at(__FILE__, __LINE__, "step " + std::to_string(i) + ": " + std::to_string(TensorNode::live_count) +
                                            " tensors / " + std::to_string(tensor_bytes()) + " bytes, expected " +
                                            std::to_string(count) + " / " + std::to_string(bytes));
    }
    EXPECT_EQ(count, std::int64_t(6 + 1));   // 6 parameters and x
    EXPECT_TRUE(bytes > 0);
}

// ---- determinism --------------------------------------------------------------------------------

// 30 steps of a small seeded training run, each loss printed exactly (hexadecimal float).
static std::string training_losses() {
    Rng rng(24);
    nn::MLP model({5, 12, 12, 4}, rng, Activation::gelu, Init::he_normal, 0.1);
    AdamW opt(model.parameters(), 0.01);
    const Tensor x = randn({16, 5}, rng);
    std::vector<int> labels;
    for (int i = 0; i < 16; ++i) labels.push_back(int(rng.below(4)));
    std::string out;
    for (int step = 0; step < 30; ++step) {
        opt.lr = warmup_cosine_lr(step, 5, 30, 0.01, 0.001);
        opt.zero_grad();
        const Tensor loss = cross_entropy(layer_norm(model(x), Tensor::full({4}, 1), Tensor({4})), labels, 0.1);
        loss.backward();
        clip_grad_norm(model.parameters(), 1.0);
        opt.step();
        char line[64];
        std::snprintf(line, sizeof line, "%a\n", double(loss.item()));
        out += line;
    }
    return out;
}

TEST("determinism", "the same seed gives bit-identical losses, run twice and at -O0 vs -O2") {
    const std::string first = training_losses();
    EXPECT_TRUE(first == training_losses());
    require_binary("build/O0/tests");
    const CommandResult r = run_command("build/O0/tests --losses");
    if (r.exit_code != 0 || r.output != first)
        fail_at(__FILE__, __LINE__, "the -O0 build's losses differ:\n" + r.output + "\nthis build's:\n" + first);
}

// ---- anomaly mode -----------------------------------------------------------------------------

struct AnomalyModeOn {   // turns anomaly mode on for one test, and off again even if it fails
    AnomalyModeOn() { set_detect_anomaly(true); }
    ~AnomalyModeOn() { set_detect_anomaly(false); }
};

TEST("anomaly", "off by default: an overflow passes through silently") {
    EXPECT_TRUE(!detect_anomaly());
    const Value big(1e200);
    EXPECT_TRUE(std::isinf((big * big).data()));
    const Tensor t({2}, {1e200, 1});
    EXPECT_TRUE(std::isinf(sum(t * t).item()));
}

TEST("anomaly", "forward: names the op that made the Inf, its shapes, and a likely cause") {
    AnomalyModeOn on;
    Tensor w = Tensor({2, 2}, {1e200, 1, 1, 1}).requires_grad_();
    const Tensor square = w * w;   // 1e400 → inf, found when the next op reads it
    EXPECT_THROWS(sum(square), "anomaly: '*' produced NaN/Inf in its output [2, 2] (inputs: [2, 2], [2, 2]), found when 'sum' read it; likely cause: values too large");
    EXPECT_THROWS(sum(square).backward(), "'*' produced NaN/Inf");
    const Value big(1e200);
    EXPECT_THROWS(big * big, "anomaly: '*' produced inf (or a non-finite slope) from inputs 1e+200, 1e+200");
}

TEST("anomaly", "backward: names the op whose gradient overflowed") {
    AnomalyModeOn on;
    Tensor x = Tensor({1}, {1e-200}).requires_grad_();
    const Tensor y = 1.0 / x;   // 1e200: finite; its slope −1/x² = −1e400 is not
    EXPECT_THROWS(sum(y).backward(), "anomaly: the backward of '/' (output [1], inputs: [1], [1]) produced NaN/Inf in the gradient of input 1; likely cause: division by 0 or by a tiny number");
    Value v(1e-200);
    EXPECT_THROWS((1.0 / v).backward(), "anomaly: '/' produced 1e+200 (or a non-finite slope)");
}

// =============================================================================================
// fuzz: random graphs against finite differences
//
// Each graph comes from one seed: a few inputs, then random ops applied to earlier values
// (reusing values, chaining deeply, broadcasting), then backward. Every input's gradient must
// match central differences. Ops are only applied where they are smooth: log and / need their
// argument away from 0, relu away from its kink, exp away from overflow, so a failure is a bug,
// not a finite-difference artefact. A failure prints the seed and the smallest failing part of
// the graph; `SEED=<seed> make fuzz` replays exactly that graph. Seeds ≡ 3 (mod 4) make tensor
// graphs, the others scalar graphs. `make test` runs 1,300 graphs; `make fuzz N=100000` more.
// =============================================================================================

// One op of a random program: out = op(value a, value b, constant k).
struct FuzzStep {
    std::string op;
    int a, b;
    double k;
};

// ---- scalar graphs ----

static bool scalar_op_ok(const std::string& op, double a, double b, double k) {
    if (op == "/") return std::fabs(b) > 0.2 && std::fabs(a / b) < 1e3;
    if (op == "*") return std::fabs(a * b) < 1e3;
    if (op == "log") return a > 0.2;
    if (op == "exp") return std::fabs(a) < 4;
    if (op == "relu" || op == "leaky_relu") return std::fabs(a) > 0.05;
    if (op == "pow") return (k == std::floor(k) && std::fabs(a) < 10 && (k > 0 || std::fabs(a) > 0.2)) || a > 0.2;
    return std::fabs(a) < 1e3 && std::fabs(b) < 1e3;
}

static Value scalar_apply(const std::string& op, const Value& a, const Value& b, double k) {
    if (op == "+") return a + b;
    if (op == "-") return a - b;
    if (op == "*") return a * b;
    if (op == "/") return a / b;
    if (op == "neg") return -a;
    if (op == "pow") return pow(a, k);
    if (op == "exp") return exp(a);
    if (op == "log") return log(a);
    if (op == "tanh") return tanh(a);
    if (op == "sigmoid") return sigmoid(a);
    if (op == "relu") return relu(a);
    if (op == "leaky_relu") return leaky_relu(a, 0.1);
    return gelu(a);
}

struct ScalarProgram {
    std::vector<double> inputs;
    std::vector<FuzzStep> steps;

    // Values 0..n_inputs-1 are the inputs; value n_inputs + j is step j's output.
    std::vector<Value> run(const std::vector<double>& x) const {
        std::vector<Value> v(x.begin(), x.end());
        for (const FuzzStep& s : steps) v.push_back(scalar_apply(s.op, v[s.a], v[s.b], s.k));
        return v;
    }
};

static ScalarProgram random_scalar_program(Rng& rng) {
    static const char* ops[] = {"+", "-", "*", "/", "neg", "pow", "exp", "log", "tanh", "sigmoid", "relu", "leaky_relu", "gelu"};
    static const double powers[] = {2, 3, 0.5, -1, 1.5};
    ScalarProgram p;
    const int n_inputs = 1 + int(rng.below(3)), n_steps = 2 + int(rng.below(12));
    for (int i = 0; i < n_inputs; ++i) p.inputs.push_back(rng.uniform(0.1, 2.0) * (rng.uniform() < 0.5 ? -1 : 1));
    std::vector<double> v = p.inputs;
    for (int s = 0; s < n_steps; ++s) {
        for (int attempt = 0; attempt < 50; ++attempt) {
            // Prefer recent values (deep chains) but reach back too (reuse, diamonds).
            const int n = int(v.size());
            const int a = rng.uniform() < 0.6 ? n - 1 : int(rng.below(n)), b = int(rng.below(n));
            const FuzzStep step{ops[rng.below(13)], a, b, powers[rng.below(5)]};
            if (!scalar_op_ok(step.op, v[a], v[b], step.k)) continue;
            const double out = scalar_apply(step.op, Value(v[a]), Value(v[b]), step.k).data();
            if (!(std::fabs(out) < 1e3)) continue;
            p.steps.push_back(step);
            v.push_back(out);
            break;
        }
    }
    return p;
}

// The worst gradient error of value `root` over the inputs, against central differences.
static double scalar_program_error(const ScalarProgram& p, std::size_t root) {
    const std::vector<Value> v = p.run(p.inputs);
    v[root].backward();
    double worst = 0;
    for (std::size_t i = 0; i < p.inputs.size(); ++i) {
        auto f = [&](double xi) {
            std::vector<double> x = p.inputs;
            x[i] = xi;
            return p.run(x)[root].data();
        };
        worst = std::max(worst, gradient_error(v[i].grad(), central_difference(f, p.inputs[i], 1e-6)));
    }
    return worst;
}

static bool is_binary(const std::string& op) {
    return op == "+" || op == "-" || op == "*" || op == "/" || op == "matmul" || op == "concat";
}

// The steps that value `root` depends on, as readable lines.
template <class Program>
static std::string describe_subgraph(const Program& p, std::size_t root) {
    const std::size_t n_inputs = p.inputs.size();
    std::vector<bool> needed(root + 1, false);
    needed[root] = true;
    for (std::size_t j = root + 1; j-- > n_inputs;)
        if (needed[j]) {
            const FuzzStep& s = p.steps[j - n_inputs];
            needed[s.a] = true;
            if (is_binary(s.op)) needed[s.b] = true;
        }
    std::string text;
    for (std::size_t j = 0; j <= root; ++j) {
        if (!needed[j]) continue;
        if (j < n_inputs) text += "  v" + std::to_string(j) + " = input\n";
        else {
            const FuzzStep& s = p.steps[j - n_inputs];
            text += "  v" + std::to_string(j) + " = " + s.op + "(v" + std::to_string(s.a) +
                    (is_binary(s.op) ? ", v" + std::to_string(s.b) : "") + ", k=" + show(s.k) + ")\n";
        }
    }
    return text;
}

// ---- tensor graphs ----

static bool all_elements(const Tensor& t, bool (*ok)(double)) {
    for (real v : t.values())
        if (!ok(v)) return false;
    return true;
}

static Tensor tensor_apply(const std::string& op, const Tensor& a, const Tensor& b, double k) {
    if (op == "+") return a + b;
    if (op == "-") return a - b;
    if (op == "*") return a * b;
    if (op == "/") return a / b;
    if (op == "matmul") return matmul(a, b);
    if (op == "transpose") return transpose(a);
    if (op == "reshape") return reshape(a, {-1});
    if (op == "sum") return sum(a, int(k), true);
    if (op == "mean") return mean(a, int(k));
    if (op == "exp") return exp(a);
    if (op == "log") return log(a);
    if (op == "sqrt") return sqrt(a);
    if (op == "pow") return pow(a, k);
    if (op == "tanh") return tanh(a);
    if (op == "sigmoid") return sigmoid(a);
    if (op == "relu") return relu(a);
    if (op == "gelu") return gelu(a);
    if (op == "softmax") return softmax(a);
    if (op == "log_softmax") return log_softmax(a);
    if (op == "layer_norm") return layer_norm(a, Tensor::full({a.dim(-1)}, real(1.5)), Tensor::full({a.dim(-1)}, real(0.1)));
    if (op == "rms_norm") return rms_norm(a, Tensor::full({a.dim(-1)}, real(0.7)));
    return concat({a, b}, int(k));
}

// The smallest standard deviation (or root mean square) over the rows of the last axis: near
// 0, a normalization is so curved that central differences stop being accurate.
static double min_row_std(const Tensor& a) {
    const std::size_t n = a.dim(-1);
    double smallest = INFINITY;
    for (std::size_t r = 0; r < a.numel() / n; ++r) {
        double m = 0, v = 0;
        for (std::size_t j = 0; j < n; ++j) m += a.values()[r * n + j] / n;
        for (std::size_t j = 0; j < n; ++j) v += (a.values()[r * n + j] - m) * (a.values()[r * n + j] - m) / n;
        smallest = std::min(smallest, std::sqrt(v));
    }
    return smallest;
}

static double min_row_rms(const Tensor& a) {
    const std::size_t n = a.dim(-1);
    double smallest = INFINITY;
    for (std::size_t r = 0; r < a.numel() / n; ++r) {
        double s = 0;
        for (std::size_t j = 0; j < n; ++j) s += a.values()[r * n + j] * a.values()[r * n + j] / n;
        smallest = std::min(smallest, std::sqrt(s));
    }
    return smallest;
}

// Whether op may be applied here: shapes fit (the op throws otherwise) and every element is in
// a smooth region of the op.
static bool tensor_op_ok(const std::string& op, const Tensor& a, const Tensor& b, double k) {
    auto positive = [](double v) { return v > 0.2; };
    auto moderate = [](double v) { return std::fabs(v) < 4; };
    auto off_kink = [](double v) { return std::fabs(v) > 0.05; };
    auto nonzero = [](double v) { return std::fabs(v) > 0.2; };
    if ((op == "log" || op == "sqrt" || op == "pow") && !all_elements(a, positive)) return false;
    if (op == "exp" && !all_elements(a, moderate)) return false;
    if (op == "relu" && !all_elements(a, off_kink)) return false;
    if (op == "/" && !all_elements(b, nonzero)) return false;
    if ((op == "sum" || op == "mean" || op == "concat") && int(k) >= a.rank()) return false;
    if ((op == "layer_norm" || op == "rms_norm" || op == "softmax" || op == "log_softmax") && a.dim(-1) < 2) return false;
    if (op == "layer_norm" && min_row_std(a) < 0.1) return false;   // curvature grows like 1/σ³
    if (op == "rms_norm" && min_row_rms(a) < 0.1) return false;
    try {
        const Tensor out = tensor_apply(op, a, b, k);
        return all_elements(out, [](double v) { return std::fabs(v) < 1e3; }) && out.numel() <= 64;
    } catch (const std::invalid_argument&) {
        return false;   // shapes that do not fit this op
    }
}

struct TensorProgram {
    std::vector<Tensor> inputs;
    std::vector<FuzzStep> steps;

    std::vector<Tensor> run(const std::vector<Tensor>& x) const {
        std::vector<Tensor> v = x;
        for (const FuzzStep& s : steps) v.push_back(tensor_apply(s.op, v[s.a], v[s.b], s.k));
        return v;
    }
};

static TensorProgram random_tensor_program(Rng& rng) {
    static const char* ops[] = {"+", "-", "*", "/", "matmul", "transpose", "reshape", "sum", "mean", "exp", "log", "sqrt", "pow", "tanh", "sigmoid", "relu", "gelu", "softmax", "log_softmax", "layer_norm", "rms_norm", "concat"};
    const int m = 1 + int(rng.below(4)), n = 1 + int(rng.below(4)), p = 1 + int(rng.below(3));
    const std::vector<Shape> shapes = {{m, n}, {n}, {m, 1}, {1}, {n, p}, {2, m, n}};
    TensorProgram prog;
    const int n_inputs = 2 + int(rng.below(2)), n_steps = 2 + int(rng.below(6));
    for (int i = 0; i < n_inputs; ++i) {
        Tensor t(shapes[rng.below(shapes.size())]);
        for (real& v : t.values()) v = real(rng.uniform(0.3, 1.5) * (rng.uniform() < 0.7 ? 1 : -1));
        prog.inputs.push_back(t);
    }
    std::vector<Tensor> v = prog.inputs;
    for (int s = 0; s < n_steps; ++s) {
        for (int attempt = 0; attempt < 60; ++attempt) {
            const int count = int(v.size());
            const int a = rng.uniform() < 0.6 ? count - 1 : int(rng.below(count)), b = int(rng.below(count));
            const std::string op = ops[rng.below(22)];
            const double k = op == "pow" ? 2.0 : double(rng.below(3));
            if (!tensor_op_ok(op, v[a], v[b], k)) continue;
            prog.steps.push_back({op, a, b, k});
            v.push_back(tensor_apply(op, v[a], v[b], k));
            break;
        }
    }
    return prog;
}

static double tensor_program_error(const TensorProgram& p, std::size_t root) {
    std::vector<Tensor> x;
    for (const Tensor& t : p.inputs) x.push_back(t.detach().requires_grad_());
    const Tensor out = p.run(x)[root];
    Rng rng(7);
    const Tensor weights = uniform(out.shape(), rng, 0.5, 1.5);   // a random seed gradient
    if (!out.requires_grad()) return 0;
    sum(out * weights).backward();
    double worst = 0;
    for (std::size_t k = 0; k < x.size(); ++k) {
        std::vector<real>& values = x[k].values();
        for (std::size_t i = 0; i < values.size(); ++i) {
            const real saved = values[i];
            auto f = [&](double xi) {
                values[i] = real(xi);
                const double y = sum(p.run(x)[root] * weights).item();
                values[i] = saved;
                return y;
            };
            const double numeric = central_difference(f, saved, 1e-6);
            const double analytic = x[k].grad().empty() ? 0.0 : x[k].grad()[i];
            worst = std::max(worst, gradient_error(analytic, numeric));
        }
    }
    return worst;
}

// ---- the driver ----

// Checks the graph of one seed; on failure, throws with the seed and the smallest failing root.
static void fuzz_one(std::uint64_t seed) {
    Rng rng(seed);
    const bool tensors = seed % 4 == 3;
    auto fail = [&](const std::string& graph, double error) {
        throw TestFailure("graph with seed " + std::to_string(seed) + " (replay: SEED=" +
                          std::to_string(seed) + " make fuzz): gradient error " + show(error) +
                          " > 1e-6 in\n" + graph);
    };
    if (tensors) {
        const TensorProgram p = random_tensor_program(rng);
        const std::size_t n = p.inputs.size() + p.steps.size();
        for (std::size_t root = p.inputs.size(); root < n; ++root)   // the smallest failing root
            if (const double e = tensor_program_error(p, root); e > 1e-6) fail(describe_subgraph(p, root), e);
    } else {
        const ScalarProgram p = random_scalar_program(rng);
        const std::size_t n = p.inputs.size() + p.steps.size();
        for (std::size_t root = p.inputs.size(); root < n; ++root)
            if (const double e = scalar_program_error(p, root); e > 1e-6) fail(describe_subgraph(p, root), e);
    }
}

TEST("fuzz", "random scalar and tensor graphs match finite differences") {
    const char* seed = std::getenv("SEED");
    if (seed && *seed) {   // replay one graph
        fuzz_one(std::stoull(seed));
        return;
    }
    const char* count = std::getenv("FUZZ_GRAPHS");
    const bool forever = count && std::string(count) == "forever";
    const std::uint64_t n = forever ? UINT64_MAX : count && *count ? std::stoull(count) : 1300;
    for (std::uint64_t i = 0; i < n; ++i) {
        fuzz_one(1000 + i);
        if (n > 10000 && (i + 1) % 10000 == 0) std::fprintf(stderr, "fuzz: %llu graphs passed\n", (unsigned long long)(i + 1));
    }
}

// =============================================================================================
// homework: every exercise is proven both ways. The reference passes its check, and the stub
// reports TODO (not FAIL, not a crash). These run the binaries `make test` builds beside this one.
// =============================================================================================

struct Counts {
    int passed = -1, failed = -1, todo = -1;
};

// Reads "... 3 passed, 0 failed, 2 todo" (homework) or "3 passed, 0 failed[, 2 todo]" (tests):
// the last line of the output that has that shape.
static Counts parse_counts(const std::string& output) {
    Counts c;
    std::istringstream lines(output);
    std::string line;
    while (std::getline(lines, line)) {
        const std::size_t at = line.find(" passed, ");
        if (at == std::string::npos) continue;
        std::size_t start = at;
        while (start > 0 && std::isdigit(static_cast<unsigned char>(line[start - 1]))) --start;
        int passed = 0, failed = 0, todo = 0;
        const int n = std::sscanf(line.c_str() + start, "%d passed, %d failed, %d todo", &passed,
                                  &failed, &todo);
        if (n >= 2) c = {passed, failed, n == 3 ? todo : 0};
    }
    return c;
}

static std::vector<std::string> engine_regions() {
    std::ifstream f("engine.cpp");
    std::vector<std::string> regions;
    const std::string marker = "// BEGIN EXERCISE ";
    std::string line;
    while (std::getline(f, line)) {
        const std::size_t at = line.find(marker);
        if (at == std::string::npos) continue;
        std::istringstream rest(line.substr(at + marker.size()));
        std::string name;
        rest >> name;
        regions.push_back(name);
    }
    return regions;
}

static std::vector<std::string> lessons_with_homework() {
    std::vector<std::string> lessons;
    if (DIR* dir = ::opendir("lessons/solutions")) {
        while (const dirent* e = ::readdir(dir)) {
            const std::string name = e->d_name;
            if (name.size() > 4 && std::isdigit(name[0]) && name.substr(name.size() - 4) == ".cpp")
                lessons.push_back(name.substr(0, 2));
        }
        ::closedir(dir);
    }
    std::sort(lessons.begin(), lessons.end());
    return lessons;
}

static void fail_with_output(const std::string& what, const CommandResult& r) {
    throw TestFailure(what + " (exit code " + std::to_string(r.exit_code) + "); its output:\n" +
                      r.output);
}

static void register_homework_tests() {
    for (const std::string& region : engine_regions()) {
        registry().push_back({"homework", "engine region " + region + ": stub makes its tests TODO",
                              [region] {
            const std::string bin = "build/stubs/" + region + "/tests";
            require_binary(bin);
            const CommandResult r = run_command(bin + " " + region + "/");
            const Counts c = parse_counts(r.output);
            if (r.exit_code != 0 || c.passed != 0 || c.failed != 0 || c.todo <= 0)
                fail_with_output("expected only TODO from " + bin + " " + region + "/", r);
        }});
    }
    for (const std::string& lesson : lessons_with_homework()) {
        registry().push_back({"homework", "lesson " + lesson + ": reference solutions pass", [lesson] {
            const std::string bin = "build/lessons/" + lesson + "-solution";
            require_binary(bin);
            const CommandResult r = run_command(bin + " --check");
            const Counts c = parse_counts(r.output);
            if (r.exit_code != 0 || c.passed <= 0 || c.failed != 0 || c.todo != 0)
                fail_with_output("expected every exercise to pass in " + bin + " --check", r);
        }});
        registry().push_back({"homework", "lesson " + lesson + ": stubs report TODO", [lesson] {
            const std::string bin = "build/lessons/" + lesson + "-stub";
            require_binary(bin);
            const CommandResult r = run_command(bin + " --check");
            const Counts c = parse_counts(r.output);
            if (r.exit_code != 0 || c.passed != 0 || c.failed != 0 || c.todo <= 0)
                fail_with_output("expected every exercise to be TODO in " + bin + " --check", r);
        }});
    }
}
