// kernels.cu: raw CUDA kernels for the engine's tensor ops, to be read next to the CPU loops they
// replace, and run both on a GPU (nvcc) and on any CPU through a small emulation header.
//
// Not written yet: it comes with the CUDA-kernels issue, which needs the tensor engine (Part 2 of
// engine.cpp) first. Nothing builds this file until then.
