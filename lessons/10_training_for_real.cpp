// Lesson 10: training for real. Fashion-MNIST (70,000 small photos of clothes in 10 classes)
// with every piece of lessons 04–09 in one training loop:
//
//     for each epoch:
//         shuffle the training set                          (a seeded Fisher–Yates)
//         for each mini-batch of 128 images:
//             lr ← warmup_cosine_lr(step)                   lesson 07
//             loss = cross_entropy(model(x), y)             lesson 05, the MLP of lesson 08
//             zero the gradients, loss.backward()           lesson 04
//             clip_grad_norm(params, 1.0)                   lesson 09
//             AdamW step                                    lesson 06
//         measure the validation set, save a checkpoint
//     measure the test set, once
//
// The data comes from `make data` (into data/). Without it the lesson says so and stops.
//
// Flags (after `./build/lessons/10`; `make lesson N=10` runs the first line):
//   (none)                     the main run: MLP 784-256-256-10, 3 epochs, about 5 s, with a
//                              progress line, curves in build/plots/10_*.svg, a CSV log in
//                              build/plots/10_log.csv and a checkpoint after every epoch in
//                              build/10_checkpoint.bin. The last line is `test accuracy: 0.xxxx`.
//   --stop-after N             stop the main run after epoch N, as if it had been interrupted
//   --resume                   continue the main run from build/10_checkpoint.bin
//   --experiment resume        a checkpointed run continues bit for bit like an unbroken one
//   --experiment overfit       the sanity check: the model must memorize one batch
//   --experiment lr-sweep      final loss against learning rate, 1e-1 down to 1e-5: a U
//   --experiment optimizers    AdamW, Adam + L2 and SGD + momentum, each at its tuned rate
//   --experiment clipping      a learning rate that diverges without clipping and trains with it
//   --check                    grade the homework (the same as `make check N=10`)
//   --help                     this list
// Each experiment takes a minute or less: they train on 10,000 images (2,000 for resume).
//
// Everything is seeded: two runs print the same numbers, apart from the timings.

#include "lesson.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

// What the command line asked for; main() fills it in before the lesson runs.
struct Options {
    std::string experiment;   // empty: the main run
    bool resume = false;
    int stop_after = 0;   // 0: train every epoch
};
static Options options;

// ---------------------------------------------------------------------------------------------
// 1. The data. `make data` puts four IDX files (engine.cpp §3.1) into data/: 60,000 training
// and 10,000 test images of 28×28 grey pixels, each labelled 0–9. load_idx_dataset scales the
// pixels to [0, 1] and flattens every image into a row of 784 numbers.
// We keep the last 5,000 training images apart as a validation set. Every decision made while
// training (learning rate, number of epochs, which checkpoint to keep) is judged on it; the test
// set is measured once, at the end, so its number says how the model does on images that no
// decision has seen.
// ---------------------------------------------------------------------------------------------
static const int validation_size = 5000;

struct Data {
    Dataset train, val, test;
    std::string name;
    std::vector<std::string> class_names;
};

// Rows [begin, end) of a dataset, as a dataset of their own.
static Dataset rows_of(const Dataset& d, int begin, int end) {
    if (begin < 0 || begin > end || std::size_t(end) > d.labels.size())
        throw std::runtime_error("this part of the lesson needs images " + std::to_string(begin) +
                                 " to " + std::to_string(end) + ", and the data has " +
                                 std::to_string(d.labels.size()));
    std::vector<int> rows(std::size_t(end - begin));
    std::iota(rows.begin(), rows.end(), begin);
    return {gather_rows(d.images, rows),
            std::vector<int>(d.labels.begin() + begin, d.labels.begin() + end), d.classes};
}

static std::vector<int> labels_at(const Dataset& d, const std::vector<int>& rows) {
    std::vector<int> y;
    for (int r : rows) y.push_back(d.labels[std::size_t(r)]);
    return y;
}

// MNIST and Fashion-MNIST share the file format and the file names; the first ten training
// labels tell them apart.
static void name_the_dataset(Data& data) {
    const std::vector<int> first(data.train.labels.begin(), data.train.labels.begin() + 10);
    if (first == std::vector<int>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5}) {
        data.name = "Fashion-MNIST";
        data.class_names = {"T-shirt/top", "trouser", "pullover", "dress", "coat",
                            "sandal",      "shirt",   "sneaker",  "bag",   "ankle boot"};
        return;
    }
    data.name = first == std::vector<int>{5, 0, 4, 1, 9, 2, 1, 3, 1, 4} ? "MNIST"
                                                                        : "an MNIST-format dataset";
    for (int k = 0; k < data.train.classes; ++k) data.class_names.push_back(std::to_string(k));
}

// Standardizing: x ← (x − μ)/σ, with μ and σ the mean and standard deviation of all training
// pixels. He initialization (lesson 08) assumes inputs of mean 0 and variance 1; raw pixels in
// [0, 1] have a mean near 0.29, which every first-layer unit then sees as a shared offset. The
// validation and test images get the training set's μ and σ: those two numbers are fitted on
// training data, like the weights. (Measured: the main run reaches 88.45% test accuracy on
// standardized pixels and 88.21% on raw ones; at lr 1e-3, 88.31% against 87.76%.)
static void standardize(Data& data) {
    const ValuesView x = data.train.images.values();
    double sum = 0, sum_sq = 0;
    for (real v : x) {
        sum += v;
        sum_sq += double(v) * v;
    }
    const double mean = sum / double(x.size());
    const double sd = std::sqrt(sum_sq / double(x.size()) - mean * mean);   // E[x²] − E[x]²
    for (Dataset* d : {&data.train, &data.val, &data.test})
        for (real& v : d->images.values()) v = real((v - mean) / sd);
    std::printf("Pixels standardized with the training set's mean %.4f and standard deviation "
                "%.4f.\n",
                mean, sd);
}

// Any MNIST-format set will do if it fits the model: images of 28×28 pixels for its 784 inputs,
// labels 0–9 for its 10 outputs. Checked here, with the file named, rather than deep in training.
static void check_fits_the_model(const Dataset& d, const std::string& images,
                                 const std::string& labels) {
    if (d.images.dim(1) != 784)
        throw std::runtime_error(images + ": images of " + std::to_string(d.images.dim(1)) +
                                 " pixels; the model takes 28x28 = 784");
    for (std::size_t i = 0; i < d.labels.size(); ++i)
        if (d.labels[i] > 9)
            throw std::runtime_error(labels + ": label " + std::to_string(d.labels[i]) +
                                     " at position " + std::to_string(i) +
                                     "; the model has 10 classes, 0 to 9");
}

// False (after saying what to do) when data/ is missing: the lesson then ends quietly, so that
// `make lessons` still passes on a machine without the dataset.
static bool load_data(Data& data) {
    const std::string dir = "data/";
    for (const char* f : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"})
        if (!std::ifstream(dir + f)) {
            std::printf("\nNo %s%s here: this lesson needs the dataset. Run `make data` first\n"
                        "(from the repository root, where the lesson looks for data/).\n",
                        dir.c_str(), f);
            return false;
        }
    const Clock::time_point start = Clock::now();
    const Dataset all =
        load_idx_dataset(dir + "train-images-idx3-ubyte", dir + "train-labels-idx1-ubyte");
    data.test = load_idx_dataset(dir + "t10k-images-idx3-ubyte", dir + "t10k-labels-idx1-ubyte");
    check_fits_the_model(all, dir + "train-images-idx3-ubyte", dir + "train-labels-idx1-ubyte");
    check_fits_the_model(data.test, dir + "t10k-images-idx3-ubyte", dir + "t10k-labels-idx1-ubyte");
    const int n = int(all.labels.size());
    if (n <= validation_size)
        throw std::runtime_error(dir + "train-images-idx3-ubyte holds " + std::to_string(n) +
                                 " images; the lesson keeps the last " +
                                 std::to_string(validation_size) +
                                 " for validation and needs more to train on");
    data.train = rows_of(all, 0, n - validation_size);
    data.val = rows_of(all, n - validation_size, n);
    name_the_dataset(data);
    std::printf("Data: %s from data/ (loaded in %.1f s): %zu training, %zu validation and %zu test "
                "images of %d pixels, %d classes.\n",
                data.name.c_str(), seconds_since(start), data.train.labels.size(),
                data.val.labels.size(), data.test.labels.size(), all.images.dim(1), all.classes);
    standardize(data);
    return true;
}

// ---------------------------------------------------------------------------------------------
// 2. The pieces of the loop.
// A run's state is everything that changes while it trains: the weights, the optimizer's moments
// and step count, the random generator that shuffles the data, and the step counter that drives
// the learning-rate schedule. A checkpoint has to hold all four (section 4).
// ---------------------------------------------------------------------------------------------
using MakeOptimizer = std::function<std::unique_ptr<Optimizer>(std::vector<Tensor>)>;

// MLP 784-256-256-10 with ReLU and He initialization (lesson 08): 269,322 parameters.
static nn::MLP make_model(std::uint64_t seed) {
    Rng rng(seed);
    return nn::MLP({784, 256, 256, 10}, rng, Activation::relu, Init::he_normal);
}

struct Run {
    nn::MLP model;
    std::unique_ptr<Optimizer> opt;
    Rng shuffle_rng;
    long step = 0;   // optimizer steps taken so far
    Run(std::uint64_t seed, const MakeOptimizer& make_optimizer)
        : model(make_model(seed)), opt(make_optimizer(model.parameters())), shuffle_rng(seed + 1) {}
    // What save_checkpoint and load_checkpoint read and write: names → weights, the optimizer,
    // the shuffling Rng, the step, and the settings a resumed run must share ("": one recipe).
    TrainingState state() {
        return {model.named_parameters(), {opt.get()}, {&shuffle_rng}, step, ""};
    }
};

// How a run trains. A constant learning rate is warmup 0 and lr_min = lr_max.
struct Plan {
    int batch = 128;
    long total_steps = 1;   // the length of the schedule
    long warmup = 0;
    double lr_max = 1e-3, lr_min = 1e-3;
    double clip = 0;   // clip the global gradient norm to this; 0: no clipping
};

// ⌈n/B⌉ batches: the last one may be smaller.
static long steps_per_epoch(std::size_t n, int batch) { return long((n + batch - 1) / batch); }

// The visiting order of one epoch: 0, 1, ..., n−1 shuffled by Fisher–Yates. For i from n−1 down
// to 1, swap element i with element j, j uniform in [0, i]: each of the n! orders has the same
// chance. It starts again from 0..n−1 every epoch, so the Rng's state alone decides the order,
// and a checkpoint that saves the Rng reproduces it.
static std::vector<int> epoch_order(int n, Rng& rng) {
    std::vector<int> order(std::size_t(n), 0);
    std::iota(order.begin(), order.end(), 0);
    for (int i = n - 1; i > 0; --i)
        std::swap(order[std::size_t(i)], order[rng.below(std::size_t(i) + 1)]);   // j in [0, i]
    return order;
}

// The class a row of logits [B, C] predicts: the position of its largest value.
static int predicted_class(const Tensor& logits, std::size_t row) {
    const std::size_t C = std::size_t(logits.dim(1));
    const real* z = logits.values().data() + row * C;
    return int(std::max_element(z, z + C) - z);
}

// How many rows predict their label (exercise 10.1 turns this into an accuracy).
static int count_correct(const Tensor& logits, const std::vector<int>& labels) {
    int correct = 0;
    for (std::size_t i = 0; i < labels.size(); ++i)
        correct += predicted_class(logits, i) == labels[i];
    return correct;
}

// What one step did: the loss of its batch, the learning rate it used, the global gradient
// norm before clipping, and how many of the batch the model got right before the update.
struct StepLog {
    double loss = 0, lr = 0, grad_norm = NAN;
    int correct = 0, batch = 0;
    bool finite() const { return std::isfinite(loss) && std::isfinite(grad_norm); }
};

// One training step on one batch: the five lines at the heart of every training loop.
static StepLog train_step(Run& run, const Plan& plan, const Tensor& x, const std::vector<int>& y) {
    StepLog log;
    log.lr = warmup_cosine_lr(run.step, plan.warmup, plan.total_steps, plan.lr_max, plan.lr_min);
    log.batch = int(y.size());
    run.opt->lr = log.lr;                 // 1. the schedule sets this step's learning rate
    run.opt->zero_grad();                 // 2. forget the previous batch's gradients
    const Tensor logits = run.model(x);   // 3. forward: the mean cross-entropy of the batch
    const Tensor loss = cross_entropy(logits, y);
    log.loss = loss.item();
    log.correct = count_correct(logits, y);
    ++run.step;
    if (!std::isfinite(log.loss)) return log;   // diverged (backward() refuses NaN and inf)
    loss.backward();                            // 4. dL/dθ for every parameter
    const std::vector<Tensor>& params = run.opt->params();
    log.grad_norm = plan.clip > 0 ? clip_grad_norm(params, plan.clip) : grad_norm(params);
    if (std::isfinite(log.grad_norm)) run.opt->step();   // 5. θ ← θ − update(g)
    return log;
}

// One pass over `train` in a fresh order, batch by batch (the last batch may be smaller, so every
// image is seen once per epoch). Calls on_step after each step. Stops at the first non-finite
// loss or norm and returns false.
static bool train_epoch(Run& run, const Dataset& train, const Plan& plan,
                        const std::function<void(const StepLog&)>& on_step) {
    const int n = int(train.labels.size());
    const std::vector<int> order = epoch_order(n, run.shuffle_rng);
    for (int first = 0; first < n; first += plan.batch) {
        const int last = std::min(n, first + plan.batch);
        const std::vector<int> rows(order.begin() + first, order.begin() + last);
        const StepLog log =
            train_step(run, plan, gather_rows(train.images, rows), labels_at(train, rows));
        on_step(log);
        if (!log.finite()) return false;
    }
    return true;
}

// The standard deviation s of the logits over the first 1,000 images. The loss of an untrained
// model follows from it: with C logits z drawn independently from N(0, s²), the cross-entropy
// log Σ eᶻ − z_label has expectation at most log E[Σ eᶻ] − 0 = ln C + s²/2 (Jensen's inequality;
// E[eᶻ] = e^(s²/2)), and close to it while s is small. Uniform guessing, s = 0, gives ln C.
static double logit_spread(nn::MLP& model, const Dataset& d) {
    std::vector<int> rows(1000);
    std::iota(rows.begin(), rows.end(), 0);
    const Tensor logits = model(gather_rows(d.images, rows));
    const ValuesView z = logits.values();
    double sum = 0, sum_sq = 0;
    for (real v : z) {
        sum += v;
        sum_sq += double(v) * v;
    }
    const double mean = sum / double(z.size());
    return std::sqrt(sum_sq / double(z.size()) - mean * mean);
}

// Loss, accuracy and every prediction on a whole dataset, 1,000 images at a time. Nothing is
// updated, so this is the same number whenever it is measured.
struct Eval {
    double loss = 0, accuracy = 0;
    std::vector<int> predicted;
};

static Eval evaluate(nn::MLP& model, const Dataset& d) {
    const int n = int(d.labels.size()), chunk = 1000;
    Eval e;
    long correct = 0;
    for (int first = 0; first < n; first += chunk) {
        std::vector<int> rows(std::size_t(std::min(chunk, n - first)));
        std::iota(rows.begin(), rows.end(), first);
        const std::vector<int> y = labels_at(d, rows);
        const Tensor logits = model(gather_rows(d.images, rows));
        e.loss += double(cross_entropy(logits, y).item()) * double(rows.size());   // a mean × count
        correct += count_correct(logits, y);
        for (std::size_t i = 0; i < rows.size(); ++i)
            e.predicted.push_back(predicted_class(logits, i));
    }
    e.loss /= n;
    e.accuracy = double(correct) / n;
    return e;
}

// The progress line. On a terminal '\r' returns the cursor to the start of the line, so every
// update overwrites the one before. In a file that would make one endless line, so there we
// print a whole line every 100 steps instead. The speed is the average since this process
// started training (a resumed run starts its clock again), evaluations included, so the time
// left, steps left × seconds per step, includes them too.
struct Progress {
    bool terminal = ::isatty(STDOUT_FILENO);
    Clock::time_point start = Clock::now();
    long first_step = 0, total_steps = 0;
    int batch = 0;
    bool line_open = false;

    void show(int epoch, int epochs, long step, const StepLog& s) {
        if (step % (terminal ? 5 : 100) != 0 && step != total_steps) return;
        const double elapsed = seconds_since(start), per_step = elapsed / double(step - first_step);
        const double eta = per_step * double(total_steps - step);
        std::printf("%sepoch %d/%d  step %4ld/%ld  loss %.4f  lr %.2e  |g| %6.3f  %5.0f img/s  "
                    "ETA %2d:%02d%s",
                    terminal ? "\r" : "  ", epoch, epochs, step, total_steps, s.loss, s.lr,
                    s.grad_norm, batch / per_step, int(eta) / 60, int(eta) % 60,
                    terminal ? "" : "\n");
        std::fflush(stdout);
        line_open = terminal;
    }
    void end_line() {   // before printing anything else
        if (line_open) std::printf("\n");
        line_open = false;
    }
};

// ---------------------------------------------------------------------------------------------
// 3. The main run: the recipe of the demo (make demo), on real data.
//   MLP 784-256-256-10, He init; AdamW, lr_max 2e-3, weight decay 0.01; linear warmup over 100
//   steps, then cosine decay to 2e-5 at the last step; clip the global norm at 1.0; batches of
//   128; 3 epochs of 55,000 images = 3 × 430 = 1,290 steps.
// Before the first step it checks the starting loss (see logit_spread): a wrong number there is
// a bug that no amount of training will fix. Every 100 steps it measures the validation set, so
// the curves show how well the model generalizes as it trains, not only how well it fits.
// ---------------------------------------------------------------------------------------------
static const int main_epochs = 3, main_batch = 128, eval_every = 100;
static const std::uint64_t main_seed = 10;
static const char* const checkpoint_path = "build/10_checkpoint.bin";
static const char* const log_path = "build/plots/10_log.csv";

static std::unique_ptr<Optimizer> make_adamw(std::vector<Tensor> params) {
    return std::make_unique<AdamW>(std::move(params), 2e-3, 0.9, 0.999, 1e-8, 0.01);
}

static Plan main_plan(std::size_t train_size) {
    Plan plan;
    plan.batch = main_batch;
    plan.total_steps = main_epochs * steps_per_epoch(train_size, main_batch);
    plan.warmup = 100;
    plan.lr_max = 2e-3;
    plan.lr_min = 2e-5;
    plan.clip = 1.0;
    return plan;
}

// What the main run keeps as it goes: the curves to draw, the CSV log and the progress line.
struct Logbook {
    std::vector<double> step, loss;                                // every step
    std::vector<double> eval_step, val_loss, val_acc, train_acc;   // every evaluation
    int recent_correct = 0, recent_seen = 0;   // training batches since the last evaluation
    double epoch_loss = 0;                     // sums over the current epoch
    int epoch_steps = 0, epoch_correct = 0, epoch_seen = 0;
    Progress progress;
    std::FILE* csv = nullptr;
};

// The CSV log: one row per step; the last three columns are filled at each evaluation. A fresh
// run starts the file; a resumed one appends to it (so steps that an interrupted run logged
// after its last checkpoint appear twice: the later rows are the ones the model kept).
static std::FILE* open_log(bool append) {
    ::mkdir("build", 0755);
    ::mkdir("build/plots", 0755);
    std::FILE* f = std::fopen(log_path, append ? "a" : "w");
    if (!f) throw std::runtime_error(std::string("cannot write ") + log_path);
    if (!append)
        std::fprintf(f, "step,epoch,loss,lr,grad_norm,train_acc_recent,val_loss,val_acc\n");
    return f;
}

// After every step of the main run: the progress line, a row of the log, and, when asked, an
// evaluation of the validation set.
static void record_step(Logbook& book, Run& run, const Data& data, int epoch, const StepLog& s,
                        bool evaluate_now) {
    book.step.push_back(double(run.step));
    book.loss.push_back(s.loss);
    book.recent_correct += s.correct;
    book.recent_seen += s.batch;
    book.epoch_loss += s.loss;
    book.epoch_steps += 1;
    book.epoch_correct += s.correct;
    book.epoch_seen += s.batch;
    book.progress.show(epoch + 1, main_epochs, run.step, s);
    std::fprintf(book.csv, "%ld,%d,%.6f,%.6e,%.6f,", run.step, epoch + 1, s.loss, s.lr,
                 s.grad_norm);
    if (!evaluate_now) {
        std::fprintf(book.csv, ",,\n");
        return;
    }
    const Eval val = evaluate(run.model, data.val);
    book.eval_step.push_back(double(run.step));
    book.val_loss.push_back(val.loss);
    book.val_acc.push_back(val.accuracy);
    book.train_acc.push_back(double(book.recent_correct) / book.recent_seen);
    book.recent_correct = book.recent_seen = 0;
    std::fprintf(book.csv, "%.6f,%.6f,%.6f\n", book.train_acc.back(), val.loss, val.accuracy);
}

// After each epoch: a summary line, then a checkpoint of the state at this epoch boundary.
// (The training numbers are averages over the epoch's batches, each measured just before its
// own update: a blend of the model as it was during the epoch, not of the final one.)
static void end_epoch(Logbook& book, Run& run, int epoch) {
    book.progress.end_line();
    std::printf("epoch %d: train loss %.4f, accuracy %.4f (during the epoch); validation loss "
                "%.4f, accuracy %.4f\n",
                epoch + 1, book.epoch_loss / book.epoch_steps,
                double(book.epoch_correct) / book.epoch_seen, book.val_loss.back(),
                book.val_acc.back());
    book.epoch_loss = 0;
    book.epoch_steps = book.epoch_correct = book.epoch_seen = 0;
    ::mkdir("build", 0755);
    save_checkpoint(checkpoint_path, run.state());
    std::printf("  (checkpoint at step %ld written to %s)\n", run.step, checkpoint_path);
}

static void draw_curves(const Logbook& book) {
    Plot loss("Fashion-MNIST MLP: loss", "step", "cross-entropy", Scale::log_y);
    loss.add("training batch", book.step, book.loss);
    loss.add("validation", book.eval_step, book.val_loss);
    loss.save("10_loss");
    Plot acc("Fashion-MNIST MLP: accuracy", "step", "accuracy");
    acc.add("training (recent)", book.eval_step, book.train_acc);
    acc.add("validation", book.eval_step, book.val_acc);
    acc.save("10_accuracy");
    std::printf("  (log written to %s)\n", log_path);
}

// Per class: accuracy, and the class it is most often mistaken for.
static void print_per_class(const Data& data, const Eval& test) {
    const std::size_t C = std::size_t(data.test.classes);
    std::vector<std::vector<int>> confusion(C, std::vector<int>(C, 0));   // [true][predicted]
    for (std::size_t i = 0; i < test.predicted.size(); ++i)
        ++confusion[std::size_t(data.test.labels[i])][std::size_t(test.predicted[i])];
    std::printf("%-12s  %8s  %s\n", "class", "accuracy", "most often mistaken for");
    for (std::size_t k = 0; k < C; ++k) {
        const std::vector<int>& row = confusion[k];
        std::size_t worst = k == 0 ? 1 : 0;
        for (std::size_t j = 0; j < C; ++j)
            if (j != k && row[j] > row[worst]) worst = j;
        const int total = std::accumulate(row.begin(), row.end(), 0);
        std::printf("%-12s  %8.3f  %s (%d of %d)\n", data.class_names[k].c_str(),
                    double(row[k]) / total, data.class_names[worst].c_str(), row[worst], total);
    }
}

// Before the first step: the loss of the untrained model, against what it should be.
static void check_initial_loss(Run& run, const Data& data) {
    const Eval before = evaluate(run.model, data.val);
    const double s = logit_spread(run.model, data.val);
    std::printf("Before training: validation loss %.4f, accuracy %.4f. The logits' spread is "
                "s = %.2f, so expect\na little under ln 10 + s^2/2 = %.2f. A loss far from that, "
                "or NaN, is a bug to fix first.\n",
                before.loss, before.accuracy, s, std::log(10.0) + s * s / 2);
}

// Loads the main run's checkpoint into `run`: weights, AdamW's moments and step count, the
// shuffling Rng and the step. load_checkpoint is all or nothing: a missing, damaged or foreign
// file throws before anything in `run` changes, and we say why instead of training.
static void resume_from_checkpoint(Run& run) {
    TrainingState state = run.state();
    try {
        load_checkpoint(checkpoint_path, state);
    } catch (const std::runtime_error& e) {   // ends the lesson, with exit code 1
        throw std::runtime_error(std::string("cannot resume: ") + e.what() +
                                 "\n(Run without --resume first; "
                                 "it writes a checkpoint after every epoch.)");
    }
    run.step = state.step;
}

static void main_run(const Data& data) {
    const Clock::time_point start = Clock::now();
    const Plan plan = main_plan(data.train.labels.size());
    const long per_epoch = steps_per_epoch(data.train.labels.size(), plan.batch);
    Run run(main_seed, make_adamw);
    heading("The main run: MLP 784-256-256-10, AdamW, warmup + cosine, clip 1.0");
    std::printf("%d epochs of %ld steps (batch %d), lr up to %g over %ld steps then cosine down to "
                "%g, weight decay 0.01.\n",
                main_epochs, per_epoch, plan.batch, plan.lr_max, plan.warmup, plan.lr_min);
    if (plan.total_steps < plan.warmup)
        throw std::runtime_error(std::to_string(data.train.labels.size()) +
                                 " training images make " + std::to_string(plan.total_steps) +
                                 " steps, fewer than the " + std::to_string(plan.warmup) +
                                 " steps of warmup: the main run needs more data");
    if (options.resume) {
        resume_from_checkpoint(run);
        std::printf("Resumed from %s at step %ld (the end of epoch %ld).\n", checkpoint_path,
                    run.step, run.step / per_epoch);
    } else {
        check_initial_loss(run, data);
    }
    std::printf("\n");

    Logbook book;
    book.progress.first_step = run.step;
    book.progress.total_steps = plan.total_steps;
    book.progress.batch = plan.batch;
    book.csv = open_log(options.resume);
    for (int epoch = int(run.step / per_epoch); epoch < main_epochs; ++epoch) {
        const bool finite = train_epoch(run, data.train, plan, [&](const StepLog& s) {
            const bool evaluate_now = run.step % eval_every == 0 || run.step % per_epoch == 0;
            record_step(book, run, data, epoch, s, evaluate_now && s.finite());
        });
        if (!finite) {
            book.progress.end_line();
            std::printf("The loss or gradient norm became NaN or inf at step %ld; stopping.\n",
                        run.step);
            std::fclose(book.csv);
            return;
        }
        end_epoch(book, run, epoch);
        if (options.stop_after == epoch + 1 && epoch + 1 < main_epochs) {
            std::fclose(book.csv);
            std::printf(
                "\nStopped after epoch %d as asked. `./build/lessons/10 --resume` finishes "
                "the run, with the same\nresult as an uninterrupted one, to the last digit.\n",
                epoch + 1);
            return;
        }
    }
    std::fclose(book.csv);
    if (!book.step.empty()) draw_curves(book);

    heading("The test set, measured once");
    const Eval test = evaluate(run.model, data.test);
    print_per_class(data, test);
    std::printf("\ntest loss %.4f; total time %.0f s (this process)\n", test.loss,
                seconds_since(start));
    std::printf("test accuracy: %.4f\n", test.accuracy);
}

// ---------------------------------------------------------------------------------------------
// 4. Experiments. Each trains fresh runs on the first 10,000 training images and measures the
// validation set, small enough to finish in about a minute.
// ---------------------------------------------------------------------------------------------
static const int small_size = 10000;

struct Result {
    std::vector<double> loss, grad_norm;   // every step, until the end or the first non-finite
    long diverged_at = -1;                 // the step with a NaN/inf loss or norm, or −1
    Eval val;
    double seconds = 0;
};

// A fresh run (model and shuffle from `seed`) for `epochs` epochs of `train` under `plan`;
// plan.total_steps is set to the whole run.
static Result train_fresh(const Data& data, const Dataset& train, const MakeOptimizer& make,
                          Plan plan, int epochs, std::uint64_t seed = 10) {
    const Clock::time_point start = Clock::now();
    plan.total_steps = epochs * steps_per_epoch(train.labels.size(), plan.batch);
    Run run(seed, make);
    Result r;
    for (int epoch = 0; epoch < epochs && r.diverged_at < 0; ++epoch)
        train_epoch(run, train, plan, [&](const StepLog& s) {
            r.loss.push_back(s.loss);
            r.grad_norm.push_back(s.grad_norm);
            if (!s.finite()) r.diverged_at = run.step - 1;
        });
    r.val = evaluate(run.model, data.val);
    r.seconds = seconds_since(start);
    return r;
}

// Mean of the last k entries (the end of a noisy per-batch curve).
static double tail_mean(const std::vector<double>& v, std::size_t k) {
    k = std::min(k, v.size());
    return std::accumulate(v.end() - long(k), v.end(), 0.0) / double(k);
}

// The same at every point: entry i is the mean of entries i−k+1 ... i (fewer at the start),
// kept as a running sum that gains v[i] and loses v[i − k].
static std::vector<double> moving_average(const std::vector<double>& v, std::size_t k) {
    std::vector<double> out;
    double sum = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
        sum += v[i] - (i >= k ? v[i - k] : 0.0);
        out.push_back(sum / double(std::min(i + 1, k)));
    }
    return out;
}

// 4a. Resuming. Three runs on 2,000 images, 2 epochs of 16 steps each:
//   A  trains both epochs without a break;
//   B  trains epoch 1, saves a checkpoint, and is thrown away; a new run built from another seed
//      (other weights, other shuffle) loads the checkpoint and trains epoch 2;
//   C  as B, but only the weights are carried over: AdamW's m and v start again from 0 and the
//      data order comes from the new run's own Rng.
// B must equal A exactly: every number that shapes the future was saved. C drifts away.
static void experiment_resume(const Data& data) {
    heading("Experiment: resuming from a checkpoint is bit-identical");
    const Dataset train = rows_of(data.train, 0, 2000);
    Plan plan = main_plan(train.labels.size());
    plan.total_steps = 2 * steps_per_epoch(train.labels.size(), plan.batch);
    plan.warmup = 5;
    const std::string path = "build/10_resume_demo.bin";
    auto record = [](std::vector<double>& into) {   // an on_step that keeps the losses
        return [&into](const StepLog& s) { into.push_back(s.loss); };
    };

    std::vector<double> a, b, c, ignored;
    Run unbroken(main_seed, make_adamw);
    train_epoch(unbroken, train, plan, record(ignored));
    train_epoch(unbroken, train, plan, record(a));

    Run first_half(main_seed, make_adamw);
    train_epoch(first_half, train, plan, record(ignored));
    ::mkdir("build", 0755);
    save_checkpoint(path, first_half.state());

    Run resumed(main_seed + 99, make_adamw);   // different weights and shuffle, until the load
    TrainingState state = resumed.state();
    load_checkpoint(path, state);
    resumed.step = state.step;
    train_epoch(resumed, train, plan, record(b));

    Run weights_only(main_seed + 99, make_adamw);
    for (std::size_t k = 0; k < first_half.opt->params().size(); ++k)
        weights_only.opt->params()[k].values() = first_half.opt->params()[k].values();
    weights_only.step = first_half.step;   // keep the schedule in step; lose moments and order
    train_epoch(weights_only, train, plan, record(c));

    std::printf("The checkpoint after epoch 1 (step %ld): %ld bytes.\nLosses of epoch 2:\n",
                first_half.step,
                long(std::ifstream(path, std::ios::binary | std::ios::ate).tellg()));
    std::printf("%5s  %12s  %12s  %14s\n", "step", "A unbroken", "B resumed", "C weights only");
    int equal = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        equal += a[i] == b[i];
        std::printf("%5zu  %12.8f  %12.8f  %14.8f\n", std::size_t(first_half.step) + i + 1, a[i],
                    b[i], c[i]);
    }
    std::printf(
        "B equals A bit for bit at %d of %zu steps. C differs from the first step: AdamW's\n"
        "moments restarted (its first steps have length about lr, lesson 06) and the data\n"
        "came in another order.\n",
        equal, a.size());
}

// 4b. Overfit one batch. Before a long run, train on a single batch of 128 images again and
// again: a working model, loss and optimizer drive its loss towards 0 (the model has 2,000 times
// more parameters than the batch has images). A loss that stalls well above 0 means a bug: the
// labels do not match the images, the gradients are not zeroed, the update has the wrong sign.
// Weight decay is off here: the goal is to memorize.
static void experiment_overfit(const Data& data) {
    heading("Experiment: overfit one batch (the first sanity check)");
    const Dataset batch = rows_of(data.train, 0, 128);
    Plan plan;
    plan.lr_max = plan.lr_min = 1e-3;
    plan.clip = 1.0;
    const MakeOptimizer adamw = [](std::vector<Tensor> p) {
        return std::make_unique<AdamW>(std::move(p), 1e-3, 0.9, 0.999, 1e-8, 0.0);
    };
    Run run(main_seed, adamw);
    std::vector<double> losses;
    int correct = 0;
    std::printf("%5s  %10s  %9s\n", "step", "loss", "accuracy");
    for (int step = 1; step <= 200; ++step) {
        const StepLog s = train_step(run, plan, batch.images, batch.labels);   // the same batch
        losses.push_back(s.loss);
        correct = s.correct;
        if (step <= 5 || step % 25 == 0)
            std::printf("%5d  %10.6f  %4d/128\n", step, s.loss, s.correct);
    }
    std::printf("Loss %.2e after 200 steps, %d of 128 right: the loop can learn. (Validation\n"
                "accuracy of this model: %.3f. Memorizing 128 images is not learning the task.)\n",
                losses.back(), correct, evaluate(run.model, data.val).accuracy);
    Plot plot("Overfitting one batch of 128", "step", "cross-entropy", Scale::log_y);
    plot.add("same batch every step", losses);
    plot.save("10_overfit");
}

// 4c. The learning-rate sweep. AdamW at a constant learning rate, one epoch of 10,000 images
// (79 steps), clipping at 1.0, for lr = 1e-1, 3e-2, ..., 1e-5. Too small, and the weights hardly
// move in 79 steps. Too large, and every step overshoots: the loss stays high, and at 1e-1 the
// model collapses to one answer for every image (loss ln 10, accuracy 10%). The final loss
// against log(lr) is a U.
// Its bottom is broad: a factor of 3 either side of the best rate costs little, which is why a
// rough sweep is enough. The main run peaks at 2e-3, above this sweep's best constant rate,
// because its schedule spends most of the run well below the peak.
static void experiment_lr_sweep(const Data& data) {
    heading("Experiment: learning-rate sweep (AdamW, constant lr, 1 epoch of 10,000 images)");
    const Dataset train = rows_of(data.train, 0, small_size);
    std::vector<double> lrs, finals, val_losses;
    std::printf("%8s  %16s  %15s  %12s\n", "lr", "final train loss", "validation loss",
                "val accuracy");
    for (double lr : {1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5}) {
        Plan plan;
        plan.lr_max = plan.lr_min = lr;
        plan.clip = 1.0;
        const Result r = train_fresh(data, train, make_adamw, plan, 1);
        const double final_loss = r.diverged_at >= 0 ? INFINITY : tail_mean(r.loss, 10);
        lrs.push_back(lr);
        finals.push_back(final_loss);
        val_losses.push_back(r.val.loss);
        std::printf("%8.0e  %16.4f  %15.4f  %12.4f\n", lr, final_loss, r.val.loss, r.val.accuracy);
    }
    const auto best = std::min_element(val_losses.begin(), val_losses.end()) - val_losses.begin();
    std::printf("(Final train loss: the mean of the last 10 batches.) Lowest validation loss at lr "
                "%g.\n",
                lrs[std::size_t(best)]);
    Plot plot("Loss after one epoch against the learning rate", "learning rate", "loss",
              Scale::log_log);
    plot.add("training", lrs, finals);
    plot.add("validation", lrs, val_losses);
    plot.save("10_lr_sweep");
}

// 4d. Optimizers, each at its own best peak learning rate: the one with the lowest validation
// loss in a sweep of this same experiment (AdamW and Adam over 3e-4 ... 5e-3, SGD over 0.03 ...
// 0.3; not repeated here, it takes two minutes). All three share everything else: 2 epochs of
// 10,000 images, 20 warmup steps then cosine to lr/100, clipping at 1.0.
//   AdamW  lr 2e-3, decoupled weight decay 0.01:  w ← w − lr·0.01·w, then the Adam step
//   Adam   lr 2e-3, L2 0.01 added to the gradient: g ← g + 0.01·w, then the Adam step
//   SGD    lr 0.1, momentum 0.9
// With the same λ, L2 inside Adam costs accuracy: its pull 0.01·w is divided by √v̂ like the
// rest of the gradient, so it is strong on weights with small gradients (lesson 06). SGD with
// momentum, once its rate is tuned, is a close match for AdamW on a problem this small; Adam's
// advantage is that one rate works across very different gradient scales.
static void experiment_optimizers(const Data& data) {
    heading("Experiment: AdamW, Adam + L2 and SGD + momentum (2 epochs of 10,000 images)");
    const Dataset train = rows_of(data.train, 0, small_size);
    struct Entry {
        const char *name, *label;   // for the table, for the plot
        double lr;
        MakeOptimizer make;
    };
    const std::vector<Entry> entries = {
        {"AdamW lr 2e-3, wd 0.01", "AdamW", 2e-3, make_adamw},
        {"Adam lr 2e-3, L2 0.01", "Adam + L2", 2e-3,
         [](std::vector<Tensor> p) {
             return std::make_unique<Adam>(std::move(p), 2e-3, 0.9, 0.999, 1e-8, 0.01);
         }},
        {"SGD lr 0.1, momentum 0.9", "SGD + momentum", 0.1,
         [](std::vector<Tensor> p) { return std::make_unique<SGD>(std::move(p), 0.1, 0.9); }},
    };
    Plot plot("Training loss by optimizer (mean of 10 batches)", "step", "cross-entropy",
              Scale::log_y);
    std::printf("%-26s  %16s  %15s  %12s  %8s\n", "optimizer", "final train loss",
                "validation loss", "val accuracy", "time");
    for (const Entry& e : entries) {
        Plan plan;
        plan.warmup = 20;
        plan.lr_max = e.lr;
        plan.lr_min = e.lr / 100;
        plan.clip = 1.0;
        const Result r = train_fresh(data, train, e.make, plan, 2);
        std::printf("%-26s  %16.4f  %15.4f  %12.4f  %6.1f s\n", e.name, tail_mean(r.loss, 10),
                    r.val.loss, r.val.accuracy, r.seconds);
        plot.add(e.label, moving_average(r.loss, 10));
    }
    std::printf("(Final train loss: the mean of the last 10 batches.) AdamW and Adam + L2 differ "
                "only in where\nthe decay 0.01 enters; SGD needed a rate 50 times larger than "
                "Adam's to keep up.\n");
    plot.save("10_optimizers");
}

// 4e. Clipping. Plain SGD (no momentum) at lr 1.5 for one epoch of 10,000 images, without and
// with clip_grad_norm(1.0), and at a sensible lr 0.1 for comparison. Without clipping, one large
// gradient gives a large step, which gives a larger loss and a larger gradient: within a few
// steps the loss is inf or NaN, and the run stops there. With clipping no step can be longer
// than lr × 1.0, so the run survives and trains, if less well than at a good learning rate.
static void experiment_clipping(const Data& data) {
    heading("Experiment: a learning rate too high, with and without clipping (SGD, lr 1.5)");
    const Dataset train = rows_of(data.train, 0, small_size);
    const MakeOptimizer sgd = [](std::vector<Tensor> p) {
        return std::make_unique<SGD>(std::move(p), 0.1);   // no momentum; lr is set every step
    };
    Plan plan;   // the schedule sets the learning rate of every step
    plan.lr_max = plan.lr_min = 0.1;
    const Result sensible = train_fresh(data, train, sgd, plan, 1);
    plan.lr_max = plan.lr_min = 1.5;
    const Result wild = train_fresh(data, train, sgd, plan, 1);
    plan.clip = 1.0;
    const Result clipped = train_fresh(data, train, sgd, plan, 1);
    std::printf("%5s  %12s  %12s  %12s  %12s\n", "", "no clipping", "", "clip 1.0", "");
    std::printf("%5s  %12s  %12s  %12s  %12s\n", "step", "loss", "|g|", "loss", "|g| before");
    for (std::size_t i = 0; i < clipped.loss.size(); ++i) {
        const bool near_end = wild.diverged_at >= 0 && long(i) <= wild.diverged_at;
        if (i >= 10 && i % 10 != 0 && i + 1 != clipped.loss.size() && !near_end) continue;
        if (i < wild.loss.size())
            std::printf("%5zu  %12.4g  %12.4g", i + 1, wild.loss[i], wild.grad_norm[i]);
        else std::printf("%5zu  %12s  %12s", i + 1, "-", "-");
        std::printf("  %12.4f  %12.4f\n", clipped.loss[i], clipped.grad_norm[i]);
    }
    if (wild.diverged_at >= 0)
        std::printf("Without clipping the loss or norm became non-finite at step %ld; the run "
                    "stopped there.\n",
                    wild.diverged_at + 1);
    else
        std::printf("Without clipping this run did not diverge (validation accuracy %.4f).\n",
                    wild.val.accuracy);
    std::printf("With clipping: validation accuracy %.4f after %zu steps (lr 0.1 without clipping: "
                "%.4f).\n",
                clipped.val.accuracy, clipped.loss.size(), sensible.val.accuracy);
    Plot plot("Plain SGD, too high a learning rate", "step", "cross-entropy (batch)", Scale::log_y);
    plot.add("lr 1.5", wild.loss);
    plot.add("lr 1.5, clip at 1.0", clipped.loss);
    plot.add("lr 0.1", sensible.loss);
    plot.save("10_clipping");
    Plot zoom("The two runs that survive (mean of 10 batches)", "step", "cross-entropy",
              Scale::log_y);
    zoom.add("lr 1.5, clip at 1.0", moving_average(clipped.loss, 10));
    zoom.add("lr 0.1", moving_average(sensible.loss, 10));
    zoom.save("10_clipping_survivors");
}

struct Experiment {
    const char* name;
    void (*run)(const Data&);
};
static const Experiment experiments[] = {
    {"resume", experiment_resume},     {"overfit", experiment_overfit},
    {"lr-sweep", experiment_lr_sweep}, {"optimizers", experiment_optimizers},
    {"clipping", experiment_clipping},
};

static void lesson() {
    std::printf("Lesson 10: training for real\n");
    Data data;
    if (!load_data(data)) return;
    if (options.experiment.empty()) return main_run(data);
    for (const Experiment& e : experiments)
        if (options.experiment == e.name) e.run(data);
}

// ---- Homework --------------------------------------------------------------------------------

// 10.1  Accuracy from logits [B, C] and B labels: the fraction of rows whose largest logit is at
// the row's label. When a row's largest value occurs more than once, the prediction is the first
// (lowest) such class. Throw std::invalid_argument if logits is not rank 2, if B is 0, or if B
// differs from labels.size().
double accuracy(const Tensor& logits, const std::vector<int>& labels) {
    // BEGIN EXERCISE 10.1
    throw not_implemented("10.1");
    // END EXERCISE
}

// 10.2  Throughput and time left, from the recent past only. step_end[k] is the time (seconds
// since training started) at which step k + 1 finished, so n = step_end.size() steps are done.
// Using the last w = min(window, n) steps:
//     seconds per step  s = (step_end[n − 1] − step_end[n − 1 − w]) / w,   where step_end[−1] = 0
//     examples per second = batch_size / s,     seconds left = (total_steps − n) · s
// (The main run's progress line averages over all its steps instead; a window follows a machine
// that slows down, or speeds up, within a few steps.) Throw std::invalid_argument if step_end is
// empty or window < 1.
struct Throughput {
    double examples_per_second, seconds_left;
};
Throughput throughput(const std::vector<double>& step_end, int batch_size, long total_steps,
                      int window) {
    // BEGIN EXERCISE 10.2
    throw not_implemented("10.2");
    // END EXERCISE
}

// 10.3  Early stopping. val_loss[e] is the validation loss after epoch e (e = 0, 1, ...). Epoch
// e improves if val_loss[e] < best − min_delta, where best is the loss of the last epoch that
// improved (epoch 0 always improves). Training stops after the first epoch that completes
// `patience` epochs in a row without improvement. Return the epoch after which to stop (−1 if
// that never happens within val_loss) and the last epoch that improved: the checkpoint to keep.
// Throw std::invalid_argument if val_loss is empty or patience < 1.
struct EarlyStop {
    int stop_epoch, best_epoch;
};
EarlyStop early_stopping(const std::vector<double>& val_loss, int patience, double min_delta) {
    // BEGIN EXERCISE 10.3
    throw not_implemented("10.3");
    // END EXERCISE
}

static int check_homework() {
    Homework hw("10");

    hw.check("10.1", "accuracy from logits (argmax, ties to the lowest class)",
             "accuracy = #{i : argmax_c z_ic = label_i} / B, a tie going to the lowest c: "
             "only a strictly larger value moves the argmax",
             [] {
                 // Hand-made: row 0 predicts 2, row 1 ties classes 0 and 3 (→ 0), row 2 predicts 1.
                 const Tensor logits({3, 4}, {0.1f, -1, 2.5f, 0, 3, 1, 2, 3, -2, 5, 4, 4.5f});
                 expect_near("labels {2, 0, 1}: all right", accuracy(logits, {2, 0, 1}), 1.0, 0);
                 expect_near("labels {2, 3, 1}: the tie goes to class 0",
                             accuracy(logits, {2, 3, 1}), 2.0 / 3, 1e-12);
                 expect_near("labels {0, 1, 3}: none right", accuracy(logits, {0, 1, 3}), 0.0, 0);
                 // Random rows with a planted maximum: row i's largest logit is at class
                 // planted[i] by construction, and the label equals it for every third row.
                 Rng rng(101);
                 const int B = 300, C = 7;
                 std::vector<real> z(std::size_t(B * C));
                 std::vector<int> labels;
                 for (int i = 0; i < B; ++i) {
                     const int planted = int(rng.below(C));
                     for (int c = 0; c < C; ++c)
                         z[std::size_t(i * C + c)] = real(rng.uniform(-3, 3));
                     z[std::size_t(i * C + planted)] = 4;   // above every other value in the row
                     labels.push_back(i % 3 == 0 ? planted : (planted + 1 + i % (C - 1)) % C);
                 }
                 expect_near("300 random rows, 100 right", accuracy(Tensor({B, C}, z), labels),
                             100.0 / 300, 1e-12);
                 expect_true("3 rows and 2 labels throw std::invalid_argument",
                             throws_invalid_argument([&] {
                                 accuracy(logits, {0, 1});
                             }));
                 expect_true("rank-1 logits throw std::invalid_argument",
                             throws_invalid_argument([] {
                                 accuracy(Tensor({3}), {0, 1, 2});
                             }));
             });

    hw.check("10.2", "examples per second and time left over a window of steps",
             "seconds per step s = (t_n − t_(n−w)) / w, w = min(window, n), t_k = end of step k, "
             "t_0 = 0; examples/s = batch_size/s, time left = (total − n)·s",
             [] {
                 // A steady 0.05 s per step: 40 of 100 steps done, batch 128.
                 std::vector<double> t;
                 for (int k = 1; k <= 40; ++k) t.push_back(0.05 * k);
                 Throughput r = throughput(t, 128, 100, 10);
                 expect_near("steady: 128 / 0.05 examples/s", r.examples_per_second, 2560, 1e-9);
                 expect_near("steady: 60 steps left x 0.05 s", r.seconds_left, 3.0, 1e-9);
                 // Then 10 slow steps of 0.2 s each: 50 of 100 steps done.
                 for (int k = 1; k <= 10; ++k) t.push_back(2.0 + 0.2 * k);
                 r = throughput(t, 128, 100, 10);
                 expect_near("window 10 sees only the slow steps: 128 / 0.2", r.examples_per_second,
                             640, 1e-9);
                 expect_near("window 10: 50 steps left x 0.2 s", r.seconds_left, 10.0, 1e-9);
                 r = throughput(t, 128, 100, 20);
                 expect_near("window 20: (10 x 0.05 + 10 x 0.2) / 20 = 0.125 s per step",
                             r.examples_per_second, 128 / 0.125, 1e-9);
                 r = throughput(t, 128, 100, 1000);
                 expect_near("a window longer than the run uses all 50 steps: 4 s / 50",
                             r.examples_per_second, 128 / 0.08, 1e-9);
                 r = throughput({0.5}, 64, 1, 5);
                 expect_near("one step of 0.5 s: 128 examples/s", r.examples_per_second, 128, 1e-9);
                 expect_near("nothing left", r.seconds_left, 0, 0);
                 expect_true("no steps yet throws std::invalid_argument",
                             throws_invalid_argument([] { throughput({}, 128, 10, 5); }));
                 expect_true("window 0 throws std::invalid_argument",
                             throws_invalid_argument([] { throughput({1.0}, 128, 10, 0); }));
             });

    hw.check(
        "10.3", "early stopping with patience and min_delta",
        "epoch e improves iff L_e < best − min_delta, best = the loss of the last improving epoch "
        "(not the previous one); stop at the first e with e − best_epoch = patience",
        [] {
            const std::vector<double> curve = {1.0, 0.8, 0.7, 0.71, 0.72, 0.69, 0.75, 0.76, 0.77};
            EarlyStop s = early_stopping(curve, 2, 0);
            expect_near("patience 2: epochs 3 and 4 fail, stop after 4", s.stop_epoch, 4, 0);
            expect_near("patience 2: keep epoch 2", s.best_epoch, 2, 0);
            s = early_stopping(curve, 3, 0);
            expect_near("patience 3: epoch 5 improves, 6-8 fail, stop after 8", s.stop_epoch, 8, 0);
            expect_near("patience 3: keep epoch 5", s.best_epoch, 5, 0);
            s = early_stopping(curve, 4, 0);
            expect_near("patience 4: never stops", s.stop_epoch, -1, 0);
            expect_near("patience 4: keep epoch 5", s.best_epoch, 5, 0);
            // min_delta: 0.89 and 0.885 are lower than 0.9, but not by more than 0.02.
            s = early_stopping({1.0, 0.9, 0.89, 0.885, 0.7}, 2, 0.02);
            expect_near("min_delta 0.02: stop after epoch 3", s.stop_epoch, 3, 0);
            expect_near("min_delta 0.02: keep epoch 1", s.best_epoch, 1, 0);
            // An epoch lower by less than min_delta does not become the best: 0.87 is
            // measured against 0.9 (an improvement of 0.03), not against 0.885.
            s = early_stopping({1.0, 0.9, 0.885, 0.87}, 3, 0.02);
            expect_near("min_delta 0.02: 0.87 improves on 0.9", s.best_epoch, 3, 0);
            expect_near("min_delta 0.02, patience 3: no stop", s.stop_epoch, -1, 0);
            s = early_stopping({1.0, 0.9, 0.89, 0.885, 0.7}, 2, 0);
            expect_near("min_delta 0: every epoch improves", s.stop_epoch, -1, 0);
            expect_near("min_delta 0: keep the last epoch", s.best_epoch, 4, 0);
            // With min_delta = 0, a direct definition: the best epoch up to e is the first
            // position of the minimum of val_loss[0..e], and training stops at the first e
            // that is `patience` or more epochs past it.
            Rng rng(103);
            for (int trial = 0; trial < 200; ++trial) {
                std::vector<double> v;
                for (int e = 0; e < 25; ++e)   // a falling curve with noise
                    v.push_back(1.0 / (1 + e) + 0.1 * double(rng.below(4)));
                const int patience = 1 + int(rng.below(5));
                int stop = -1, best = 0;
                for (int e = 0; e < 25 && stop < 0; ++e) {
                    best = int(std::min_element(v.begin(), v.begin() + e + 1) - v.begin());
                    if (e - best >= patience) stop = e;
                }
                s = early_stopping(v, patience, 0);
                expect_near("random curve: stop epoch", s.stop_epoch, stop, 0);
                expect_near("random curve: best epoch", s.best_epoch, best, 0);
            }
            expect_true("an empty curve throws std::invalid_argument",
                        throws_invalid_argument([] { early_stopping({}, 2, 0); }));
            expect_true("patience 0 throws std::invalid_argument",
                        throws_invalid_argument([] { early_stopping({1.0}, 0, 0); }));
        });

    return hw.finish();
}

// ---- The command line ------------------------------------------------------------------------

static void print_usage() {
    std::printf(
        "usage: ./build/lessons/10 [--stop-after N] [--resume]  |  --experiment NAME  |  --check\n"
        "  (no flags)               the main run: 3 epochs of Fashion-MNIST, about 5 s\n"
        "  --stop-after N           stop the main run after epoch N (try --resume next)\n"
        "  --resume                 continue the main run from %s\n"
        "  --experiment resume      resuming from a checkpoint is bit-identical\n"
        "  --experiment overfit     the model must memorize one batch\n"
        "  --experiment lr-sweep    final loss against learning rate (a U)\n"
        "  --experiment optimizers  AdamW vs Adam + L2 vs SGD + momentum\n"
        "  --experiment clipping    too high a learning rate, with and without clipping\n"
        "  --check                  grade the homework\n",
        checkpoint_path);
}

// Fills `options`; returns −1 to go on, or the exit status (0 after --help, 2 on a bad flag).
static int parse_options(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        const bool has_value = i + 1 < argc;
        if (arg == "--help" || arg == "-h") {
            print_usage();
            return 0;
        } else if (arg == "--resume") {
            options.resume = true;
        } else if (arg == "--stop-after" && has_value && std::atoi(argv[i + 1]) > 0) {
            options.stop_after = std::atoi(argv[++i]);
        } else if (arg == "--experiment" && has_value) {
            options.experiment = argv[++i];
            bool known = false;
            for (const Experiment& e : experiments) known = known || options.experiment == e.name;
            if (!known) {
                std::printf("unknown experiment '%s'\n", options.experiment.c_str());
                print_usage();
                return 2;
            }
        } else {
            std::printf("unknown or incomplete flag '%s'\n", arg.c_str());
            print_usage();
            return 2;
        }
    }
    if (!options.experiment.empty() && (options.resume || options.stop_after > 0)) {
        std::printf("--resume and --stop-after belong to the main run, not to an experiment\n");
        return 2;
    }
    return -1;
}

int main(int argc, char** argv) {
    return run_lesson(argc, argv, parse_options, lesson, check_homework);
}
