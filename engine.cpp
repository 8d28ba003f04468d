// engine.cpp: a deep-learning engine you can read top to bottom.
//
// Contents. A first read follows the math: every section without a mark. Those marked [2nd]
// are the engineering that keeps it safe and fast (memory, checks, accounting, devices): read
// them when you want to know how, and skip the one-line hooks to them until then.
//   Part 1  The scalar engine (micrograd-style autograd on single numbers)
//     1.1  Value: a handle to a node of the graph
//     1.2  Arithmetic, each op with its local derivatives
//     1.3  Activation functions and their derivatives
//     1.4  Topological order: every node after its inputs
//     1.5  backward(): the chain rule, walked in reverse
//     1.6  Memory: reference counts, freeing without recursion, a free list  [2nd]
//     1.7  Numerical derivatives and gradient checking
//     1.8  Forward mode: dual numbers, the chain rule the other way round
//     1.9  Random numbers that are the same everywhere  [2nd]
//     1.10 Neuron, Layer, MLP
//     1.11 A toy dataset: two moons
//   Part 2  Tensors (autograd over arrays, and what training needs)
//     2.1  Tensors: storage, shape, and the graph
//     2.2  Elementwise arithmetic with broadcasting
//     2.3  Elementwise functions
//     2.4  Matrix multiplication
//     2.5  Shape ops and reductions
//     2.6  Softmax and the losses
//     2.7  Normalization, embedding, dropout
//     2.8  Initialization and layers
//     2.9  Optimizers
//     2.10 Learning-rate schedules
//     2.11 Gradient tools
//     2.12 Anomaly mode: which op made the NaN?  [2nd]
//   Part 3  Real data and checkpoints  [2nd]
//     3.1  IDX files: a format checked before it is trusted  [2nd]
//     3.2  Checkpoints: save atomically, load all or nothing  [2nd]
//   Part 4  Training at scale
//     4.1  Counting what training costs: FLOPs and tensor memory  [2nd]
//     4.2  Batch normalization
//     4.3  Attention: composed from ops, and fused with a hand-written backward
//     4.4  Multi-head causal self-attention
//     4.5  Sixteen-bit floating point, by hand
//     4.6  Mixed precision: casts, low-precision products, loss scaling
//     4.7  Activation checkpointing: recompute instead of store
//   Part 5  Tensors on the GPU  [2nd]
//     5.1  Where a tensor lives: to(), move_to(), device memory  [2nd]
//     5.2  The ops on the device, forward and backward  [2nd]
//     5.3  Gradients and the optimizer step on the device  [2nd]
//   Part 6  A language model
//     6.1  Text as tokens: bytes, and byte-pair encoding
//     6.2  A GPT: token and position embeddings, pre-norm blocks, a tied output head
//     6.3  Generation with a KV cache: one position's work per new token
//
// The one idea: each op knows its local derivative; one backward sweep of the chain rule turns
// them into dLoss/d(everything).

#include "engine.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#ifdef __GLIBC__
#include <malloc.h>   // mallopt (§4.1)
#endif
#include <sstream>
#include <sys/stat.h>
#include <type_traits>
#include <unordered_map>
#ifdef _OPENMP
#include <omp.h>
#endif

static constexpr double pi = 3.14159265358979323846;

// =============================================================================================
// Part 1: the scalar engine
// =============================================================================================

// ---------------------------------------------------------------------------------------------
// 1.1 Value: a handle to a node of the graph
//
// A Node holds `data`, `grad` = dL/d(node), its `parents`, and, set by the op that made it,
//     local_grad[i] = ∂(this node)/∂(parent i)
// so backward() only multiplies and adds (§1.5).
// ---------------------------------------------------------------------------------------------

Value::Value(double data) : Value(new Node) { node_->data = data; }

Value::Value(double data, std::string label) : Value(data) { node_->label = std::move(label); }

Value& Value::set_label(std::string label) {
    node_->label = std::move(label);
    return *this;
}

Value Value::from_op(double data, const char* op, const Value& a, double da) {
    return link(data, op, a, da, nullptr, 0.0);
}

Value Value::from_op(double data, const char* op, const Value& a, double da, const Value& b,
                     double db) {
    return link(data, op, a, da, &b, db);
}

Value Value::link(double data, const char* op, const Value& a, double da, const Value* b,
                  double db) {
    Value out(data);
    Node& n = *out.node_;
    n.op = op;
    auto add_input = [&n](Node* input, double slope) {   // one edge: input, ∂out/∂input
        n.parents[n.n_parents] = input;
        n.local_grad[n.n_parents] = slope;
        ++n.n_parents;
        ++input->refs;
    };
    add_input(a.node_, da);
    if (b) add_input(b->node_, db);
    if (detect_anomaly()) anomaly_scalar_forward(n);   // §2.12
    return out;
}

// Bad input throws, naming op and value: no silent NaN.
static void require(bool ok, const char* op, const char* what, double value) {
    if (ok) return;
    char msg[160];
    std::snprintf(msg, sizeof msg, "%s: %s, got %g", op, what, value);
    throw std::domain_error(msg);
}

// ---------------------------------------------------------------------------------------------
// 1.2 Arithmetic, each op with its local derivatives
//
// Each op records its local derivatives, written beside it.
// ---------------------------------------------------------------------------------------------

// out = a + b    ∂out/∂a = 1      ∂out/∂b = 1
Value operator+(const Value& a, const Value& b) {
    return Value::from_op(a.data() + b.data(), "+", a, 1.0, b, 1.0);
}

// out = a − b    ∂out/∂a = 1      ∂out/∂b = −1
Value operator-(const Value& a, const Value& b) {
    return Value::from_op(a.data() - b.data(), "-", a, 1.0, b, -1.0);
}

// out = a · b    ∂out/∂a = b      ∂out/∂b = a
Value operator*(const Value& a, const Value& b) {
    return Value::from_op(a.data() * b.data(), "*", a, b.data(), b, a.data());
}

// out = a / b    ∂out/∂a = 1/b    ∂out/∂b = −a/b²
Value operator/(const Value& a, const Value& b) {
    const double bv = b.data();
    require(bv != 0.0, "division a/b", "the divisor b must not be 0", bv);
    return Value::from_op(a.data() / bv, "/", a, 1.0 / bv, b, -a.data() / (bv * bv));
}

// out = −a       ∂out/∂a = −1
Value operator-(const Value& a) { return Value::from_op(-a.data(), "neg", a, -1.0); }

// `a += b` rebinds a to a new node; the old one stays in the graph.
Value& operator+=(Value& a, const Value& b) { return a = a + b; }
Value& operator-=(Value& a, const Value& b) { return a = a - b; }
Value& operator*=(Value& a, const Value& b) { return a = a * b; }
Value& operator/=(Value& a, const Value& b) { return a = a / b; }

// out = x^k      ∂out/∂x = k · x^(k−1)
Value pow(const Value& x, double k) {
    require(std::isfinite(k), "pow(x, k)", "the exponent k must be finite", k);
    const double xv = x.data();
    require(xv > 0.0 || k == std::floor(k), "pow(x, k)",
            "a negative or zero x needs a whole-number exponent k", xv);
    require(xv != 0.0 || k >= 1.0, "pow(x, k)", "x = 0 needs k >= 1 (the slope is infinite)", k);
    return Value::from_op(std::pow(xv, k), "pow", x, k * std::pow(xv, k - 1.0));
}

// out = eˣ       ∂out/∂x = eˣ = out
Value exp(const Value& x) {
    const double e = std::exp(x.data());
    require(std::isfinite(e), "exp(x)", "the result overflows a double (x > 709)", x.data());
    return Value::from_op(e, "exp", x, e);
}

// out = ln x     ∂out/∂x = 1/x
Value log(const Value& x) {
    const double xv = x.data();
    require(xv > 0.0, "log(x)", "x must be > 0", xv);
    return Value::from_op(std::log(xv), "log", x, 1.0 / xv);
}

// ---------------------------------------------------------------------------------------------
// 1.3 Activation functions and their derivatives
//
// The nonlinearity lets a network bend; its slope decides whether gradients survive depth:
// σ' ≤ 0.25, so 10 sigmoid layers shrink a gradient by 0.25¹⁰ ≈ 1e-6.
// ---------------------------------------------------------------------------------------------

// out = tanh x   ∂out/∂x = 1 − tanh²x = 1 − out²
Value tanh(const Value& x) {
    const double t = std::tanh(x.data());
    return Value::from_op(t, "tanh", x, 1.0 - t * t);
}

// out = σ(x) = 1/(1 + e⁻ˣ)   ∂out/∂x = σ(x)·(1 − σ(x))
// For x < 0, the equal form eˣ/(1 + eˣ): e⁻ˣ never overflows.
Value sigmoid(const Value& x) {
    const double xv = x.data();
    const double s = xv >= 0 ? 1.0 / (1.0 + std::exp(-xv)) : std::exp(xv) / (1.0 + std::exp(xv));
    return Value::from_op(s, "sigmoid", x, s * (1.0 - s));
}

// out = max(0, x)   ∂out/∂x = 1 if x > 0 else 0 (0 at x = 0, as PyTorch)
Value relu(const Value& x) {
    const double xv = x.data();
    return Value::from_op(xv < 0 ? 0.0 : xv, "relu", x, xv > 0 ? 1.0 : 0.0);   // NaN stays NaN
}

// out = x if x > 0 else slope·x   ∂out/∂x = 1 or slope: no unit dies
Value leaky_relu(const Value& x, double slope) {
    require(std::isfinite(slope), "leaky_relu", "the slope must be finite", slope);
    const double xv = x.data();
    return Value::from_op(xv > 0 ? xv : slope * xv, "leaky_relu", x, xv > 0 ? 1.0 : slope);
}

// GELU, tanh form (GPT-2):  out = ½·x·(1 + tanh u),   u = √(2/π)·(x + 0.044715·x³)
// ∂out/∂x = ½(1 + tanh u) + ½·x·(1 − tanh²u)·du/dx,   du/dx = √(2/π)·(1 + 3·0.044715·x²)
Value gelu(const Value& x) {
    // BEGIN EXERCISE gelu
    const double c = std::sqrt(2.0 / pi), k = 0.044715;
    const double xv = x.data();
    const double t = std::tanh(c * (xv + k * xv * xv * xv));
    const double du_dx = c * (1.0 + 3.0 * k * xv * xv);
    return Value::from_op(0.5 * xv * (1.0 + t), "gelu", x,
                          0.5 * (1.0 + t) + 0.5 * xv * (1.0 - t * t) * du_dx);
    // END EXERCISE
}

// GELU, exact (PyTorch's default):  out = x·Φ(x) = ½·x·(1 + erf(x/√2)),  Φ the normal CDF
// ∂out/∂x = Φ(x) + x·φ(x),  φ(x) = e^(−x²/2)/√(2π). The tanh form is within 4.7e-4 of it.
Value gelu(const Value& x, Approximate approximate) {
    if (approximate == Approximate::tanh) return gelu(x);
    const double xv = x.data();
    const double cdf = 0.5 * (1.0 + std::erf(xv / std::sqrt(2.0)));
    const double density = std::exp(-0.5 * xv * xv) / std::sqrt(2.0 * pi);
    return Value::from_op(xv * cdf, "gelu_exact", x, cdf + xv * density);
}

// ---------------------------------------------------------------------------------------------
// 1.4 Topological order: every node after its inputs
//
// backward() may pass on a node's gradient once all its consumers have added to it, so it walks
// backwards a list with each node after its inputs. Recursive DFS (micrograd's) overflows the
// stack on 10⁶ chained ops; we count consumers (Kahn's algorithm):
//   pass 1: find every node the root depends on; count each node's consumers;
//   pass 2: list the root, then each node whose consumers are all listed; reverse.
// A fresh `visit_stamp` per call marks the nodes seen: nothing to reset.
// ---------------------------------------------------------------------------------------------

template <class N>
std::vector<N*> topological_order(N* root) {
    // BEGIN EXERCISE topo_sort
    static std::uint32_t last_visit_stamp = 0;
    const std::uint32_t stamp = ++last_visit_stamp;
    std::vector<N*> found = {root};   // pass 1
    root->visit_stamp = stamp;
    root->pending_consumers = 0;
    for (std::size_t i = 0; i < found.size(); ++i) {
        for (int k = 0; k < found[i]->n_inputs(); ++k) {
            N* input = found[i]->input(k);
            if (input->visit_stamp != stamp) {
                input->visit_stamp = stamp;
                input->pending_consumers = 0;
                found.push_back(input);
            }
            ++input->pending_consumers;
        }
    }
    std::vector<N*> order = {root};   // pass 2
    order.reserve(found.size());
    for (std::size_t i = 0; i < order.size(); ++i) {
        for (int k = order[i]->n_inputs() - 1; k >= 0; --k) {   // so reversed, a·b lists a first
            N* input = order[i]->input(k);
            if (--input->pending_consumers == 0) order.push_back(input);
        }
    }
    std::reverse(order.begin(), order.end());   // inputs first
    return order;
    // END EXERCISE
}
template std::vector<Node*> topological_order(Node*);

// ---------------------------------------------------------------------------------------------
// 1.5 backward(): the chain rule, walked in reverse
//
// Chain rule: if L depends on x only through a node n, dL/dx = dL/dn · ∂n/∂x; if x feeds several
// nodes n_k, their terms add up:      dL/dx = Σ_k  dL/dn_k · ∂n_k/∂x
// So the backward pass is: order the graph (§1.4); seed dL/dL = 1; from the output back, for
// each node, parent.grad += local_grad · node.grad. The `+=` is the Σ: a node used twice (x·x, a
// weight shared by a batch) collects one term per use. One multiply-add per edge, however many
// inputs: reverse mode wins when there are many parameters and one loss.
// Leaf gradients accumulate across calls until zeroed, as in PyTorch; interior ones restart from
// 0, or a second backward() would resend the first pass's gradient.
// ---------------------------------------------------------------------------------------------

void Value::backward() const {
    if (!std::isfinite(node_->data))
        throw std::domain_error(
            "backward: the loss is " + std::to_string(node_->data) +
            "; look for log of 0, exp "
            "overflow, division by 0, or a learning rate so high that training diverged");
    const std::vector<Node*> order = topological_order(node_);
    for (Node* n : order)
        if (n->n_parents > 0) n->grad = 0.0;
    node_->grad += 1.0;
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
        const Node& n = **it;
        for (int i = 0; i < n.n_parents; ++i) n.parents[i]->grad += n.local_grad[i] * n.grad;
        if (detect_anomaly()) anomaly_scalar_backward(n);   // §2.12
    }
}

void zero_grad(const std::vector<Value>& values) {
    for (const Value& v : values) v.grad() = 0.0;
}

std::string graph_to_string(const Value& root) {
    const std::vector<Node*> order = topological_order(root.node());
    std::unordered_map<const Node*, std::size_t> id;
    std::ostringstream out;
    char line[256];
    for (const Node* n : order) {
        const std::size_t n_id = id.size();
        id[n] = n_id;
        std::snprintf(line, sizeof line, "n%-3zu %-10s %-10s data=%-12.6g grad=%-12.6g", n_id,
                      n->label.c_str(), n->n_parents ? n->op : "leaf", n->data, n->grad);
        out << line;
        for (int i = 0; i < n->n_parents; ++i)
            out << (i ? ", " : " from ") << 'n' << id.at(n->parents[i]) << " (local "
                << n->local_grad[i] << ')';
        out << '\n';
    }
    return out.str();
}

// ---------------------------------------------------------------------------------------------
// 1.6 Memory: reference counts, freeing without recursion, and a free list
//
// `refs` counts the handles and nodes pointing to a node: the last handle to the loss frees the
// graph, not the parameters the model holds. No cycles, so nothing leaks. Freeing cascades via a
// worklist: recursion would overflow on 10⁶ chained nodes. A free list reuses nodes, skipping
// malloc (README, How fast is it); off under AddressSanitizer, so it catches a use after free.
// ---------------------------------------------------------------------------------------------

std::int64_t Node::live_count = 0;

void Value::release(Node* node) {
    if (--node->refs > 0) return;
    std::vector<Node*> dying = {node};
    while (!dying.empty()) {
        Node* n = dying.back();
        dying.pop_back();
        for (int i = 0; i < n->n_parents; ++i)
            if (--n->parents[i]->refs == 0) dying.push_back(n->parents[i]);
        delete n;
    }
}

#if defined(__SANITIZE_ADDRESS__)   // g++
#define NODE_FREE_LIST 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)   // clang++
#define NODE_FREE_LIST 0
#endif
#endif
#ifndef NODE_FREE_LIST
#define NODE_FREE_LIST 1
#endif

#if !NODE_FREE_LIST
void* Node::operator new(std::size_t size) { return ::operator new(size); }
void Node::operator delete(void* p) { ::operator delete(p); }
#else
// A free node's first bytes point to the next free node.
static thread_local void* free_nodes = nullptr;

void* Node::operator new(std::size_t size) {
    if (!free_nodes) return ::operator new(size);
    void* p = free_nodes;
    free_nodes = *static_cast<void**>(p);
    return p;
}

void Node::operator delete(void* p) {
    *static_cast<void**>(p) = free_nodes;
    free_nodes = p;
}
#endif

// ---------------------------------------------------------------------------------------------
// 1.7 Numerical derivatives and gradient checking
//
// f'(x) = lim_{h→0} (f(x + h) − f(x)) / h  gives two estimates:
//   forward difference  (f(x + h) − f(x)) / h         error O(h)    (Taylor: h·f''/2)
//   central difference  (f(x + h) − f(x − h)) / (2h)  error O(h²)   (the f'' terms cancel)
// Smaller h helps until rounding (ε·|f|/h, ε = 2.2e-16) dominates; at h ≈ 1e-6 the central
// difference is good to ≈ 1e-9: our gradient tests' reference.
// ---------------------------------------------------------------------------------------------

double forward_difference(const std::function<double(double)>& f, double x, double h) {
    return (f(x + h) - f(x)) / h;
}

double central_difference(const std::function<double(double)>& f, double x, double h) {
    return (f(x + h) - f(x - h)) / (2.0 * h);
}

double gradient_error(double analytic, double numeric) {
    const double scale = std::max({1.0, std::fabs(analytic), std::fabs(numeric)});
    return std::fabs(analytic - numeric) / scale;
}

// 2n forward passes for n inputs: check small graphs only.
GradcheckResult gradcheck(const ScalarFunction& f, const std::vector<double>& inputs, double h) {
    std::vector<Value> x(inputs.begin(), inputs.end());
    f(x).backward();
    GradcheckResult r;
    for (std::size_t i = 0; i < x.size(); ++i) {
        auto f_of_xi = [&](double xi) {
            std::vector<Value> shifted(inputs.begin(), inputs.end());
            shifted[i].data() = xi;
            return f(shifted).data();
        };
        r.analytic.push_back(x[i].grad());
        r.numeric.push_back(central_difference(f_of_xi, inputs[i], h));
        r.error.push_back(gradient_error(r.analytic.back(), r.numeric.back()));
        if (r.error.back() > r.worst_error) {
            r.worst_error = r.error.back();
            r.worst_input = i;
        }
    }
    return r;
}

// ---------------------------------------------------------------------------------------------
// 1.8 Forward mode: dual numbers, the chain rule the other way round
//
// Forward mode runs the chain rule from the inputs on, not back (§1.5). With inputs x + t·u,
// each op computes, beside its value v, its tangent v' = dv/dt:
//     (a + b)' = a' + b'    (a·b)' = a'·b + a·b'    (a/b)' = (a'·b − a·b')/b²    f(a)' = f'(a)·a'
// These are dual numbers a + a'ε, ε² = 0: (a + a'ε)(b + b'ε) = ab + (a'b + ab')ε. The output's
// tangent is f'(x)·u; a gradient of f: ℝⁿ → ℝ takes n passes (reverse mode: 1), but all m
// derivatives of g: ℝ → ℝᵐ take one (reverse mode: m). No graph is kept.
// ---------------------------------------------------------------------------------------------

Dual operator+(const Dual& a, const Dual& b) { return {a.value + b.value, a.tangent + b.tangent}; }
Dual operator-(const Dual& a, const Dual& b) { return {a.value - b.value, a.tangent - b.tangent}; }
Dual operator-(const Dual& a) { return {-a.value, -a.tangent}; }

Dual operator*(const Dual& a, const Dual& b) {
    return {a.value * b.value, a.tangent * b.value + a.value * b.tangent};
}

Dual operator/(const Dual& a, const Dual& b) {
    require(b.value != 0.0, "division a/b", "the divisor b must not be 0", b.value);
    return {a.value / b.value, (a.tangent * b.value - a.value * b.tangent) / (b.value * b.value)};
}

Dual& operator+=(Dual& a, const Dual& b) { return a = a + b; }
Dual& operator-=(Dual& a, const Dual& b) { return a = a - b; }
Dual& operator*=(Dual& a, const Dual& b) { return a = a * b; }
Dual& operator/=(Dual& a, const Dual& b) { return a = a / b; }

// f(a)' = f'(a)·a', with §1.2–1.3's f'.
static Dual chain(const Dual& a, double f, double f_prime) { return {f, f_prime * a.tangent}; }

Dual pow(const Dual& x, double k) {
    const Value v = pow(Value(x.value), k);   // same checks as the Value op
    return chain(x, v.data(), k * std::pow(x.value, k - 1.0));
}
Dual exp(const Dual& x) {
    const double y = exp(Value(x.value)).data();
    return chain(x, y, y);   // (eˣ)' = eˣ
}
Dual log(const Dual& x) {
    return chain(x, log(Value(x.value)).data(), 1.0 / x.value);   // (ln x)' = 1/x
}
Dual tanh(const Dual& x) {
    const double y = std::tanh(x.value);
    return chain(x, y, 1.0 - y * y);
}
Dual sigmoid(const Dual& x) {
    const double y = sigmoid(Value(x.value)).data();
    return chain(x, y, y * (1.0 - y));
}
Dual relu(const Dual& x) { return chain(x, x.value < 0 ? 0.0 : x.value, x.value > 0 ? 1.0 : 0.0); }
Dual leaky_relu(const Dual& x, double slope) {
    const Value y = leaky_relu(Value(x.value), slope);
    return chain(x, y.data(), x.value > 0 ? 1.0 : slope);
}
Dual gelu(const Dual& x) {
    Value v(x.value);
    const Value y = gelu(v);
    y.backward();   // the slope, by §1.3's rule
    return chain(x, y.data(), v.grad());
}

// Seed the tangents with the direction; run f once.
double jvp(const DualFunction& f, const std::vector<double>& x,
           const std::vector<double>& direction) {
    if (direction.size() != x.size())
        throw std::invalid_argument("jvp: " + std::to_string(x.size()) +
                                    " inputs need a direction of as many numbers, got " +
                                    std::to_string(direction.size()));
    std::vector<Dual> inputs;
    for (std::size_t i = 0; i < x.size(); ++i) inputs.emplace_back(x[i], direction[i]);
    return f(inputs).tangent;
}

std::vector<double> forward_mode_gradient(const DualFunction& f, const std::vector<double>& x) {
    std::vector<double> gradient;
    for (std::size_t i = 0; i < x.size(); ++i) {
        std::vector<double> unit(x.size(), 0.0);   // eᵢ: move input i alone
        unit[i] = 1.0;
        gradient.push_back(jvp(f, x, unit));
    }
    return gradient;
}

// ---------------------------------------------------------------------------------------------
// 1.9 Random numbers that are the same everywhere
//
// The same weights on every machine. SplitMix64: add an odd constant (2⁶⁴/φ), then xor-shift
// and multiply to decorrelate neighbouring states.
// ---------------------------------------------------------------------------------------------

std::uint64_t Rng::next_u64() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The top 53 bits fill a double's mantissa: [0, 1) in steps of 2⁻⁵³.
double Rng::uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

double Rng::uniform(double lo, double hi) {
    if (!(lo <= hi && std::isfinite(lo) && std::isfinite(hi)))
        throw std::invalid_argument("uniform: needs finite lo <= hi, got " + std::to_string(lo) +
                                    " and " + std::to_string(hi));
    return lo + (hi - lo) * uniform();
}

// Marsaglia's polar method: for (u, v) uniform in the unit disc and s = u² + v²,
// u·√(−2 ln s / s) is normal.
double Rng::normal() {
    double u, v, s;
    do {
        u = uniform(-1.0, 1.0);
        v = uniform(-1.0, 1.0);
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    return u * std::sqrt(-2.0 * std::log(s) / s);
}

// Not `next_u64() % n`, which favours small values.
std::size_t Rng::below(std::size_t n) {
    if (n == 0) throw std::invalid_argument("Rng::below: [0, 0) holds no integer");
    return static_cast<std::size_t>(uniform() * double(n));
}

// ---------------------------------------------------------------------------------------------
// 1.10 Neuron, Layer, MLP
//
// Neuron: act(Σᵢ wᵢxᵢ + b). Layer: neurons on the same inputs. MLP: layers in sequence. Made of
// the ops above: no new derivative. Weights start uniform in [−1, 1], as in micrograd.
// ---------------------------------------------------------------------------------------------

Neuron::Neuron(int n_inputs, Activation act_, Rng& rng) : b(0.0), act(act_) {
    for (int i = 0; i < n_inputs; ++i) w.emplace_back(rng.uniform(-1.0, 1.0));
}

Value Neuron::operator()(const std::vector<Value>& x) const {
    if (x.size() != w.size())
        throw std::invalid_argument("Neuron: expected " + std::to_string(w.size()) +
                                    " inputs, got " + std::to_string(x.size()));
    Value sum = b;
    for (std::size_t i = 0; i < w.size(); ++i) sum += w[i] * x[i];
    return activate(sum, act);
}

std::vector<Value> Neuron::parameters() const {
    std::vector<Value> p = w;
    p.push_back(b);
    return p;
}

Layer::Layer(int n_inputs, int n_outputs, Activation act, Rng& rng) {
    for (int j = 0; j < n_outputs; ++j) neurons.emplace_back(n_inputs, act, rng);
}

std::vector<Value> Layer::operator()(const std::vector<Value>& x) const {
    std::vector<Value> out;
    for (const Neuron& n : neurons) out.push_back(n(x));
    return out;
}

std::vector<Value> Layer::parameters() const {
    std::vector<Value> p;
    for (const Neuron& n : neurons)
        for (const Value& v : n.parameters()) p.push_back(v);
    return p;
}

MLP::MLP(int n_inputs, const std::vector<int>& layer_sizes, Rng& rng, Activation hidden) {
    int fan_in = n_inputs;
    for (std::size_t l = 0; l < layer_sizes.size(); ++l) {
        const bool last = l + 1 == layer_sizes.size();
        layers.emplace_back(fan_in, layer_sizes[l], last ? Activation::linear : hidden, rng);
        fan_in = layer_sizes[l];
    }
}

std::vector<Value> MLP::operator()(const std::vector<Value>& x) const {
    std::vector<Value> h = x;
    for (const Layer& layer : layers) h = layer(h);
    return h;
}

std::vector<Value> MLP::parameters() const {
    std::vector<Value> p;
    for (const Layer& layer : layers)
        for (const Value& v : layer.parameters()) p.push_back(v);
    return p;
}

// ---------------------------------------------------------------------------------------------
// 1.11 A toy dataset: two moons
//
// Two interleaved half circles no line splits. Upper: (cos t, sin t), label −1; lower:
// (1 − cos t, ½ − sin t), label +1; t evenly spaced in [0, π]; plus N(0, noise²) noise.
// ---------------------------------------------------------------------------------------------

Moons make_moons(int n, double noise, Rng& rng) {
    Moons m;
    const int n_upper = n / 2, n_lower = n - n_upper;
    for (int i = 0; i < n; ++i) {
        const bool upper = i < n_upper;
        const int k = upper ? i : i - n_upper, count = upper ? n_upper : n_lower;
        const double t = count > 1 ? pi * k / (count - 1) : 0.0;
        double x0 = upper ? std::cos(t) : 1.0 - std::cos(t);
        double x1 = upper ? std::sin(t) : 0.5 - std::sin(t);
        x0 += noise * rng.normal();
        x1 += noise * rng.normal();
        m.x.push_back({x0, x1});
        m.y.push_back(upper ? -1.0 : 1.0);
    }
    return m;
}

// =============================================================================================
// Part 2: tensors
// =============================================================================================
//
// Part 1 made a node per number. A tensor op makes one node for a whole array (a matrix
// product). The autograd is Part 1's, but an op's m×n Jacobian is too big to store (4·10⁹
// numbers for a 256×256 matmul): a node stores a function that multiplies the incoming gradient
// by it (a vector-Jacobian product). Each op states its Jacobian; its backward applies it.

// ---------------------------------------------------------------------------------------------
// 2.1 Tensors: storage, shape, and the graph
//
// A tensor is a flat array of numbers plus a shape; element (i, j) of a [rows, cols] tensor is
// data[i·cols + j] (row-major: the last axis is contiguous). `grad` has the same layout.
// ---------------------------------------------------------------------------------------------

std::string shape_str(const Shape& shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// Checked at each multiplication: [2³², 2³²] would wrap to 0 elements.
std::size_t numel(const Shape& shape) {
    std::size_t n = 1;
    for (int d : shape) {
        if (d < 0)
            throw std::invalid_argument("shape " + shape_str(shape) + ": a size is negative");
        if (d > 0 && n > std::numeric_limits<std::size_t>::max() / std::size_t(d))
            throw std::invalid_argument("shape " + shape_str(shape) +
                                        ": more elements than 2⁶⁴ can count");
        n *= std::size_t(d);
    }
    return n;
}

static std::string to_string(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

// A wrong argument is a std::invalid_argument naming the op; a value outside an op's domain, a
// std::domain_error (§1.1).
[[noreturn]] static void argument_error(const std::string& op, const std::string& what) {
    throw std::invalid_argument(op + ": " + what);
}

static void require_argument(bool ok, const std::string& op, const std::string& what) {
    if (!ok) argument_error(op, what);
}

// A tensor lives on the CPU or on the GPU (Device, engine.h). An op with a CUDA kernel starts
// with `if (on_cuda(inputs)) return op_on_device(inputs);`, Part 5's version of it (declared in
// engine.h); every op checks that its inputs share one device.
static bool on_cuda(const Tensor& a) { return a.device() == Device::CUDA; }
static bool on_cuda(const Tensor& a, const Tensor& b) { return on_cuda(a) || on_cuda(b); }
static bool on_cuda(const Tensor& a, const Tensor& b, const Tensor& c) {
    return on_cuda(a, b) || on_cuda(c);
}
static bool on_cuda(const std::vector<Tensor>& tensors) {
    return std::any_of(tensors.begin(), tensors.end(),
                       [](const Tensor& t) { return t.device() == Device::CUDA; });
}

// Every input on `device`, or an error that says what to move.
static void check_devices(const char* op, const std::vector<Tensor>& inputs, Device device) {
    bool here = false, elsewhere = false;
    for (const Tensor& t : inputs) {
        if (t.device() == device) here = true;
        else elsewhere = true;
    }
    if (!elsewhere) return;
    if (!here && device == Device::CPU)
        argument_error(
            op,
            "no CUDA kernel for this op (its inputs are on cuda); move them with .to(Device::CPU)");
    const Device first = inputs[0].device(),
                 second = first == Device::CPU ? Device::CUDA : Device::CPU;
    argument_error(op, std::string("tensors on different devices (") + device_name(first) +
                           " and " + device_name(second) + "); move one with .to(...)");
}

// from_op keeps a graph on one device, so an input elsewhere is a leaf moved after the forward
// pass: the backward would read numbers that are no longer there.
static void check_graph_devices(const std::vector<TensorNode*>& order) {
    for (const TensorNode* n : order)
        for (int k = 0; k < n->n_inputs(); ++k)
            if (n->input(k)->device != n->device)
                argument_error(
                    "backward",
                    "input " + std::to_string(k) + " of '" + n->op + "' moved from " +
                        device_name(n->device) + " to " + device_name(n->input(k)->device) +
                        " after the forward pass; move tensors before computing with them");
}

std::int64_t TensorNode::live_count = 0;
static TensorNode* live_nodes = nullptr;   // list head

TensorNode::TensorNode() : next_live(live_nodes) {
    ++live_count;
    if (live_nodes) live_nodes->prev_live = this;
    live_nodes = this;
}

std::size_t tensor_bytes() {
    std::size_t bytes = 0;
    for (const TensorNode* n = live_nodes; n; n = n->next_live)
        bytes += (n->data.capacity() + n->grad.capacity()) * sizeof(real) + n->cuda_data.bytes() +
                 n->cuda_grad.bytes();
    return bytes;
}

// Inputs are released in a loop, not recursively (as in §1.6): an input that dies with our
// handle (use_count() == 1) first hands its own inputs to the loop.
TensorNode::~TensorNode() {
    tensor_storage_freed(*this);   // §4.1
    --live_count;
    if (prev_live) prev_live->next_live = next_live;
    else live_nodes = next_live;
    if (next_live) next_live->prev_live = prev_live;
    std::vector<std::shared_ptr<TensorNode>> releasing = std::move(parents);
    while (!releasing.empty()) {
        std::shared_ptr<TensorNode> input = std::move(releasing.back());
        releasing.pop_back();
        if (input.use_count() == 1) {
            for (std::shared_ptr<TensorNode>& p : input->parents) releasing.push_back(std::move(p));
            input->parents.clear();
        }
    }
}

Tensor::Tensor(Shape shape) : node_(std::make_shared<TensorNode>()) {
    for (int d : shape)
        if (d < 0) argument_error("Tensor", "negative size in shape " + shape_str(shape));
    const std::size_t n = ::numel(shape);
    const TensorStorageWatch watch(node_.get());   // §4.1
    try {
        node_->data.assign(n, real(0));
    } catch (const std::exception&) {   // bad_alloc, or length_error past max_size()
        argument_error("Tensor", "shape " + shape_str(shape) + " needs " + std::to_string(n) +
                                     " numbers of " + std::to_string(sizeof(real)) +
                                     " bytes: more memory than there is");
    }
    node_->shape = std::move(shape);
}

// A Tensor() is an empty handle, which every use refuses.
void Tensor::empty_handle(const char* what) {
    throw std::invalid_argument(
        std::string(what) +
        ": this Tensor is empty (default-constructed, never "
        "given a shape); make one with Tensor({rows, cols}) or assign one to it");
}

Tensor::Tensor(Shape shape, std::vector<real> values) : Tensor(std::move(shape)) {
    if (values.size() != numel())
        argument_error("Tensor", "shape " + shape_str(this->shape()) + " holds " +
                                     std::to_string(numel()) + " values, got " +
                                     std::to_string(values.size()));
    const TensorStorageWatch watch(node_.get());   // §4.1
    node_->data = std::move(values);
}

Tensor Tensor::full(Shape shape, real value) {
    Tensor t(std::move(shape));
    std::fill(t.values().begin(), t.values().end(), value);
    return t;
}

Tensor Tensor::scalar(real value) { return Tensor({1}, {value}); }

// t.values() = w replaces the numbers, never resizes them.
ValuesView& ValuesView::operator=(const std::vector<real>& numbers) {
    const Shape& shape = node_->shape;
    if (numbers.size() != ::numel(shape))
        argument_error(of_grad_ ? "grad()" : "values()",
                       "the tensor has shape " + shape_str(shape) + " (" +
                           std::to_string(::numel(shape)) + " numbers); cannot assign " +
                           std::to_string(numbers.size()));
    this->numbers().assign(numbers.begin(), numbers.end());
    if (!of_grad_) ++node_->version;   // an in-place write (below)
    return *this;
}

ValuesView& ValuesView::operator=(const ValuesView& other) {
    return *this = std::vector<real>(other);
}

int Tensor::dim(int axis) const {
    const int r = rank();
    if (axis < -r || axis >= r)
        argument_error("dim",
                       "axis " + std::to_string(axis) + " out of range for " + shape_str(shape()));
    return shape()[axis < 0 ? axis + r : axis];
}

real Tensor::item() const {
    if (numel() != 1)
        argument_error("item", "needs a tensor with one element, got shape " + shape_str(shape()));
    if (device() == Device::CUDA) return host_values(node_->cuda_data)[0];
    return node_->data[0];
}

real& Tensor::at(const std::vector<int>& index) const {
    on_cpu("at()");
    if (int(index.size()) != rank())
        argument_error("at",
                       std::to_string(index.size()) + " indices for shape " + shape_str(shape()));
    std::size_t offset = 0;
    for (int a = 0; a < rank(); ++a) {
        if (index[a] < 0 || index[a] >= shape()[a])
            argument_error("at", "index " + std::to_string(index[a]) + " out of range on axis " +
                                     std::to_string(a) + " of " + shape_str(shape()));
        offset = offset * shape()[a] + index[a];
    }
    return node_->data[offset];
}

Tensor& Tensor::requires_grad_(bool on) {
    if (!checked("requires_grad_()").parents.empty())
        argument_error("requires_grad_", "only a leaf tensor can be made a parameter; this one was "
                                         "computed by '" +
                                             std::string(node_->op) + "'");
    node_->requires_grad = on;
    return *this;
}

void Tensor::zero_grad() const {
    if (device() == Device::CUDA)
        return cuda_zero(node_->cuda_grad.data(), node_->cuda_grad.bytes());
    std::fill(node_->grad.begin(), node_->grad.end(), real(0));
}

Tensor Tensor::detach() const { return to(device()); }   // a copy, same device

std::string Tensor::str(int max_values) const {
    if (device() == Device::CUDA) return to(Device::CPU).str(max_values) + " on cuda";
    std::string s = "Tensor" + shape_str(shape()) + " = [";
    for (std::size_t i = 0; i < numel() && i < std::size_t(max_values); ++i)
        s += (i ? ", " : "") + to_string(node_->data[i]);
    return s + (numel() > std::size_t(max_values) ? ", ...]" : "]");
}

// An output joins the graph only when some input needs a gradient: evaluation builds no graph
// and keeps no inputs alive.

Tensor Tensor::from_op(Shape shape, const char* op, std::vector<Tensor> inputs, Device device) {
    check_devices(op, inputs, device);
    if (detect_anomaly()) anomaly_tensor_inputs(op, inputs);   // §2.12
    Tensor out;
    try {
        out = zeros(std::move(shape), device);
    } catch (const std::invalid_argument& e) {   // too large to count or to hold
        argument_error(op, e.what());
    }
    out.node_->op = op;
    for (const Tensor& t : inputs) out.node_->requires_grad |= t.requires_grad();
    if (out.node_->requires_grad)
        for (Tensor& t : inputs) {
            out.node_->parent_versions.push_back(t.node_->version);
            out.node_->parents.push_back(std::move(t.node_));
        }
    return out;
}

// A node's gradient buffer, made (zeros) when a backward first writes into it.
static std::vector<real>& grad_of(TensorNode* n) {
    if (n->grad.size() != n->data.size()) {
        const TensorStorageWatch watch(n);   // §4.1
        n->grad.assign(n->data.size(), real(0));
    }
    return n->grad;
}

// Before a backward pass: an interior node's gradient restarts at 0.
static void clear_grad(TensorNode* n) {
    if (n->device == Device::CUDA) return clear_grad_on_device(n);
    const TensorStorageWatch watch(n);   // §4.1
    n->grad.assign(n->data.size(), real(0));
}

// grad += g, for the seed dL/d(output).
static void add_to_grad(TensorNode* n, const Tensor& g) {
    if (n->device == Device::CUDA) return add_to_grad_on_device(n, g);
    std::vector<real>& grad = grad_of(n);
    const real* seed = g.values().data();
    for (std::size_t i = 0; i < grad.size(); ++i) grad[i] += seed[i];
}

// In-place writes. Most backwards read their inputs (dW = Xᵀ·dY needs X); an input written over
// after the forward pass (an optimizer step) would silently give a wrong gradient. So each tensor
// counts its in-place writes (its version), from_op notes the inputs' versions, and backward
// refuses an op whose inputs changed since, as PyTorch does (values()[i] and at() go around
// this, like .data). Ops that only route gradients never read their inputs.
static bool backward_reads_inputs(const char* op) {
    for (const char* routing :
         {"+", "-", "sum", "reshape", "slice", "concat", "transpose", "embedding"})
        if (std::strcmp(op, routing) == 0) return false;
    return true;
}

static void check_versions(const std::vector<TensorNode*>& order) {
    for (const TensorNode* n : order) {
        if (!n->backward || !backward_reads_inputs(n->op)) continue;
        for (int k = 0; k < n->n_inputs(); ++k)
            if (n->input(k)->version != n->parent_versions[std::size_t(k)])
                argument_error(
                    "backward",
                    "input " + std::to_string(k) + " " + shape_str(n->input(k)->shape) + " of '" +
                        n->op +
                        "' was written in place after the forward pass (an optimizer step, "
                        "or values() assigned), and its backward reads it: run the forward pass "
                        "again first");
    }
}

// §1.5's three steps: order the graph, seed dL/d(output), run each backward in reverse order.
void Tensor::backward(const Tensor& seed) const {
    if (seed.shape() != shape())
        argument_error("backward", "the seed has shape " + shape_str(seed.shape()) +
                                       " but the output has shape " + shape_str(shape()));
    if (!requires_grad())
        argument_error("backward", "this tensor does not depend on any parameter (no input has "
                                   "requires_grad), so there is nothing to differentiate");
    check_devices("backward", {*this, seed}, device());
    const std::vector<TensorNode*> order = topological_order(node_.get());
    check_graph_devices(order);
    check_versions(order);
    for (TensorNode* n : order)
        if (n->backward) clear_grad(n);
    add_to_grad(node_.get(), seed);
    for (auto it = order.rbegin(); it != order.rend(); ++it)
        if ((*it)->backward) {
            (*it)->backward();
            if (detect_anomaly()) anomaly_tensor_backward(**it);
        }
}

void Tensor::backward() const {
    checked("backward()");
    if (detect_anomaly()) anomaly_tensor_inputs("backward", {*this});   // the loss itself
    if (numel() != 1)
        argument_error("backward", "backward() without a seed needs a scalar loss, got shape " +
                                       shape_str(shape()) +
                                       "; reduce it (sum, mean) or pass the "
                                       "seed dL/d(output) of the same shape");
    const real loss = item();
    if (!std::isfinite(loss))
        throw std::domain_error("backward: the loss is " + to_string(loss) +
                                "; look for log of 0, exp overflow, division by 0, or a learning "
                                "rate so high that training diverged");
    Tensor seed = Tensor::full(shape(), real(1));   // dL/dL = 1
    backward(seed.move_to(device()));
}

Tensor randn(Shape shape, Rng& rng, real stddev) {
    if (!(stddev >= 0 && std::isfinite(stddev)))
        argument_error("randn", "stddev must be finite and >= 0, got " + to_string(stddev));
    Tensor t(std::move(shape));
    for (real& v : t.values()) v = real(stddev * rng.normal());
    return t;
}

Tensor uniform(Shape shape, Rng& rng, real lo, real hi) {
    Tensor t(std::move(shape));
    for (real& v : t.values()) v = real(rng.uniform(lo, hi));
    return t;
}

// For the tests and lessons that inspect tensor graphs.
template std::vector<TensorNode*> topological_order(TensorNode*);

// ---------------------------------------------------------------------------------------------
// 2.2 Elementwise arithmetic with broadcasting
//
// Shapes line up from the right; an axis missing or of size 1 in one operand is repeated:
// [B, D] + [D] adds the row to each of B rows. Nothing is copied: a repeated axis has stride 0.
//
// Jacobian: out[i] depends on a[ia(i)] and b[ib(i)] only, so the backward is elementwise too:
//     ga[ia(i)] += g[i] · ∂out/∂a        gb[ib(i)] += g[i] · ∂out/∂b
// Where a was repeated, `+=` sums over every i sharing ia(i): the bias gradient db = Σ_rows dY.
// ---------------------------------------------------------------------------------------------

static Shape broadcast_shape(const Shape& a, const Shape& b, const char* op) {
    const std::size_t r = std::max(a.size(), b.size());
    Shape out(r);
    for (std::size_t k = 0; k < r; ++k) {   // k counts axes from the right
        const int da = k < a.size() ? a[a.size() - 1 - k] : 1;
        const int db = k < b.size() ? b[b.size() - 1 - k] : 1;
        if (da != db && da != 1 && db != 1)
            argument_error(op, "shapes " + shape_str(a) + " and " + shape_str(b) +
                                   " do not broadcast (axis " + std::to_string(r - 1 - k) + ": " +
                                   std::to_string(da) + " vs " + std::to_string(db) + ")");
        out[r - 1 - k] = da == 1 ? db : da;   // size 1 repeats to any size, 0 too
    }
    return out;
}

// Per output axis: the storage step of an input of shape `in`, 0 where repeated.
static std::vector<std::size_t> broadcast_strides(const Shape& in, const Shape& out) {
    std::vector<std::size_t> strides(out.size(), 0);
    std::size_t step = 1;
    for (std::size_t k = 0; k < in.size(); ++k) {   // from the right
        const std::size_t axis_in = in.size() - 1 - k, axis_out = out.size() - 1 - k;
        if (in[axis_in] != 1) strides[axis_out] = step;
        step *= static_cast<std::size_t>(in[axis_in]);
    }
    return strides;
}

// Loops this long are shared among threads (for shorter ones waking them costs more); one thread
// per element, so the bits do not depend on the count.
constexpr std::size_t parallel_min = std::size_t(1) << 15;

// out[j] += Σ_r term(r·D + j), a bias's gradient: threads share columns, each summed in order.
template <class Term>
static void add_column_sums(std::size_t rows, std::size_t D, real* out, Term term) {
    constexpr std::size_t block = 64;
#pragma omp parallel for if (rows * D >= parallel_min)
    for (std::size_t j0 = 0; j0 < D; j0 += block) {
        const std::size_t j1 = std::min(D, j0 + block);
        for (std::size_t r = 0; r < rows; ++r) {
#pragma omp simd
            for (std::size_t j = j0; j < j1; ++j) out[j] += term(r * D + j);
        }
    }
}

// f(i, ia, ib) for each output element i and the elements of a and b it reads; the index
// advances like an odometer.
template <class F>
static void for_each_broadcast(const Shape& a, const Shape& b, const Shape& out, F f) {
    const std::size_t n = numel(out);
    if (a == out && b == out) {   // no broadcasting
#pragma omp parallel for if (n >= parallel_min)
        for (std::size_t i = 0; i < n; ++i) f(i, i, i);
        return;
    }
    const std::vector<std::size_t> sa = broadcast_strides(a, out), sb = broadcast_strides(b, out);
    std::vector<int> index(out.size(), 0);
    std::size_t ia = 0, ib = 0;
    for (std::size_t i = 0; i < n; ++i) {
        f(i, ia, ib);
        for (int axis = int(out.size()) - 1; axis >= 0; --axis) {
            if (++index[axis] < out[axis]) {
                ia += sa[axis];
                ib += sb[axis];
                break;
            }
            ia -= sa[axis] * (out[axis] - 1);   // wrap around
            ib -= sb[axis] * (out[axis] - 1);
            index[axis] = 0;
        }
    }
}

// out = f(a, b) elementwise, with ∂out/∂a = dfa(a, b) and ∂out/∂b = dfb(a, b).
template <class F, class DA, class DB>
static Tensor elementwise(const Tensor& a, const Tensor& b, const char* op, F f, DA dfa, DB dfb) {
    Tensor out = Tensor::from_op(broadcast_shape(a.shape(), b.shape(), op), op, {a, b});
    const real *x = a.values().data(), *y = b.values().data();
    real* o = out.values().data();
    for_each_broadcast(
        a.shape(), b.shape(), out.shape(),
        [&](std::size_t i, std::size_t ia, std::size_t ib) { o[i] = f(x[ia], y[ib]); });
    if (out.requires_grad()) {
        TensorNode *pa = a.node(), *pb = b.node(), *po = out.node();
        po->backward = [pa, pb, po, dfa, dfb] {
            const real *x = pa->data.data(), *y = pb->data.data(), *g = po->grad.data();
            real* ga = pa->requires_grad ? grad_of(pa).data() : nullptr;
            real* gb = pb->requires_grad ? grad_of(pb).data() : nullptr;
            for_each_broadcast(pa->shape, pb->shape, po->shape,
                               [&](std::size_t i, std::size_t ia, std::size_t ib) {
                                   if (ga) ga[ia] += g[i] * dfa(x[ia], y[ib]);
                                   if (gb) gb[ib] += g[i] * dfb(x[ia], y[ib]);
                               });
        };
    }
    return out;
}

// out = a + b        ∂out/∂a = 1      ∂out/∂b = 1
Tensor operator+(const Tensor& a, const Tensor& b) {
    if (on_cuda(a, b)) return add_on_device(a, b);   // device: Part 5
    auto out = [](real x, real y) { return x + y; };
    auto d_da = [](real, real) { return real(1); };
    auto d_db = [](real, real) { return real(1); };
    return elementwise(a, b, "+", out, d_da, d_db);
}

// out = a − b        ∂out/∂a = 1      ∂out/∂b = −1
Tensor operator-(const Tensor& a, const Tensor& b) {
    auto out = [](real x, real y) { return x - y; };
    auto d_da = [](real, real) { return real(1); };
    auto d_db = [](real, real) { return real(-1); };
    return elementwise(a, b, "-", out, d_da, d_db);
}

// out = a · b        ∂out/∂a = b      ∂out/∂b = a
Tensor operator*(const Tensor& a, const Tensor& b) {
    auto out = [](real x, real y) { return x * y; };
    auto d_da = [](real, real y) { return y; };
    auto d_db = [](real x, real) { return x; };
    return elementwise(a, b, "*", out, d_da, d_db);
}

// out = a / b        ∂out/∂a = 1/b    ∂out/∂b = −a/b²
Tensor operator/(const Tensor& a, const Tensor& b) {
    broadcast_shape(a.shape(), b.shape(), "/");   // a shape error first, then the values
    check_devices("/", {a, b}, Device::CPU);      // no CUDA kernel
    for (real v : b.values())
        if (v == 0)
            argument_error("division a/b", "the divisor b " + shape_str(b.shape()) + " contains 0");
    auto out = [](real x, real y) { return x / y; };
    auto d_da = [](real, real y) { return 1 / y; };
    auto d_db = [](real x, real y) { return -x / (y * y); };
    return elementwise(a, b, "/", out, d_da, d_db);
}

Tensor operator-(const Tensor& a) { return a * real(-1); }

// A number is a one-element constant, broadcast.
Tensor operator+(const Tensor& a, real k) { return a + Tensor::scalar(k); }
Tensor operator+(real k, const Tensor& a) { return Tensor::scalar(k) + a; }
Tensor operator-(const Tensor& a, real k) { return a - Tensor::scalar(k); }
Tensor operator-(real k, const Tensor& a) { return Tensor::scalar(k) - a; }
Tensor operator*(const Tensor& a, real k) { return a * Tensor::scalar(k); }
Tensor operator*(real k, const Tensor& a) { return Tensor::scalar(k) * a; }
Tensor operator/(const Tensor& a, real k) { return a / Tensor::scalar(k); }
Tensor operator/(real k, const Tensor& a) { return Tensor::scalar(k) / a; }

// ---------------------------------------------------------------------------------------------
// 2.3 Elementwise functions
//
// out[i] = f(x[i]) has a diagonal Jacobian, so backward is  gx[i] += g[i] · f'(x[i]).
// Each op passes f and f' (of x or, where handier, of y = f(x)), as in §1.2–1.3.
// ---------------------------------------------------------------------------------------------

template <class F, class DF>
static Tensor unary(const Tensor& x, const char* op, F f, DF df) {
    Tensor out = Tensor::from_op(x.shape(), op, {x});
    const std::size_t n = out.numel();
    const real* in = x.values().data();
    real* o = out.values().data();
#pragma omp parallel for simd if (n >= parallel_min)
    for (std::size_t i = 0; i < n; ++i) o[i] = f(in[i]);
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *po = out.node();
        po->backward = [px, po, df, n] {
            real* gx = grad_of(px).data();
            const real *g = po->grad.data(), *x = px->data.data(), *y = po->data.data();
#pragma omp parallel for simd if (n >= parallel_min)
            for (std::size_t i = 0; i < n; ++i) gx[i] += g[i] * df(x[i], y[i]);
        };
    }
    return out;
}

// Part 1's domain checks, per element; a NaN (from an earlier op) is named as a NaN.
template <class Ok>
static void require_all(const Tensor& x, const char* op, const char* what, Ok ok) {
    check_devices(op, {x}, Device::CPU);   // no CUDA kernel
    const ValuesView v = x.values();
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (std::isnan(v[i]))
            throw std::domain_error(std::string(op) + ": the input holds NaN at element " +
                                    std::to_string(i) +
                                    "; set_detect_anomaly(true) names the op that made it");
        if (!ok(v[i]))
            throw std::domain_error(std::string(op) + ": " + what + ", got " + to_string(v[i]) +
                                    " at element " + std::to_string(i));
    }
}

// eˣ: f' = eˣ = y
Tensor exp(const Tensor& x) {
    static const real limit = std::log(std::numeric_limits<real>::max());   // 88.7 for float
    require_all(x, "exp(x)",
                "e^x overflows for x above ln(largest real) = 88.7 (float), 709.8 (double)",
                [](real v) { return v <= limit; });
    return unary(
        x, "exp", [](real v) { return std::exp(v); }, [](real, real y) { return y; });
}

// ln x: f' = 1/x
Tensor log(const Tensor& x) {
    require_all(x, "log(x)", "x must be > 0", [](real v) { return v > 0; });
    return unary(
        x, "log", [](real v) { return std::log(v); }, [](real v, real) { return 1 / v; });
}

// √x: f' = 1/(2√x) = 1/(2y); at x = 0 the slope is infinite.
Tensor sqrt(const Tensor& x) {
    require_all(x, "sqrt(x)", "x must be >= 0", [](real v) { return v >= 0; });
    return unary(
        x, "sqrt", [](real v) { return std::sqrt(v); }, [](real, real y) { return real(0.5) / y; });
}

// xᵏ: f' = k·xᵏ⁻¹
Tensor pow(const Tensor& x, real k) {
    if (!std::isfinite(k))
        throw std::domain_error("pow(x, k): the exponent k must be finite, got " + to_string(k));
    const bool whole = k == std::floor(k);
    require_all(x, "pow(x, k)", "a negative x needs a whole-number exponent k",
                [whole](real v) { return v >= 0 || whole; });
    if (k < 1) require_all(x, "pow(x, k)", "x = 0 needs k >= 1", [](real v) { return v != 0; });
    return unary(
        x, "pow", [k](real v) { return real(std::pow(v, k)); },
        [k](real v, real) { return real(k * std::pow(v, k - 1)); });
}

// max(0, x): f' = 1 where x > 0, else 0. `x < 0 ? 0 : x` keeps a NaN a NaN (`x > 0 ? x : 0`
// would make it 0).
Tensor relu(const Tensor& x) {
    if (on_cuda(x))
        return unary_on_device(x, "relu", cuda_relu_forward,
                               cuda_relu_backward);   // device: Part 5
    return unary(
        x, "relu", [](real v) { return v < 0 ? real(0) : v; },
        [](real v, real) { return real(v > 0); });   // 1 or 0, without a branch
}

// x or slope·x: f' = 1 or slope
Tensor leaky_relu(const Tensor& x, real slope) {
    if (!std::isfinite(slope))
        throw std::domain_error("leaky_relu: the slope must be finite, got " + to_string(slope));
    return unary(
        x, "leaky_relu", [slope](real v) { return v > 0 ? v : slope * v; },
        [slope](real v, real) { return v > 0 ? real(1) : slope; });
}

// eˣ and tanh from + · / only, so loops vectorize (std::tanh in GELU was ¼ of a GPT step, §6.2).
// x = n·ln 2 + r, n = round(x/ln 2), |r| ≤ 0.347:
//     eˣ = 2ⁿ·eʳ,   eʳ = Σₖ rᵏ/k!  (Horner; rᵏ/k! < 2⁻²⁴ from k = 8, < 2⁻⁵³ from k = 14)
// 2ⁿ is set in the exponent field; n·2839/4096 is exact, so r keeps its low digits. |x| ≤ 87.3
// (double 708) keeps 2ⁿ normal; a NaN stays NaN.
template <class F>
static F exp_by_reduction(F x) {
    using Bits = std::conditional_t<sizeof(F) == 4, std::int32_t, std::int64_t>;
    constexpr int terms = sizeof(F) == 4 ? 8 : 14, bias = std::numeric_limits<F>::max_exponent - 1;
    constexpr double ln2 = 0.693147180559945309, ln2_hi = 2839.0 / 4096,
                     ln2_lo = 3.19461849453094e-5;
    constexpr F limit = F((bias - 1) * ln2), log2e = F(1 / ln2);
    const F clamped = x < -limit ? -limit : (x > limit ? limit : (x == x ? x : 0));
    // + 1.5·2²³ rounds to a whole number (double: 1.5·2⁵²); − it leaves n
    constexpr F shifter = F(1.5) * F(1ull << (std::numeric_limits<F>::digits - 1));
    const F n = (clamped * log2e + shifter) - shifter;
    const F r = (clamped - n * F(ln2_hi)) - n * F(ln2_lo);
    F taylor = 1;   // 1 + r(1 + r/2(1 + r/3(…)))
    for (int k = terms - 1; k >= 1; --k) taylor = 1 + taylor * r * F(1.0 / k);
    const Bits exponent = (Bits(n) + bias) << (std::numeric_limits<F>::digits - 1);
    F two_to_n;
    std::memcpy(&two_to_n, &exponent, sizeof two_to_n);
    return x == x ? two_to_n * taylor : x;
}

// tanh u = 1 − 2/(e²ᵘ + 1), ±1 where e²ᵘ overflows; off by a few units of 1's last place: fine
// for GELU, which adds it to 1.
template <class F>
static F tanh_by_exp(F u) {
    return 1 - 2 / (exp_by_reduction(2 * u) + 1);
}

float simd_exp(float x) { return exp_by_reduction(x); }
double simd_exp(double x) { return exp_by_reduction(x); }
float simd_tanh(float u) { return tanh_by_exp(u); }
double simd_tanh(double u) { return tanh_by_exp(u); }

// GELU, tanh form, as in §1.3:  ½x(1 + tanh u),  u = √(2/π)(x + 0.044715x³)
// f' = ½(1 + tanh u) + ½x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²)
Tensor gelu(const Tensor& x) {
    if (on_cuda(x))
        return unary_on_device(x, "gelu", cuda_gelu_forward,
                               cuda_gelu_backward);                    // device: Part 5
    constexpr real c = real(0.7978845608028654), k = real(0.044715);   // c = √(2/π)
    return unary(
        x, "gelu",
        [](real v) { return real(0.5) * v * (1 + tanh_by_exp(c * (v + k * v * v * v))); },
        [](real v, real) {
            const real t = tanh_by_exp(c * (v + k * v * v * v));
            return real(0.5) * (1 + t) + real(0.5) * v * (1 - t * t) * c * (1 + 3 * k * v * v);
        });
}

// Exact GELU (§1.3):  out = x·Φ(x) = ½·x·(1 + erf(x/√2)),   f' = Φ(x) + x·φ(x)
Tensor gelu(const Tensor& x, Approximate approximate) {
    if (approximate == Approximate::tanh) return gelu(x);
    if (on_cuda(x))
        return unary_on_device(x, "gelu_exact", cuda_gelu_exact_forward,
                               cuda_gelu_exact_backward);   // device: Part 5
    static const real inv_sqrt2 = real(1 / std::sqrt(2.0)),
                      inv_sqrt_2pi = real(1 / std::sqrt(2 * pi));
    return unary(
        x, "gelu_exact", [](real v) { return real(0.5) * v * (1 + std::erf(v * inv_sqrt2)); },
        [](real v, real) {
            const real cdf = real(0.5) * (1 + std::erf(v * inv_sqrt2));
            return cdf + v * inv_sqrt_2pi * std::exp(real(-0.5) * v * v);
        });
}

// σ(x) = 1/(1 + e⁻ˣ), without overflow as in §1.3:  f' = σ(1 − σ) = y(1 − y)
Tensor sigmoid(const Tensor& x) {
    if (on_cuda(x))
        return unary_on_device(x, "sigmoid", cuda_sigmoid_forward,
                               cuda_sigmoid_backward);   // device: Part 5
    return unary(
        x, "sigmoid",
        [](real v) { return v >= 0 ? 1 / (1 + std::exp(-v)) : std::exp(v) / (1 + std::exp(v)); },
        [](real, real y) { return y * (1 - y); });
}

// tanh x:  f' = 1 − tanh² x = 1 − y²
Tensor tanh(const Tensor& x) {
    if (on_cuda(x))
        return unary_on_device(x, "tanh", cuda_tanh_forward,
                               cuda_tanh_backward);   // device: Part 5
    return unary(
        x, "tanh", [](real v) { return std::tanh(v); }, [](real, real y) { return 1 - y * y; });
}

// ---------------------------------------------------------------------------------------------
// 2.4 Matrix multiplication
//
// Z = X·W with X [M, K], W [K, N]:  Z[i][j] = Σ_k X[i][k]·W[k][j]   (2·M·K·N flops).
// Jacobian: ∂Z[i][j]/∂X[i][k] = W[k][j] and ∂Z[i][j]/∂W[k][j] = X[i][k]. Applying the chain rule
// to every element and collecting the sums gives two more matrix products:
//     dX = dZ·Wᵀ   [M, N]·[N, K] = [M, K]        dW = Xᵀ·dZ   [K, M]·[M, N] = [K, N]
// The batch axis M is summed away inside Xᵀ·dZ.
//
// Nearly all arithmetic is these products, so the product is written three times, each tested
// against the one before (speeds: README, How fast is it).
// ---------------------------------------------------------------------------------------------

// 1. The formula as written, the tests' oracle. k walks down a column of B, N floats apart, so
// every multiply-add waits for a new cache line.
void matmul_naive(int M, int N, int K, MatrixView A, MatrixView B, real* C) {
    count_flops(2 * std::int64_t(M) * K * N);   // §4.1
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            real s = 0;
            for (int k = 0; k < K; ++k) s += A(i, k) * B(k, j);
            C[std::size_t(i) * N + j] += s;
        }
}

// 2. Swap the inner loops (i-k-j): the inner loop walks rows of B and C and vectorizes, but each
// multiply-add also loads and stores C. Row-major A and B only.
void matmul_ikj(int M, int N, int K, const real* A, const real* B, real* C) {
    count_flops(2 * std::int64_t(M) * K * N);   // §4.1
    for (int i = 0; i < M; ++i)
        for (int k = 0; k < K; ++k) {
            const real a = A[std::size_t(i) * K + k];
            for (int j = 0; j < N; ++j) C[std::size_t(i) * N + j] += a * B[std::size_t(k) * N + j];
        }
}

// 3. Cache blocking with a register-blocked micro-kernel (the GotoBLAS/BLIS design). The kernel
// keeps an MR×NR tile of C in registers and streams the inputs past it: per k, MR numbers of A
// and NR of B for MR·NR multiply-adds. The blocks keep its inputs in L1/L2. Packing copies B's
// block (and A's, when its rows are strided) in the order the kernel reads it, B zero-padded to
// whole tiles. Each element of C is summed by one thread in one order: the result is
// bit-identical for any thread count.
// The tile follows the vectors: B's row is 2 vectors, A's number 1, and MR = (registers − 3)/2
// rows of 2 take the rest: 6×16 floats with AVX2, 6×8 with SSE. AVX-512's 14×32 ran the GPT
// step 7% slower on Zen 4 (one 512-bit FMA a cycle, latency 4: 6 accumulators hide it), so 6×16.
// B's panel, KC·NR·4 B = 32 KB, fills L1; A's block, MC·KC·4 B = 96 KB, sits in L2.
namespace {
#ifdef __AVX512F__
constexpr int NR = fma_lanes, MR = 6;
#else
constexpr int vector_registers = 16, NR = 2 * fma_lanes, MR = (vector_registers - 3) / 2;
#endif
constexpr int KC = 512;   // cache blocks: KC steps of k, MC = 8·MR rows of A
}   // namespace

// a·b + c with one rounding (FMA); two under `make valgrind`, whose FMA emulation is slow.
static inline real multiply_add(real a, real b, real c) {
#ifdef ENGINE_SEPARATE_MULTIPLY_ADD
    return a * b + c;
#else
    return std::fma(a, b, c);
#endif
}

// C[mr, nr] += A·B̃ over kc: A(i, p) = a[i·a_row + p·a_step], packed (1, MR) or in place (lda, 1).
// Rows past mr repeat row mr − 1 (in bounds; never stored). acc stays in registers.
template <int MR, int NR>
static void micro_kernel(int kc, const real* a, std::ptrdiff_t a_row, std::ptrdiff_t a_step,
                         const real* b, real* C, int ldc, int mr, int nr) {
    // C's rows are rarely in cache: request them now, to arrive during the k loop.
    for (int i = 0; i < MR; ++i) {
        __builtin_prefetch(C + std::size_t(i) * ldc);
        __builtin_prefetch(C + std::size_t(i) * ldc + NR - 1);
    }
    const real* row[MR];
    for (int i = 0; i < MR; ++i) row[i] = a + std::min(i, mr - 1) * a_row;
    real acc[MR][NR] = {};
    for (int p = 0; p < kc; ++p, b += NR)
        for (int i = 0; i < MR; ++i) {
            const real a_ip = row[i][p * a_step];
#pragma omp simd
            for (int j = 0; j < NR; ++j) acc[i][j] = multiply_add(a_ip, b[j], acc[i][j]);
        }
    if (mr == MR && nr == NR) {   // a whole tile: constant bounds, vectorized
        for (int i = 0; i < MR; ++i) {
#pragma omp simd
            for (int j = 0; j < NR; ++j) C[std::size_t(i) * ldc + j] += acc[i][j];
        }
    } else {   // C's ragged edge
        for (int i = 0; i < mr; ++i)
            for (int j = 0; j < nr; ++j) C[std::size_t(i) * ldc + j] += acc[i][j];
    }
}

// Rows [i0, i0+mr) × columns [p0, p0+kc) of A as Ã[kc][MR].
template <int MR>
static void pack_a_panel(MatrixView A, int i0, int mr, int p0, int kc, real* out) {
    for (int p = 0; p < kc; ++p)
        for (int i = 0; i < mr; ++i) out[p * MR + i] = A(i0 + i, p0 + p);
}

// Rows [p0, p0+kc) × columns [j0, j0+nr) of B as B̃[kc][NR]; columns past nr are zeros.
template <int NR>
static void pack_b_panel(MatrixView B, int p0, int kc, int j0, int nr, real* out) {
    if (nr < NR) std::fill(out, out + std::size_t(kc) * NR, real(0));
    if (B.row_stride == 1) {   // transposed: read each contiguous column whole
        for (int j = 0; j < nr; ++j) {
            const real* column = B.data + (j0 + j) * B.col_stride + p0;
            for (int p = 0; p < kc; ++p) out[p * NR + j] = column[p];
        }
        return;
    }
    for (int p = 0; p < kc; ++p) {
        if (nr == NR && B.col_stride == 1) {   // NR contiguous numbers
            const real* row = B.data + (p0 + p) * B.row_stride + j0;
#pragma omp simd
            for (int j = 0; j < NR; ++j) out[p * NR + j] = row[j];
        } else {
            for (int j = 0; j < nr; ++j) out[p * NR + j] = B(p0 + p, j0 + j);
        }
    }
}

// n numbers from a 64-byte boundary, so no vector load straddles two cache lines.
static real* aligned_64(std::vector<real>& buffer, std::size_t n) {
    buffer.resize(n + 64 / sizeof(real));
    void* start = buffer.data();
    std::size_t space = buffer.size() * sizeof(real);
    return static_cast<real*>(std::align(64, n * sizeof(real), start, space));
}

// Triangles of zeros that causal attention (§4.4) skips, tile by tile: C is wanted on and below
// the diagonal only, or A is 0 above (A_ik = 0 for k > i) or below it. Adding 0·b changes no bit.
enum class Zeros { none, c_above, a_above, a_below };

// C's rows ldc apart. Uncounted: matmul_blocked counts; causal attention counts its own.
template <int MR, int NR>
static void multiply_tiles(int M, int N, int K, MatrixView A, MatrixView B, real* C, int ldc,
                           Zeros zeros) {
    constexpr int MC = 8 * MR;
    const int m_panels = (M + MR - 1) / MR, n_panels = (N + NR - 1) / NR,
              m_blocks = (M + MC - 1) / MC;
    // A with contiguous rows is read in place (packing it cost as much as attention's 64×32
    // products); strided rows are packed, or each k would touch MR cache lines.
    const bool a_in_place = A.col_stride == 1;
    static thread_local std::vector<real> packed_a, packed_b;
    real* a = a_in_place ? nullptr : aligned_64(packed_a, std::size_t(m_panels) * MR * KC);
    real* b = aligned_64(packed_b, std::size_t(n_panels) * NR * KC);
    for (int p0 = 0; p0 < K; p0 += KC) {
        const int kc = std::min(KC, K - p0);
        // Below 10⁶ flops, waking the other threads costs more than it saves.
#pragma omp parallel if (2.0 * M * N * K > 1e6)
        {
#pragma omp for
            for (int jp = 0; jp < n_panels; ++jp)
                pack_b_panel<NR>(B, p0, kc, jp * NR, std::min(NR, N - jp * NR),
                                 b + std::size_t(jp) * NR * kc);
#pragma omp for
            for (int ip = 0; ip < (a_in_place ? 0 : m_panels); ++ip)
                pack_a_panel<MR>(A, ip * MR, std::min(MR, M - ip * MR), p0, kc,
                                 a + std::size_t(ip) * MR * kc);
#pragma omp for collapse(2)
            for (int ib = 0; ib < m_blocks; ++ib)
                for (int jp = 0; jp < n_panels; ++jp)
                    for (int i = ib * MC; i < std::min(M, ib * MC + MC); i += MR) {
                        const int mr = std::min(MR, M - i);   // rows i … i + mr − 1
                        int from = 0, to = kc;                // the k of this tile
                        if (zeros == Zeros::a_above) to = std::min(kc, i + mr - p0);
                        if (zeros == Zeros::a_below) from = std::max(0, i - p0);
                        if ((zeros == Zeros::c_above && jp * NR > i + mr - 1) || from >= to)
                            continue;
                        const real* a_tile = a_in_place
                                                 ? A.data + i * A.row_stride + p0 + from
                                                 : a + std::size_t(i) * kc + std::size_t(from) * MR;
                        micro_kernel<MR, NR>(
                            to - from, a_tile, a_in_place ? A.row_stride : 1, a_in_place ? 1 : MR,
                            b + (std::size_t(jp) * kc + from) * NR,
                            C + std::size_t(i) * ldc + jp * NR, ldc, mr, std::min(NR, N - jp * NR));
                    }
        }
    }
}

static void multiply_blocks(int M, int N, int K, MatrixView A, MatrixView B, real* C, int ldc,
                            Zeros zeros = Zeros::none) {
    multiply_tiles<MR, NR>(M, N, K, A, B, C, ldc, zeros);
}

// The tiles the rule above picks on other machines (in float and double), for the tests.
void matmul_with_tile(int mr, int nr, int M, int N, int K, MatrixView A, MatrixView B, real* C) {
    count_flops(2 * std::int64_t(M) * K * N);   // §4.1
    if (mr == 6 && nr == 4) return multiply_tiles<6, 4>(M, N, K, A, B, C, N, Zeros::none);
    if (mr == 6 && nr == 8) return multiply_tiles<6, 8>(M, N, K, A, B, C, N, Zeros::none);
    if (mr == 6 && nr == 16) return multiply_tiles<6, 16>(M, N, K, A, B, C, N, Zeros::none);
    if (mr == 14 && nr == 16) return multiply_tiles<14, 16>(M, N, K, A, B, C, N, Zeros::none);
    if (mr == 14 && nr == 32) return multiply_tiles<14, 32>(M, N, K, A, B, C, N, Zeros::none);
    throw std::invalid_argument("matmul_with_tile: no " + std::to_string(mr) + "x" +
                                std::to_string(nr) + " tile (6x4, 6x8, 6x16, 14x16, 14x32)");
}

void matmul_blocked(int M, int N, int K, MatrixView A, MatrixView B, real* C) {
    count_flops(2 * std::int64_t(M) * K * N);   // §4.1
    multiply_blocks(M, N, K, A, B, C, N);
}

void set_num_threads(int n) {
    if (n < 1)
        throw std::invalid_argument("set_num_threads: needs at least 1 thread, got " +
                                    std::to_string(n));
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    if (n != 1)
        throw std::invalid_argument(
            "set_num_threads: built without OpenMP (NO_OMP=1), so 1 thread only; got " +
            std::to_string(n));
#endif
}

int num_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// [M,K]·[K,N], [B,M,K]·[B,K,N], or [B,M,K]·[K,N]: one W shared by the batch (a linear layer at
// every position of a sequence), which is just more rows: [B·M, K]·[K, N].
Tensor matmul(const Tensor& a, const Tensor& b) {
    if (on_cuda(a, b)) return matmul_on_device(a, b);   // device: Part 5
    const bool batched = a.rank() == 3, shared_b = b.rank() == 2;
    if (!((a.rank() == 2 && b.rank() == 2) || (batched && (b.rank() == 2 || b.rank() == 3))))
        argument_error("matmul", "supports [M,K]·[K,N], [B,M,K]·[B,K,N] and [B,M,K]·[K,N]; got " +
                                     shape_str(a.shape()) + " · " + shape_str(b.shape()));
    const int M0 = a.dim(-2), K = a.dim(-1), N = b.dim(-1);
    if (b.rank() == 3 && b.dim(0) != a.dim(0))
        argument_error("matmul", "batch sizes differ: " + shape_str(a.shape()) + " · " +
                                     shape_str(b.shape()));
    if (b.dim(-2) != K)
        argument_error("matmul", "inner dimensions differ: " + shape_str(a.shape()) + " · " +
                                     shape_str(b.shape()) + " (" + std::to_string(K) + " vs " +
                                     std::to_string(b.dim(-2)) + ")");
    Tensor out = Tensor::from_op(batched ? Shape{a.dim(0), M0, N} : Shape{M0, N}, "matmul", {a, b});
    if (out.numel() == 0) return out;   // nothing to compute (see sum)
    const int batch = batched && !shared_b ? a.dim(0) : 1,
              M = batched && shared_b ? a.dim(0) * M0 : M0;
    const std::size_t sa = std::size_t(M) * K, sb = std::size_t(K) * N,
                      so = std::size_t(M) * N;   // per batch element
    for (int t = 0; t < batch; ++t)
        matmul_blocked(M, N, K, row_major(a.values().data() + t * sa, K),
                       row_major(b.values().data() + t * sb, N), out.values().data() + t * so);
    if (out.requires_grad()) {
        TensorNode *pa = a.node(), *pb = b.node(), *po = out.node();
        po->backward = [=] {
            for (int t = 0; t < batch; ++t) {
                const MatrixView dZ = row_major(po->grad.data() + t * so, N);
                if (pa->requires_grad)   // dX = dZ·Wᵀ: [M, N]·[N, K]
                    matmul_blocked(M, K, N, dZ, transposed(pb->data.data() + t * sb, N),
                                   grad_of(pa).data() + t * sa);
                if (pb->requires_grad)   // dW = Xᵀ·dZ: [K, M]·[M, N]
                    matmul_blocked(K, N, M, transposed(pa->data.data() + t * sa, K), dZ,
                                   grad_of(pb).data() + t * sb);
            }
        };
    }
    return out;
}

// y = x·W + b as one op, with matmul's and broadcasting's gradients:
//     dX = dY·Wᵀ      dW = Xᵀ·dY      db = Σ_rows dY
// Each row of y starts as b; the product is added into it.
Tensor linear(const Tensor& x, const Tensor& W, const Tensor& b) {
    if (on_cuda(x, W, b)) return linear_on_device(x, W, b);   // device: Part 5
    if (!((x.rank() == 2 || x.rank() == 3) && W.rank() == 2 && b.rank() == 1 &&
          x.dim(-1) == W.dim(0) && b.dim(0) == W.dim(1)))
        argument_error("linear", "needs x [M, K] or [B, M, K], W [K, N] and b [N]; got " +
                                     shape_str(x.shape()) + ", " + shape_str(W.shape()) + ", " +
                                     shape_str(b.shape()));
    const int K = W.dim(0), N = W.dim(1),
              M = x.rank() == 3 ? x.dim(0) * x.dim(1) : x.dim(0);   // 3-D: [B·M, K]
    Shape out_shape = x.shape();
    out_shape.back() = N;
    Tensor out = Tensor::from_op(out_shape, "linear", {x, W, b});
    real* y = out.values().data();
    for (int i = 0; i < M; ++i)
        std::copy(b.values().begin(), b.values().end(), y + std::size_t(i) * N);
    matmul_blocked(M, N, K, row_major(x.values().data(), K), row_major(W.values().data(), N), y);
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *pw = W.node(), *pb = b.node(), *po = out.node();
        po->backward = [=] {
            const MatrixView dY = row_major(po->grad.data(), N);
            if (px->requires_grad)
                matmul_blocked(M, K, N, dY, transposed(pw->data.data(), N), grad_of(px).data());
            if (pw->requires_grad)
                matmul_blocked(K, N, M, transposed(px->data.data(), K), dY, grad_of(pw).data());
            if (pb->requires_grad) {
                const real* g = po->grad.data();
                add_column_sums(M, N, grad_of(pb).data(), [g](std::size_t i) { return g[i]; });
            }
        };
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// 2.5 Shape ops and reductions
//
// Seen from one axis, any shape is [outer, n, inner]: outer = product of the sizes before the
// axis, inner = product after. Element (o, k, i) lives at (o·n + k)·inner + i.
// ---------------------------------------------------------------------------------------------

struct AxisSplit {
    std::size_t outer, n, inner;
};

static int normalize_axis(int axis, int rank, const char* op, const Shape& shape) {
    if (axis < -rank || axis >= rank)
        argument_error(op,
                       "axis " + std::to_string(axis) + " out of range for " + shape_str(shape));
    return axis < 0 ? axis + rank : axis;
}

static AxisSplit split_at(const Shape& shape, int axis) {
    AxisSplit s{1, std::size_t(shape[axis]), 1};
    for (int a = 0; a < axis; ++a) s.outer *= shape[a];
    for (std::size_t a = axis + 1; a < shape.size(); ++a) s.inner *= shape[a];
    return s;
}

// Swaps the last two axes. The Jacobian is a permutation: backward transposes the gradient back.
Tensor transpose(const Tensor& x) {
    if (x.rank() < 2)
        argument_error("transpose", "needs at least 2 axes, got " + shape_str(x.shape()));
    if (on_cuda(x)) return transpose_on_device(x);   // device: Part 5
    Shape shape = x.shape();
    std::swap(shape[shape.size() - 1], shape[shape.size() - 2]);
    const int R = x.dim(-2), C = x.dim(-1);
    const std::size_t batch = numel(Shape(shape.begin(), shape.end() - 2));   // the leading axes
    Tensor out = Tensor::from_op(shape, "transpose", {x});
    if (x.numel() == 0) return out;   // nothing to move (see sum)
    const real* in = x.values().data();
    real* o = out.values().data();
    for (std::size_t t = 0; t < batch; ++t)   // out[t][c][r] = x[t][r][c]
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < C; ++c) o[(t * C + c) * R + r] = in[(t * R + r) * C + c];
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *po = out.node();
        po->backward = [=] {   // gx[t][r][c] += g[t][c][r]
            real* gx = grad_of(px).data();
            const real* g = po->grad.data();
            for (std::size_t t = 0; t < batch; ++t)
                for (int r = 0; r < R; ++r)
                    for (int c = 0; c < C; ++c) gx[(t * R + r) * C + c] += g[(t * C + c) * R + r];
        };
    }
    return out;
}

// Same numbers, new shape: the Jacobian is the identity. One axis may be -1 (inferred).
Tensor reshape(const Tensor& x, Shape shape) {
    int infer = -1;
    for (std::size_t a = 0; a < shape.size(); ++a) {
        if (shape[a] == -1 && infer < 0) infer = int(a);
        else if (shape[a] < 0) argument_error("reshape", "bad target shape " + shape_str(shape));
    }
    Shape known_axes = shape;   // every axis but the inferred one
    if (infer >= 0) known_axes[infer] = 1;
    std::size_t known = 0;
    try {
        known = numel(known_axes);
    } catch (const std::invalid_argument& e) {
        argument_error("reshape", e.what());
    }
    if (infer >= 0 && known > 0 && x.numel() % known == 0) shape[infer] = int(x.numel() / known);
    if (numel(shape) != x.numel() || (infer >= 0 && shape[infer] < 0))
        argument_error("reshape", "cannot reshape " + shape_str(x.shape()) + " (" +
                                      std::to_string(x.numel()) + " elements) to " +
                                      shape_str(shape));
    if (on_cuda(x)) return reshape_on_device(x, shape);   // device: Part 5
    Tensor out = Tensor::from_op(shape, "reshape", {x});
    std::copy_n(x.values().data(), x.numel(), out.values().data());
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *po = out.node();
        po->backward = [px, po] {
            std::vector<real>& gx = grad_of(px);
            for (std::size_t i = 0; i < gx.size(); ++i) gx[i] += po->grad[i];
        };
    }
    return out;
}

// s = Σᵢ xᵢ: ∂s/∂xᵢ = 1.
Tensor sum(const Tensor& x) {
    Tensor out = Tensor::from_op({1}, "sum", {x});
    double s = 0;   // a float sum of 10⁶ terms loses digits
    for (real v : x.values()) s += v;
    out.values()[0] = real(s);
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *po = out.node();
        po->backward = [px, po] {
            for (real& g : grad_of(px)) g += po->grad[0];
        };
    }
    return out;
}

// s[o][i] = Σ_k x[o][k][i]: the gradient of s[o][i] goes back to every x[o][k][i].
Tensor sum(const Tensor& x, int axis, bool keepdim) {
    axis = normalize_axis(axis, x.rank(), "sum", x.shape());
    const AxisSplit s = split_at(x.shape(), axis);
    Shape shape = x.shape();
    if (keepdim) shape[axis] = 1;
    else shape.erase(shape.begin() + axis);
    Tensor out = Tensor::from_op(shape, "sum", {x});
    if (x.numel() == 0) return out;   // 0; else [2³⁰, 2³⁰, 0] would loop 2⁶⁰ empty rounds
    const real* in = x.values().data();
    real* o = out.values().data();
    for (std::size_t a = 0; a < s.outer; ++a)
        for (std::size_t k = 0; k < s.n; ++k)
            for (std::size_t i = 0; i < s.inner; ++i)
                o[a * s.inner + i] += in[(a * s.n + k) * s.inner + i];
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *po = out.node();
        po->backward = [px, po, s] {
            real* gx = grad_of(px).data();
            for (std::size_t a = 0; a < s.outer; ++a)
                for (std::size_t k = 0; k < s.n; ++k)
                    for (std::size_t i = 0; i < s.inner; ++i)
                        gx[(a * s.n + k) * s.inner + i] += po->grad[a * s.inner + i];
        };
    }
    return out;
}

// mean = sum / count.
Tensor mean(const Tensor& x) {
    check_devices("mean", {x}, Device::CPU);   // (else the error would name sum)
    if (x.numel() == 0) argument_error("mean", "of an empty tensor " + shape_str(x.shape()));
    return sum(x) / real(x.numel());
}

Tensor mean(const Tensor& x, int axis, bool keepdim) {
    check_devices("mean", {x}, Device::CPU);
    const int a = normalize_axis(axis, x.rank(), "mean", x.shape());
    if (x.shape()[a] == 0) argument_error("mean", "over an empty axis of " + shape_str(x.shape()));
    return sum(x, a, keepdim) / real(x.shape()[a]);
}

// Joins tensors along one axis. Backward hands each part its slice of the gradient.
Tensor concat(const std::vector<Tensor>& parts, int axis) {
    if (parts.empty()) argument_error("concat", "needs at least one tensor");
    const Shape& first = parts[0].shape();
    axis = normalize_axis(axis, int(first.size()), "concat", first);
    Shape shape = first;
    shape[axis] = 0;
    for (const Tensor& p : parts) {
        Shape expect = first, got = p.shape();
        if (got.size() != expect.size())
            argument_error("concat",
                           "ranks differ: " + shape_str(first) + " and " + shape_str(got));
        expect[axis] = got[axis];
        if (got != expect)
            argument_error("concat", "shapes " + shape_str(first) + " and " + shape_str(got) +
                                         " differ outside axis " + std::to_string(axis));
        shape[axis] += got[axis];
    }
    Tensor out = Tensor::from_op(shape, "concat", parts);
    if (out.numel() == 0) return out;   // nothing to copy (see sum)
    const AxisSplit so = split_at(shape, axis);
    std::size_t offset = 0;   // where this part starts along the axis
    std::vector<std::size_t> offsets;
    for (const Tensor& p : parts) {
        const AxisSplit sp = split_at(p.shape(), axis);
        for (std::size_t a = 0; a < sp.outer; ++a)
            std::copy_n(p.values().data() + a * sp.n * sp.inner, sp.n * sp.inner,
                        out.values().data() + (a * so.n + offset) * so.inner);
        offsets.push_back(offset);
        offset += sp.n;
    }
    if (out.requires_grad()) {
        std::vector<TensorNode*> ps;
        for (const Tensor& p : parts) ps.push_back(p.node());
        TensorNode* po = out.node();
        po->backward = [ps, po, offsets, so, axis] {
            for (std::size_t k = 0; k < ps.size(); ++k) {
                if (!ps[k]->requires_grad) continue;
                const AxisSplit sp = split_at(ps[k]->shape, axis);
                real* g = grad_of(ps[k]).data();
                for (std::size_t a = 0; a < sp.outer; ++a)
                    for (std::size_t e = 0; e < sp.n * sp.inner; ++e)
                        g[a * sp.n * sp.inner + e] +=
                            po->grad[(a * so.n + offsets[k]) * so.inner + e];
            }
        };
    }
    return out;
}

// Elements [start, end) along an axis. Backward adds the gradient into that window.
Tensor slice(const Tensor& x, int axis, int start, int end) {
    axis = normalize_axis(axis, x.rank(), "slice", x.shape());
    if (start < 0 || end > x.shape()[axis] || start >= end)
        argument_error("slice", "range [" + std::to_string(start) + ", " + std::to_string(end) +
                                    ") is not inside axis " + std::to_string(axis) + " of " +
                                    shape_str(x.shape()));
    Shape shape = x.shape();
    shape[axis] = end - start;
    Tensor out = Tensor::from_op(shape, "slice", {x});
    if (out.numel() == 0) return out;   // nothing to copy (see sum)
    const AxisSplit sx = split_at(x.shape(), axis);
    const std::size_t width = std::size_t(end - start) * sx.inner;
    for (std::size_t a = 0; a < sx.outer; ++a)
        std::copy_n(x.values().data() + (a * sx.n + start) * sx.inner, width,
                    out.values().data() + a * width);
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *po = out.node();
        po->backward = [px, po, sx, start, width] {
            real* gx = grad_of(px).data();
            for (std::size_t a = 0; a < sx.outer; ++a)
                for (std::size_t e = 0; e < width; ++e)
                    gx[(a * sx.n + start) * sx.inner + e] += po->grad[a * width + e];
        };
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// 2.6 Softmax and the losses
//
// softmax(x)ᵢ = e^(xᵢ) / Σⱼ e^(xⱼ) turns a row of logits into probabilities. e^x overflows a
// float above x ≈ 88, so the row's maximum m is subtracted first (e^(−m) cancels):
//     softmax(x)ᵢ = e^(xᵢ−m) / Σⱼ e^(xⱼ−m)     log softmax(x)ᵢ = xᵢ − m − log Σⱼ e^(xⱼ−m)
// Jacobian of softmax: ∂pᵢ/∂xⱼ = pᵢ(δᵢⱼ − pⱼ), so with no matrix dxⱼ = pⱼ·(gⱼ − Σᵢ gᵢpᵢ).
// For log_softmax, ∂ log pᵢ/∂xⱼ = δᵢⱼ − pⱼ, so dxⱼ = gⱼ − pⱼ·Σᵢ gᵢ.
// ---------------------------------------------------------------------------------------------

// log Σⱼ e^(xⱼ) of one row, the max subtracted.
static double log_sum_exp(const real* x, std::size_t n) {
    const real m = *std::max_element(x, x + n);
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (std::size_t j = 0; j < n; ++j) s += exp_by_reduction(double(x[j] - m));   // §2.3
    return m + std::log(s);
}

// softmax and log_softmax work on rows along the last axis.
static void check_rows(const Tensor& x, const char* op) {
    if (x.rank() < 1 || x.dim(-1) == 0)
        argument_error(op, "needs a non-empty last axis, got " + shape_str(x.shape()));
}

// A logit may be −inf (a masked class), not NaN or +inf; each row needs a finite one.
static void check_logits(const Tensor& x, const char* op) {
    check_devices(op, {x}, Device::CPU);   // (the device's kernels do not check)
    const std::size_t n = x.dim(-1), rows = x.numel() / n;
    const real* z = x.values().data();
    for (std::size_t r = 0; r < rows; ++r) {
        bool some_finite = false;
        for (std::size_t j = 0; j < n; ++j) {
            const real v = z[r * n + j];
            if (std::isnan(v) || v == std::numeric_limits<real>::infinity())
                throw std::domain_error(std::string(op) + ": logit " + to_string(v) + " at row " +
                                        std::to_string(r) + ", column " + std::to_string(j) +
                                        "; set_detect_anomaly(true) names the op that made it");
            some_finite = some_finite || v > -std::numeric_limits<real>::infinity();
        }
        if (!some_finite)
            throw std::domain_error(std::string(op) + ": every logit of row " + std::to_string(r) +
                                    " is -inf, so no class has any probability");
    }
}

Tensor softmax(const Tensor& x) {
    check_rows(x, "softmax");
    check_logits(x, "softmax");
    const std::size_t n = x.dim(-1), rows = x.numel() / n;
    Tensor out = Tensor::from_op(x.shape(), "softmax", {x});
    for (std::size_t r = 0; r < rows; ++r) {
        const real* in = x.values().data() + r * n;
        real* o = out.values().data() + r * n;
        const double lse = log_sum_exp(in, n);
        for (std::size_t j = 0; j < n; ++j) o[j] = real(std::exp(in[j] - lse));
    }
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *po = out.node();
        po->backward = [px, po, n, rows] {   // dxⱼ = pⱼ·(gⱼ − Σᵢ gᵢpᵢ)
            real* gx = grad_of(px).data();
            for (std::size_t r = 0; r < rows; ++r) {
                const real *p = po->data.data() + r * n, *g = po->grad.data() + r * n;
                double dot = 0;
                for (std::size_t i = 0; i < n; ++i) dot += g[i] * p[i];
                for (std::size_t j = 0; j < n; ++j) gx[r * n + j] += p[j] * (g[j] - real(dot));
            }
        };
    }
    return out;
}

Tensor log_softmax(const Tensor& x) {
    check_rows(x, "log_softmax");
    check_logits(x, "log_softmax");
    const std::size_t n = x.dim(-1), rows = x.numel() / n;
    Tensor out = Tensor::from_op(x.shape(), "log_softmax", {x});
    for (std::size_t r = 0; r < rows; ++r) {
        const real* in = x.values().data() + r * n;
        real* o = out.values().data() + r * n;
        const double lse = log_sum_exp(in, n);
        for (std::size_t j = 0; j < n; ++j) o[j] = real(in[j] - lse);
    }
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *po = out.node();
        po->backward = [px, po, n, rows] {   // dxⱼ = gⱼ − pⱼ·Σᵢ gᵢ,  pⱼ = e^(log pⱼ)
            real* gx = grad_of(px).data();
            for (std::size_t r = 0; r < rows; ++r) {
                const real *lp = po->data.data() + r * n, *g = po->grad.data() + r * n;
                double total = 0;
                for (std::size_t i = 0; i < n; ++i) total += g[i];
                for (std::size_t j = 0; j < n; ++j)
                    gx[r * n + j] += g[j] - std::exp(lp[j]) * real(total);
            }
        };
    }
    return out;
}

// Cross-entropy of logits [B, C] against class labels, fused with the softmax:
//     L = −(1/B) Σ_b Σ_c q_bc · log p_bc,     p = softmax(logits row),  q = target distribution
// q is the one-hot label, or with label smoothing ε: (1 − ε)·onehot + ε/C.
// Gradient: ∂L/∂logit_bc = (p_bc − q_bc)/B (softmax's Jacobian and the log's 1/p cancel); fused,
// it never takes the log of a p rounded to 0.
Tensor cross_entropy(const Tensor& logits, const std::vector<int>& labels, real label_smoothing) {
    if (logits.rank() != 2)
        argument_error("cross_entropy",
                       "logits must be [batch, classes], got " + shape_str(logits.shape()));
    const int B = logits.dim(0), C = logits.dim(1);
    if (B == 0 || C == 0)
        argument_error("cross_entropy", "logits " + shape_str(logits.shape()) +
                                            ": an empty batch, or no classes, has no mean loss");
    if (int(labels.size()) != B)
        argument_error("cross_entropy", "logits " + shape_str(logits.shape()) + " need " +
                                            std::to_string(B) + " labels, got " +
                                            std::to_string(labels.size()));
    for (int b = 0; b < B; ++b)
        if (labels[b] < 0 || labels[b] >= C)
            argument_error("cross_entropy", "label " + std::to_string(labels[b]) + " at row " +
                                                std::to_string(b) + " is outside [0, " +
                                                std::to_string(C) + ")");
    if (!(label_smoothing >= 0 && label_smoothing < 1))
        argument_error("cross_entropy",
                       "label_smoothing must be in [0, 1), got " + to_string(label_smoothing));
    if (on_cuda(logits))
        return cross_entropy_on_device(logits, labels, label_smoothing);   // device: Part 5
    check_logits(logits, "cross_entropy");
    const real eps = label_smoothing, off = eps / C,
               on = 1 - eps + off;   // q for other / true class
    std::vector<real> probs(logits.numel());
    std::vector<double> row_loss(B);   // threads share the rows; the sum below keeps one order
    const real* logit = logits.values().data();
#pragma omp parallel for if (std::size_t(B) * C >= parallel_min)
    for (int b = 0; b < B; ++b) {
        const real* z = logit + std::size_t(b) * C;
        const double lse = log_sum_exp(z, C);
        real* p = probs.data() + std::size_t(b) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) p[c] = real(exp_by_reduction(z[c] - lse));
        for (int c = 0; c < C; ++c) row_loss[b] -= (c == labels[b] ? on : off) * (z[c] - lse);
    }
    double loss = 0;
    for (double l : row_loss) loss += l;
    Tensor out = Tensor::from_op({1}, "cross_entropy", {logits});
    out.values()[0] = real(loss / B);
    if (out.requires_grad()) {
        TensorNode *pz = logits.node(), *po = out.node();
        po->backward = [pz, po, probs = std::move(probs), labels, B, C, on, off] {
            real* gz = grad_of(pz).data();
            const real scale = po->grad[0] / B;
#pragma omp parallel for if (std::size_t(B) * C >= parallel_min)
            for (int b = 0; b < B; ++b)
                for (int c = 0; c < C; ++c) {
                    const std::size_t i = std::size_t(b) * C + c;
                    gz[i] += scale * (probs[i] - (c == labels[b] ? on : off));   // (p − q)/B
                }
        };
    }
    return out;
}

static void require_same_shape(const Tensor& a, const Tensor& b, const char* op) {
    if (a.shape() != b.shape())
        argument_error(op, "prediction " + shape_str(a.shape()) + " and target " +
                               shape_str(b.shape()) + " must have the same shape");
}

// Mean squared error L = (1/N) Σ (pᵢ − tᵢ)²:  ∂L/∂pᵢ = 2(pᵢ − tᵢ)/N,  ∂L/∂tᵢ = −2(pᵢ − tᵢ)/N.
Tensor mse_loss(const Tensor& prediction, const Tensor& target) {
    require_same_shape(prediction, target, "mse_loss");
    check_devices("mse_loss", {prediction, target}, Device::CPU);
    if (prediction.numel() == 0)
        argument_error("mse_loss",
                       "an empty prediction " + shape_str(prediction.shape()) + " has no mean");
    const Tensor diff = prediction - target;
    return mean(diff * diff);
}

// Binary cross-entropy on logits z with targets t ∈ [0, 1]:
//     L = (1/N) Σ [ −t·log σ(z) − (1 − t)·log(1 − σ(z)) ]
//       = (1/N) Σ [ max(z, 0) − z·t + log(1 + e^(−|z|)) ]
// The second form never exponentiates a large number. ∂L/∂z = (σ(z) − t)/N.
Tensor bce_with_logits(const Tensor& logits, const Tensor& targets) {
    require_same_shape(logits, targets, "bce_with_logits");
    const std::size_t N = logits.numel();
    if (N == 0)
        argument_error("bce_with_logits",
                       "an empty batch " + shape_str(logits.shape()) + " has no mean loss");
    require_all(logits, "bce_with_logits", "a logit must be finite",
                [](real v) { return std::isfinite(v); });
    require_all(targets, "bce_with_logits", "a target must be in [0, 1]",
                [](real v) { return v >= 0 && v <= 1; });
    const real *z = logits.values().data(), *t = targets.values().data();
    double loss = 0;
    for (std::size_t i = 0; i < N; ++i)
        loss += std::max(z[i], real(0)) - z[i] * t[i] + std::log1p(std::exp(-std::fabs(z[i])));
    Tensor out = Tensor::from_op({1}, "bce_with_logits", {logits, targets});
    out.values()[0] = real(loss / N);
    if (out.requires_grad()) {
        TensorNode *pz = logits.node(), *pt = targets.node(), *po = out.node();
        po->backward = [pz, pt, po, N] {
            const real scale = po->grad[0] / N;
            for (std::size_t i = 0; i < N; ++i) {
                const real zi = pz->data[i];
                const real s =
                    zi >= 0 ? 1 / (1 + std::exp(-zi)) : std::exp(zi) / (1 + std::exp(zi));
                if (pz->requires_grad)
                    grad_of(pz)[i] += scale * (s - pt->data[i]);        // (σ(z) − t)/N
                if (pt->requires_grad) grad_of(pt)[i] += scale * -zi;   // −z/N
            }
        };
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// 2.7 Normalization, embedding, dropout
//
// LayerNorm over the last axis (D features of one example):
//     μ = mean(x), σ² = mean((x − μ)²), x̂ = (x − μ)/√(σ² + ε), y = γ·x̂ + β
// Backward, with ĝ = g·γ (the gradient arriving at x̂) and r = 1/√(σ² + ε):
//     dβ = Σ_rows g,   dγ = Σ_rows g·x̂,   dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))
// (the means remove the parts of ĝ that shift or scale the row, which x̂ ignores).
// RMSNorm drops the centering: rms = √(mean(x²) + ε), y = γ·x/rms, and with ĝ = g·γ:
//     dγ = Σ_rows g·x/rms,   dx = (ĝ − x·mean(ĝ·x)/rms²)/rms
// ---------------------------------------------------------------------------------------------

static void check_norm_args(const Tensor& x, const Tensor& gain, real eps, const char* op) {
    if (x.rank() < 1 || x.dim(-1) == 0)
        argument_error(op, "needs a non-empty last axis, got " + shape_str(x.shape()));
    if (gain.shape() != Shape{x.dim(-1)})
        argument_error(op, "gain must have shape [" + std::to_string(x.dim(-1)) + "] for input " +
                               shape_str(x.shape()) + ", got " + shape_str(gain.shape()));
    if (!(eps >= 0 && std::isfinite(eps)))
        argument_error(op, "eps must be finite and >= 0, got " + to_string(eps));
}

// A constant row (zeros, for RMS) with ε = 0 would be divided by 0: refused, named.
[[noreturn]] static void no_spread_error(std::size_t row, const char* op) {
    throw std::domain_error(std::string(op) + ": row " + std::to_string(row) +
                            " has no spread and eps = 0, so "
                            "the normalized row is 0/0; use eps > 0");
}

static real inverse_sqrt_or_throw(double spread, real eps, std::size_t row, const char* op) {
    if (!(spread + eps > 0)) no_spread_error(row, op);
    return real(1 / std::sqrt(spread + eps));
}

// Threads share rows; row sums in double.
Tensor layer_norm(const Tensor& x, const Tensor& gain, const Tensor& bias, real eps) {
    check_norm_args(x, gain, eps, "layer_norm");
    if (bias.shape() != gain.shape())
        argument_error("layer_norm", "bias must have shape " + shape_str(gain.shape()) + ", got " +
                                         shape_str(bias.shape()));
    if (on_cuda(x, gain, bias)) return layer_norm_on_device(x, gain, bias, eps);   // Part 5
    const std::size_t D = x.dim(-1), rows = x.numel() / D;
    std::vector<real> xhat(x.numel()), rstd(rows);   // kept for the backward
    Tensor out = Tensor::from_op(x.shape(), "layer_norm", {x, gain, bias});
    const real *g = gain.values().data(), *b = bias.values().data(), *in = x.values().data();
    real* o = out.values().data();
    std::size_t first_bad = rows;   // first row refused
#pragma omp parallel for reduction(min : first_bad) if (rows * D >= parallel_min)
    for (std::size_t r = 0; r < rows; ++r) {
        const real* row = in + r * D;
        double mu = 0, var = 0;
#pragma omp simd reduction(+ : mu)
        for (std::size_t j = 0; j < D; ++j) mu += row[j];
        mu /= D;
#pragma omp simd reduction(+ : var)
        for (std::size_t j = 0; j < D; ++j) var += (row[j] - mu) * (row[j] - mu);
        if (!(var / D + eps > 0)) {
            first_bad = std::min(first_bad, r);
            continue;
        }
        rstd[r] = real(1 / std::sqrt(var / D + eps));
#pragma omp simd
        for (std::size_t j = 0; j < D; ++j) {
            xhat[r * D + j] = real((row[j] - mu) * rstd[r]);
            o[r * D + j] = g[j] * xhat[r * D + j] + b[j];
        }
    }
    if (first_bad < rows) no_spread_error(first_bad, "layer_norm");
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *pg = gain.node(), *pb = bias.node(), *po = out.node();
        po->backward = [px, pg, pb, po, D, rows, xhat = std::move(xhat), rstd = std::move(rstd)] {
            const real* g = po->grad.data();
            const real* xh = xhat.data();
            if (pb->requires_grad)   // dβ = Σ_rows g
                add_column_sums(rows, D, grad_of(pb).data(), [g](std::size_t i) { return g[i]; });
            if (pg->requires_grad)   // dγ = Σ_rows g·x̂
                add_column_sums(rows, D, grad_of(pg).data(),
                                [g, xh](std::size_t i) { return g[i] * xh[i]; });
            if (!px->requires_grad) return;
            real* gx = grad_of(px).data();
            const real* gamma = pg->data.data();
#pragma omp parallel for if (rows * D >= parallel_min)
            for (std::size_t r = 0; r < rows; ++r) {
                const real *gr = g + r * D, *xr = xh + r * D;   // row r of g and of x̂
                double mean_gh = 0, mean_gh_xh = 0;             // mean(ĝ), mean(ĝ·x̂)
#pragma omp simd reduction(+ : mean_gh, mean_gh_xh)
                for (std::size_t j = 0; j < D; ++j) {
                    const double gh = gr[j] * gamma[j];
                    mean_gh += gh;
                    mean_gh_xh += gh * xr[j];
                }
                mean_gh /= D;
                mean_gh_xh /= D;
#pragma omp simd
                for (std::size_t j = 0; j < D; ++j)
                    gx[r * D + j] +=
                        real(rstd[r] * (gr[j] * gamma[j] - mean_gh - xr[j] * mean_gh_xh));
            }
        };
    }
    return out;
}

Tensor rms_norm(const Tensor& x, const Tensor& gain, real eps) {
    check_norm_args(x, gain, eps, "rms_norm");
    const std::size_t D = x.dim(-1), rows = x.numel() / D;
    std::vector<real> inv_rms(rows);
    Tensor out = Tensor::from_op(x.shape(), "rms_norm", {x, gain});
    const real* g = gain.values().data();
    real* o = out.values().data();
    for (std::size_t r = 0; r < rows; ++r) {
        const real* in = x.values().data() + r * D;
        double ms = 0;
        for (std::size_t j = 0; j < D; ++j) ms += double(in[j]) * in[j];
        inv_rms[r] = inverse_sqrt_or_throw(ms / D, eps, r, "rms_norm");
        for (std::size_t j = 0; j < D; ++j) o[r * D + j] = g[j] * in[j] * inv_rms[r];
    }
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *pg = gain.node(), *po = out.node();
        po->backward = [px, pg, po, D, rows, inv_rms = std::move(inv_rms)] {
            for (std::size_t r = 0; r < rows; ++r) {
                const real *g = po->grad.data() + r * D, *in = px->data.data() + r * D;
                if (pg->requires_grad)
                    for (std::size_t j = 0; j < D; ++j) grad_of(pg)[j] += g[j] * in[j] * inv_rms[r];
                if (!px->requires_grad) continue;
                double mean_gh_x = 0;   // mean(ĝ·x)
                for (std::size_t j = 0; j < D; ++j) mean_gh_x += double(g[j]) * pg->data[j] * in[j];
                mean_gh_x /= D;
                real* gx = grad_of(px).data() + r * D;
                const double ir = inv_rms[r];
                for (std::size_t j = 0; j < D; ++j)
                    gx[j] += real(ir * (g[j] * pg->data[j] - in[j] * mean_gh_x * ir * ir));
            }
        };
    }
    return out;
}

// out[k] = table[ids[k]]; backward adds each row's gradient into its table row (twice if used
// twice).
Tensor embedding(const Tensor& table, const std::vector<int>& ids) {
    if (table.rank() != 2)
        argument_error("embedding", "table must be [vocab, dim], got " + shape_str(table.shape()));
    const int V = table.dim(0), D = table.dim(1);
    for (std::size_t k = 0; k < ids.size(); ++k)
        if (ids[k] < 0 || ids[k] >= V)
            argument_error("embedding", "id " + std::to_string(ids[k]) + " at position " +
                                            std::to_string(k) + " is outside [0, " +
                                            std::to_string(V) + ")");
    if (on_cuda(table)) return embedding_on_device(table, ids);   // device: Part 5
    Tensor out = Tensor::from_op({int(ids.size()), D}, "embedding", {table});
    for (std::size_t k = 0; k < ids.size(); ++k)
        std::copy_n(table.values().data() + std::size_t(ids[k]) * D, D,
                    out.values().data() + k * D);
    if (out.requires_grad()) {
        TensorNode *pt = table.node(), *po = out.node();
        po->backward = [pt, po, ids, D] {
            real* gt = grad_of(pt).data();
            for (std::size_t k = 0; k < ids.size(); ++k)
                for (int j = 0; j < D; ++j) gt[std::size_t(ids[k]) * D + j] += po->grad[k * D + j];
        };
    }
    return out;
}

// Training: keep each element with probability 1 − p, scaled by 1/(1 − p), so the expected
// output is the input. y = m·x with a fixed mask m: ∂y/∂x = m. Evaluation: the identity.
Tensor dropout(const Tensor& x, real p, Rng& rng, bool training) {
    if (!(p >= 0 && p < 1)) argument_error("dropout", "p must be in [0, 1), got " + to_string(p));
    if (!training || p == 0) return x;
    Tensor mask(x.shape());
    for (real& m : mask.values()) m = rng.uniform() >= p ? 1 / (1 - p) : real(0);
    return x * mask;
}

// ---------------------------------------------------------------------------------------------
// 2.8 Initialization and layers
//
// With independent zero-mean terms Var(Σ wᵢxᵢ) = fan_in·Var(w)·Var(x): through many layers
// signals vanish or blow up unless fan_in·Var(w) ≈ 1.
//   Xavier (tanh, sigmoid): Var(w) = 2/(fan_in + fan_out), steadying activations and gradients:
//       std = √(2/(fan_in + fan_out)), or uniform on [−a, a], a = √(6/(fan_in + fan_out)).
//   He (ReLU, which zeroes half the inputs): Var(w) = 2/fan_in: std √(2/fan_in), a = √(6/fan_in).
//   GPT-2: N(0, 0.02²); the 2 residual projections per layer scaled by 1/√(2·n_layers).
// Zero init is for biases only: identical weights get identical gradients ("symmetry"; lesson 08).
// ---------------------------------------------------------------------------------------------

Tensor init_weight(Shape shape, int fan_in, int fan_out, Init init, Rng& rng) {
    if (fan_in <= 0 || fan_out <= 0)
        argument_error("init_weight", "fan_in and fan_out must be positive, got " +
                                          std::to_string(fan_in) + " and " +
                                          std::to_string(fan_out));
    switch (init) {
    case Init::zeros:
        return Tensor(std::move(shape));
    case Init::xavier_normal:
        return randn(std::move(shape), rng, real(std::sqrt(2.0 / (fan_in + fan_out))));
    case Init::xavier_uniform: {
        const real a = real(std::sqrt(6.0 / (fan_in + fan_out)));
        return uniform(std::move(shape), rng, -a, a);
    }
    case Init::he_normal:
        return randn(std::move(shape), rng, real(std::sqrt(2.0 / fan_in)));
    case Init::he_uniform: {
        const real a = real(std::sqrt(6.0 / fan_in));
        return uniform(std::move(shape), rng, -a, a);
    }
    case Init::gpt2:
        return randn(std::move(shape), rng, real(0.02));
    }
    return Tensor(std::move(shape));
}

Tensor gpt2_residual_weight(Shape shape, int n_layers, Rng& rng) {
    if (n_layers <= 0)
        argument_error("gpt2_residual_weight",
                       "n_layers must be positive, got " + std::to_string(n_layers));
    return randn(std::move(shape), rng, real(0.02 / std::sqrt(2.0 * n_layers)));
}

namespace nn {

Linear::Linear(int in, int out, Rng& rng, Init init, bool bias)
    : W(init_weight({in, out}, in, out, init, rng)) {
    W.requires_grad_();
    if (bias) b = Tensor({out}).requires_grad_();   // zeros
}

// From weights made elsewhere.
Linear::Linear(Tensor W_, Tensor b_) : W(std::move(W_)), b(std::move(b_)) {
    if (!W.defined() || W.rank() != 2 || (b.defined() && (b.rank() != 1 || b.dim(0) != W.dim(1))))
        argument_error("nn::Linear", "needs W [in, out] and b [out] (or no b); got W " +
                                         (W.defined() ? shape_str(W.shape()) : "(empty)") +
                                         " and b " +
                                         (b.defined() ? shape_str(b.shape()) : "(none)"));
    W.requires_grad_();
    if (b.defined()) b.requires_grad_();
}

// Y = X·W + b, the fused op of §2.4.
Tensor Linear::operator()(const Tensor& x) const {
    return b.defined() ? linear(x, W, b) : matmul(x, W);
}

std::vector<Tensor> Linear::parameters() const {
    if (b.defined()) return {W, b};
    return {W};
}

MLP::MLP(const std::vector<int>& sizes, Rng& rng, Activation act_, Init init, real dropout)
    : act(act_), dropout_p(dropout), dropout_rng(rng.next_u64()) {
    if (sizes.size() < 2) argument_error("nn::MLP", "needs at least an input and an output size");
    for (std::size_t l = 0; l + 1 < sizes.size(); ++l)
        layers.emplace_back(sizes[l], sizes[l + 1], rng, init);
}

MLP::MLP(std::vector<Linear> layers_, Activation act_)
    : layers(std::move(layers_)), act(act_), dropout_p(0), dropout_rng(0) {
    if (layers.empty()) argument_error("nn::MLP", "needs at least one layer");
    for (std::size_t l = 0; l + 1 < layers.size(); ++l)
        if (layers[l].W.dim(1) != layers[l + 1].W.dim(0))
            argument_error("nn::MLP", "layer " + std::to_string(l) + " gives " +
                                          std::to_string(layers[l].W.dim(1)) +
                                          " outputs but layer " + std::to_string(l + 1) +
                                          " takes " + std::to_string(layers[l + 1].W.dim(0)) +
                                          " inputs");
}

Tensor MLP::operator()(const Tensor& x) {
    Tensor h = x;
    for (std::size_t l = 0; l < layers.size(); ++l) {
        h = layers[l](h);
        if (l + 1 == layers.size()) break;   // logits: no activation
        h = activate(h, act);
        if (dropout_p > 0) h = dropout(h, dropout_p, dropout_rng, training);
    }
    return h;
}

std::vector<Tensor> MLP::parameters() const {
    std::vector<Tensor> p;
    for (const Linear& layer : layers)
        for (const Tensor& t : layer.parameters()) p.push_back(t);
    return p;
}

std::vector<std::pair<std::string, Tensor>> MLP::named_parameters() const {
    std::vector<std::pair<std::string, Tensor>> named;
    for (std::size_t l = 0; l < layers.size(); ++l) {
        const std::string prefix = "layers." + std::to_string(l) + ".";
        named.push_back({prefix + "W", layers[l].W});
        if (layers[l].b.defined()) named.push_back({prefix + "b", layers[l].b});
    }
    return named;
}

}   // namespace nn

// ---------------------------------------------------------------------------------------------
// 2.9 Optimizers
//
// An optimizer turns gradients into updates, with state per parameter element and a step
// counter t. Rules and defaults are PyTorch's.
//   SGD:        w ← w − lr·g
//   momentum:   v ← μ·v + g,  w ← w − lr·v          (Nesterov: w ← w − lr·(g + μ·v))
//   RMSProp:    s ← α·s + (1 − α)·g²,  w ← w − lr·g/(√s + ε)
//   Adam:       m ← β₁m + (1 − β₁)g,  v ← β₂v + (1 − β₂)g²,
//               m̂ = m/(1 − β₁ᵗ),  v̂ = v/(1 − β₂ᵗ)   (m, v start at 0: too small by 1 − βᵗ),
//               w ← w − lr·m̂/(√v̂ + ε)
//   AdamW:      Adam, plus w ← w − lr·λ·w ("decoupled"); Adam's weight_decay adds λ·w to g (L2),
//               which the division by √v̂ shrinks for the weights with large gradients.
//   Lion:       c = β₁m + (1 − β₁)g,  w ← w − lr·(sign(c) + λ·w),  m ← β₂m + (1 − β₂)g
// SGD, RMSProp and Lion compute in double, Adam in real.
// ---------------------------------------------------------------------------------------------

Optimizer::Optimizer(std::vector<Tensor> params, double lr_, const char* name)
    : lr(lr_), params_(std::move(params)), name_(name) {
    if (params_.empty()) argument_error(name, "no parameters to optimize");
    for (std::size_t k = 0; k < params_.size(); ++k) {
        const std::string which = "parameter " + std::to_string(k);
        if (!params_[k].defined())
            argument_error(name, which + " is an empty Tensor (default-constructed)");
        if (!params_[k].requires_grad()) argument_error(name, which + " does not require grad");
        for (std::size_t j = 0; j < k; ++j)
            if (params_[j].node() == params_[k].node())
                argument_error(name, which + " is parameter " + std::to_string(j) +
                                         " again: it would be updated twice a step");
    }
    Optimizer::check_settings();
}

// Checked at every step: a schedule changes opt.lr between steps, and a NaN rate would silently
// make every weight NaN.
void Optimizer::check_settings() const {
    if (!(lr >= 0 && std::isfinite(lr)))
        argument_error(name_, "the learning rate must be finite and >= 0, got " + to_string(lr));
}

// A non-finite gradient is refused before any parameter changes. g·0 is 0 for a finite g and NaN
// for NaN or ±inf, so one vectorized sum tells whether to look for one.
static void require_finite_gradients(const std::vector<Tensor>& params, const char* name) {
    for (std::size_t k = 0; k < params.size(); ++k) {
        const std::vector<real>& g = params[k].node()->grad;
        real any_bad = 0;   // v·0 is 0 for a finite v, NaN for ±∞ or NaN
        const real* v = g.data();
#pragma omp simd reduction(+ : any_bad)
        for (std::size_t i = 0; i < g.size(); ++i) any_bad += v[i] * 0;
        if (any_bad == 0) continue;
        const std::size_t i = std::size_t(
            std::find_if(g.begin(), g.end(), [](real v) { return !std::isfinite(v); }) - g.begin());
        throw std::domain_error(
            std::string(name) + ": the gradient of parameter " + std::to_string(k) + " is " +
            to_string(g[i]) + " at element " + std::to_string(i) +
            "; nothing was changed (a "
            "learning rate too high? set_detect_anomaly(true) names the op that made it)");
    }
}

void Optimizer::step() {
    check_settings();
    if (on_cuda(params_)) return step_on_device();   // device: Part 5
    if (!device_state_.empty())
        argument_error(
            name_,
            "the parameters moved to the cpu after this optimizer's state was made on cuda; its "
            "state does not move with them: create the optimizer after moving the model");
    if (state_.empty())   // first step: all zeros
        for (const Tensor& p : params_)
            state_.emplace_back(state_per_param(), std::vector<real>(p.numel(), real(0)));
    for (std::size_t k = 0; k < params_.size(); ++k) {
        const std::size_t g = params_[k].grad().size(), n = params_[k].numel();
        if (g != 0 && g != n)
            argument_error(name_, "parameter " + std::to_string(k) + " has " + std::to_string(n) +
                                      " values but a gradient of " + std::to_string(g));
    }
    require_finite_gradients(params_, name_);
    ++step_count;
    for (std::size_t k = 0; k < params_.size(); ++k)
        if (!params_[k].grad().empty()) {   // the loss did not reach it: left alone
            update(params_[k].node()->data, params_[k].node()->grad, state_[k]);
            ++params_[k].node()->version;   // an in-place write (§2.1)
        }
}

void Optimizer::zero_grad() {
    for (const Tensor& p : params_) p.zero_grad();
}

std::vector<std::vector<std::vector<real>>>& Optimizer::state() {
    if (!device_state_.empty())
        throw std::runtime_error(std::string(name_) +
                                 ": its state is in device memory (the parameters are on cuda); "
                                 "checkpoints of a run on the device are not supported yet");
    return state_;
}

std::size_t Optimizer::state_bytes() const {
    std::size_t n = 0;
    for (const Tensor& p : params_) n += p.numel();
    return n * state_per_param() * sizeof(real);
}

SGD::SGD(std::vector<Tensor> params, double lr, double momentum_, bool nesterov_,
         double weight_decay_)
    : Optimizer(std::move(params), lr, "SGD"), momentum(momentum_), weight_decay(weight_decay_),
      nesterov(nesterov_) {
    SGD::check_settings();
}

void SGD::check_settings() const {
    Optimizer::check_settings();
    require_argument(momentum >= 0 && momentum < 1, "SGD",
                     "momentum must be in [0, 1), got " + to_string(momentum));
    require_argument(!nesterov || momentum > 0, "SGD", "Nesterov needs momentum > 0");
    require_argument(weight_decay >= 0 && std::isfinite(weight_decay), "SGD",
                     "weight_decay must be >= 0 and finite, got " + to_string(weight_decay));
}

void SGD::update(std::vector<real>& w, const std::vector<real>& grad,
                 std::vector<std::vector<real>>& state) {
    for (std::size_t i = 0; i < w.size(); ++i) {
        double g = grad[i] + weight_decay * w[i];   // L2: ∂(λ/2·w²)/∂w = λw
        if (momentum > 0) {
            real& v = state[0][i];
            v = real(momentum * v + g);
            g = nesterov ? g + momentum * v : v;
        }
        w[i] = real(w[i] - lr * g);
    }
}

RMSProp::RMSProp(std::vector<Tensor> params, double lr, double alpha_, double eps_,
                 double weight_decay_)
    : Optimizer(std::move(params), lr, "RMSProp"), alpha(alpha_), eps(eps_),
      weight_decay(weight_decay_) {
    RMSProp::check_settings();
}

void RMSProp::check_settings() const {
    Optimizer::check_settings();
    require_argument(alpha >= 0 && alpha < 1, "RMSProp",
                     "alpha must be in [0, 1), got " + to_string(alpha));
    require_argument(eps > 0 && std::isfinite(eps), "RMSProp",
                     "eps must be > 0 and finite, got " + to_string(eps));
    require_argument(weight_decay >= 0 && std::isfinite(weight_decay), "RMSProp",
                     "weight_decay must be >= 0 and finite, got " + to_string(weight_decay));
}

void RMSProp::update(std::vector<real>& w, const std::vector<real>& grad,
                     std::vector<std::vector<real>>& state) {
    for (std::size_t i = 0; i < w.size(); ++i) {
        const double g = grad[i] + weight_decay * w[i];
        real& s = state[0][i];
        s = real(alpha * s + (1 - alpha) * g * g);
        w[i] = real(w[i] - lr * g / (std::sqrt(double(s)) + eps));
    }
}

Adam::Adam(std::vector<Tensor> params, double lr, double beta1_, double beta2_, double eps_,
           double weight_decay_)
    : Adam(std::move(params), lr, beta1_, beta2_, eps_, weight_decay_, false, "Adam") {}

Adam::Adam(std::vector<Tensor> params, double lr, double beta1_, double beta2_, double eps_,
           double weight_decay_, bool decoupled, const char* name)
    : Optimizer(std::move(params), lr, name), beta1(beta1_), beta2(beta2_), eps(eps_),
      weight_decay(weight_decay_), decoupled_(decoupled) {
    Adam::check_settings();
}

// eps > 0: with eps = 0, a gradient that is 0 from the start gives m̂/√v̂ = 0/0.
void Adam::check_settings() const {
    Optimizer::check_settings();
    require_argument(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, name(),
                     "betas must be in [0, 1), got " + to_string(beta1) + " and " +
                         to_string(beta2));
    require_argument(eps > 0 && std::isfinite(eps), name(),
                     "eps must be > 0 and finite, got " + to_string(eps));
    require_argument(weight_decay >= 0 && std::isfinite(weight_decay), name(),
                     "weight_decay must be >= 0 and finite, got " + to_string(weight_decay));
}

// Adam in the parameter's precision, so the loop vectorizes (-fno-math-errno). Constants are
// formed in double, rounded once: 1 − β₂ formed in float is 1.3e-5 off, and v̂ too small.
void Adam::update(std::vector<real>& w, const std::vector<real>& grad,
                  std::vector<std::vector<real>>& state) {
    const real b1 = real(beta1), b2 = real(beta2), one_minus_b1 = real(1 - beta1),
               one_minus_b2 = real(1 - beta2);
    // The bias corrections c = 1 − βᵗ, as 1/c: the loop multiplies, which is cheaper than dividing.
    const real inv_c1 = real(1 / (1 - std::pow(beta1, double(step_count))));
    const real inv_c2 = real(1 / (1 - std::pow(beta2, double(step_count))));
    const real l2 = real(decoupled_ ? 0 : weight_decay);           // Adam:  g ← g + λ·w
    const real decay = real(decoupled_ ? lr * weight_decay : 0);   // AdamW: w ← w − lr·λ·w
    const real rate = real(lr), epsilon = real(eps);
    real *m = state[0].data(), *v = state[1].data(), *wp = w.data();
    const real* gp = grad.data();
    const std::size_t n = w.size();
#pragma omp parallel for simd if (n >= parallel_min)
    for (std::size_t i = 0; i < n; ++i) {
        const real g = gp[i] + l2 * wp[i];
        m[i] = b1 * m[i] + one_minus_b1 * g;
        v[i] = b2 * v[i] + one_minus_b2 * g * g;
        const real m_hat = m[i] * inv_c1;   // m̂ = m/(1 − β₁ᵗ)
        const real v_hat = v[i] * inv_c2;   // v̂ = v/(1 − β₂ᵗ)
        wp[i] = wp[i] - decay * wp[i] - rate * m_hat / (std::sqrt(v_hat) + epsilon);
    }
}

AdamW::AdamW(std::vector<Tensor> params, double lr, double beta1, double beta2, double eps,
             double weight_decay)
    : Adam(std::move(params), lr, beta1, beta2, eps, weight_decay, true, "AdamW") {}

Lion::Lion(std::vector<Tensor> params, double lr, double beta1_, double beta2_,
           double weight_decay_)
    : Optimizer(std::move(params), lr, "Lion"), beta1(beta1_), beta2(beta2_),
      weight_decay(weight_decay_) {
    Lion::check_settings();
}

void Lion::check_settings() const {
    Optimizer::check_settings();
    require_argument(beta1 >= 0 && beta1 <= 1 && beta2 >= 0 && beta2 <= 1, "Lion",
                     "betas must be in [0, 1], got " + to_string(beta1) + " and " +
                         to_string(beta2));
    require_argument(weight_decay >= 0 && std::isfinite(weight_decay), "Lion",
                     "weight_decay must be >= 0 and finite, got " + to_string(weight_decay));
}

void Lion::update(std::vector<real>& w, const std::vector<real>& grad,
                  std::vector<std::vector<real>>& state) {
    std::vector<real>& m = state[0];
    for (std::size_t i = 0; i < w.size(); ++i) {
        const double c = beta1 * m[i] + (1 - beta1) * grad[i];
        const double sign = c > 0 ? 1 : c < 0 ? -1 : 0;   // every step has size lr
        w[i] = real(w[i] - lr * (sign + weight_decay * w[i]));
        m[i] = real(beta2 * m[i] + (1 - beta2) * grad[i]);
    }
}

// ---------------------------------------------------------------------------------------------
// 2.10 Learning-rate schedules: lr as a function of the step, set before each optimizer step
// (`opt.lr = warmup_cosine_lr(step, ...)`).
//
// Warmup: Adam's first estimates are noisy and large early steps can throw a fresh model into a
// bad region, so lr = lr_max·step/warmup. Then cosine decay, progress 0 → 1:
// lr_min + ½(lr_max − lr_min)(1 + cos(π·progress)).
// Example: lr_max 3e-4, lr_min 3e-5, warmup 2000, total 10000 → step 6000 gives 1.65e-4.
// ---------------------------------------------------------------------------------------------

static void require_step_and_rate(long step, double lr, const char* name) {
    require_argument(step >= 0, name, "step must be >= 0, got " + std::to_string(step));
    require_argument(lr >= 0 && std::isfinite(lr), name,
                     "the learning rate must be finite and >= 0, got " + to_string(lr));
}

double constant_lr(long step, double lr) {
    require_step_and_rate(step, lr, "constant_lr");
    return lr;
}

double warmup_cosine_lr(long step, long warmup, long total, double lr_max, double lr_min) {
    require_step_and_rate(step, lr_max, "warmup_cosine_lr");
    require_argument(warmup >= 0 && total > 0 && warmup <= total, "warmup_cosine_lr",
                     "needs 0 <= warmup <= total, got warmup " + std::to_string(warmup) +
                         " and total " + std::to_string(total));
    require_argument(lr_max >= lr_min && lr_min >= 0, "warmup_cosine_lr",
                     "needs lr_max >= lr_min >= 0, got " + to_string(lr_max) + " and " +
                         to_string(lr_min));
    if (step < warmup) return lr_max * double(step) / double(warmup);
    if (step >= total) return lr_min;
    const double progress = double(step - warmup) / double(total - warmup);
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + std::cos(pi * progress));
}

// The original Transformer's schedule, scaled to peak at lr_max (step = warmup).
double inverse_sqrt_lr(long step, long warmup, double lr_max) {
    require_step_and_rate(step, lr_max, "inverse_sqrt_lr");
    require_argument(warmup > 0, "inverse_sqrt_lr",
                     "warmup must be > 0, got " + std::to_string(warmup));
    if (step < warmup) return lr_max * double(step) / double(warmup);
    return lr_max * std::sqrt(double(warmup) / double(step));
}

double step_decay_lr(long step, double lr0, long step_size, double gamma) {
    require_step_and_rate(step, lr0, "step_decay_lr");
    require_argument(gamma > 0 && gamma <= 1, "step_decay_lr",
                     "gamma must be in (0, 1] (a decay), got " + to_string(gamma));
    require_argument(step_size > 0, "step_decay_lr",
                     "step_size must be > 0, got " + std::to_string(step_size));
    return lr0 * std::pow(gamma, double(step / step_size));
}

// ---------------------------------------------------------------------------------------------
// 2.11 Gradient tools
//
// Global norm ‖g‖ = √(Σ over all parameters and elements of g²); it spikes before the loss does.
// Clipping by norm, g ← g·max_norm/‖g‖ when ‖g‖ > max_norm, keeps the direction; clipping by
// value clamps each element to [−c, c], bending it.
// ---------------------------------------------------------------------------------------------

std::vector<double> grad_norms(const std::vector<Tensor>& params) {
    std::vector<double> norms;
    for (const Tensor& p : params) {
        if (p.device() == Device::CUDA) {
            norms.push_back(grad_norm_on_device(p));
            continue;
        }
        // Eight running sums, one per vector lane: it vectorizes, and the order of additions
        // (so the bits) is fixed by this code, not by the compiler.
        const real* g = p.grad().data();
        const std::size_t n = p.grad().size();
        double lane[8] = {};
        std::size_t i = 0;
        for (; i + 8 <= n; i += 8)
            for (int j = 0; j < 8; ++j) lane[j] += double(g[i + j]) * g[i + j];
        for (; i < n; ++i) lane[0] += double(g[i]) * g[i];
        double s = 0;
        for (double l : lane) s += l;
        norms.push_back(std::sqrt(s));
    }
    return norms;
}

double grad_norm(const std::vector<Tensor>& params) {
    double s = 0;
    for (double n : grad_norms(params)) s += n * n;
    return std::sqrt(s);
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
    if (!(max_norm > 0))
        argument_error("clip_grad_norm", "max_norm must be > 0, got " + to_string(max_norm));
    if (on_cuda(params)) return clip_grad_norm_on_device(params, max_norm);   // device: Part 5
    const double norm = grad_norm(params);
    if (!std::isfinite(norm))
        require_finite_gradients(params, "clip_grad_norm");   // names the culprit
    if (norm > max_norm) {
        const double scale = max_norm / norm;
        for (const Tensor& p : params)
            for (real& g : p.grad()) g = real(g * scale);
    }
    return norm;
}

void clip_grad_value(const std::vector<Tensor>& params, double max_abs) {
    if (!(max_abs > 0))
        argument_error("clip_grad_value", "the limit must be > 0, got " + to_string(max_abs));
    for (const Tensor& p : params)
        for (real& g : p.grad()) g = real(std::clamp(double(g), -max_abs, max_abs));
}

// ---------------------------------------------------------------------------------------------
// 2.12 Anomaly mode: which op made the NaN?
//
// A NaN spreads: by the time the loss is NaN its cause is long gone. In anomaly mode each op
// checks its inputs, naming the op that made the first non-finite value; backward() checks each
// gradient after the op that wrote it. Off, it costs one flag test per op.
// ---------------------------------------------------------------------------------------------

// On from the start when the environment sets ENGINE_DETECT_ANOMALY to 1, true, yes or on.
static bool switched_on(const char* variable) {
    const char* v = std::getenv(variable);
    std::string value = v ? v : "";
    for (char& c : value) c = char(std::tolower(static_cast<unsigned char>(c)));
    return value == "1" || value == "true" || value == "yes" || value == "on";
}
static bool anomaly_mode = switched_on("ENGINE_DETECT_ANOMALY");

void set_detect_anomaly(bool on) { anomaly_mode = on; }
bool detect_anomaly() { return anomaly_mode; }

// What usually makes an op produce inf or NaN.
static std::string likely_cause(const std::string& op) {
    if (op == "log" || op == "log_softmax" || op == "cross_entropy")
        return "log of 0 (a probability that underflowed)";
    if (op == "exp" || op == "softmax") return "overflow in exp: its input is too large";
    if (op == "/" || op == "division a/b") return "division by 0 or by a tiny number";
    if (op == "pow" || op == "sqrt") return "a power of 0 or of a negative number";
    return "values too large: a learning rate too high, exploding activations, or a bad input";
}

static std::string describe_inputs(const TensorNode& n) {
    std::string s;
    for (int k = 0; k < n.n_inputs(); ++k) s += (k ? ", " : "") + shape_str(n.input(k)->shape);
    return s.empty() ? "none recorded" : s;
}

[[noreturn]] static void anomaly(const std::string& where, const std::string& op) {
    throw std::domain_error("anomaly: " + where + "; likely cause: " + likely_cause(op));
}

static bool all_finite(const std::vector<real>& v) {
    for (real x : v)
        if (!std::isfinite(x)) return false;
    return true;
}

// On the GPU, checked on a copy.
static bool all_finite(const TensorNode& n, bool grad) {
    if (n.device == Device::CUDA) return all_finite(host_values(grad ? n.cuda_grad : n.cuda_data));
    return all_finite(grad ? n.grad : n.data);
}

void anomaly_tensor_inputs(const char* op, const std::vector<Tensor>& inputs) {
    for (const Tensor& t : inputs) {
        if (all_finite(*t.node(), false)) continue;
        const TensorNode& n = *t.node();
        const std::string producer =
            n.op[0] ? "'" + std::string(n.op) + "'" : "a leaf tensor (input data or a parameter)";
        anomaly(producer + " produced NaN/Inf in its output " + shape_str(n.shape) +
                    " (inputs: " + describe_inputs(n) + "), found when '" + op + "' read it",
                n.op);
    }
}

void anomaly_tensor_backward(const TensorNode& n) {
    for (int k = 0; k < n.n_inputs(); ++k)
        if (!all_finite(*n.input(k), true))
            anomaly("the backward of '" + std::string(n.op) + "' (output " + shape_str(n.shape) +
                        ", inputs: " + describe_inputs(n) +
                        ") produced NaN/Inf in the gradient of input " + std::to_string(k),
                    n.op);
}

void anomaly_scalar_forward(const Node& n) {
    if (std::isfinite(n.data) && std::isfinite(n.local_grad[0]) && std::isfinite(n.local_grad[1]))
        return;
    std::string inputs = to_string(n.parents[0]->data);
    if (n.n_parents > 1) inputs += ", " + to_string(n.parents[1]->data);
    anomaly("'" + std::string(n.op) + "' produced " + to_string(n.data) +
                " (or a non-finite slope) from inputs " + inputs,
            n.op);
}

void anomaly_scalar_backward(const Node& n) {
    for (int i = 0; i < n.n_parents; ++i)
        if (!std::isfinite(n.parents[i]->grad))
            anomaly("the backward of '" + std::string(n.op) + "' produced a non-finite gradient " +
                        to_string(n.parents[i]->grad) + " for input " + std::to_string(i),
                    n.op);
}

// =============================================================================================
// Part 3: real data and checkpoints
// =============================================================================================

// ---------------------------------------------------------------------------------------------
// 3.1 IDX files: a format checked before it is trusted
//
// Layout: bytes 0–1 are 0, byte 2 the element type (0x08 = unsigned byte), byte 3 the rank;
// then one 32-bit big-endian size per dimension; then the elements, row-major. Each check turns
// a bad file (truncated, gzipped, labels for images) into a message, not an out-of-bounds read.
// ---------------------------------------------------------------------------------------------

static std::vector<unsigned char> read_file(const std::string& path, const char* what) {
    struct stat info {};
    if (::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode))
        throw std::runtime_error(std::string(what) + ": " + path + " is a directory, not a file");
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error(std::string(what) + ": cannot open " + path);
    return std::vector<unsigned char>(std::istreambuf_iterator<char>(f),
                                      std::istreambuf_iterator<char>());
}

[[noreturn]] static void idx_error(const std::string& path, const std::string& what) {
    throw std::runtime_error("read_idx: " + path + ": " + what);
}

IdxArray read_idx(const std::string& path) {
    const std::vector<unsigned char> file = read_file(path, "read_idx");
    if (file.size() >= 2 && file[0] == 0x1f && file[1] == 0x8b)
        idx_error(path, "this is a gzip file; unpack it first (gunzip, or `make data`)");
    if (file.size() < 4)
        idx_error(path, "too short for an IDX header (" + std::to_string(file.size()) + " bytes)");
    if (file[0] != 0 || file[1] != 0)
        idx_error(path, "bad magic number (an IDX file starts with two zero bytes)");
    if (file[2] != 0x08) {
        char code[8];
        std::snprintf(code, sizeof code, "0x%02X", file[2]);
        idx_error(path, std::string("element type ") + code +
                            " is not supported (only 0x08, unsigned bytes)");
    }
    const int rank = file[3];
    if (rank < 1 || rank > 4) idx_error(path, "rank " + std::to_string(rank) + " is not in 1..4");
    const std::size_t header = 4 + 4 * std::size_t(rank);
    if (file.size() < header)
        idx_error(path, "truncated header: " + std::to_string(rank) + " sizes announced");
    IdxArray a;
    std::size_t count = 1;
    for (int d = 0; d < rank; ++d) {
        const unsigned char* p = file.data() + 4 + 4 * d;
        const std::uint32_t size =
            std::uint32_t(p[0]) << 24 | std::uint32_t(p[1]) << 16 | std::uint32_t(p[2]) << 8 | p[3];
        if (size == 0 || size > (1u << 30))
            idx_error(path, "dimension " + std::to_string(d) + " has size " + std::to_string(size));
        a.dims.push_back(int(size));
        if (count > (std::size_t(1) << 34) / size)   // checked before multiplying: no wrap-around
            idx_error(path, "the sizes multiply to more than 16 GiB");
        count *= size;
    }
    const std::size_t have = file.size() - header;
    if (have < count)
        idx_error(path, "truncated: the header promises " + std::to_string(count) +
                            " bytes of data, the file has " + std::to_string(have));
    if (have > count)
        idx_error(path, std::to_string(have - count) + " unexpected bytes after the data");
    a.bytes.assign(file.begin() + header, file.end());
    return a;
}

Dataset load_idx_dataset(const std::string& images_path, const std::string& labels_path) {
    const IdxArray images = read_idx(images_path), labels = read_idx(labels_path);
    if (images.dims.size() != 3)
        idx_error(images_path, "expected images [count, rows, cols], got rank " +
                                   std::to_string(images.dims.size()));
    if (labels.dims.size() != 1)
        idx_error(labels_path,
                  "expected labels [count], got rank " + std::to_string(labels.dims.size()));
    if (images.dims[0] != labels.dims[0])
        throw std::runtime_error("load_idx_dataset: " + images_path + " has " +
                                 std::to_string(images.dims[0]) + " images but " + labels_path +
                                 " has " + std::to_string(labels.dims[0]) + " labels");
    const std::size_t pixels = std::size_t(images.dims[1]) * std::size_t(images.dims[2]);
    if (pixels > std::size_t(std::numeric_limits<int>::max()))
        idx_error(images_path,
                  "images of " + std::to_string(pixels) + " pixels are more than a shape holds");
    Dataset d;
    const int n = images.dims[0];
    d.images = Tensor({n, int(pixels)});
    real* pixel = d.images.values().data();
    for (std::size_t i = 0; i < images.bytes.size(); ++i) pixel[i] = real(images.bytes[i] / 255.0);
    for (unsigned char l : labels.bytes) {
        d.labels.push_back(l);
        d.classes = std::max(d.classes, int(l) + 1);
    }
    return d;
}

Tensor gather_rows(const Tensor& images, const std::vector<int>& rows) {
    if (images.rank() != 2)
        argument_error("gather_rows", "needs [N, D], got " + shape_str(images.shape()));
    const int N = images.dim(0), D = images.dim(1);
    Tensor batch({int(rows.size()), D});
    for (std::size_t k = 0; k < rows.size(); ++k) {
        if (rows[k] < 0 || rows[k] >= N)
            argument_error("gather_rows", "row " + std::to_string(rows[k]) + " outside [0, " +
                                              std::to_string(N) + ")");
        std::copy_n(images.values().data() + std::size_t(rows[k]) * D, D,
                    batch.values().data() + k * D);
    }
    return batch;
}

// ---------------------------------------------------------------------------------------------
// 3.2 Checkpoints: save atomically, load all or nothing
//
// File layout, every integer little-endian:
//   "DLCKPT02"  magic and version
//   u64 step, u32 sizeof(real), the run's settings (a string)
//   u32 tensor count; per tensor: name, u32 rank, u32 sizes..., values
//   u32 optimizer count; per optimizer: name, i64 step_count, u32 params, u32 slots; the values
//   u32 rng count; u64 state each
//   u64 FNV-1a checksum of everything before it
// A string is a u32 length and its bytes. The checksum catches a file cut short or a flipped
// byte; the names and shapes catch a checkpoint of another model, the settings one of another
// recipe. One optimizer per parameter group (lesson 15 decays only the matrices).
// Saving writes path.tmp and renames it over path: rename() is one step, so a crash mid-save
// leaves the old checkpoint or the new one, never half of one.
// ---------------------------------------------------------------------------------------------

static const char checkpoint_magic[] = "DLCKPT02";

// FNV-1a: any single changed byte changes the result.
static std::uint64_t fnv1a(const unsigned char* p, std::size_t n) {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

struct ByteWriter {
    std::vector<unsigned char> bytes;
    void u64(std::uint64_t v) {
        for (int i = 0; i < 8; ++i) bytes.push_back((v >> (8 * i)) & 0xff);
    }
    void u32(std::uint32_t v) {
        for (int i = 0; i < 4; ++i) bytes.push_back((v >> (8 * i)) & 0xff);
    }
    void str(const std::string& s) {
        u32(std::uint32_t(s.size()));
        bytes.insert(bytes.end(), s.begin(), s.end());
    }
    void reals(const real* v, std::size_t n) {
        const auto* p = reinterpret_cast<const unsigned char*>(v);   // (little-endian hosts)
        bytes.insert(bytes.end(), p, p + n * sizeof(real));
    }
};

// Reads what ByteWriter wrote; running past the end means the file is damaged.
struct ByteReader {
    const std::vector<unsigned char>& bytes;
    std::size_t pos;
    const std::string& path;
    void need(std::size_t n) {
        if (bytes.size() - pos < n)
            throw std::runtime_error("load_checkpoint: " + path + ": truncated");
    }
    std::uint64_t u64() {
        need(8);
        std::uint64_t v = 0;
        for (int i = 0; i < 8; ++i) v |= std::uint64_t(bytes[pos++]) << (8 * i);
        return v;
    }
    std::uint32_t u32() {
        need(4);
        std::uint32_t v = 0;
        for (int i = 0; i < 4; ++i) v |= std::uint32_t(bytes[pos++]) << (8 * i);
        return v;
    }
    std::string str() {
        const std::uint32_t n = u32();
        need(n);
        pos += n;
        return std::string(bytes.begin() + (pos - n), bytes.begin() + pos);
    }
    std::vector<real> reals(std::size_t n) {
        need(n * sizeof(real));
        std::vector<real> v(n);
        std::memcpy(v.data(), bytes.data() + pos, n * sizeof(real));
        pos += n * sizeof(real);
        return v;
    }
};

// Checkpoints hold CPU tensors: a run on the GPU is refused before anything happens, and so is
// a null optimizer.
static void require_checkpointable(const TrainingState& state, const char* what) {
    for (const auto& [name, t] : state.params)
        if (t.device() != Device::CPU)
            throw std::runtime_error(
                std::string(what) + ": tensor '" + name + "' is on " + device_name(t.device()) +
                "; checkpoints of a run on the device are not supported yet (train on the cpu)");
    for (std::size_t k = 0; k < state.optimizers.size(); ++k)
        if (!state.optimizers[k])
            argument_error(what, "optimizer " + std::to_string(k) + " is null");
}

void save_checkpoint(const std::string& path, const TrainingState& state) {
    require_checkpointable(state, "save_checkpoint");
    ByteWriter w;
    w.bytes.assign(checkpoint_magic, checkpoint_magic + 8);
    w.u64(std::uint64_t(state.step));
    w.u32(sizeof(real));
    w.str(state.settings);
    w.u32(std::uint32_t(state.params.size()));
    for (const auto& [name, t] : state.params) {
        w.str(name);
        w.u32(std::uint32_t(t.rank()));
        for (int d : t.shape()) w.u32(std::uint32_t(d));
        w.reals(t.values().data(), t.numel());
    }
    w.u32(std::uint32_t(state.optimizers.size()));
    for (Optimizer* opt : state.optimizers) {
        w.str(opt->name());
        w.u64(std::uint64_t(opt->step_count));
        w.u32(std::uint32_t(opt->state().size()));
        w.u32(std::uint32_t(opt->state_per_param()));
        for (const auto& slots : opt->state())
            for (const auto& slot : slots) w.reals(slot.data(), slot.size());
    }
    w.u32(std::uint32_t(state.rngs.size()));
    for (const Rng* r : state.rngs) w.u64(r->state());
    w.u64(fnv1a(w.bytes.data(), w.bytes.size()));

    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) throw std::runtime_error("save_checkpoint: cannot write " + tmp);
        f.write(reinterpret_cast<const char*>(w.bytes.data()), std::streamsize(w.bytes.size()));
        f.flush();
        if (!f) {
            std::remove(tmp.c_str());
            throw std::runtime_error("save_checkpoint: writing " + tmp + " failed (disk full?)");
        }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw std::runtime_error("save_checkpoint: cannot rename " + tmp + " to " + path);
    }
}

void load_checkpoint(const std::string& path, TrainingState& state) {
    require_checkpointable(state, "load_checkpoint");
    std::remove((path + ".tmp").c_str());   // what a save killed midway left behind: never read
    const std::vector<unsigned char> file = read_file(path, "load_checkpoint");
    auto fail = [&](const std::string& what) -> void {
        throw std::runtime_error("load_checkpoint: " + path + ": " + what);
    };
    if (file.size() < 16 || !std::equal(checkpoint_magic, checkpoint_magic + 6, file.begin()))
        fail("not a checkpoint (bad magic)");
    if (!std::equal(checkpoint_magic, checkpoint_magic + 8, file.begin()))
        fail("unsupported version " + std::string(file.begin(), file.begin() + 8) +
             " (this build reads " + checkpoint_magic + ")");
    std::uint64_t stored_sum = 0;
    for (int i = 0; i < 8; ++i) stored_sum |= std::uint64_t(file[file.size() - 8 + i]) << (8 * i);
    if (fnv1a(file.data(), file.size() - 8) != stored_sum)
        fail("checksum mismatch: the file is damaged");

    // Parse everything into locals first; `state` changes only after every check has passed.
    ByteReader r{file, 8, path};
    const std::int64_t step = std::int64_t(r.u64());
    if (r.u32() != sizeof(real)) fail("saved with another element type (float vs double build)");
    const std::string settings = r.str();
    if (settings != state.settings)
        fail("saved by a run with settings '" + settings + "'; this run's are '" + state.settings +
             "'");
    const std::uint32_t n_tensors = r.u32();
    if (n_tensors != state.params.size())
        fail("has " + std::to_string(n_tensors) + " tensors, the model has " +
             std::to_string(state.params.size()));
    std::vector<std::vector<real>> values;
    for (const auto& [name, t] : state.params) {
        const std::string saved_name = r.str();
        if (saved_name != name)
            fail("tensor '" + saved_name + "' where the model has '" + name + "'");
        const std::uint32_t rank = r.u32();
        if (rank > 8) fail("tensor '" + name + "' has a corrupt rank");
        Shape shape(rank);
        for (int& d : shape) d = int(r.u32());
        if (shape != t.shape())
            fail("tensor '" + name + "' has shape " + shape_str(shape) + ", the model's is " +
                 shape_str(t.shape()));
        values.push_back(r.reals(t.numel()));
    }
    const std::uint32_t n_optimizers = r.u32();
    if (n_optimizers != state.optimizers.size())
        fail("has " + std::to_string(n_optimizers) + " optimizers, the run has " +
             std::to_string(state.optimizers.size()));
    std::vector<std::int64_t> opt_steps;
    std::vector<std::vector<std::vector<std::vector<real>>>> opt_states;   // [opt][param][slot]
    for (Optimizer* opt : state.optimizers) {
        const std::string opt_name = r.str();
        const std::string which = "optimizer " + std::to_string(opt_steps.size());
        if (opt_name != opt->name())
            fail(which + ": '" + opt_name + "' where the run has '" + opt->name() + "'");
        opt_steps.push_back(std::int64_t(r.u64()));
        const std::uint32_t n_params = r.u32(), slots = r.u32();
        if (n_params != 0 &&
            (n_params != opt->params().size() || int(slots) != opt->state_per_param()))
            fail(which + ": its state does not match this run's parameters");
        opt_states.emplace_back(n_params);
        for (std::uint32_t k = 0; k < n_params; ++k)
            for (std::uint32_t s = 0; s < slots; ++s)
                opt_states.back()[k].push_back(r.reals(opt->params()[k].numel()));
    }
    if (r.u32() != state.rngs.size()) fail("the number of random generators differs");
    std::vector<std::uint64_t> rng_states;
    for (std::size_t k = 0; k < state.rngs.size(); ++k) rng_states.push_back(r.u64());
    if (r.pos != file.size() - 8) fail("unexpected bytes before the checksum");

    for (std::size_t k = 0; k < values.size(); ++k)
        state.params[k].second.values() = std::move(values[k]);
    for (std::size_t k = 0; k < state.optimizers.size(); ++k) {
        state.optimizers[k]->state() = std::move(opt_states[k]);
        state.optimizers[k]->step_count = opt_steps[k];
    }
    for (std::size_t k = 0; k < state.rngs.size(); ++k) *state.rngs[k] = Rng(rng_states[k]);
    state.step = step;
}

// =============================================================================================
// Part 4: training at scale
// =============================================================================================
//
// At scale, compute, memory and the numbers' digits run out. This part counts the first two,
// adds batch norm and attention, and trades one budget for another: 16-bit numbers with loss
// scaling, and recomputing activations instead of keeping them.

// ---------------------------------------------------------------------------------------------
// 4.1 Counting what training costs: FLOPs and tensor memory
//
// FLOPs. [M, K]·[K, N] does M·N·K multiply-adds, 2·M·K·N FLOPs. Its backward does two more
// products of that size (dX = dZ·Wᵀ, dW = Xᵀ·dZ, §2.4), so a training step costs about three
// forward passes. Kernels add their work to one counter with count_flops.
//
// Memory. The peak is inside backward(), so the count follows each change: a TensorStorageWatch
// wraps each place that gives a node data or a gradient, a node's destructor subtracts what it
// held. Storage resized elsewhere is missed until reset_peak_tensor_bytes() recounts.
// ---------------------------------------------------------------------------------------------

static std::int64_t flops_counted = 0;

std::int64_t counted_flops() { return flops_counted; }
void reset_counted_flops() { flops_counted = 0; }
void count_flops(std::int64_t flops) { flops_counted += flops; }

// The ceiling that achieved FLOP/s are compared with (MFU): 12 independent chains of fused
// multiply-adds as wide as the widest vector (engine.h), acc = acc·m + c, enough in flight to
// cover the FMA latency on both pipes, and no memory traffic. The chains converge to c/(1 − m),
// so nothing overflows however long it runs.
double fma_chains(long iterations) {
    constexpr int chains = 12, lanes = fma_lanes;
    real acc[chains][lanes] = {};
    const real m = real(0.999), c = real(1e-3);
    for (long it = 0; it < iterations; ++it)
        for (int i = 0; i < chains; ++i) {
#pragma omp simd
            for (int j = 0; j < lanes; ++j) acc[i][j] = std::fma(acc[i][j], m, c);
        }
    double s = 0;
    for (auto& chain : acc)
        for (real v : chain) s += v;
    return s;   // used, so the loop is not optimized away
}

static std::int64_t bytes_now = 0, bytes_peak = 0;   // signed: a missed change cannot wrap around

static std::int64_t storage_bytes(const TensorNode& n) {   // host and device (Part 5)
    return std::int64_t((n.data.capacity() + n.grad.capacity()) * sizeof(real) +
                        n.cuda_data.bytes() + n.cuda_grad.bytes());
}

static void storage_changed(std::int64_t change) {
    bytes_now += change;
    bytes_peak = std::max(bytes_peak, bytes_now);
}

TensorStorageWatch::TensorStorageWatch(const TensorNode* node)
    : node_(node), bytes_before_(storage_bytes(*node)) {}

TensorStorageWatch::~TensorStorageWatch() {
    storage_changed(storage_bytes(*node_) - bytes_before_);
}

void tensor_storage_freed(const TensorNode& node) { storage_changed(-storage_bytes(node)); }

std::size_t current_tensor_bytes() { return std::size_t(std::max<std::int64_t>(bytes_now, 0)); }
std::size_t peak_tensor_bytes() { return std::size_t(std::max<std::int64_t>(bytes_peak, 0)); }

void reset_peak_tensor_bytes() { bytes_now = bytes_peak = std::int64_t(tensor_bytes()); }

// glibc maps blocks ≥ 128 KiB from the kernel and unmaps them on free: each step re-mapped and
// zeroed its activations (¼ of a GPT step, §6.2). Heap blocks to 32 MiB, and keep 256 MiB free.
#ifdef __GLIBC__
static bool keep_freed_memory() {
    return mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 256 << 20) == 1;
}
static const bool freed_memory_kept = keep_freed_memory();
#endif

// ---------------------------------------------------------------------------------------------
// 4.2 Batch normalization
//
// LayerNorm (§2.7) normalizes each example over its features; BatchNorm normalizes each feature
// over the batch. For x [N, C] and every column c:
//     μ_c = (1/N) Σ_n x_nc,   σ²_c = (1/N) Σ_n (x_nc − μ_c)²,   x̂_nc = (x_nc − μ_c)/√(σ²_c + ε),
//     y_nc = γ_c·x̂_nc + β_c
// With g = dL/dy, ĝ = g·γ_c and r_c = 1/√(σ²_c + ε), every sum running down a column:
//     dβ_c = Σ_n g_nc,   dγ_c = Σ_n g_nc·x̂_nc,
//     dx_nc = r_c·(ĝ_nc − mean_n ĝ − x̂_nc·mean_n(ĝ·x̂))
// The two means remove what only shifts or scales the column, which x̂ cannot see.
// Examples depend on each other: micro-batch gradient accumulation is not exact, and a batch of
// one gives x̂ = 0. Evaluation uses running averages (PyTorch's m = 0.1):
// running ← (1 − m)·running + m·batch, with the unbiased variance Σ(x − μ)²/(N − 1).
// ---------------------------------------------------------------------------------------------

Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, real eps) {
    if (x.rank() != 2)
        argument_error("batch_norm", "x must be [batch, features], got " + shape_str(x.shape()));
    const int N = x.dim(0), C = x.dim(1);
    if (N < 2)
        argument_error(
            "batch_norm",
            "training needs at least 2 examples per feature, got x " + shape_str(x.shape()) +
                " (with one example x = mean, so every output would be beta; use eval mode)");
    if (gamma.shape() != Shape{C} || beta.shape() != Shape{C})
        argument_error("batch_norm", "gamma and beta must have shape [" + std::to_string(C) +
                                         "] for x " + shape_str(x.shape()) + ", got " +
                                         shape_str(gamma.shape()) + " and " +
                                         shape_str(beta.shape()));
    if (!(eps >= 0)) argument_error("batch_norm", "eps must be >= 0, got " + to_string(eps));
    std::vector<real> xhat(x.numel()), rstd(C);   // kept for the backward
    Tensor out = Tensor::from_op(x.shape(), "batch_norm", {x, gamma, beta});
    const real *in = x.values().data(), *g = gamma.values().data(), *b = beta.values().data();
    real* o = out.values().data();
    for (int c = 0; c < C; ++c) {
        auto at = [C, c](int n) { return std::size_t(n) * C + c; };   // element (n, c)
        double mu = 0, var = 0;
        for (int n = 0; n < N; ++n) mu += in[at(n)];
        mu /= N;
        for (int n = 0; n < N; ++n) var += (in[at(n)] - mu) * (in[at(n)] - mu);
        var /= N;
        if (!(var + eps > 0))
            throw std::domain_error("batch_norm: feature " + std::to_string(c) +
                                    " is constant over the batch " +
                                    "and eps = 0, so x_hat = 0/0; use eps > 0");
        rstd[c] = real(1 / std::sqrt(var + eps));
        for (int n = 0; n < N; ++n) {
            xhat[at(n)] = real((in[at(n)] - mu) * rstd[c]);
            o[at(n)] = g[c] * xhat[at(n)] + b[c];
        }
    }
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *pg = gamma.node(), *pb = beta.node(), *po = out.node();
        po->backward = [px, pg, pb, po, N, C, xhat = std::move(xhat), rstd = std::move(rstd)] {
            const real* g = po->grad.data();
            for (int c = 0; c < C; ++c) {
                auto at = [C, c](int n) { return std::size_t(n) * C + c; };
                double sum_g = 0, sum_g_xhat = 0;   // Σ_n g, Σ_n g·x̂
                for (int n = 0; n < N; ++n) sum_g += g[at(n)], sum_g_xhat += g[at(n)] * xhat[at(n)];
                if (pb->requires_grad) grad_of(pb)[c] += real(sum_g);        // dβ
                if (pg->requires_grad) grad_of(pg)[c] += real(sum_g_xhat);   // dγ
                if (!px->requires_grad) continue;
                const double gain =
                    pg->data[c];   // ĝ = g·γ, so mean(ĝ) = γ·Σg/N, mean(ĝ·x̂) = γ·Σg·x̂/N
                const double mean_gh = gain * sum_g / N, mean_gh_xhat = gain * sum_g_xhat / N;
                real* gx = grad_of(px).data();
                for (int n = 0; n < N; ++n)
                    gx[at(n)] +=
                        real(rstd[c] * (g[at(n)] * gain - mean_gh - xhat[at(n)] * mean_gh_xhat));
            }
        };
    }
    return out;
}

namespace nn {

BatchNorm::BatchNorm(int features, real momentum_, real eps_)
    : gamma(Tensor::full({features}, 1)), beta(Tensor({features})), running_mean(features, real(0)),
      running_var(features, real(1)), momentum(momentum_), eps(eps_) {
    if (features <= 0)
        argument_error("nn::BatchNorm", "needs features > 0, got " + std::to_string(features));
    if (!(momentum >= 0 && momentum <= 1))
        argument_error("nn::BatchNorm", "momentum must be in [0, 1], got " + to_string(momentum));
    gamma.requires_grad_();
    beta.requires_grad_();
}

static int batch_norm_features(const Tensor& gamma, const Tensor& beta) {
    if (!gamma.defined() || !beta.defined() || gamma.rank() != 1 || beta.shape() != gamma.shape())
        argument_error("nn::BatchNorm",
                       "gamma and beta must both be [features]; got " +
                           (gamma.defined() ? shape_str(gamma.shape()) : "(empty)") + " and " +
                           (beta.defined() ? shape_str(beta.shape()) : "(empty)"));
    return gamma.dim(0);
}

BatchNorm::BatchNorm(Tensor gamma_, Tensor beta_, real momentum_, real eps_)
    : BatchNorm(batch_norm_features(gamma_, beta_), momentum_, eps_) {
    gamma = gamma_.requires_grad_();
    beta = beta_.requires_grad_();
}

Tensor BatchNorm::operator()(const Tensor& x) {
    const int C = gamma.dim(0);
    if (beta.shape() != gamma.shape() || int(running_mean.size()) != C ||
        int(running_var.size()) != C)
        argument_error("nn::BatchNorm",
                       "gamma " + shape_str(gamma.shape()) + ", beta " + shape_str(beta.shape()) +
                           ", running_mean [" + std::to_string(running_mean.size()) +
                           "] and running_var [" + std::to_string(running_var.size()) +
                           "] must all have one entry per feature");
    if (x.rank() != 2 || x.dim(1) != C)
        argument_error("nn::BatchNorm", "expected x [batch, " + std::to_string(C) + "], got " +
                                            shape_str(x.shape()));
    if (!training) {   // y = γ·(x − running mean)/√(running var + ε) + β, by plain ops
        std::vector<real> inv_std(C);
        for (int c = 0; c < C; ++c) inv_std[c] = real(1 / std::sqrt(double(running_var[c]) + eps));
        return (x - Tensor({C}, running_mean)) * Tensor({C}, inv_std) * gamma + beta;
    }
    Tensor y = batch_norm(x, gamma, beta, eps);   // refuses a batch of one before anything changes
    const int N = x.dim(0);
    const real* in = x.values().data();
    for (int c = 0; c < C; ++c) {   // the running statistics: numbers, not part of the graph
        double mu = 0, square = 0;
        for (int n = 0; n < N; ++n) mu += in[std::size_t(n) * C + c];
        mu /= N;
        for (int n = 0; n < N; ++n) {
            const double d = in[std::size_t(n) * C + c] - mu;
            square += d * d;
        }
        running_mean[c] = real((1 - momentum) * running_mean[c] + momentum * mu);
        running_var[c] =
            real((1 - momentum) * running_var[c] + momentum * square / (N - 1));   // unbiased
    }
    return y;
}

}   // namespace nn

// ---------------------------------------------------------------------------------------------
// 4.3 Attention: composed from ops, and fused with a hand-written backward
//
// Each query row q_i scores every key row k_j; a softmax turns the scores into weights; the
// output is the weighted average of the value rows:
//     S = s·Q·Kᵀ  (s = 1/√d)        P = softmax(S), row by row        O = P·V
//     [T, d]·[d, S] = [T, S]                                           [T, S]·[S, dv] = [T, dv]
// 1/√d keeps the scores' variance near 1 (a sum of d unit-variance terms has variance d), so the
// softmax does not saturate. Causal: query i may not see keys j > i; their scores get −1e9,
// whose exp is exactly 0.
//
// Composed from ops, the backward is the ops' own. Fused, it is written out, from dO:
//     1. dV = Pᵀ·dO                          O = P·V: matmul's rule, right factor
//     2. dP = dO·Vᵀ                          left factor
//     3. dS = P ∘ (dP − rowsum(dP ∘ P))      softmax's backward (§2.6): dxⱼ = pⱼ(gⱼ − Σᵢ gᵢpᵢ)
//     4. dQ = s·dS·K                         S = s·Q·Kᵀ, left factor
//     5. dK = s·dSᵀ·Q                        right factor
// With pairs = T·S (T(T + 1)/2 causal), dv = d: forward 4·pairs·d FLOPs, backward 8·pairs·d.
// Keeping each row's lse_i = log Σⱼ exp(S_ij) instead of P (T·S numbers) rebuilds
// P_ij = exp(S_ij − lse_i) by recomputing S (backward 10·pairs·d): FlashAttention's trade, as on
// a GPU memory is scarcer than arithmetic.
// ---------------------------------------------------------------------------------------------

Tensor causal_mask(int T) {
    if (T <= 0) argument_error("causal_mask", "needs T > 0, got " + std::to_string(T));
    Tensor mask({T, T});
    real* m = mask.values().data();
    for (int i = 0; i < T; ++i)
        for (int j = i + 1; j < T; ++j) m[std::size_t(i) * T + j] = real(-1e9);
    return mask;
}

// One attention call's checked sizes; a 2-D call is batch 1.
struct AttentionShape {
    int batch, T, S, d, dv;
    bool causal;
    int keys_of(int i) const { return causal ? i + 1 : S; }   // keys 0 .. keys_of(i) − 1
    std::int64_t pairs() const {                              // (query, key) pairs scored
        return std::int64_t(batch) * (causal ? std::int64_t(T) * (T + 1) / 2 : std::int64_t(T) * S);
    }
};

static AttentionShape check_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                      bool causal, const char* op) {
    const std::string shapes =
        "q " + shape_str(q.shape()) + ", k " + shape_str(k.shape()) + ", v " + shape_str(v.shape());
    const int r = q.rank();
    if ((r != 2 && r != 3) || k.rank() != r || v.rank() != r)
        argument_error(op, "needs q, k, v all [T, d] or all [B, T, d]; got " + shapes);
    if (r == 3 && (k.dim(0) != q.dim(0) || v.dim(0) != q.dim(0)))
        argument_error(op, "batch sizes differ: " + shapes);
    if (k.dim(-1) != q.dim(-1))
        argument_error(op, "q and k need the same feature size d: " + shapes);
    if (v.dim(-2) != k.dim(-2))
        argument_error(op, "k and v need the same number of rows: " + shapes);
    const AttentionShape a{
        r == 3 ? q.dim(0) : 1, q.dim(-2), k.dim(-2), q.dim(-1), v.dim(-1), causal};
    if (a.T == 0 || a.S == 0 || a.d == 0 || a.dv == 0) argument_error(op, "empty input: " + shapes);
    if (causal && a.T != a.S)
        argument_error(op, "causal attention needs as many queries as keys: " + shapes);
    return a;
}

Tensor attention_composed(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
    const AttentionShape a = check_attention(q, k, v, causal, "attention_composed");
    Tensor scores = matmul(q, transpose(k)) * real(1 / std::sqrt(double(a.d)));
    if (causal) scores = scores + causal_mask(a.T);
    return matmul(softmax(scores), v);
}

// Row i of P for one batch element: p[j] = softmax_j(s·q_i·k_j) over the keys query i may see.
// Returns the row's log-sum-exp (the maximum subtracted first, §2.6).
static double probability_row(const AttentionShape& a, int i, const real* Q, const real* K,
                              double scale, double* p) {
    const int keys = a.keys_of(i);
    double largest = -std::numeric_limits<double>::infinity();
    for (int j = 0; j < keys; ++j) {   // s_ij = s·q_i·k_j
        double dot = 0;
        for (int c = 0; c < a.d; ++c)
            dot += double(Q[std::size_t(i) * a.d + c]) * K[std::size_t(j) * a.d + c];
        p[j] = dot * scale;
        largest = std::max(largest, p[j]);
    }
    double total = 0;
    for (int j = 0; j < keys; ++j) p[j] = std::exp(p[j] - largest), total += p[j];
    for (int j = 0; j < keys; ++j) p[j] /= total;
    return largest + std::log(total);
}

// The five steps above, one batch element at a time; dS overwrites dP.
static void attention_backward(const AttentionShape& a, double scale, bool saved_p,
                               const Tensor& saved, TensorNode* pq, TensorNode* pk, TensorNode* pv,
                               const TensorNode* po) {
    const bool need_dv = pv->requires_grad, need_ds = pq->requires_grad || pk->requires_grad;
    const int T = a.T, S = a.S, d = a.d, dv = a.dv;
    std::vector<double> P(std::size_t(T) * S), dS(std::size_t(T) * S);
    const real* kept = saved.values().data();   // P [B, T, S], or lse [B, T]
    for (int b = 0; b < a.batch; ++b) {
        const real* Q = pq->data.data() + std::size_t(b) * T * d;
        const real* K = pk->data.data() + std::size_t(b) * S * d;
        const real* V = pv->data.data() + std::size_t(b) * S * dv;
        const real* dO = po->grad.data() + std::size_t(b) * T * dv;
        auto ij = [S](int i, int j) { return std::size_t(i) * S + j; };
        // 0. P: as saved, or rebuilt from the row's log-sum-exp: P_ij = exp(s·q_i·k_j − lse_i)
        for (int i = 0; i < T; ++i)
            for (int j = 0; j < a.keys_of(i); ++j) {
                if (saved_p) {
                    P[ij(i, j)] = kept[(std::size_t(b) * T + i) * S + j];
                    continue;
                }
                double dot = 0;
                for (int c = 0; c < d; ++c)
                    dot += double(Q[std::size_t(i) * d + c]) * K[std::size_t(j) * d + c];
                P[ij(i, j)] = std::exp(scale * dot - kept[std::size_t(b) * T + i]);
            }
        // 1. dV = Pᵀ·dO:  dv_j += Σ_i P_ij·dO_i
        if (need_dv) {
            real* dV = grad_of(pv).data() + std::size_t(b) * S * dv;
            for (int i = 0; i < T; ++i)
                for (int j = 0; j < a.keys_of(i); ++j)
                    for (int c = 0; c < dv; ++c)
                        dV[std::size_t(j) * dv + c] +=
                            real(P[ij(i, j)] * dO[std::size_t(i) * dv + c]);
        }
        if (!need_ds) continue;
        // 2. dP = dO·Vᵀ:  dP_ij = dO_i·v_j
        for (int i = 0; i < T; ++i)
            for (int j = 0; j < a.keys_of(i); ++j) {
                double dot = 0;
                for (int c = 0; c < dv; ++c)
                    dot += double(dO[std::size_t(i) * dv + c]) * V[std::size_t(j) * dv + c];
                dS[ij(i, j)] = dot;
            }
        // 3. dS = P ∘ (dP − rowsum(dP ∘ P)), overwriting dP
        for (int i = 0; i < T; ++i) {
            double row = 0;
            for (int j = 0; j < a.keys_of(i); ++j) row += dS[ij(i, j)] * P[ij(i, j)];
            for (int j = 0; j < a.keys_of(i); ++j)
                dS[ij(i, j)] = P[ij(i, j)] * (dS[ij(i, j)] - row);
        }
        // 4. dQ = s·dS·K:  dq_i += s·Σ_j dS_ij·k_j
        if (pq->requires_grad) {
            real* dQ = grad_of(pq).data() + std::size_t(b) * T * d;
            for (int i = 0; i < T; ++i)
                for (int c = 0; c < d; ++c) {
                    double sum = 0;
                    for (int j = 0; j < a.keys_of(i); ++j)
                        sum += dS[ij(i, j)] * K[std::size_t(j) * d + c];
                    dQ[std::size_t(i) * d + c] += real(scale * sum);
                }
        }
        // 5. dK = s·dSᵀ·Q:  dk_j += s·Σ_i dS_ij·q_i
        if (pk->requires_grad) {
            real* dK = grad_of(pk).data() + std::size_t(b) * S * d;
            for (int i = 0; i < T; ++i)
                for (int j = 0; j < a.keys_of(i); ++j)
                    for (int c = 0; c < d; ++c)
                        dK[std::size_t(j) * d + c] +=
                            real(scale * dS[ij(i, j)] * Q[std::size_t(i) * d + c]);
        }
    }
    const std::int64_t pairs = a.pairs();
    count_flops((saved_p ? 0 : 2 * pairs * d) + (need_dv ? 2 * pairs * dv : 0) +
                (need_ds ? 2 * pairs * dv : 0) + (pq->requires_grad ? 2 * pairs * d : 0) +
                (pk->requires_grad ? 2 * pairs * d : 0));
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                 AttentionSaves saves) {
    const AttentionShape a = check_attention(q, k, v, causal, "attention");
    const double scale = 1 / std::sqrt(double(a.d));
    Tensor out = Tensor::from_op(q.rank() == 3 ? Shape{a.batch, a.T, a.dv} : Shape{a.T, a.dv},
                                 "attention", {q, k, v});
    const bool save_p = saves == AttentionSaves::probabilities;
    Tensor saved;   // for the backward, besides Q, K, V: P [B, T, S], or lse [B, T]
    if (out.requires_grad()) saved = save_p ? Tensor({a.batch, a.T, a.S}) : Tensor({a.batch, a.T});
    std::vector<double> p(a.S);
    for (int b = 0; b < a.batch; ++b) {
        const real* Q = q.values().data() + std::size_t(b) * a.T * a.d;
        const real* K = k.values().data() + std::size_t(b) * a.S * a.d;
        const real* V = v.values().data() + std::size_t(b) * a.S * a.dv;
        real* O = out.values().data() + std::size_t(b) * a.T * a.dv;
        for (int i = 0; i < a.T; ++i) {
            const double lse = probability_row(a, i, Q, K, scale, p.data());
            for (int c = 0; c < a.dv; ++c) {   // o_i = Σ_j p_ij·v_j
                double o = 0;
                for (int j = 0; j < a.keys_of(i); ++j) o += p[j] * V[std::size_t(j) * a.dv + c];
                O[std::size_t(i) * a.dv + c] = real(o);
            }
            if (!saved.defined()) continue;
            if (save_p)
                std::copy_n(p.data(), a.keys_of(i),
                            saved.values().data() + (std::size_t(b) * a.T + i) * a.S);
            else saved.values()[std::size_t(b) * a.T + i] = real(lse);
        }
    }
    count_flops(2 * a.pairs() * a.d + 2 * a.pairs() * a.dv);   // S = Q·Kᵀ and O = P·V
    if (out.requires_grad()) {
        TensorNode *pq = q.node(), *pk = k.node(), *pv = v.node(), *po = out.node();
        po->backward = [a, scale, save_p, saved, pq, pk, pv, po] {
            attention_backward(a, scale, save_p, saved, pq, pk, pv, po);
        };
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// 4.4 Multi-head causal self-attention
//
// From x [T, D]: Q = x·Wq, K = x·Wk, V = x·Wv. H heads cut the D features into slices of D/H
// that attend on their own; Wo mixes their joined outputs:
//     out = concat(head_1, …, head_H)·Wo,     head_h = attention(Q_h, K_h, V_h)
// Every piece has its backward. The scores cost H·T²·(D/H) = T²·D, as one head of width D.
// ---------------------------------------------------------------------------------------------

Tensor multi_head_attention(const Tensor& x, const Tensor& Wq, const Tensor& Wk, const Tensor& Wv,
                            const Tensor& Wo, int heads, bool causal, AttentionKernel kernel) {
    const char* op = "multi_head_attention";
    if (x.rank() != 2 && x.rank() != 3)
        argument_error(op, "x must be [T, D] or [B, T, D], got " + shape_str(x.shape()));
    const int D = x.dim(-1);
    for (const Tensor* W : {&Wq, &Wk, &Wv, &Wo})
        if (W->shape() != Shape{D, D})
            argument_error(op, "every weight must be [" + std::to_string(D) + ", " +
                                   std::to_string(D) + "] for x " + shape_str(x.shape()) +
                                   ", got " + shape_str(W->shape()));
    if (heads <= 0 || D % heads != 0)
        argument_error(op, std::to_string(heads) + " heads do not divide the " + std::to_string(D) +
                               " features of x " + shape_str(x.shape()));
    const int width = D / heads;
    const Tensor q = matmul(x, Wq), k = matmul(x, Wk), v = matmul(x, Wv);
    std::vector<Tensor> outputs;
    for (int h = 0; h < heads; ++h) {
        const int from = h * width, to = from + width;   // this head's features
        const Tensor qh = slice(q, -1, from, to), kh = slice(k, -1, from, to),
                     vh = slice(v, -1, from, to);
        outputs.push_back(kernel == AttentionKernel::fused
                              ? attention(qh, kh, vh, causal)
                              : attention_composed(qh, kh, vh, causal));
    }
    return matmul(concat(outputs, -1), Wo);
}

// All heads at once (a GPT block, §6.2): B·H attentions of T×T on d = D/H features from one
// projection [q | k | v] [B, T, 3D]. Head h's queries are columns h·d … h·d + d − 1, its keys D
// further, its values 2D further; its output, columns h·d … of [B, T, D]. Per sequence and
// head, with [T, d] views Q, K, V (rows 3D apart):
//     forward:   S = Q·Kᵀ   P = softmax(s·S) over keys j ≤ i (0 above the diagonal)   O = P·V
//     backward:  dV = Pᵀ·dO   dP = dO·Vᵀ   dS = s·P ∘ (dP − rowsum(dP ∘ P))
//                dQ = dS·K    dK = dSᵀ·Q
// Each product is §2.4's kernel on strided views. It also multiplies the zeros above the
// diagonal: skipping them by blocks of rows re-packs the inputs per block, which cost more
// (10.5 ms a step, not 8.6). The counter gets the causal FLOPs (§4.1). Threads share the B·H
// pairs, one thread each: the same bits on any thread count. Oracle: §4.3's attention on slices.

// P = softmax(s·S) over each row's keys j ≤ i, in place; 0 for j > i.
static void causal_softmax_rows(real* S, int T, real scale) {
    for (int i = 0; i < T; ++i) {
        real* row = S + std::size_t(i) * T;
        const int keys = i + 1;
        real largest = row[0], total = 0;   // the maximum subtracted first (§2.6)
        for (int j = 1; j < keys; ++j) largest = std::max(largest, row[j]);
#pragma omp simd
        for (int j = 0; j < keys; ++j) row[j] = exp_by_reduction(scale * (row[j] - largest));
        for (int j = 0; j < keys; ++j) total += row[j];
        const real inverse = 1 / total;
#pragma omp simd
        for (int j = 0; j < keys; ++j) row[j] *= inverse;
        std::fill(row + keys, row + T, real(0));
    }
}

// dS = s·P ∘ (dP − rowsum(dP ∘ P)) in place: softmax's backward (§2.6), times the s of s·Q·Kᵀ.
static void softmax_backward_rows(const real* P, real* dP, int T, real scale) {
    for (int i = 0; i < T; ++i) {
        const real* p = P + std::size_t(i) * T;
        real* g = dP + std::size_t(i) * T;
        real row = 0;
        for (int j = 0; j <= i; ++j) row += g[j] * p[j];
#pragma omp simd
        for (int j = 0; j < T; ++j) g[j] = scale * p[j] * (g[j] - row);
    }
}

// One sequence and head: q is its Q (K, V: D, 2D further; rows 3D apart), P [T, T] is 0, o its
// output.
static void head_forward(const real* q, int T, int D, int d, real scale, real* P, real* o) {
    const int ld = 3 * D;
    multiply_blocks(T, T, d, row_major(q, ld), transposed(q + D, ld), P, T, Zeros::c_above);   // S
    causal_softmax_rows(P, T, scale);
    multiply_blocks(T, d, T, row_major(P, T), row_major(q + 2 * D, ld), o, D,
                    Zeros::a_above);   // O
}

// Its backward into dq (dK, dV: D, 2D further) from go, its dO; dS: [T, T] room.
static void head_backward(const real* q, const real* P, const real* go, int T, int D, int d,
                          real scale, real* dS, real* dq) {
    const int ld = 3 * D;
    const MatrixView Pt = transposed(P, T), dSt = transposed(dS, T);   // upper triangles
    multiply_blocks(T, d, T, Pt, row_major(go, D), dq + 2 * D, ld, Zeros::a_below);   // dV = Pᵀ·dO
    std::fill(dS, dS + std::size_t(T) * T, real(0));
    const MatrixView Vt = transposed(q + 2 * D, ld);
    multiply_blocks(T, T, d, row_major(go, D), Vt, dS, T, Zeros::c_above);   // dP = dO·Vᵀ
    softmax_backward_rows(P, dS, T, scale);
    multiply_blocks(T, d, T, row_major(dS, T), row_major(q + D, ld), dq, ld,
                    Zeros::a_above);                                               // dQ
    multiply_blocks(T, d, T, dSt, row_major(q, ld), dq + D, ld, Zeros::a_below);   // dK = dSᵀ·Q
}

Tensor causal_self_attention(const Tensor& qkv, int heads) {
    const char* op = "causal_self_attention";
    if ((qkv.rank() != 2 && qkv.rank() != 3) || qkv.dim(-1) % 3 != 0 || qkv.numel() == 0)
        argument_error(op,
                       "needs [q | k | v] of shape [B, T, 3D] or [T, 3D], none of them 0; got " +
                           shape_str(qkv.shape()));
    const int B = qkv.rank() == 3 ? qkv.dim(0) : 1, T = qkv.dim(-2), D = qkv.dim(-1) / 3;
    if (heads <= 0 || D % heads != 0)
        argument_error(op, std::to_string(heads) + " heads do not divide the width D = " +
                               std::to_string(D) + " of [q | k | v] " + shape_str(qkv.shape()));
    if (on_cuda(qkv)) return causal_self_attention_on_device(qkv, heads);   // device: Part 5
    const int d = D / heads, units = B * heads;   // units: (sequence, head) pairs
    const real scale = real(1 / std::sqrt(double(d)));
    Tensor out = Tensor::from_op(qkv.rank() == 3 ? Shape{B, T, D} : Shape{T, D}, op, {qkv});
    Tensor saved_p({B, heads, T, T});   // P; backward reads it
    const real* x = qkv.values().data();
    real *o = out.values().data(), *P = saved_p.values().data();
    const double work = double(units) * T * T * d;   // tiny: not worth waking threads
#pragma omp parallel for if (work > 1e5)
    for (int u = 0; u < units; ++u) {
        const int b = u / heads, h = u % heads;
        head_forward(x + std::size_t(b) * T * 3 * D + h * d, T, D, d, scale,
                     P + std::size_t(u) * T * T, o + std::size_t(b) * T * D + h * d);
    }
    const std::int64_t pairs = std::int64_t(units) * T * (T + 1) / 2;
    count_flops(4 * pairs * d);   // S and O on the causal pairs, 2·pairs·d each
    if (!out.requires_grad()) return out;
    TensorNode *px = qkv.node(), *po = out.node();
    po->backward = [px, po, saved_p, T, D, heads, d, units, scale, pairs, work] {
        real* dx = grad_of(px).data();
        const real *x = px->data.data(), *dO = po->grad.data(), *P = saved_p.values().data();
#pragma omp parallel if (work > 1e5)
        {
            std::vector<real> dS(std::size_t(T) * T);
#pragma omp for
            for (int u = 0; u < units; ++u) {
                const int b = u / heads, h = u % heads;
                const std::size_t at = std::size_t(b) * T * 3 * D + h * d;
                head_backward(x + at, P + std::size_t(u) * T * T,
                              dO + std::size_t(b) * T * D + h * d, T, D, d, scale, dS.data(),
                              dx + at);
            }
        }
        count_flops(8 * pairs * d);   // dV, dP, dQ, dK: 2·pairs·d each
    };
    return out;
}

// ---------------------------------------------------------------------------------------------
// 4.5 Sixteen-bit floating point, by hand
//
// float: 1 sign, 8 exponent bits (bias 127), 23 fraction bits: (−1)^sign · 1.fraction ·
// 2^(exponent − 127); exponent 0 holds ±0 and subnormals 0.fraction · 2^−126, 255 ±inf and NaN.
//     float16: 5 exponent bits (bias 15), 10 fraction bits. Largest 65504, smallest normal
//         2^−14 ≈ 6.10e-5, smallest subnormal 2^−24 ≈ 5.96e-8; spacing near 1: 2^−10 ≈ 0.001.
//     bfloat16: a float's top half: float's range, 7 fraction bits, spacing near 1: 2^−7 ≈ 0.008.
// Converting rounds to nearest, ties to even (long sums do not drift); overflow gives ±inf.
// ---------------------------------------------------------------------------------------------

static std::uint32_t bits_of(float x) {
    std::uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    return bits;
}

static float float_from_bits(std::uint32_t bits) {
    float x;
    std::memcpy(&x, &bits, sizeof x);
    return x;
}

// value / 2^shift rounded to the nearest integer, ties to the even one (0 < shift < 32).
static std::uint32_t shift_right_rounding_to_even(std::uint32_t value, int shift) {
    const std::uint32_t kept = value >> shift, rest = value & ((1u << shift) - 1),
                        half = 1u << (shift - 1);
    return kept + ((rest > half || (rest == half && (kept & 1))) ? 1 : 0);
}

std::uint16_t float_to_half(float x) {
    const std::uint32_t f = bits_of(x);
    const std::uint32_t sign = (f >> 16) & 0x8000;   // bit 31 moves to bit 15
    const int exponent = int((f >> 23) & 0xff);      // biased by 127
    const std::uint32_t fraction = f & 0x7fffff;     // 23 bits
    if (exponent == 255) {                           // inf, or NaN: keep what fits of its payload,
        if (fraction == 0) return std::uint16_t(sign | 0x7c00);   // and keep it a NaN
        const std::uint32_t payload = fraction >> 13;
        return std::uint16_t(sign | 0x7c00 | (payload ? payload : 0x200));
    }
    const int half_exponent = exponent - 127 + 15;
    if (half_exponent >= 31) return std::uint16_t(sign | 0x7c00);   // |x| >= 2^16: overflow to inf
    if (half_exponent >= 1)   // normal: drop 13 of the 23 fraction bits, rounding. A carry out of
                              // the fraction bumps the exponent, and past 65504 gives 0x7c00 = inf.
        return std::uint16_t(
            sign | shift_right_rounding_to_even(std::uint32_t(half_exponent) << 23 | fraction, 13));
    // Subnormal or zero: count in units of the smallest subnormal, 2^−24. With the implicit 1,
    // |x| = (2^23 + fraction)·2^(exponent − 150) = (2^23 + fraction) / 2^(126 − exponent) units.
    if (exponent < 102) return std::uint16_t(sign);   // |x| < 2^−25, half a unit: rounds to ±0
    return std::uint16_t(sign | shift_right_rounding_to_even(0x800000 | fraction, 126 - exponent));
}

float half_to_float(std::uint16_t h) {
    const std::uint32_t sign = std::uint32_t(h & 0x8000) << 16;
    const int exponent = (h >> 10) & 0x1f;
    const std::uint32_t fraction = h & 0x3ff;
    if (exponent == 31) return float_from_bits(sign | 0x7f800000 | fraction << 13);   // inf, NaN
    if (exponent != 0)   // normal: rebias the exponent, widen the fraction
        return float_from_bits(sign | std::uint32_t(exponent - 15 + 127) << 23 | fraction << 13);
    const float magnitude = std::ldexp(float(fraction), -24);   // ±0 and subnormals: fraction·2^−24
    return sign ? -magnitude : magnitude;
}

std::uint16_t float_to_bfloat16(float x) {
    const std::uint32_t f = bits_of(x);
    if ((f & 0x7fffffff) > 0x7f800000) {   // NaN: keep its top half, and keep it a NaN
        const std::uint32_t top = f >> 16;
        return std::uint16_t((top & 0x7f) ? top : top | 0x40);
    }
    // Drop the low 16 bits, rounding; a carry runs into the exponent, and past the largest
    // finite value gives 0x7f80 = inf. Subnormals need no special case: same exponent as float.
    return std::uint16_t(shift_right_rounding_to_even(f, 16));
}

float bfloat16_to_float(std::uint16_t b) { return float_from_bits(std::uint32_t(b) << 16); }

const char* precision_name(Precision p) {
    switch (p) {
    case Precision::fp16:
        return "fp16";
    case Precision::bf16:
        return "bf16";
    case Precision::fp32:
        break;
    }
    return "fp32";
}

float round_to_precision(float x, Precision p) {
    switch (p) {
    case Precision::fp16:
        return half_to_float(float_to_half(x));
    case Precision::bf16:
        return bfloat16_to_float(float_to_bfloat16(x));
    case Precision::fp32:
        break;
    }
    return x;
}

// ---------------------------------------------------------------------------------------------
// 4.6 Mixed precision: casts, low-precision products, loss scaling
//
// Weights and optimizer state stay fp32; the passes run in 16 bits. What goes wrong, and the fix:
//   - Long sums lose small terms (float16: 2048 + 1 = 2048): tensor cores accumulate in fp32.
//   - Gradients below 2^−25 become 0. Scaling the loss by S scales every gradient by S (the
//     backward is linear): S = 65536 makes 1e-9 a normal 6.55e-5; unscale in fp32 before the step.
//   - Past 65504 gradients overflow to inf. Dynamic scaling: skip such a step and halve S; double
//     S after N good steps (PyTorch: S = 65536, N = 2000). bfloat16 needs no scaling.
//   - In float16, 1 + 1e-4 = 1: updates vanish, so master weights stay fp32.
// cast() rounds forward; backward it passes the gradient straight through (the rounding's true
// derivative is 0 almost everywhere) and rounds it to the same format.
// ---------------------------------------------------------------------------------------------

Tensor cast(const Tensor& x, Precision p) {
    Tensor out = Tensor::from_op(x.shape(), "cast", {x});
    const real* in = x.values().data();
    real* o = out.values().data();
    for (std::size_t i = 0; i < x.numel(); ++i) o[i] = real(round_to_precision(float(in[i]), p));
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *po = out.node();
        po->backward = [px, po, p] {   // dx = round_p(dy): straight through, stored in format p
            std::vector<real>& gx = grad_of(px);
            for (std::size_t i = 0; i < gx.size(); ++i)
                gx[i] += real(round_to_precision(float(po->grad[i]), p));
        };
    }
    return out;
}

// The product of two 16-bit values is exact in float (11 + 11 = 22 significant bits fit in 24),
// so the only roundings are the inputs' and the accumulator's.
Tensor matmul_in_precision(const Tensor& a, const Tensor& b, Precision inputs,
                           Precision accumulator) {
    if (a.rank() != 2 || b.rank() != 2 || a.dim(1) != b.dim(0))
        argument_error("matmul_in_precision", "needs [M, K]·[K, N], got " + shape_str(a.shape()) +
                                                  " · " + shape_str(b.shape()));
    const int M = a.dim(0), K = a.dim(1), N = b.dim(1);
    std::vector<float> A(a.numel()), B(b.numel());
    const real *pa = a.values().data(), *pb = b.values().data();
    for (std::size_t i = 0; i < A.size(); ++i) A[i] = round_to_precision(float(pa[i]), inputs);
    for (std::size_t i = 0; i < B.size(); ++i) B[i] = round_to_precision(float(pb[i]), inputs);
    Tensor out({M, N});
    real* o = out.values().data();
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float sum = 0;
            for (int k = 0; k < K; ++k)
                sum = round_to_precision(
                    sum + A[std::size_t(i) * K + k] * B[std::size_t(k) * N + j], accumulator);
            o[std::size_t(i) * N + j] = real(sum);
        }
    count_flops(2 * std::int64_t(M) * K * N);
    return out;
}

DynamicLossScaler::DynamicLossScaler(double initial_scale, int growth_interval,
                                     double growth_factor, double backoff_factor)
    : scale_(initial_scale), growth_factor_(growth_factor), backoff_factor_(backoff_factor),
      growth_interval_(growth_interval) {
    if (!(initial_scale > 0) || growth_interval < 1 || !(growth_factor > 1) ||
        !(backoff_factor > 0 && backoff_factor < 1))
        argument_error("DynamicLossScaler",
                       "needs initial_scale > 0, growth_interval >= 1, growth_factor > 1 and "
                       "0 < backoff_factor < 1; got " +
                           to_string(initial_scale) + ", " + std::to_string(growth_interval) +
                           ", " + to_string(growth_factor) + ", " + to_string(backoff_factor));
}

Tensor DynamicLossScaler::scale_loss(const Tensor& loss) const { return loss * real(scale_); }

bool DynamicLossScaler::unscale_gradients(const std::vector<Tensor>& params) const {
    for (const Tensor& p : params)
        for (real g : p.grad())
            if (!std::isfinite(g)) return false;   // overflowed: leave them, the step is skipped
    for (const Tensor& p : params)
        for (real& g : p.grad()) g = real(g / scale_);
    return true;
}

void DynamicLossScaler::update(bool gradients_were_finite) {
    if (!gradients_were_finite) {
        scale_ *= backoff_factor_;
        good_in_a_row_ = 0;
        ++skipped_;
        return;
    }
    if (++good_in_a_row_ == growth_interval_) {
        scale_ *= growth_factor_;
        good_in_a_row_ = 0;
    }
}

// ---------------------------------------------------------------------------------------------
// 4.7 Activation checkpointing: recompute instead of store
//
// Activations are most of a deep network's memory. A checkpointed segment keeps only its input:
// forward, it runs and lets its graph go; backward, it runs again from the input and
// backpropagates through the new graph. Cost: one more forward pass (4 per step, not 3); √n
// segments of √n layers hold about 2√n layers' activations, not n. Both runs must agree (no
// fresh dropout mask).
// ---------------------------------------------------------------------------------------------

Tensor activation_checkpoint(const Segment& segment, const Tensor& x,
                             const std::vector<Tensor>& params) {
    for (std::size_t k = 0; k < params.size(); ++k)
        if (!params[k].defined() || !params[k].requires_grad())
            argument_error("activation_checkpoint",
                           "parameter " + std::to_string(k) + " does not require grad");
    std::vector<Tensor> inputs = {x};
    inputs.insert(inputs.end(), params.begin(), params.end());
    Tensor out;
    {
        const Tensor first_run = segment(x.detach());   // its graph dies at the end of this block
        out = Tensor::from_op(first_run.shape(), "activation_checkpoint", inputs);
        std::copy_n(first_run.values().data(), first_run.numel(), out.values().data());
    }
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *po = out.node();
        po->backward = [segment, px, po] {
            Tensor input(px->shape, px->data);   // run the segment again, recording its graph
            if (px->requires_grad) input.requires_grad_();
            const Tensor again = segment(input);
            if (again.requires_grad()) again.backward(Tensor(po->shape, po->grad));
            if (!px->requires_grad || input.grad().empty()) return;   // (empty: y ignores x)
            std::vector<real>& gx = grad_of(px);
            const real* g = input.grad().data();
            for (std::size_t i = 0; i < gx.size(); ++i) gx[i] += g[i];
        };
    }
    return out;
}

// =============================================================================================
// Part 5: tensors on the GPU
// =============================================================================================
//
// A tensor can keep its numbers in device memory, where the ops of Part 2 run the CUDA kernels
// of kernels.cu; the training loop is the same on either device:
//
//     model.to(Device::CUDA);                    // the parameters move, in place
//     const Tensor x = batch.to(Device::CUDA);   // a copy of the batch on the device
//     ... the same loop: forward, cross_entropy, backward, clip_grad_norm, AdamW, loss.item()
//
// A CUDA tensor's node keeps its numbers in cuda_data and cuda_grad; the graph and backward() do
// not change. An op with a kernel begins `if (on_cuda(inputs)) return op_on_device(...)`.
// Mixing devices in one op is an error, not a silent (slow) copy. The kernels compute in fp32.
// values() and grad() of a CUDA tensor throw; .to(Device::CPU) gives a copy to read.
// Without a GPU, "the device" is cuda_emu.h: the same kernels, run by the CPU.

// ---------------------------------------------------------------------------------------------
// 5.1 Where a tensor lives: to(), move_to(), device memory
//
// Host-device copies cross the slow PCIe bus and wait for the GPU: a training loop copies the
// batch in and the loss out, nothing else.
// ---------------------------------------------------------------------------------------------

const char* device_name(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }

static DeviceBuffer<float> device_zeros(std::size_t n) {
    DeviceBuffer<float> d(n);
    cuda_zero(d.data(), d.bytes());
    return d;
}

static DeviceBuffer<float> to_device(const std::vector<real>& host) {
    const std::vector<float> f(host.begin(), host.end());   // the double build rounds here
    DeviceBuffer<float> d(f.size());
    cuda_copy_to_device(d.data(), f.data(), d.bytes());
    return d;
}

std::vector<real> host_values(const DeviceBuffer<float>& numbers) {
    std::vector<float> f(numbers.size());
    cuda_copy_to_host(f.data(), numbers.data(), numbers.bytes());
    return std::vector<real>(f.begin(), f.end());
}

static float* device_data(const Tensor& t) { return t.node()->cuda_data.data(); }

// On the GPU no host memory is touched: cudaMalloc, then cudaMemset.
Tensor Tensor::zeros(Shape shape, Device device) {
    if (device == Device::CPU) return Tensor(std::move(shape));
    for (int d : shape)
        if (d < 0) argument_error("Tensor::zeros", "negative size in shape " + shape_str(shape));
    Tensor t;
    t.node_ = std::make_shared<TensorNode>();
    const TensorStorageWatch watch(t.node_.get());   // §4.1
    t.node_->device = Device::CUDA;
    t.node_->cuda_data = device_zeros(::numel(shape));
    t.node_->shape = std::move(shape);
    return t;
}

// A copy on d: a new leaf, detached from the graph, that does not require grad.
Tensor Tensor::to(Device d) const {
    if (device() == Device::CUDA &&
        d == Device::CUDA) {   // device to device: no trip through the host
        Tensor out = zeros(shape(), d);
        cuda_copy_on_device(device_data(out), device_data(*this), node_->cuda_data.bytes());
        return out;
    }
    Tensor out(shape(), device() == Device::CPU ? node_->data : host_values(node_->cuda_data));
    return out.move_to(d);
}

// A leaf's storage changes device; the node, and so every handle to it, stays the same.
Tensor& Tensor::move_to(Device d) {
    if (!checked("move_to()").parents.empty())
        argument_error("move_to", "only a leaf tensor moves in place; this one was computed by '" +
                                      std::string(op()) + "': use .to(...) for a copy");
    if (d == device()) return *this;
    TensorNode& n = *node_;
    const TensorStorageWatch watch(&n);   // §4.1
    if (d == Device::CUDA) {
        n.cuda_data = to_device(n.data);
        if (!n.grad.empty()) n.cuda_grad = to_device(n.grad);
        n.data = std::vector<real>();   // freed (assigning {} would keep the capacity)
        n.grad = std::vector<real>();
    } else {
        n.data = host_values(n.cuda_data);
        if (!n.cuda_grad.empty()) n.grad = host_values(n.cuda_grad);
        n.cuda_data = DeviceBuffer<float>();   // freed
        n.cuda_grad = DeviceBuffer<float>();
    }
    n.device = d;
    return *this;
}

const std::shared_ptr<TensorNode>& Tensor::on_cpu(const char* what) const {
    if (checked(what).device == Device::CPU) return node_;
    throw std::invalid_argument(std::string(what) + ": this tensor is on " + device_name(device()) +
                                ", in device memory; copy it to the host with .to(Device::CPU)");
}

namespace nn {

void Linear::to(Device device) {
    W.move_to(device);
    if (b.defined()) b.move_to(device);
}

void MLP::to(Device device) {
    for (Linear& layer : layers) layer.to(device);
}

void GPT::to(Device device) {
    for (Tensor p : parameters()) p.move_to(device);   // a handle: the node itself moves
}

}   // namespace nn

// ---------------------------------------------------------------------------------------------
// 5.2 The ops on the device, forward and backward
//
// Each op checks shapes, launches the forward kernel and leaves a closure that launches the
// backward kernels. The formulas are those of Part 2.
// ---------------------------------------------------------------------------------------------

// A node's device gradient: zeros, made on the first write (grad_of, §2.1).
static float* grad_on_device(TensorNode* n) {
    if (n->cuda_grad.size() != n->cuda_data.size()) {
        const TensorStorageWatch watch(n);   // §4.1
        n->cuda_grad = device_zeros(n->cuda_data.size());
    }
    return n->cuda_grad.data();
}

// into += g: the add kernel in place (each thread touches only its own element).
static void accumulate(float* into, const float* g, int n) {
    cuda_add_forward(into, g, into, n, n);
}

void clear_grad_on_device(TensorNode* n) { cuda_zero(grad_on_device(n), n->cuda_grad.bytes()); }

void add_to_grad_on_device(TensorNode* n, const Tensor& g) {
    accumulate(grad_on_device(n), device_data(g), int(g.numel()));
}

// y = f(x) by one kernel; dx += dy·f'(x) by its partner, which reads x and y (unary(), §2.3).
Tensor unary_on_device(const Tensor& x, const char* op, DeviceForward f, DeviceBackward df) {
    Tensor out = Tensor::from_op(x.shape(), op, {x}, Device::CUDA);
    const int n = int(x.numel());
    f(device_data(x), device_data(out), n);
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *po = out.node();
        po->backward = [=] {
            df(px->cuda_data.data(), po->cuda_data.data(), po->cuda_grad.data(), grad_on_device(px),
               n);
        };
    }
    return out;
}

// a + b of one shape, or b whose shape ends a's, repeated over a's leading axes: a bias [N] on
// every row of [..., N], wpe [T, D] on each sequence of [B, T, D]. The kernel reads b[i % nb].
// Backward (§2.2): da += g; db += g, or db += Σ over the repeats of g.
Tensor add_on_device(const Tensor& a, const Tensor& b) {
    if (a.numel() < b.numel()) return add_on_device(b, a);   // + commutes: the row goes second
    const Shape &sa = a.shape(), &sb = b.shape();
    if (!(sb.size() <= sa.size() && std::equal(sb.rbegin(), sb.rend(), sa.rbegin())))
        argument_error("+", "on cuda, adds tensors of one shape, or b whose shape ends a's ([N] to "
                            "every row of [..., N]); got " +
                                shape_str(a.shape()) + " and " + shape_str(b.shape()));
    Tensor out = Tensor::from_op(a.shape(), "+", {a, b}, Device::CUDA);
    const int n = int(a.numel()), nb = int(b.numel());
    cuda_add_forward(device_data(a), device_data(b), device_data(out), n, nb);
    if (out.requires_grad()) {
        TensorNode *pa = a.node(), *pb = b.node(), *po = out.node();
        po->backward = [=] {
            const float* g = po->cuda_grad.data();
            if (pa->requires_grad) accumulate(grad_on_device(pa), g, n);
            if (pb->requires_grad && nb == n) accumulate(grad_on_device(pb), g, n);
            if (pb->requires_grad && nb != n) cuda_bias_grad(g, grad_on_device(pb), n / nb, nb);
        };
    }
    return out;
}

// Z = X·W for X [M, K] or [B, M, K] (B·M rows), W [K, N] (the batched W of §2.4 stays on the
// CPU). Forward: matmul_v3, the fastest of kernels.cu §2. Backward: dX += dZ·Wᵀ, dW += Xᵀ·dZ.
Tensor matmul_on_device(const Tensor& a, const Tensor& b) {
    if ((a.rank() != 2 && a.rank() != 3) || b.rank() != 2 || a.dim(-1) != b.dim(0))
        argument_error("matmul", "on cuda, multiplies [M,K]·[K,N] or [B,M,K]·[K,N] only; got " +
                                     shape_str(a.shape()) + " · " + shape_str(b.shape()));
    const int M = a.rank() == 3 ? a.dim(0) * a.dim(1) : a.dim(0), K = a.dim(-1), N = b.dim(1);
    Shape shape = a.shape();
    shape.back() = N;
    Tensor out = Tensor::from_op(shape, "matmul", {a, b}, Device::CUDA);
    cuda_matmul_v3(device_data(a), device_data(b), device_data(out), M, K, N);
    const std::int64_t flops = 2 * std::int64_t(M) * K * N;
    count_flops(flops);   // §4.1
    if (out.requires_grad()) {
        TensorNode *pa = a.node(), *pb = b.node(), *po = out.node();
        po->backward = [=] {
            const float* dZ = po->cuda_grad.data();
            if (pa->requires_grad) {
                cuda_matmul_backward_dx(dZ, pb->cuda_data.data(), grad_on_device(pa), M, K, N);
                count_flops(flops);
            }
            if (pb->requires_grad) {
                cuda_matmul_backward_dw(pa->cuda_data.data(), dZ, grad_on_device(pb), M, K, N);
                count_flops(flops);
            }
        };
    }
    return out;
}

// x·W + b: no fused kernel, so the product, then the bias add (db = Σ_rows dY).
Tensor linear_on_device(const Tensor& x, const Tensor& W, const Tensor& b) {
    check_devices("linear", {x, W, b}, Device::CUDA);
    if (!((x.rank() == 2 || x.rank() == 3) && W.rank() == 2 && b.rank() == 1 &&
          x.dim(-1) == W.dim(0) && b.dim(0) == W.dim(1)))
        argument_error("linear", "on cuda, needs x [M, K] or [B, M, K], W [K, N] and b [N]; got " +
                                     shape_str(x.shape()) + ", " + shape_str(W.shape()) + ", " +
                                     shape_str(b.shape()));
    return add_on_device(matmul_on_device(x, W), b);
}

// Same numbers, another shape (§2.5): a copy; backward dx += g.
Tensor reshape_on_device(const Tensor& x, const Shape& shape) {
    Tensor out = Tensor::from_op(shape, "reshape", {x}, Device::CUDA);
    const int n = int(x.numel());
    cuda_copy_on_device(device_data(out), device_data(x), out.node()->cuda_data.bytes());
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *po = out.node();
        po->backward = [=] { accumulate(grad_on_device(px), po->cuda_grad.data(), n); };
    }
    return out;
}

// The last two axes swapped (§2.5), by kernels.cu §11; backward dx += gᵀ.
Tensor transpose_on_device(const Tensor& x) {
    Shape shape = x.shape();
    std::swap(shape[shape.size() - 1], shape[shape.size() - 2]);
    const int R = x.dim(-2), C = x.dim(-1), batch = R != 0 && C != 0 ? int(x.numel() / (R * C)) : 0;
    Tensor out = Tensor::from_op(shape, "transpose", {x}, Device::CUDA);
    cuda_transpose_forward(device_data(x), device_data(out), batch, R, C);
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *po = out.node();
        po->backward = [=] {
            cuda_transpose_backward(po->cuda_grad.data(), grad_on_device(px), batch, R, C);
        };
    }
    return out;
}

// Ids (or labels) on the device, kept alive by the backward that reads them.
static std::shared_ptr<DeviceBuffer<int>> ints_on_device(const std::vector<int>& ids) {
    const auto d = std::make_shared<DeviceBuffer<int>>(ids.size());
    cuda_copy_to_device(d->data(), ids.data(), d->bytes());
    return d;
}

// out[k] = table[ids[k]] (§2.7, kernels.cu §10); backward: the scatter-add, by atomics.
Tensor embedding_on_device(const Tensor& table, const std::vector<int>& ids) {
    const int N = int(ids.size()), D = table.dim(1);
    Tensor out = Tensor::from_op({N, D}, "embedding", {table}, Device::CUDA);
    const auto y = ints_on_device(ids);
    cuda_embedding_forward(device_data(table), y->data(), device_data(out), N, D);
    if (out.requires_grad()) {
        TensorNode *pt = table.node(), *po = out.node();
        po->backward = [=] {
            cuda_embedding_backward(po->cuda_grad.data(), y->data(), grad_on_device(pt), N, D);
        };
    }
    return out;
}

// A gradient the kernel must write but nobody needs goes to scratch memory.
static float* grad_or_scratch(TensorNode* n, DeviceBuffer<float>& scratch) {
    if (n->requires_grad) return grad_on_device(n);
    scratch = DeviceBuffer<float>(n->cuda_data.size());
    return scratch.data();
}

// layer_norm (§2.7) by kernels.cu §5, keeping μ and r per row. ε > 0: a constant row is then
// finite (the CPU names the row when ε = 0; the kernel cannot).
Tensor layer_norm_on_device(const Tensor& x, const Tensor& gain, const Tensor& bias, real eps) {
    check_devices("layer_norm", {x, gain, bias}, Device::CUDA);
    if (!(eps > 0)) argument_error("layer_norm", "on cuda, needs eps > 0, got " + to_string(eps));
    const int D = x.dim(-1), rows = int(x.numel() / D);
    Tensor out = Tensor::from_op(x.shape(), "layer_norm", {x, gain, bias}, Device::CUDA);
    const auto stats = std::make_shared<DeviceBuffer<float>>(2 * std::size_t(rows));   // μ, r
    cuda_layer_norm_forward(device_data(x), device_data(gain), device_data(bias), device_data(out),
                            stats->data(), stats->data() + rows, rows, D, float(eps));
    if (out.requires_grad()) {
        TensorNode *px = x.node(), *pg = gain.node(), *pb = bias.node(), *po = out.node();
        po->backward = [=] {
            DeviceBuffer<float> scratch[3];
            cuda_layer_norm_backward(
                px->cuda_data.data(), pg->cuda_data.data(), stats->data(), stats->data() + rows,
                po->cuda_grad.data(), grad_or_scratch(px, scratch[0]),
                grad_or_scratch(pg, scratch[1]), grad_or_scratch(pb, scratch[2]), rows, D);
        };
    }
    return out;
}

// causal_self_attention (§4.4) by kernels.cu §13: qkv read in place, each row's log-sum-exp kept
// instead of P; the backward rebuilds P from it. FLOPs counted as on the CPU.
Tensor causal_self_attention_on_device(const Tensor& qkv, int heads) {
    const int B = qkv.rank() == 3 ? qkv.dim(0) : 1, T = qkv.dim(-2), D = qkv.dim(-1) / 3;
    const int d = D / heads;
    if (d > 64)
        argument_error("causal_self_attention",
                       "on cuda, heads of at most 64 features; got D/H = " + std::to_string(d) +
                           " for " + shape_str(qkv.shape()));
    Tensor out = Tensor::from_op(qkv.rank() == 3 ? Shape{B, T, D} : Shape{T, D},
                                 "causal_self_attention", {qkv}, Device::CUDA);
    const auto lse = std::make_shared<DeviceBuffer<float>>(std::size_t(B) * heads * T);
    cuda_flash_attention_forward(device_data(qkv), device_data(out), lse->data(), B, T, D, heads);
    const std::int64_t pairs = std::int64_t(B) * heads * T * (T + 1) / 2;
    count_flops(4 * pairs * d);
    if (out.requires_grad()) {
        TensorNode *px = qkv.node(), *po = out.node();
        po->backward = [=] {
            cuda_flash_attention_backward(px->cuda_data.data(), po->cuda_data.data(), lse->data(),
                                          po->cuda_grad.data(), grad_on_device(px), B, T, D, heads);
            count_flops(8 * pairs * d);
        };
    }
    return out;
}

// The fused softmax + cross-entropy of §2.6, by kernels.cu §4. The forward keeps p = softmax(z)
// on the device for the backward, dz += g·(p − onehot)/B. The labels travel with every batch.
Tensor cross_entropy_on_device(const Tensor& logits, const std::vector<int>& labels,
                               real label_smoothing) {
    if (label_smoothing != 0)
        argument_error("cross_entropy",
                       "label smoothing has no CUDA kernel (the fused kernel's target is one-hot); "
                       "use label_smoothing = 0 on cuda, or move the logits with .to(Device::CPU)");
    const int B = logits.dim(0), C = logits.dim(1);
    Tensor out = Tensor::from_op({1}, "cross_entropy", {logits}, Device::CUDA);
    const Tensor probs =
        Tensor::zeros({B, C}, Device::CUDA);   // a live tensor: tensor_bytes sees it
    const auto y = ints_on_device(labels);
    cuda_softmax_cross_entropy_forward(device_data(logits), y->data(), device_data(probs),
                                       device_data(out), B, C);
    if (out.requires_grad()) {
        TensorNode *pz = logits.node(), *po = out.node();
        po->backward = [=] {
            float g = 0;   // dL/d(loss): the kernel takes it as a number
            cuda_copy_to_host(&g, po->cuda_grad.data(), sizeof g);
            cuda_softmax_cross_entropy_backward(device_data(probs), y->data(), grad_on_device(pz),
                                                g, B, C);
        };
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// 5.3 Gradients and the optimizer step on the device
//
// Gradients and optimizer state stay on the device; only the norm comes back (kernels.cu §7).
// The state is zeros made on the first step; AdamW is one fused kernel (kernels.cu §6).
// ---------------------------------------------------------------------------------------------

double grad_norm_on_device(const Tensor& p) {
    const DeviceBuffer<float>& g = p.node()->cuda_grad;
    return cuda_grad_norm({g.data()}, {int(g.size())});
}

double clip_grad_norm_on_device(const std::vector<Tensor>& params, double max_norm) {
    check_devices("clip_grad_norm", params, Device::CUDA);
    std::vector<float*> grads;
    std::vector<int> sizes;
    for (const Tensor& p : params) {
        grads.push_back(p.node()->cuda_grad.data());
        sizes.push_back(int(p.node()->cuda_grad.size()));
    }
    return cuda_clip_grad_norm(grads, sizes, float(max_norm));
}

void Optimizer::step_on_device() {
    check_devices(name_, params_, Device::CUDA);
    if (!state_.empty())
        argument_error(
            name_,
            "the parameters moved to cuda after this optimizer's state was made on the cpu; its "
            "state does not move with them: create the optimizer after moving the model");
    if (device_state_.empty())   // first step: the state, all zeros, on the device
        for (const Tensor& p : params_) {
            device_state_.emplace_back();
            for (int slot = 0; slot < state_per_param(); ++slot)
                device_state_.back().push_back(device_zeros(p.numel()));
        }
    ++step_count;
    for (std::size_t k = 0; k < params_.size(); ++k) {
        TensorNode& n = *params_[k].node();
        if (!n.cuda_grad.empty()) {   // a parameter the loss did not reach is left alone
            update_on_device(n.cuda_data.data(), n.cuda_grad.data(), device_state_[k],
                             int(n.cuda_data.size()));
            ++n.version;   // an in-place write (§2.1)
        }
    }
}

void Optimizer::update_on_device(float*, const float*, std::vector<DeviceBuffer<float>>&, int) {
    argument_error(
        name_,
        "no CUDA kernel for this update (kernels.cu has AdamW's; Adam without weight decay uses "
        "it too); train on the cpu");
}

// AdamW's fused kernel (kernels.cu §6): the update of Adam::update, in float. Adam without weight
// decay is the same update. Adam's own decay (L2: λw added to g before the moments) is not.
void Adam::update_on_device(float* w, const float* g, std::vector<DeviceBuffer<float>>& state,
                            int n) {
    if (!decoupled_ && weight_decay != 0)
        return Optimizer::update_on_device(w, g, state, n);   // throws
    cuda_adamw_update(w, g, state[0].data(), state[1].data(), n, lr, beta1, beta2, eps,
                      weight_decay, step_count);
}

// =============================================================================================
// Part 6: a language model
// =============================================================================================
//
// Everything above, put together to model text: bytes become tokens (6.1), a decoder-only
// transformer learns to predict each next token from the ones before it (6.2), and writes text
// one token at a time, keeping what it computed for the tokens before (6.3).

// ---------------------------------------------------------------------------------------------
// 6.1 Text as tokens: bytes, and byte-pair encoding
//
// A model reads numbers: a tokenizer cuts text into pieces of a fixed vocabulary and numbers them.
// Bytes: the vocabulary is the sorted set of bytes the text uses (114 for the fortunes); nothing
// is unknown, but a context of T tokens sees only T characters.
// Byte-pair encoding (BPE, GPT-2's tokenizer on bytes): N times, count the pairs of adjacent
// tokens and merge the most frequent into a new token. Frequent pieces ("the") become one token,
// so T tokens see more text, for N more rows in the embedding and the head. On "aaabdaaabac":
//     aaabdaaabac   pairs: aa 4 (overlaps counted), ab 2; bd, da, ba, ac 1 each
//     ZabdZabac     Z = aa, replaced left to right (aaa → Za)   pairs: Za 2, ab 2; others 1
//     ZYdZYac       Y = ab: the tie goes to the smaller pair of ids, and a < Z (a new id)
//     XdXac         X = ZY; every pair now occurs once, and a merge would only add a token: stop
// 11 bytes became 5 tokens, from a vocabulary of 4 bytes + 3 merges. Encoding another text
// replays the merges in the order they were learned; decoding writes out each token's bytes.
// ---------------------------------------------------------------------------------------------

std::string load_text(const std::string& path) {
    const std::vector<unsigned char> bytes = read_file(path, "load_text");   // §3.1
    return std::string(bytes.begin(), bytes.end());
}

// "byte 0x7E ('~')": the code always, the character when it prints.
static std::string describe_byte(unsigned char byte) {
    char text[24];
    if (std::isprint(byte)) std::snprintf(text, sizeof text, "byte 0x%02X ('%c')", byte, byte);
    else std::snprintf(text, sizeof text, "byte 0x%02X", byte);
    return text;
}

ByteVocabulary::ByteVocabulary(const std::string& text) : id_(256, -1) {
    std::vector<bool> seen(256, false);
    for (unsigned char c : text) seen[c] = true;
    for (int b = 0; b < 256; ++b)   // in increasing order, so ids sort as the bytes do
        if (seen[b]) {
            id_[b] = size();
            bytes_.push_back(static_cast<unsigned char>(b));
        }
}

unsigned char ByteVocabulary::byte(int id) const {
    if (id < 0 || id >= size())
        argument_error("ByteVocabulary::byte", "id " + std::to_string(id) + " is not in [0, " +
                                                   std::to_string(size()) + ")");
    return bytes_[id];
}

// The ids of text's bytes; op names the caller in the error.
static std::vector<int> byte_ids(const ByteVocabulary& vocabulary, const std::string& text,
                                 const char* op) {
    std::vector<int> ids(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        const unsigned char c = text[i];
        ids[i] = vocabulary.id(c);
        if (ids[i] < 0)
            argument_error(op, describe_byte(c) + " at position " + std::to_string(i) +
                                   " is not in the vocabulary (the " +
                                   std::to_string(vocabulary.size()) +
                                   " bytes of the text it was made from)");
    }
    return ids;
}

std::vector<int> ByteVocabulary::encode(const std::string& text) const {
    return byte_ids(*this, text, "ByteVocabulary::encode");
}

// A token id outside [0, size), named with its position.
[[noreturn]] static void unknown_id(const char* op, int id, std::size_t position, int size) {
    argument_error(op, "id " + std::to_string(id) + " at position " + std::to_string(position) +
                           " is not in the vocabulary [0, " + std::to_string(size) + ")");
}

std::string ByteVocabulary::decode(const std::vector<int>& ids) const {
    std::string text(ids.size(), '\0');
    for (std::size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= size()) unknown_id("ByteVocabulary::decode", ids[i], i, size());
        text[i] = static_cast<char>(bytes_[ids[i]]);
    }
    return text;
}

// The most frequent pair of adjacent tokens, as (left, right); ties go to the smaller pair;
// {−1, −1} when no pair occurs twice. One pass counts into a V×V table, count[left·V + right]
// (an index, not a hash, per pair; 64 MB at train's limit V = 4096). Scanning in increasing
// (left, right) keeps the first of equals.
static std::pair<int, int> most_frequent_pair(const std::vector<int>& tokens, int V) {
    std::vector<std::uint32_t> count(std::size_t(V) * V, 0);
    for (std::size_t i = 0; i + 1 < tokens.size(); ++i)
        ++count[std::size_t(tokens[i]) * V + tokens[i + 1]];
    std::size_t best = 0;
    for (std::size_t k = 1; k < count.size(); ++k)
        if (count[k] > count[best]) best = k;
    if (count.empty() || count[best] < 2) return {-1, -1};
    return {int(best / V), int(best % V)};
}

// Every occurrence of pair, read left to right, replaced by the token id: aaa with aa → Z is Za.
static std::vector<int> merge_pair(const std::vector<int>& tokens, std::pair<int, int> pair,
                                   int id) {
    std::vector<int> merged;
    merged.reserve(tokens.size());
    std::size_t i = 0;
    while (i < tokens.size()) {
        const bool match =
            i + 1 < tokens.size() && tokens[i] == pair.first && tokens[i + 1] == pair.second;
        if (match) {
            merged.push_back(id);
            i += 2;
        } else {
            merged.push_back(tokens[i]);
            i += 1;
        }
    }
    return merged;
}

std::vector<int> BytePairEncoding::train(const std::string& text, int merges) {
    return train(text, merges, ByteVocabulary(text));
}

std::vector<int> BytePairEncoding::train(const std::string& text, int merges,
                                         const ByteVocabulary& bytes) {
    const char* op = "BytePairEncoding::train";
    require_argument(merges >= 0, op, "merges must be >= 0, got " + std::to_string(merges));
    const int max_vocabulary = 4096;   // the pair table has V² counts
    require_argument(merges <= max_vocabulary - bytes.size(), op,
                     "bytes + merges must be at most " + std::to_string(max_vocabulary) + ", got " +
                         std::to_string(bytes.size()) + " + " + std::to_string(merges));
    require_argument(text.size() <= UINT32_MAX, op, "the text must be under 4 GiB (32-bit counts)");
    bytes_ = bytes;
    merges_.clear();
    pieces_.clear();
    for (int id = 0; id < bytes_.size(); ++id) pieces_.push_back(std::string(1, bytes_.byte(id)));
    std::vector<int> tokens = byte_ids(bytes_, text, op);
    for (int m = 0; m < merges; ++m) {
        const std::pair<int, int> pair = most_frequent_pair(tokens, vocab_size());
        if (pair.first < 0) break;   // no pair occurs twice
        const int id = vocab_size();
        merges_.push_back(pair);
        pieces_.push_back(pieces_[pair.first] + pieces_[pair.second]);
        tokens = merge_pair(tokens, pair, id);
    }
    return tokens;
}

std::vector<int> BytePairEncoding::encode(const std::string& text) const {
    std::vector<int> tokens = byte_ids(bytes_, text, "BytePairEncoding::encode");
    for (std::size_t k = 0; k < merges_.size(); ++k)
        tokens = merge_pair(tokens, merges_[k], bytes_.size() + int(k));
    return tokens;
}

std::string BytePairEncoding::decode(const std::vector<int>& tokens) const {
    std::string text;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= vocab_size())
            unknown_id("BytePairEncoding::decode", tokens[i], i, vocab_size());
        text += pieces_[tokens[i]];
    }
    return text;
}

const std::string& BytePairEncoding::token_bytes(int id) const {
    if (id < 0 || id >= vocab_size())
        argument_error("BytePairEncoding::token_bytes", "id " + std::to_string(id) +
                                                            " is not in the vocabulary [0, " +
                                                            std::to_string(vocab_size()) + ")");
    return pieces_[id];
}

double BytePairEncoding::bytes_per_token(const std::vector<int>& tokens) const {
    require_argument(!tokens.empty(), "BytePairEncoding::bytes_per_token", "no tokens");
    return double(decode(tokens).size()) / double(tokens.size());
}

// Validation is the corpus's tail, never trained on (random windows would leak it into training).
TextSplit split_text(const std::string& text, double train_fraction) {
    require_argument(train_fraction >= 0 && train_fraction <= 1, "split_text",
                     "train_fraction must be in [0, 1], got " + to_string(train_fraction));
    const std::size_t n_train = std::size_t(double(text.size()) * train_fraction);
    return {text.substr(0, n_train), text.substr(n_train)};
}

// A window of T + 1 tokens holds T predictions (targets are the inputs shifted by one); the last
// window starts at size − T − 1.
TokenBatch sample_batch(const std::vector<int>& tokens, int B, int T, Rng& rng) {
    const char* op = "sample_batch";
    require_argument(B > 0 && T > 0, op,
                     "B and T must be > 0, got B = " + std::to_string(B) +
                         ", T = " + std::to_string(T));
    if (tokens.size() < std::size_t(T) + 1)
        argument_error(op, "a window of T + 1 = " + std::to_string(T + 1) +
                               " tokens does not fit in " + std::to_string(tokens.size()));
    TokenBatch batch{B, T, std::vector<int>(std::size_t(B) * T),
                     std::vector<int>(std::size_t(B) * T)};
    for (int b = 0; b < B; ++b) {
        const std::size_t start = rng.below(tokens.size() - T);
        for (int t = 0; t < T; ++t) {
            batch.inputs[std::size_t(b) * T + t] = tokens[start + t];
            batch.targets[std::size_t(b) * T + t] = tokens[start + t + 1];
        }
    }
    return batch;
}

// ---------------------------------------------------------------------------------------------
// 6.2 A GPT: token and position embeddings, pre-norm blocks, a tied output head
//
// A decoder-only transformer scores, at every position of B sequences of T ids, each of the V
// tokens as the next one. With width D, H heads and L blocks:
//     x = wte[ids] + wpe[0, 1, …, T − 1]        [B, T, D]   what each token is, and where it is
//     L times:  x = x + attention(ln1(x))       [B, T, D]   each position reads the ones before
//               x = x + mlp(ln2(x))             [B, T, D]   each position computes on its own
//     logits = ln_f(x)·wteᵀ                     [B·T, V]    row b·T + t scores token t + 1
// Causal attention: position t sees 0..t only, so one sequence trains T predictions at once.
// Pre-norm (GPT-2): a block adds f(norm(x)) to x, so the residual stream is a plain sum and the
// gradient reaches every block unchanged through the +'s (§2.2).
// Init (GPT-2, §2.8): weights N(0, 0.02²), biases 0, gains 1; the two projections per block that
// add into the stream get std 0.02/√(2L), as the stream sums 2L of them. The logits start ≈ 0:
// the loss at init is ≈ ln V (4.74 for V = 114), the first number to check in any run.
// The tied head: logits = x·wteᵀ, one matrix for tokens in and out (V·D parameters saved). wte's
// gradient sums two terms by backward's += (§1.5): the lookup's (row ids[k] gets dx_k) and the
// head's (dwte += dlogitsᵀ·x).
//
// Parameters: wte V·D, wpe T·D; per block ln1, ln2 2·D each, qkv 3·D² + 3·D, projection D² + D,
// MLP 4·D² + 4·D and 4·D² + D (12·D² + 13·D); the final norm 2·D:
//     N = V·D + T·D + L·(12·D² + 13·D) + 2·D        816,128 for V 114, T 64, L 4, D 128
//
// FLOPs, as the counters of §4.1 see them (matmuls and attention; the O(D) rest is not counted).
// Forward, per token: 2 per weight of each linear, 2·12·D² per block, and the head 2·V·D. Query t
// scores t + 1 keys and averages t + 1 values, 2·(t + 1)·d each per head; over H heads and
// averaged over t: 2·(T + 1)·D per block.
//     F = 24·L·D² + 2·V·D + 2·L·(T + 1)·D     FLOPs per token, forward
// Backward: every product twice more (dX and dW, §2.4), attention twice its forward (§4.3):
//     3·F = 6·(12·L·D² + V·D) + 6·L·(T + 1)·D
// that is "6·N" (N the weights in products) plus attention's share: 4,806,144 + 199,680 ≈ 5.0
// MFLOP per token for V 114, T 64, L 4, D 128. A test checks F·B·T against the counters.
// ---------------------------------------------------------------------------------------------

static std::string gpt_config_str(const GPTConfig& c) {
    return "V = " + std::to_string(c.vocab) + ", T = " + std::to_string(c.context) +
           ", L = " + std::to_string(c.layers) + ", H = " + std::to_string(c.heads) +
           ", D = " + std::to_string(c.width);
}

static const GPTConfig& checked_gpt_config(const GPTConfig& c) {
    if (c.vocab <= 0 || c.context <= 0 || c.layers <= 0 || c.heads <= 0 || c.width <= 0)
        argument_error("nn::GPT", "every size must be positive; got " + gpt_config_str(c));
    if (c.width % c.heads != 0)
        argument_error("nn::GPT", std::to_string(c.heads) + " heads do not divide the width " +
                                      std::to_string(c.width) +
                                      " (each head takes D/H features); got " + gpt_config_str(c));
    return c;
}

std::int64_t gpt_parameter_count(const GPTConfig& c) {
    checked_gpt_config(c);
    const std::int64_t V = c.vocab, T = c.context, L = c.layers, D = c.width;
    const std::int64_t untied_head = c.tied_head ? 0 : V * D;
    return V * D + T * D + L * (12 * D * D + 13 * D) + 2 * D + untied_head;
}

std::int64_t gpt_forward_flops(const GPTConfig& c, int B, int T) {
    checked_gpt_config(c);
    const std::int64_t V = c.vocab, L = c.layers, D = c.width, tokens = std::int64_t(B) * T;
    const std::int64_t per_token = 24 * L * D * D + 2 * V * D + 2 * L * (T + 1) * D;
    return tokens * per_token;
}

// B sequences of T ids each (token ids, or targets), every one a token of the vocabulary.
static void check_gpt_tokens(const GPTConfig& c, const std::vector<int>& ids, int B, int T,
                             const std::string& what) {
    if (B <= 0 || T <= 0)
        argument_error("nn::GPT", "needs B > 0 and T > 0, got B = " + std::to_string(B) +
                                      ", T = " + std::to_string(T));
    if (T > c.context)
        argument_error("nn::GPT", "T = " + std::to_string(T) + " is longer than the context " +
                                      std::to_string(c.context) +
                                      " (wpe has a row for each of its positions only)");
    if (ids.size() != std::size_t(B) * T)
        argument_error("nn::GPT", std::to_string(ids.size()) + " " + what + " for B = " +
                                      std::to_string(B) + ", T = " + std::to_string(T) +
                                      ": needs B·T = " + std::to_string(std::size_t(B) * T));
    for (std::size_t k = 0; k < ids.size(); ++k)
        if (ids[k] < 0 || ids[k] >= c.vocab)
            argument_error("nn::GPT", what + ": " + std::to_string(ids[k]) + " at position " +
                                          std::to_string(k) + " is outside the vocabulary [0, " +
                                          std::to_string(c.vocab) + ")");
}

namespace nn {

LayerNorm::LayerNorm(int width, real eps_)
    : gain(Tensor::full({width}, 1)), bias(Tensor({width})), eps(eps_) {
    if (width <= 0)
        argument_error("nn::LayerNorm", "needs width > 0, got " + std::to_string(width));
    gain.requires_grad_();
    bias.requires_grad_();
}

Tensor LayerNorm::operator()(const Tensor& x) const { return layer_norm(x, gain, bias, eps); }

// A layer that adds into the residual stream: weight N(0, (0.02/√(2L))²), bias 0.
static Linear residual_projection(int in, int out, int layers, Rng& rng) {
    return Linear(gpt2_residual_weight({in, out}, layers, rng), Tensor({out}));
}

GPTBlock::GPTBlock(const GPTConfig& c, Rng& rng)
    : ln1(c.width), ln2(c.width), qkv(c.width, 3 * c.width, rng, Init::gpt2),
      attn_proj(residual_projection(c.width, c.width, c.layers, rng)),
      mlp_up(c.width, 4 * c.width, rng, Init::gpt2),
      mlp_down(residual_projection(4 * c.width, c.width, c.layers, rng)), heads(c.heads) {}

Tensor GPTBlock::operator()(const Tensor& x) const {
    const Tensor attended = x + self_attention(ln1(x));   // [B, T, D]
    return attended + mlp(ln2(attended));                 // [B, T, D]
}

// Causal multi-head self-attention (§4.4), with one projection for Q, K and V together:
//     [q | k | v] = x·W_qkv + b_qkv                       [B, T, D] → [B, T, 3D]
//     out_h = attention(q_h, k_h, v_h, causal)           [B, T, d], d = D/H (all h: §4.4's op)
//     out = concat(out_1, …, out_H)·W_proj + b_proj       [B, T, D] → [B, T, D]
Tensor GPTBlock::self_attention(const Tensor& x) const {
    return attn_proj(causal_self_attention(qkv(x), heads));
}

// Position by position: [B, T, D] → [B, T, 4D] → GELU (the tanh form, as GPT-2, §2.3) → [B, T, D].
Tensor GPTBlock::mlp(const Tensor& x) const { return mlp_down(gelu(mlp_up(x))); }

GPT::GPT(const GPTConfig& config_, Rng& rng)
    : config(checked_gpt_config(config_)), ln_f(config_.width) {
    const int V = config.vocab, T = config.context, D = config.width;
    wte = init_weight({V, D}, D, V, Init::gpt2, rng).requires_grad_();
    wpe = init_weight({T, D}, D, T, Init::gpt2, rng).requires_grad_();
    for (int l = 0; l < config.layers; ++l) blocks.emplace_back(config, rng);
    if (!config.tied_head) head = init_weight({V, D}, D, V, Init::gpt2, rng).requires_grad_();
}

Tensor GPT::operator()(const std::vector<int>& ids, int B, int T) const {
    check_gpt_tokens(config, ids, B, T, "token ids");
    const int D = config.width;
    std::vector<int> positions(T);
    for (int t = 0; t < T; ++t) positions[t] = t;
    // [B·T, D] seen as [B, T, D], plus [T, D]: the same position rows for every sequence.
    Tensor x = reshape(embedding(wte, ids), {B, T, D}) + embedding(wpe, positions);
    for (const GPTBlock& block : blocks) x = block(x);           // [B, T, D]
    const Tensor features = reshape(ln_f(x), {B * T, D});        // [B·T, D]
    const Tensor& output_head = config.tied_head ? wte : head;   // [V, D]
    return matmul(features, transpose(output_head));             // [B·T, V]
}

// Row b·T + t of the logits predicts targets[b·T + t], the token after ids[b·T + t].
Tensor GPT::loss(const std::vector<int>& ids, const std::vector<int>& targets, int B, int T) const {
    check_gpt_tokens(config, targets, B, T, "targets");
    return cross_entropy((*this)(ids, B, T), targets);
}

static void add_linear(std::vector<std::pair<std::string, Tensor>>& named, const std::string& name,
                       const Linear& layer) {
    named.push_back({name + ".W", layer.W});
    named.push_back({name + ".b", layer.b});
}

static void add_norm(std::vector<std::pair<std::string, Tensor>>& named, const std::string& name,
                     const LayerNorm& norm) {
    named.push_back({name + ".gain", norm.gain});
    named.push_back({name + ".bias", norm.bias});
}

std::vector<std::pair<std::string, Tensor>> GPT::named_parameters() const {
    std::vector<std::pair<std::string, Tensor>> named = {{"wte", wte}, {"wpe", wpe}};
    for (std::size_t l = 0; l < blocks.size(); ++l) {
        const std::string prefix = "blocks." + std::to_string(l) + ".";
        add_norm(named, prefix + "ln1", blocks[l].ln1);
        add_linear(named, prefix + "qkv", blocks[l].qkv);
        add_linear(named, prefix + "attn_proj", blocks[l].attn_proj);
        add_norm(named, prefix + "ln2", blocks[l].ln2);
        add_linear(named, prefix + "mlp_up", blocks[l].mlp_up);
        add_linear(named, prefix + "mlp_down", blocks[l].mlp_down);
    }
    add_norm(named, "ln_f", ln_f);
    if (!config.tied_head) named.push_back({"head", head});
    return named;
}

std::vector<Tensor> GPT::parameters() const {
    std::vector<Tensor> params;
    for (const auto& named : named_parameters()) params.push_back(named.second);
    return params;
}

}   // namespace nn

// ---------------------------------------------------------------------------------------------
// 6.3 Generation with a KV cache: one position's work per new token
//
// Sampling asks for the next token again and again. GPT::operator() would rerun all t + 1
// positions, though causal attention keeps positions 0..t−1 from seeing the new token: they
// compute what they did before. The new query needs only their keys and values, so a cache keeps
// those, per layer, and the new token alone goes through the model:
//     x = wte[token] + wpe[t]                                          [D]
//     per block:  [q | k | v] = ln1(x)·W_qkv + b;  k, v become row t of the cache
//                 out_h = Σ_{s ≤ t} softmax_s(q_h·k_{s,h}/√d)·v_{s,h}   [d] per head
//                 x += concat(out_h)·W_proj + b;   x += mlp(ln2(x))
//     logits = ln_f(x)·wteᵀ                                             [V]
// FLOPs at position t (§6.2's count): 24·L·D² + 2·V·D + 4·L·(t + 1)·D cached, against
// (t + 1)·(24·L·D² + 2·V·D) + … recomputed: 1.7 against 107 MFLOP at t = 63 in lesson 15. The
// price: 2·L·T·D numbers (256 KB in float there; 75 MB for GPT-2 small, T = 1024). The keys carry
// their absolute position (wpe), so a full cache cannot slide: the caller starts a new one.
// ---------------------------------------------------------------------------------------------

KVCache::KVCache(const GPTConfig& config_) : config(checked_gpt_config(config_)) {
    const std::size_t numbers = std::size_t(config.context) * config.width;   // [T, D]
    keys.assign(config.layers, std::vector<real>(numbers));
    values.assign(config.layers, std::vector<real>(numbers));
    attention.assign(config.layers, std::vector<real>());
}

// y = x·W + b for one row x [in], W [in, out], summed in double.
static std::vector<real> row_times(const std::vector<real>& x, const nn::Linear& layer) {
    const std::size_t in = layer.W.dim(0), out = layer.W.dim(1);
    const real *w = layer.W.values().data(), *b = layer.b.values().data();
    std::vector<double> sum(b, b + out);
    for (std::size_t i = 0; i < in; ++i)
        for (std::size_t j = 0; j < out; ++j) sum[j] += double(x[i]) * w[i * out + j];
    return std::vector<real>(sum.begin(), sum.end());
}

// LayerNorm of one row (§2.7): (x − μ)/√(σ² + eps)·gain + bias.
static std::vector<real> norm_row(const std::vector<real>& x, const nn::LayerNorm& norm) {
    const std::size_t D = x.size();
    double mean = 0, var = 0;
    for (real v : x) mean += v;
    mean /= double(D);
    for (real v : x) var += (v - mean) * (v - mean);
    const double rstd = 1 / std::sqrt(var / double(D) + norm.eps);
    const real *gain = norm.gain.values().data(), *bias = norm.bias.values().data();
    std::vector<real> y(D);
    for (std::size_t j = 0; j < D; ++j) y[j] = real((x[j] - mean) * rstd * gain[j] + bias[j]);
    return y;
}

// One head's query q [d] against rows 0..t of a layer's cache (its columns first .. first + d):
// p [t + 1] = softmax_s(q·k_s/√d), out [d] = Σ_s p_s·v_s.
static void attend_cached(const real* q, const KVCache& cache, int layer, int t, int first, int d,
                          real* p, real* out) {
    const int D = cache.config.width;
    const real *keys = cache.keys[layer].data(), *values = cache.values[layer].data();
    std::vector<double> weight(t + 1);
    double max_score = -INFINITY, total = 0;
    for (int s = 0; s <= t; ++s) {
        double dot = 0;
        for (int i = 0; i < d; ++i) dot += double(q[i]) * keys[std::size_t(s) * D + first + i];
        weight[s] = dot / std::sqrt(double(d));
        max_score = std::max(max_score, weight[s]);
    }
    for (int s = 0; s <= t; ++s) {   // − the max: no overflow
        weight[s] = std::exp(weight[s] - max_score);
        total += weight[s];
    }
    for (int s = 0; s <= t; ++s) weight[s] /= total;
    for (int i = 0; i < d; ++i) {
        double sum = 0;
        for (int s = 0; s <= t; ++s) sum += weight[s] * values[std::size_t(s) * D + first + i];
        out[i] = real(sum);
    }
    for (int s = 0; s <= t; ++s) p[s] = real(weight[s]);
}

static bool same_sizes(const GPTConfig& a, const GPTConfig& b) {
    return a.vocab == b.vocab && a.context == b.context && a.layers == b.layers &&
           a.heads == b.heads && a.width == b.width && a.tied_head == b.tied_head;
}

std::vector<real> gpt_next_logits(const nn::GPT& model, KVCache& cache, int token) {
    const char* op = "gpt_next_logits";
    const GPTConfig& c = model.config;
    if (!same_sizes(c, cache.config))
        argument_error(op, "the cache was made for " + gpt_config_str(cache.config) +
                               ", the model is " + gpt_config_str(c));
    if (token < 0 || token >= c.vocab)
        argument_error(op, "token " + std::to_string(token) + " is outside the vocabulary [0, " +
                               std::to_string(c.vocab) + ")");
    const int t = cache.length;   // this token's position
    if (t >= c.context)
        argument_error(op, "the cache is full: all " + std::to_string(c.context) +
                               " positions are used, and wpe has no row for position " +
                               std::to_string(t) + "; start a new cache");
    const int D = c.width, H = c.heads, d = D / H;
    const std::size_t row = std::size_t(t) * D;   // row t of keys and values
    const real *wte = model.wte.values().data(), *wpe = model.wpe.values().data();
    std::vector<real> x(D);   // this position's residual stream
    for (int j = 0; j < D; ++j) x[j] = wte[std::size_t(token) * D + j] + wpe[row + j];
    for (int l = 0; l < c.layers; ++l) {
        const nn::GPTBlock& block = model.blocks[l];
        const std::vector<real> q_k_v = row_times(norm_row(x, block.ln1), block.qkv);   // [3D]
        std::copy(q_k_v.begin() + D, q_k_v.begin() + 2 * D, cache.keys[l].begin() + row);
        std::copy(q_k_v.begin() + 2 * D, q_k_v.end(), cache.values[l].begin() + row);
        cache.attention[l].assign(std::size_t(H) * (t + 1), 0);   // [H, t + 1]
        std::vector<real> heads(D);                               // concat(out_h)
        for (int h = 0; h < H; ++h)
            attend_cached(q_k_v.data() + h * d, cache, l, t, h * d, d,
                          cache.attention[l].data() + std::size_t(h) * (t + 1),
                          heads.data() + h * d);
        const std::vector<real> attended = row_times(heads, block.attn_proj);
        for (int j = 0; j < D; ++j) x[j] += attended[j];
        std::vector<real> up = row_times(norm_row(x, block.ln2), block.mlp_up);   // [4D]
        const double a = std::sqrt(2.0 / pi), k = 0.044715;   // GELU, tanh form (§2.3)
        for (real& u : up) u = real(0.5 * u * (1 + std::tanh(a * (u + k * u * u * u))));
        const std::vector<real> down = row_times(up, block.mlp_down);
        for (int j = 0; j < D; ++j) x[j] += down[j];
    }
    cache.length = t + 1;
    const std::vector<real> features = norm_row(x, model.ln_f);         // [D]
    const Tensor& output_head = c.tied_head ? model.wte : model.head;   // [V, D]
    const real* w = output_head.values().data();
    std::vector<real> logits(c.vocab);
    for (int v = 0; v < c.vocab; ++v) {
        double sum = 0;
        for (int j = 0; j < D; ++j) sum += double(features[j]) * w[std::size_t(v) * D + j];
        logits[v] = real(sum);
    }
    return logits;
}
