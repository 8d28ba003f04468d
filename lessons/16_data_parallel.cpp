// Lesson 16: beyond one process. Lesson 15's GPT trained by several workers at once, over MPI
// (the Message Passing Interface, the runtime that clusters and llm.c's multi-GPU training use):
// data parallelism first, then ZeRO stage 1, which splits the optimizer's state between them.
// This file is the only one that includes <mpi.h>; the engine knows nothing of it.
//
// Each worker is a process, a "rank" 0..N−1 of N, with its own copy of everything. They share no
// memory: what one must know of another it receives in a message. The lesson runs on 2 ranks of
// 1 thread each (`make lesson N=16` starts them with `mpirun -np 2`).
//
//   1. The workers: N ranks, and the global batch of 12 windows dealt out between them.
//   2. Data parallelism: every rank the same model; each runs forward and backward on its own
//      windows; an all-reduce sums the gradients, so every rank takes the same step. A hash of
//      the parameters, compared across ranks, shows they stay identical.
//   3. The same numbers as one process: the 2-rank losses against lesson 15's loop on the whole
//      batch (within rounding, and how large that is), and against one process that adds the
//      ranks' gradients in rank order (bit for bit).
//   4. All-reduce = reduce-scatter + all-gather, checked and timed; the bytes a ring moves.
//   5. ZeRO stage 1: each rank keeps Adam's m and v for its 1/N of the parameters only. The same
//      losses as section 2, half the optimizer memory per rank (measured).
//   6. Memory per device, ZeRO stages 0 to 3, for lesson 15's GPT, GPT-2 small and a 7B model.
//   7. Where the time goes: computing against communicating, per step, and tokens per second of
//      2 ranks against 1.
//
// Time, measured on a 2-core AMD EPYC, 2026-12-06: 18 s with nothing else running (2 ranks then
// reached 1.67x the tokens a second of one process), about 1 minute while other programs kept
// both cores busy; `--steps 20` (what CI runs) took 8 s quiet and 20 to 40 s busy.
//
// The data comes from `make data` (data/fortunes.txt). Without it the lesson says so and stops.
// MPI comes from the system (Debian: apt-get install openmpi-bin libopenmpi-dev).
//
// Flags (`make lesson N=16 ARGS="..."` passes them; by hand: mpirun -np 2 ./build/lessons/16):
//   (none)           100 steps in each of sections 2, 3 and 5
//   --steps N        N steps instead (CI: 20)
//   --check          grade the homework (the same as `make check N=16`; needs no mpirun)
//   --help           this list
//
// Run it:             make lesson N=16
// Grade the homework: make check N=16

#include "lesson.h"

// MPI's C interface only: the C++ bindings that Open MPI and MPICH still ship were removed from
// the standard in MPI-3, and their headers warn under -Wextra.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

struct Options {
    long steps = 100;
};
static Options options;

// Lesson 15's recipe: its model, seeds, batch and AdamW settings.
static const int global_batch = 12;   // B windows per step, over all ranks together
static const int context = 64, layers = 4, heads = 4, width = 128;
static const std::uint64_t model_seed = 1337, data_seed = 1338;
static const double lr_max = 1e-3, lr_min = 1e-4, beta1 = 0.9, beta2 = 0.99, adam_eps = 1e-8;
static const double weight_decay = 0.1, max_grad_norm = 1.0;
static const long recipe_warmup = 100;
static const int hash_every = 10;   // steps between the comparisons of the ranks' parameters

// This process's place among the others: rank `rank` of `size`.
struct World {
    int rank = 0, size = 1;
};
static World world;

// The MPI type of the engine's `real` (float in the lessons, double in the tests' build).
static MPI_Datatype mpi_real() { return std::is_same<real, float>::value ? MPI_FLOAT : MPI_DOUBLE; }

// ---------------------------------------------------------------------------------------------
// 1. The workers. mpirun starts N copies of this program; MPI_Init connects them, and each asks
// for its rank and for N. Every rank runs the same code, branching on its rank where the ranks'
// jobs differ. Only rank 0 prints (the others' stdout goes to /dev/null; their errors still
// reach stderr).
// A global batch of B = 12 windows is dealt out in contiguous shares: rank r gets windows
//     [⌊r·B/N⌋, ⌊(r + 1)·B/N⌋)
// which cover 0..B−1 once, in sizes that differ by at most one (6 and 6 on 2 ranks). Every rank
// draws the whole global batch from the same seeded Rng and keeps its share: drawing 12 window
// starts costs nothing, and so the ranks' shares are disjoint and together exactly the batch
// that lesson 15's single process draws.
// ---------------------------------------------------------------------------------------------
struct Slice {
    std::size_t begin = 0, end = 0;   // [begin, end)
    std::size_t size() const { return end - begin; }
};

// The share of rank `rank` of `ranks` in [0, total): the formula above.
static Slice share_of(std::size_t total, int ranks, int rank) {
    return {total * std::size_t(rank) / std::size_t(ranks),
            total * std::size_t(rank + 1) / std::size_t(ranks)};
}

// Windows [rows.begin, rows.end) of a batch.
static TokenBatch windows_of(const TokenBatch& batch, Slice rows) {
    TokenBatch part;
    part.B = int(rows.size());
    part.T = batch.T;
    const std::size_t from = rows.begin * std::size_t(batch.T),
                      to = rows.end * std::size_t(batch.T);
    part.inputs.assign(batch.inputs.begin() + long(from), batch.inputs.begin() + long(to));
    part.targets.assign(batch.targets.begin() + long(from), batch.targets.begin() + long(to));
    return part;
}

struct Corpus {
    ByteVocabulary vocabulary;
    std::vector<int> train;
};

static const char* const corpus_path = "data/fortunes.txt";

// False (after saying what to do) when data/fortunes.txt is missing (lesson.h).
static bool load_corpus(Corpus& corpus) {
    if (!have_text(corpus_path)) return false;
    const std::string text = load_text(corpus_path);
    corpus.vocabulary = ByteVocabulary(text);
    corpus.train = corpus.vocabulary.encode(split_text(text, 0.9).train);
    return true;
}

static GPTConfig model_config(const Corpus& corpus) {
    GPTConfig config;
    config.vocab = corpus.vocabulary.size();
    config.context = context;
    config.layers = layers;
    config.heads = heads;
    config.width = width;
    return config;
}

static void the_workers() {
    heading("1. The workers");
    std::printf("%d rank%s of 1 thread each; the global batch of %d windows of %d tokens is dealt "
                "out:\n",
                world.size, world.size == 1 ? "" : "s", global_batch, context);
    for (int r = 0; r < world.size; ++r) {
        const Slice rows = share_of(global_batch, world.size, r);
        std::printf("  rank %d: windows %zu to %zu (%zu of them)\n", r, rows.begin, rows.end - 1,
                    rows.size());
    }
    if (world.size == 1)
        std::printf("(One rank: run it with `mpirun -np 2` to see the workers share the work.)\n");
}

// ---------------------------------------------------------------------------------------------
// 2. Data parallelism. Every rank holds the whole model, built from the same seed, so all start
// equal. A step, on each rank:
//   1. draw the global batch and keep this rank's n_r windows;
//   2. forward and backward: g_r = ∇ of the mean loss over its windows;
//   3. all-reduce: the global batch's gradient is the mean over all B windows,
//          g = (1/B)·Σ_r n_r·g_r
//      n_r·g_r is the gradient of the sum over rank r's windows, MPI_Allreduce adds those up
//      over the ranks and hands every rank the sum; each then divides by B (exercise 16.1);
//   4. clip on the global norm ‖g‖ (every rank has all of g, so each computes the same norm);
//   5. AdamW steps, lesson 15's two groups (weight decay on the matrices only).
// Every rank ends the step with the same gradient, so the same parameters. Not assumed: every
// 10 steps the ranks compare a hash of their parameters (FNV-1a over the bytes of every number),
// and any difference stops the lesson.
// The progress lines show the loss of the global batch: (1/B)·Σ_r n_r·L_r, also all-reduced.
// ---------------------------------------------------------------------------------------------

// How a run of `steps` steps trains: lesson 15's plan_for, without its evaluations.
struct Plan {
    long steps = 100, warmup = recipe_warmup;
};

static Plan plan_for(long steps) {
    Plan plan;
    plan.steps = steps;
    plan.warmup = std::min(recipe_warmup, steps / 2);
    return plan;
}

// The model of one rank, and the Rng that draws its batches.
struct Replica {
    nn::GPT model;
    std::vector<Tensor> params;
    Rng data_rng{data_seed};
    explicit Replica(const GPTConfig& config) : model(build_model(config)) {
        params = model.parameters();
    }
    static nn::GPT build_model(const GPTConfig& config) {
        Rng rng(model_seed);
        return nn::GPT(config, rng);
    }
};

// AdamW over `decay` (with weight decay) and `no_decay` (without), skipping an empty group
// (a ZeRO slice may hold no parameter of one kind; the engine refuses an empty optimizer).
using Optimizers = std::vector<std::unique_ptr<AdamW>>;
static Optimizers make_optimizers(const std::vector<Tensor>& decay,
                                  const std::vector<Tensor>& no_decay) {
    Optimizers optimizers;
    if (!decay.empty())
        optimizers.push_back(
            std::make_unique<AdamW>(decay, lr_max, beta1, beta2, adam_eps, weight_decay));
    if (!no_decay.empty())
        optimizers.push_back(
            std::make_unique<AdamW>(no_decay, lr_max, beta1, beta2, adam_eps, 0.0));
    return optimizers;
}

// Lesson 15's groups: decay the parameters of 2 axes or more.
static Optimizers optimizers_for(const std::vector<Tensor>& params) {
    std::vector<Tensor> decay, no_decay;
    for (const Tensor& p : params) {
        if (p.rank() >= 2) decay.push_back(p);
        else no_decay.push_back(p);
    }
    return make_optimizers(decay, no_decay);
}

static void set_lr(Optimizers& optimizers, double lr) {
    for (auto& o : optimizers) o->lr = lr;
}
static void zero_grads(const std::vector<Tensor>& params) {
    for (const Tensor& p : params) p.zero_grad();
}
static void step_all(Optimizers& optimizers) {
    for (auto& o : optimizers) o->step();
}

// The optimizer state actually allocated (m and v, after the first step), in bytes.
static std::size_t optimizer_bytes(Optimizers& optimizers) {
    std::size_t bytes = 0;
    for (auto& o : optimizers)
        for (const auto& slots : o->state())
            for (const std::vector<real>& slot : slots) bytes += slot.size() * sizeof(real);
    return bytes;
}

static std::size_t numbers_in(const std::vector<Tensor>& params) {
    std::size_t n = 0;
    for (const Tensor& p : params) n += p.numel();
    return n;
}

// flat = scale · (every parameter's gradient, one after the other).
static void flatten_gradients(const std::vector<Tensor>& params, real scale,
                              std::vector<real>& flat) {
    flat.clear();
    for (const Tensor& p : params)
        for (real g : p.grad()) flat.push_back(g * scale);
}

// Each parameter's gradient from its stretch of `flat`.
static void unflatten_gradients(const std::vector<real>& flat, const std::vector<Tensor>& params) {
    std::size_t at = 0;
    for (const Tensor& p : params) {
        p.grad() = std::vector<real>(flat.begin() + long(at), flat.begin() + long(at + p.numel()));
        at += p.numel();
    }
}

// FNV-1a, 64 bits, over the bytes of every parameter: equal parameters give equal hashes, and
// any difference, one bit of one number, almost surely a different one.
static std::uint64_t parameter_hash(const std::vector<Tensor>& params) {
    std::uint64_t h = 14695981039346656037ull;
    for (const Tensor& p : params) {
        const auto* bytes = reinterpret_cast<const unsigned char*>(p.values().data());
        for (std::size_t i = 0; i < p.numel() * sizeof(real); ++i) {
            h ^= bytes[i];
            h *= 1099511628211ull;
        }
    }
    return h;
}

// Every rank's hash, gathered on every rank; throws (on every rank) unless they agree.
static void check_same_parameters(const std::vector<Tensor>& params, long step, int& checks) {
    const std::uint64_t mine = parameter_hash(params);
    std::vector<std::uint64_t> all(std::size_t(world.size));
    MPI_Allgather(&mine, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
    for (int r = 1; r < world.size; ++r)
        if (all[std::size_t(r)] != all[0]) {
            char msg[160];
            std::snprintf(msg, sizeof msg,
                          "after step %ld rank %d's parameters hash to %016llx, rank 0's to "
                          "%016llx: the replicas drifted apart",
                          step, r, (unsigned long long)all[std::size_t(r)],
                          (unsigned long long)all[0]);
            throw std::runtime_error(msg);
        }
    ++checks;
}

// Seconds of one step, by phase.
struct StepTimes {
    double compute = 0, communicate = 0, update = 0;
    double total() const { return compute + communicate + update; }
};

// What a run of training recorded, step by step.
struct RunLog {
    std::vector<double> loss;   // the global batch's loss at each step
    std::vector<StepTimes> times;
    std::size_t optimizer_bytes = 0;   // this rank's
    std::uint64_t final_hash = 0;
    int hash_checks = 0;
};

// Forward and backward of this rank's share of the global batch: returns its mean loss L_r.
static double forward_backward(Replica& replica, const Corpus& corpus, Slice rows) {
    const TokenBatch batch = sample_batch(corpus.train, global_batch, context, replica.data_rng);
    const TokenBatch mine = windows_of(batch, rows);
    const Tensor loss = replica.model.loss(mine.inputs, mine.targets, mine.B, mine.T);
    loss.backward();
    return loss.item();
}

// (1/B)·Σ_r n_r·L_r: the global batch's mean loss, summed over the ranks in double.
static double global_loss(double local_loss, Slice rows) {
    double weighted = local_loss * double(rows.size()), sum = 0;
    MPI_Allreduce(&weighted, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return sum / global_batch;
}

static void progress_line(const char* what, long step, const Plan& plan, const RunLog& log) {
    if (step % 10 != 0 && step != plan.steps) return;
    std::printf("%s step %3ld/%ld  loss %.4f  %5.1f ms a step\n", what, step, plan.steps,
                log.loss.back(), 1e3 * log.times.back().total());
    std::fflush(stdout);
}

// One step of data parallelism (the five steps above); returns the global batch's loss.
static double data_parallel_step(Replica& replica, Optimizers& optimizers, const Corpus& corpus,
                                 double lr, StepTimes& times, std::vector<real>& flat) {
    const Slice rows = share_of(global_batch, world.size, world.rank);
    set_lr(optimizers, lr);
    zero_grads(replica.params);
    Clock::time_point start = Clock::now();
    const double local_loss = forward_backward(replica, corpus, rows);   // 1, 2
    times.compute = seconds_since(start);
    start = Clock::now();
    flatten_gradients(replica.params, real(rows.size()), flat);   // 3. n_r·g_r
    MPI_Allreduce(MPI_IN_PLACE, flat.data(), int(flat.size()), mpi_real(), MPI_SUM,
                  MPI_COMM_WORLD);                     //    Σ_r n_r·g_r, on every rank
    for (real& g : flat) g = g / real(global_batch);   //    ÷ B
    unflatten_gradients(flat, replica.params);
    const double loss = global_loss(local_loss, rows);
    times.communicate = seconds_since(start);
    start = Clock::now();
    clip_grad_norm(replica.params, max_grad_norm);   // 4
    step_all(optimizers);                            // 5
    times.update = seconds_since(start);
    return loss;
}

static RunLog train_data_parallel(const GPTConfig& config, const Corpus& corpus, const Plan& plan) {
    Replica replica(config);
    Optimizers optimizers = optimizers_for(replica.params);
    RunLog log;
    std::vector<real> flat;
    check_same_parameters(replica.params, 0, log.hash_checks);
    for (long step = 0; step < plan.steps; ++step) {
        const double lr = warmup_cosine_lr(step, plan.warmup, plan.steps, lr_max, lr_min);
        StepTimes times;
        log.loss.push_back(data_parallel_step(replica, optimizers, corpus, lr, times, flat));
        log.times.push_back(times);
        if ((step + 1) % hash_every == 0 || step + 1 == plan.steps)
            check_same_parameters(replica.params, step + 1, log.hash_checks);
        progress_line("data parallel", step + 1, plan, log);
    }
    log.optimizer_bytes = optimizer_bytes(optimizers);
    log.final_hash = parameter_hash(replica.params);
    return log;
}

// ---------------------------------------------------------------------------------------------
// 3. The same numbers as one process. Two single-process runs with the same seeds, so the same
// model and the same global batches, each on one thread:
//   A. lesson 15's loop: the 12 windows in one forward and backward pass;
//   B. the ranks' arithmetic on one process: for r = 0..N−1 in order, rank r's windows alone,
//      then g = (0 + n_0·g_0 + n_1·g_1 + ...)/B, added in that order.
// Mathematically all three are the same gradient. In floats they are not: a sum of floats rounds
// after every addition, so its value depends on the order of the terms. Run A sums each weight's
// gradient over 768 positions in one pass; the ranks sum 384 each, then add the two sums. Each
// rounding is a relative 2^−24 ≈ 6e-8, so the gradients differ in their last bits, and the
// weights after a step too. Differences like these can grow from step to step (training is a
// long chain of computations, each fed by the last); here they did not: over 100 steps the
// losses of A and of the ranks differed by 2.4e-7 at most, one unit in the last place of a float
// near 4 (2^−22), in the seeded runs with g++ and clang++. Adam helps: its step m̂/(√v̂ + ε) has
// about the same size whatever the gradient's last bits. The tolerance, 1e-5, is 40 such units:
// room for other compilers and CPUs, not for a bug: ranks that both trained on windows 0 to 5
// moved the losses by 0.59 within 20 steps. One bug it cannot see: dividing by the rank's own 6
// windows instead of B = 12, a gradient twice too large, gave the same losses to 2.4e-7. Adam's
// step is the same for g and 2·g (m̂ and √v̂ both double; only ε notices), and so is clipping
// once ‖g‖ > 1. An optimizer without that invariance, SGD, would step twice as far. Exercise
// 16.1's check tests the arithmetic itself.
// Run B adds exactly what the all-reduce adds, in the same order: on 2 ranks, a + b, and a
// float sum of two numbers is the same either way round (a + b = b + a holds exactly in IEEE
// arithmetic). So run B must match the ranks bit for bit, and it does. On more ranks MPI may
// add in any grouping ((a + b) + c or a + (b + c)): then only the bound holds, unless the
// reduction fixes its order (gather every rank's gradient and add them in rank order, say, at
// N times the traffic).
// Both runs go side by side, A on rank 0 and B on rank 1 (one process does both when N = 1):
// half the time, and A's steps are timed while the other core is busy too, as in section 2.
// ---------------------------------------------------------------------------------------------
static const double same_loss_tolerance = 1e-5;   // |ΔL| at any step, against the ranks

// Run A: one process, the whole batch at once.
static RunLog train_one_process(const GPTConfig& config, const Corpus& corpus, const Plan& plan) {
    Replica replica(config);
    Optimizers optimizers = optimizers_for(replica.params);
    RunLog log;
    for (long step = 0; step < plan.steps; ++step) {
        set_lr(optimizers, warmup_cosine_lr(step, plan.warmup, plan.steps, lr_max, lr_min));
        zero_grads(replica.params);
        const Clock::time_point start = Clock::now();
        StepTimes times;
        log.loss.push_back(forward_backward(replica, corpus, {0, global_batch}));
        times.compute = seconds_since(start);
        const Clock::time_point update = Clock::now();
        clip_grad_norm(replica.params, max_grad_norm);
        step_all(optimizers);
        times.update = seconds_since(update);
        log.times.push_back(times);
    }
    log.final_hash = parameter_hash(replica.params);
    return log;
}

// Run B: one process, the ranks' shares one after the other, added in rank order.
static RunLog train_in_rank_order(const GPTConfig& config, const Corpus& corpus, const Plan& plan,
                                  int ranks) {
    Replica replica(config);
    Optimizers optimizers = optimizers_for(replica.params);
    RunLog log;
    std::vector<real> sum, flat;
    for (long step = 0; step < plan.steps; ++step) {
        set_lr(optimizers, warmup_cosine_lr(step, plan.warmup, plan.steps, lr_max, lr_min));
        const Rng batch_rng = replica.data_rng;   // every share draws the same global batch
        sum.assign(numbers_in(replica.params), real(0));
        double loss = 0;
        for (int r = 0; r < ranks; ++r) {
            const Slice rows = share_of(global_batch, ranks, r);
            replica.data_rng = batch_rng;
            zero_grads(replica.params);
            loss += forward_backward(replica, corpus, rows) * double(rows.size());
            flatten_gradients(replica.params, real(rows.size()), flat);
            for (std::size_t i = 0; i < sum.size(); ++i) sum[i] = sum[i] + flat[i];
        }
        for (real& g : sum) g = g / real(global_batch);
        unflatten_gradients(sum, replica.params);
        clip_grad_norm(replica.params, max_grad_norm);
        step_all(optimizers);
        log.loss.push_back(loss / global_batch);
    }
    log.final_hash = parameter_hash(replica.params);
    return log;
}

static double largest_difference(const std::vector<double>& a, const std::vector<double>& b) {
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
    return worst;
}

// Sends a run's losses and final hash from `from` to rank 0.
static void send_to_rank_0(RunLog& log, int from, long steps) {
    if (from == 0) return;
    if (world.rank == from) {
        MPI_Send(log.loss.data(), int(steps), MPI_DOUBLE, 0, 0, MPI_COMM_WORLD);
        MPI_Send(&log.final_hash, 1, MPI_UINT64_T, 0, 1, MPI_COMM_WORLD);
    } else if (world.rank == 0) {
        log.loss.resize(std::size_t(steps));
        MPI_Recv(log.loss.data(), int(steps), MPI_DOUBLE, from, 0, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE);
        MPI_Recv(&log.final_hash, 1, MPI_UINT64_T, from, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
}

// The 1-process runs of section 3, A and B; on rank 0 both logs are filled in.
struct References {
    RunLog whole_batch, rank_order;
};

static References run_references(const GPTConfig& config, const Corpus& corpus, const Plan& plan) {
    References refs;
    const int b_rank = world.size > 1 ? 1 : 0;
    if (world.rank == 0) refs.whole_batch = train_one_process(config, corpus, plan);
    if (world.rank == b_rank)
        refs.rank_order = train_in_rank_order(config, corpus, plan, world.size);
    send_to_rank_0(refs.rank_order, b_rank, plan.steps);
    MPI_Barrier(MPI_COMM_WORLD);
    return refs;
}

// Rank 0's verdict (broadcast, so that every rank throws together): an empty string when the
// runs agree within the tolerance.
static void agree_or_throw(const std::string& verdict_on_rank_0) {
    int length = int(verdict_on_rank_0.size());
    MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (length == 0) return;
    std::string verdict = verdict_on_rank_0;
    verdict.resize(std::size_t(length));
    MPI_Bcast(&verdict[0], length, MPI_CHAR, 0, MPI_COMM_WORLD);
    throw std::runtime_error(verdict);
}

static std::string compare_losses(const char* what, const std::vector<double>& ours,
                                  const std::vector<double>& theirs, std::uint64_t our_hash,
                                  std::uint64_t their_hash, double tolerance) {
    const double worst = largest_difference(ours, theirs);
    const bool identical = ours == theirs && our_hash == their_hash;
    const char* verdict = "MORE than the tolerance";
    if (identical) verdict = "bit for bit, parameters too";
    else if (worst <= tolerance) verdict = "within rounding";
    std::printf("  %-44s largest |ΔL| %.1e over %zu steps: %s\n", (what + std::string(":")).c_str(),
                worst, ours.size(), verdict);
    if (worst <= tolerance) return "";
    char msg[200];
    std::snprintf(msg, sizeof msg, "%s: the losses differ by %.3g, more than the tolerance %.0e",
                  what, worst, tolerance);
    return msg;
}

static void same_numbers(const RunLog& ranks, const References& refs, const Plan& plan) {
    std::string verdict;
    if (world.rank == 0) {
        std::printf("The %d-rank losses of section 2 against one process with the same seeds:\n",
                    world.size);
        verdict = compare_losses("A. the whole batch at once (lesson 15)", ranks.loss,
                                 refs.whole_batch.loss, ranks.final_hash,
                                 refs.whole_batch.final_hash, same_loss_tolerance);
        const std::string b =
            compare_losses("B. the shares added in rank order", ranks.loss, refs.rank_order.loss,
                           ranks.final_hash, refs.rank_order.final_hash, same_loss_tolerance);
        if (verdict.empty()) verdict = b;
        std::printf("  (tolerance %.0e; the losses are about %.1f to %.1f)\n", same_loss_tolerance,
                    *std::min_element(ranks.loss.begin(), ranks.loss.end()),
                    *std::max_element(ranks.loss.begin(), ranks.loss.end()));
        std::printf("  step   ranks        A            A − ranks\n");
        std::vector<long> shown = {1, 2, 10, plan.steps / 2, plan.steps};
        std::sort(shown.begin(), shown.end());
        shown.erase(std::unique(shown.begin(), shown.end()), shown.end());
        for (long s : shown) {
            const std::size_t i = std::size_t(s - 1);
            std::printf("  %4ld  %.7f  %.7f  %+.1e\n", s, ranks.loss[i], refs.whole_batch.loss[i],
                        refs.whole_batch.loss[i] - ranks.loss[i]);
        }
    }
    agree_or_throw(verdict);
}

// ---------------------------------------------------------------------------------------------
// 4. All-reduce = reduce-scatter + all-gather. Cut the n numbers into N chunks.
//   reduce-scatter: rank r ends with chunk r of the sum, Σ over the ranks of their chunk r;
//   all-gather:     every rank ends with every rank's chunk.
// One after the other they leave the whole sum on every rank: an all-reduce. This is also how
// the bandwidth-optimal algorithm, the ring, does it. The ranks sit in a ring; in each of N − 1
// rounds of the reduce-scatter, every rank sends one chunk (n/N numbers) to its right neighbour,
// which adds it to its own; after N − 1 rounds each rank holds one chunk summed over all. The
// all-gather passes the finished chunks around the ring in N − 1 more rounds. Each rank sends
//     2·(N − 1)·n/N = 2·(N − 1)/N · n numbers
// per all-reduce: n on 2 ranks, 1.75·n on 8, and never 2·n however many ranks there are. (A
// root that collected every gradient and sent the sum back would receive (N − 1)·n numbers
// itself: it grows with N.) The numbers below are counted by that formula; MPI may choose
// another algorithm (within one machine the ranks share memory), and the times are what it did.
// ---------------------------------------------------------------------------------------------

// Every rank's share of n numbers, as MPI's counts and displacements.
struct Layout {
    std::vector<int> counts, offsets;
};

static Layout layout_of(std::size_t n) {
    Layout layout;
    for (int r = 0; r < world.size; ++r) {
        const Slice s = share_of(n, world.size, r);
        layout.counts.push_back(int(s.size()));
        layout.offsets.push_back(int(s.begin));
    }
    return layout;
}

// The bytes one rank sends in a ring all-reduce of n reals: 2·(N − 1)/N · n · sizeof(real).
static double ring_bytes(std::size_t n, int ranks) {
    return 2.0 * (ranks - 1) / ranks * double(n) * sizeof(real);
}

static void reduce_scatter_then_all_gather(const std::vector<real>& in, std::vector<real>& out,
                                           const Layout& layout) {
    std::vector<real> chunk(std::size_t(layout.counts[std::size_t(world.rank)]));
    MPI_Reduce_scatter(in.data(), chunk.data(), layout.counts.data(), mpi_real(), MPI_SUM,
                       MPI_COMM_WORLD);
    out.resize(in.size());
    MPI_Allgatherv(chunk.data(), int(chunk.size()), mpi_real(), out.data(), layout.counts.data(),
                   layout.offsets.data(), mpi_real(), MPI_COMM_WORLD);
}

// The median seconds of `f` on rank 0, over `runs` runs (every rank runs it: a collective).
static double median_seconds(const std::function<void()>& f, int runs) {
    std::vector<double> seconds;
    for (int k = 0; k < runs; ++k) {
        MPI_Barrier(MPI_COMM_WORLD);
        const Clock::time_point start = Clock::now();
        f();
        seconds.push_back(seconds_since(start));
    }
    return median(seconds);
}

static void collectives(std::size_t n) {
    heading("4. All-reduce = reduce-scatter + all-gather");
    Rng rng(1600 + std::uint64_t(world.rank));   // each rank its own numbers
    std::vector<real> mine(n), summed(n), composed;
    for (real& x : mine) x = real(rng.normal());
    const Layout layout = layout_of(n);
    MPI_Allreduce(mine.data(), summed.data(), int(n), mpi_real(), MPI_SUM, MPI_COMM_WORLD);
    reduce_scatter_then_all_gather(mine, composed, layout);
    std::printf("On the GPT's %zu gradient numbers, random on each rank: MPI_Reduce_scatter then\n"
                "MPI_Allgatherv give %s.\n",
                n,
                summed == composed ? "exactly what MPI_Allreduce gives"
                                   : "what MPI_Allreduce gives, rounded differently (another "
                                     "order of additions)");
    const double all_reduce = median_seconds(
        [&] {
            MPI_Allreduce(mine.data(), summed.data(), int(n), mpi_real(), MPI_SUM, MPI_COMM_WORLD);
        },
        21);
    const double composed_time =
        median_seconds([&] { reduce_scatter_then_all_gather(mine, composed, layout); }, 21);
    const double bytes = ring_bytes(n, world.size);
    std::printf("Bytes each rank sends in a ring, 2·(N − 1)/N · n · %zu: %.2f MB on %d ranks.\n",
                sizeof(real), bytes / 1e6, world.size);
    std::printf("Median of 21 runs: MPI_Allreduce %.2f ms (%.2f GB/s of ring traffic per rank),\n"
                "reduce-scatter + all-gather %.2f ms.\n",
                1e3 * all_reduce, bytes / all_reduce / 1e9, 1e3 * composed_time);
    std::printf("The ring's factor 2·(N − 1)/N:");
    for (int ranks : {2, 4, 8, 64, 1024})
        std::printf("  N = %d: %.3f", ranks, 2.0 * (ranks - 1) / ranks);
    std::printf("\n(a root collecting every gradient instead would receive N − 1 copies).\n");
}

// ---------------------------------------------------------------------------------------------
// 5. ZeRO stage 1. In section 2 every rank keeps AdamW's m and v for every parameter, and
// updates every parameter: the same work and the same state N times over. Stage 1 splits it.
// Lay the parameters end to end, n numbers; rank r owns the slice share_of(n, N, r) and keeps m
// and v for it alone. A step:
//   1. forward and backward on the rank's windows, as before (every rank has all the weights);
//   2. reduce-scatter n_r·g_r: rank r receives its slice of Σ_r n_r·g_r, and divides by B;
//   3. the global norm for clipping: ‖g‖² = Σ over the slices of each slice's Σ g², one more
//      (tiny) all-reduce;
//   4. AdamW updates the slice (the engine's AdamW, on tensors that hold the slice's pieces);
//   5. all-gather the updated slices: every rank has all the new weights again.
// Reduce-scatter plus all-gather is an all-reduce's traffic (section 4), so stage 1 costs no
// more communication than stage 0, and the state per rank falls from 2·n to 2·n/N numbers. The
// update is the same arithmetic on the same numbers, so the losses are section 2's; only ‖g‖
// is summed in another order (slice by slice, not tensor by tensor), which may move the clip's
// factor by a rounding: over 100 steps the losses were section 2's bit for bit with g++, and
// 1.2e-7 apart at most with clang++. The tolerance is section 3's.
// ---------------------------------------------------------------------------------------------

// A piece of this rank's slice that lies in one parameter tensor.
struct Piece {
    Tensor tensor;           // the piece's numbers, [count]: what AdamW updates
    std::size_t param = 0;   // which parameter it is part of
    std::size_t from = 0;    // where in that parameter it starts
};

// What stage 1 keeps on one rank beside its replica: its slice, cut into pieces, and AdamW for
// those pieces only.
struct ZeroOne {
    Slice slice;
    Layout layout;
    std::vector<Piece> pieces;
    Optimizers optimizers;
};

static ZeroOne zero_one_for(const std::vector<Tensor>& params) {
    ZeroOne z;
    const std::size_t n = numbers_in(params);
    z.slice = share_of(n, world.size, world.rank);
    z.layout = layout_of(n);
    std::vector<Tensor> decay, no_decay;
    std::size_t at = 0;   // where parameter k starts in the flat layout
    for (std::size_t k = 0; k < params.size(); ++k) {
        const std::size_t begin = std::max(at, z.slice.begin),
                          end = std::min(at + params[k].numel(), z.slice.end);
        if (begin < end) {
            const std::vector<real> values = params[k].values();
            Piece piece;
            piece.tensor =
                Tensor({int(end - begin)}, std::vector<real>(values.begin() + long(begin - at),
                                                             values.begin() + long(end - at)));
            piece.tensor.requires_grad_();
            piece.param = k;
            piece.from = begin - at;
            if (params[k].rank() >= 2) decay.push_back(piece.tensor);
            else no_decay.push_back(piece.tensor);
            z.pieces.push_back(piece);
        }
        at += params[k].numel();
    }
    z.optimizers = make_optimizers(decay, no_decay);
    return z;
}

// Step 3: ‖g‖ from every rank's Σ g² over its slice, and the slice clipped as clip_grad_norm
// clips (a factor max/‖g‖ when ‖g‖ > max).
static void clip_slice(std::vector<real>& slice_grad) {
    double squares = 0, total = 0;
    for (real g : slice_grad) squares += double(g) * g;
    MPI_Allreduce(&squares, &total, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    const double norm = std::sqrt(total);
    if (norm <= max_grad_norm) return;
    const double scale = max_grad_norm / norm;
    for (real& g : slice_grad) g = real(g * scale);
}

// Step 4: the slice's gradient into its pieces, AdamW on them; returns the slice's new weights.
static std::vector<real> update_slice(ZeroOne& z, const std::vector<real>& slice_grad) {
    std::size_t at = 0;
    for (Piece& piece : z.pieces) {
        const std::size_t count = piece.tensor.numel();
        piece.tensor.grad() =
            std::vector<real>(slice_grad.begin() + long(at), slice_grad.begin() + long(at + count));
        at += count;
    }
    step_all(z.optimizers);
    std::vector<real> weights;
    for (const Piece& piece : z.pieces)
        for (real w : piece.tensor.values()) weights.push_back(w);
    return weights;
}

// Step 5: every rank's slice of new weights, gathered into every rank's model.
static void all_gather_weights(const ZeroOne& z, const std::vector<real>& slice_weights,
                               const std::vector<Tensor>& params, std::vector<real>& flat) {
    flat.resize(numbers_in(params));
    MPI_Allgatherv(slice_weights.data(), int(slice_weights.size()), mpi_real(), flat.data(),
                   z.layout.counts.data(), z.layout.offsets.data(), mpi_real(), MPI_COMM_WORLD);
    std::size_t at = 0;
    for (const Tensor& p : params) {
        p.values() =
            std::vector<real>(flat.begin() + long(at), flat.begin() + long(at + p.numel()));
        at += p.numel();
    }
}

static double zero_one_step(Replica& replica, ZeroOne& z, const Corpus& corpus, double lr,
                            StepTimes& times, std::vector<real>& flat) {
    const Slice rows = share_of(global_batch, world.size, world.rank);
    set_lr(z.optimizers, lr);
    zero_grads(replica.params);
    Clock::time_point start = Clock::now();
    const double local_loss = forward_backward(replica, corpus, rows);   // 1
    times.compute = seconds_since(start);
    start = Clock::now();
    flatten_gradients(replica.params, real(rows.size()), flat);   // 2. n_r·g_r
    std::vector<real> slice_grad(z.slice.size());
    MPI_Reduce_scatter(flat.data(), slice_grad.data(), z.layout.counts.data(), mpi_real(), MPI_SUM,
                       MPI_COMM_WORLD);
    for (real& g : slice_grad) g = g / real(global_batch);
    const double loss = global_loss(local_loss, rows);
    clip_slice(slice_grad);   // 3
    times.communicate = seconds_since(start);
    start = Clock::now();
    const std::vector<real> slice_weights = update_slice(z, slice_grad);   // 4
    times.update = seconds_since(start);
    start = Clock::now();
    all_gather_weights(z, slice_weights, replica.params, flat);   // 5
    times.communicate += seconds_since(start);
    return loss;
}

static RunLog train_zero_one(const GPTConfig& config, const Corpus& corpus, const Plan& plan) {
    Replica replica(config);
    ZeroOne z = zero_one_for(replica.params);
    RunLog log;
    std::vector<real> flat;
    for (long step = 0; step < plan.steps; ++step) {
        const double lr = warmup_cosine_lr(step, plan.warmup, plan.steps, lr_max, lr_min);
        StepTimes times;
        log.loss.push_back(zero_one_step(replica, z, corpus, lr, times, flat));
        log.times.push_back(times);
        if ((step + 1) % hash_every == 0 || step + 1 == plan.steps)
            check_same_parameters(replica.params, step + 1, log.hash_checks);
        progress_line("ZeRO-1", step + 1, plan, log);
    }
    log.optimizer_bytes = optimizer_bytes(z.optimizers);
    log.final_hash = parameter_hash(replica.params);
    return log;
}

// Every rank's optimizer bytes, on rank 0.
static std::vector<unsigned long long> gathered(std::size_t bytes) {
    const unsigned long long mine = bytes;
    std::vector<unsigned long long> all(std::size_t(world.size));
    MPI_Gather(&mine, 1, MPI_UNSIGNED_LONG_LONG, all.data(), 1, MPI_UNSIGNED_LONG_LONG, 0,
               MPI_COMM_WORLD);
    return all;
}

static void compare_memory(const RunLog& stage0, const RunLog& stage1, std::size_t n) {
    const std::vector<unsigned long long> before = gathered(stage0.optimizer_bytes),
                                          after = gathered(stage1.optimizer_bytes);
    std::string verdict;
    if (world.rank == 0) {
        std::printf("AdamW's state (m and v) as allocated, per rank:\n");
        std::printf("  rank   stage 0        stage 1        ratio\n");
        unsigned long long total = 0;
        for (int r = 0; r < world.size; ++r) {
            const std::size_t i = std::size_t(r);
            std::printf("  %4d  %9.3f MB   %9.3f MB   %.3f\n", r, double(before[i]) / 1e6,
                        double(after[i]) / 1e6, double(after[i]) / double(before[i]));
            total += after[i];
        }
        std::printf("  stage 1 over all ranks: %.3f MB, stage 0's on one rank: 2 · %zu numbers "
                    "· %zu bytes.\n",
                    double(total) / 1e6, n, sizeof(real));
        // Each rank: exactly 2 numbers per element of its slice, and at most ⌈n/N⌉ elements.
        const std::size_t largest =
            2 * ((n + std::size_t(world.size) - 1) / world.size) * sizeof(real);
        for (int r = 0; r < world.size; ++r)
            if (after[std::size_t(r)] > largest || before[std::size_t(r)] != 2 * n * sizeof(real))
                verdict = "ZeRO-1's optimizer state on rank " + std::to_string(r) + " is " +
                          std::to_string(after[std::size_t(r)]) + " bytes, not 2·n/N numbers";
        if (total != 2 * n * sizeof(real))
            verdict = "ZeRO-1's slices of the optimizer state do not add up to one whole state";
    }
    agree_or_throw(verdict);
}

static void zero_stage_one(const GPTConfig& config, const Corpus& corpus, const Plan& plan,
                           const RunLog& stage0, RunLog& stage1) {
    heading("5. ZeRO stage 1: each rank keeps m and v for its slice only");
    const std::size_t n = std::size_t(gpt_parameter_count(config));
    std::printf("Rank r owns parameters [⌊r·n/N⌋, ⌊(r + 1)·n/N⌋) of n = %zu:", n);
    for (int r = 0; r < world.size; ++r) {
        const Slice s = share_of(n, world.size, r);
        std::printf(" [%zu, %zu)", s.begin, s.end);
    }
    std::printf(".\n");
    stage1 = train_zero_one(config, corpus, plan);
    std::printf("The %d ranks' parameters agreed at each of %d checks.\n", world.size,
                stage1.hash_checks);
    std::string verdict;
    if (world.rank == 0)
        verdict = compare_losses("stage 1 against stage 0 (section 2)", stage1.loss, stage0.loss,
                                 stage1.final_hash, stage0.final_hash, same_loss_tolerance);
    agree_or_throw(verdict);
    compare_memory(stage0, stage1, n);
}

// ---------------------------------------------------------------------------------------------
// 6. Memory per device. Lesson 13 §5's table (lesson.h: bytes_per_device) for the models of this
// course on 8 devices, mixed precision with Adam: 16 bytes per parameter before sharding. Stage
// 1 is what section 5 did (in fp32, where m and v are 8 of the 16 bytes); stages 2 and 3 also
// shard the gradients and the weights.
// ---------------------------------------------------------------------------------------------
static void memory_table(const GPTConfig& ours) {
    heading("6. Memory per device: ZeRO stages 0 to 3 on 8 devices");
    const GPTConfig gpt2{50257, 1024, 12, 12, 768};   // V, T, L, H, D
    const double models[] = {double(gpt_parameter_count(ours)), double(gpt_parameter_count(gpt2)),
                             7e9};
    const char* names[] = {"lesson 15's GPT", "GPT-2 small", "7B"};
    const int devices = 8;
    std::printf("Mixed precision + Adam, %d bytes per parameter; GB per device, N = %d "
                "(activations not counted):\n",
                adam_bytes::mixed, devices);
    std::printf("%-22s  %-11s", "stage, shards also", "per device");
    for (int m = 0; m < 3; ++m) std::printf("  %16s", names[m]);
    std::printf("\n%-22s  %-11s", "", "");
    for (double params : models) std::printf("  %13.4g P", params);
    std::printf("\n");
    const char* stages[] = {"0 plain data parallel", "1 + optimizer state", "2 + gradients",
                            "3 + weights (FSDP)"};
    for (int stage = 0; stage < 4; ++stage) {
        std::printf("%-22s  %-11s", stages[stage], stage_formula(stage).c_str());
        for (double params : models)
            std::printf("  %16.4f", bytes_per_device(params, stage, devices) / 1e9);
        std::printf("\n");
    }
    std::printf("The 7B model needs %.0f GB per device in stage 0, more than an 80 GB GPU holds;\n"
                "stage 1 brings it to %.1f GB, stage 3 to %.1f GB.\n",
                bytes_per_device(7e9, 0, devices) / 1e9, bytes_per_device(7e9, 1, devices) / 1e9,
                bytes_per_device(7e9, 3, devices) / 1e9);
}

// ---------------------------------------------------------------------------------------------
// 7. Where the time goes. Each phase of a step in sections 2, 3 and 5, the median over the steps
// (a median: the machine is shared, and a few slow steps should not move it): compute is forward
// and backward; communicate is the gradients' all-reduce (stage 0), or their reduce-scatter, the
// norm's all-reduce and the weights' all-gather (stage 1), and the loss's all-reduce; update is
// clipping and AdamW. A rank that finishes its compute first waits inside the all-reduce for the
// others, so that wait counts as communication: it is the price of synchronizing.
// Throughput: the tokens per second of the N ranks together (12·64 tokens a step) against lesson
// 15's loop on one process of 1 thread, the whole batch at once. Measured side by side: the two
// take turns, 4 steps of each, 5 times over, so that both meet the same disturbances, and each
// gives the median of its 20 steps. While one process trains alone, every other rank trains a
// model of its own the same way, so that all the cores are busy in both, as they are in a
// cluster. On 2 ranks each does half the compute, so the ideal is 2x; communication and the work
// that every rank repeats whole (stage 0's update) keep it below.
// ---------------------------------------------------------------------------------------------
static StepTimes median_times(const std::vector<StepTimes>& times) {
    std::vector<double> compute, communicate, update;
    for (const StepTimes& t : times) {
        compute.push_back(t.compute);
        communicate.push_back(t.communicate);
        update.push_back(t.update);
    }
    StepTimes m;
    m.compute = median(compute);
    m.communicate = median(communicate);
    m.update = median(update);
    return m;
}

static double median_total(const std::vector<StepTimes>& times) {
    std::vector<double> total;
    for (const StepTimes& t : times) total.push_back(t.total());
    return median(total);
}

// On rank 0: the phases of the runs of sections 2, 3 (run A) and 5.
static void phase_table(const RunLog& stage0, const RunLog& stage1, const RunLog& one,
                        std::size_t n) {
    if (world.rank != 0) return;
    std::printf(
        "Milliseconds per step on rank 0, the median of each column (so they need not add\n"
        "up to the total's):                          compute  communicate  update   total\n");
    const RunLog* runs[] = {&one, &stage0, &stage1};
    const char* names[] = {"1 process, whole batch (run A)", "stage 0 (data parallel)",
                           "stage 1 (ZeRO-1)"};
    for (int k = 0; k < 3; ++k) {
        const StepTimes m = median_times(runs[k]->times);
        std::printf("  %-40s %7.2f  %11.2f  %6.2f  %6.2f\n", names[k], 1e3 * m.compute,
                    1e3 * m.communicate, 1e3 * m.update, 1e3 * median_total(runs[k]->times));
    }
    const double bytes = ring_bytes(n, world.size),
                 seconds = median_times(stage0.times).communicate;
    std::printf("Communication per step and rank in stage 0: %.2f MB by the ring's count (section "
                "4),\nin %.2f ms: %.2f GB/s, waits included.\n",
                bytes / 1e6, 1e3 * seconds, bytes / seconds / 1e9);
}

// The seconds of one step of lesson 15's loop, the whole batch on this process alone.
static double one_process_step(Replica& replica, Optimizers& optimizers, const Corpus& corpus) {
    const Clock::time_point start = Clock::now();
    zero_grads(replica.params);
    forward_backward(replica, corpus, {0, global_batch});
    clip_grad_norm(replica.params, max_grad_norm);
    step_all(optimizers);
    return seconds_since(start);
}

static void throughput(const GPTConfig& config, const Corpus& corpus) {
    const int rounds = 5, steps_per_turn = 4;
    Replica together(config), alone(config);
    Optimizers together_opt = optimizers_for(together.params),
               alone_opt = optimizers_for(alone.params);
    std::vector<double> parallel_seconds, single_seconds;
    std::vector<real> flat;
    for (int round = 0; round < rounds; ++round) {
        MPI_Barrier(MPI_COMM_WORLD);
        for (int k = 0; k < steps_per_turn; ++k) {
            StepTimes times;
            const Clock::time_point start = Clock::now();
            data_parallel_step(together, together_opt, corpus, lr_min, times, flat);
            parallel_seconds.push_back(seconds_since(start));
        }
        MPI_Barrier(MPI_COMM_WORLD);
        for (int k = 0; k < steps_per_turn; ++k)
            single_seconds.push_back(one_process_step(alone, alone_opt, corpus));
    }
    const double tokens = double(global_batch) * context, single = tokens / median(single_seconds),
                 parallel = tokens / median(parallel_seconds);
    std::printf("\nTokens per second, 1 thread per process, taking turns (%d x %d steps each):\n"
                "  1 process, the whole batch:   %7.0f\n"
                "  %d ranks, data parallel:       %7.0f   %.3fx",
                rounds, steps_per_turn, single, world.size, parallel, parallel / single);
    if (world.size == 2)
        std::printf("\n  (the target is 1.6x or more: %s)",
                    parallel / single >= 1.6 ? "reached"
                                             : "not reached here; was the machine busy?");
    std::printf("\n");
}

static void where_the_time_goes(const RunLog& stage0, const RunLog& stage1, const RunLog& one,
                                const GPTConfig& config, const Corpus& corpus) {
    heading("7. Where the time goes");
    phase_table(stage0, stage1, one, std::size_t(gpt_parameter_count(config)));
    throughput(config, corpus);
}

static void lesson() {
    MPI_Init(nullptr, nullptr);
    MPI_Comm_rank(MPI_COMM_WORLD, &world.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world.size);
    if (world.rank != 0 && !std::freopen("/dev/null", "w", stdout))
        throw std::runtime_error("rank " + std::to_string(world.rank) + ": cannot silence stdout");
    set_num_threads(1);   // 1 thread per rank: the ranks are the parallelism
    std::printf("Lesson 16: data parallelism and ZeRO-1 over MPI\n");
    Corpus corpus;
    if (!load_corpus(corpus)) {
        MPI_Finalize();
        return;
    }
    const GPTConfig config = model_config(corpus);
    const Plan plan = plan_for(options.steps);
    const std::size_t n = std::size_t(gpt_parameter_count(config));
    the_workers();

    heading("2. Data parallelism: all-reduce the gradients");
    std::printf("Lesson 15's GPT (%zu parameters) and recipe, %ld steps (warmup %ld).\n", n,
                plan.steps, plan.warmup);
    const RunLog stage0 = train_data_parallel(config, corpus, plan);
    std::printf("The %d ranks' parameters agreed at each of %d checks (step 0 and every %d).\n",
                world.size, stage0.hash_checks, hash_every);

    heading("3. The same numbers as one process");
    const References refs = run_references(config, corpus, plan);
    same_numbers(stage0, refs, plan);

    collectives(n);
    RunLog stage1;
    zero_stage_one(config, corpus, plan, stage0, stage1);
    memory_table(config);
    where_the_time_goes(stage0, stage1, refs.whole_batch, config, corpus);
    MPI_Finalize();
}

// ---- Homework --------------------------------------------------------------------------------

// 16.1  Averaging the gradients (section 2, step 3). `grad` holds this rank's gradient of its
// mean loss over `local_windows` windows; `all_reduce_sum` replaces a vector by its element-wise
// sum over every rank (MPI_Allreduce with MPI_SUM, in the lesson). Leave in `grad` the gradient
// of the global batch's mean loss, over `global_windows` windows in all:
//     g = (1/B)·Σ_r n_r·g_r
// calling all_reduce_sum exactly once (every rank must make the same calls, or they wait for
// each other forever). Throw std::invalid_argument, before any call, unless
// 0 <= local_windows <= global_windows and global_windows >= 1.
using AllReduceSum = std::function<void(std::vector<real>&)>;
void average_gradients(std::vector<real>& grad, int local_windows, int global_windows,
                       const AllReduceSum& all_reduce_sum) {
    // BEGIN EXERCISE 16.1
    throw not_implemented("16.1");
    // END EXERCISE
}

// 16.2  ZeRO-1's slice bounds (section 5), the rule of PyTorch's tensor_split and of many
// sharding codes: n numbers over N ranks, ⌊n/N⌋ each, and the first n mod N ranks one more.
// Return rank r's [begin, end). The slices of ranks 0..N−1 follow each other without gap or
// overlap and cover [0, n). (The lesson's share_of spreads the extra numbers differently; both
// are valid, as long as every rank uses the same rule.) Throw std::invalid_argument unless
// ranks >= 1 and 0 <= rank < ranks.
struct Bounds {
    std::size_t begin = 0, end = 0;
};
Bounds zero_slice(std::size_t n, int ranks, int rank) {
    // BEGIN EXERCISE 16.2
    throw not_implemented("16.2");
    // END EXERCISE
}

// Three ranks of 2, 1 and 3 windows (B = 6), simulated: the learner's function runs as rank 0,
// and the fake all-reduce adds what ranks 1 and 2 would contribute, n_r·g_r.
static void check_average_gradients() {
    const std::vector<double> g0 = {0.5, -1.25, 3}, g1 = {2, 0.75, -1}, g2 = {-0.5, 4, 0.25};
    std::vector<real> grad(g0.begin(), g0.end());
    int calls = 0;
    const AllReduceSum others = [&](std::vector<real>& v) {
        ++calls;
        if (v.size() != g1.size()) throw std::invalid_argument("all_reduce_sum: wrong size");
        for (std::size_t i = 0; i < v.size(); ++i) v[i] = real(v[i] + 1 * g1[i] + 3 * g2[i]);
    };
    average_gradients(grad, 2, 6, others);
    expect_near("all_reduce_sum called once", calls, 1, 0);
    for (std::size_t i = 0; i < g0.size(); ++i)
        expect_near("(2·g0 + 1·g1 + 3·g2)/6", grad[i], (2 * g0[i] + g1[i] + 3 * g2[i]) / 6, 1e-6);
    // Equal shares: the plain mean of the ranks' gradients (two ranks of 6: lesson 16's case).
    std::vector<real> half = {1, -3};
    const std::vector<double> other = {3, 5};
    average_gradients(half, 6, 12, [&](std::vector<real>& v) {
        for (std::size_t i = 0; i < v.size(); ++i) v[i] = real(v[i] + 6 * other[i]);
    });
    expect_near("equal shares: (1 + 3)/2", half[0], 2, 1e-6);
    expect_near("equal shares: (−3 + 5)/2", half[1], 1, 1e-6);
    // A rank with no windows still joins the sum, with nothing of its own.
    std::vector<real> idle = {7, 7};
    average_gradients(idle, 0, 4, [](std::vector<real>& v) {
        for (real& x : v) x = x + 8;
    });
    expect_near("0 windows: only the others' sum, 8/4", idle[0], 2, 1e-6);
    int bad_calls = 0;
    const AllReduceSum count = [&](std::vector<real>&) { ++bad_calls; };
    expect_true("global_windows = 0 throws std::invalid_argument", throws_invalid_argument([&] {
                    std::vector<real> g = {1};
                    average_gradients(g, 0, 0, count);
                }));
    expect_true("local_windows > global_windows throws", throws_invalid_argument([&] {
                    std::vector<real> g = {1};
                    average_gradients(g, 5, 4, count);
                }));
    expect_true("local_windows < 0 throws", throws_invalid_argument([&] {
                    std::vector<real> g = {1};
                    average_gradients(g, -1, 4, count);
                }));
    expect_near("and none of them called all_reduce_sum", bad_calls, 0, 0);
}

static void check_zero_slice() {
    // 10 over 4: 3, 3, 2, 2.
    const std::size_t begins[] = {0, 3, 6, 8}, ends[] = {3, 6, 8, 10};
    for (int r = 0; r < 4; ++r) {
        const Bounds b = zero_slice(10, 4, r);
        expect_near("10 over 4 ranks: begin", double(b.begin), double(begins[r]), 0);
        expect_near("10 over 4 ranks: end", double(b.end), double(ends[r]), 0);
    }
    // Lesson 15's GPT over 2, 3 and 7 ranks: contiguous, covering, sizes ⌊n/N⌋ or one more.
    const std::size_t n = 816'128;
    for (int ranks : {1, 2, 3, 7}) {
        std::size_t next = 0;
        for (int r = 0; r < ranks; ++r) {
            const Bounds b = zero_slice(n, ranks, r);
            expect_near("each slice starts where the one before ended", double(b.begin),
                        double(next), 0);
            const std::size_t size = b.end - b.begin,
                              expected = n / ranks + (std::size_t(r) < n % ranks ? 1 : 0);
            expect_near("⌊n/N⌋, plus one for the first n mod N ranks", double(size),
                        double(expected), 0);
            next = b.end;
        }
        expect_near("the last slice ends at n", double(next), double(n), 0);
    }
    // Fewer numbers than ranks: the first n ranks get one each, the rest empty slices.
    const Bounds empty = zero_slice(2, 3, 2);
    expect_true("2 numbers over 3 ranks: rank 2's slice is [2, 2)",
                empty.begin == 2 && empty.end == 2);
    expect_true("0 ranks throws std::invalid_argument",
                throws_invalid_argument([] { zero_slice(10, 0, 0); }));
    expect_true("rank 4 of 4 throws std::invalid_argument",
                throws_invalid_argument([] { zero_slice(10, 4, 4); }));
    expect_true("rank −1 throws std::invalid_argument",
                throws_invalid_argument([] { zero_slice(10, 4, -1); }));
}

static int check_homework() {
    Homework hw("16");
    hw.check("16.1", "averaging the gradients: sum n_r·g_r over the ranks, then divide by B",
             "multiply by local_windows, call all_reduce_sum once, divide by global_windows; "
             "check the window counts before anything else",
             check_average_gradients);
    hw.check("16.2", "ZeRO-1's slice bounds: ⌊n/N⌋ each, the first n mod N ranks one more",
             "begin = r·⌊n/N⌋ + min(r, n mod N); the size is ⌊n/N⌋ plus 1 if r < n mod N",
             check_zero_slice);
    return hw.finish();
}

// ---- The command line ------------------------------------------------------------------------

static void print_usage() {
    std::printf("usage: mpirun -np 2 ./build/lessons/16 [--steps N]  |  ./build/lessons/16 "
                "--check\n"
                "  (no flags)   100 steps in each training section\n"
                "  --steps N    N steps instead (CI runs 20)\n"
                "  --check      grade the homework (no mpirun needed)\n");
}

// Returns −1 to go on, or the exit status (0 after --help, 2 on a bad flag).
static int parse_options(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            print_usage();
            return 0;
        }
        if (arg != "--steps") {
            std::printf("unknown flag '%s'\n", arg.c_str());
            print_usage();
            return 2;
        }
        if (i + 1 >= argc) {
            std::printf("--steps needs a number after it\n");
            return 2;
        }
        const char* text = argv[++i];
        char* end = nullptr;
        errno = 0;
        const long steps = std::strtol(text, &end, 10);
        if (end == text || *end != '\0' || errno != 0 || steps < 10 || steps > 100'000) {
            std::printf("--steps: expected a whole number from 10 to 100000, got '%s'\n", text);
            return 2;
        }
        options.steps = steps;
    }
    return -1;
}

// An error on one rank would leave the others waiting in a collective: MPI_Abort ends them all.
int main(int argc, char** argv) {
    const int status = run_lesson(argc, argv, parse_options, lesson, check_homework);
    int started = 0, finished = 0;
    MPI_Initialized(&started);
    if (started) MPI_Finalized(&finished);
    if (status != 0 && started && !finished) MPI_Abort(MPI_COMM_WORLD, status);
    return status;
}
