// Reference solutions for lesson 04 (lessons/04_tensors_matmul.cpp). Only the bodies between the
// markers are used: `make check N=04 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 04.1
    if (A.rank() != 2 || B.rank() != 2 || A.dim(1) != B.dim(0))
        throw std::invalid_argument("matmul_loops: need [M,K]*[K,N], got " + shape_str(A.shape()) +
                                    " * " + shape_str(B.shape()));
    const int M = A.dim(0), K = A.dim(1), N = B.dim(1);
    const ValuesView a = A.values(), b = B.values();
    Tensor C({M, N});   // zeros
    const ValuesView c = C.values();
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            real s = 0;
            for (int k = 0; k < K; ++k) s += a[i * K + k] * b[k * N + j];   // row i · column j
            c[i * N + j] = s;
        }
    return C;
// END EXERCISE

// BEGIN EXERCISE 04.2
    const int M = X.dim(0), K = X.dim(1), N = W.dim(1);
    const ValuesView x = X.values(), w = W.values(), dz = dZ.values();
    MatmulGrads g{Tensor({M, K}), Tensor({K, N})};
    const ValuesView dx = g.dX.values(), dw = g.dW.values();
    for (int i = 0; i < M; ++i)
        for (int k = 0; k < K; ++k)
            for (int j = 0; j < N; ++j) {
                dx[i * K + k] += dz[i * N + j] * w[k * N + j];   // dX = dZ·Wᵀ: sum over j
                dw[k * N + j] += x[i * K + k] * dz[i * N + j];   // dW = Xᵀ·dZ: sum over the batch
            }
    return g;
// END EXERCISE

// BEGIN EXERCISE 04.3
    const int B = dY.dim(0), N = dY.dim(1);
    Tensor db({N});
    for (int i = 0; i < B; ++i)
        for (int j = 0; j < N; ++j) db.values()[j] += dY.values()[i * N + j];   // every row adds
    return db;
// END EXERCISE

// BEGIN EXERCISE 04.4
    for (const Tensor& p : params) {
        if (p.grad().empty()) continue;   // the loss did not reach it
        std::vector<real> updated = p.values();
        for (std::size_t i = 0; i < updated.size(); ++i) updated[i] -= real(lr) * p.grad()[i];
        p.values() = updated;   // one whole write: the version count goes up
    }
// END EXERCISE
