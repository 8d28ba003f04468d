// Reference solutions for lesson 14 (lessons/14_cuda_kernels.cpp). Only the bodies between the
// markers are used: `make check N=14 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 14.1
    const int i = blockIdx.x * blockDim.x + threadIdx.x;   // blocks before mine, then my place
    if (i < n) y[i] = x[i] > 0 ? x[i] : slope * x[i];       // the last block's extra threads idle
// END EXERCISE

// BEGIN EXERCISE 14.2
    __shared__ float As[hw_tile][hw_tile], Bs[hw_tile][hw_tile];
    for (int k0 = 0; k0 < K; k0 += hw_tile) {
        As[ty][tx] = row < M && k0 + tx < K ? A[row * K + k0 + tx] : 0.0f;   // 0 outside: adds 0
        Bs[ty][tx] = k0 + ty < K && col < N ? B[(k0 + ty) * N + col] : 0.0f;
        __syncthreads();   // both tiles are complete
        for (int k = 0; k < hw_tile; ++k) s += As[ty][k] * Bs[k][tx];
        __syncthreads();   // everyone is done with them before the next step overwrites them
    }
// END EXERCISE

// BEGIN EXERCISE 14.3
    for (int d = 16; d > 0; d /= 2) v += __shfl_xor_sync(0xffffffffu, v, d);   // add lane ^ d's
    return v;
// END EXERCISE
