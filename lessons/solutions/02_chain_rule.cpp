// Reference solutions for lesson 02 (lessons/02_chain_rule.cpp). Only the bodies between the
// markers are used: `make check N=02 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 02.1
    // Forward, keeping every intermediate.
    const double z = w * x + b;
    const double p = 1.0 / (1.0 + std::exp(-z));
    const double r = p - y;
    // Backward, one node at a time: dL/d(input) = dL/d(node) · ∂(node)/∂(input).
    const double dL_dr = 2.0 * r;                   // L = r²
    const double dL_dp = dL_dr * 1.0;               // r = p − y
    const double dL_dz = dL_dp * p * (1.0 - p);     // p = σ(z)
    const double dL_dw = dL_dz * x;                 // z = w·x + b
    const double dL_db = dL_dz * 1.0;
    return {dL_dw, dL_db};
// END EXERCISE

// BEGIN EXERCISE 02.2
    // Forward: inputs[k] is the input of link k.
    std::vector<double> inputs;
    double value = x;
    for (const Link& link : chain) {
        inputs.push_back(value);
        value = link.f(value);
    }
    // Backward: from the last link to the first, multiply each local derivative in.
    double grad = 1.0;
    for (std::size_t k = chain.size(); k-- > 0;) grad *= chain[k].df(inputs[k]);
    return grad;
// END EXERCISE

// BEGIN EXERCISE 02.3
    const double s = a + b, d = a - b;   // forward
    const double df_ds = d;              // f = s·d
    const double df_dd = s;
    const double df_da = df_ds * 1.0 + df_dd * 1.0;    // a feeds s (+1) and d (+1)
    const double df_db = df_ds * 1.0 + df_dd * -1.0;   // b feeds s (+1) and d (−1)
    return {df_da, df_db};
// END EXERCISE

// BEGIN EXERCISE 02.4
    return {std::sin(x.value), std::cos(x.value) * x.tangent};   // (sin a)' = cos a · a'
// END EXERCISE
