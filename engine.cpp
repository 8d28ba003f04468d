// engine.cpp: a deep-learning engine you can read top to bottom.
//
// Contents
//   Part 1  The scalar engine (micrograd-style autograd on single numbers)
//     1.1  Value: a handle to a node of the graph
//     1.2  Arithmetic, each op with its local derivatives
//     1.3  Activation functions and their derivatives
//     1.4  Topological order: every node after its inputs
//     1.5  backward(): the chain rule, walked in reverse
//     1.6  Memory: reference counts, freeing without recursion, a free list
//     1.7  Numerical derivatives and gradient checking
//     1.8  Random numbers that are the same everywhere
//     1.9  Neuron, Layer, MLP
//     1.10 A toy dataset: two moons
//   Part 2  Tensors (to come: the tensor-engine issue)
//
// The one idea of this file: a program is a graph of small ops. Each op knows its own local
// derivative. The chain rule turns those local derivatives into dLoss/d(everything) in one
// backward sweep, whatever the size of the graph.

#include "engine.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <unordered_map>

static constexpr double pi = 3.14159265358979323846;

// =============================================================================================
// Part 1: the scalar engine
// =============================================================================================

// ---------------------------------------------------------------------------------------------
// 1.1 Value: a handle to a node of the graph
//
// Every number we compute with is a Node holding its value (`data`), its gradient dL/d(node)
// (`grad`), the nodes it was computed from (`parents`), and one number per parent:
//
//     local_grad[i] = ∂(this node)/∂(parent i)        evaluated at the forward values.
//
// That last field is the whole trick. Each op writes its local derivative while it computes its
// output, so the backward pass needs no formulas at all: it only multiplies and adds (§1.5).
// A Value is a counted reference to a Node, so `Value c = a;` makes c and a the same node.
// ---------------------------------------------------------------------------------------------

Value::Value(double data) : Value(new Node) { node_->data = data; }

Value::Value(double data, std::string label) : Value(data) { node_->label = std::move(label); }

Value& Value::set_label(std::string label) {
    node_->label = std::move(label);
    return *this;
}

std::vector<Value> Value::parents() const {
    std::vector<Value> out;
    for (int i = 0; i < node_->n_parents; ++i) out.push_back(Value(node_->parents[i]));
    return out;
}

Value Value::from_op(double data, const char* op, const Value& a, double da) {
    Value out(data);
    Node& n = *out.node_;
    n.op = op;
    n.n_parents = 1;
    n.parents[0] = a.node_;
    ++a.node_->refs;   // the new node keeps its input alive
    n.local_grad[0] = da;
    return out;
}

Value Value::from_op(double data, const char* op, const Value& a, double da, const Value& b,
                     double db) {
    Value out = from_op(data, op, a, da);
    Node& n = *out.node_;
    n.n_parents = 2;
    n.parents[1] = b.node_;
    ++b.node_->refs;
    n.local_grad[1] = db;
    return out;
}

// Bad input must fail loudly, naming the op and the value, never turn into a silent NaN.
static void require(bool ok, const char* op, const char* what, double value) {
    if (ok) return;
    char msg[160];
    std::snprintf(msg, sizeof msg, "%s: %s, got %g", op, what, value);
    throw std::domain_error(msg);
}

// ---------------------------------------------------------------------------------------------
// 1.2 Arithmetic, each op with its local derivatives
//
// Read each op as: output value, then ∂out/∂a and ∂out/∂b. Check one against the other.
// ---------------------------------------------------------------------------------------------

// out = a + b        ∂out/∂a = 1      ∂out/∂b = 1
Value operator+(const Value& a, const Value& b) {
    return Value::from_op(a.data() + b.data(), "+", a, 1.0, b, 1.0);
}

// out = a − b        ∂out/∂a = 1      ∂out/∂b = −1
Value operator-(const Value& a, const Value& b) {
    return Value::from_op(a.data() - b.data(), "-", a, 1.0, b, -1.0);
}

// out = a · b        ∂out/∂a = b      ∂out/∂b = a       (each input's slope is the other input)
Value operator*(const Value& a, const Value& b) {
    return Value::from_op(a.data() * b.data(), "*", a, b.data(), b, a.data());
}

// out = a / b        ∂out/∂a = 1/b    ∂out/∂b = −a/b²
Value operator/(const Value& a, const Value& b) {
    const double bv = b.data();
    require(bv != 0.0, "division a/b", "the divisor b must not be 0", bv);
    return Value::from_op(a.data() / bv, "/", a, 1.0 / bv, b, -a.data() / (bv * bv));
}

// out = −a           ∂out/∂a = −1
Value operator-(const Value& a) { return Value::from_op(-a.data(), "neg", a, -1.0); }

// `a += b` builds the new node a + b and points a at it: the old node stays in the graph.
Value& operator+=(Value& a, const Value& b) { return a = a + b; }
Value& operator-=(Value& a, const Value& b) { return a = a - b; }
Value& operator*=(Value& a, const Value& b) { return a = a * b; }
Value& operator/=(Value& a, const Value& b) { return a = a / b; }

// out = x^k (k a plain number)      ∂out/∂x = k · x^(k−1)            (the power rule)
Value pow(const Value& x, double k) {
    const double xv = x.data();
    require(xv > 0.0 || k == std::floor(k), "pow(x, k)",
            "a negative or zero x needs a whole-number exponent k", xv);
    require(xv != 0.0 || k >= 1.0, "pow(x, k)", "x = 0 needs k >= 1 (the slope is infinite)", k);
    return Value::from_op(std::pow(xv, k), "pow", x, k * std::pow(xv, k - 1.0));
}

// out = eˣ           ∂out/∂x = eˣ = out                 (e^x is its own derivative)
Value exp(const Value& x) {
    const double e = std::exp(x.data());
    require(std::isfinite(e), "exp(x)", "the result overflows a double (x > 709)", x.data());
    return Value::from_op(e, "exp", x, e);
}

// out = ln x         ∂out/∂x = 1/x
Value log(const Value& x) {
    const double xv = x.data();
    require(xv > 0.0, "log(x)", "x must be > 0", xv);
    return Value::from_op(std::log(xv), "log", x, 1.0 / xv);
}

// ---------------------------------------------------------------------------------------------
// 1.3 Activation functions and their derivatives
//
// The nonlinearity between layers is what lets a network bend. How its derivative behaves is
// what decides whether gradients survive many layers: sigmoid's is at most 0.25, so 10 sigmoid
// layers shrink a gradient by 0.25¹⁰ ≈ 1e-6; ReLU's is exactly 1 where the unit is active.
// ---------------------------------------------------------------------------------------------

// out = tanh x       ∂out/∂x = 1 − tanh²x = 1 − out²
Value tanh(const Value& x) {
    const double t = std::tanh(x.data());
    return Value::from_op(t, "tanh", x, 1.0 - t * t);
}

// out = σ(x) = 1/(1 + e⁻ˣ)     ∂out/∂x = σ(x)·(1 − σ(x)),  largest at x = 0: σ'(0) = 0.25.
// For x < 0 we use the equal form eˣ/(1 + eˣ) so that e⁻ˣ never overflows.
Value sigmoid(const Value& x) {
    const double xv = x.data();
    const double s = xv >= 0 ? 1.0 / (1.0 + std::exp(-xv)) : std::exp(xv) / (1.0 + std::exp(xv));
    return Value::from_op(s, "sigmoid", x, s * (1.0 - s));
}

// out = max(0, x)    ∂out/∂x = 1 if x > 0 else 0. At exactly 0 we pick 0, as PyTorch does.
// A unit whose input is negative passes no gradient at all: the "dead ReLU" of lesson 02.
Value relu(const Value& x) {
    const double xv = x.data();
    return Value::from_op(xv > 0 ? xv : 0.0, "relu", x, xv > 0 ? 1.0 : 0.0);
}

// out = x if x > 0 else slope·x      ∂out/∂x = 1 or slope: a dead unit still leaks a gradient.
Value leaky_relu(const Value& x, double slope) {
    const double xv = x.data();
    return Value::from_op(xv > 0 ? xv : slope * xv, "leaky_relu", x, xv > 0 ? 1.0 : slope);
}

// GELU, tanh form (GPT-2, BERT):  out = ½·x·(1 + tanh u),   u = √(2/π)·(x + 0.044715·x³)
// Product rule and chain rule:     ∂out/∂x = ½(1 + tanh u) + ½·x·(1 − tanh²u)·du/dx,
//                                  du/dx   = √(2/π)·(1 + 3·0.044715·x²)
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

// ---------------------------------------------------------------------------------------------
// 1.4 Topological order: every node after its inputs
//
// backward() may pass a node's gradient on to its inputs only once that gradient is complete,
// i.e. after every node that consumes it has passed its share back. Listing the graph so that
// each node comes after its inputs (a topological order) and walking the list backwards
// guarantees that.
//
// micrograd finds the order by recursive depth-first search. Recursion uses one stack frame per
// level, so a chain of a million ops overflows the stack. We count dependencies instead, as
// PyTorch's autograd engine does (Kahn's algorithm), with no recursion and no stack:
//   pass 1: visit every node the root depends on, and count each node's consumers;
//   pass 2: list the root; list any node whose consumers are all listed.
// Pass 2 lists outputs before inputs; reversed, that is the order we want.
// `visit_stamp` marks the nodes seen by this call; each call uses a fresh stamp, so nothing
// needs resetting afterwards. (After 2³² calls the stamp wraps around to values used long ago;
// a node would have to survive four billion backward passes unvisited to be confused by that.)
// ---------------------------------------------------------------------------------------------

std::vector<Node*> topological_order(Node* root) {
    // BEGIN EXERCISE topo_sort
    static std::uint32_t last_visit_stamp = 0;
    const std::uint32_t stamp = ++last_visit_stamp;
    std::vector<Node*> found = {root};   // pass 1: every node reachable from root
    root->visit_stamp = stamp;
    root->pending_consumers = 0;
    for (std::size_t i = 0; i < found.size(); ++i) {
        for (int k = 0; k < found[i]->n_parents; ++k) {
            Node* input = found[i]->parents[k];
            if (input->visit_stamp != stamp) {   // first time seen
                input->visit_stamp = stamp;
                input->pending_consumers = 0;
                found.push_back(input);
            }
            ++input->pending_consumers;          // one more node in this graph reads `input`
        }
    }
    std::vector<Node*> order = {root};   // pass 2: outputs first
    order.reserve(found.size());
    for (std::size_t i = 0; i < order.size(); ++i) {
        for (int k = order[i]->n_parents - 1; k >= 0; --k) {   // right to left: reversed, a·b
                                                                // lists a before b
            Node* input = order[i]->parents[k];
            if (--input->pending_consumers == 0) order.push_back(input);   // all consumers listed
        }
    }
    std::reverse(order.begin(), order.end());   // inputs first
    return order;
    // END EXERCISE
}

// ---------------------------------------------------------------------------------------------
// 1.5 backward(): the chain rule, walked in reverse
//
// Chain rule: if L depends on x only through a node n, then  dL/dx = dL/dn · ∂n/∂x.
// Multivariable chain rule: if x feeds several nodes n₁, n₂, …, their terms add up:
//
//     dL/dx = Σ_k  dL/dn_k · ∂n_k/∂x
//
// So the backward pass is three steps:
//   1. order the graph topologically (§1.4);
//   2. seed dL/dL = 1 at the output;
//   3. for each node from the output back: parent.grad += local_grad · node.grad.
// The `+=` is the Σ above: a node used twice (x·x, or a weight shared by many examples) collects
// one term per use. It is also why gradients accumulate across backward() calls until someone
// zeroes them: that is PyTorch's rule, and it is what makes gradient accumulation work.
//
// Cost: one multiply-add per edge, the same order as the forward pass, however many inputs
// there are. That is why reverse mode wins when there are many parameters and one loss.
//
// One detail: only leaves keep accumulating. An interior node's grad describes this backward
// pass, so it restarts from 0; otherwise a second backward() through the same graph would push
// the first pass's gradient through the graph a second time.
// ---------------------------------------------------------------------------------------------

void Value::backward() const {
    const std::vector<Node*> order = topological_order(node_);
    for (Node* n : order)
        if (n->n_parents > 0) n->grad = 0.0;
    node_->grad += 1.0;   // dL/dL = 1
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
        const Node& n = **it;
        for (int i = 0; i < n.n_parents; ++i) n.parents[i]->grad += n.local_grad[i] * n.grad;
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
        const std::size_t n_id = id.size();   // nodes are numbered in the order printed
        id[n] = n_id;
        std::snprintf(line, sizeof line, "n%-3zu %-10s %-10s data=%-12.6g grad=%-12.6g",
                      n_id, n->label.c_str(), n->n_parents ? n->op : "leaf", n->data, n->grad);
        out << line;
        for (int i = 0; i < n->n_parents; ++i)
            out << (i ? ", " : " from ") << 'n' << id.at(n->parents[i])
                << " (local " << n->local_grad[i] << ')';
        out << '\n';
    }
    return out.str();
}

// ---------------------------------------------------------------------------------------------
// 1.6 Memory: reference counts, freeing without recursion, and a free list
//
// A node stays alive while something points to it: a Value handle, or a node computed from it.
// `refs` counts those pointers, so the last handle to the loss frees the whole graph, and the
// parameters (still held by the model) survive it. The graph has no cycles (an op's inputs
// always exist before its output), so counting never misses garbage.
//
// Freeing a node drops one reference from each of its inputs, which may free them in turn.
// Written as recursion that is one stack frame per node, and a chain of a million ops would
// overflow the stack; so we keep the nodes waiting to be freed in a list instead.
//
// A training step allocates and frees tens of thousands of nodes. Keeping freed nodes on a
// list and handing them out again skips malloc and free, and reuses memory that is likely still
// in cache: lesson 03's training step ran about 15% faster with it when we measured. The list
// grows to the largest graph built so far; that memory is reused, never returned. (Under
// AddressSanitizer we skip the list, so that a use of a freed node is still caught.)
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

#if defined(__SANITIZE_ADDRESS__)         // g++ -fsanitize=address
#define NODE_FREE_LIST 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)      // clang++ -fsanitize=address
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
// A freed node's first bytes hold the pointer to the next free node.
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
// The limit definition  f'(x) = lim_{h→0} (f(x + h) − f(x)) / h  gives two estimates:
//   forward difference  (f(x + h) − f(x)) / h            error O(h)    (Taylor: h·f''/2)
//   central difference  (f(x + h) − f(x − h)) / (2h)     error O(h²)   (the f'' terms cancel)
// Making h smaller helps only until rounding error, about ε·|f|/h with ε = 2.2e-16, takes over;
// lesson 01 plots both errors against h. With doubles and h ≈ 1e-6 the central difference is
// good to about 1e-9, which makes it the independent truth every gradient test compares with.
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

// Backprop once for all the analytic gradients, then nudge each input in turn for the numeric
// ones: n inputs cost 2n extra forward passes, which is why we check on small graphs only.
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
        if (r.error.back() > r.worst_error) r.worst_error = r.error.back(), r.worst_input = i;
    }
    return r;
}

// ---------------------------------------------------------------------------------------------
// 1.8 Random numbers that are the same everywhere
//
// Reproducible training needs the same initial weights on every machine. SplitMix64 is a
// 64-bit generator in four lines: add a fixed odd constant (2⁶⁴/φ), then scramble the bits with
// xor-shifts and multiplications so that neighbouring states give unrelated outputs.
// ---------------------------------------------------------------------------------------------

std::uint64_t Rng::next_u64() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The top 53 bits fill a double's mantissa exactly: uniform over [0, 1) in steps of 2⁻⁵³.
double Rng::uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

double Rng::uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

// Marsaglia's polar method: a point (u, v) uniform in the unit disc, s = u² + v², gives the
// normal sample u·√(−2 ln s / s). Only sqrt (exact in IEEE arithmetic) and log are needed.
double Rng::normal() {
    double u, v, s;
    do {
        u = uniform(-1.0, 1.0);
        v = uniform(-1.0, 1.0);
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    return u * std::sqrt(-2.0 * std::log(s) / s);
}

// Scaling a uniform [0, 1) sample avoids the bias of `next_u64() % n` toward small values.
std::size_t Rng::below(std::size_t n) { return static_cast<std::size_t>(uniform() * n); }

// ---------------------------------------------------------------------------------------------
// 1.9 Neuron, Layer, MLP
//
// A neuron computes act(w·x + b) = act(Σᵢ wᵢxᵢ + b). A layer is several neurons reading the
// same inputs; an MLP is layers in sequence. Everything is built from the ops above, so
// backward() already knows how to differentiate it: no new derivative is needed.
// Weights start uniform in [−1, 1] as in micrograd; part 2 explains better initializations.
// ---------------------------------------------------------------------------------------------

Value activate(const Value& x, Activation act) {
    switch (act) {
        case Activation::relu: return relu(x);
        case Activation::tanh: return tanh(x);
        case Activation::linear: break;
    }
    return x;
}

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
// 1.10 A toy dataset: two moons
//
// Two interleaved half circles, the classic "not linearly separable" problem: no straight line
// splits them, so a model must learn a curved boundary. Upper moon: (cos t, sin t), label −1;
// lower moon: (1 − cos t, ½ − sin t), label +1; t evenly spaced in [0, π]; then N(0, noise²)
// is added to both coordinates.
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
