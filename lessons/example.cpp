// A program of your own against the engine: make run FILE=lessons/example.cpp
#include "engine.h"
#include <cstdio>

int main() {
    // Two layers with given weights. W is [in, out]: PyTorch's nn.Linear.weight transposed.
    nn::Linear hidden(Tensor({2, 3}, {0.5, -0.3, 0.8, 0.2, 0.7, -0.6}),
                      Tensor({3}, {0.1, 0, -0.1}));
    nn::Linear output(Tensor({3, 2}, {1, -1, 0.5, 0.3, -0.4, 0.9}), Tensor({2}, {0, 0.2}));
    nn::MLP model({hidden, output}, Activation::gelu_exact);   // PyTorch's nn.GELU()
    const Tensor x({2, 2}, {1, 2, -1, 0.5});                   // two examples, two features
    const std::vector<int> labels = {1, 0};
    SGD opt(model.parameters(), 0.5);
    for (int step = 0; step < 3; ++step) {
        opt.zero_grad();
        const Tensor loss = cross_entropy(model(x), labels);
        loss.backward();
        const ValuesView g = output.b.grad();
        std::printf("step %d  loss %.6f  output bias gradient [%.6f, %.6f]\n", step, loss.item(),
                    g[0], g[1]);
        opt.step();
    }
}
