// Reference solutions for lesson 05 (lessons/05_softmax_cross_entropy.cpp). Only the bodies
// between the markers are used: `make check N=05 SOLUTIONS=1` splices them into the lesson and
// grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 05.1
    if (z.empty()) throw std::invalid_argument("log_sum_exp: no logits");
    const double m = *std::max_element(z.begin(), z.end());
    double sum = 0;
    for (double v : z) sum += std::exp(v - m);   // every exponent <= 0; the largest term is 1
    return m + std::log(sum);
// END EXERCISE

// BEGIN EXERCISE 05.2
    const int C = int(logits.size());
    if (label < 0 || label >= C)
        throw std::invalid_argument("cross_entropy_grad: label out of range");
    const double m = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (double v : logits) sum += std::exp(v - m);
    std::vector<double> grad(C);
    for (int i = 0; i < C; ++i) {
        const double p = std::exp(logits[i] - m) / sum;
        const double t = smoothing / C + (i == label ? 1 - smoothing : 0.0);
        grad[i] = p - t;
    }
    return grad;
// END EXERCISE

// BEGIN EXERCISE 05.3
    const std::size_t C = z.size();
    const double m = *std::max_element(z.begin(), z.end());
    std::vector<double> p(C);
    double sum = 0;
    for (std::size_t i = 0; i < C; ++i) sum += p[i] = std::exp(z[i] - m);
    for (double& v : p) v /= sum;
    std::vector<std::vector<double>> J(C, std::vector<double>(C));
    for (std::size_t i = 0; i < C; ++i)
        for (std::size_t j = 0; j < C; ++j) J[i][j] = p[i] * ((i == j ? 1.0 : 0.0) - p[j]);
    return J;
// END EXERCISE
