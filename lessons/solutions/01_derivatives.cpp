// Reference solutions for lesson 01 (lessons/01_derivatives.cpp). Only the bodies between the
// markers are used: `make check N=01 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 01.1
    std::vector<double> g(x.size());
    std::vector<double> shifted = x;         // a copy we may change, one entry at a time
    for (std::size_t i = 0; i < x.size(); ++i) {
        shifted[i] = x[i] + h;
        const double f_plus = f(shifted);
        shifted[i] = x[i] - h;
        const double f_minus = f(shifted);
        shifted[i] = x[i];                   // put input i back before moving the next one
        g[i] = (f_plus - f_minus) / (2.0 * h);
    }
    return g;
// END EXERCISE

// BEGIN EXERCISE 01.2
    // d/dx (x³ − 5x² + 3x + 7) = 3x² − 10x + 3, which is 0 at x = 1/3 and x = 3.
    return 3.0 * x * x - 10.0 * x + 3.0;
// END EXERCISE

// BEGIN EXERCISE 01.3
    // E(h) = h²|f'''|/6 + ε|f|/h.  dE/dh = h|f'''|/3 − ε|f|/h² = 0  ⇒  h³ = 3ε|f| / |f'''|.
    return std::cbrt(3.0 * DBL_EPSILON * std::fabs(f_at_x) / std::fabs(f_third_at_x));
// END EXERCISE
