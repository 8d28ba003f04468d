// cuda_emu.h: runs CUDA kernels on the CPU, so that kernels.cu is tested on any machine.
//
// When nvcc is not the compiler, kernels.cu includes this file and g++ or clang++ compiles it as
// C++17. A launch runs its blocks one after another; each CUDA thread of a block is a fiber (its
// own stack, and its registers while it waits) that runs until it reaches __syncthreads(), a
// warp operation (__shfl_*_sync, __ballot_sync, __syncwarp) or its end. A warp operation completes
// when the last lane of its mask arrives; a barrier opens when every thread of the block waits at
// it; if no thread can run and neither happens, the block is deadlocked.
// Errors are exceptions from the launch, naming file:line, the kernel and the block: an invalid
// configuration (a size of 0, over 1024 threads per block, ...), a pointer argument outside all
// cudaMalloc'ed memory (a host pointer), a deadlock (a __syncthreads() that some threads never
// reach; a warp operation waiting for a lane that does not exist, has exited or waits elsewhere).
// An exception that the kernel's own code throws (a lesson's not_implemented stub, say) leaves
// the launch as it was thrown, type and message unchanged, after the block is cleaned up.
// cudaEvent* read the host clock (a launch has finished when it returns): they time the emulator.
// cudaMemcpy/cudaMemset check directions and ranges and return an error code, as CUDA does;
// cudaGetErrorString() says what was wrong. cudaMalloc'ed and __shared__ memory start as 0xFF
// bytes (a NaN as float), and __shared__ memory gets that fill again before every block. Without
// ASan, guard bytes around each allocation make reads just past its ends NaN and writes there an
// error after the launch.
// Schedules pick which ready thread runs next (and order the blocks): seq the lowest-numbered, rev
// the highest, rand any (from a seed). A thread runs until it waits, so one warp may run far ahead
// of another, as on a GPU. A kernel that lacks a needed __syncthreads() usually goes wrong under
// rev or rand. Choose with cuda_emu::set_schedule() or CUDA_EMU_SCHEDULE=seq|rev|rand|rand:SEED.
// Not visible here: races that every schedule orders the same way (fibers switch only at barriers
// and warp operations), coalescing, bank conflicts, speed; a thread spinning on a flag hangs.
// __shared__ makes a variable static, in the linker section "cuda_emu_shared", which is filled
// before each block; blocks run one at a time, so the storage is private to the block. g++ drops
// the section in function templates (a run-time warning says so) and rejects it in inline
// functions ("section type conflict"): declare __shared__ only in plain functions (clang++ has
// neither limit). extern __shared__ (dynamic shared memory) is not supported.
// AddressSanitizer: each fiber switch is announced with __sanitizer_start_switch_fiber and
// __sanitizer_finish_switch_fiber, so the tests run under -fsanitize=address,undefined.
// cudaMalloc uses malloc, so ASan also catches out-of-bounds accesses to device memory.
// Limits: ELF systems (Linux), one host thread.
// Cost: a switch from one fiber to another is a few instructions of assembly on x86-64 and
// AArch64 ("switching from one fiber to another" below; swapcontext elsewhere, which makes a
// system call each time). Measured 2026-12-06 on our 2-core AMD EPYC, g++ 12 -O3, medians:
//                                                            now          before (swapcontext)
//   a wait at __syncthreads() or a warp shuffle, per thread  16-30 ns     0.5-1.1 µs
//   a launch of one block of 32 threads that do nothing      1.1-1.5 µs   15.7 µs
//   matmul_v2 on 64³: 16 blocks of 256 threads, 9 waits      1.2-1.4 ms   27-30 ms
//   `demo --cuda`: 1,500 steps of an MLP on 600 points       3 min CPU    about an hour (est.)
// (the matmul is `make bench`'s emulated_kernel row; the demo took 4 min 23 s while the machine
// was shared.) A wait costs two switches, the scheduler's choice of the next thread, and the
// cache misses of reaching another stack.
#pragma once
#ifdef __CUDACC__
#error "cuda_emu.h stands in for CUDA on the CPU; nvcc builds use the real CUDA runtime"
#endif
#ifndef __ELF__
#error "cuda_emu.h needs an ELF system such as Linux: __shared__ variables live in a linker section"
#endif
#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <math.h>
#include <stdexcept>
#include <string>
#include <sys/mman.h>
#include <type_traits>
#include <unistd.h>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define CUDA_EMU_ASAN 1
#elif defined(__clang__)
#if __has_feature(address_sanitizer)
#define CUDA_EMU_ASAN 1
#endif
#endif
// The fiber switch: hand-written for x86-64 and AArch64 (below), else the C library's swapcontext.
// -DCUDA_EMU_UCONTEXT picks swapcontext everywhere (to compare the two).
#if (defined(__x86_64__) || defined(__aarch64__)) && !defined(CUDA_EMU_UCONTEXT)
#define CUDA_EMU_FAST_SWITCH 1
#else
#include <ucontext.h>
#endif
#ifdef CUDA_EMU_ASAN
#include <sanitizer/asan_interface.h>
#define CUDA_EMU_IF_ASAN(statement) statement
#else
#define CUDA_EMU_IF_ASAN(statement)
#endif

// ---- CUDA's keywords, built-in variables and types ---------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define CUDA_EMU_CAT2(a, b) a##b
#define CUDA_EMU_CAT(a, b) CUDA_EMU_CAT2(a, b)
#define __shared__                                                                                 \
    __attribute__((section("cuda_emu_shared"),                                                     \
                   unused)) static ::cuda_emu::SharedProbe CUDA_EMU_CAT(cuda_emu_probe_,           \
                                                                        __COUNTER__){__FILE__,     \
                                                                                     __LINE__};    \
    __attribute__((section("cuda_emu_shared"))) static
#define LAUNCH(kernel, grid, block)                                                                \
    ::cuda_emu::launcher(kernel, #kernel, grid, block, __FILE__, __LINE__)

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline dim3 threadIdx, blockIdx, blockDim, gridDim;   // set by the scheduler before a fiber runs
constexpr int warpSize = 32;
enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21
};
enum cudaMemcpyKind {
    cudaMemcpyHostToHost,
    cudaMemcpyHostToDevice,
    cudaMemcpyDeviceToHost,
    cudaMemcpyDeviceToDevice,
    cudaMemcpyDefault
};
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
extern "C" char __start_cuda_emu_shared[] __attribute__((weak));   // both defined by the linker
extern "C" char __stop_cuda_emu_shared[] __attribute__((weak));

namespace cuda_emu {

enum class Schedule { seq, rev, rand };
enum class Wait : unsigned char { ready, barrier, warp, done };
enum class WarpOp { shfl, up, down, xor_, ballot, sync };
constexpr std::size_t stack_bytes = 256 << 10;   // per fiber; only the pages it touches are used

// ---- switching from one fiber to another --------------------------------------------------------
// A fiber stops in the middle of a function (say, __syncthreads()) and continues there later. What
// must survive the pause is what a function call preserves anyway: the ABI lets a called function
// clobber every other register, so the compiler already keeps nothing else in them across a call.
// These callee-saved registers are, on x86-64 (System V ABI) rbx, rbp, r12-r15 and the stack
// pointer rsp; on AArch64 x19-x28, the frame pointer x29, the return address x30, sp, and the low
// 64 bits of v8-v15 (d8-d15). A switch is therefore a function call, cuda_emu_switch(&save, next),
// that pushes them on the current stack, stores the stack pointer in `save`, loads `next` as the
// stack pointer, pops the other fiber's registers from its stack and returns, to the place where
// that fiber once called cuda_emu_switch. No system call, no signal mask: about 20 instructions.
// (glibc's swapcontext also saves the signal mask, with a system call, and all SSE/x87 state.)
// Not saved: the floating-point control registers (x86's MXCSR and x87 control word, AArch64's
// FPCR: rounding mode, flush-to-zero). The ABI counts their control bits as callee-saved, but
// CUDA code cannot change them (device code picks a rounding per instruction, __fadd_rz), so
// there is one setting, the host's, for the host and every fiber alike.
// A new fiber's stack is prepared to look as if it had called cuda_emu_switch itself: zeros for its
// registers and, as the return address, its entry function, so its first switch "returns" into it.
// The entry function never returns (fiber_main loops forever). Exceptions never cross a switch:
// fiber_main catches everything the kernel throws, and the scheduler rethrows it on its own stack.
// On x86-64 the last step is `pop, jmp` rather than `ret`. Both land in the same place, but the CPU
// predicts a `ret` from its own record of recent calls, which a switch of stacks always fools (and
// then the returns after it too), while it predicts a `jmp` from where this jump went before: the
// switch back to the scheduler, half of all switches, always goes to the same place. (Measured
// here: matmul_v2 on 64³ in 1.2 ms instead of 1.5.) Intel's shadow stack (CET), which some
// systems turn on, would reject a switch of stacks behind its back: use -DCUDA_EMU_UCONTEXT there.
// The assembly is emitted in a COMDAT group, as the compiler does with an inline function: every
// file that includes this header defines cuda_emu_switch, and the linker keeps one copy.
#ifdef CUDA_EMU_FAST_SWITCH
extern "C" void cuda_emu_switch(void** save_sp, void* next_sp);
#if defined(__x86_64__)
asm(R"(
    .pushsection .text.cuda_emu_switch,"axG",@progbits,cuda_emu_switch,comdat
    .globl cuda_emu_switch
    .hidden cuda_emu_switch
    .type cuda_emu_switch, @function
    .p2align 4
cuda_emu_switch:          # rdi = save_sp, rsi = next_sp; `call` has pushed our return address
    pushq %rbp            # the six callee-saved registers go onto this fiber's stack
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq  %rsp, (%rdi)    # *save_sp = rsp: all this fiber needs to continue later
    movq  %rsi, %rsp      # rsp = next_sp: from here on we are on the other fiber's stack,
    popq  %r15            # which holds the same layout: its registers, last pushed first
    popq  %r14
    popq  %r13
    popq  %r12
    popq  %rbx
    popq  %rbp
    popq  %rcx            # its return address (rcx is free: callers never expect it kept)
    jmpq  *%rcx           # continue there, after its own call to cuda_emu_switch
    .size cuda_emu_switch, .-cuda_emu_switch
    .popsection
)");
// A new fiber's stack, from its stack pointer up: r15 r14 r13 r12 rbx rbp (all 0), the entry
// function as the return address, then 0. The first switch pops the six, jumps to the entry and
// leaves rsp at the 0: to the entry it looks as if it was called from address 0 (where unwinders
// stop), with the stack aligned as after any call (rsp + 8 a multiple of 16).
constexpr int switch_frame_words = 8;
constexpr int entry_word = 6;
#else   // AArch64
asm(R"(
    .pushsection .text.cuda_emu_switch,"axG",@progbits,cuda_emu_switch,comdat
    .globl cuda_emu_switch
    .hidden cuda_emu_switch
    .type cuda_emu_switch, %function
    .p2align 4
cuda_emu_switch:                  // x0 = save_sp, x1 = next_sp; `bl` has put our return in x30
    sub  sp, sp, #160             // room for 20 registers of 8 bytes (sp stays 16-byte aligned)
    stp  x19, x20, [sp, #0]       // store pairs: the callee-saved general registers,
    stp  x21, x22, [sp, #16]
    stp  x23, x24, [sp, #32]
    stp  x25, x26, [sp, #48]
    stp  x27, x28, [sp, #64]
    stp  x29, x30, [sp, #80]      // the frame pointer and the return address,
    stp  d8,  d9,  [sp, #96]      // and the callee-saved halves of v8-v15
    stp  d10, d11, [sp, #112]
    stp  d12, d13, [sp, #128]
    stp  d14, d15, [sp, #144]
    mov  x2, sp                   // *save_sp = sp (sp cannot be stored directly)
    str  x2, [x0]
    mov  sp, x1                   // sp = next_sp: now on the other fiber's stack, same layout
    ldp  x19, x20, [sp, #0]       // load pairs: its registers back
    ldp  x21, x22, [sp, #16]
    ldp  x23, x24, [sp, #32]
    ldp  x25, x26, [sp, #48]
    ldp  x27, x28, [sp, #64]
    ldp  x29, x30, [sp, #80]
    ldp  d8,  d9,  [sp, #96]
    ldp  d10, d11, [sp, #112]
    ldp  d12, d13, [sp, #128]
    ldp  d14, d15, [sp, #144]
    add  sp, sp, #160             // its stack as it was when it called us
    ret                           // jump to x30: it continues after its own call
    .size cuda_emu_switch, .-cuda_emu_switch
    .popsection
)");
// A new fiber's stack, from its stack pointer up: the 20 registers as stored above, all 0 but x30,
// the entry function. The first switch loads them, leaves sp 16-byte aligned at the top and jumps
// to the entry, whose frame pointer x29 = 0 ends the chain of frames (unwinders stop there).
constexpr int switch_frame_words = 20;
constexpr int entry_word = 11;   // x30's slot: byte 88 = 8 · 11
#endif
struct Context {
    void* sp = nullptr;   // where its registers lie on its stack, while it is switched out
};
inline void switch_context(Context& save, const Context& next) {
    cuda_emu_switch(&save.sp, next.sp);
}
// Makes `c` start `entry` on the stack [stack, stack + bytes) at the first switch to it.
inline void prepare_context(Context& c, char* stack, std::size_t bytes, void (*entry)()) {
    const std::uintptr_t top =
        (reinterpret_cast<std::uintptr_t>(stack) + bytes) & ~std::uintptr_t(15);
    std::uintptr_t* frame = reinterpret_cast<std::uintptr_t*>(top) - switch_frame_words;
    std::memset(frame, 0, switch_frame_words * sizeof *frame);
    frame[entry_word] = reinterpret_cast<std::uintptr_t>(entry);
    c.sp = frame;
}
#else   // elsewhere: the C library's contexts
struct Context {
    ucontext_t context;
};
inline void switch_context(Context& save, const Context& next) {
    swapcontext(&save.context, &next.context);
}
inline void prepare_context(Context& c, char* stack, std::size_t bytes, void (*entry)()) {
    getcontext(&c.context);
    c.context.uc_stack.ss_sp = stack;
    c.context.uc_stack.ss_size = bytes;
    c.context.uc_link = nullptr;
    makecontext(&c.context, entry, 0);
}
#endif

// What the emulator's own checks throw inside a kernel's thread; the launch names the thread.
struct ThreadError : std::logic_error {
    using std::logic_error::logic_error;
};
// Carries any other exception from a thread past run_grid's handler, which would rename it.
struct KernelThrew {
    std::exception_ptr error;
};

struct Fiber {
    Context context;
    char* stack = nullptr;
    bool started = false, in_body = false;   // has a resumable context; is inside the kernel
    WarpOp op = WarpOp::sync;                // the warp operation it waits in, with its arguments
    unsigned mask = 0;
    int arg = 0, width = 32, line = 0;
    const char *op_name = "", *file = "";   // what it waits in, and where
    unsigned char value[8] = {}, result[8] = {};
    dim3 thread;
    std::exception_ptr error;
    void* fake_stack = nullptr;   // ASan's bookkeeping
};
struct State {
    std::vector<Fiber> fibers = std::vector<Fiber>(1024);   // never resized: contexts must not move
    Context scheduler{};
    void* scheduler_fake_stack = nullptr;
    const void* scheduler_stack = nullptr;
    std::size_t scheduler_stack_size = 0;
    std::vector<Wait> waits =
        std::vector<Wait>(1024, Wait::done);   // per fiber; compact, as pick() scans it
    // Per warp: bit i is set while lane i waits in a warp operation. A lane's arrival completes the
    // operation only if every lane of its mask has arrived, which these bits tell at a glance.
    std::vector<unsigned> lanes_in_warp_op = std::vector<unsigned>(32, 0u);
    int current = -1, n_threads = 0;   // the running fiber (-1: host code); threads per block
    void (*body)(void*) = nullptr;     // calls the kernel with its arguments
    void* body_arg = nullptr;
    Schedule schedule = Schedule::seq;
    std::uint64_t rng = 1;
    bool schedule_chosen = false;
    std::map<std::uintptr_t, std::size_t> allocations;   // cudaMalloc'ed: start -> bytes
    cudaError_t last_error = cudaSuccess, detail_code = cudaSuccess;
    std::string detail, message;
};
// The emulator's one state, built on its first use (which may come from another file's static
// initializer, so it cannot be a plain global). state() is called at every switch: it only reads
// a pointer, and leaves the building to a function called once.
inline State* built_state = nullptr;
[[gnu::noinline]] inline State& build_state() {
    static State s;
    built_state = &s;
    return s;
}
inline State& state() { return built_state ? *built_state : build_state(); }
inline Wait& wait_of(int t) { return state().waits[std::size_t(t)]; }

inline void set_schedule(Schedule schedule, std::uint64_t seed = 1) {
    state().schedule = schedule;
    state().rng = seed ? seed : 1;   // xorshift would stay at 0 forever
    state().schedule_chosen = true;
}
inline void schedule_from_environment() {
    if (state().schedule_chosen) return;
    const char* e = std::getenv("CUDA_EMU_SCHEDULE");
    const std::string v = e && *e ? e : "seq";
    if (v == "seq" || v == "rev") return set_schedule(v == "seq" ? Schedule::seq : Schedule::rev);
    if (v == "rand" || v.rfind("rand:", 0) == 0)
        return set_schedule(Schedule::rand,
                            v.size() > 5 ? std::strtoull(v.c_str() + 5, nullptr, 10) : 1);
    throw std::invalid_argument("CUDA_EMU_SCHEDULE must be seq, rev, rand or rand:SEED, not '" + v +
                                "'");
}
inline std::uint64_t random_number() {   // xorshift64*
    std::uint64_t& r = state().rng;
    r ^= r >> 12;
    r ^= r << 25;
    r ^= r >> 27;
    return r * 2685821657736338717ull >> 11;
}
inline void arrange(std::vector<std::size_t>& order) {   // the block order, from 0, 1, 2, ...
    if (state().schedule == Schedule::rev) std::reverse(order.begin(), order.end());
    for (std::size_t i = order.size(); state().schedule == Schedule::rand && i > 1;
         --i)   // Fisher-Yates
        std::swap(order[i - 1], order[random_number() % i]);
}

inline std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string format(const char* fmt, ...) {
    char s[512];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(s, sizeof s, fmt, args);
    va_end(args);
    return s;
}
inline std::string thread_name(int t) {   // linear index t -> "thread (x,y,z)"
    return format("thread (%u,%u,%u)", t % blockDim.x, t / blockDim.x % blockDim.y,
                  t / blockDim.x / blockDim.y);
}

// Runs once per __shared__ declaration: did the compiler keep the variable in the section?
struct SharedProbe {
    SharedProbe(const char* file, int line) {
        const char* p = reinterpret_cast<const char*>(this);
        if (!(p >= __start_cuda_emu_shared && p < __stop_cuda_emu_shared))
            std::fprintf(
                stderr,
                "cuda_emu: warning: %s:%d: the compiler dropped the section of this __shared__ "
                "variable (g++ does in templates): it is not refilled before each block\n",
                file, line);
    }
};

// The cudaMalloc'ed allocation (start, bytes) that contains p, or nullptr.
inline const std::pair<const std::uintptr_t, std::size_t>* allocation_of(const void* p) {
    const auto u = reinterpret_cast<std::uintptr_t>(p);
    auto it = state().allocations.upper_bound(u);
    if (it == state().allocations.begin()) return nullptr;
    --it;
    return u - it->first < it->second ? &*it : nullptr;
}
inline cudaError_t api_error(cudaError_t code, const std::string& detail) {
    state().last_error = code;
    state().detail_code = code;
    state().detail = detail;
    return code;
}

// ---- fibers and the scheduler -------------------------------------------------------------------
inline Fiber& self(const char* what) {
    if (state().current < 0) throw std::logic_error(std::string(what) + " called outside a kernel");
    return state().fibers[std::size_t(state().current)];
}
inline void to_scheduler(Fiber& f,
                         Wait wait) {   // the fiber waits here until the scheduler resumes it
    State& s = state();
    wait_of(s.current) = wait;
    CUDA_EMU_IF_ASAN(
        __sanitizer_start_switch_fiber(&f.fake_stack, s.scheduler_stack, s.scheduler_stack_size));
    switch_context(f.context, s.scheduler);
    CUDA_EMU_IF_ASAN(
        __sanitizer_finish_switch_fiber(f.fake_stack, &s.scheduler_stack, &s.scheduler_stack_size));
}
inline void fiber_main() {   // a fiber's life: one turn of the loop per block it serves as a thread
    State& s = state();
    CUDA_EMU_IF_ASAN(
        __sanitizer_finish_switch_fiber(nullptr, &s.scheduler_stack, &s.scheduler_stack_size));
    Fiber& f = s.fibers[std::size_t(s.current)];
    for (;;) {
        f.in_body = true;
        try {
            s.body(s.body_arg);
        } catch (...) {
            f.error = std::current_exception();
        }
        f.in_body = false;
        to_scheduler(f, Wait::done);
    }
}
inline void resume(int t) {   // runs fiber t until it waits or ends
    State& s = state();
    Fiber& f = s.fibers[std::size_t(t)];
    if (!f.stack) {   // with a guard page below: an overflow faults instead of corrupting memory
        const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
        void* m = mmap(nullptr, stack_bytes + page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED || mprotect(m, page, PROT_NONE) != 0)
            throw std::runtime_error("cuda_emu: no memory for a stack");
        f.stack = static_cast<char*>(m) + page;
    }
    if (!f.started) {
        CUDA_EMU_IF_ASAN(__asan_unpoison_memory_region(
            f.stack, stack_bytes));   // an abandoned fiber may have left poison
        // The stacks lie 256 KB apart, so their tops would all fall in one set of the L1 cache
        // (which picks a set by address bits 6-11) and evict one another at every switch: each
        // starts one 64-byte line below the last, in a cycle of 64. (The demo's step: 10% faster.)
        const std::size_t stagger = std::size_t(t % 64) * 64;
        prepare_context(f.context, f.stack, stack_bytes - stagger, fiber_main);
        f.started = true;
        f.fake_stack = nullptr;
    }
    s.current = t;
    threadIdx = f.thread;
    CUDA_EMU_IF_ASAN(__sanitizer_start_switch_fiber(&s.scheduler_fake_stack, f.stack, stack_bytes));
    switch_context(s.scheduler, f.context);
    CUDA_EMU_IF_ASAN(__sanitizer_finish_switch_fiber(s.scheduler_fake_stack, nullptr, nullptr));
    s.current = -1;
}

// Does thread u wait in the same warp operation (and mask) as thread t?
inline bool waits_with(int u, int t) {
    const Fiber* F = state().fibers.data();
    return u < state().n_threads && wait_of(u) == Wait::warp && F[u].op == F[t].op &&
           F[u].mask == F[t].mask;
}
// Have all lanes named by the mask of t's warp operation arrived?
inline bool warp_op_complete(int t) {
    const int base = t - t % 32;   // lane 0 of t's warp
    const unsigned mask = state().fibers[std::size_t(t)].mask;
    if ((state().lanes_in_warp_op[std::size_t(t / 32)] & mask) != mask) return false;
    for (int lane = 0; lane < 32; ++lane)   // all there: do they wait in the same operation?
        if (mask >> lane & 1u && !waits_with(base + lane, t)) return false;
    return true;
}
// Hands every lane of t's warp operation its result and lets them all go on.
inline void complete_warp_op(int t) {
    Fiber* F = state().fibers.data();
    const unsigned mask = F[t].mask;
    const int base = t - t % 32;
    unsigned ballot = 0;   // bit i: lane i's predicate (an int) is not 0
    for (int lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        int predicate;
        std::memcpy(&predicate, F[base + lane].value, sizeof predicate);
        if (predicate != 0) ballot |= 1u << lane;
    }
    for (int lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        Fiber& g = F[base + lane];
        const int w = g.width, first = lane - lane % w;   // lanes form groups of `width`
        int src = lane;                                   // the lane whose value g receives
        if (g.op == WarpOp::shfl) src = first + (g.arg % w + w) % w;
        if (g.op == WarpOp::up && lane % w >= g.arg) src = lane - g.arg;
        if (g.op == WarpOp::down && lane % w + g.arg < w) src = lane + g.arg;
        if (g.op == WarpOp::xor_ && (lane ^ g.arg) >= 0 && (lane ^ g.arg) < first + w)
            src = lane ^ g.arg;
        if (g.op == WarpOp::ballot) std::memcpy(g.result, &ballot, sizeof ballot);
        else if (mask >> src & 1u) std::memcpy(g.result, F[base + src].value, 8);
        else
            std::memset(g.result, 0xFF,
                        8);   // a lane outside the mask: undefined in CUDA, NaN here
        wait_of(base + lane) = Wait::ready;
        state().lanes_in_warp_op[std::size_t(t / 32)] &= ~(1u << lane);
    }
}
// Nothing can run, and t waits in a warp operation: says which lane it waits for, and why in vain.
[[noreturn]] inline void warp_deadlock(int t) {
    const Fiber* F = state().fibers.data();
    const int n = state().n_threads;
    for (int lane = 0; lane < 32; ++lane) {
        const int u = t - t % 32 + lane;   // the thread in that lane of t's warp
        if (!(F[t].mask >> lane & 1u) || waits_with(u, t)) continue;
        std::string why = format("%s at %s:%d (mask 0x%08x) waits for lane %d", F[t].op_name,
                                 F[t].file, F[t].line, F[t].mask, lane);
        if (u >= n)
            throw std::runtime_error(why +
                                     format(", which does not exist: the block has %d threads", n));
        why = "deadlock: " + why + " (" + thread_name(u) + ")";
        if (wait_of(u) == Wait::done) throw std::runtime_error(why + ", which has exited");
        if (wait_of(u) == Wait::barrier)
            throw std::runtime_error(
                why + format(", which waits at __syncthreads() at %s:%d", F[u].file, F[u].line));
        throw std::runtime_error(why + format(", which calls %s at %s:%d (mask 0x%08x)",
                                              F[u].op_name, F[u].file, F[u].line, F[u].mask));
    }
    throw std::logic_error("cuda_emu: a complete warp operation was left waiting");
}

// Nothing can run and no thread waits in a warp operation: releases the barrier, or says why it
// can never be released.
inline void release_barrier() {
    Fiber* F = state().fibers.data();
    const int n = state().n_threads;
    int waiting = 0, exited = 0, n_exited = 0;
    for (int t = n - 1; t >= 0; --t) {
        if (wait_of(t) == Wait::barrier) waiting = t;
        if (wait_of(t) != Wait::done) continue;
        exited = t;
        ++n_exited;
    }
    const Fiber& w = F[waiting];
    if (n_exited > 0)
        throw std::runtime_error(
            format("deadlock: %d threads wait at __syncthreads() at %s:%d (", n - n_exited, w.file,
                   w.line) +
            thread_name(waiting) + format("), but %d exited without reaching it (", n_exited) +
            thread_name(exited) + "); every thread of a block must reach every __syncthreads()");
    for (int t = 0; t < n; ++t)
        if (F[t].line != w.line || (F[t].file != w.file && std::strcmp(F[t].file, w.file) != 0))
            throw std::runtime_error(
                format("deadlock: threads wait at different __syncthreads(): %s:%d (", w.file,
                       w.line) +
                thread_name(waiting) + format(") and %s:%d (", F[t].file, F[t].line) +
                thread_name(t) + ")");
    for (int t = 0; t < n; ++t) wait_of(t) = Wait::ready;
}

// The next thread to run, by the schedule: the lowest ready one (seq), the highest (rev), or any
// (rand); -1 if none is ready. Greedy choice lets one warp run ahead of the others, as on a GPU.
inline int pick() {
    const Wait *w = state().waits.data(), ready = Wait::ready;
    const std::size_t n = std::size_t(state().n_threads);
    if (state().schedule != Schedule::rand) {
        const void* p = state().schedule == Schedule::seq ? std::memchr(w, int(ready), n)
                                                          : memrchr(w, int(ready), n);
        return p ? int(static_cast<const Wait*>(p) - w) : -1;
    }
    long k = std::count(w, w + n, ready);
    if (k == 0) return -1;
    k = long(random_number() % std::uint64_t(k));
    for (std::size_t t = 0;; ++t)
        if (w[t] == ready && k-- == 0) return int(t);
}

inline void run_block() {
    State& s = state();
    Fiber* F = s.fibers.data();
    char *shared = __start_cuda_emu_shared, *shared_end = __stop_cuda_emu_shared;
    if (shared != shared_end)
        std::memset(shared, 0xFF, std::size_t(shared_end - shared));   // fresh __shared__ memory
    std::fill(s.lanes_in_warp_op.begin(), s.lanes_in_warp_op.end(), 0u);
    for (int t = 0; t < s.n_threads; ++t) {
        wait_of(t) = Wait::ready;
        F[t].thread =
            dim3(t % blockDim.x, t / blockDim.x % blockDim.y, t / blockDim.x / blockDim.y);
    }
    try {
        for (;;) {
            const int t = pick();
            if (t >= 0) {
                resume(t);
                if (F[t].error) try {
                        std::rethrow_exception(std::exchange(F[t].error, nullptr));
                    } catch (const ThreadError& e) {
                        throw std::runtime_error(thread_name(t) + ": " + e.what());
                    } catch (...) {   // the kernel's own exception: passed on untouched
                        throw KernelThrew{std::current_exception()};
                    }
                if (wait_of(t) == Wait::warp && warp_op_complete(t)) complete_warp_op(t);
                continue;
            }
            int done = 0;
            for (int u = 0; u < s.n_threads; ++u)
                if (wait_of(u) == Wait::warp) warp_deadlock(u);
                else done += wait_of(u) == Wait::done;
            if (done == s.n_threads) return;
            release_barrier();
        }
    } catch (...) {   // the other fibers are stuck inside the kernel: they get fresh contexts later
        for (int t = 0; t < s.n_threads; ++t)
            if (F[t].in_body) F[t].started = F[t].in_body = false;
        throw;
    }
}

// Without ASan, each allocation has 256 guard bytes before and after it, filled with the float
// 0x7FA5A5A5, a signaling NaN: a kernel that reads a little out of bounds gets NaN, and one that
// writes there is reported after its launch. (Arithmetic turns a signaling NaN into a different,
// quiet one, so even `y[n] = x[n] + 1` changes the guard.) ASan's redzones do this better, so
// under ASan there are no guards.
#ifdef CUDA_EMU_ASAN
constexpr std::size_t guard_bytes = 0;
#else
constexpr std::size_t guard_bytes = 256;
#endif
constexpr unsigned char guard_pattern[4] = {0xA5, 0xA5, 0xA5, 0x7F};
inline bool guards_intact(std::uintptr_t start, std::size_t bytes, bool fill = false) {
    unsigned char *before = reinterpret_cast<unsigned char*>(start - guard_bytes),
                  *after = reinterpret_cast<unsigned char*>(start + bytes);
    for (std::size_t k = 0; k < guard_bytes; ++k) {
        if (fill) before[k] = after[k] = guard_pattern[k % 4];
        if (before[k] != guard_pattern[k % 4] || after[k] != guard_pattern[k % 4]) return false;
    }
    return true;
}
inline void check_guards(const std::string& where) {
    for (const auto& [start, bytes] : state().allocations)
        if (!guards_intact(start, bytes) &&
            guards_intact(start, bytes, true))   // report once, then repair
            throw std::runtime_error(
                where + format("wrote out of bounds of the cudaMalloc'ed allocation %p (%zu bytes)",
                               reinterpret_cast<void*>(start), bytes));
}

inline void run_grid(dim3 grid, dim3 block, const std::string& where, void (*body)(void*),
                     void* arg) {
    State& s = state();
    if (s.current >= 0) throw ThreadError(where + "a kernel cannot launch a kernel in cuda_emu");
    const unsigned long long threads = 1ull * block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || !threads)
        throw std::invalid_argument(
            where + "invalid configuration: every grid and block size must be at least 1");
    if (threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
        throw std::invalid_argument(
            where +
            "invalid configuration: a block has at most 1024 threads (x, y <= 1024, z <= 64)");
    if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
        throw std::invalid_argument(
            where + "invalid configuration: the grid is at most (2^31 - 1, 65535, 65535)");
    schedule_from_environment();
    s.n_threads = int(threads);
    s.body = body;
    s.body_arg = arg;
    gridDim = grid;
    blockDim = block;
    std::vector<std::size_t> order(std::size_t(grid.x) * grid.y * grid.z);
    for (std::size_t b = 0; b < order.size(); ++b) order[b] = b;
    arrange(order);
    for (std::size_t b : order) {
        blockIdx = dim3(unsigned(b % grid.x), unsigned(b / grid.x % grid.y),
                        unsigned(b / grid.x / grid.y));
        try {
            run_block();
        } catch (const KernelThrew& thrown) {
            std::rethrow_exception(thrown.error);
        } catch (const std::exception& e) {
            throw std::runtime_error(
                where + format("block (%u,%u,%u): ", blockIdx.x, blockIdx.y, blockIdx.z) +
                e.what());
        }
    }
    check_guards(where);
}

// A kernel argument that is a pointer, to be checked; null for a number (nothing to check).
template <class A>
const void* pointer_or_null(const A& a) {
    if constexpr (std::is_pointer_v<A>) return a;
    else return nullptr;
}

// LAUNCH(kernel, grid, block)(args...): checks the pointer arguments, runs the grid.
template <class... P>
struct Launcher {
    void (*kernel)(P...);
    const char *name, *file;
    dim3 grid, block;
    int line;
    void operator()(P... args) const {
        const std::string where = format("%s:%d: %s<<<(%u,%u,%u), (%u,%u,%u)>>>: ", file, line,
                                         name, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        const std::vector<const void*> pointers = {pointer_or_null(args)...};
        for (std::size_t k = 0; k < pointers.size(); ++k)
            if (pointers[k] != nullptr && !allocation_of(pointers[k]))
                throw std::invalid_argument(where +
                                            format("argument %d is %p, which is not device "
                                                   "memory from cudaMalloc (a host pointer?)",
                                                   int(k + 1), pointers[k]));
        auto call = [&] { kernel(args...); };   // each thread gets its own copies of the arguments
        run_grid(
            grid, block, where, [](void* c) { (*static_cast<decltype(call)*>(c))(); }, &call);
    }
};
template <class... P>
Launcher<P...> launcher(void (*kernel)(P...), const char* name, dim3 grid, dim3 block,
                        const char* file, int line) {
    return {kernel, name, file, grid, block, line};
}

template <class T>
T warp_op(WarpOp op, const char* name, unsigned mask, T value, int arg, int width, const char* file,
          int line) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>,
                  "cuda_emu: warp operations move at most 8 bytes");
    Fiber& f = self(name);
    const int lane = state().current % 32;
    if (!(mask >> lane & 1u))
        throw ThreadError(format("%s at %s:%d: the calling lane %d is not in its mask 0x%08x", name,
                                 file, line, lane, mask));
    if (width < 1 || width > 32 || (width & (width - 1)))
        throw ThreadError(format("%s at %s:%d: width must be a power of 2 from 1 to 32, not %d",
                                 name, file, line, width));
    f.op = op;
    f.op_name = name;
    f.mask = mask;
    f.arg = arg;
    f.width = width;
    f.file = file;
    f.line = line;
    std::memset(f.value, 0, 8);
    std::memcpy(f.value, &value, sizeof(T));
    state().lanes_in_warp_op[std::size_t(state().current / 32)] |= 1u << lane;
    to_scheduler(f, Wait::warp);
    std::memcpy(&value, f.result, sizeof(T));
    return value;
}

}   // namespace cuda_emu

// ---- device functions: the barrier, warp operations, atomics ------------------------------------
#define CUDA_EMU_SITE const char *file = __builtin_FILE(), int line = __builtin_LINE()
inline void __syncthreads(CUDA_EMU_SITE) {
    cuda_emu::Fiber& f = cuda_emu::self("__syncthreads()");
    f.file = file;
    f.line = line;
    cuda_emu::to_scheduler(f, cuda_emu::Wait::barrier);
}
template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize, CUDA_EMU_SITE) {
    return cuda_emu::warp_op(cuda_emu::WarpOp::shfl, "__shfl_sync", mask, var, src_lane, width,
                             file, line);
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize, CUDA_EMU_SITE) {
    return cuda_emu::warp_op(cuda_emu::WarpOp::up, "__shfl_up_sync", mask, var, int(delta), width,
                             file, line);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize, CUDA_EMU_SITE) {
    return cuda_emu::warp_op(cuda_emu::WarpOp::down, "__shfl_down_sync", mask, var, int(delta),
                             width, file, line);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize, CUDA_EMU_SITE) {
    return cuda_emu::warp_op(cuda_emu::WarpOp::xor_, "__shfl_xor_sync", mask, var, lane_mask, width,
                             file, line);
}
inline unsigned __ballot_sync(unsigned mask, int predicate, CUDA_EMU_SITE) {
    return unsigned(cuda_emu::warp_op(cuda_emu::WarpOp::ballot, "__ballot_sync", mask,
                                      int(predicate != 0), 0, 32, file, line));
}
inline void __syncwarp(unsigned mask = 0xffffffffu, CUDA_EMU_SITE) {
    cuda_emu::warp_op(cuda_emu::WarpOp::sync, "__syncwarp", mask, 0, 0, 32, file, line);
}
template <
    class T>   // fibers switch only at barriers and warp operations, so a plain += is atomic here
T atomicAdd(T* address, typename std::common_type<T>::type value) {
    const T old = *address;
    *address = old + value;
    return old;
}

// ---- the runtime API ---------------------------------------------------------------------------
inline cudaError_t cudaMalloc(void** p, std::size_t bytes) {
    if (!p)
        return cuda_emu::api_error(cudaErrorInvalidValue,
                                   "cudaMalloc: the address to store the pointer in is null");
    *p = nullptr;
    if (bytes == 0) return cudaSuccess;
    char* m = static_cast<char*>(std::malloc(bytes + 2 * cuda_emu::guard_bytes));
    if (!m) return cuda_emu::api_error(cudaErrorMemoryAllocation, "cudaMalloc: out of host memory");
    *p = m + cuda_emu::guard_bytes;
    std::memset(*p, 0xFF,
                bytes);   // NaN as float (and double): a read of what nobody wrote shows up
    cuda_emu::guards_intact(reinterpret_cast<std::uintptr_t>(*p), bytes, true);
    cuda_emu::state().allocations[reinterpret_cast<std::uintptr_t>(*p)] = bytes;
    return cudaSuccess;
}
template <class T>
cudaError_t cudaMalloc(T** p, std::size_t bytes) {
    return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
inline cudaError_t cudaFree(void* p) {
    if (p && !cuda_emu::state().allocations.erase(reinterpret_cast<std::uintptr_t>(p)))
        return cuda_emu::api_error(
            cudaErrorInvalidDevicePointer,
            cuda_emu::format("cudaFree(%p): not a pointer from cudaMalloc", p));
    if (p) std::free(static_cast<char*>(p) - cuda_emu::guard_bytes);
    return cudaSuccess;
}

namespace cuda_emu {
// Is [p, p + bytes) where `call` expects it: inside one allocation (device), or in none (host)?
inline cudaError_t check_range(const void* p, std::size_t bytes, bool device, const char* which,
                               const char* call) {
    const auto* a = allocation_of(p);
    if (bytes == 0) return cudaSuccess;
    const std::string at = format("%s: the %s %p", call, which, p);
    if (device && !a)
        return api_error(cudaErrorInvalidValue,
                         at + " is not device memory from cudaMalloc (a host pointer?)");
    if (device && bytes > a->second - (reinterpret_cast<std::uintptr_t>(p) - a->first))
        return api_error(cudaErrorInvalidValue,
                         at + format(" + %zu bytes runs past the end of its allocation (%zu bytes)",
                                     bytes, a->second));
    if (!device && (a || !p))
        return api_error(cudaErrorInvalidValue,
                         at + (a ? " is device memory, but the direction says host" : " is null"));
    return cudaSuccess;
}
}   // namespace cuda_emu
inline cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
    static const char* calls[] = {"cudaMemcpy(HostToHost)", "cudaMemcpy(HostToDevice)",
                                  "cudaMemcpy(DeviceToHost)", "cudaMemcpy(DeviceToDevice)"};
    int k = int(kind);
    if (k == cudaMemcpyDefault)
        k = (cuda_emu::allocation_of(src) ? 2 : 0) + (cuda_emu::allocation_of(dst) ? 1 : 0);
    if (k < 0 || k > 3)
        return cuda_emu::api_error(cudaErrorInvalidMemcpyDirection,
                                   cuda_emu::format("cudaMemcpy: no direction %d", k));
    if (cudaError_t e =
            cuda_emu::check_range(dst, bytes, k == 1 || k == 3, "destination", calls[k]))
        return e;
    if (cudaError_t e = cuda_emu::check_range(src, bytes, k == 2 || k == 3, "source", calls[k]))
        return e;
    if (bytes) std::memmove(dst, src, bytes);
    return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int value, std::size_t bytes) {
    if (cudaError_t e = cuda_emu::check_range(p, bytes, true, "destination", "cudaMemset"))
        return e;
    if (bytes) std::memset(p, value, bytes);
    return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() {
    return cudaSuccess;
}   // a launch returns when its kernel is done
// Events: a GPU records one when its stream reaches it. Here every launch has finished when it
// returns, so recording an event just reads the clock (what it times is the emulator's speed).
namespace cuda_emu {
struct Event {
    std::chrono::steady_clock::time_point at;
};
}   // namespace cuda_emu
using cudaEvent_t = cuda_emu::Event*;
inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
    *e = new cuda_emu::Event{};
    return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, void* /*stream*/ = nullptr) {
    e->at = std::chrono::steady_clock::now();
    return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
    *ms = std::chrono::duration<float, std::milli>(stop->at - start->at).count();
    return cudaSuccess;
}
inline cudaError_t cudaPeekAtLastError() { return cuda_emu::state().last_error; }
inline cudaError_t cudaGetLastError() {
    return std::exchange(cuda_emu::state().last_error, cudaSuccess);
}
inline const char* cudaGetErrorString(cudaError_t e) {
    cuda_emu::State& s = cuda_emu::state();
    s.message = e == cudaSuccess                       ? "no error"
                : e == cudaErrorInvalidValue           ? "invalid argument"
                : e == cudaErrorMemoryAllocation       ? "out of memory"
                : e == cudaErrorInvalidDevicePointer   ? "invalid device pointer"
                : e == cudaErrorInvalidMemcpyDirection ? "invalid copy direction for memcpy"
                                                       : "unrecognized error code";
    if (e != cudaSuccess && e == s.detail_code) s.message += " (cuda_emu: " + s.detail + ")";
    return s.message.c_str();
}
