// Lesson 15: a GPT, written and trained from scratch. Every earlier lesson in one program: text
// becomes tokens, a decoder-only transformer (engine.cpp §6.2: embeddings, causal attention,
// layer norm, GELU, an output head tied to the embedding) learns to predict each next token, the
// training loop of lesson 10 trains it, and at the end it writes text of its own.
//
// The recipe is nanoGPT's "baby GPT" on a CPU (its README's Shakespeare settings for a laptop),
// here on the fortunes, Debian's collection of jokes, quotes and riddles:
//     tokens: bytes (V = 114)     L = 4 blocks, H = 4 heads, D = 128, context T = 64
//     batches of 12 windows, 2,000 steps, no dropout
//     AdamW, lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on the matrices only (section 3)
//     warmup over 100 steps, then cosine down to 1e-4; the global gradient norm clipped at 1.0
//
//   1. The data: the corpus, its 114-byte vocabulary, the split, and one batch shown as text.
//   2. The model: its parameters, counted three ways; its FLOPs per token; the loss at init.
//   3. Training: a progress line every 100 steps (loss, lr, gradient norm, tokens/s, MFU), the
//      validation loss every 200, and both curves in build/plots/15_loss.svg.
//   4. Sampling: text from the prompt "Q: ", with a temperature and top-k.
// The last line is `val loss: X.XXXX`, the final validation loss.
//
// Time, measured on a quiet 2-core AMD EPYC: the 2,000 steps take 4.5 to 5 minutes (0.13 to
// 0.14 s a step), and the 11 evaluations of 200 batches 2 more: about 7 minutes in all, ending at
// a validation loss of 2.011. That is far slower than the 2 minutes this course aims at: making
// the step faster is the next piece of work, not done here. `--steps 200` takes about 35 s.
//
// The data comes from `make data` (data/fortunes.txt). Without it the lesson says so and stops.
//
// Flags (after `./build/lessons/15`; `make lesson N=15 ARGS="..."` passes them):
//   (none)       the recipe: 2,000 steps
//   --steps N    a shortened (or longer) run: the schedule is squeezed or stretched into N steps,
//                and below 2,000 steps validation takes the mean of 50 batches instead of 200.
//                For 200 steps (what CI runs) and 2,000 the lesson checks that the validation
//                loss fell below a bound, and fails if it did not (see check_loss_bound)
//   --check      grade the homework (the same as `make check N=15`)
//   --help       this list
// Everything is seeded: two runs print the same numbers, apart from the timings.
//
// Run it:             make lesson N=15        (the curves go to build/plots/15_loss.svg)
// Grade the homework: make check N=15

#include "lesson.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

// What the command line asked for; main() fills it in before the lesson runs.
struct Options {
    long steps = 2000;
};
static Options options;

static const long recipe_steps = 2000;
static const std::uint64_t model_seed = 1337, data_seed = 1338, eval_seed = 1339,
                           sample_seed = 1340;

// ---------------------------------------------------------------------------------------------
// 1. The data. `make data` writes data/fortunes.txt: the fortune files of Debian's fortunes
// packages, one after the other, 2,576,674 bytes of short texts separated by lines holding "%".
// The tokens are bytes (engine.cpp §6.1): the vocabulary is the set of distinct bytes of the
// whole corpus, sorted, and a byte's id is its rank. The fortunes use 114 of the 256, so V = 114
// and nothing is ever unknown. (BPE, also in §6.1, would give fewer and longer tokens: a later
// experiment.)
// The first 90% of the bytes train, the last 10% validate: one stretch of text the model never
// sees, so the validation loss measures prediction on new text, not recall.
// A batch is 12 windows of T + 1 = 65 consecutive tokens, each starting anywhere at random: the
// first 64 are the input, the last 64 the targets, the same text shifted by one. So one window
// holds 64 predictions, one after each prefix of length 1 to 64.
// ---------------------------------------------------------------------------------------------
static const char* const corpus_path = "data/fortunes.txt";
static const int context = 64, batch = 12;   // T and B

struct Corpus {
    std::size_t bytes = 0;
    ByteVocabulary vocabulary;
    std::vector<int> train, validation;   // token ids
};

// Text drawn one glyph per byte, so that an input row and its target row line up: ⏎ for a
// newline, → for a tab, · for any other byte that does not print on its own.
static std::string shown(const std::string& text) {
    std::string out;
    for (char c : text) {
        const unsigned char byte = static_cast<unsigned char>(c);
        if (byte == '\n') out += "\u23ce";
        else if (byte == '\t') out += "\u2192";
        else if (byte < 32 || byte > 126) out += "\u00b7";
        else out += c;
    }
    return out;
}

static void describe_vocabulary(const ByteVocabulary& vocabulary) {
    std::string printable, others;
    for (int id = 0; id < vocabulary.size(); ++id) {
        const unsigned char byte = vocabulary.byte(id);
        if (byte >= 32 && byte <= 126) {
            printable += char(byte);
            continue;
        }
        char hex[8];
        std::snprintf(hex, sizeof hex, " %02X", byte);
        others += hex;
    }
    std::printf("Vocabulary: %d bytes, ids 0 to %d in byte order.\n", vocabulary.size(),
                vocabulary.size() - 1);
    std::printf("  %zu printable: %s\n", printable.size(), printable.c_str());
    std::printf("  %zu others (hex):%s\n", vocabulary.size() - printable.size(), others.c_str());
    std::printf("  (09 is a tab, 0A a newline, 07 and 08 a bell and a backspace from old\n"
                "  terminal jokes; the bytes from 80 up are pieces of accented letters.)\n");
}

// False (after saying what to do) when data/fortunes.txt is missing: the lesson then ends
// quietly, as lesson 10 does without its images, so that `make lessons` still passes on a
// machine without the data.
static bool load_corpus(Corpus& corpus) {
    if (!std::ifstream(corpus_path)) {
        std::printf("\nNo %s here: this lesson needs the text. Run `make data` first\n"
                    "(from the repository root, where the lesson looks for data/).\n",
                    corpus_path);
        return false;
    }
    const std::string text = load_text(corpus_path);
    const TextSplit split = split_text(text, 0.9);
    if (split.validation.size() < std::size_t(context) + 1)
        throw std::runtime_error(std::string(corpus_path) + " holds " +
                                 std::to_string(text.size()) +
                                 " bytes; its last 10% must hold a window of 65 bytes, at least");
    corpus.bytes = text.size();
    corpus.vocabulary = ByteVocabulary(text);   // the whole corpus's bytes: validation has one
    corpus.train = corpus.vocabulary.encode(split.train);   // that training lacks (0xBC)
    corpus.validation = corpus.vocabulary.encode(split.validation);
    return true;
}

static void the_data(const Corpus& corpus) {
    heading("1. The data: the fortunes, as bytes");
    std::printf("%s: %zu bytes; the first 90%% train (%zu bytes), the last 10%% validate (%zu).\n",
                corpus_path, corpus.bytes, corpus.train.size(), corpus.validation.size());
    describe_vocabulary(corpus.vocabulary);
    // The first batch that training will draw: the same seed gives the same windows.
    Rng peek(data_seed);
    const TokenBatch first = sample_batch(corpus.train, batch, context, peek);
    std::printf("\nThe first training batch, rows 0 and 1 of %d (⏎ newline, → tab): the target\n"
                "row is the input row moved one byte to the left, the byte that comes next.\n",
                batch);
    for (int row = 0; row < 2; ++row) {
        const auto from = std::size_t(row) * context, to = from + context;
        const std::vector<int> in(first.inputs.begin() + from, first.inputs.begin() + to);
        const std::vector<int> out(first.targets.begin() + from, first.targets.begin() + to);
        std::printf("  input  |%s|\n", shown(corpus.vocabulary.decode(in)).c_str());
        std::printf("  target |%s|\n", shown(corpus.vocabulary.decode(out)).c_str());
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The model (engine.cpp §6.2). Its parameters, counted three ways: by the formula
//     N = V·D + T·D + L·(12·D² + 13·D) + 2·D
// (the embeddings, L blocks of 12·D² weights and 13·D biases and gains, the final norm; the
// output head is wte again), by gpt_parameter_count, and by adding up the tensors.
// Its FLOPs per token: F = 24·L·D² + 2·V·D + 2·L·(T + 1)·D forward (the products, and attention's
// T + 1 averaged over positions), and 3·F for a training step: backward does each product twice
// more (dX and dW). That is "6 × the weights in products" plus attention's share. The engine's
// counters (engine.cpp §4.1) must see exactly that in one step: checked below.
// The loss at init. GPT-2's small init makes every logit ≈ 0, so the softmax is ≈ uniform over
// the V tokens and the cross-entropy is ≈ −ln(1/V) = ln V = 4.736 for 114: a first number to
// check in any run, since a bug in the model or the loss shows there before any training. It
// comes out a little above ln V: the logits are small, not 0, and logits spread by s add about
// s²/2 (lesson 10 works this out).
// ---------------------------------------------------------------------------------------------
static GPTConfig baby_gpt(int vocab) {
    GPTConfig config;
    config.vocab = vocab;
    config.context = context;
    config.layers = 4;
    config.heads = 4;
    config.width = 128;
    return config;
}

static std::int64_t numbers_in(const std::vector<Tensor>& tensors) {
    std::int64_t n = 0;
    for (const Tensor& t : tensors) n += std::int64_t(t.numel());
    return n;
}

// The FLOPs of one training step of B windows of T tokens: forward, and backward's twice that.
static double step_flops(const GPTConfig& config) {
    return 3.0 * double(gpt_forward_flops(config, batch, context));
}

static void count_parameters(const nn::GPT& model) {
    const GPTConfig& c = model.config;
    const std::int64_t V = c.vocab, T = c.context, L = c.layers, D = c.width;
    const std::int64_t formula = V * D + T * D + L * (12 * D * D + 13 * D) + 2 * D;
    std::printf("Config: V = %d, T = %d, L = %d, H = %d (heads of %d features), D = %d; the\n"
                "output head is tied to wte.\n",
                c.vocab, c.context, c.layers, c.heads, c.width / c.heads, c.width);
    std::printf("Parameters: %lld by the formula V·D + T·D + L·(12·D² + 13·D) + 2·D\n"
                "            = %lld + %lld + %lld·(%lld + %lld) + %lld,\n"
                "            %lld by gpt_parameter_count, %lld in the model's %zu tensors.\n",
                (long long)formula, (long long)(V * D), (long long)(T * D), (long long)L,
                (long long)(12 * D * D), (long long)(13 * D), (long long)(2 * D),
                (long long)gpt_parameter_count(c), (long long)numbers_in(model.parameters()),
                model.parameters().size());
}

static void count_flops_per_token(const nn::GPT& model, const Corpus& corpus) {
    const GPTConfig& c = model.config;
    const double tokens = double(batch) * context;
    const double forward = double(gpt_forward_flops(c, batch, context)) / tokens;
    const double in_products =
        12.0 * c.layers * double(c.width) * c.width + double(c.vocab) * c.width;
    std::printf("FLOPs per token: F = %.0f forward, 3·F = %.0f to train (6 × the %.0f weights\n"
                "in products = %.0f, plus attention's %.0f); %.2f GFLOP per step of %d x %d "
                "tokens.\n",
                forward, 3 * forward, in_products, 6 * in_products, 3 * forward - 6 * in_products,
                step_flops(c) / 1e9, batch, context);
    // One forward and backward pass, counted by the engine: the gradients it leaves behind are
    // cleared by the first training step's zero_grad.
    Rng rng(data_seed + 100);
    const TokenBatch b = sample_batch(corpus.train, batch, context, rng);
    reset_counted_flops();
    model.loss(b.inputs, b.targets, b.B, b.T).backward();
    const double counted = double(counted_flops());
    std::printf("Counted by the engine in one forward and backward pass: %.0f FLOPs, %s 3·F·B·T.\n",
                counted, counted == step_flops(c) ? "exactly" : "NOT");
}

// The mean loss over `batches` batches of windows from `tokens`: always the same windows (an Rng
// with a fixed seed), so that two evaluations differ only because the model changed.
static double mean_loss(const nn::GPT& model, const std::vector<int>& tokens, int batches) {
    Rng rng(eval_seed);
    double sum = 0;
    for (int k = 0; k < batches; ++k) {
        const TokenBatch b = sample_batch(tokens, batch, context, rng);
        sum += model.loss(b.inputs, b.targets, b.B, b.T).item();
    }
    return sum / batches;
}

// ---------------------------------------------------------------------------------------------
// 3. Training. Each step: set the lr from the schedule (warmup_cosine_lr), zero the gradients,
// draw a batch, forward to the mean cross-entropy, backward, clip the global gradient norm of
// ALL parameters at 1.0 (once, over both groups below), and let the optimizers step.
//
// Two AdamW optimizers, one per group, stepped with the same lr. Weight decay pulls each weight
// toward 0 a little every step (w ← w − lr·λ·w, decoupled from the gradient: lesson 06 §4). For
// a matrix that is a useful prior: many small weights rather than a few large ones, so that no
// single input dominates a product. The embedding tables are matrices too, and decay like the
// rest (nanoGPT does so). Biases and the norms' gains and biases get none: a gain starts at 1 and
// scales a whole feature, and decay would pull it toward 0 against the normalization it belongs
// to; a bias shifts rather than weighs, so its size says nothing about overfitting; and they are
// few (6,912 of 816,128 numbers here), so decaying them buys nothing. The rule, nanoGPT's: decay
// a parameter when it has 2 axes or more (exercise 15.2 writes it by name).
//
// MFU, the model FLOPs utilization: the FLOPs a step must do (3·F per token, section 2) per
// second, over the machine's peak. The peak is measured here the way bench.cpp's `peak` row
// measures it, in shorter runs: independent chains of 8-wide fused multiply-adds on every
// thread, with no memory traffic, the best of three. It is what these cores reach at best with
// the vector width the engine's matmul uses: a ceiling that real programs stay well below.
// ---------------------------------------------------------------------------------------------
static const double lr_max = 1e-3, lr_min = 1e-4, beta1 = 0.9, beta2 = 0.99, adam_eps = 1e-8;
static const double weight_decay = 0.1, max_grad_norm = 1.0;
static const long recipe_warmup = 100;
static const int log_every = 100, eval_every = 200;

// FLOP/s of the FMA chains on `threads` threads: the best of three runs.
static double peak_flops(int threads) {
    const long iterations = 5'000'000;
    const double flops = fma_chain_flops_per_iteration * double(iterations) * threads;
    double best = 0, sink = 0;
    for (int run = 0; run < 3; ++run) {
        const Clock::time_point start = Clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        sink += fma_chains(iterations);
        best = std::max(best, flops / seconds_since(start));
    }
    if (!(sink > 0)) throw std::runtime_error("peak_flops: the FMA chains gave no sum");
    return best;
}

// How a run of `steps` steps trains. The recipe's warmup is 100 of 2,000 steps; a shorter run
// warms up over half its steps at most, so that the cosine has steps to fall in.
struct Plan {
    long steps = recipe_steps, warmup = recipe_warmup;
    int eval_batches = 200;   // validation: the mean of this many batches
};

static Plan plan_for(long steps) {
    Plan plan;
    plan.steps = steps;
    plan.warmup = std::min(recipe_warmup, steps / 2);
    plan.eval_batches = steps < recipe_steps ? 50 : 200;
    return plan;
}

// The parameters that decay and those that do not, as two lists for two optimizers.
struct ParameterGroups {
    std::vector<Tensor> decay, no_decay;
};

static ParameterGroups parameter_groups(const nn::GPT& model) {
    ParameterGroups groups;
    for (const Tensor& p : model.parameters()) {
        if (p.rank() >= 2) groups.decay.push_back(p);
        else groups.no_decay.push_back(p);
    }
    return groups;
}

// Everything that changes while the model trains.
struct Trainer {
    nn::GPT& model;
    std::vector<Tensor> params;   // all of them: what clipping sees
    AdamW decay, no_decay;
    Rng data_rng;
    Trainer(nn::GPT& model_, const ParameterGroups& groups)
        : model(model_), params(model_.parameters()),
          decay(groups.decay, lr_max, beta1, beta2, adam_eps, weight_decay),
          no_decay(groups.no_decay, lr_max, beta1, beta2, adam_eps, 0.0), data_rng(data_seed) {}
};

// What one step did.
struct StepLog {
    double loss = 0, lr = 0, grad_norm = 0, seconds = 0;
};

// One training step, `step` = 0, 1, 2, ...
static StepLog train_step(Trainer& t, const Corpus& corpus, const Plan& plan, long step) {
    const Clock::time_point start = Clock::now();
    StepLog log;
    log.lr = warmup_cosine_lr(step, plan.warmup, plan.steps, lr_max, lr_min);
    t.decay.lr = log.lr;   // 1. the schedule sets this step's learning rate, in both groups
    t.no_decay.lr = log.lr;
    t.decay.zero_grad();   // 2. forget the previous batch's gradients
    t.no_decay.zero_grad();
    const TokenBatch b = sample_batch(corpus.train, batch, context, t.data_rng);
    const Tensor loss = t.model.loss(b.inputs, b.targets, b.B, b.T);   // 3. forward
    log.loss = loss.item();
    loss.backward();                                           // 4. dL/dθ
    log.grad_norm = clip_grad_norm(t.params, max_grad_norm);   // 5. ‖g‖ ≤ 1, over all of θ
    t.decay.step();                                            // 6. θ ← θ − update
    t.no_decay.step();
    log.seconds = seconds_since(start);
    return log;
}

// The curves, and what the progress line averages over.
struct Logbook {
    std::vector<double> step, loss;               // every step
    std::vector<double> eval_step, val_loss;      // every evaluation
    double recent_loss = 0, recent_seconds = 0;   // since the last progress line
    int recent_steps = 0;
    double train_seconds = 0, eval_seconds = 0;
};

static void evaluate(const Trainer& t, const Corpus& corpus, const Plan& plan, long step,
                     Logbook& book) {
    const Clock::time_point start = Clock::now();
    const double val = mean_loss(t.model, corpus.validation, plan.eval_batches);
    const double seconds = seconds_since(start);
    book.eval_seconds += seconds;
    book.eval_step.push_back(double(step));
    book.val_loss.push_back(val);
    std::printf("step %4ld  val loss %.4f  (the mean of %d batches, %.1f s)\n", step, val,
                plan.eval_batches, seconds);
}

// The progress line: the mean training loss of the steps since the last line, the last step's
// lr and gradient norm (before clipping), and the speed of those steps (evaluations excluded).
static void progress_line(long step, const Plan& plan, const StepLog& last, Logbook& book,
                          double flops_per_step, double peak) {
    const double per_step = book.recent_seconds / book.recent_steps;
    std::printf("step %4ld/%ld  loss %.4f  lr %.2e  |g| %6.3f  %5.0f tok/s  MFU %4.1f%%\n", step,
                plan.steps, book.recent_loss / book.recent_steps, last.lr, last.grad_norm,
                batch * context / per_step, 100 * flops_per_step / per_step / peak);
    std::fflush(stdout);
    book.recent_loss = 0;
    book.recent_seconds = 0;
    book.recent_steps = 0;
}

// k-step moving average: point i is the mean of steps i − k + 1 .. i (fewer at the start).
static std::vector<double> moving_average(const std::vector<double>& v, std::size_t k) {
    std::vector<double> out;
    double sum = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
        sum += v[i];
        if (i >= k) sum -= v[i - k];
        out.push_back(sum / double(std::min(i + 1, k)));
    }
    return out;
}

// Three curves: the loss of each training batch (noisy: 12 windows), its mean over the last 50
// steps, and the validation loss at each evaluation (the title says over how many batches).
static void plot_losses(const Logbook& book, const Plan& plan) {
    Plot plot("A baby GPT on the fortunes (validation: the mean of " +
                  std::to_string(plan.eval_batches) + " batches)",
              "step", "cross-entropy (nats per byte)");
    plot.add("train, a batch", book.step, book.loss);
    plot.add("train, mean of 50", book.step, moving_average(book.loss, 50));
    plot.add("validation", book.eval_step, book.val_loss);
    plot.save("15_loss");
}

// Trains for plan.steps steps, and returns the final validation loss. `init_val` is the
// validation loss before the first step (section 2 measured it): the curve's first point.
static double train(Trainer& t, const Corpus& corpus, const Plan& plan, double init_val) {
    const int threads = num_threads();
    const double peak = peak_flops(threads), flops_per_step = step_flops(t.model.config);
    std::printf("Peak of %d thread%s (FMA chains): %.1f GFLOP/s. A step needs %.2f GFLOP.\n",
                threads, threads == 1 ? "" : "s", peak / 1e9, flops_per_step / 1e9);
    if (plan.steps != recipe_steps)
        std::printf("A run of %ld steps, not the recipe's %ld: warmup over %ld steps, then the\n"
                    "cosine down to 1e-4 at step %ld.\n",
                    plan.steps, recipe_steps, plan.warmup, plan.steps);
    Logbook book;
    book.eval_step.push_back(0);
    book.val_loss.push_back(init_val);
    std::printf("step    0  val loss %.4f  (section 2)\n", init_val);
    for (long step = 0; step < plan.steps; ++step) {
        const StepLog log = train_step(t, corpus, plan, step);
        const long done = step + 1;
        book.step.push_back(double(done));
        book.loss.push_back(log.loss);
        book.recent_loss += log.loss;
        book.recent_seconds += log.seconds;
        book.train_seconds += log.seconds;
        ++book.recent_steps;
        if (done % log_every == 0 || done == plan.steps)
            progress_line(done, plan, log, book, flops_per_step, peak);
        if (done % eval_every == 0 || done == plan.steps) evaluate(t, corpus, plan, done, book);
    }
    std::printf("\n%ld steps in %.1f s: %.3f s per step (%.0f tokens/s, MFU %.1f%%); the "
                "evaluations took %.1f s more.\n",
                plan.steps, book.train_seconds, book.train_seconds / double(plan.steps),
                double(batch) * context * double(plan.steps) / book.train_seconds,
                100 * flops_per_step * double(plan.steps) / book.train_seconds / peak,
                book.eval_seconds);
    plot_losses(book, plan);
    return book.val_loss.back();
}

// ---------------------------------------------------------------------------------------------
// 4. Sampling. The model gives, after a prefix, a score z_v for every token v; text comes from
// drawing the next token, appending it, and asking again. Two knobs shape the draw:
//   temperature τ:  p_v ∝ exp(z_v/τ). τ = 1 samples the model as trained; τ < 1 sharpens the
//                   distribution toward its likeliest tokens (τ → 0 always takes the largest),
//                   τ > 1 flattens it toward uniform;
//   top-k:          only the k largest scores may be drawn (the rest get probability 0), which
//                   cuts the long tail of unlikely tokens that a temperature alone leaves in.
// Each new token here runs the whole model again on the last ≤ T = 64 tokens (the context is
// all wpe has positions for) and keeps only the last row of logits. Everything the earlier
// positions computed, their keys and values in every layer, is computed again each time: a
// KV cache keeps them and runs only the new token. That cache is the next step; it is not here.
// ---------------------------------------------------------------------------------------------
static const double temperature = 0.8;
static const int top_k = 20;   // of 114 (nanoGPT's 200 would keep every byte)
static const int new_tokens = 500;

// One draw from softmax(z/τ) restricted to the k largest z (every z equal to the k-th largest
// stays too): u uniform in [0, Σw), then the first token whose running sum of weights passes u.
static int sample_token(const std::vector<double>& z, double tau, int k, Rng& rng) {
    std::vector<double> sorted = z;
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    const double kth = sorted[std::min(std::size_t(k), z.size()) - 1];   // the k-th largest
    std::vector<double> weight(z.size(), 0.0);
    double total = 0;
    for (std::size_t v = 0; v < z.size(); ++v) {
        if (z[v] < kth) continue;
        weight[v] = std::exp((z[v] - sorted[0]) / tau);   // minus the max: no overflow
        total += weight[v];
    }
    const double u = rng.uniform() * total;
    double running = 0;
    int last_allowed = 0;
    for (std::size_t v = 0; v < z.size(); ++v) {
        if (weight[v] == 0) continue;
        running += weight[v];
        last_allowed = int(v);
        if (u < running) return int(v);
    }
    return last_allowed;   // u fell past the end through rounding
}

// The prompt and `count` tokens after it, each drawn from the model's last row of logits.
static std::string generate(const nn::GPT& model, const ByteVocabulary& vocabulary,
                            const std::string& prompt, int count, Rng& rng) {
    std::vector<int> ids = vocabulary.encode(prompt);
    const int V = model.config.vocab;
    for (int n = 0; n < count; ++n) {
        const int T = std::min(int(ids.size()), model.config.context);
        const std::vector<int> window(ids.end() - T, ids.end());   // the last T tokens
        const Tensor logits = model(window, 1, T);                 // [T, V]
        const real* last = logits.values().data() + std::size_t(T - 1) * V;
        ids.push_back(sample_token(std::vector<double>(last, last + V), temperature, top_k, rng));
    }
    return vocabulary.decode(ids);
}

static void sample(const nn::GPT& model, const Corpus& corpus) {
    heading("4. Sampling: 500 bytes after the prompt \"Q: \"");
    Rng rng(sample_seed);
    const Clock::time_point start = Clock::now();
    const std::string text = generate(model, corpus.vocabulary, "Q: ", new_tokens, rng);
    const double seconds = seconds_since(start);
    std::printf("Temperature %.1f, top-k %d of %d, seed %llu:\n\n%s\n\n", temperature, top_k,
                corpus.vocabulary.size(), (unsigned long long)sample_seed, text.c_str());
    std::printf("%d tokens in %.1f s: %.1f ms each, every one a forward pass over up to %d "
                "tokens (no KV cache).\n",
                new_tokens, seconds, 1e3 * seconds / new_tokens, context);
}

// ---------------------------------------------------------------------------------------------
// The bounds a run must beat, for the two lengths that have one. With the seeds above, 200 steps
// (what CI runs) reached a validation loss of 2.625 and the recipe's 2,000 reached 2.011,
// against ln 114 = 4.74 at init (g++ 12, -march=native, 2 threads; clang++ 14 printed the same
// 200-step numbers). The figure given for PyTorch 1.13 with the same recipe on the same data is
// 2.018, and 2.05 is the course's goal for the full run. A run above its bound learned less than
// it should: something is broken. The margins allow for another compiler's or CPU's roundings.
// ---------------------------------------------------------------------------------------------
struct LossBound {
    long steps;
    double val_loss_below;
};
static const LossBound loss_bounds[] = {{200, 2.75}, {2000, 2.05}};

static void check_loss_bound(long steps, double val) {
    for (const LossBound& bound : loss_bounds) {
        if (bound.steps != steps) continue;
        if (val < bound.val_loss_below) {
            std::printf("(Below %.2f, the bound for a run of %ld steps: learning works.)\n",
                        bound.val_loss_below, steps);
            return;
        }
        throw std::runtime_error(
            "after " + std::to_string(steps) + " steps the validation loss is " +
            std::to_string(val) + ", not below " + std::to_string(bound.val_loss_below) +
            ", the bound for a run of this length (the seeded run reached 2.625 in 200 steps "
            "and 2.011 in 2000): the model does not learn as it should");
    }
}

static void lesson() {
    std::printf("Lesson 15: a GPT, trained from scratch\n");
    Corpus corpus;
    if (!load_corpus(corpus)) return;
    the_data(corpus);

    heading("2. The model: a baby GPT");
    Rng rng(model_seed);
    nn::GPT model(baby_gpt(corpus.vocabulary.size()), rng);
    count_parameters(model);
    count_flops_per_token(model, corpus);
    const Plan plan = plan_for(options.steps);
    const double init_val = mean_loss(model, corpus.validation, plan.eval_batches);
    std::printf("Loss at init: %.4f (validation, the mean of %d batches); ln V = ln %d = %.4f.\n",
                init_val, plan.eval_batches, corpus.vocabulary.size(),
                std::log(double(corpus.vocabulary.size())));

    heading("3. Training");
    const ParameterGroups groups = parameter_groups(model);
    std::printf("AdamW with weight decay %.1f on %zu matrices (%lld numbers), and without on %zu\n"
                "biases and gains (%lld numbers); lr %.0e, warmup %ld steps, cosine to %.0e; "
                "clip at %.1f.\n",
                weight_decay, groups.decay.size(), (long long)numbers_in(groups.decay),
                groups.no_decay.size(), (long long)numbers_in(groups.no_decay), lr_max, plan.warmup,
                lr_min, max_grad_norm);
    Trainer trainer(model, groups);
    const double final_val = train(trainer, corpus, plan, init_val);

    sample(model, corpus);
    check_loss_bound(plan.steps, final_val);
    std::printf("\nval loss: %.4f\n", final_val);
}

// ---- Homework --------------------------------------------------------------------------------

// 15.1  Top-k filtering, the first half of sampling with top-k (section 4): keep the k largest
// logits as they are and set every other one to −infinity, so that softmax gives it probability
// exactly 0. Ties: every logit equal to the k-th largest stays, so more than k may survive (the
// rule of PyTorch code such as nanoGPT's: logits[logits < v[-1]] = −inf, v the k largest). With
// k ≥ logits.size() nothing changes. Throw std::invalid_argument if logits is empty, k < 1, or a
// logit is NaN (NaN has no place in an order).
std::vector<double> top_k_filter(const std::vector<double>& logits, int k) {
    // BEGIN EXERCISE 15.1
    throw not_implemented("15.1");
    // END EXERCISE
}

// 15.2  Which parameters get weight decay (section 3): those with 2 axes or more (the matrices,
// the embeddings included), not those with fewer (biases, the norms' gains and biases). Split
// `named`, a model's named_parameters(), into the names of the two groups, each in the order
// given. Throw std::invalid_argument if a tensor is undefined (an empty handle) or a name occurs
// twice (it would be decayed, or updated, twice).
struct DecayGroups {
    std::vector<std::string> decay, no_decay;
};
DecayGroups weight_decay_groups(const std::vector<std::pair<std::string, Tensor>>& named) {
    // BEGIN EXERCISE 15.2
    throw not_implemented("15.2");
    // END EXERCISE
}

// "[1, -inf, 3]"
static std::string str(const std::vector<double>& v) {
    std::string out = "[";
    for (std::size_t i = 0; i < v.size(); ++i) {
        char number[32];
        std::snprintf(number, sizeof number, "%s%g", i > 0 ? ", " : "", v[i]);
        out += number;
    }
    return out + "]";
}

static void expect_logits(const char* what, const std::vector<double>& got,
                          const std::vector<double>& expected) {
    if (got != expected)   // exact: kept logits are unchanged, removed ones are −inf
        throw CheckFailed(std::string(what) + ": expected " + str(expected) + ", got " + str(got));
}

static void expect_names(const char* what, const std::vector<std::string>& got,
                         const std::vector<std::string>& expected) {
    if (got == expected) return;
    std::string message = std::string(what) + ": expected";
    for (const std::string& name : expected) message += " " + name;
    message += "; got";
    for (const std::string& name : got) message += " " + name;
    throw CheckFailed(message);
}

static void check_top_k() {
    const double inf = INFINITY;
    expect_logits("[1, 3, 2, 5, 4], k = 2", top_k_filter({1, 3, 2, 5, 4}, 2),
                  {-inf, -inf, -inf, 5, 4});
    expect_logits("[1, 3, 2, 5, 4], k = 1", top_k_filter({1, 3, 2, 5, 4}, 1),
                  {-inf, -inf, -inf, 5, -inf});
    expect_logits("negative logits [-1, -3, -2], k = 2", top_k_filter({-1, -3, -2}, 2),
                  {-1, -inf, -2});
    expect_logits("a tie at the top: [2, 7, 7, 1], k = 1 keeps both 7s",
                  top_k_filter({2, 7, 7, 1}, 1), {-inf, 7, 7, -inf});
    expect_logits("a tie at the k-th: [2, 7, 5, 5, 1], k = 2 keeps both 5s",
                  top_k_filter({2, 7, 5, 5, 1}, 2), {-inf, 7, 5, 5, -inf});
    expect_logits("[2, 7, 5, 5, 1], k = 4", top_k_filter({2, 7, 5, 5, 1}, 4), {2, 7, 5, 5, -inf});
    expect_logits("k = size: unchanged", top_k_filter({1, 3, 2}, 3), {1, 3, 2});
    expect_logits("k > size: unchanged", top_k_filter({1, 3, 2}, 10), {1, 3, 2});
    expect_logits("a masked logit stays masked: [-inf, 1, 0], k = 2", top_k_filter({-inf, 1, 0}, 2),
                  {-inf, 1, 0});
    // 114 distinct logits (a permutation of 0..113, scaled): exactly k survive, unchanged, and
    // every survivor is larger than every logit removed.
    Rng rng(15);
    std::vector<double> z;
    for (int i = 0; i < 114; ++i) z.push_back(0.25 * i - 10);
    for (int i = 113; i > 0; --i) std::swap(z[std::size_t(i)], z[rng.below(std::size_t(i) + 1)]);
    for (int k : {1, 5, 20, 57, 113}) {
        const std::vector<double> kept = top_k_filter(z, k);
        expect_true("as many logits out as in", kept.size() == z.size());
        int survivors = 0;
        double smallest_kept = inf, largest_removed = -inf;
        for (std::size_t i = 0; i < z.size(); ++i) {
            if (kept[i] == -inf) {
                largest_removed = std::max(largest_removed, z[i]);
                continue;
            }
            expect_true("a kept logit is unchanged", kept[i] == z[i]);
            ++survivors;
            smallest_kept = std::min(smallest_kept, z[i]);
        }
        expect_near("114 distinct logits: survivors = k", survivors, k, 0);
        expect_true("every survivor beats every logit removed", smallest_kept > largest_removed);
    }
    expect_true("k = 0 throws std::invalid_argument", throws_invalid_argument([] {
                    top_k_filter({1, 2}, 0);
                }));
    expect_true("no logits throw std::invalid_argument",
                throws_invalid_argument([] { top_k_filter({}, 1); }));
    expect_true("a NaN logit throws std::invalid_argument", throws_invalid_argument([] {
                    top_k_filter({1, NAN, 2}, 1);
                }));
}

static void check_decay_groups() {
    // A tiny GPT (V 7, T 5, L 2, H 2, D 8), its groups written out by hand from GPT-2's layout.
    GPTConfig c;
    c.vocab = 7;
    c.context = 5;
    c.layers = 2;
    c.heads = 2;
    c.width = 8;
    Rng rng(15);
    const nn::GPT tiny(c, rng);
    std::vector<std::string> decay = {"wte", "wpe"}, no_decay;
    for (const std::string block : {"blocks.0.", "blocks.1."}) {
        for (const char* matrix : {"qkv.W", "attn_proj.W", "mlp_up.W", "mlp_down.W"})
            decay.push_back(block + matrix);
        for (const char* vector : {"ln1.gain", "ln1.bias", "qkv.b", "attn_proj.b", "ln2.gain",
                                   "ln2.bias", "mlp_up.b", "mlp_down.b"})
            no_decay.push_back(block + vector);
    }
    no_decay.push_back("ln_f.gain");
    no_decay.push_back("ln_f.bias");
    const DecayGroups groups = weight_decay_groups(tiny.named_parameters());
    expect_names("decayed: the embeddings and the 4 matrices of each block", groups.decay, decay);
    expect_names("not decayed: biases and the norms' gains and biases", groups.no_decay, no_decay);
    // The sizes, from the formula: matrices 12·L·D² + V·D + T·D, the rest 13·L·D + 2·D.
    std::int64_t decayed = 0, not_decayed = 0;
    for (const auto& [name, tensor] : tiny.named_parameters()) {
        const bool in_decay =
            std::find(groups.decay.begin(), groups.decay.end(), name) != groups.decay.end();
        if (in_decay) decayed += std::int64_t(tensor.numel());
        else not_decayed += std::int64_t(tensor.numel());
    }
    expect_near("numbers decayed: 12·2·64 + 7·8 + 5·8", double(decayed), 1632, 0);
    expect_near("numbers not decayed: 13·2·8 + 2·8", double(not_decayed), 224, 0);
    // An untied head is one more matrix; any rank of 2 or more decays, rank 1 does not.
    c.tied_head = false;
    c.layers = 1;
    const nn::GPT untied(c, rng);
    const DecayGroups head = weight_decay_groups(untied.named_parameters());
    expect_true("an untied head decays", !head.decay.empty() && head.decay.back() == "head");
    const DecayGroups made_up = weight_decay_groups(
        {{"scale", Tensor({1})}, {"kernel", Tensor({2, 3, 4})}, {"shift", Tensor({4})}});
    expect_names("[2, 3, 4] decays", made_up.decay, {"kernel"});
    expect_names("[1] and [4] do not", made_up.no_decay, {"scale", "shift"});
    const DecayGroups none = weight_decay_groups({});
    expect_true("no parameters: two empty groups", none.decay.empty() && none.no_decay.empty());
    expect_true("an empty tensor handle throws std::invalid_argument", throws_invalid_argument([] {
                    weight_decay_groups({{"w", Tensor()}});
                }));
    expect_true("a name twice throws std::invalid_argument", throws_invalid_argument([] {
                    weight_decay_groups({{"w", Tensor({2, 2})}, {"w", Tensor({2, 2})}});
                }));
}

static int check_homework() {
    Homework hw("15");
    hw.check("15.1", "top-k filtering (ties at the k-th largest stay)",
             "the k-th largest value is the threshold: sort a copy in decreasing order (or use "
             "std::nth_element) and set every logit below it, strictly, to −inf",
             check_top_k);
    hw.check("15.2", "weight decay on the matrices, none on biases and gains",
             "decay iff tensor.rank() >= 2; keep the order of `named`; check defined() and "
             "repeated names first",
             check_decay_groups);
    return hw.finish();
}

// ---- The command line ------------------------------------------------------------------------

static void print_usage() {
    std::printf("usage: ./build/lessons/15 [--steps N]  |  --check\n"
                "  (no flags)   the recipe: a baby GPT on data/fortunes.txt, 2000 steps (about 7\n"
                "               minutes on 2 cores), then 500 bytes of sampled text\n"
                "  --steps N    N steps instead (the schedule fits itself to N; below 2000 steps,\n"
                "               validation on 50 batches instead of 200); 200 is what CI runs\n"
                "  --check      grade the homework\n");
}

// Fills `options`; returns −1 to go on, or the exit status (0 after --help, 2 on a bad flag).
static int parse_options(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        const bool has_value = i + 1 < argc;
        if (arg == "--help" || arg == "-h") {
            print_usage();
            return 0;
        }
        if (arg == "--steps" && has_value && std::atol(argv[i + 1]) > 0) {
            options.steps = std::atol(argv[++i]);
            continue;
        }
        std::printf("unknown or incomplete flag '%s'\n", arg.c_str());
        print_usage();
        return 2;
    }
    return -1;
}

int main(int argc, char** argv) {
    const bool checking = argc > 1 && std::strcmp(argv[1], "--check") == 0;
    if (!checking) {
        const int status = parse_options(argc, argv);
        if (status >= 0) return status;
    }
    return run_lesson(argc, argv, lesson, check_homework);
}
