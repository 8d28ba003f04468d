# Makefile for the engine, its tests, lessons and homework. `make help` lists the targets.
# Everything it builds goes to build/; `make exercise` keeps copies of engine.cpp in .saved/.

CXX      ?= g++
CXXFLAGS ?= -std=c++17 -O3 -g -Wall -Wextra
# Added to any CXXFLAGS, because the code relies on them:
#   -ffp-contract=off  the compiler may not fuse a·b + c into one rounding on its own, so -O0
#                      and -O3 give the same bits (a test checks); where we want a fused
#                      multiply-add we write std::fma (engine.cpp §2.4);
#   -fno-math-errno    std::sqrt need not set errno, so loops that use it vectorize;
#   -fopenmp-simd      `#pragma omp simd` is honoured even without OpenMP threads;
#   ARCH               every vector instruction this CPU has (AVX2 and FMA here; §2.4's matmul
#                      depends on them). `make ARCH=` builds for any x86-64; `make valgrind`
#                      picks its own (valgrind does not know AVX-512);
#   OMP                OpenMP threads (matmul's blocks) when the compiler has them; NO_OMP=1
#                      builds without;
#   DEFS               macros for a special build (`make valgrind` sets one).
ARCH     ?= -march=native
OMP      := $(if $(NO_OMP),,$(shell echo 'int main(){}' | $(CXX) -fopenmp -x c++ - -o /dev/null 2>/dev/null && echo -fopenmp))
# clang says so when a loop marked `omp simd` cannot be vectorized (one whose f calls libm's exp,
# engine.cpp §2.3's unary); the loop still runs, and g++ vectorizes what it can without a word.
CLANG_ONLY := $(if $(shell $(CXX) --version 2>/dev/null | grep -i clang),-Wno-pass-failed)
override CXXFLAGS += -ffp-contract=off -fno-math-errno -fopenmp-simd $(ARCH) $(OMP) $(DEFS) $(CLANG_ONLY)
SANITIZE := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
# The tests build the engine with real = double, so gradient checks reach 1e-6 (engine.h, Part 2).
F64      := -DENGINE_DOUBLE
# The tests run other builds (-O0, stubs, lesson variants): they find them under $(B).
TEST_DEFS = -DBUILD_DIR='"$(B)"'
# Exercise stubs throw before reading their parameters; that is by design, not a bug to warn about.
STUB_FLAGS := -Wno-unused-parameter
B := build
.DEFAULT_GOAL := all   # plain `make` builds everything (whatever rule comes first)
# Build on every core without being asked: `make` alone is `make -j<cores>`. An explicit -j wins,
# and a make started by this one (MAKELEVEL 1) shares its jobs.
ifeq ($(filter -j%,$(MAKEFLAGS))$(MAKELEVEL),0)
MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 2)
endif

LESSON_SRCS := $(sort $(wildcard lessons/[0-9][0-9]_*.cpp))
lesson_num   = $(firstword $(subst _, ,$(notdir $(1))))
LESSONS     := $(foreach f,$(LESSON_SRCS),$(call lesson_num,$(f)))
# Lessons with homework have a reference solution file of the same name in lessons/solutions/.
HOMEWORK    := $(foreach f,$(LESSON_SRCS),$(if $(wildcard lessons/solutions/$(notdir $(f))),$(call lesson_num,$(f))))
# Lessons that include <mpi.h> (lesson 16) build with mpicxx, the compiler wrapper of an MPI
# installation: it runs $(CXX) (OMPI_CXX and MPICH_CXX tell it which) with MPI's include and
# library flags, and they run under mpirun with NP ranks. MPI is optional, like CUDA: without
# mpicxx and mpirun, make builds everything else and says how to get them. (MPICXX=none pretends
# they are missing.)
MPICXX      ?= mpicxx
MPIRUN      ?= mpirun
NP          ?= 2
MPI_LESSONS := $(foreach f,$(shell grep -l '^#include <mpi.h>' $(LESSON_SRCS)),$(call lesson_num,$(f)))
HAVE_MPI    := $(shell command -v $(MPICXX) >/dev/null 2>&1 && command -v $(MPIRUN) >/dev/null 2>&1 && echo yes)
MPI_HINT    := lesson $(MPI_LESSONS) needs MPI, which is not installed: apt-get install openmpi-bin libopenmpi-dev (Debian, Ubuntu)
# The lessons and homework that this machine can build.
BUILT_LESSONS  := $(if $(HAVE_MPI),$(LESSONS),$(filter-out $(MPI_LESSONS),$(LESSONS)))
BUILT_HOMEWORK := $(if $(HAVE_MPI),$(HOMEWORK),$(filter-out $(MPI_LESSONS),$(HOMEWORK)))
# Open MPI's mpirun refuses root unless told, and more ranks than cores unless told: a container
# or CI runs as root, and a small machine may have fewer cores than ranks. (Recursive `=`: the
# shell runs only when a lesson is launched.)
MPIRUN_FLAGS = $(if $(shell $(MPIRUN) --version 2>/dev/null | grep -q 'Open MPI' && echo y),--oversubscribe $(if $(filter 0,$(shell id -u)),--allow-run-as-root))
MPI_LAUNCH   = $(MPIRUN) $(MPIRUN_FLAGS) -np $(NP)
# How lesson $(1) starts: under mpirun when it is an MPI lesson, else by itself.
launch       = $(if $(filter $(1),$(MPI_LESSONS)),$(MPI_LAUNCH) )
# The compiler for a lesson source $(1): mpicxx wrapping $(CXX) for an MPI lesson.
lesson_cxx   = $(if $(filter $(call lesson_num,$(1)),$(MPI_LESSONS)),OMPI_CXX=$(CXX) MPICH_CXX=$(CXX) $(MPICXX),$(CXX))
# Engine exercise regions: `// BEGIN EXERCISE <name>` in engine.cpp.
REGIONS     := $(shell sed -n 's|.*// BEGIN EXERCISE \([A-Za-z0-9_.]*\).*|\1|p' engine.cpp)
SPLICE      := lessons/exercises.awk

# `make test` needs one binary. `make test-all` also builds the ones its slower proofs run: the
# -O0 tests (bit-identical losses), bench (its GPU rows on the emulator), README's example program,
# lesson 10 (on data that does not fit it), and every exercise both ways (the reference passes,
# the stub reports TODO).
OTHER_TEST_BINS := $(B)/O0/tests $(B)/bench \
                   $(foreach r,$(REGIONS),$(B)/stubs/$(r)/tests) \
                   $(foreach n,$(BUILT_HOMEWORK),$(B)/lessons/$(n)-solution $(B)/lessons/$(n)-stub) \
                   $(B)/example $(B)/lessons/10

# Keep generated sources and objects (make would otherwise delete them as intermediates).
.SECONDARY:
.PHONY: fuzz
# Random API calls (hostile shapes and settings: a right answer or a named error), then random
# graphs against finite differences: N of each (default: 100,000 calls, then graphs until
# stopped), or SEED=s to replay the one call or graph that a failure named. No time limit.
fuzz: $(B)/tests
	FUZZ_CALLS=$(or $(N),100000) FUZZ_GRAPHS=$(or $(N),forever) SEED=$(SEED) TEST_TIME_LIMIT=0 $(B)/tests --show-output fuzz/

.PHONY: all test test-all run asan asan-tests valgrind valgrind-run valgrind-tests lessons lesson check exercise exercise-reset bench bench-gpu demo demo-gpu gpt-gpu data format format-check clean help
all: $(B)/tests $(OTHER_TEST_BINS) $(foreach n,$(BUILT_LESSONS),$(B)/lessons/$(n)) $(B)/demo mpi-note

# Without MPI, a note for each MPI lesson: make prints it, and tests.cpp skips that lesson's
# homework proofs, quoting it. With MPI the notes go.
.PHONY: mpi-note
mpi-note:
ifeq ($(HAVE_MPI),)
	@mkdir -p $(B)/lessons
	@for n in $(MPI_LESSONS); do echo "$(MPI_HINT)" > $(B)/lessons/$$n.not-built; done
	@echo "not built: $(MPI_HINT)"
else
	@rm -f $(foreach n,$(MPI_LESSONS),$(B)/lessons/$(n).not-built)
endif

help:
	@echo "make                  build everything (into build/)"
	@echo "make test [FILTER=w]  build and run the tests (only those whose name contains w)"
	@echo "make test-all         the tests plus the proofs that run other builds (stubs, lesson"
	@echo "                      variants, -O0, bench): before a commit, and in CI"
	@echo "make asan             lessons and tests under AddressSanitizer + UndefinedBehaviorSanitizer"
	@echo "make valgrind         lessons and tests under valgrind's memcheck"
	@echo "make lessons          build and run every lesson"
	@echo "make lesson N=02      build and run one lesson (ARGS=\"--steps 200\" passes it flags);"
	@echo "                      lesson 16 runs under mpirun with NP=2 ranks (it needs MPI)"
	@echo "make check N=02       grade lesson 02's homework (SOLUTIONS=1: the reference solutions)"
	@echo "make exercise E=name  blank an engine region for you to rewrite; regions: $(REGIONS)"
	@echo "make exercise-reset   restore engine.cpp (your attempt is kept in .saved/)"
	@echo "make run FILE=f.cpp   build your own program f.cpp against the engine and run it (ARGS=...)"
	@echo "make demo             train an MLP on 3-class spirals; plots in build/plots/"
	@echo "make data             put Fashion-MNIST (Debian) or MNIST (download) into data/, and"
	@echo "                      data/fortunes.txt (Debian's fortunes package)"
	@echo "make fuzz [N=100000]  random API calls, then random graphs against finite differences (SEED=s"
	@echo "                      replays one)"
	@echo "make cuda             compile kernels.cu with nvcc for sm_80 and sm_90 (when nvcc exists)"
	@echo "make demo-gpu         the demo, trained on the GPU (nvcc and a GPU)"
	@echo "make gpt-gpu          lesson 15 --cuda on the GPU: 20 GPT steps there and on the CPU, side"
	@echo "                      by side (nvcc and a GPU; without one, lesson 15 --cuda emulates it)"
	@echo "make bench-gpu        make bench plus 22 kernels and the GPT step checked and timed on the GPU"
	@echo "                      (nvcc and a GPU; make bench runs it where both are present)"
	@echo "make bench            matmul GFLOP/s against the FMA peak, the MLP and scalar training steps,"
	@echo "                      1 and 2 threads; writes build/bench.csv (NO_OMP=1: build without OpenMP)"
	@echo "make format           format every source file (.clang-format; clang-format 14)"
	@echo "make format-check     list the files make format would change, and fail if there are any"
	@echo "make clean            remove build/"

# Rebuild everything when the compiler or its flags change (e.g. `make CXX=clang++`).
$(B)/flags: FORCE
	@mkdir -p $(B)
	@echo '$(CXX) $(CXXFLAGS)' | cmp -s - $@ || echo '$(CXX) $(CXXFLAGS)' > $@
.PHONY: FORCE
FORCE:

# ---- CUDA kernels ----------------------------------------------------------------------------
# kernels.cu builds two ways. On the CPU (always): g++ compiles it as C++, with cuda_emu.h
# standing in for CUDA, so the tests and lesson 14 run every kernel here. On a GPU machine:
# `make cuda` compiles it with nvcc for sm_80 (A100) and sm_90 (H100), warnings as errors.
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
$(B)/kernels.o: kernels.cu cuda_emu.h $(B)/flags
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -x c++ -c $< -o $@
$(B)/asan/kernels.o $(B)/asan32/kernels.o: kernels.cu cuda_emu.h $(B)/flags
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $(SANITIZE) -x c++ -c $< -o $@

.PHONY: cuda
cuda:
	@if [ -z "$(NVCC)" ]; then echo "no nvcc: the CPU build (kernels through cuda_emu.h) is all there is"; exit 0; fi; \
	 mkdir -p $(B)/cuda && for arch in sm_80 sm_90; do \
	     echo "$(NVCC) -arch=$$arch kernels.cu"; \
	     $(NVCC) -arch=$$arch -Werror all-warnings -Xcompiler -Wall,-Wextra -c kernels.cu -o $(B)/cuda/kernels_$$arch.o || exit 1; \
	 done

# ---- the engine and the tests ----------------------------------------------------------------
# build/*.o: real = float (lessons, demo, bench); build/f64/*.o: real = double (tests).
$(B)/%.o: %.cpp engine.h $(B)/flags
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -c $< -o $@
$(B)/f64/%.o: %.cpp engine.h $(B)/flags
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $(F64) $(TEST_DEFS) -c $< -o $@

# tests.cpp also includes lessons/lesson.h (the plots' ticks are tested) and cuda_emu.h (it
# launches kernels of its own).
$(B)/f64/tests.o $(B)/O0/tests $(B)/asan/tests.o: lessons/lesson.h cuda_emu.h
$(B)/tests: $(B)/f64/tests.o $(B)/f64/engine.o $(B)/kernels.o
	$(CXX) $(CXXFLAGS) $^ -o $@

# The same tests unoptimized: the determinism test compares its losses with this build's.
$(B)/O0/tests: tests.cpp engine.cpp engine.h $(B)/kernels.o $(B)/flags
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -O0 $(F64) $(TEST_DEFS) tests.cpp engine.cpp $(B)/kernels.o -o $@

test: $(B)/tests
	$(B)/tests $(FILTER)
test-all: $(B)/tests $(OTHER_TEST_BINS) mpi-note
	$(B)/tests --all $(FILTER)

# Each region blanked on its own, linked with the same tests: its tests must then say TODO.
$(B)/stubs/%/engine.cpp: engine.cpp $(SPLICE)
	@mkdir -p $(@D)
	awk -v mode=blank -v only=$* -f $(SPLICE) engine.cpp > $@
$(B)/stubs/%/engine.o: $(B)/stubs/%/engine.cpp engine.h $(B)/flags
	$(CXX) $(CXXFLAGS) $(F64) $(STUB_FLAGS) -I. -c $< -o $@
$(B)/stubs/%/tests: $(B)/f64/tests.o $(B)/stubs/%/engine.o $(B)/kernels.o
	$(CXX) $(CXXFLAGS) $^ -o $@

$(B)/asan/%.o: %.cpp engine.h $(B)/flags
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $(F64) $(TEST_DEFS) $(SANITIZE) -c $< -o $@
$(B)/asan/tests: $(B)/asan/tests.o $(B)/asan/engine.o $(B)/asan/kernels.o
	$(CXX) $(CXXFLAGS) $(SANITIZE) $^ -o $@

# Lessons under the sanitizers use the float engine, built with them (build/asan32/).
$(B)/asan32/%.o: %.cpp engine.h $(B)/flags
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $(SANITIZE) -c $< -o $@

# Each lesson runs to its end, and then the tests; the lessons run side by side (make's -j), each
# writing its own log, shown only when it fails. Lesson 10 trains on 55,000 images (seconds, but
# many minutes under the sanitizers) and lesson 15 trains a GPT (minutes, and hours there): there
# only their homework checks run. Everything runs many times slower here than natively, so the
# harness's time limit per test is raised.
SAN_ENV := ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
lesson_args = $(if $(filter 10 15 $(MPI_LESSONS),$(1)),--check)

asan: $(foreach n,$(BUILT_LESSONS),asan-lesson-$(n)) asan-tests
asan-tests: $(B)/asan/tests
	$(SAN_ENV) TEST_TIME_LIMIT=1800 $(B)/asan/tests $(FILTER)
asan-lesson-%: $(B)/asan32/lessons/%
	@echo "lesson $* under ASan+UBSan"
	@$(SAN_ENV) $< $(call lesson_args,$*) > $(B)/asan32/lesson-$*.log 2>&1 || { tail -30 $(B)/asan32/lesson-$*.log; exit 1; }

# memcheck: zero errors and zero definitely-lost bytes, on the lessons and the tests. (Freed
# scalar nodes stay on the engine's free list, engine.cpp §1.6: valgrind reports them as
# "still reachable", which is not a leak.) It uses a build of its own, in build/valgrind/:
#   - valgrind runs AVX2 and FMA but not AVX-512, so it targets x86-64-v3 (AVX2 + FMA) where the
#     CPU has them, else any x86-64;
#   - valgrind emulates FMA instructions in software: with them, lesson 09 ran 1000x slower than
#     natively (82 s against 0.08 s, even with --tool=none) and the lessons took 20 minutes. This
#     build multiplies and adds in two instructions instead (ENGINE_SEPARATE_MULTIPLY_ADD,
#     engine.cpp §2.4): other roundings, the same memory use; the lessons take 2.5 minutes.
VALGRIND := valgrind --quiet --error-exitcode=1 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite
VALGRIND_ARCH := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo && echo -march=x86-64-v3)
valgrind:
	@command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 2; }
	@$(MAKE) --no-print-directory B=$(B)/valgrind ARCH='$(VALGRIND_ARCH)' DEFS=-DENGINE_SEPARATE_MULTIPLY_ADD valgrind-run
valgrind-run: $(foreach n,$(BUILT_LESSONS),valgrind-lesson-$(n)) valgrind-tests
valgrind-tests: $(B)/tests
	TEST_TIME_LIMIT=1800 $(VALGRIND) $(B)/tests $(FILTER)
valgrind-lesson-%: $(B)/lessons/%
	@echo "lesson $* under valgrind"
	@$(VALGRIND) $< $(call lesson_args,$*) > $(B)/valgrind-lesson-$*.log 2>&1 || { tail -30 $(B)/valgrind-lesson-$*.log; exit 1; }

# ---- lessons and their homework --------------------------------------------------------------
# build/lessons/NN          the lesson as you edit it (run it; `--check` grades your homework)
# build/lessons/NN-solution the same lesson with the reference solutions spliced in
# build/lessons/NN-stub     the same lesson with every exercise blanked, whatever you wrote
# (An MPI lesson's three are built by mpicxx; its homework check runs without mpirun.)
LESSON_DEPS := $(B)/engine.o $(B)/kernels.o engine.h cuda_emu.h lessons/lesson.h $(B)/flags
define lesson_rules
$(B)/lessons/$(1): $(2) $(LESSON_DEPS)
	@mkdir -p $$(@D)
	$(call lesson_cxx,$(2)) $$(CXXFLAGS) $$(STUB_FLAGS) -I. -Ilessons $(2) $(B)/engine.o $(B)/kernels.o -o $$@
$(B)/lessons/$(1)-solution.cpp: $(2) lessons/solutions/$(notdir $(2)) $$(SPLICE)
	@mkdir -p $$(@D)
	awk -v mode=splice -f $$(SPLICE) lessons/solutions/$(notdir $(2)) $(2) > $$@
$(B)/lessons/$(1)-stub.cpp: $(2) $$(SPLICE)
	@mkdir -p $$(@D)
	awk -v mode=blank -f $$(SPLICE) $(2) > $$@
$(B)/lessons/$(1)-%: $(B)/lessons/$(1)-%.cpp $(LESSON_DEPS)
	$(call lesson_cxx,$(2)) $$(CXXFLAGS) $$(STUB_FLAGS) -I. -Ilessons $$< $(B)/engine.o $(B)/kernels.o -o $$@
$(B)/asan32/lessons/$(1): $(2) $(B)/asan32/engine.o $(B)/asan32/kernels.o engine.h cuda_emu.h lessons/lesson.h $(B)/flags
	@mkdir -p $$(@D)
	$(call lesson_cxx,$(2)) $$(CXXFLAGS) $$(SANITIZE) $$(STUB_FLAGS) -I. -Ilessons $(2) $(B)/asan32/engine.o $(B)/asan32/kernels.o -o $$@
endef
$(foreach f,$(LESSON_SRCS),$(eval $(call lesson_rules,$(call lesson_num,$(f)),$(f))))

lessons: $(foreach n,$(BUILT_LESSONS),$(B)/lessons/$(n))
	@set -e; for n in $(LESSONS); do echo "=== lesson $$n"; \
	     case " $(BUILT_LESSONS) " in *" $$n "*) ;; *) echo "skipped: $(MPI_HINT)"; continue;; esac; \
	     case " $(MPI_LESSONS) " in *" $$n "*) $(MPI_LAUNCH) $(B)/lessons/$$n;; *) $(B)/lessons/$$n;; esac; \
	 done

# N must name a lesson (or, for check, a lesson with homework): make's own "No rule to make
# target" would not say which ones exist.
known = case " $(2) " in *" $(1) "*) ;; *) echo "no $(3) $(1); there are: $(2)"; exit 2;; esac
# An MPI lesson without MPI: say how to get it, and stop.
mpi_or_hint = case " $(BUILT_LESSONS) " in *" $(1) "*) ;; *) echo "$(MPI_HINT)"; exit 2;; esac
lesson:
	@test -n "$(N)" || { echo "usage: make lesson N=02 [ARGS=\"...\"]   (lessons: $(LESSONS))"; exit 2; }
	@$(call known,$(N),$(LESSONS),lesson)
	@$(call mpi_or_hint,$(N))
	@$(MAKE) --no-print-directory $(B)/lessons/$(N)
	$(call launch,$(N))$(B)/lessons/$(N) $(ARGS)

check:
	@test -n "$(N)" || { echo "usage: make check N=02 [SOLUTIONS=1]   (homework: $(HOMEWORK))"; exit 2; }
	@$(call known,$(N),$(HOMEWORK),homework for lesson)
	@$(call mpi_or_hint,$(N))
	@$(MAKE) --no-print-directory $(B)/lessons/$(N)$(if $(SOLUTIONS),-solution)
	@$(B)/lessons/$(N)$(if $(SOLUTIONS),-solution) --check

# ---- engine exercises ------------------------------------------------------------------------
# `make exercise E=gelu` replaces the gelu region of engine.cpp with a stub. Before it touches the
# file it copies it to .saved/: the first copy (engine.cpp.original) is what exercise-reset
# restores, and every later state is kept under its time stamp, so no edit of yours is lost.
exercise:
	@test -n "$(E)" || { echo "usage: make exercise E=<region>   (regions: $(REGIONS))"; exit 2; }
	@grep -q "// BEGIN EXERCISE $(E)\b" engine.cpp || { echo "no region '$(E)' in engine.cpp (regions: $(REGIONS))"; exit 2; }
	@mkdir -p .saved
	@stamp=$$(date +%Y%m%d-%H%M%S-%N); cp engine.cpp .saved/engine.cpp.$$stamp; \
	 test -f .saved/engine.cpp.original || cp engine.cpp .saved/engine.cpp.original; \
	 awk -v mode=blank -v only=$(E) -f $(SPLICE) .saved/engine.cpp.$$stamp > .saved/engine.cpp.new && \
	 mv .saved/engine.cpp.new engine.cpp && \
	 echo "engine.cpp: region '$(E)' is now yours to write (previous file kept as .saved/engine.cpp.$$stamp)." && \
	 echo "Its tests say TODO until it works: make test FILTER=$(E)"

exercise-reset:
	@if [ ! -f .saved/engine.cpp.original ]; then \
	     echo "no exercise is active; engine.cpp is unchanged"; \
	 else \
	     stamp=$$(date +%Y%m%d-%H%M%S-%N); cp engine.cpp .saved/engine.cpp.attempt-$$stamp && \
	     cp .saved/engine.cpp.original engine.cpp && rm .saved/engine.cpp.original && touch engine.cpp && \
	     echo "engine.cpp restored; your attempt is kept as .saved/engine.cpp.attempt-$$stamp"; \
	 fi

# ---- the demo --------------------------------------------------------------------------------
$(B)/demo: lessons/demo.cpp $(LESSON_DEPS)
	$(CXX) $(CXXFLAGS) -I. -Ilessons $< $(B)/engine.o $(B)/kernels.o -o $@

demo: $(B)/demo
	$(B)/demo

# make demo-gpu: the demo's training loop on Device::CUDA, with kernels.cu built by nvcc (below).
$(B)/gpu/demo.o: lessons/demo.cpp $(LESSON_DEPS)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -I. -Ilessons -c $< -o $@
$(B)/demo-gpu: $(B)/gpu/demo.o $(B)/engine.o $(B)/gpu/kernels.o
	$(NVCC) -ccbin $(CXX) $(if $(OMP),-Xcompiler $(OMP)) $^ -o $@
demo-gpu: $(B)/demo-gpu
	$(B)/demo-gpu --cuda

# make gpt-gpu: lesson 15's training step on Device::CUDA (its --cuda), kernels.cu built by nvcc.
$(B)/gpu/15.o: lessons/15_gpt.cpp $(LESSON_DEPS)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $(STUB_FLAGS) -I. -Ilessons -c $< -o $@
$(B)/gpt-gpu: $(B)/gpu/15.o $(B)/engine.o $(B)/gpu/kernels.o
	$(NVCC) -ccbin $(CXX) $(if $(OMP),-Xcompiler $(OMP)) $^ -o $@
gpt-gpu: $(B)/gpt-gpu
	$(B)/gpt-gpu --cuda

# ---- your own program ------------------------------------------------------------------------
# make run FILE=path/to/yours.cpp [ARGS="..."] builds your program against the engine (real =
# float, the lessons' flags; lesson.h's plots are on the include path) into build/run/yours, and
# runs it. It links build/libengine.a: the engine, and kernels.cu built for the CPU (cuda_emu.h),
# so a CPU-only program needs nothing else. README's "Write your own program" is lessons/example.cpp,
# which `make test-all` builds and runs.
$(B)/libengine.a: $(B)/engine.o $(B)/kernels.o
	ar rcs $@ $^
define program_rule   # $(1): the binary, $(2): its source
$(1): $(2) $(B)/libengine.a engine.h $(B)/flags
	@mkdir -p $$(@D)
	$$(CXX) $$(CXXFLAGS) -I. -Ilessons -MMD -MP $(2) $(B)/libengine.a -o $$@
-include $(1).d
endef
$(eval $(call program_rule,$(B)/example,lessons/example.cpp))
RUN_BIN := $(if $(FILE),$(B)/run/$(basename $(notdir $(FILE))))
$(if $(FILE),$(eval $(call program_rule,$(RUN_BIN),$(FILE))))
run: $(RUN_BIN)
	@test -n "$(FILE)" || { echo "usage: make run FILE=path/to/yours.cpp [ARGS=\"...\"]"; exit 2; }
	$(RUN_BIN) $(ARGS)

# ---- one format: .clang-format, applied by clang-format 14 (other versions format differently) --
CLANG_FORMAT ?= $(shell command -v clang-format-14 || command -v clang-format)
# (lessons/solutions/ holds fragments, function bodies that the build pastes into the lessons, not
# C++ a formatter can parse: each says `// clang-format off`, which the check makes sure of.)
FORMATTED = engine.h engine.cpp kernels.cu cuda_emu.h tests.cpp bench.cpp \
            $(wildcard lessons/*.cpp lessons/*.h lessons/solutions/*.cpp)
format:
	@[ -n "$(CLANG_FORMAT)" ] || { echo "make format needs clang-format 14 (Debian: apt install clang-format-14)"; exit 2; }
	$(CLANG_FORMAT) -i $(FORMATTED)
format-check:
	@[ -n "$(CLANG_FORMAT)" ] || { echo "make format-check needs clang-format 14 (Debian: apt install clang-format-14)"; exit 2; }
	@$(CLANG_FORMAT) --version | grep -q "version 14\." || { echo "$(CLANG_FORMAT) is not version 14"; exit 2; }
	@bad=""; for f in $(FORMATTED); do $(CLANG_FORMAT) $$f | cmp -s - $$f || bad="$$bad $$f"; done; \
	 if [ -n "$$bad" ]; then echo "not in the format of .clang-format (make format fixes them):$$bad"; exit 1; fi; \
	 echo "every source file is formatted"

# ---- real data (lessons 10 and 15) -----------------------------------------------------------
data:
	@bash lessons/get_data.sh

# ---- benchmarks ------------------------------------------------------------------------------
# make bench-gpu: the same bench, with kernels.cu compiled by nvcc, so it also runs 22 kernels on
# the GPU: each is checked against the CPU engine, then timed with CUDA events. It needs nvcc and
# a GPU (without one it stops at the first CUDA call, saying so). `make bench` runs it by itself
# where nvcc and a GPU both answer. GPU_CODE holds machine code for sm_80 (A100) and sm_90
# (H100), and compute_80 PTX, which the driver compiles when a newer GPU loads it. nvcc links
# too: it knows where its own CUDA runtime lives (nvcc may be a wrapper script far from the
# toolkit), and it uses $(CXX) for the host side.
GPU_CODE ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
            -gencode arch=compute_80,code=compute_80
$(B)/gpu/kernels.o: kernels.cu $(B)/flags
	@[ -n "$(NVCC)" ] || { echo "make bench-gpu needs nvcc"; exit 2; }
	@mkdir -p $(@D)
	$(NVCC) -O3 $(GPU_CODE) -Werror all-warnings -c kernels.cu -o $@
$(B)/bench-gpu: $(B)/bench.o $(B)/engine.o $(B)/gpu/kernels.o
	$(NVCC) -ccbin $(CXX) $(if $(OMP),-Xcompiler $(OMP)) $^ -o $@
bench-gpu: $(B)/bench-gpu
	$(B)/bench-gpu

$(B)/bench: $(B)/bench.o $(B)/engine.o $(B)/kernels.o
	$(CXX) $(CXXFLAGS) $^ -o $@

bench: $(B)/bench
	@if [ -n "$(NVCC)" ] && nvidia-smi -L >/dev/null 2>&1; then \
	     echo "(nvcc and a GPU are here: make bench-gpu)"; $(MAKE) --no-print-directory bench-gpu; \
	 else echo "$(B)/bench"; $(B)/bench; fi

clean:
	rm -rf $(B)
