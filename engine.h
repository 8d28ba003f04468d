// engine.h: the public surface of the engine. The tutorial, with every formula, is engine.cpp;
// read that. This header only lists what a lesson, a test or a benchmark may call.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

// ---------------------------------------------------------------------------------------------
// Homework support. A stubbed exercise throws this; the test harness and `make check` report it
// as TODO instead of FAIL, so "not done yet" never looks like "wrong".
// ---------------------------------------------------------------------------------------------
struct not_implemented : std::logic_error {
    explicit not_implemented(const std::string& exercise)
        : std::logic_error("not implemented: exercise " + exercise) {}
};

// =============================================================================================
// Part 1: the scalar engine
// =============================================================================================

// One node of the computational graph. A Value (below) is a handle to one of these.
// Every op has at most two inputs, so the edges are two fixed slots: no allocation per edge.
// The fields that backward() reads come first: together they span 64 bytes, one cache line.
struct Node {
    double data = 0.0;                       // the number computed in the forward pass
    double grad = 0.0;                       // dL/d(this node), filled in by backward()
    Node* parents[2] = {nullptr, nullptr};   // the op's inputs (none for a leaf); each is owned
    double local_grad[2] = {0.0, 0.0};       // ∂(this)/∂(parent i), recorded by the op in forward
    int n_parents = 0;
    int refs = 0;                            // Values and nodes pointing here (engine.cpp §1.6)
    std::uint32_t visit_stamp = 0;           // used by the topological sort (engine.cpp §1.4)
    int pending_consumers = 0;               // likewise
    const char* op = "";                     // "+", "*", "tanh", ... ("" for a leaf)
    std::string label;                       // optional name, for printing graphs

    static std::int64_t live_count;       // nodes alive now: lets tests prove graphs get freed
    Node() { ++live_count; }
    ~Node() { --live_count; }
    Node(const Node&) = delete;
    Node& operator=(const Node&) = delete;
    static void* operator new(std::size_t size);   // a free list of nodes (engine.cpp §1.6)
    static void operator delete(void* p);
};

// A cheap handle to a node: copies share the node, and the node lives while any handle (or any
// node built from it) does. The constructor from double is implicit on purpose: it is what
// makes `2 * a` and `a + 1` work.
class Value {
public:
    Value(double data = 0.0);
    Value(double data, std::string label);
    Value(const Value& other) : node_(other.node_) { ++node_->refs; }
    Value(Value&& other) noexcept : node_(other.node_) { other.node_ = nullptr; }
    Value& operator=(Value other) noexcept {   // copy-and-swap: the old node is released
        std::swap(node_, other.node_);
        return *this;
    }
    ~Value() { if (node_) release(node_); }

    double& data() const { return node_->data; }   // handle semantics: `p.data() -= lr * p.grad()`
    double& grad() const { return node_->grad; }
    const char* op() const { return node_->op; }
    const std::string& label() const { return node_->label; }
    Value& set_label(std::string label);
    std::vector<Value> parents() const;
    bool is_leaf() const { return node_->n_parents == 0; }
    Node* node() const { return node_; }

    // Reverse-mode autodiff from this value: seeds dL/dL = 1, then adds dL/dx into every leaf x.
    // Leaf gradients accumulate across calls until zero_grad(), as in PyTorch.
    void backward() const;

    // Used by the ops in engine.cpp: a new node with one or two inputs and their local derivatives.
    static Value from_op(double data, const char* op, const Value& a, double da);
    static Value from_op(double data, const char* op, const Value& a, double da, const Value& b,
                         double db);

private:
    explicit Value(Node* node) : node_(node) { ++node_->refs; }
    static void release(Node* node);   // drop one reference; free what nobody points to
    Node* node_;
};

Value operator+(const Value& a, const Value& b);
Value operator-(const Value& a, const Value& b);
Value operator*(const Value& a, const Value& b);
Value operator/(const Value& a, const Value& b);
Value operator-(const Value& a);
Value& operator+=(Value& a, const Value& b);   // rebinds a to the new node a + b
Value& operator-=(Value& a, const Value& b);
Value& operator*=(Value& a, const Value& b);
Value& operator/=(Value& a, const Value& b);

Value pow(const Value& x, double k);
Value exp(const Value& x);
Value log(const Value& x);
Value tanh(const Value& x);
Value sigmoid(const Value& x);
Value relu(const Value& x);
Value leaky_relu(const Value& x, double slope = 0.01);
Value gelu(const Value& x);

// Inputs before outputs: the order backward() walks in reverse. Iterative, so any depth works.
std::vector<Node*> topological_order(Node* root);

void zero_grad(const std::vector<Value>& values);

// The graph that produced `root`, one node per line in topological order: id, op, data, grad,
// and the ids of its inputs. Lesson 02 prints these.
std::string graph_to_string(const Value& root);

// ---------------------------------------------------------------------------------------------
// Numerical derivatives and gradient checking (engine.cpp §1.7)
// ---------------------------------------------------------------------------------------------
double forward_difference(const std::function<double(double)>& f, double x, double h);
double central_difference(const std::function<double(double)>& f, double x, double h);

// |analytic − numeric| / max(1, |analytic|, |numeric|): relative for large gradients, absolute
// for small ones, so a true zero is not punished for finite-difference noise.
double gradient_error(double analytic, double numeric);

struct GradcheckResult {
    std::vector<double> analytic;   // from backward()
    std::vector<double> numeric;    // from central differences
    std::vector<double> error;      // gradient_error per input
    double worst_error = 0.0;
    std::size_t worst_input = 0;
};
using ScalarFunction = std::function<Value(const std::vector<Value>&)>;
GradcheckResult gradcheck(const ScalarFunction& f, const std::vector<double>& inputs,
                          double h = 1e-6);

// ---------------------------------------------------------------------------------------------
// A random number generator that gives the same numbers on every platform (engine.cpp §1.8).
// std::mt19937 is portable too, but std::uniform_real_distribution is not: its output may differ
// between standard libraries. So we write both halves ourselves.
// ---------------------------------------------------------------------------------------------
class Rng {
public:
    explicit Rng(std::uint64_t seed) : state_(seed) {}
    std::uint64_t next_u64();
    double uniform();                   // [0, 1)
    double uniform(double lo, double hi);
    double normal();                    // N(0, 1)
    std::size_t below(std::size_t n);   // an integer in [0, n)
private:
    std::uint64_t state_;
};

// ---------------------------------------------------------------------------------------------
// A scalar neural network (engine.cpp §1.9), for lesson 03.
// ---------------------------------------------------------------------------------------------
enum class Activation { linear, relu, tanh };

Value activate(const Value& x, Activation act);

struct Neuron {
    std::vector<Value> w;
    Value b;
    Activation act;
    Neuron(int n_inputs, Activation act, Rng& rng);
    Value operator()(const std::vector<Value>& x) const;
    std::vector<Value> parameters() const;
};

struct Layer {
    std::vector<Neuron> neurons;
    Layer(int n_inputs, int n_outputs, Activation act, Rng& rng);
    std::vector<Value> operator()(const std::vector<Value>& x) const;
    std::vector<Value> parameters() const;
};

// MLP(2, {16, 16, 1}, rng): hidden layers use `hidden`, the last layer is linear.
struct MLP {
    std::vector<Layer> layers;
    MLP(int n_inputs, const std::vector<int>& layer_sizes, Rng& rng,
        Activation hidden = Activation::relu);
    std::vector<Value> operator()(const std::vector<Value>& x) const;
    std::vector<Value> parameters() const;
};

// The two-moons toy dataset: two interleaved half circles with Gaussian noise; labels are
// −1 and +1 (the max-margin loss in lesson 03 wants signs, not 0/1).
struct Moons {
    std::vector<std::vector<double>> x;
    std::vector<double> y;
};
Moons make_moons(int n, double noise, Rng& rng);
