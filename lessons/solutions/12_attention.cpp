// Reference solutions for lesson 12 (lessons/12_attention.cpp). Only the bodies between the
// markers are used: `make check N=12 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 12.1
    const long long pairs = causal ? (long long)T * (T + 1) / 2 : (long long)T * S;
    AttentionFlops f;
    f.forward = 2 * pairs * d + 2 * pairs * dv;            // S = Q·Kᵀ, O = P·V
    f.backward = 2 * (2 * pairs * dv) + 2 * (2 * pairs * d);   // dV, dP; dQ, dK
    return f;
// END EXERCISE

// BEGIN EXERCISE 12.2
    double dot = 0;   // Σᵢ dpᵢ·pᵢ
    for (std::size_t i = 0; i < p.size(); ++i) dot += dp[i] * p[i];
    std::vector<double> ds(p.size());
    for (std::size_t j = 0; j < p.size(); ++j) ds[j] = p[j] * (dp[j] - dot);
    return ds;
// END EXERCISE

// BEGIN EXERCISE 12.3
    const int T = Q.rows, d = Q.cols, dv = V.cols;
    const double scale = 1 / std::sqrt(double(d));
    Matrix P{T, T, std::vector<double>(std::size_t(T) * T, 0.0)};
    for (int i = 0; i < T; ++i) {   // forward again: P = softmax(Q·Kᵀ·scale), masked
        const int keys = causal ? i + 1 : T;
        double largest = -1e300, total = 0;
        for (int j = 0; j < keys; ++j) {
            double dot = 0;
            for (int c = 0; c < d; ++c) dot += Q.at(i, c) * K.at(j, c);
            P.at(i, j) = dot * scale;
            largest = std::max(largest, P.at(i, j));
        }
        for (int j = 0; j < keys; ++j) {
            P.at(i, j) = std::exp(P.at(i, j) - largest);
            total += P.at(i, j);
        }
        for (int j = 0; j < keys; ++j) P.at(i, j) /= total;
    }
    for (int j = 0; j < T; ++j)   // 1. dV = Pᵀ·dO
        for (int c = 0; c < dv; ++c) {
            double sum = 0;
            for (int i = 0; i < T; ++i) sum += P.at(i, j) * dO.at(i, c);
            dV.at(j, c) = sum;
        }
    Matrix dS{T, T, std::vector<double>(std::size_t(T) * T, 0.0)};
    for (int i = 0; i < T; ++i) {
        for (int j = 0; j < T; ++j)   // 2. dP = dO·Vᵀ
            for (int c = 0; c < dv; ++c) dS.at(i, j) += dO.at(i, c) * V.at(j, c);
        double row = 0;   // 3. dS = P ∘ (dP − rowsum(dP ∘ P))
        for (int j = 0; j < T; ++j) row += dS.at(i, j) * P.at(i, j);
        for (int j = 0; j < T; ++j) dS.at(i, j) = P.at(i, j) * (dS.at(i, j) - row);
    }
    for (int i = 0; i < T; ++i)   // 4. dQ = dS·K·scale
        for (int c = 0; c < d; ++c) {
            double sum = 0;
            for (int j = 0; j < T; ++j) sum += dS.at(i, j) * K.at(j, c);
            dQ.at(i, c) = sum * scale;
        }
    for (int j = 0; j < T; ++j)   // 5. dK = dSᵀ·Q·scale
        for (int c = 0; c < d; ++c) {
            double sum = 0;
            for (int i = 0; i < T; ++i) sum += dS.at(i, j) * Q.at(i, c);
            dK.at(j, c) = sum * scale;
        }
// END EXERCISE
