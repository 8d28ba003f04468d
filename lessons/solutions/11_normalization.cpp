// Reference solutions for lesson 11 (lessons/11_normalization.cpp). Only the bodies between the
// markers are used: `make check N=11 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 11.1
    const double n = double(x.size());
    double mu = 0, var = 0;
    for (double v : x) mu += v / n;
    for (double v : x) var += (v - mu) * (v - mu) / n;   // the batch's own variance: ÷ N
    std::vector<double> y;
    for (double v : x) y.push_back(gamma * (v - mu) / std::sqrt(var + eps) + beta);
    return y;
// END EXERCISE

// BEGIN EXERCISE 11.2
    const double n = double(batch.size());
    double mu = 0, square = 0;
    for (double v : batch) mu += v / n;
    for (double v : batch) square += (v - mu) * (v - mu);
    running_mean = (1 - momentum) * running_mean + momentum * mu;
    running_var = (1 - momentum) * running_var + momentum * square / (n - 1);   // unbiased
// END EXERCISE

// BEGIN EXERCISE 11.3
    const std::size_t n = x.size();
    double mu = 0, var = 0;
    for (double v : x) mu += v / double(n);
    for (double v : x) var += (v - mu) * (v - mu) / double(n);
    const double r = 1 / std::sqrt(var + eps);
    std::vector<double> x_hat(n), g_hat(n);
    double mean_g = 0, mean_g_xhat = 0;
    for (std::size_t i = 0; i < n; ++i) {
        x_hat[i] = (x[i] - mu) * r;
        g_hat[i] = dy[i] * gamma;
        mean_g += g_hat[i] / double(n);
        mean_g_xhat += g_hat[i] * x_hat[i] / double(n);
    }
    std::vector<double> dx(n);
    for (std::size_t i = 0; i < n; ++i) dx[i] = r * (g_hat[i] - mean_g - x_hat[i] * mean_g_xhat);
    return dx;
// END EXERCISE
