// Lesson 12: attention, forward and backward.
//
// Attention is the layer that lets each position of a sequence read from the others:
//
//     S = Q·Kᵀ/√d        P = softmax(S), row by row        O = P·V
//
// It is also where a transformer spends much of its compute and most of its activation memory:
// P has T×T numbers per head. This lesson writes attention twice: composed from ops the engine
// already has (matmul, transpose, softmax; their backward comes free), and as one fused op whose
// backward is written by hand (engine.cpp §4.3). Then it counts what each costs.
//
//   1. Single-head attention on a 3-token example, composed and fused.
//   2. The backward in five steps, dV, dP, dS, dQ, dK, written out and compared.
//   3. The causal mask: a token sees only itself and the past.
//   4. Multi-head causal self-attention: fused and composed agree.
//   5. FLOPs, counted by the engine: the backward costs 2× the forward (2.5× without P).
//   6. Memory: storing P against storing one log-sum-exp per row (FlashAttention).
//
// Run it:             make lesson N=12        (plots go to build/plots/12_*.svg)
// Grade the homework: make check N=12

#include "lesson.h"

#include <algorithm>
#include <vector>

static void print_matrix(const char* name, const Tensor& m) {
    const int rows = m.dim(-2), cols = m.dim(-1);
    for (int i = 0; i < rows; ++i) {
        std::printf("  %-4s", i == 0 ? name : "");
        for (int j = 0; j < cols; ++j)
            std::printf(" %8.4f", double(m.values()[std::size_t(i) * cols + j]));
        std::printf("\n");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Three tokens, d = 2. Token i's query q_i is dotted with every key k_j; the scores are
// divided by √d = 1.414 (a dot product of d unit-sized terms has a spread of about √d, and
// this keeps softmax out of saturation whatever d is); each row of P sums to 1; and output row i
// is the P-weighted average of the value rows.
// ---------------------------------------------------------------------------------------------
struct Example {
    Tensor Q, K, V;
};

static Example example() {
    return {Tensor({3, 2}, {1, 0, 0, 1, 1, 1}), Tensor({3, 2}, {1, 0, 0, 2, 1, -1}),
            Tensor({3, 2}, {1, 2, 3, 4, 5, 6})};
}

static void single_head() {
    heading("1. Single-head attention on 3 tokens, d = 2");
    const Example e = example();
    const Tensor S = matmul(e.Q, transpose(e.K)) * real(1 / std::sqrt(2.0));
    const Tensor P = softmax(S);
    print_matrix("Q", e.Q);
    print_matrix("K", e.K);
    print_matrix("V", e.V);
    std::printf("\n");
    print_matrix("S", S);
    print_matrix("P", P);
    print_matrix("O", matmul(P, e.V));
    const Tensor composed = attention_composed(e.Q, e.K, e.V, false),
                 fused = attention(e.Q, e.K, e.V, false);
    std::printf(
        "\nQuery 1 = (0, 1) matches key 1 = (0, 2) best (score 2/1.414 = 1.414), so row 1 of P\n"
        "puts %.3f on token 1 and O's row 1 leans toward v_1 = (3, 4).\n",
        double(P.at({1, 1})));
    std::printf("attention_composed and the fused attention differ by at most %.1e.\n",
                max_difference(composed.values(), fused.values()));
}

// ---------------------------------------------------------------------------------------------
// 2. The backward, given dO = dL/dO, in the order of the texts:
//     1. dV = Pᵀ·dO                         [S, T]·[T, dv]   O = P·V: V's gradient is matmul's dW
//     2. dP = dO·Vᵀ                         [T, dv]·[dv, S]  and P's is matmul's dX
//     3. dS = P ∘ (dP − rowsum(dP ∘ P))     softmax's Jacobian diag(p) − p·pᵀ, applied row by row
//     4. dQ = dS·K/√d                       S = Q·Kᵀ/√d
//     5. dK = dSᵀ·Q/√d
// dV and dP need only what the forward pass left (P, V, dO); dS needs dP; dQ and dK need dS.
// Below, the five steps are computed with engine ops as plain arithmetic (no autograd), and
// compared with backward() through the composed ops and through the fused op.
// ---------------------------------------------------------------------------------------------
static void backward_steps() {
    heading("2. The backward in five steps: dV, dP, dS, dQ, dK");
    const Example e = example();
    const real s = real(1 / std::sqrt(2.0));
    const Tensor dO({3, 2}, {1, 0, 0, 1, 0.5, -0.5});   // an upstream gradient, chosen by hand
    const Tensor P = softmax(matmul(e.Q, transpose(e.K)) * s);

    const Tensor dV = matmul(transpose(P), dO);           // 1
    const Tensor dP = matmul(dO, transpose(e.V));         // 2
    const Tensor dS = P * (dP - sum(dP * P, -1, true));   // 3
    const Tensor dQ = matmul(dS, e.K) * s;                // 4
    const Tensor dK = matmul(transpose(dS), e.Q) * s;     // 5
    print_matrix("dO", dO);
    std::printf("\n");
    print_matrix("dV", dV);
    print_matrix("dP", dP);
    print_matrix("dS", dS);
    print_matrix("dQ", dQ);
    print_matrix("dK", dK);
    std::printf(
        "\nEach row of dS sums to 0 (softmax's outputs always sum to 1, so no gradient can\n"
        "raise them all): %.1e, %.1e, %.1e. Row 2 is 0 everywhere: dO's row 2 = (0.5, -0.5)\n"
        "meets V's rows, whose two entries differ by 1 in every row, so dP's row 2 is a constant,\n"
        "and adding a constant to a softmax's scores changes nothing.\n",
        double(sum(slice(dS, 0, 0, 1)).item()), double(sum(slice(dS, 0, 1, 2)).item()),
        double(sum(slice(dS, 0, 2, 3)).item()));

    std::printf("\n%-34s  %9s  %9s  %9s\n", "largest difference from the steps", "dQ", "dK", "dV");
    for (int fused = 0; fused < 2; ++fused)
        for (AttentionSaves saves : {AttentionSaves::probabilities, AttentionSaves::log_sum_exp}) {
            if (!fused && saves == AttentionSaves::log_sum_exp) continue;
            Tensor q = e.Q.detach().requires_grad_(), k = e.K.detach().requires_grad_(),
                   v = e.V.detach().requires_grad_();
            const Tensor o =
                fused ? attention(q, k, v, false, saves) : attention_composed(q, k, v, false);
            o.backward(dO);
            const char* name = !fused ? "backward() through the composed ops"
                               : saves == AttentionSaves::probabilities
                                   ? "fused op, P saved"
                                   : "fused op, log-sum-exp saved";
            std::printf("%-34s  %9.1e  %9.1e  %9.1e\n", name, max_difference(q.grad(), dQ.values()),
                        max_difference(k.grad(), dK.values()),
                        max_difference(v.grad(), dV.values()));
        }
    std::printf(
        "(float rounding only; the tests compare fused and composed in double to 1e-9, and\n"
        "both against finite differences to 1e-6.)\n");
}

// ---------------------------------------------------------------------------------------------
// 3. A language model predicts token i + 1 from tokens 0..i, so token i must not read later
// tokens. Adding −∞ to the scores above the diagonal (the engine adds −1e9, whose exp is exactly
// 0) gives those keys weight 0: row 0 of P is (1, 0, 0, ...), so O's row 0 is v_0 itself. The
// fused op does not even compute the masked scores: T(T + 1)/2 pairs instead of T², almost half
// the work for long sequences.
// ---------------------------------------------------------------------------------------------
static void causal() {
    heading("3. The causal mask: token i sees tokens 0..i");
    Rng rng(3);
    const Tensor q = randn({4, 3}, rng), k = randn({4, 3}, rng), v = randn({4, 2}, rng);
    const Tensor mask = causal_mask(4);
    for (int i = 0; i < 4; ++i) {
        std::printf("  %-4s", i == 0 ? "mask" : "");
        for (int j = 0; j < 4; ++j) std::printf(" %8s", mask.at({i, j}) == 0 ? "0" : "-1e9");
        std::printf("\n");
    }
    const Tensor P = softmax(matmul(q, transpose(k)) * real(1 / std::sqrt(3.0)) + causal_mask(4));
    print_matrix("P", P);
    const Tensor o = attention(q, k, v, true);
    std::printf(
        "\nO's row 0 = (%.4f, %.4f) = v_0 = (%.4f, %.4f). Changing token 3's key and value\n",
        double(o.at({0, 0})), double(o.at({0, 1})), double(v.at({0, 0})), double(v.at({0, 1})));
    Tensor k2 = k.detach(), v2 = v.detach();
    k2.at({3, 0}) += 10;
    v2.at({3, 1}) += 10;
    const Tensor o2 = attention(q, k2, v2, true);
    std::printf("changes rows 0-2 of O by %.1e and row 3 by %.2f.\n",
                max_difference(slice(o, 0, 0, 3).values(), slice(o2, 0, 0, 3).values()),
                max_difference(slice(o, 0, 3, 4).values(), slice(o2, 0, 3, 4).values()));
}

// ---------------------------------------------------------------------------------------------
// 4. Multi-head causal self-attention (engine.cpp §4.4) on x [B, T, D]:
//     Q = x·Wq, K = x·Wk, V = x·Wv;  head h attends within features [h·D/H, (h+1)·D/H);
//     out = concat(head outputs)·Wo.
// Everything but attention itself is matmul, slice and concat, so composed and fused versions
// differ only inside the heads. We compare their outputs and all five gradients, then what a
// forward + backward step of each costs: FLOPs and peak bytes, counted by the engine (the same
// on every run), and time, the median of 9 runs on one thread.
// ---------------------------------------------------------------------------------------------
struct MultiHeadInputs {
    Tensor x;
    std::vector<Tensor> W;   // Wq, Wk, Wv, Wo
};

// One forward + backward step; returns the output, and leaves the gradients in `p`.
static Tensor multi_head_step(const MultiHeadInputs& in, bool fused, std::vector<Tensor>& p) {
    p = {in.x.detach().requires_grad_()};
    for (const Tensor& w : in.W) p.push_back(w.detach().requires_grad_());
    const Tensor y =
        multi_head_attention(p[0], p[1], p[2], p[3], p[4], 8, true,
                             fused ? AttentionKernel::fused : AttentionKernel::composed);
    mean(y * y).backward();
    return y;
}

struct StepCost {
    std::int64_t flops;
    std::size_t peak_bytes;
};

static StepCost multi_head_cost(const MultiHeadInputs& in, bool fused) {
    std::vector<Tensor> p;
    reset_counted_flops();
    reset_peak_tensor_bytes();
    const std::size_t start = current_tensor_bytes();
    multi_head_step(in, fused, p);
    return {counted_flops(), peak_tensor_bytes() - start};
}

static void multi_head() {
    heading("4. Multi-head causal self-attention, B = 4, T = 64, D = 64, 8 heads");
    Rng rng(4);
    MultiHeadInputs in{randn({4, 64, 64}, rng), {}};
    for (int i = 0; i < 4; ++i)
        in.W.push_back(init_weight({64, 64}, 64, 64, Init::xavier_normal, rng));
    std::vector<real> out[2], grads[2][5];
    for (int fused = 0; fused < 2; ++fused) {
        std::vector<Tensor> p;
        out[fused] = multi_head_step(in, fused, p).values();
        for (int i = 0; i < 5; ++i) grads[fused][i] = p[i].grad();
    }
    const char* names[] = {"dx", "dWq", "dWk", "dWv", "dWo"};
    std::printf("largest |fused - composed|: output %.1e", max_difference(out[0], out[1]));
    for (int i = 0; i < 5; ++i)
        std::printf(", %s %.1e", names[i], max_difference(grads[0][i], grads[1][i]));

    const StepCost composed = multi_head_cost(in, false), fused = multi_head_cost(in, true);
    std::vector<Tensor> scratch;
    const std::vector<double> ms = median_ms_one_thread(
        {[&] { multi_head_step(in, false, scratch); }, [&] { multi_head_step(in, true, scratch); }},
        9);
    std::printf("\n\nforward + backward   %14s  %16s  %22s\n", "FLOPs (counted)", "peak bytes",
                "median of 9, 1 thread");
    std::printf("composed            %14lld  %16zu  %19.2f ms\n", (long long)composed.flops,
                composed.peak_bytes, ms[0]);
    std::printf("fused               %14lld  %16zu  %19.2f ms\n", (long long)fused.flops,
                fused.peak_bytes, ms[1]);
    // The four products [256, 64]·[64, 64], forward and their two backward products each.
    const long long projections = 3LL * 4 * 2 * 4 * 64 * 64 * 64;
    std::printf(
        "The fused op does %.0f%% of the composed FLOPs: it skips the masked half of each head's\n"
        "scores, and the four projections (%lld FLOPs with their backward) are the same in both.\n"
        "It peaks at %.1fx fewer bytes: per head it keeps one [T, T] tensor, P, where the "
        "composed\n"
        "ops keep four (Q*K^T, scaled, masked, P) and the mask, and then a gradient for each.\n",
        100.0 * double(fused.flops) / double(composed.flops), projections,
        double(composed.peak_bytes) / double(fused.peak_bytes));
    if (ms[1] < ms[0])
        std::printf("On one thread its step also took %.1fx less time.\n", ms[0] / ms[1]);
    else
        std::printf(
            "On one thread its step was not faster on this run (%.1fx the composed time).\n",
            ms[1] / ms[0]);
}

// ---------------------------------------------------------------------------------------------
// 5. FLOPs, counted by the engine (engine.cpp §4.1: each kernel adds its multiply-adds × 2).
// Forward: S = Q·Kᵀ and O = P·V, 2·T·S·d each. Backward: dV, dP, dQ, dK, four products of the
// same size: twice the forward. Saving only the log-sum-exp adds the recomputation of S: 2.5×.
// The texts' numbers: T = 512, d = 64: the backward's four products are 134,217,728 FLOPs.
// (The softmax's exponentials are not counted: O(T²) against the products' O(T²·d).)
// ---------------------------------------------------------------------------------------------
struct Flops {
    std::int64_t forward, backward;
};

static Flops measure(int T, int d, bool causal, bool fused, AttentionSaves saves) {
    Rng rng(5);
    Tensor q = randn({T, d}, rng).requires_grad_(), k = randn({T, d}, rng).requires_grad_(),
           v = randn({T, d}, rng).requires_grad_();
    reset_counted_flops();
    const Tensor o =
        fused ? attention(q, k, v, causal, saves) : attention_composed(q, k, v, causal);
    const std::int64_t forward = counted_flops();
    reset_counted_flops();
    o.backward(Tensor::full(o.shape(), 1));
    return {forward, counted_flops()};
}

static void flops() {
    heading("5. FLOPs of attention, T = 512, d = 64, counted by the engine");
    std::printf("%-36s  %14s  %14s  %7s\n", "", "forward", "backward", "ratio");
    struct Row {
        const char* name;
        bool causal, fused;
        AttentionSaves saves;
    };
    const Row rows[] = {
        {"fused, P saved", false, true, AttentionSaves::probabilities},
        {"fused, log-sum-exp saved", false, true, AttentionSaves::log_sum_exp},
        {"fused, causal, P saved", true, true, AttentionSaves::probabilities},
        {"composed (matmul counts)", false, false, AttentionSaves::probabilities},
    };
    for (const Row& r : rows) {
        const Flops f = measure(512, 64, r.causal, r.fused, r.saves);
        if (f.forward == 0) {
            std::printf(
                "%-36s  (engine.cpp's matmul does not count FLOPs: the §4.1 hook is missing)\n",
                r.name);
            continue;
        }
        std::printf("%-36s  %14lld  %14lld  %7.2f\n", r.name, (long long)f.forward,
                    (long long)f.backward, double(f.backward) / double(f.forward));
    }
    std::printf("\nBy formula: forward 2 x 2*512^2*64 = %lld; backward 4 x 2*512^2*64 = %lld.\n"
                "Causal: 512*513/2 = 131,328 pairs instead of 262,144: 50.1%% of the work.\n",
                2LL * 2 * 512 * 512 * 64, 4LL * 2 * 512 * 512 * 64);

    // Both ratios hold at every length: FLOPs grow as T² in forward and backward alike.
    std::vector<double> lengths, forward, backward;
    for (int T : {32, 64, 128, 256, 512}) {
        const Flops f = measure(T, 64, false, true, AttentionSaves::probabilities);
        lengths.push_back(T);
        forward.push_back(double(f.forward));
        backward.push_back(double(f.backward));
    }
    Plot plot("Attention FLOPs against sequence length (d = 64)", "T", "FLOPs", Scale::log_log);
    plot.add("forward", lengths, forward);
    plot.add("backward (P saved)", lengths, backward);
    plot.save("12_attention_flops");

    const double scores = 2048.0 * 2048.0;
    std::printf("\nThe score matrix grows as T^2: T = 2048 gives %.0f numbers per head; 32 heads\n"
                "%.0f million; in fp32 %.1f MB, for one layer of one sequence.\n",
                scores, 32 * scores / 1e6, 32 * scores * 4 / 1e6);
}

// ---------------------------------------------------------------------------------------------
// 6. Memory. The backward needs P; keeping it costs T·S numbers per head and sequence. Keeping
// only each row's log-sum-exp lse_i = log Σⱼ exp(S_ij) costs T, and P_ij = exp(S_ij − lse_i)
// can be rebuilt from Q, K and lse when the backward needs it (that is the recomputation of
// section 5). The fused op keeps its choice as a tensor, so tensor_bytes() measures it.
// The texts' example, fp16: h = 32 heads, T = 4096, d = 128:
//     P:            32·4096·4096·2 bytes = 1 GiB
//     O and lse:    32·4096·128·2 + 32·4096·2 bytes = 32.25 MiB          ratio 31.75
// ---------------------------------------------------------------------------------------------
static void memory() {
    heading("6. Memory held for the backward: P or one log-sum-exp per row");
    std::printf("%6s  %22s  %22s  %9s\n", "T", "bytes held, P saved", "bytes held, lse saved",
                "ratio");
    Rng rng(6);
    std::vector<double> lengths, with_p, with_lse;
    for (int T : {64, 128, 256, 512}) {
        const int heads = 8, d = 64;   // a batch of 8 heads, as [8, T, d]
        const Tensor q = randn({heads, T, d}, rng).requires_grad_(), k = randn({heads, T, d}, rng),
                     v = randn({heads, T, d}, rng);
        std::size_t held[2];
        for (int i = 0; i < 2; ++i) {
            const std::size_t before = tensor_bytes();
            const Tensor o = attention(
                q, k, v, true, i ? AttentionSaves::log_sum_exp : AttentionSaves::probabilities);
            held[i] = tensor_bytes() - before;   // O itself, and what the op saved
        }
        std::printf("%6d  %22zu  %22zu  %8.1fx\n", T, held[0], held[1],
                    double(held[0]) / double(held[1]));
        lengths.push_back(T);
        with_p.push_back(double(held[0]));
        with_lse.push_back(double(held[1]));
    }
    std::printf("(Both include the output O, 8*T*64 floats; P adds 8*T^2, the log-sum-exp 8*T.)\n");
    const double gib = 1024.0 * 1024 * 1024, mib = 1024.0 * 1024;
    const double p_bytes = 32.0 * 4096 * 4096 * 2,
                 flash_bytes = 32.0 * 4096 * 128 * 2 + 32.0 * 4096 * 2;
    std::printf(
        "\nThe texts' example in fp16 (32 heads, T = 4096, d = 128): P %.2f GiB, O and the\n"
        "log-sum-exp %.2f MiB: %.2f times less. Per layer, per sequence.\n",
        p_bytes / gib, flash_bytes / mib, p_bytes / flash_bytes);
    Plot plot("Bytes kept for attention's backward (8 heads, d = 64)", "T", "bytes",
              Scale::log_log);
    plot.add("P saved", lengths, with_p);
    plot.add("log-sum-exp saved", lengths, with_lse);
    plot.save("12_attention_memory");
}

static void lesson() {
    std::printf("Lesson 12: attention, forward and backward\n");
    single_head();
    backward_steps();
    causal();
    multi_head();
    flops();
    memory();
}

// ---- Homework --------------------------------------------------------------------------------

// 12.1  The FLOPs of one fused attention call on Q [T, d], K [S, d], V [S, dv], counting a
// multiply-add as 2: the forward's two products and the backward's four (P saved, every input
// needing a gradient). Causal attention (T == S) scores only the pairs j <= i.
struct AttentionFlops {
    long long forward = 0, backward = 0;
};

AttentionFlops attention_flops(int T, int S, int d, int dv, bool causal) {
    // BEGIN EXERCISE 12.1
    throw not_implemented("12.1");
    // END EXERCISE
}

// 12.2  Softmax's backward for one row: given the row p = softmax(s) and dp = dL/dp, return
// ds = dL/ds (step 3 of the attention backward).
std::vector<double> softmax_backward_row(const std::vector<double>& p,
                                         const std::vector<double>& dp) {
    // BEGIN EXERCISE 12.2
    throw not_implemented("12.2");
    // END EXERCISE
}

// 12.3  The whole single-head attention backward, by hand. Matrices are row-major: Q [T, d],
// K [T, d], V [T, dv], dO [T, dv]. Recompute P from Q and K (with the 1/√d scale, and the mask
// when causal), then fill dQ, dK, dV with the five steps.
struct Matrix {
    int rows = 0, cols = 0;
    std::vector<double> v;   // rows·cols numbers
    double& at(int i, int j) { return v[std::size_t(i) * cols + j]; }
    double at(int i, int j) const { return v[std::size_t(i) * cols + j]; }
};

void attention_backward_by_hand(const Matrix& Q, const Matrix& K, const Matrix& V, const Matrix& dO,
                                bool causal, Matrix& dQ, Matrix& dK, Matrix& dV) {
    // BEGIN EXERCISE 12.3
    throw not_implemented("12.3");
    // END EXERCISE
}

static Matrix random_matrix(int rows, int cols, Rng& rng) {
    Matrix m{rows, cols, std::vector<double>(std::size_t(rows) * cols)};
    for (double& x : m.v) x = rng.normal();
    return m;
}

static Tensor to_tensor(const Matrix& m) {
    return Tensor({m.rows, m.cols}, std::vector<real>(m.v.begin(), m.v.end()));
}

static int check_homework() {
    Homework hw("12");

    hw.check(
        "12.1", "attention FLOPs, forward and backward",
        "count the scored pairs (T·S, or T(T+1)/2 under the causal mask); a multiply-add is 2 "
        "FLOPs, d per pair in Q·Kᵀ, dv in P·V; the backward does two such products per forward one",
        [] {
            const AttentionFlops text = attention_flops(512, 512, 64, 64, false);
            expect_near("forward, T = 512, d = 64", double(text.forward), 67108864, 0);
            expect_near("backward (the texts' 134,217,728)", double(text.backward), 134217728, 0);
            const struct {
                int T, S, d, dv;
                bool causal;
            } cases[] = {
                {7, 7, 3, 5, true}, {4, 9, 2, 6, false}, {16, 16, 8, 8, true}, {1, 1, 1, 1, true}};
            for (const auto& c : cases) {
                Rng rng(121);
                Tensor q = randn({c.T, c.d}, rng).requires_grad_(),
                       k = randn({c.S, c.d}, rng).requires_grad_(),
                       v = randn({c.S, c.dv}, rng).requires_grad_();
                reset_counted_flops();
                const Tensor o = attention(q, k, v, c.causal);
                const std::int64_t forward = counted_flops();
                reset_counted_flops();
                o.backward(Tensor::full(o.shape(), 1));
                const AttentionFlops mine = attention_flops(c.T, c.S, c.d, c.dv, c.causal);
                expect_near("forward against the engine's count", double(mine.forward),
                            double(forward), 0);
                expect_near("backward against the engine's count", double(mine.backward),
                            double(counted_flops()), 0);
            }
        });

    hw.check("12.2", "softmax backward for one row", "ds_j = p_j * (dp_j - sum_i dp_i * p_i)", [] {
        const std::vector<double> uniform_p = {0.25, 0.25, 0.25, 0.25};
        const std::vector<double> ds = softmax_backward_row(uniform_p, {1, 0, 0, 0});
        expect_near("uniform p, dp = e_0: ds_0 = 0.25 * (1 - 0.25)", ds[0], 0.1875, 1e-15);
        expect_near("ds_1 = 0.25 * (0 - 0.25)", ds[1], -0.0625, 1e-15);
        const std::vector<double> same = softmax_backward_row({0.7, 0.2, 0.1}, {3, 3, 3});
        for (double g : same)
            expect_near("dp constant -> ds = 0 (a shift of s changes nothing)", g, 0.0, 1e-15);
        Rng rng(122);
        for (int n : {2, 5, 11}) {
            Tensor s = randn({n}, rng).requires_grad_();
            const Tensor p = softmax(s), dp = randn({n}, rng);
            p.backward(dp);
            const std::vector<double> mine =
                softmax_backward_row(std::vector<double>(p.values().begin(), p.values().end()),
                                     std::vector<double>(dp.values().begin(), dp.values().end()));
            double total = 0;
            for (int j = 0; j < n; ++j) {
                expect_near("against the engine's softmax backward", mine[j], s.grad()[j], 1e-6);
                total += mine[j];
            }
            expect_near("ds sums to 0 (up to the float rounding of p)", total, 0.0, 1e-6);
        }
    });

    hw.check("12.3", "attention backward by hand: dV, dP, dS, dQ, dK",
             "recompute P = softmax(Q·Kᵀ/√d), masked; for each product C = A·B, dA = dC·Bᵀ and dB "
             "= Aᵀ·dC; the softmax rows as in 12.2; the 1/√d scale carries into dQ and dK",
             [] {
                 Rng rng(123);
                 for (bool causal : {false, true})
                     for (int T : {1, 3, 6}) {
                         const int d = 4, dv = 3;
                         const Matrix Q = random_matrix(T, d, rng), K = random_matrix(T, d, rng),
                                      V = random_matrix(T, dv, rng), dO = random_matrix(T, dv, rng);
                         Matrix dQ{T, d, std::vector<double>(std::size_t(T) * d)},
                             dK = dQ, dV{T, dv, std::vector<double>(std::size_t(T) * dv)};
                         attention_backward_by_hand(Q, K, V, dO, causal, dQ, dK, dV);
                         Tensor q = to_tensor(Q).requires_grad_(),
                                k = to_tensor(K).requires_grad_(),
                                v = to_tensor(V).requires_grad_();
                         attention(q, k, v, causal).backward(to_tensor(dO));
                         for (std::size_t i = 0; i < dQ.v.size(); ++i) {
                             expect_near("dQ against the engine", dQ.v[i], q.grad()[i], 1e-5);
                             expect_near("dK against the engine", dK.v[i], k.grad()[i], 1e-5);
                         }
                         for (std::size_t i = 0; i < dV.v.size(); ++i)
                             expect_near("dV against the engine", dV.v[i], v.grad()[i], 1e-5);
                     }
             });

    return hw.finish();
}

int main(int argc, char** argv) { return run_lesson(argc, argv, lesson, check_homework); }
