// demo.cpp: `make demo`, the engine doing its job end to end.
//
// Three interleaved spirals, 200 points each: no straight line separates any two of them. An MLP
// learns the boundary with the full modern recipe:
//   He initialization (ReLU units)                        engine.cpp §2.8
//   AdamW, decoupled weight decay                         engine.cpp §2.9
//   linear warmup then cosine decay of the learning rate  engine.cpp §2.10
//   gradient clipping at a global norm of 1.0             engine.cpp §2.11
// It prints a progress line while it trains, the final accuracy, and writes two plots:
// build/plots/demo_loss.svg and build/plots/demo_decision_boundary.svg.
// `demo --cuda` runs the same loop with the model and the data on Device::CUDA (engine.cpp
// Part 5). It is meant for a GPU (`make demo-gpu`); through the emulator each step takes about
// 0.12 s (3 minutes for the run, which ends as on the CPU: loss 0.0066, accuracy 0.9967), so there
// the tests run the same loop on a tiny model instead.

#include "lesson.h"

#include <unistd.h>

// Class k's arm: radius r from 0 to 1, angle from 4k to 4k + 4 radians plus Gaussian noise, so
// each arm winds a bit more than half a turn and the three interleave.
struct Spirals {
    Tensor x;                  // [N, 2]
    std::vector<int> labels;   // N, in {0, 1, 2}
};

static Spirals make_spirals(int per_class, int classes, double noise, Rng& rng) {
    Spirals s;
    std::vector<real> xy;
    for (int k = 0; k < classes; ++k)
        for (int i = 0; i < per_class; ++i) {
            const double r = double(i) / (per_class - 1);
            const double t = 4.0 * k + 4.0 * i / (per_class - 1) + noise * rng.normal();
            xy.push_back(real(r * std::sin(t)));
            xy.push_back(real(r * std::cos(t)));
            s.labels.push_back(k);
        }
    s.x = Tensor({classes * per_class, 2}, xy);
    return s;
}

static int argmax_row(const Tensor& logits, int row) {
    const int C = logits.dim(1);
    const real* z = logits.values().data() + std::size_t(row) * C;
    return int(std::max_element(z, z + C) - z);
}

static double accuracy(nn::MLP& model, const Spirals& data) {
    const Tensor logits = model(data.x);
    int correct = 0;
    for (std::size_t i = 0; i < data.labels.size(); ++i)
        correct += argmax_row(logits, int(i)) == data.labels[i];
    return double(correct) / data.labels.size();
}

// The decision boundary: the predicted class over a grid, as coloured squares, with the data
// points on top. (Only the demo draws this, so it lives here rather than in lesson.h.)
static void save_decision_boundary(nn::MLP& model, const Spirals& data, const std::string& path) {
    const int cells = 100;
    const double lo = -1.1, hi = 1.1, size = 500, cell = size / cells;
    std::vector<real> grid;
    for (int r = 0; r < cells; ++r)
        for (int c = 0; c < cells; ++c) {
            grid.push_back(real(lo + (hi - lo) * (c + 0.5) / cells));
            grid.push_back(real(hi - (hi - lo) * (r + 0.5) / cells));
        }
    const Tensor logits = model(Tensor({cells * cells, 2}, grid));
    const char* light[] = {"#aec7e8", "#ffbb78", "#98df8a"};
    const char* dark[] = {"#1f77b4", "#ff7f0e", "#2ca02c"};
    std::ofstream f(path);
    f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << size << "' height='" << size
      << "'>\n";
    for (int r = 0; r < cells; ++r)
        for (int c = 0; c < cells; ++c)
            f << "<rect x='" << c * cell << "' y='" << r * cell << "' width='" << cell + 0.5
              << "' height='" << cell + 0.5 << "' fill='"
              << light[argmax_row(logits, r * cells + c)] << "'/>\n";
    for (std::size_t i = 0; i < data.labels.size(); ++i) {
        const double px = (data.x.values()[2 * i] - lo) / (hi - lo) * size;
        const double py = (hi - data.x.values()[2 * i + 1]) / (hi - lo) * size;
        f << "<circle cx='" << px << "' cy='" << py << "' r='3' fill='" << dark[data.labels[i]]
          << "' stroke='black' stroke-width='0.5'/>\n";
    }
    f << "</svg>\n";
    std::printf("  (plot written to %s)\n", path.c_str());
}

static int run(int argc, char** argv) {
    if (argc > 2 || (argc == 2 && std::strcmp(argv[1], "--cuda") != 0))
        throw std::invalid_argument(std::string("unknown argument '") + argv[argc - 1] +
                                    "': the only one is --cuda");
    const Device device = argc == 2 ? Device::CUDA : Device::CPU;
    Rng rng(0);
    const Spirals data = make_spirals(200, 3, 0.2, rng);
    nn::MLP model({2, 64, 64, 3}, rng, Activation::relu, Init::he_normal);
    // First the model, then the optimizer: its state is made where the parameters are.
    model.to(device);
    const Tensor batch = data.x.to(device);
    const int steps = 1500, warmup = 100;
    const double lr_max = 1e-2, lr_min = 1e-4, max_norm = 1.0;
    AdamW opt(model.parameters(), lr_max, 0.9, 0.999, 1e-8, 1e-4);
    std::printf("3-class spirals, %zu points; MLP 2-64-64-3 (%zu parameter tensors), AdamW, "
                "warmup %d then cosine to %g, clip at %g, %d full-batch steps, on %s%s\n",
                data.labels.size(), model.parameters().size(), warmup, lr_min, max_norm, steps,
                device_name(device),
                device == Device::CUDA && cuda_is_emulated() ? " (the emulator)" : "");

    const bool terminal = ::isatty(STDOUT_FILENO);   // redraw one line, or print every 100 steps
    std::vector<double> losses;
    const Clock::time_point start = Clock::now();
    for (int step = 0; step < steps; ++step) {
        opt.lr = warmup_cosine_lr(step, warmup, steps, lr_max, lr_min);
        opt.zero_grad();
        const Tensor loss = cross_entropy(model(batch), data.labels);
        loss.backward();
        const double norm = clip_grad_norm(model.parameters(), max_norm);
        opt.step();
        losses.push_back(loss.item());
        if (step % (terminal ? 10 : 100) == 0 || step == steps - 1) {
            const double seconds = seconds_since(start);
            std::printf("%sstep %5d/%d  loss %.4f  lr %.2e  grad norm %7.3f  %7.1f steps/s%s",
                        terminal ? "\r" : "", step + 1, steps, loss.item(), opt.lr, norm,
                        (step + 1) / seconds, terminal ? "" : "\n");
            std::fflush(stdout);
        }
    }
    if (terminal) std::printf("\n");

    model.to(Device::CPU);   // to evaluate and draw on the host
    model.eval();
    const double acc = accuracy(model, data);
    Plot plot("Spirals: training loss", "step", "cross-entropy", Scale::log_y);
    plot.add("loss", losses);
    plot.save("demo_loss");
    save_decision_boundary(model, data, "build/plots/demo_decision_boundary.svg");
    std::printf("final training accuracy: %.4f\n", acc);
    return acc >= 0.98 ? 0 : 1;
}

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {   // a CUDA call that failed (no GPU, say), or a bad input
        std::fprintf(stderr, "demo: %s\n", e.what());
        return 2;
    }
}
