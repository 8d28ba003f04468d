// engine.h: the public surface of the engine. The tutorial, with every formula, is engine.cpp;
// read that. This header only lists what a lesson, a test or a benchmark may call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

// ---------------------------------------------------------------------------------------------
// Homework support. A stubbed exercise throws this; the test harness and `make check` report it
// as TODO instead of FAIL, so "not done yet" never looks like "wrong". Its message says where to
// write: the file, line and function of the stub. The compiler fills those in where the stub
// throws (a default argument's __builtin_FILE() is read at the call, like C++20's
// std::source_location).
// ---------------------------------------------------------------------------------------------
struct not_implemented : std::logic_error {
    explicit not_implemented(const std::string& exercise, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE(),
                             const char* function = __builtin_FUNCTION())
        : std::logic_error("exercise " + exercise + " is yours to write: " + file + ":" +
                           std::to_string(line) + ", in " + function + "()") {}
};

// =============================================================================================
// Part 1: the scalar engine
// =============================================================================================

// Anomaly mode (engine.cpp §2.12): when on, every op's output and every gradient is checked for
// NaN/Inf, and the first op that produced one is named in a std::domain_error with the likely
// cause. Off by default (one flag test per op). Also on if ENGINE_DETECT_ANOMALY=1 is set.
void set_detect_anomaly(bool on);
bool detect_anomaly();
// Anomaly checks, which the ops run while it is on (engine.cpp §2.12), each naming the op.
struct Node;
struct TensorNode;
class Tensor;
void anomaly_scalar_forward(const Node& n);    // a new node's value and slopes
void anomaly_scalar_backward(const Node& n);   // the gradients a node passed back
void anomaly_tensor_inputs(const char* op, const std::vector<Tensor>& inputs);
void anomaly_tensor_backward(const TensorNode& n);

// One node of the computational graph. A Value (below) is a handle to one of these.
// Every op has at most two inputs, so the edges are two fixed slots: no allocation per edge.
// The fields that backward() reads come first: together they span 64 bytes, one cache line.
struct Node {
    double data = 0.0;                       // the number computed in the forward pass
    double grad = 0.0;                       // dL/d(this node), filled in by backward()
    Node* parents[2] = {nullptr, nullptr};   // the op's inputs (none for a leaf); each is owned
    double local_grad[2] = {0.0, 0.0};   // ∂(this)/∂(parent i), recorded by the op in forward
    int n_parents = 0;
    int refs = 0;                    // Values and nodes pointing here (engine.cpp §1.6)
    std::uint32_t visit_stamp = 0;   // used by the topological sort (engine.cpp §1.4)
    int pending_consumers = 0;       // likewise
    const char* op = "";             // "+", "*", "tanh", ... ("" for a leaf)
    std::string label;               // optional name, for printing graphs

    int n_inputs() const { return n_parents; }
    Node* input(int k) const { return parents[k]; }

    static std::int64_t live_count;   // nodes alive now: lets tests prove graphs get freed
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
    ~Value() {
        if (node_) release(node_);
    }

    double& data() const { return node_->data; }   // handle semantics: `p.data() -= lr * p.grad()`
    double& grad() const { return node_->grad; }
    Value& set_label(std::string label);
    Node* node() const { return node_; }   // the node itself: its op, label and inputs

    // Reverse-mode autodiff from this value: seeds dL/dL = 1, then adds dL/dx into every leaf x.
    // Leaf gradients accumulate across calls until zero_grad(), as in PyTorch.
    void backward() const;

    // Used by the ops in engine.cpp: a new node with one or two inputs and their local derivatives.
    static Value from_op(double data, const char* op, const Value& a, double da);
    static Value from_op(double data, const char* op, const Value& a, double da, const Value& b,
                         double db);

private:
    explicit Value(Node* node) : node_(node) { ++node_->refs; }
    static Value link(double data, const char* op, const Value& a, double da, const Value* b,
                      double db);
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
Value gelu(const Value& x);   // the tanh form, as GPT-2 (below: the exact one)
// GELU in PyTorch's two forms, F.gelu(x, approximate=...): Approximate::none is the exact
// x·Φ(x), PyTorch's default; Approximate::tanh is the approximation GPT-2 used, gelu(x) above.
enum class Approximate { none, tanh };
Value gelu(const Value& x, Approximate approximate);

// Inputs before outputs: the order backward() walks in reverse. Iterative, so any depth works.
// One algorithm serves both engines: N is Node (Part 1) or TensorNode (Part 2).
template <class N>
std::vector<N*> topological_order(N* root);

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
// Forward mode (engine.cpp §1.8): a dual number carries a value and its tangent, the derivative
// of that value along one chosen input direction. Each op applies its derivative rule as it
// computes; no graph is kept. The op names are Value's, so one template serves both modes.
// ---------------------------------------------------------------------------------------------
struct Dual {
    double value = 0.0;
    double tangent = 0.0;   // d(value)/dt, when the inputs move as x + t·direction
    Dual(double v = 0.0, double t = 0.0) : value(v), tangent(t) {}   // a constant has tangent 0
};
Dual operator+(const Dual& a, const Dual& b);
Dual operator-(const Dual& a, const Dual& b);
Dual operator*(const Dual& a, const Dual& b);
Dual operator/(const Dual& a, const Dual& b);
Dual operator-(const Dual& a);
Dual& operator+=(Dual& a, const Dual& b);
Dual& operator-=(Dual& a, const Dual& b);
Dual& operator*=(Dual& a, const Dual& b);
Dual& operator/=(Dual& a, const Dual& b);
Dual pow(const Dual& x, double k);
Dual exp(const Dual& x);
Dual log(const Dual& x);
Dual tanh(const Dual& x);
Dual sigmoid(const Dual& x);
Dual relu(const Dual& x);
Dual leaky_relu(const Dual& x, double slope = 0.01);
Dual gelu(const Dual& x);   // the tanh form, as Value's gelu

using DualFunction = std::function<Dual(const std::vector<Dual>&)>;
// f'(x)·u: the derivative of f at x along the direction u, in one forward pass (a Jacobian-
// vector product: for f: ℝⁿ → ℝ, the gradient dotted with u).
double jvp(const DualFunction& f, const std::vector<double>& x,
           const std::vector<double>& direction);
// Every ∂f/∂xᵢ by forward mode: n passes, one per input direction eᵢ.
std::vector<double> forward_mode_gradient(const DualFunction& f, const std::vector<double>& x);

// ---------------------------------------------------------------------------------------------
// A random number generator that gives the same numbers on every platform (engine.cpp §1.9).
// std::mt19937 is portable too, but std::uniform_real_distribution is not: its output may differ
// between standard libraries. So we write both halves ourselves.
// ---------------------------------------------------------------------------------------------
class Rng {
public:
    explicit Rng(std::uint64_t seed) : state_(seed) {}
    std::uint64_t next_u64();
    double uniform();   // [0, 1)
    double uniform(double lo, double hi);
    double normal();                                 // N(0, 1)
    std::size_t below(std::size_t n);                // an integer in [0, n)
    std::uint64_t state() const { return state_; }   // Rng(r.state()) continues r exactly
private:
    std::uint64_t state_;
};

// ---------------------------------------------------------------------------------------------
// Neuron, Layer, MLP: a scalar neural network (engine.cpp §1.10), for lesson 03.
// ---------------------------------------------------------------------------------------------
// gelu is the tanh form (PyTorch's nn.GELU(approximate='tanh')); gelu_exact is nn.GELU().
enum class Activation { linear, relu, tanh, sigmoid, gelu, gelu_exact, leaky_relu };
// activate(x, act) applies one; it is a template defined with the tensor ops (Part 2 below), so
// that one definition serves Values and Tensors.

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

// =============================================================================================
// Part 2: tensors
// =============================================================================================

// The element type of every tensor. float by default (what training uses); the tests build the
// engine with -DENGINE_DOUBLE so that gradient checks by finite differences can reach 1e-6.
#ifdef ENGINE_DOUBLE
using real = double;
#else
using real = float;
#endif

using Shape = std::vector<int>;
std::size_t numel(const Shape& shape);
std::string shape_str(const Shape& shape);   // "[2, 3]"

// Where a tensor's numbers live (engine.cpp Part 5). On CUDA the ops run the kernels of
// kernels.cu, in fp32; without a GPU that "device" is the CPU, through cuda_emu.h.
enum class Device { CPU, CUDA };
const char* device_name(Device device);   // "cpu", "cuda"

// Device memory (kernels.cu §8). Every call is checked: a failure throws std::runtime_error
// naming the CUDA call and its error. cuda_free runs in destructors, which must not throw, so
// a failed free prints that message and aborts.
void* cuda_malloc(std::size_t bytes);
void cuda_free(void* device_p);
void cuda_copy_to_device(void* device_dst, const void* host_src, std::size_t bytes);
void cuda_copy_to_host(void* host_dst, const void* device_src, std::size_t bytes);
void cuda_copy_on_device(void* device_dst, const void* device_src, std::size_t bytes);
void cuda_zero(void* device_p, std::size_t bytes);

// n values of T in device memory, allocated by the constructor and freed by the destructor, so
// a tensor's device memory goes when its node does. It can be moved, never copied.
template <class T>
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(std::size_t n) : p_(static_cast<T*>(cuda_malloc(n * sizeof(T)))), n_(n) {}
    DeviceBuffer(DeviceBuffer&& other) noexcept
        : p_(std::exchange(other.p_, nullptr)), n_(std::exchange(other.n_, 0)) {}
    DeviceBuffer& operator=(DeviceBuffer other) noexcept {   // the old memory leaves with `other`
        std::swap(p_, other.p_);
        std::swap(n_, other.n_);
        return *this;
    }
    ~DeviceBuffer() {
        if (p_) cuda_free(p_);
    }   // (a CPU-only program never calls CUDA)
    T* data() const { return p_; }
    std::size_t size() const { return n_; }
    std::size_t bytes() const { return n_ * sizeof(T); }
    bool empty() const { return n_ == 0; }

private:
    T* p_ = nullptr;
    std::size_t n_ = 0;
};

// A node of the tensor graph: the same idea as Node, one level up. Instead of one number per
// edge (a local derivative), each node keeps a closure that applies its Jacobian: given this
// node's grad, it adds grad·∂(this)/∂(input) into each input's grad. (engine.cpp §2.1)
struct TensorNode {
    Shape shape;
    std::vector<real> data;                     // row-major, contiguous
    std::vector<real> grad;                     // empty until backward() reaches this node
    Device device = Device::CPU;                // CUDA: data and grad stay empty; the numbers are
    DeviceBuffer<float> cuda_data, cuda_grad;   // here, in device memory, as fp32 (Part 5)
    bool requires_grad = false;                 // a parameter, or computed from one
    const char* op = "";                        // "matmul", "+", ... ("" for a leaf)
    std::vector<std::shared_ptr<TensorNode>> parents;
    std::function<void()> backward;               // the vector-Jacobian product of `op`
    std::uint32_t version = 0;                    // in-place writes so far (engine.cpp §2.1)
    std::vector<std::uint32_t> parent_versions;   // each parent's version when this op read it
    std::uint32_t visit_stamp = 0;                // for topological_order
    int pending_consumers = 0;

    int n_inputs() const { return int(parents.size()); }
    TensorNode* input(int k) const { return parents[k].get(); }

    static std::int64_t live_count;    // tensor nodes alive now
    TensorNode* prev_live = nullptr;   // every live node is on one list, so that
    TensorNode* next_live = nullptr;   // tensor_bytes() can add up their storage
    TensorNode();
    TensorNode(const TensorNode&) = delete;
    TensorNode& operator=(const TensorNode&) = delete;
    ~TensorNode();   // frees long chains without recursion
};

// The numbers of a CPU tensor, or of its gradient, row-major: a view that reads and writes each
// element but can never change how many there are (a tensor's size is its shape's). Use it like
// a vector: v[i], v.size(), v.data(), a range-for; copy it out with
// `std::vector<real> copy = t.values();`. Assigning a vector or another view, `t.values() = w`,
// copies the numbers in and throws, naming the shape, unless the count matches. Like a Tensor, it
// keeps the node alive: `auto v = model(x).values();` stays valid after the temporary is gone.
class ValuesView {
public:
    ValuesView(std::shared_ptr<TensorNode> node, bool of_grad)
        : node_(std::move(node)), of_grad_(of_grad) {}
    ValuesView(const ValuesView&) = default;          // another view of the same numbers
    ValuesView& operator=(const ValuesView& other);   // copies other's numbers into these
    ValuesView& operator=(const std::vector<real>& numbers);
    real& operator[](std::size_t i) const { return numbers()[i]; }
    real* data() const { return numbers().data(); }
    std::size_t size() const { return numbers().size(); }
    bool empty() const { return numbers().empty(); }
    real* begin() const { return data(); }
    real* end() const { return data() + size(); }
    operator std::vector<real>() const { return numbers(); }

private:
    std::vector<real>& numbers() const { return of_grad_ ? node_->grad : node_->data; }
    std::shared_ptr<TensorNode> node_;
    bool of_grad_;   // the gradient's numbers, else the tensor's
};

// A handle to a TensorNode; copies share it (like Value, and like torch.Tensor).
class Tensor {
public:
    Tensor() = default;                                       // an empty handle
    explicit Tensor(Shape shape);                             // zeros
    explicit Tensor(Shape shape, std::vector<real> values);   // values.size() must match shape
    static Tensor full(Shape shape, real value);
    static Tensor scalar(real value);                  // shape [1]
    static Tensor zeros(Shape shape, Device device);   // on either device

    bool defined() const { return node_ != nullptr; }
    const Shape& shape() const { return checked("shape()").shape; }
    int rank() const { return int(checked("rank()").shape.size()); }
    int dim(int axis) const;   // negative counts from the end
    std::size_t numel() const {
        return checked("numel()").device == Device::CPU ? node_->data.size()
                                                        : ::numel(node_->shape);
    }
    // The numbers of a CPU tensor. A CUDA tensor's are in device memory: these throw, and
    // .to(Device::CPU) gives a copy to read.
    ValuesView values() const { return {on_cpu("values()"), false}; }
    ValuesView grad() const { return {on_cpu("grad()"), true}; }
    real item() const;   // the value of a 1-element tensor (from any device)
    real& at(const std::vector<int>& index) const;   // bounds-checked element access
    bool requires_grad() const { return checked("requires_grad()").requires_grad; }
    Tensor& requires_grad_(bool on = true);   // make it a parameter (PyTorch's name)
    const char* op() const { return checked("op()").op; }
    TensorNode* node() const { return node_.get(); }   // null for an empty handle

    // Devices (engine.cpp Part 5). to(d) is a copy on d: a new leaf, cut from the graph like
    // detach(), that does not require grad. move_to(d) moves this leaf's numbers (and gradient)
    // to d in place, so that every handle to it, a model's and an optimizer's, sees the move:
    // that is how parameters move (nn::Linear::to, nn::MLP::to). Move before the forward pass.
    Device device() const { return checked("device()").device; }
    Tensor to(Device d) const;
    Tensor& move_to(Device d);

    // Reverse-mode autodiff: a scalar loss seeds dL/dL = 1; any other tensor needs the seed
    // dL/d(this) of its shape. Leaf gradients accumulate until zero_grad(). A NaN or infinite
    // loss throws std::domain_error: to handle divergence yourself, test loss.item() first.
    void backward() const;
    void backward(const Tensor& seed) const;
    void zero_grad() const;
    Tensor detach() const;                       // same values, cut from the graph
    std::string str(int max_values = 6) const;   // "Tensor[2, 3] = [1, 2, 3, 4, 5, 6]"

    // Used by the ops: an output of `shape` computed from `inputs`; it joins the graph only if
    // some input requires grad. Every input must be on `device`, where the output is made.
    static Tensor from_op(Shape shape, const char* op, std::vector<Tensor> inputs,
                          Device device = Device::CPU);

private:
    const std::shared_ptr<TensorNode>& on_cpu(const char* what) const;   // the node, or throws
    // The node; an empty handle (a default-constructed Tensor) throws, naming what was asked.
    TensorNode& checked(const char* what) const {
        if (!node_) empty_handle(what);
        return *node_;
    }
    [[noreturn]] static void empty_handle(const char* what);
    std::shared_ptr<TensorNode> node_;
};

// Bytes of data and gradients held by all live tensors now, on the host and on the device
// (walks them: for tests and lessons).
std::size_t tensor_bytes();

Tensor randn(Shape shape, Rng& rng, real stddev = 1);
Tensor uniform(Shape shape, Rng& rng, real lo, real hi);

// Elementwise arithmetic with broadcasting (shapes aligned from the right; a size-1 or missing
// axis repeats): [B, D] + [D] adds a row to every row, [B, D] * [B, 1] scales each row.
Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a);
Tensor operator+(const Tensor& a, real k);
Tensor operator+(real k, const Tensor& a);
Tensor operator-(const Tensor& a, real k);
Tensor operator-(real k, const Tensor& a);
Tensor operator*(const Tensor& a, real k);
Tensor operator*(real k, const Tensor& a);
Tensor operator/(const Tensor& a, real k);
Tensor operator/(real k, const Tensor& a);

Tensor matmul(const Tensor& a, const Tensor& b);   // [M,K]·[K,N], [B,M,K]·[B,K,N], [B,M,K]·[K,N]
Tensor linear(const Tensor& x, const Tensor& W, const Tensor& b);   // x·W + b, one op (nn::Linear)

// Matrix multiplication (engine.cpp §2.4): the loops under matmul, each computing
// C[M, N] += A[M, K]·B[K, N] into row-major C.
// A MatrixView reads element (r, c) at data[r·row_stride + c·col_stride]: a row-major [R, C]
// matrix has strides (C, 1), and its transpose is the same memory with the strides swapped.
struct MatrixView {
    const real* data;
    std::ptrdiff_t row_stride, col_stride;
    real operator()(int r, int c) const { return data[r * row_stride + c * col_stride]; }
};
inline MatrixView row_major(const real* data, int cols) { return {data, cols, 1}; }
inline MatrixView transposed(const real* data, int cols) {
    return {data, 1, cols};
}   // of row-major [rows, cols]
void matmul_naive(int M, int N, int K, MatrixView A, MatrixView B, real* C);     // the oracle
void matmul_ikj(int M, int N, int K, const real* A, const real* B, real* C);     // row-major only
void matmul_blocked(int M, int N, int K, MatrixView A, MatrixView B, real* C);   // what matmul uses
// matmul_blocked with another register tile (mr×nr: 6x4, 6x8, 6x16, 14x16, 14x32), for the tests.
void matmul_with_tile(int mr, int nr, int M, int N, int K, MatrixView A, MatrixView B, real* C);

// Threads for the loops that use OpenMP (matmul_blocked); 1 when built without it (NO_OMP=1).
void set_num_threads(int n);
int num_threads();
Tensor transpose(const Tensor& x);              // swaps the last two axes
Tensor reshape(const Tensor& x, Shape shape);   // one axis may be -1 (inferred)
Tensor sum(const Tensor& x);                    // of everything: shape [1]
Tensor sum(const Tensor& x, int axis, bool keepdim = false);
Tensor mean(const Tensor& x);
Tensor mean(const Tensor& x, int axis, bool keepdim = false);

// eˣ and tanh u on one number, written with + · / only so that loops over them vectorize
// (engine.cpp §2.3); GELU and attention use them. Tests compare them with std::exp, std::tanh.
float simd_exp(float x);
double simd_exp(double x);
float simd_tanh(float u);
double simd_tanh(double u);

Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor pow(const Tensor& x, real k);
Tensor relu(const Tensor& x);
Tensor leaky_relu(const Tensor& x, real slope = real(0.01));
Tensor gelu(const Tensor& x);                            // the tanh form, as GPT-2
Tensor gelu(const Tensor& x, Approximate approximate);   // Approximate::none: exact, x·Φ(x)
Tensor sigmoid(const Tensor& x);
Tensor tanh(const Tensor& x);

// The nonlinearity an MLP layer applies. The same named ops exist for Values (Part 1) and Tensors
// (Part 2), so one definition serves both.
template <class X>
X activate(const X& x, Activation act) {
    switch (act) {
    case Activation::relu:
        return relu(x);
    case Activation::tanh:
        return tanh(x);
    case Activation::sigmoid:
        return sigmoid(x);
    case Activation::gelu:
        return gelu(x);
    case Activation::gelu_exact:
        return gelu(x, Approximate::none);
    case Activation::leaky_relu:
        return leaky_relu(x);
    case Activation::linear:
        break;
    }
    return x;
}

// Along the last axis.
Tensor softmax(const Tensor& x);
Tensor log_softmax(const Tensor& x);

// Losses, each returning a scalar (shape [1]), averaged over the batch.
// cross_entropy: logits [B, C], labels[b] in [0, C). With smoothing ε the target is
// (1 − ε)·onehot + ε/C. Its gradient is (softmax − target)/B.
Tensor cross_entropy(const Tensor& logits, const std::vector<int>& labels,
                     real label_smoothing = 0);
Tensor mse_loss(const Tensor& prediction, const Tensor& target);
Tensor bce_with_logits(const Tensor& logits, const Tensor& targets);   // targets in [0, 1]

// Normalization over the last axis (D): gain and bias have shape [D].
Tensor layer_norm(const Tensor& x, const Tensor& gain, const Tensor& bias, real eps = real(1e-5));
Tensor rms_norm(const Tensor& x, const Tensor& gain, real eps = real(1e-6));

Tensor embedding(const Tensor& table, const std::vector<int>& ids);   // [V, D] → [len(ids), D]
// Inverted dropout: in training each element is zeroed with probability p and the survivors
// are scaled by 1/(1 − p); in evaluation it is the identity.
Tensor dropout(const Tensor& x, real p, Rng& rng, bool training);
Tensor concat(const std::vector<Tensor>& parts, int axis);
Tensor slice(const Tensor& x, int axis, int start, int end);   // [start, end) along axis

// ---------------------------------------------------------------------------------------------
// Initialization (engine.cpp §2.8). fan_in / fan_out: the inputs / outputs of one unit.
// ---------------------------------------------------------------------------------------------
enum class Init { zeros, xavier_normal, xavier_uniform, he_normal, he_uniform, gpt2 };
Tensor init_weight(Shape shape, int fan_in, int fan_out, Init init, Rng& rng);
// GPT-2: N(0, 0.02²); a projection that writes into the residual stream of an n_layers-deep
// model gets std 0.02/√(2·n_layers), so the stream's variance does not grow with depth.
Tensor gpt2_residual_weight(Shape shape, int n_layers, Rng& rng);

namespace nn {

// Y = X·W + b with W of shape [in, out] (so a row of X is one example).
struct Linear {
    Tensor W, b;
    Linear(int in, int out, Rng& rng, Init init = Init::he_normal, bool bias = true);
    // From given weights: W [in, out], and b [out] or no b. They become parameters (so they must
    // be leaves: data, not results of ops). PyTorch's nn.Linear stores weight as [out, in]: its
    // W here is that weight transposed.
    explicit Linear(Tensor W, Tensor b = Tensor());
    Tensor operator()(const Tensor& x) const;
    std::vector<Tensor> parameters() const;
    void to(Device device);   // moves W and b in place (engine.cpp Part 5)
};

// Linear → activation → (dropout) → ... → Linear. sizes = {in, hidden..., out}.
struct MLP {
    std::vector<Linear> layers;
    Activation act;
    real dropout_p;
    bool training = true;
    Rng dropout_rng;
    MLP(const std::vector<int>& sizes, Rng& rng, Activation act = Activation::relu,
        Init init = Init::he_normal, real dropout_p = 0);
    // From given layers, whose sizes must chain (each layer's out is the next one's in).
    explicit MLP(std::vector<Linear> layers, Activation act = Activation::relu);
    Tensor operator()(const Tensor& x);
    std::vector<Tensor> parameters() const;
    // "layers.0.W", "layers.0.b", ...: the names a checkpoint stores.
    std::vector<std::pair<std::string, Tensor>> named_parameters() const;
    void train() { training = true; }
    void eval() { training = false; }
    void to(Device device);   // moves every parameter in place (engine.cpp Part 5)
};

}   // namespace nn

// ---------------------------------------------------------------------------------------------
// Optimizers (engine.cpp §2.9), with PyTorch's update rules and defaults.
// ---------------------------------------------------------------------------------------------
class Optimizer {
public:
    Optimizer(std::vector<Tensor> params, double lr, const char* name);
    virtual ~Optimizer() = default;
    void step();   // one update of every parameter with a grad
    void zero_grad();
    double lr;   // may be changed every step by a schedule
    long step_count = 0;
    const std::vector<Tensor>& params() const { return params_; }
    virtual int state_per_param() const = 0;   // numbers of state per parameter element
    // Throws, naming the setting, unless every setting is in range; step() calls it each time.
    virtual void check_settings() const;
    std::size_t state_bytes() const;   // their total size in bytes
    const char* name() const { return name_; }
    // The state itself, [param][slot][element] (empty before the first step): for checkpoints.
    // Throws when the state is in device memory (parameters on CUDA, engine.cpp Part 5).
    std::vector<std::vector<std::vector<real>>>& state();

protected:
    // Updates one parameter tensor; `state` holds state_per_param() vectors of its size.
    virtual void update(std::vector<real>& w, const std::vector<real>& g,
                        std::vector<std::vector<real>>& state) = 0;
    // The same for a parameter on the CUDA device: w, g and each state slot hold n floats there.
    // Optimizers with a kernel override it; this one throws.
    virtual void update_on_device(float* w, const float* g, std::vector<DeviceBuffer<float>>& state,
                                  int n);
    std::vector<Tensor> params_;
    std::vector<std::vector<std::vector<real>>> state_;   // [param][slot][element]
    std::vector<std::vector<DeviceBuffer<float>>>
        device_state_;   // [param][slot], for CUDA parameters
    const char* name_;

private:
    void step_on_device();
};

class SGD : public Optimizer {   // with optional momentum (and Nesterov) and L2 weight decay
public:
    SGD(std::vector<Tensor> params, double lr, double momentum = 0, bool nesterov = false,
        double weight_decay = 0);
    int state_per_param() const override { return momentum > 0 ? 1 : 0; }
    void check_settings() const override;
    double momentum, weight_decay;
    bool nesterov;

protected:
    void update(std::vector<real>&, const std::vector<real>&,
                std::vector<std::vector<real>>&) override;
};

class RMSProp : public Optimizer {
public:
    RMSProp(std::vector<Tensor> params, double lr = 1e-2, double alpha = 0.99, double eps = 1e-8,
            double weight_decay = 0);
    int state_per_param() const override { return 1; }
    void check_settings() const override;
    double alpha, eps, weight_decay;

protected:
    void update(std::vector<real>&, const std::vector<real>&,
                std::vector<std::vector<real>>&) override;
};

// Adam's weight_decay is L2 added to the gradient; AdamW's is decoupled: w ← w − lr·λ·w.
class Adam : public Optimizer {
public:
    Adam(std::vector<Tensor> params, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999,
         double eps = 1e-8, double weight_decay = 0);
    int state_per_param() const override { return 2; }
    void check_settings() const override;
    double beta1, beta2, eps, weight_decay;

protected:
    Adam(std::vector<Tensor> params, double lr, double beta1, double beta2, double eps,
         double weight_decay, bool decoupled, const char* name);
    void update(std::vector<real>&, const std::vector<real>&,
                std::vector<std::vector<real>>&) override;
    void update_on_device(float*, const float*, std::vector<DeviceBuffer<float>>&, int) override;
    bool decoupled_ = false;
};

class AdamW : public Adam {
public:
    AdamW(std::vector<Tensor> params, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999,
          double eps = 1e-8, double weight_decay = 1e-2);
};

class Lion : public Optimizer {
public:
    Lion(std::vector<Tensor> params, double lr = 1e-4, double beta1 = 0.9, double beta2 = 0.99,
         double weight_decay = 0);
    int state_per_param() const override { return 1; }
    void check_settings() const override;
    double beta1, beta2, weight_decay;

protected:
    void update(std::vector<real>&, const std::vector<real>&,
                std::vector<std::vector<real>>&) override;
};

// ---------------------------------------------------------------------------------------------
// Learning-rate schedules (engine.cpp §2.10): the learning rate for step = 0, 1, 2, ...
// ---------------------------------------------------------------------------------------------
double constant_lr(long step, double lr);
// Linear from 0 to lr_max over `warmup` steps, then cosine down to lr_min at `total`, then lr_min.
double warmup_cosine_lr(long step, long warmup, long total, double lr_max, double lr_min);
// Linear warmup, then lr_max·√(warmup/step) (the original Transformer's schedule).
double inverse_sqrt_lr(long step, long warmup, double lr_max);
// lr0·gamma^⌊step/step_size⌋.
double step_decay_lr(long step, double lr0, long step_size, double gamma);

// ---------------------------------------------------------------------------------------------
// Gradient tools (engine.cpp §2.11)
// ---------------------------------------------------------------------------------------------
double grad_norm(const std::vector<Tensor>& params);                 // global L2 norm
std::vector<double> grad_norms(const std::vector<Tensor>& params);   // one per parameter
// Scales every gradient by max_norm/‖g‖ when ‖g‖ > max_norm; returns ‖g‖ before clipping.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);
void clip_grad_value(const std::vector<Tensor>& params, double max_abs);

// =============================================================================================
// Part 3: real data and checkpoints
// =============================================================================================

// An IDX file (the format of MNIST, Fashion-MNIST, KMNIST): a header of magic 00 00 08 <rank>
// and rank big-endian 32-bit sizes, then the bytes. Everything is checked before it is
// trusted; any problem throws std::runtime_error naming the file and what is wrong.
struct IdxArray {
    std::vector<int> dims;              // e.g. {60000, 28, 28}
    std::vector<unsigned char> bytes;   // product of dims values
};
IdxArray read_idx(const std::string& path);

// An image set and its labels: images [N, rows·cols] scaled to [0, 1], labels in [0, classes).
struct Dataset {
    Tensor images;
    std::vector<int> labels;
    int classes = 0;
};
Dataset load_idx_dataset(const std::string& images_path, const std::string& labels_path);
// The given rows of a [N, D] tensor stacked into a [rows.size(), D] batch (data: no gradient).
Tensor gather_rows(const Tensor& images, const std::vector<int>& rows);

// Everything a run needs to continue exactly where it stopped.
// Several optimizers when groups of parameters train differently (lesson 15: weight decay on the
// matrices only); saved and loaded in the order given, and a file with another count is refused.
struct TrainingState {
    std::vector<std::pair<std::string, Tensor>> params;   // name → parameter (values)
    std::vector<Optimizer*> optimizers;                   // their moments and step counts
    std::vector<Rng*> rngs;                               // data order, dropout, ...
    std::int64_t step = 0;                                // the training loop's own counter
    std::string settings;   // the recipe (steps, sizes, ...): a load with other settings fails
};
// Writes path.tmp, then renames it over path: a failed save leaves the old file intact.
void save_checkpoint(const std::string& path, const TrainingState& state);
// All or nothing: the file is read and checked completely (magic, version, checksum, settings,
// names, shapes, optimizers) before anything in `state` changes.
void load_checkpoint(const std::string& path, TrainingState& state);

// =============================================================================================
// Part 4: training at scale
// =============================================================================================

// ---------------------------------------------------------------------------------------------
// Counting what training costs (engine.cpp §4.1)
// ---------------------------------------------------------------------------------------------
// FLOPs of the matrix products done since the last reset: a multiply-add counts 2, as in the
// course texts. matmul and attention count their own work; so may any kernel you write.
std::int64_t counted_flops();
void reset_counted_flops();
void count_flops(std::int64_t flops);

// The machine's ceiling, for MFU (bench's `peak` row, lesson 15): fma_chains(n) runs 12
// independent chains of fused multiply-adds n times on the calling thread, each as wide as the
// widest vector the build targets (fma_lanes: 16 floats with AVX-512, 8 with AVX, 4 with SSE or
// NEON; half as many doubles), with no memory traffic, and returns their sum (use it, or the
// work may be optimized away).
#if defined(__AVX512F__)
constexpr int fma_lanes = 64 / int(sizeof(real));
#elif defined(__AVX__)
constexpr int fma_lanes = 32 / int(sizeof(real));
#else
constexpr int fma_lanes = 16 / int(sizeof(real));
#endif
double fma_chains(long iterations);
constexpr double fma_chain_flops_per_iteration = 2.0 * 12 * fma_lanes;   // a multiply-add: 2

// Bytes of tensor storage (the data and gradients of every live tensor), counted where storage
// is allocated and freed, so reading them costs nothing. current_tensor_bytes() equals
// tensor_bytes(); the peak is the largest value since the last reset_peak_tensor_bytes(), which
// also recounts the current value with tensor_bytes() (storage you resize yourself, through
// values() or grad(), is only seen by that recount).
std::size_t current_tensor_bytes();
std::size_t peak_tensor_bytes();
void reset_peak_tensor_bytes();

// The two hooks that keep the count. Wrap every change of a node's storage in a watch (it
// reports the difference when it goes out of scope); a node's destructor reports what it frees.
class TensorStorageWatch {
public:
    explicit TensorStorageWatch(const TensorNode* node);
    ~TensorStorageWatch();
    TensorStorageWatch(const TensorStorageWatch&) = delete;
    TensorStorageWatch& operator=(const TensorStorageWatch&) = delete;

private:
    const TensorNode* node_;
    std::int64_t bytes_before_;
};
void tensor_storage_freed(const TensorNode& node);

// ---------------------------------------------------------------------------------------------
// Batch normalization (engine.cpp §4.2)
// ---------------------------------------------------------------------------------------------
// Training mode, x [N, C]: every column c is normalized with the mean and (biased) variance of
// its N values, then y = gamma[c]·x̂ + beta[c]. Needs N >= 2.
Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, real eps = real(1e-5));

namespace nn {

// BatchNorm1d with PyTorch's conventions: gamma = 1, beta = 0, running mean 0 and variance 1 at
// the start; each training batch updates  running = (1 − momentum)·running + momentum·batch,
// with the unbiased variance (÷ (N − 1)); eval() normalizes with the running statistics.
struct BatchNorm {
    Tensor gamma, beta;
    std::vector<real> running_mean, running_var;
    real momentum, eps;
    bool training = true;
    explicit BatchNorm(int features, real momentum = real(0.1), real eps = real(1e-5));
    // From given gamma and beta [features] (running statistics 0 and 1; set them after).
    BatchNorm(Tensor gamma, Tensor beta, real momentum = real(0.1), real eps = real(1e-5));
    Tensor operator()(const Tensor& x);
    std::vector<Tensor> parameters() const { return {gamma, beta}; }
    void train() { training = true; }
    void eval() { training = false; }
};

}   // namespace nn

// ---------------------------------------------------------------------------------------------
// Attention (engine.cpp §4.3–4.4)
// ---------------------------------------------------------------------------------------------
// O = softmax(Q·Kᵀ/√d)·V  for Q [T, d], K [S, d], V [S, dv] (or each with a leading batch axis
// B). causal: query i attends to keys j <= i only (needs T == S).
Tensor causal_mask(int T);   // [T, T]: 0 on and below the diagonal, −1e9 above
// The composition of existing ops: matmul, transpose, *, +, softmax, matmul.
Tensor attention_composed(const Tensor& q, const Tensor& k, const Tensor& v, bool causal);
// One fused op with a hand-written backward. It saves for the backward either the attention
// probabilities P [B, T, S], or only each row's log-sum-exp [B, T] and recomputes P from Q and
// K (FlashAttention's trade: memory for FLOPs). The saved tensor is live (tensor_bytes sees it).
enum class AttentionSaves { probabilities, log_sum_exp };
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                 AttentionSaves saves = AttentionSaves::probabilities);

// Multi-head self-attention of x [T, D] or [B, T, D] with weights [D, D]: project to Q, K, V;
// split the D features into `heads` slices; attend within each slice; join; project with Wo.
enum class AttentionKernel { composed, fused };
Tensor multi_head_attention(const Tensor& x, const Tensor& Wq, const Tensor& Wk, const Tensor& Wv,
                            const Tensor& Wo, int heads, bool causal, AttentionKernel kernel);
// Causal self-attention over all H heads at once (engine.cpp §4.4), as a GPT block runs it:
// [q | k | v] [B, T, 3D] → [B, T, D] ([T, 3D]: B = 1); head h reads columns h·d … of q, k, v
// (d = D/H) and writes columns h·d … of the output: attention() on those slices, concatenated.
Tensor causal_self_attention(const Tensor& qkv, int heads);

// ---------------------------------------------------------------------------------------------
// 16-bit floating point and mixed precision (engine.cpp §4.5–4.6)
// ---------------------------------------------------------------------------------------------
// IEEE float16 (1 sign, 5 exponent, 10 fraction bits) and bfloat16 (1, 8, 7), converted by hand
// from float with round-to-nearest-even; overflow gives ±inf, tiny values become subnormals or
// ±0, NaN stays NaN. Going back to float is exact.
std::uint16_t float_to_half(float x);
float half_to_float(std::uint16_t bits);
std::uint16_t float_to_bfloat16(float x);
float bfloat16_to_float(std::uint16_t bits);

enum class Precision { fp32, fp16, bf16 };
const char* precision_name(Precision p);
float round_to_precision(float x, Precision p);   // x → that format → float

// Forward: every value rounded to p. Backward: the gradient passes straight through (rounding
// counts as the identity) and is rounded to p too, as the gradient of a p tensor is.
Tensor cast(const Tensor& x, Precision p);
// A·B for [M, K]·[K, N] with the inputs rounded to `inputs` and the running sum rounded to
// `accumulator` after every addition. Values only: no gradient flows through it.
Tensor matmul_in_precision(const Tensor& a, const Tensor& b, Precision inputs,
                           Precision accumulator);

// Dynamic loss scaling, PyTorch's GradScaler rules. Each step:
//     scaler.scale_loss(loss).backward();                    gradients are S times too big
//     bool ok = scaler.unscale_gradients(params);            g ← g/S, unless some g is inf/NaN
//     if (ok) { clip_grad_norm(...); optimizer.step(); }     an overflowed step is skipped
//     scaler.update(ok);                                     inf/NaN: S ← S·backoff; after
//                                                            growth_interval good steps:
//                                                            S ← S·growth
class DynamicLossScaler {
public:
    explicit DynamicLossScaler(double initial_scale = 65536, int growth_interval = 2000,
                               double growth_factor = 2, double backoff_factor = 0.5);
    double scale() const { return scale_; }
    Tensor scale_loss(const Tensor& loss) const;
    bool unscale_gradients(const std::vector<Tensor>& params) const;   // true: all finite
    void update(bool gradients_were_finite);
    long skipped_steps() const { return skipped_; }
    int good_steps_in_a_row() const { return good_in_a_row_; }

private:
    double scale_, growth_factor_, backoff_factor_;
    int growth_interval_, good_in_a_row_ = 0;
    long skipped_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Activation checkpointing (engine.cpp §4.7)
// ---------------------------------------------------------------------------------------------
// y = segment(x), without keeping the segment's activations: backward runs the segment again
// and backpropagates through the copy. `params` are the parameters the segment uses (they get
// their gradients). The segment must compute the same thing twice (no fresh dropout masks).
using Segment = std::function<Tensor(const Tensor&)>;
Tensor activation_checkpoint(const Segment& segment, const Tensor& x,
                             const std::vector<Tensor>& params);

// =============================================================================================
// Part 6: a language model
// =============================================================================================

// Text as tokens (engine.cpp §6.1)

// A whole file as bytes (a std::string holds any byte, '\0' included); an error names the path.
std::string load_text(const std::string& path);

// The byte-level vocabulary: the distinct bytes of a text, sorted; a byte's id is its rank
// (114 ids for the fortunes). A byte or an id outside the vocabulary throws, naming it.
class ByteVocabulary {
public:
    explicit ByteVocabulary(const std::string& text = "");
    int size() const { return int(bytes_.size()); }
    unsigned char byte(int id) const;                        // the byte of an id
    int id(unsigned char byte) const { return id_[byte]; }   // −1 for a byte the text lacks
    std::vector<int> encode(const std::string& text) const;
    std::string decode(const std::vector<int>& ids) const;

private:
    std::vector<unsigned char> bytes_;   // id → byte, increasing
    std::vector<int> id_;                // byte → id, −1 for a byte the text lacks
};

// Byte-pair encoding: the byte vocabulary, then `merges` new tokens, each the most frequent
// pair of adjacent tokens in the training text (ties to the smaller pair of ids). Token ids:
// 0 .. bytes − 1 the bytes, as ByteVocabulary numbers them; bytes + k the k-th merge. Training
// stops early when no pair occurs twice, so vocab_size() ≤ bytes + merges (at most 4096: the
// pair counts are a V×V table). With 0 merges it is the byte-level tokenizer.
class BytePairEncoding {
public:
    BytePairEncoding() = default;
    BytePairEncoding(const std::string& text, int merges) { train(text, merges); }
    // Learns from text (from scratch), and returns text's tokens: what encode(text) gives. The
    // bytes are text's own, or a given vocabulary: the whole corpus's, when text is its training
    // split and the validation split has a byte that training lacks (the fortunes do: 0xBC).
    std::vector<int> train(const std::string& text, int merges);
    std::vector<int> train(const std::string& text, int merges, const ByteVocabulary& bytes);
    std::vector<int> encode(const std::string& text) const;   // the merges, in the order learned
    std::string decode(const std::vector<int>& tokens) const;
    int vocab_size() const { return int(pieces_.size()); }
    const ByteVocabulary& bytes() const { return bytes_; }
    const std::vector<std::pair<int, int>>& merges() const { return merges_; }
    const std::string& token_bytes(int id) const;   // the text a token stands for
    // Compression: bytes of text per token, Σ token_bytes(t).size() / tokens.size().
    double bytes_per_token(const std::vector<int>& tokens) const;

private:
    ByteVocabulary bytes_;
    std::vector<std::pair<int, int>> merges_;   // merge k: (left, right) → token bytes + k
    std::vector<std::string> pieces_;           // token id → its bytes
};

// The corpus split: the first train_fraction of the bytes train, the rest is validation.
struct TextSplit {
    std::string train, validation;
};
TextSplit split_text(const std::string& text, double train_fraction = 0.9);

// A batch for next-token prediction: B windows of T + 1 consecutive tokens; inputs are each
// window's first T tokens, targets its last T (the inputs shifted by one: the next tokens).
// Both [B, T], row-major: (b, t) at b·T + t.
struct TokenBatch {
    int B = 0, T = 0;
    std::vector<int> inputs, targets;
};
// Window b starts at rng.below(tokens.size() − T): uniform over every window that fits, one
// draw per row, in row order. Needs B, T > 0 and T + 1 ≤ tokens.size().
TokenBatch sample_batch(const std::vector<int>& tokens, int B, int T, Rng& rng);

// A GPT: embeddings, attention blocks, a tied head (engine.cpp §6.2)
// The sizes of a GPT: a vocabulary of V tokens, a context of T positions (the longest input), L
// blocks, H attention heads of D/H features each, width D. GPT-2 ties the output head to the
// token embedding; tied_head = false gives the head a [V, D] matrix of its own (an experiment).
struct GPTConfig {
    int vocab, context, layers, heads, width;   // V, T, L, H, D
    bool tied_head = true;
};

// V·D + T·D + L·(12·D² + 13·D) + 2·D parameters, and V·D more for an untied head.
std::int64_t gpt_parameter_count(const GPTConfig& config);
// The FLOPs that count_flops records (engine.cpp §4.1) in one forward pass over B sequences of T
// tokens: B·T·(L·(24·D² + 2·(T + 1)·D) + 2·V·D). Backward records twice as many.
std::int64_t gpt_forward_flops(const GPTConfig& config, int B, int T);

namespace nn {

// y = gain·x̂ + bias over the last axis (layer_norm), with gain 1 and bias 0 at the start.
struct LayerNorm {
    Tensor gain, bias;
    real eps;
    explicit LayerNorm(int width, real eps = real(1e-5));
    Tensor operator()(const Tensor& x) const;
};

// One pre-norm transformer block over x [B, T, D]:
//     x = x + attention(ln1(x)),    x = x + mlp(ln2(x))
struct GPTBlock {
    LayerNorm ln1, ln2;
    Linear qkv;         // [D, 3D]: the queries, keys and values of every head, side by side
    Linear attn_proj;   // [D, D]: mixes the heads' outputs; writes into the residual stream
    Linear mlp_up;      // [D, 4D]
    Linear mlp_down;    // [4D, D]: writes into the residual stream
    int heads;
    GPTBlock(const GPTConfig& config, Rng& rng);
    Tensor operator()(const Tensor& x) const;
    Tensor self_attention(const Tensor& x) const;   // causal, multi-head
    Tensor mlp(const Tensor& x) const;              // D → 4D → GELU → D
};

// A decoder-only transformer (GPT-2's design): token and position embeddings, L blocks, a final
// LayerNorm, and logits through the token embedding (the tied head).
struct GPT {
    GPTConfig config;
    Tensor wte;   // [V, D]: one row per token; also the output head when tied
    Tensor wpe;   // [T, D]: one row per position
    std::vector<GPTBlock> blocks;
    LayerNorm ln_f;
    Tensor head;   // [V, D], only when config.tied_head is false
    GPT(const GPTConfig& config, Rng& rng);
    // ids: B sequences of T tokens, row-major [B, T], T <= context. Returns the logits
    // [B·T, V]: row b·T + t scores the token that follows position t of sequence b.
    Tensor operator()(const std::vector<int>& ids, int B, int T) const;
    // The mean cross-entropy of the B·T next-token predictions; targets are [B, T] like ids.
    Tensor loss(const std::vector<int>& ids, const std::vector<int>& targets, int B, int T) const;
    std::vector<Tensor> parameters() const;
    void to(Device device);   // every parameter moves, in place (engine.cpp Part 5)
    // "wte", "wpe", "blocks.0.ln1.gain", ..., "ln_f.bias" (and "head"): a checkpoint's names.
    std::vector<std::pair<std::string, Tensor>> named_parameters() const;
};

}   // namespace nn

// Generation with a KV cache (engine.cpp §6.3)
// The keys and values of every position a GPT has read, per layer, so that each new token costs
// one position's work: 2·L·T·D numbers when full. A cache belongs to one model's sizes.
struct KVCache {
    GPTConfig config;
    int length = 0;   // positions read: the next token goes at position `length`
    // [L][T·D]: row s holds position s's keys (values), the heads side by side
    std::vector<std::vector<real>> keys, values;
    // [L][H·length]: the last token's attention weights over positions 0 .. length − 1, by head
    std::vector<std::vector<real>> attention;
    explicit KVCache(const GPTConfig& config);
};
// Reads `token` at position cache.length (plain loops, no graph), appends its keys and values,
// and returns the V logits of the token after it: row cache.length − 1 of GPT::operator() on
// all the tokens read so far. Throws on a full cache (length = T), a token outside [0, V), or a
// cache made for other sizes.
std::vector<real> gpt_next_logits(const nn::GPT& model, KVCache& cache, int token);

// =============================================================================================
// CUDA kernels (kernels.cu): the wrappers that launch them. Every pointer is device memory
// (cudaMalloc) holding floats; forward wrappers write their outputs, backward wrappers add (+=)
// into gradients, as the CPU loops do. Without a GPU, kernels.cu runs on the CPU through
// cuda_emu.h; `make cuda` compiles it for real GPUs with nvcc. (Its memory functions, cuda_malloc
// and the copies, are declared with Device in Part 2.)
// =============================================================================================
void cuda_add_forward(const float* A, const float* B, float* Y, int n,
                      int nb);   // B: [n] or a bias row [nb]
void cuda_add_backward(const float* dY, float* dA, float* dB, int n, int nb);
void cuda_bias_grad(const float* dY, float* db, int M, int N);   // db += Σ_rows dY
void cuda_mul_forward(const float* A, const float* B, float* Y, int n);
void cuda_mul_backward(const float* A, const float* B, const float* dY, float* dA, float* dB,
                       int n);
void cuda_relu_forward(const float* X, float* Y, int n);
void cuda_gelu_forward(const float* X, float* Y, int n);
void cuda_gelu_exact_forward(const float* X, float* Y, int n);
void cuda_sigmoid_forward(const float* X, float* Y, int n);
void cuda_tanh_forward(const float* X, float* Y, int n);
void cuda_relu_backward(const float* X, const float* Y, const float* dY, float* dX, int n);
void cuda_gelu_backward(const float* X, const float* Y, const float* dY, float* dX, int n);
void cuda_gelu_exact_backward(const float* X, const float* Y, const float* dY, float* dX, int n);
void cuda_sigmoid_backward(const float* X, const float* Y, const float* dY, float* dX, int n);
void cuda_tanh_backward(const float* X, const float* Y, const float* dY, float* dX, int n);
void cuda_matmul_v1(const float* A, const float* B, float* C, int M, int K,
                    int N);   // one thread per output
void cuda_matmul_v2(const float* A, const float* B, float* C, int M, int K,
                    int N);   // shared-memory tiles
void cuda_matmul_v3(const float* A, const float* B, float* C, int M, int K,
                    int N);   // register blocking
void cuda_matmul_backward_dx(const float* dY, const float* W, float* dX, int M, int K,
                             int N);   // dX += dY·Wᵀ
void cuda_matmul_backward_dw(const float* X, const float* dY, float* dW, int M, int K,
                             int N);        // dW += Xᵀ·dY
float cuda_sum_v1(const float* X, int n);   // a tree in shared memory
float cuda_sum_v2(const float* X, int n);   // warp shuffles
void cuda_softmax_cross_entropy_forward(const float* logits, const int* labels, float* probs,
                                        float* loss, int B, int C);
void cuda_softmax_cross_entropy_backward(const float* probs, const int* labels, float* dlogits,
                                         float dloss, int B, int C);
void cuda_layer_norm_forward(const float* X, const float* gain, const float* bias, float* Y,
                             float* mean, float* rstd, int rows, int D, float eps);
void cuda_layer_norm_backward(const float* X, const float* gain, const float* mean,
                              const float* rstd, const float* dY, float* dX, float* dgain,
                              float* dbias, int rows, int D);
void cuda_adamw_update(float* W, const float* G, float* m, float* v, int n, double lr, double beta1,
                       double beta2, double eps, double weight_decay, long step);
float cuda_grad_norm(const std::vector<const float*>& grads, const std::vector<int>& sizes);
float cuda_clip_grad_norm(const std::vector<float*>& grads, const std::vector<int>& sizes,
                          float max_norm);
// The GPT's kernels (kernels.cu §10 to §13). ids are device ints; qkv is [B, T, 3D] as
// engine.cpp §4.4 lays it out, out [B, T, D], P [B·H, T, T], lse [B·H, T].
void cuda_embedding_forward(const float* table, const int* ids, float* out, int N, int D);
void cuda_embedding_backward(const float* dout, const int* ids, float* dtable, int N, int D);
void cuda_gpt_embed_forward(const float* wte, const float* wpe, const int* ids, float* x, int B,
                            int T, int D);   // x = wte[ids] + wpe[t]
void cuda_gpt_embed_backward(const float* dx, const int* ids, float* dwte, float* dwpe, int B,
                             int T, int D);
void cuda_transpose_forward(const float* X, float* Y, int batch, int R, int C);
void cuda_transpose_backward(const float* dY, float* dX, int batch, int R, int C);
void cuda_attention_naive_forward(const float* qkv, float* out, float* P, int B, int T, int D,
                                  int H);
void cuda_attention_naive_backward(const float* qkv, const float* P, const float* dout, float* dqkv,
                                   int B, int T, int D, int H);
void cuda_flash_attention_forward(const float* qkv, float* out, float* lse, int B, int T, int D,
                                  int H);
void cuda_flash_attention_backward(const float* qkv, const float* out, const float* lse,
                                   const float* dout, float* dqkv, int B, int T, int D, int H);
// Milliseconds per call of `launch` (the kernels it starts), timed with CUDA events after one
// warm-up call (kernels.cu §9). On the emulator it times the CPU running them.
double cuda_time_ms(const std::function<void()>& launch, int repeats);
bool cuda_is_emulated();   // true unless kernels.cu was compiled by nvcc

// The device side of Part 2's ops (engine.cpp Part 5). An op with a CUDA kernel calls its
// *_on_device version when its inputs live on the GPU; a program calls the op itself.
std::vector<real>
host_values(const DeviceBuffer<float>& numbers);   // device floats as real, on the CPU
void clear_grad_on_device(TensorNode* n);
void add_to_grad_on_device(TensorNode* n, const Tensor& g);
using DeviceForward = void (*)(const float* x, float* y, int n);
using DeviceBackward = void (*)(const float* x, const float* y, const float* dy, float* dx, int n);
Tensor unary_on_device(const Tensor& x, const char* op, DeviceForward f, DeviceBackward df);
Tensor add_on_device(const Tensor& a, const Tensor& b);
Tensor matmul_on_device(const Tensor& a, const Tensor& b);
Tensor linear_on_device(const Tensor& x, const Tensor& W, const Tensor& b);
Tensor reshape_on_device(const Tensor& x, const Shape& shape);
Tensor transpose_on_device(const Tensor& x);
Tensor embedding_on_device(const Tensor& table, const std::vector<int>& ids);
Tensor layer_norm_on_device(const Tensor& x, const Tensor& gain, const Tensor& bias, real eps);
Tensor causal_self_attention_on_device(const Tensor& qkv, int heads);
Tensor cross_entropy_on_device(const Tensor& logits, const std::vector<int>& labels,
                               real label_smoothing);
double grad_norm_on_device(const Tensor& p);
double clip_grad_norm_on_device(const std::vector<Tensor>& params, double max_norm);
